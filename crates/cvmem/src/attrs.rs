//! The attribute store: maximal runs of equal memory attributes over the whole gfn space.
//!
//! Linux keeps one xarray entry per 4 KiB gfn. Here a run boundary is stored only where the
//! attributes change, so a 1 TiB all-private guest costs one entry, and every operation costs
//! O(log R + runs touched) for R runs, whatever the number of pages it covers.
//!
//! Layout: a sorted sequence of boundaries `(start gfn, attributes)` meaning "from `start` up to
//! the next boundary the attributes are `attributes`"; gfns before the first boundary are 0
//! (shared). The sequence is cut into chunks of at most [`CHUNK`] boundaries (a two-level B-tree
//! with a flat, cache-friendly top index), so inserting never moves more than one chunk and (when a
//! chunk splits or empties) the top index of R / CHUNK entries: a memmove of 24 bytes per 128
//! boundaries, which at 2·10^6 boundaries is most of the 1.7 µs a random 4K flip costs. Chunks never grow past their first allocation, and spare chunks
//! are allocated before a change begins: an update either fails with `NoMemory` before touching
//! anything, or completes without allocating.

use alloc::vec::Vec;
use core::mem::size_of;

use crate::addr::{GfnRange, GFN_END};
use crate::error::{Error, Result};

/// Boundaries per chunk.
const CHUNK: usize = 128;
/// An update inserts at most two boundaries, so it needs at most two fresh chunks.
const SPARES: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Boundary {
    start: u64,
    attributes: u64,
}

/// A maximal run of gfns with equal attributes, `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttrRun {
    /// First gfn of the run.
    pub start: u64,
    /// One past the last gfn of the run.
    pub end: u64,
    /// The attributes of every gfn in the run.
    pub attributes: u64,
}

impl AttrRun {
    /// The run as a gfn range.
    pub const fn range(&self) -> GfnRange {
        GfnRange::new(self.start, self.end)
    }
}

/// A position in the boundary sequence: chunk index and offset, normalised so that `off` is
/// inside the chunk, or `(chunks.len(), 0)` for the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    chunk: usize,
    off: usize,
}

/// Attributes of every gfn, stored as maximal runs.
#[derive(Clone, Debug, Default)]
pub struct AttrStore {
    chunks: Vec<Vec<Boundary>>,
    /// `firsts[i] == chunks[i][0].start`: the top index, searched first.
    firsts: Vec<u64>,
    spare: Vec<Vec<Boundary>>,
    boundaries: usize,
}

impl AttrStore {
    /// A store where every gfn is shared (attributes 0).
    pub const fn new() -> Self {
        AttrStore {
            chunks: Vec::new(),
            firsts: Vec::new(),
            spare: Vec::new(),
            boundaries: 0,
        }
    }

    /// Number of places where the attributes change (stored boundaries).
    pub fn boundaries(&self) -> usize {
        self.boundaries
    }

    /// The attributes of `gfn`. O(log R).
    #[inline]
    pub fn get(&self, gfn: u64) -> u64 {
        self.run_at(gfn).attributes
    }

    /// The maximal run containing `gfn`. O(log R).
    pub fn run_at(&self, gfn: u64) -> AttrRun {
        let next = self.upper_bound(gfn);
        let attributes = self.prev(next).map_or(0, |p| self.at(p).attributes);
        let start = self.prev(next).map_or(0, |p| self.at(p).start);
        let end = if next.chunk < self.chunks.len() {
            self.at(next).start
        } else {
            GFN_END
        };
        AttrRun {
            start,
            end,
            attributes,
        }
    }

    /// Whether every gfn in `range` has `attributes` under `mask` (bits outside `mask` ignored),
    /// as `kvm_range_has_memory_attributes`. An empty range has any attributes.
    pub fn range_has(&self, range: GfnRange, attributes: u64, mask: u64) -> bool {
        if range.is_empty() {
            return true;
        }
        let want = attributes & mask;
        let first = self.run_at(range.start);
        if first.end >= range.end {
            return first.attributes & mask == want;
        }
        self.runs(range).all(|r| r.attributes & mask == want)
    }

    /// The attributes if `range` is one run (every gfn equal), else `None`. O(log R).
    pub fn uniform(&self, range: GfnRange) -> Option<u64> {
        let run = self.run_at(range.start);
        (run.end >= range.end).then_some(run.attributes)
    }

    /// The runs covering `range`, clipped to it, in address order (shared runs included).
    pub fn runs(&self, range: GfnRange) -> Runs<'_> {
        let pos = self.upper_bound(range.start);
        let attributes = self.prev(pos).map_or(0, |p| self.at(p).attributes);
        Runs {
            store: self,
            pos,
            start: range.start,
            end: range.end,
            attributes,
        }
    }

    /// Sets every gfn of `range` to `attributes` (a non-empty range inside the gfn space).
    /// Returns `false`, having done nothing, when the range already had them.
    /// On `NoMemory` nothing changed.
    pub fn set(&mut self, range: GfnRange, attributes: u64) -> Result<bool> {
        Ok(self.set_run(range, attributes)?.is_some())
    }

    /// As [`AttrStore::set`], returning the maximal run that now holds `range` (merged with
    /// equal neighbours), or `None` when nothing changed. The run tells a caller which large
    /// pages around the range are uniform without searching again.
    pub fn set_run(&mut self, range: GfnRange, attributes: u64) -> Result<Option<AttrRun>> {
        debug_assert!(range.start < range.end && range.end <= GFN_END);
        // One search finds the run holding `start`; the rest is local to it.
        let p = self.upper_bound(range.start);
        let holder = self.prev(p);
        let current = holder.map_or(0, |q| self.at(q).attributes);
        let next_start = self.start_at(p);
        if current == attributes && next_start >= range.end {
            return Ok(None);
        }
        self.reserve()?;
        // From here on nothing allocates and nothing can fail.
        // `lo`: first boundary to remove; `before`: the run before the range and its start.
        let (lo, before, before_start) = match holder {
            Some(q) if self.at(q).start == range.start => {
                let r = self.prev(q).map(|r| self.at(r));
                (q, r.map_or(0, |r| r.attributes), r.map_or(0, |r| r.start))
            }
            _ => (p, current, holder.map_or(0, |q| self.at(q).start)),
        };
        let (hi, after) = if range.end >= GFN_END {
            (self.end(), None)
        } else if next_start > range.end {
            (p, Some(current))
        } else {
            let hi = self.upper_bound(range.end);
            (hi, Some(self.prev(hi).map_or(0, |q| self.at(q).attributes)))
        };
        let run = AttrRun {
            start: if attributes == before {
                before_start
            } else {
                range.start
            },
            end: match after {
                Some(a) if a != attributes => range.end,
                _ => self.start_at(hi),
            },
            attributes,
        };
        let mut at = self.remove(lo, hi);
        if attributes != before {
            at = self.insert_at(
                at,
                Boundary {
                    start: range.start,
                    attributes,
                },
            );
        }
        if let Some(after) = after.filter(|&a| a != attributes) {
            self.insert_at(
                at,
                Boundary {
                    start: range.end,
                    attributes: after,
                },
            );
        }
        Ok(Some(run))
    }

    /// Bytes of heap memory held, exactly as allocated.
    pub fn heap_bytes(&self) -> usize {
        let vec_header = size_of::<Vec<Boundary>>();
        let chunk_bytes: usize = self
            .chunks
            .iter()
            .chain(self.spare.iter())
            .map(|c| c.capacity() * size_of::<Boundary>())
            .sum();
        self.chunks.capacity() * vec_header
            + self.spare.capacity() * vec_header
            + self.firsts.capacity() * size_of::<u64>()
            + chunk_bytes
    }

    /// Checks the invariants (sorted, maximal, chunk index consistent). For tests and fuzzing.
    pub fn check_invariants(&self) -> core::result::Result<(), &'static str> {
        if self.chunks.len() != self.firsts.len() {
            return Err("top index length differs from chunk count");
        }
        let mut prev: Option<Boundary> = None;
        let mut count = 0;
        for (c, chunk) in self.chunks.iter().enumerate() {
            if chunk.is_empty() || chunk.len() > CHUNK {
                return Err("chunk empty or over-full");
            }
            if self.firsts[c] != chunk[0].start {
                return Err("top index out of date");
            }
            for b in chunk {
                count += 1;
                if b.start >= GFN_END {
                    return Err("boundary beyond the gfn space");
                }
                match prev {
                    None if b.attributes == 0 => return Err("first boundary is redundant"),
                    Some(p) if p.start >= b.start => return Err("boundaries not sorted"),
                    Some(p) if p.attributes == b.attributes => return Err("runs not maximal"),
                    _ => {}
                }
                prev = Some(*b);
            }
        }
        if count != self.boundaries {
            return Err("boundary count out of date");
        }
        Ok(())
    }

    fn at(&self, p: Pos) -> Boundary {
        self.chunks[p.chunk][p.off]
    }

    /// The start of the boundary at `p`, or the end of the gfn space at the end.
    fn start_at(&self, p: Pos) -> u64 {
        if p.chunk < self.chunks.len() {
            self.at(p).start
        } else {
            GFN_END
        }
    }

    fn end(&self) -> Pos {
        Pos {
            chunk: self.chunks.len(),
            off: 0,
        }
    }

    fn prev(&self, p: Pos) -> Option<Pos> {
        if p.off > 0 {
            Some(Pos {
                chunk: p.chunk,
                off: p.off - 1,
            })
        } else if p.chunk > 0 {
            Some(Pos {
                chunk: p.chunk - 1,
                off: self.chunks[p.chunk - 1].len() - 1,
            })
        } else {
            None
        }
    }

    fn next(&self, p: Pos) -> Pos {
        if p.off + 1 < self.chunks[p.chunk].len() {
            Pos {
                chunk: p.chunk,
                off: p.off + 1,
            }
        } else {
            Pos {
                chunk: p.chunk + 1,
                off: 0,
            }
        }
    }

    /// The first boundary for which `before(boundary start)` is false.
    #[inline]
    fn search(&self, before: impl Fn(u64) -> bool) -> Pos {
        let c = self.firsts.partition_point(|&f| before(f));
        if c == 0 {
            return Pos { chunk: 0, off: 0 };
        }
        let off = self.chunks[c - 1].partition_point(|b| before(b.start));
        if off == self.chunks[c - 1].len() {
            Pos { chunk: c, off: 0 }
        } else {
            Pos { chunk: c - 1, off }
        }
    }

    /// The first boundary after `gfn`.
    #[inline]
    fn upper_bound(&self, gfn: u64) -> Pos {
        self.search(|s| s <= gfn)
    }

    /// Makes sure the next update can complete without allocating.
    fn reserve(&mut self) -> Result<()> {
        let oom = |bytes| Error::NoMemory { bytes };
        self.chunks
            .try_reserve(SPARES)
            .map_err(|_| oom(SPARES * size_of::<Vec<Boundary>>()))?;
        self.firsts
            .try_reserve(SPARES)
            .map_err(|_| oom(SPARES * 8))?;
        self.spare
            .try_reserve(SPARES)
            .map_err(|_| oom(SPARES * size_of::<Vec<Boundary>>()))?;
        while self.spare.len() < SPARES {
            let mut chunk = Vec::new();
            chunk
                .try_reserve_exact(CHUNK)
                .map_err(|_| oom(CHUNK * size_of::<Boundary>()))?;
            self.spare.push(chunk);
        }
        Ok(())
    }

    /// Removes the boundaries in `[lo, hi)`; returns where boundaries between the removed
    /// neighbours are to be inserted.
    fn remove(&mut self, lo: Pos, hi: Pos) -> Pos {
        if lo >= hi {
            return lo;
        }
        if lo.chunk == hi.chunk {
            self.boundaries -= hi.off - lo.off;
            self.chunks[lo.chunk].drain(lo.off..hi.off);
        } else {
            let mut n = self.chunks[lo.chunk].len() - lo.off;
            self.chunks[lo.chunk].truncate(lo.off);
            for c in lo.chunk + 1..hi.chunk {
                n += self.chunks[c].len();
            }
            if hi.chunk < self.chunks.len() {
                n += hi.off;
                self.chunks[hi.chunk].drain(..hi.off);
            }
            self.boundaries -= n;
            for mut chunk in self.chunks.drain(lo.chunk + 1..hi.chunk) {
                if self.spare.len() < SPARES {
                    chunk.clear();
                    self.spare.push(chunk);
                }
            }
            self.firsts.drain(lo.chunk + 1..hi.chunk);
            self.refresh(lo.chunk + 1);
        }
        if self.refresh(lo.chunk) {
            Pos {
                chunk: lo.chunk,
                off: 0,
            }
        } else {
            lo
        }
    }

    /// Drops chunk `c` if it became empty (returning true), else brings its top-index entry up
    /// to date.
    fn refresh(&mut self, c: usize) -> bool {
        if c >= self.chunks.len() {
            return false;
        }
        if self.chunks[c].is_empty() {
            let chunk = self.chunks.remove(c);
            self.firsts.remove(c);
            if self.spare.len() < SPARES {
                self.spare.push(chunk);
            }
            true
        } else {
            self.firsts[c] = self.chunks[c][0].start;
            false
        }
    }

    /// Inserts `b` at `at` (a position whose neighbours order around it; `(c, len)` appends
    /// to chunk `c`) and returns the position just after it. Needs a spare chunk in reserve.
    fn insert_at(&mut self, at: Pos, b: Boundary) -> Pos {
        self.boundaries += 1;
        if self.chunks.is_empty() {
            let mut chunk = self.spare.pop().expect("reserve() keeps spare chunks");
            chunk.push(b);
            self.chunks.push(chunk);
            self.firsts.push(b.start);
            return Pos { chunk: 0, off: 1 };
        }
        let (mut c, mut off) = if at.chunk >= self.chunks.len() {
            let last = self.chunks.len() - 1;
            (last, self.chunks[last].len())
        } else {
            (at.chunk, at.off)
        };
        if self.chunks[c].len() == CHUNK {
            let mut upper = self.spare.pop().expect("reserve() keeps spare chunks");
            upper.extend(self.chunks[c].drain(CHUNK / 2..));
            self.firsts.insert(c + 1, upper[0].start);
            self.chunks.insert(c + 1, upper);
            if off > CHUNK / 2 {
                c += 1;
                off -= CHUNK / 2;
            }
        }
        self.chunks[c].insert(off, b);
        self.firsts[c] = self.chunks[c][0].start;
        Pos {
            chunk: c,
            off: off + 1,
        }
    }
}

/// Iterator over the runs of a range; see [`AttrStore::runs`].
#[derive(Clone, Debug)]
pub struct Runs<'a> {
    store: &'a AttrStore,
    /// The next boundary after `start`.
    pos: Pos,
    start: u64,
    end: u64,
    attributes: u64,
}

impl Iterator for Runs<'_> {
    type Item = AttrRun;

    fn next(&mut self) -> Option<AttrRun> {
        if self.start >= self.end {
            return None;
        }
        let (run_end, next) = if self.pos.chunk < self.store.chunks.len() {
            let b = self.store.at(self.pos);
            (b.start.min(self.end), Some(b))
        } else {
            (self.end, None)
        };
        let run = AttrRun {
            start: self.start,
            end: run_end,
            attributes: self.attributes,
        };
        self.start = run_end;
        if let Some(b) = next {
            if b.start < self.end {
                self.attributes = b.attributes;
                self.pos = self.store.next(self.pos);
            }
        }
        Some(run)
    }
}

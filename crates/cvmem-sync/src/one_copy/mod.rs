//! One copy of the attributes, read without locks: the store issue 21 asks the concurrent
//! front to keep instead of left-right's two.
//!
//! Every word a reader reads is an atomic in memory that lives as long as the store
//! (type-stable: directories, nodes and blocks are reused, never freed), so a reader racing
//! the writer reads live words — stale or half-updated, never freed memory — and safe Rust
//! suffices. The one writer (a [`OneCopyWriter`]) stores between the two halves of a sequence
//! count, as a seqlock does; a reader reads the count, descends, and keeps its answer only if
//! the count is even and unchanged, else tries again. Readers write no shared memory, so they
//! do not slow each other down; a reader overlapping a write retries (as KVM's fault path
//! retries while an invalidation is in progress), so a writer stopped in the middle of a
//! conversion holds readers back until it resumes.
//!
//! Shape (like the page tables it feeds): a node per mixed 1G page holds a kind bit and a
//! mixed bit per 2M page and, per mixed 2M page, a 32-bit word with up to three exceptions
//! inline or the index of one of the node's 64-byte blocks of bits; three directory levels of
//! 64 entries above the nodes (each entry all shared, all private, or a child) span the first
//! 256 TiB of gfns, and six more, made on first use, the rest of the 2^52. Worst case (every 2M
//! page mixed): 64 + 4 bytes per 2M page and the node's header, 1.07× a flat bitmap, and a few
//! KiB of directories; at any moment, whatever the order of the conversions, the most blocks
//! and chunks any node ever needed at once.

mod page;
mod shared;
mod tree;

pub use shared::{SharedAttrs, SharedRuns};

use std::sync::Arc;

use cvmem::{
    AttrRun, AttrStore, Gfn, GfnRange, Level, Result, GFN_END, KVM_MEMORY_ATTRIBUTE_PRIVATE,
};

use crate::sync::{fence, retry_hint, AtomicU64, OnceBox, Ordering};
use tree::{Dir, Node, Tree};

/// Entries per directory. Under `--cfg loom` four, so that the model checker, whose cost grows
/// with every atomic a store holds, can explore the protocol (its models use the first gfns;
/// the levels then span 2^30, not every gfn).
const FAN: usize = if cfg!(loom) { 4 } else { 64 };
/// The directory above the nodes: 64 GiB.
type Units = Dir<Node, FAN>;
/// 4 TiB.
type Mid = Dir<Units, FAN>;
/// Three directories above the nodes: the first 2^36 gfns (256 TiB), where guests live.
type Low = Dir<Mid, FAN>;
/// Six: 2^54 gfns, of which the store uses those past `Low`'s.
type High = Dir<Dir<Dir<Low, FAN>, FAN>, FAN>;
/// The first gfn past `Low`.
const LOW_END: u64 = 1 << Low::SPAN_SHIFT;

/// The attributes of every gfn, one copy, readable by any number of threads while one writer
/// changes them. Readers hold an `Arc` of it; the writer is a [`OneCopyWriter`].
#[derive(Debug)]
pub struct OneCopyStore {
    /// Odd while the writer is storing.
    seq: AtomicU64,
    low: Box<[Low; 1]>,
    /// Made when a gfn past `LOW_END` is first set private.
    high: OnceBox<[High; 1]>,
}

/// The one writer of a [`OneCopyStore`].
#[derive(Debug)]
pub struct OneCopyWriter {
    store: Arc<OneCopyStore>,
}

const fn attr(private: bool) -> u64 {
    if private {
        KVM_MEMORY_ATTRIBUTE_PRIVATE
    } else {
        0
    }
}

impl OneCopyStore {
    /// Runs `read` until it ran while no write was in progress and none started: an answer from
    /// one committed state. `read` must accept any contents and end (its answer from racing a
    /// write is thrown away).
    fn read<R>(&self, read: impl Fn(&Self) -> Option<R>) -> R {
        loop {
            if let Some(r) = self.try_read(&read) {
                return r;
            }
            retry_hint();
        }
    }

    /// One attempt of [`OneCopyStore::read`]: `None` if a write was in progress or started.
    fn try_read<R>(&self, read: impl Fn(&Self) -> Option<R>) -> Option<R> {
        let before = self.seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            return None;
        }
        let r = read(self);
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == before).then_some(r?)
    }

    fn low(&self) -> &Low {
        &self.low[0]
    }

    fn high(&self) -> Option<&High> {
        self.high.get().map(|h| &h[0])
    }

    /// The kind of `gfn` and the largest level whose aligned page around it has one kind.
    #[inline]
    pub fn probe(&self, gfn: Gfn) -> (bool, Level) {
        // `read`, unrolled for the fault path: the count's parity is checked after the descent.
        loop {
            let before = self.seq.load(Ordering::Acquire);
            let r = self.probe_racy(gfn);
            fence(Ordering::Acquire);
            if before % 2 == 0 && self.seq.load(Ordering::Relaxed) == before {
                return r;
            }
            retry_hint();
        }
    }

    /// [`OneCopyStore::probe`] in one attempt: `None` if it raced a write (the fault path
    /// answers "retry", as KVM's does while an invalidation is in progress).
    pub fn try_probe(&self, gfn: Gfn) -> Option<(bool, Level)> {
        self.try_read(|s| Some(s.probe_racy(gfn)))
    }

    /// [`OneCopyStore::probe`]'s descent with no validation: any contents give some answer
    /// and end; the caller checks the count around it.
    #[inline]
    pub(crate) fn probe_racy(&self, gfn: Gfn) -> (bool, Level) {
        if gfn.0 < LOW_END {
            self.low().probe(gfn.0)
        } else if gfn.0 < GFN_END {
            self.high().map_or((false, Level::G1), |h| h.probe(gfn.0))
        } else {
            (false, Level::G1)
        }
    }

    /// The first gfn in `[gfn, limit)` whose kind is not `v` (no validation).
    fn find_racy(&self, gfn: u64, limit: u64, v: bool) -> Option<u64> {
        if gfn < LOW_END {
            if let Some(g) = self.low().find(gfn, limit.min(LOW_END), v) {
                return Some(g);
            }
        }
        let from = gfn.max(LOW_END);
        if from >= limit {
            return None;
        }
        match self.high() {
            Some(h) => h.find(from, limit, v),
            None => v.then_some(from),
        }
    }

    /// The attributes of `gfn`.
    pub fn attributes(&self, gfn: Gfn) -> u64 {
        attr(self.probe(gfn).0)
    }

    /// The kind of `gfn` and the end of its run, looked for up to `limit` (no validation).
    fn run_end_racy(&self, gfn: u64, limit: u64) -> (u64, bool) {
        let v = self.probe_racy(Gfn(gfn)).0;
        // A page's scan may run past the limit inside the last page.
        let end = self.find_racy(gfn, limit, v).unwrap_or(limit);
        (end.min(limit), v)
    }

    /// `Some(attributes)` when every gfn of `range` (non-empty) has the same attributes.
    pub fn uniform(&self, range: GfnRange) -> Option<u64> {
        if range.is_empty() || range.end.0 > GFN_END {
            return None;
        }
        self.read(|s| Some(s.uniform_racy(range.start.0, range.end.0)))
    }

    /// [`OneCopyStore::uniform`] without validation: inside one mixed 1G page (the common
    /// conversion's check) the node's own answer, else a walk from the start.
    fn uniform_racy(&self, lo: u64, hi: u64) -> Option<u64> {
        if let Some((node, base)) = self.node_of(lo, hi) {
            let v = node.probe(lo - base).0;
            return node.all(lo - base, hi - base, v).then_some(attr(v));
        }
        let (end, v) = self.run_end_racy(lo, hi);
        (end >= hi).then_some(attr(v))
    }

    /// The node of the mixed 1G page holding all of `[lo, hi)`, and its first gfn.
    #[inline]
    fn node_of(&self, lo: u64, hi: u64) -> Option<(&Node, u64)> {
        self.node_path(lo, hi).map(|p| (p.node, p.base))
    }

    /// The descent to the node of the mixed 1G page holding all of `[lo, hi)`: `None` when the
    /// range leaves one 1G page, lies past `Low`, or its 1G page is uniform.
    #[inline]
    fn node_path(&self, lo: u64, hi: u64) -> Option<NodePath<'_>> {
        if hi > LOW_END || lo >> Node::SPAN_SHIFT != (hi - 1) >> Node::SPAN_SHIFT {
            return None;
        }
        let mid = self.low().active(Low::index(lo))?;
        let units = mid.active(Mid::index(lo))?;
        let node = units.active(Units::index(lo))?;
        Some(NodePath {
            mid,
            units,
            node,
            base: lo & !((1 << Node::SPAN_SHIFT) - 1),
        })
    }

    /// Whether every gfn of `range` has `attributes` under `mask` (true for an empty range).
    pub fn range_has(&self, range: GfnRange, attributes: u64, mask: u64) -> bool {
        if range.is_empty() {
            return true;
        }
        if mask & KVM_MEMORY_ATTRIBUTE_PRIVATE == 0 {
            return attributes & mask == 0;
        }
        if attributes & mask & !KVM_MEMORY_ATTRIBUTE_PRIVATE != 0 {
            return false;
        }
        self.uniform(range) == Some(attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE)
    }

    /// Number of pages of `level` wholly inside `range` that are mixed (2M or 1G; none of 4K).
    pub fn mixed_pages(&self, range: GfnRange, level: Level) -> u64 {
        let (lo, hi) = (range.start.0, range.end.0.min(GFN_END));
        if lo >= hi {
            return 0;
        }
        self.read(|s| {
            let mut mixed = 0;
            if lo < LOW_END {
                mixed += s.low().mixed_pages(lo, hi.min(LOW_END), level);
            }
            if let (true, Some(h)) = (hi > LOW_END, s.high()) {
                mixed += h.mixed_pages(lo.max(LOW_END), hi, level);
            }
            Some(mixed)
        })
    }

    /// Heap bytes the store holds: its directories, nodes, words and blocks (in use or kept
    /// for reuse).
    pub fn heap_bytes(&self) -> usize {
        size_of::<OneCopyStore>()
            + size_of::<Low>()
            + self.low().heap_bytes()
            + self
                .high()
                .map_or(0, |h| size_of::<High>() + h.heap_bytes())
    }

    /// The runs covering `range`, clipped to it, in address order: at most `limit` of them,
    /// from one committed state.
    pub fn runs(&self, range: GfnRange, limit: usize) -> Vec<AttrRun> {
        let end = range.end.0.min(GFN_END);
        self.read(|s| {
            let mut runs = Vec::new();
            let mut at = range.start.0;
            while at < end && runs.len() < limit {
                let (next, v) = s.run_end_racy(at, end);
                if next <= at {
                    // Only a racing write shows a run that ends where it starts.
                    return None;
                }
                runs.push(AttrRun {
                    start: Gfn(at),
                    end: Gfn(next),
                    attributes: attr(v),
                });
                at = next;
            }
            Some(runs)
        })
    }
}

/// The directories and node above a gfn range inside one mixed 1G page.
struct NodePath<'a> {
    mid: &'a Mid,
    units: &'a Units,
    node: &'a Node,
    /// The 1G page's first gfn.
    base: u64,
}

/// What [`OneCopyWriter::set_in_node`] did: the whole conversion, or nothing (the range is
/// not inside one mixed 1G page) with the caller's step handed back.
enum Stored<G, B> {
    Done(Result<Option<G>>),
    Elsewhere(B),
}

impl OneCopyWriter {
    /// An empty store (every gfn shared) and its writer.
    pub fn new() -> Result<Self> {
        Ok(OneCopyWriter {
            store: Arc::new(OneCopyStore {
                seq: AtomicU64::new(0),
                low: Low::make()?,
                high: OnceBox::new(),
            }),
        })
    }

    /// The store, for readers.
    pub fn store(&self) -> &Arc<OneCopyStore> {
        &self.store
    }

    /// Sets every gfn of `range` to `attributes` (only PRIVATE can be stored). Returns `false`,
    /// having done nothing, when the range had them already. Everything it may need is
    /// allocated before anything changes: on an error nothing changed.
    pub fn set(&mut self, range: GfnRange, attributes: u64) -> Result<bool> {
        self.set_with(range, attributes, || ())
            .map(|stored| stored.is_some())
    }

    /// [`set`](Self::set) with the caller's step between deciding and storing: once the range
    /// is known to change and everything is allocated, `before()` runs (KVM's invalidation
    /// and zap), then the store; its value is returned. `Ok(None)`, without calling it, when
    /// nothing changes; on an error it was not called and nothing changed.
    pub fn set_with<G>(
        &mut self,
        range: GfnRange,
        attributes: u64,
        before: impl FnOnce() -> G,
    ) -> Result<Option<G>> {
        AttrStore::check_set(range, attributes)?;
        let v = attributes != 0;
        let before = match self.set_in_node(range, v, before) {
            Stored::Done(result) => return result,
            Stored::Elsewhere(before) => before,
        };
        let s = &*self.store;
        let (lo, hi) = (range.start.0, range.end.0);
        // The one writer reads without the count: nothing changes under it.
        let (end, now) = s.run_end_racy(lo, hi);
        if now == v && end >= hi {
            return Ok(None);
        }
        // Everything a reader does not see first: children, chunks, free blocks.
        let (low, high) = ((lo, hi.min(LOW_END)), (lo.max(LOW_END), hi));
        if low.0 < low.1 {
            s.low().prepare(low.0, low.1, v, None)?;
        }
        if high.0 < high.1 {
            if s.high.get().is_none() {
                let _ = s.high.set(High::make()?);
            }
            if let Some(h) = s.high() {
                h.prepare(high.0, high.1, v, None)?;
            }
        }
        let g = before();
        let seq = s.seq.load(Ordering::Relaxed);
        s.seq.store(seq + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        // Whether a whole tree became one kind does not matter: they have no parent.
        if low.0 < low.1 {
            let _ = s.low().set(low.0, low.1, v);
        }
        if let (true, Some(h)) = (high.0 < high.1, s.high()) {
            let _ = h.set(high.0, high.1, v);
        }
        s.seq.store(seq + 2, Ordering::Release);
        Ok(Some(g))
    }

    /// [`OneCopyWriter::set`] of a range inside one mixed 1G page, the common conversion: one
    /// descent to its node, the node's own check, preparation and update, and the directories
    /// above told only if the node turned uniform. `before` is handed back when the range is
    /// elsewhere.
    fn set_in_node<G, B: FnOnce() -> G>(
        &mut self,
        range: GfnRange,
        v: bool,
        before: B,
    ) -> Stored<G, B> {
        let (lo, hi) = (range.start.0, range.end.0);
        let s = &*self.store;
        let Some(NodePath {
            mid,
            units,
            node,
            base,
        }) = s.node_path(lo, hi)
        else {
            return Stored::Elsewhere(before);
        };
        let (a, b) = (lo - base, hi - base);
        // The one writer reads without the count: nothing changes under it.
        if node.all(a, b, v) {
            return Stored::Done(Ok(None));
        }
        if let Err(e) = node.prepare(a, b, v, None) {
            return Stored::Done(Err(e));
        }
        let g = before();
        let seq = s.seq.load(Ordering::Relaxed);
        s.seq.store(seq + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        if let Some(u) = node.set(a, b, v) {
            if let Some(u) = units.settle(Units::index(lo), u) {
                if let Some(u) = mid.settle(Mid::index(lo), u) {
                    let _ = s.low().settle(Low::index(lo), u);
                }
            }
        }
        s.seq.store(seq + 2, Ordering::Release);
        Stored::Done(Ok(Some(g)))
    }

    /// Heap bytes the store holds ([`OneCopyStore::heap_bytes`]).
    pub fn heap_bytes(&self) -> usize {
        self.store.heap_bytes()
    }
}

//! The attribute store: which gfns are private, over the whole gfn space, with the cost of what
//! is *not* uniform.
//!
//! Linux keeps one xarray entry per 4 KiB gfn; a flat bitmap one bit per gfn; a run list one
//! entry per boundary, which a guest alternating its pages turns into 16+ bytes per page. Here
//! the space is cut like the page tables it feeds, and each piece costs only what its contents
//! need (the roaring idea, with the containers aligned to mapping levels):
//!
//! - **512G units** that are all shared cost nothing; runs of all-private units are one
//!   `(start, end)` pair; any other unit is a *node* (a kind bit per 1G entry);
//! - **1G entries** of a node are a bit, or a *region* when mixed (a kind bit and a
//!   mixed bit per 2M page);
//! - **mixed 2M pages** of a region are an 8-byte slot with up to six boundaries inline, a
//!   64-byte block of bits, or — once that is cheaper for the region — part of a dense 32 KiB
//!   array, never more than a flat bitmap spends on that GiB.
//!
//! So the fault path learns a gfn's kind *and* the largest uniform page around it in one
//! descent of fixed depth ([`AttrStore::probe`]), and "is this 2M or 1G page mixed?" needs no
//! per-memslot state at all. An update allocates, fallibly, everything it may need before it
//! changes anything: on `NoMemory` nothing changed.
//!
//! Worst case (every 2M page mixed, [`WORST_BYTES_PER_GIB`]): 32 KiB of bits per GiB plus a
//! region header and a share of its node, under 1.05× a flat bitmap.

mod backend;
mod block;
mod node;
mod region;

pub use backend::AttrBackend;

use alloc::vec::Vec;
use core::mem::size_of;

use crate::addr::{Gfn, GfnRange, Level, GFN_END};
use crate::error::{Error, Result};
use crate::KVM_MEMORY_ATTRIBUTE_PRIVATE;
use node::{EdgePlans, Node, NODE_GFNS};
use region::{Region, Update, DENSE_BYTES};

/// Regions and nodes kept for reuse, so that a page flipping between uniform and mixed does not
/// allocate and free on every flip, and so that an update finds what it needs ready.
const SPARE: usize = 2;
/// Regions a range set inside a uniform 512G unit makes: its (at most two) edge 1G entries.
const FRESH_REGIONS: usize = 2;
/// 512G units in the gfn space.
const UNITS: u64 = GFN_END / NODE_GFNS;

/// Most bytes one 1G region can hold: the dense form (or a sparse form no bigger, else it
/// would have turned dense), its header in its node's vector with that vector's growth slack
/// (an eighth), and its node's 1/512 share of a node.
const REGION_WORST: usize = DENSE_BYTES + size_of::<Region>() * 9 / 8 + NODE_WORST.div_ceil(512);
/// Most bytes one node costs besides its regions: itself and its key, with growth slack, and
/// its table index.
const NODE_WORST: usize = (size_of::<Node>() + size_of::<u64>()) * 9 / 8 + node::TABLE_BYTES;
/// What the store holds whatever its contents: spare regions and nodes and small vectors.
#[cfg(feature = "test-hooks")]
const FIXED_WORST: usize =
    SPARE * (size_of::<Region>() + 64 * 8 + 8 * 64) + SPARE * NODE_WORST + 3 * 64;

/// The most heap bytes the store holds per GiB of guest address space, whatever a guest does
/// there (every 2M page mixed, in any order): 32 KiB of bits plus about 300 bytes of headers.
/// A flat bitmap holds 32,768 per GiB.
pub const WORST_BYTES_PER_GIB: usize = REGION_WORST;

/// A maximal run of gfns with equal attributes, `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AttrRun {
    /// First gfn of the run.
    pub start: Gfn,
    /// One past the last gfn of the run.
    pub end: Gfn,
    /// The attributes of every gfn in the run.
    pub attributes: u64,
}

impl AttrRun {
    /// The run as a gfn range.
    pub const fn range(&self) -> GfnRange {
        GfnRange::new(self.start, self.end)
    }
}

/// What the fault path needs to know about one gfn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Probe {
    /// The gfn is private.
    pub private: bool,
    /// The largest level whose aligned page around the gfn has one kind throughout.
    pub uniform: Level,
}

impl Probe {
    /// A probe's answer: the gfn's kind and the largest uniform level around it.
    pub const fn new(private: bool, uniform: Level) -> Self {
        Probe { private, uniform }
    }
}

/// How the store holds its memory, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
#[cfg(feature = "test-hooks")]
pub struct StoreShape {
    /// 512G units with a node.
    pub nodes: usize,
    /// 1G regions (mixed 1G pages).
    pub regions: usize,
    /// Regions in the dense form.
    pub dense_regions: usize,
    /// Runs of all-private 512G units.
    pub private_runs: usize,
}

/// Attributes of every gfn (KVM defines one, PRIVATE), stored by what is not uniform.
#[derive(Clone, Debug, Default)]
pub struct AttrStore {
    /// Units (gfn / 512G) with a node, ascending; `nodes[i]` belongs to `keys[i]`.
    keys: Vec<u64>,
    nodes: Vec<Node>,
    /// All-private units as disjoint, non-adjacent `[start, end)` ranges, ascending.
    private: Vec<(u64, u64)>,
    spare_regions: Vec<Region>,
    /// Region vectors for new nodes (a node itself is built on the stack, its vector is the
    /// only allocation it needs).
    spare_vecs: Vec<Vec<Region>>,
}

/// The first and last kind of a stretch of gfns and the boundaries inside it.
#[derive(Clone, Copy, Debug)]
struct Summary {
    first: bool,
    last: bool,
    count: u64,
}

impl Summary {
    const fn uniform(v: bool) -> Self {
        Summary {
            first: v,
            last: v,
            count: 0,
        }
    }
    /// `self` followed by `next`.
    const fn then(self, next: Summary) -> Summary {
        Summary {
            first: self.first,
            last: next.last,
            count: self.count + next.count + (self.last != next.first) as u64,
        }
    }
}

/// What the store's internals can fail with: an allocation, refused before anything changed.
/// One word, so that a result carrying it comes back in registers on the conversion path; the
/// store's entry points turn it into [`Error::NoMemory`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NoMemory {
    bytes: usize,
}

impl From<NoMemory> for Error {
    fn from(e: NoMemory) -> Self {
        Error::NoMemory { bytes: e.bytes }
    }
}

/// The result of the store's internals.
type Alloc<T> = core::result::Result<T, NoMemory>;

/// Makes room for `extra` more elements, growing by an eighth (not doubling) so that slack
/// stays small, and never past `max`.
#[inline]
fn grow<T>(v: &mut Vec<T>, extra: usize, max: usize) -> Alloc<()> {
    if v.capacity() - v.len() >= extra {
        return Ok(());
    }
    grow_by(v, extra, max)
}

/// [`grow`] when there is not room already (out of line: most calls have it).
#[inline(never)]
fn grow_by<T>(v: &mut Vec<T>, extra: usize, max: usize) -> Alloc<()> {
    let add = (v.len() / 8).min(max.saturating_sub(v.len())).max(extra);
    v.try_reserve_exact(add).map_err(|_| NoMemory {
        bytes: add * size_of::<T>(),
    })
}

/// The pieces of size `piece` that `[lo, hi)` covers only partly: `(index, lo, hi)` with
/// offsets inside the piece. At most two.
fn edges(lo: u64, hi: u64, piece: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let (first, last) = (lo / piece, (hi - 1) / piece);
    let clip = move |i: u64| {
        let base = i * piece;
        let (a, b) = (lo.max(base) - base, hi.min(base + piece) - base);
        (a != 0 || b != piece).then_some((i, a, b))
    };
    let second = (last != first).then(|| clip(last)).flatten();
    clip(first).into_iter().chain(second)
}

/// Keeps `item` for reuse if `spare` has room without allocating.
fn recycle<T>(spare: &mut Vec<T>, item: T) {
    if spare.len() < spare.capacity().min(SPARE) {
        spare.push(item);
    }
}

const fn attr(private: bool) -> u64 {
    if private {
        KVM_MEMORY_ATTRIBUTE_PRIVATE
    } else {
        0
    }
}

fn runs_contain(runs: &[(u64, u64)], k: u64) -> bool {
    let i = runs.partition_point(|r| r.0 <= k);
    i > 0 && k < runs[i - 1].1
}

/// Sets units `[a, b)` in the run list to private (`v`) or not; at most one more entry.
fn runs_set(runs: &mut Vec<(u64, u64)>, a: u64, b: u64, v: bool) {
    // Runs that touch or overlap [a, b) (touching ones merge when v).
    let lo = runs.partition_point(|r| r.1 < a);
    let hi = runs.partition_point(|r| r.0 <= b);
    let (mut start, mut end) = (a, b);
    let mut keep_left = None;
    let mut keep_right = None;
    if lo < hi {
        let (first, last) = (runs[lo], runs[hi - 1]);
        if v {
            start = start.min(first.0);
            end = end.max(last.1);
        } else {
            keep_left = (first.0 < a).then_some((first.0, a));
            keep_right = (last.1 > b).then_some((b, last.1));
        }
    }
    let new = [keep_left, v.then_some((start, end)), keep_right];
    // Not `splice`: with more new entries than old ones it collects the rest into a temporary
    // vector, an allocation after the reservation. Removing, then inserting into the room
    // reserved (at most one more entry than before), allocates nothing.
    runs.drain(lo..hi);
    for (i, run) in new.into_iter().flatten().enumerate() {
        runs.insert(lo + i, run);
    }
}

impl AttrStore {
    /// A store where every gfn is shared (attributes 0).
    pub const fn new() -> Self {
        AttrStore {
            keys: Vec::new(),
            nodes: Vec::new(),
            private: Vec::new(),
            spare_regions: Vec::new(),
            spare_vecs: Vec::new(),
        }
    }

    /// The position of `unit`'s node, or where it would go.
    #[inline]
    fn node_at(&self, unit: u64) -> core::result::Result<usize, usize> {
        // Real guests have one or two units: a binary search of one or two keys.
        let i = self.keys.partition_point(|&k| k < unit);
        if self.keys.get(i) == Some(&unit) {
            Ok(i)
        } else {
            Err(i)
        }
    }

    #[inline]
    fn node(&self, unit: u64) -> Option<&Node> {
        self.node_at(unit).ok().map(|i| &self.nodes[i])
    }

    /// The kind of `gfn` and the largest level whose aligned page around it is uniform: one
    /// descent of at most three fixed levels, then a bit probe or an inline slot. No search in
    /// runs of pages, no allocation.
    #[inline]
    pub fn probe(&self, gfn: Gfn) -> Probe {
        let gfn = gfn.0;
        let unit = gfn / NODE_GFNS;
        let (private, uniform) = match self.node(unit) {
            Some(n) => n.probe(gfn % NODE_GFNS),
            None => (runs_contain(&self.private, unit), Level::G1),
        };
        Probe { private, uniform }
    }

    /// Whether `gfn` is private.
    #[inline]
    pub fn is_private(&self, gfn: Gfn) -> bool {
        self.probe(gfn).private
    }

    /// The attributes of `gfn`.
    #[inline]
    pub fn get(&self, gfn: Gfn) -> u64 {
        attr(self.is_private(gfn))
    }

    /// The first gfn at or after `gfn` whose kind is not `private`, if any.
    fn find(&self, gfn: u64, private: bool) -> Option<u64> {
        let unit = gfn / NODE_GFNS;
        match self.node(unit) {
            Some(n) => {
                if let Some(o) = n.find(gfn % NODE_GFNS, private) {
                    return Some(unit * NODE_GFNS + o);
                }
            }
            None if runs_contain(&self.private, unit) != private => return Some(gfn),
            None => {}
        }
        let mut next = unit + 1;
        loop {
            if next >= UNITS {
                return None;
            }
            let r = self.private.partition_point(|r| r.1 <= next);
            let run = self.private.get(r).copied();
            if private {
                // Skip all-private units; the unit after a run is never in another run.
                if let Some((_, e)) = run.filter(|&(s, _)| s <= next) {
                    next = e;
                    continue;
                }
                return Some(match self.node(next) {
                    Some(n) => next * NODE_GFNS + n.find(0, true).unwrap_or(0),
                    None => next * NODE_GFNS,
                });
            }
            // Looking for private: the next node or all-private run, whichever comes first.
            let k = self.keys.partition_point(|&k| k < next);
            let node_at = self.keys.get(k).copied();
            let run_at = run.map(|(s, _)| s.max(next));
            return match (node_at, run_at) {
                (Some(n), r) if r.is_none_or(|r| n < r) => {
                    Some(n * NODE_GFNS + self.nodes[k].find(0, false).unwrap_or(0))
                }
                (_, Some(r)) => Some(r * NODE_GFNS),
                _ => None,
            };
        }
    }

    /// One past the last gfn of the run holding `gfn`: the next gfn of the other kind.
    pub fn next_change(&self, gfn: Gfn) -> u64 {
        self.find(gfn.0, self.is_private(gfn)).unwrap_or(GFN_END)
    }

    /// The run from `gfn` to the next change of kind.
    pub fn run_from(&self, gfn: Gfn) -> AttrRun {
        AttrRun {
            start: gfn,
            end: Gfn(self.next_change(gfn)),
            attributes: self.get(gfn),
        }
    }

    /// Whether every gfn in `range` has `attributes` under `mask` (bits outside `mask` ignored),
    /// as `kvm_range_has_memory_attributes`. An empty range has any attributes.
    pub fn range_has(&self, range: GfnRange, attributes: u64, mask: u64) -> bool {
        if range.is_empty() {
            return true;
        }
        let want = attributes & mask;
        if want & !KVM_MEMORY_ATTRIBUTE_PRIVATE != 0 {
            return false;
        }
        mask & KVM_MEMORY_ATTRIBUTE_PRIVATE == 0 || self.uniform(range) == Some(want)
    }

    /// The attributes if every gfn of `range` has the same ones, else `None`.
    pub fn uniform(&self, range: GfnRange) -> Option<u64> {
        let probe = self.probe(range.start);
        // The uniform page around the start answers most ranges (every one-page range) in one
        // descent; only a range reaching past it is scanned, up to the first other kind.
        if probe.uniform.page_of(range.start).end >= range.end {
            return Some(attr(probe.private));
        }
        let end = self.find(range.start.0, probe.private).unwrap_or(GFN_END);
        (end >= range.end.0).then_some(attr(probe.private))
    }

    /// The runs covering `range`, clipped to it, in address order (shared runs included).
    pub fn runs(&self, range: GfnRange) -> Runs<'_> {
        Runs {
            store: self,
            start: range.start.0,
            end: range.end.0,
        }
    }

    /// Number of large pages of `level` wholly inside `range` that are mixed.
    pub fn mixed_pages(&self, range: GfnRange, level: Level) -> u64 {
        let range = range.gfns();
        let mut mixed = 0;
        let mut g = range.start;
        while g < range.end {
            let unit = g / NODE_GFNS;
            let end = range.end.min((unit + 1) * NODE_GFNS);
            let base = unit * NODE_GFNS;
            if let Some(n) = self.node(unit) {
                match level {
                    Level::K4 => {}
                    Level::M2 => mixed += n.large_pages(g - base, end - base).0,
                    Level::G1 => {
                        let g1 = Level::G1.pages();
                        let (lo, hi) = (g.div_ceil(g1) * g1, end / g1 * g1);
                        if lo < hi {
                            mixed += (hi - lo) / g1 - n.large_pages(lo - base, hi - base).1;
                        }
                    }
                }
            }
            g = end;
        }
        mixed
    }

    /// Whether the 2M page holding `gfn` is mixed.
    pub fn is_mixed_2m(&self, gfn: Gfn) -> bool {
        let gfn = gfn.0;
        self.node(gfn / NODE_GFNS)
            .is_some_and(|n| n.is_mixed_2m(gfn % NODE_GFNS))
    }

    /// Sets every gfn of `range` to `attributes` (a range inside the gfn space; only PRIVATE
    /// can be stored). Returns `false`, having done nothing, when the range already had them.
    /// On `NoMemory` nothing changed.
    #[inline]
    pub fn set(&mut self, range: GfnRange, attributes: u64) -> Result<bool> {
        Self::check_set(range, attributes)?;
        let v = attributes != 0;
        let (start, end) = (range.start.0, range.end.0);
        let g1 = Level::G1.pages();
        if start / g1 == (end - 1) / g1 {
            // Inside one 1G entry of an existing node, the common conversion: the node's own
            // update, without the store-wide walks.
            let unit = start / NODE_GFNS;
            if let Ok(i) = self.node_at(unit) {
                let base = unit * NODE_GFNS;
                return Ok(self.set_in_entry(i, start - base, end - base, v)?);
            }
        }
        self.set_range(range, v)
    }

    /// What any attribute store can be asked to set: a non-empty range inside the gfn space,
    /// and only PRIVATE (the one place for that rule; the concurrent front's store uses it too).
    #[inline]
    pub fn check_set(range: GfnRange, attributes: u64) -> Result<()> {
        if attributes & !KVM_MEMORY_ATTRIBUTE_PRIVATE != 0 {
            return Err(Error::UnsupportedAttributes {
                attributes,
                supported: KVM_MEMORY_ATTRIBUTE_PRIVATE,
            });
        }
        if range.is_empty() || range.end.0 > GFN_END {
            return Err(Error::Unsupported {
                what: crate::Unsupported::OutsideGfnSpace,
            });
        }
        Ok(())
    }

    /// [`AttrStore::set`] of any range: checked for a change, reserved, committed (kept out of
    /// line so that the one-entry path stays short).
    #[inline(never)]
    fn set_range(&mut self, range: GfnRange, v: bool) -> Result<bool> {
        if self.uniform(range) == Some(attr(v)) {
            return Ok(false);
        }
        let plans = self.reserve(range, v)?;
        // From here on nothing allocates and nothing can fail.
        self.commit(range, v, &plans);
        Ok(true)
    }

    /// Sets offsets `[lo, hi)` of node `i`, inside one 1G entry, to `v`: the entry's region
    /// updated, or one made for it (a spare made ready first), then the node dropped if it may
    /// have become uniform and did. Allocates before it changes anything.
    #[inline]
    fn set_in_entry(&mut self, i: usize, lo: u64, hi: u64, v: bool) -> Alloc<bool> {
        // A node turning all-private becomes a unit run.
        grow(&mut self.private, 1, usize::MAX)?;
        let node = &mut self.nodes[i];
        match node.update_in_region(lo, hi, v, &mut self.spare_regions)? {
            Some(Update::Unchanged) => Ok(false),
            Some(Update::Edited) => Ok(true),
            Some(Update::Changed) => {
                self.drop_if_uniform(i);
                Ok(true)
            }
            None => self.create_in_entry(i, lo, hi, v),
        }
    }

    /// [`AttrStore::set_in_entry`] where the entry has no region: its kind bit, or a region
    /// made for it (a spare made ready first).
    #[inline(never)]
    fn create_in_entry(&mut self, i: usize, lo: u64, hi: u64, v: bool) -> Alloc<bool> {
        let fresh = usize::from(self.nodes[i].needs_spare());
        self.ready_spares(0, fresh)?;
        match self.nodes[i].create_in_entry(lo, hi, v, &mut self.spare_regions)? {
            None => return Ok(false),
            Some(Update::Changed) => self.drop_if_uniform(i),
            Some(_) => {}
        }
        Ok(true)
    }

    /// Makes the spares that the next `vecs` node and `regions` region creations pop (from the
    /// end) present and able to take a fresh range without allocating.
    fn ready_spares(&mut self, vecs: usize, regions: usize) -> Alloc<()> {
        // Room for the spares still missing, not for `vecs` and `regions` more.
        let missing = vecs.saturating_sub(self.spare_vecs.len());
        grow(&mut self.spare_vecs, missing, SPARE)?;
        let missing = regions.saturating_sub(self.spare_regions.len());
        grow(&mut self.spare_regions, missing, SPARE)?;
        while self.spare_vecs.len() < vecs {
            self.spare_vecs.push(Vec::new());
        }
        while self.spare_regions.len() < regions {
            self.spare_regions.push(Region::new());
        }
        let (nv, nr) = (self.spare_vecs.len(), self.spare_regions.len());
        for v in &mut self.spare_vecs[nv - vecs..] {
            grow(v, FRESH_REGIONS, 512)?;
        }
        for r in &mut self.spare_regions[nr - regions..] {
            r.reserve_fresh()?;
        }
        Ok(())
    }

    /// Drops node `i` if it became uniform; an all-private unit becomes a run.
    fn drop_if_uniform(&mut self, i: usize) {
        if let Some(u) = self.nodes[i].uniform() {
            let unit = self.keys.remove(i);
            recycle(&mut self.spare_vecs, self.nodes.remove(i).into_regions());
            if u {
                runs_set(&mut self.private, unit, unit + 1, true);
            }
        }
    }

    /// Allocates ahead what making all of `range` (a new memslot's gfns) one kind will need —
    /// the nodes of its partial 512G units, room in the small vectors, the spare regions — so
    /// that the conversion a VMM makes right after creating a slot (everything private, at
    /// start-up) allocates nothing. Costs a few hundred bytes once; changes no attribute.
    pub fn reserve_span(&mut self, range: GfnRange) -> Result<()> {
        if range.is_empty() || range.end.0 > GFN_END {
            return Ok(());
        }
        let range = range.gfns();
        // The units the range covers partly: what either kind needs in the node there, or a
        // node to make (whole units are runs).
        let mut fresh = 0;
        for (unit, lo, hi) in edges(range.start, range.end, NODE_GFNS) {
            match self.node_at(unit) {
                Ok(i) => {
                    for v in [false, true] {
                        self.nodes[i].reserve(lo, hi, v)?;
                    }
                }
                Err(_) => fresh += 1,
            }
        }
        grow(&mut self.keys, fresh, usize::MAX)?;
        grow(&mut self.nodes, fresh, usize::MAX)?;
        // The unit runs a set may add (reserve() asks for three more than it holds then).
        grow(&mut self.private, 6, usize::MAX)?;
        // At most two fresh regions (the range's edge 1G pages): the spares.
        Ok(self.ready_spares(fresh, SPARE)?)
    }

    /// Allocates everything `commit(range, v)` may need, and plans the regions it changes at
    /// the range's edges (per edge 512G unit, in `edges` order) for `commit` to carry out.
    fn reserve(&mut self, range: GfnRange, v: bool) -> Alloc<[EdgePlans; 2]> {
        let range = range.gfns();
        let (mut fresh_nodes, mut fresh_regions) = (0, 0);
        let mut plans = [[None, None], [None, None]];
        for (slot, (unit, lo, hi)) in plans
            .iter_mut()
            .zip(edges(range.start, range.end, NODE_GFNS))
        {
            if let Ok(i) = self.node_at(unit) {
                let (fresh, node_plans) = self.nodes[i].reserve(lo, hi, v)?;
                fresh_regions += fresh;
                *slot = node_plans;
            } else if runs_contain(&self.private, unit) != v {
                fresh_nodes += 1;
                fresh_regions += edges(lo, hi, 1 << 18).count();
            }
        }
        grow(&mut self.keys, fresh_nodes, usize::MAX)?;
        grow(&mut self.nodes, fresh_nodes, usize::MAX)?;
        grow(&mut self.private, 3, usize::MAX)?;
        self.ready_spares(fresh_nodes, fresh_regions)?;
        Ok(plans)
    }

    fn commit(&mut self, range: GfnRange, v: bool, plans: &[EdgePlans; 2]) {
        let range = range.gfns();
        let (a, b) = (range.start.div_ceil(NODE_GFNS), range.end / NODE_GFNS);
        if a < b {
            let (i0, i1) = (
                self.keys.partition_point(|&k| k < a),
                self.keys.partition_point(|&k| k < b),
            );
            self.keys.drain(i0..i1);
            for n in self.nodes.drain(i0..i1) {
                recycle(&mut self.spare_vecs, n.into_regions());
            }
            runs_set(&mut self.private, a, b, v);
        }
        for (unit_plans, (unit, lo, hi)) in
            plans.iter().zip(edges(range.start, range.end, NODE_GFNS))
        {
            match self.node_at(unit) {
                Ok(i) => {
                    self.nodes[i].set(lo, hi, v, &mut self.spare_regions, unit_plans);
                    self.drop_if_uniform(i);
                }
                Err(i) => {
                    let u = runs_contain(&self.private, unit);
                    if u != v {
                        let mut node =
                            Node::with_regions(self.spare_vecs.pop().unwrap_or_default(), u);
                        node.set(lo, hi, v, &mut self.spare_regions, &[None, None]);
                        self.keys.insert(i, unit);
                        self.nodes.insert(i, node);
                        if u {
                            runs_set(&mut self.private, unit, unit + 1, false);
                        }
                    }
                }
            }
        }
    }

    /// The most heap bytes a store can hold when every gfn outside `span` is shared (or the
    /// whole `span` is one run): one worst-case region per 1G page and one node per 512G unit
    /// that `span` touches, two runs of units per unit, and the fixed spares. Tested against
    /// hostile operation sequences in `tests/attr_store.rs`.
    #[cfg(feature = "test-hooks")]
    pub fn bound_for(span: GfnRange) -> usize {
        if span.is_empty() {
            return FIXED_WORST;
        }
        let span = span.gfns();
        let g1 = 1u64 << 18;
        let regions = (span.end.div_ceil(g1) - span.start / g1) as usize;
        let units = (span.end.div_ceil(NODE_GFNS) - span.start / NODE_GFNS) as usize;
        regions.saturating_mul(REGION_WORST)
            + units.saturating_mul(NODE_WORST + 2 * size_of::<(u64, u64)>())
            + FIXED_WORST
    }

    /// Number of places where the attributes change (counting gfn 0 when it is private), as a
    /// list of runs would store them. O(regions × 512), no per-gfn work.
    pub fn boundaries(&self) -> usize {
        let mut acc = Summary::uniform(false);
        let mut at = 0u64; // next unit not yet summarised
        let mut runs = self.private.iter().peekable();
        let mut nodes = self.keys.iter().zip(&self.nodes).peekable();
        loop {
            let next_run = runs.peek().map(|r| r.0);
            let next_node = nodes.peek().map(|(k, _)| **k);
            let (start, s, end) = match (next_run, next_node) {
                (Some(r), n) if n.is_none_or(|n| r < n) => {
                    let (s, e) = *runs.next().expect("peeked");
                    (s, Summary::uniform(true), e)
                }
                (_, Some(k)) => {
                    let (_, n) = nodes.next().expect("peeked");
                    (k, n.summary(), k + 1)
                }
                _ => break,
            };
            if start > at {
                acc = acc.then(Summary::uniform(false));
            }
            acc = acc.then(s);
            at = end;
        }
        if at < UNITS {
            acc = acc.then(Summary::uniform(false));
        }
        acc.count as usize
    }

    /// How the store holds its memory.
    #[cfg(feature = "test-hooks")]
    pub fn shape(&self) -> StoreShape {
        StoreShape {
            nodes: self.nodes.len(),
            regions: self.nodes.iter().map(|n| n.region_count()).sum(),
            dense_regions: self.nodes.iter().map(Node::dense_regions).sum(),
            private_runs: self.private.len(),
        }
    }

    /// Bytes of heap memory held, exactly as allocated (spares included).
    pub fn heap_bytes(&self) -> usize {
        self.keys.capacity() * size_of::<u64>()
            + self.nodes.capacity() * size_of::<Node>()
            + self.private.capacity() * size_of::<(u64, u64)>()
            + self.spare_regions.capacity() * size_of::<Region>()
            + self.spare_vecs.capacity() * size_of::<Vec<Region>>()
            + self.nodes.iter().map(Node::heap_bytes).sum::<usize>()
            + self
                .spare_vecs
                .iter()
                .map(|v| v.capacity() * size_of::<Region>())
                .sum::<usize>()
            + self
                .spare_regions
                .iter()
                .map(Region::heap_bytes)
                .sum::<usize>()
    }

    /// Checks the invariants (canonical form: nothing uniform is stored as mixed, runs maximal,
    /// every index up to date). For tests and fuzzing.
    #[cfg(feature = "test-hooks")]
    pub fn check_invariants(&self) -> core::result::Result<(), &'static str> {
        if self.keys.len() != self.nodes.len() {
            return Err("node keys and nodes differ in number");
        }
        if self.keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err("node keys not ascending");
        }
        if self.keys.last().is_some_and(|&k| k >= UNITS) {
            return Err("node beyond the gfn space");
        }
        for w in self.private.windows(2) {
            if w[0].1 >= w[1].0 {
                return Err("private unit runs overlap, touch or are unsorted");
            }
        }
        for &(s, e) in &self.private {
            if s >= e || e > UNITS {
                return Err("empty or out-of-space private unit run");
            }
        }
        for (&k, n) in self.keys.iter().zip(&self.nodes) {
            if runs_contain(&self.private, k) {
                return Err("a unit is both a node and a private run");
            }
            if n.uniform().is_some() {
                return Err("a uniform 512G node was kept");
            }
            n.check()?;
        }
        Ok(())
    }
}

/// Iterator over the runs of a range; see [`AttrStore::runs`].
#[derive(Clone, Debug)]
pub struct Runs<'a> {
    store: &'a AttrStore,
    start: u64,
    end: u64,
}

impl Iterator for Runs<'_> {
    type Item = AttrRun;

    fn next(&mut self) -> Option<AttrRun> {
        if self.start >= self.end {
            return None;
        }
        let private = self.store.is_private(Gfn(self.start));
        let end = self
            .store
            .find(self.start, private)
            .map_or(self.end, |g| g.min(self.end));
        let run = AttrRun {
            start: Gfn(self.start),
            end: Gfn(end),
            attributes: attr(private),
        };
        self.start = end;
        Some(run)
    }
}

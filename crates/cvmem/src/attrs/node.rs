//! A 512G unit whose gfns are not all of one kind: per 1G entry a kind bit, or a [`Region`].
//!
//! Regions live in one vector in no order; an [`Index`] maps a 1G entry to its region, so
//! finding one is a short scan or a load, adding one a push and dropping one a swap-remove (the
//! moved region knows its entry): no region ever moves more than once per change, however many
//! a node holds. The index is inline for a few regions (a node of a boot-like guest holds one
//! or two) and a 1 KiB table beyond, so a node costs ~190 bytes, not 1.2 KiB. 1G eligibility
//! needs no state of its own: a 1G page is uniform exactly when its entry has no region.

use alloc::vec::Vec;
use core::mem::size_of;

use super::block::{self, Block};
use super::region::{Plan, Region, Update, REGION_GFNS};
use super::{edges, grow, recycle, Alloc, Summary};
use crate::addr::Level;

/// The plans of a change's (at most two) edge entries that have regions: made while reserving,
/// carried out by [`Node::set`].
pub(super) type EdgePlans = [Option<(u32, Plan)>; 2];
/// Gfns per node (512G).
pub(super) const NODE_GFNS: u64 = 1 << 27;
/// 1G entries per node.
const ENTRIES: u32 = 512;
const ENTRY_GFNS: u64 = REGION_GFNS as u64;
/// Regions a node indexes inline.
const SMALL: usize = 8;
/// A node whose table index falls to this many regions goes back to the inline one (not at
/// `SMALL`, so that a region appearing and vanishing there does not allocate every time).
const SMALL_BACK: usize = SMALL / 2;
/// Heap bytes of the table index.
pub(super) const TABLE_BYTES: usize = ENTRIES as usize * size_of::<u16>();

/// Entry → position in the node's `regions`.
#[derive(Clone, Debug)]
enum Index {
    /// The entry of `regions[i]` is `entries[i]` (at most [`SMALL`] regions).
    Small([u16; SMALL]),
    /// `table[e]` is the position of entry `e`'s region (meaningful where present).
    Table(Vec<u16>),
}

#[derive(Clone, Debug)]
pub(super) struct Node {
    /// Entries with a region.
    present: Block,
    /// Per entry without a region: its kind.
    private: Block,
    /// Entry → position in `regions` (meaningful where `present`).
    index: Index,
    /// One per present entry, in no order, and the parked region if any.
    regions: Vec<Region>,
    /// The entry of a region that became uniform and was kept in place (not present) for the
    /// next region this node needs: a buffer whose last mixed 2M page comes and goes makes
    /// and drops its region on every conversion, and parking saves the moves and the index
    /// updates of both. At most one, small and sparse (see [`Region::parkable`]).
    parked: Option<u16>,
}

impl Node {
    /// An all-`v` node holding its regions in `regions` (emptied; its capacity is kept).
    pub(super) fn with_regions(mut regions: Vec<Region>, v: bool) -> Self {
        regions.clear();
        Node {
            present: [0; 8],
            private: block::filled(v),
            index: Index::Small([0; SMALL]),
            regions,
            parked: None,
        }
    }

    /// The node's region vector, emptied, for reuse (only a small one is worth keeping).
    pub(super) fn into_regions(mut self) -> Vec<Region> {
        if self.regions.capacity() > 8 {
            return Vec::new();
        }
        self.regions.clear();
        self.regions
    }

    #[inline]
    fn present(&self, e: u32) -> bool {
        block::get(&self.present, e)
    }

    /// The position of present entry `e`'s region.
    #[inline]
    fn slot(&self, e: u32) -> usize {
        match &self.index {
            Index::Small(entries) => entries[..self.regions.len()]
                .iter()
                .position(|&x| u32::from(x) == e)
                .unwrap_or(usize::MAX),
            Index::Table(table) => usize::from(table[e as usize]),
        }
    }

    /// Records that `regions[i]` is entry `e`'s.
    fn place(&mut self, e: u32, i: usize) {
        match &mut self.index {
            Index::Small(entries) => entries[i] = e as u16,
            Index::Table(table) => table[e as usize] = i as u16,
        }
    }

    /// Makes sure the index can take `fresh` more regions without allocating.
    fn reserve_index(&mut self, fresh: usize) -> Alloc<()> {
        if let Index::Small(entries) = &self.index {
            if self.regions.len() + fresh > SMALL {
                let mut table = Vec::new();
                grow(&mut table, ENTRIES as usize, ENTRIES as usize)?;
                table.resize(ENTRIES as usize, 0);
                for (i, &e) in entries[..self.regions.len()].iter().enumerate() {
                    table[usize::from(e)] = i as u16;
                }
                self.index = Index::Table(table);
            }
        }
        Ok(())
    }

    #[inline]
    fn region(&self, e: u32) -> Option<&Region> {
        self.present(e).then(|| &self.regions[self.slot(e)])
    }

    /// Makes sure [`Node::set`] of `[lo, hi)` to `v` completes without allocating; returns how
    /// many fresh regions it will take from the spares, and the plans of its edge regions for
    /// [`Node::set`] to carry out (a range is planned once).
    pub(super) fn reserve(&mut self, lo: u64, hi: u64, v: bool) -> Alloc<(usize, EdgePlans)> {
        let mut fresh = 0;
        let mut plans = [None, None];
        for (slot, (e, a, b)) in plans.iter_mut().zip(edges(lo, hi, ENTRY_GFNS)) {
            let e = e as u32;
            if self.present(e) {
                let i = self.slot(e);
                let region = &mut self.regions[i];
                let plan = region.plan(a as u32, b as u32, v);
                region.reserve(&plan)?;
                *slot = Some((e, plan));
            } else if block::get(&self.private, e) != v {
                fresh += 1;
            }
        }
        grow(&mut self.regions, fresh, ENTRIES as usize)?;
        self.reserve_index(fresh)?;
        Ok((fresh, plans))
    }

    /// The kind of the gfn at offset `off` and the largest level whose page around it is
    /// uniform.
    #[inline]
    pub(super) fn probe(&self, off: u64) -> (bool, Level) {
        let e = (off / ENTRY_GFNS) as u32;
        match self.region(e) {
            Some(r) => match r.probe((off % ENTRY_GFNS) as u32) {
                (v, true) => (v, Level::M2),
                (v, false) => (v, Level::K4),
            },
            None => (block::get(&self.private, e), Level::G1),
        }
    }

    /// Mixed 2M pages wholly inside `[lo, hi)` (offsets), and whether the 1G page of each
    /// entry wholly inside is uniform: `(mixed 2M pages, uniform 1G pages)`.
    pub(super) fn large_pages(&self, lo: u64, hi: u64) -> (u64, u64) {
        let (mut mixed, mut uniform) = (0, 0);
        let mut e = lo / ENTRY_GFNS;
        while e * ENTRY_GFNS < hi {
            let base = e * ENTRY_GFNS;
            let (a, b) = (lo.max(base) - base, hi.min(base + ENTRY_GFNS) - base);
            let full = a == 0 && b == ENTRY_GFNS;
            match self.region(e as u32) {
                Some(r) => {
                    let pages = (a.div_ceil(512) as u32, (b / 512) as u32);
                    if pages.0 < pages.1 {
                        mixed += u64::from(r.mixed_count(pages.0, pages.1));
                    }
                }
                None => uniform += u64::from(full),
            }
            e += 1;
        }
        (mixed, uniform)
    }

    /// Whether the 2M page holding offset `off` is mixed.
    pub(super) fn is_mixed_2m(&self, off: u64) -> bool {
        self.region((off / ENTRY_GFNS) as u32)
            .is_some_and(|r| r.is_mixed(((off % ENTRY_GFNS) / 512) as u32))
    }

    /// `Some(v)` when every gfn of the node is `v`.
    pub(super) fn uniform(&self) -> Option<bool> {
        if !block::is_clear(&self.present) {
            return None;
        }
        block::uniform(&self.private)
    }

    /// Sets offsets `[lo, hi)` to `v`, taking fresh regions from `spare` and returning dropped
    /// ones there, carrying out the edge regions' `plans` from [`Node::reserve`]. Needs that
    /// reservation (and enough spares) first; never allocates.
    pub(super) fn set(
        &mut self,
        lo: u64,
        hi: u64,
        v: bool,
        spare: &mut Vec<Region>,
        plans: &EdgePlans,
    ) {
        let (a, b) = (lo.div_ceil(ENTRY_GFNS) as u32, (hi / ENTRY_GFNS) as u32);
        if a < b {
            // Only the present entries: a word scan, then one swap-remove each.
            let mut e = a;
            while let Some(p) = block::find(&self.present, e, false).filter(|&p| p < b) {
                self.remove(p, spare);
                e = p + 1;
            }
            block::fill(&mut self.private, a, b, v);
        }
        for (e, sub_lo, sub_hi) in edges(lo, hi, ENTRY_GFNS) {
            let (e, sub_lo, sub_hi) = (e as u32, sub_lo as u32, sub_hi as u32);
            if self.present(e) {
                let i = self.slot(e);
                // The plan made while reserving still holds: nothing changed the region since.
                match plans.iter().flatten().find(|(planned, _)| *planned == e) {
                    Some((_, plan)) => {
                        self.regions[i].apply(plan);
                    }
                    None => self.regions[i].set(sub_lo, sub_hi, v),
                }
                self.settle(e, i, spare);
            } else {
                if block::get(&self.private, e) != v {
                    self.create(e, sub_lo, sub_hi, v, spare);
                }
            }
        }
    }

    /// Sets offsets `[lo, hi)`, inside one 1G entry, to `v` when that entry has a region: the
    /// region's own update, allocating first what it needs (on `NoMemory` nothing changed),
    /// then the region dropped if it became uniform. `Ok(None)` when the entry has no region;
    /// [`Update::Changed`] when the node may have become uniform.
    #[inline]
    pub(super) fn update_in_region(
        &mut self,
        lo: u64,
        hi: u64,
        v: bool,
        spare: &mut Vec<Region>,
    ) -> Alloc<Option<Update>> {
        let e = (lo / ENTRY_GFNS) as u32;
        if !self.present(e) {
            return Ok(None);
        }
        let i = self.slot(e);
        let base = u64::from(e) * ENTRY_GFNS;
        let done = self.regions[i].update((lo - base) as u32, (hi - base) as u32, v)?;
        if done == Update::Changed {
            self.settle(e, i, spare);
        }
        Ok(Some(done))
    }

    /// Gives entry `e` (without a region, not all `v`) a region with offsets `[lo, hi)` in it
    /// set to `v`: the parked region, else one from `spare`. Needs room for one more region (in
    /// `regions` and the index, unless one is parked) and a spare first; never allocates.
    fn create(&mut self, e: u32, lo: u32, hi: u32, v: bool, spare: &mut Vec<Region>) {
        let i = match self.parked.take() {
            Some(old) => self.slot(u32::from(old)),
            None => {
                debug_assert!(
                    self.regions.len() < self.regions.capacity(),
                    "room for a region was reserved"
                );
                self.regions.push(spare.pop().unwrap_or_else(Region::new));
                self.regions.len() - 1
            }
        };
        let region = &mut self.regions[i];
        region.make(e as u16, lo, hi, v);
        self.place(e, i);
        block::set(&mut self.present, e, true);
    }

    /// Sets offsets `[lo, hi)`, inside one 1G entry without a region, to `v`: `Ok(None)` when
    /// the entry is all `v` already, its kind bit when the range is the whole entry
    /// ([`Update::Changed`]: the node may be uniform now), else a region made for it (the
    /// parked one, or one from `spare`, which the caller has made ready). Allocates before it
    /// changes anything.
    pub(super) fn create_in_entry(
        &mut self,
        lo: u64,
        hi: u64,
        v: bool,
        spare: &mut Vec<Region>,
    ) -> Alloc<Option<Update>> {
        let e = (lo / ENTRY_GFNS) as u32;
        debug_assert!(!self.present(e) && e == ((hi - 1) / ENTRY_GFNS) as u32);
        if block::get(&self.private, e) == v {
            return Ok(None);
        }
        if hi - lo == ENTRY_GFNS {
            // The whole entry: its kind bit, and the node may have become uniform.
            block::set(&mut self.private, e, v);
            return Ok(Some(Update::Changed));
        }
        if self.parked.is_none() {
            grow(&mut self.regions, 1, ENTRIES as usize)?;
            self.reserve_index(1)?;
        }
        let base = u64::from(e) * ENTRY_GFNS;
        self.create(e, (lo - base) as u32, (hi - base) as u32, v, spare);
        // A fresh region is never uniform: neither is its node.
        Ok(Some(Update::Edited))
    }

    /// Whether making a region now would take one from the spares.
    pub(super) fn needs_spare(&self) -> bool {
        self.parked.is_none()
    }

    /// After a change to region `i` (entry `e`): dropped if it became uniform, else given the
    /// form that fits it.
    fn settle(&mut self, e: u32, i: usize, spare: &mut Vec<Region>) {
        match self.regions[i].uniform() {
            Some(u) => {
                if self.parked.is_none() && self.regions[i].parkable() {
                    self.parked = Some(e as u16);
                    block::set(&mut self.present, e, false);
                } else {
                    self.remove(e, spare);
                }
                block::set(&mut self.private, e, u);
            }
            None => self.regions[i].adapt(),
        }
    }

    /// Drops the region of entry `e` (its kind bit is the caller's to set).
    fn remove(&mut self, e: u32, spare: &mut Vec<Region>) {
        let i = self.slot(e);
        let region = self.regions.swap_remove(i);
        if let Some(moved) = self.regions.get(i) {
            let e = u32::from(moved.entry);
            self.place(e, i);
        }
        if matches!(self.index, Index::Table(_)) && self.region_count() <= SMALL_BACK {
            let mut entries = [0; SMALL];
            for (slot, r) in entries.iter_mut().zip(&self.regions) {
                *slot = r.entry;
            }
            self.index = Index::Small(entries);
        }
        block::set(&mut self.present, e, false);
        if !region.is_dense() {
            recycle(spare, region);
        }
        self.shrink();
    }

    /// Gives back the room a churn of buffers left in `regions` (at ~200 bytes a region) once it
    /// exceeds a quarter of the regions held, keeping an eighth and at least two: a region
    /// coming and going at the edge never reallocates, and the (at most two) regions a set may
    /// still create after dropping some keep the room reserved for them. Optional work:
    /// without memory the vector stays as it is.
    fn shrink(&mut self) {
        let (len, cap) = (self.regions.len(), self.regions.capacity());
        if cap - len <= (len / 4).max(4) {
            return;
        }
        let mut fewer = Vec::new();
        if fewer.try_reserve_exact(len + len / 8 + 2).is_ok() {
            fewer.append(&mut self.regions);
            self.regions = fewer;
        }
    }

    /// The first offset at or after `from` whose gfn is not `v`.
    pub(super) fn find(&self, from: u64, v: bool) -> Option<u64> {
        let e = (from / ENTRY_GFNS) as u32;
        match self.region(e) {
            Some(r) => {
                if let Some(o) = r.find((from % ENTRY_GFNS) as u32, v) {
                    return Some(u64::from(e) * ENTRY_GFNS + u64::from(o));
                }
            }
            None if block::get(&self.private, e) != v => return Some(from),
            None => {}
        }
        if e + 1 >= ENTRIES {
            return None;
        }
        let mut candidates = self.private;
        for (c, p) in candidates.iter_mut().zip(self.present) {
            *c = (*c ^ if v { u64::MAX } else { 0 }) | p;
        }
        let q = block::find(&candidates, e + 1, false)?;
        let within = self.region(q).map_or(0, |r| r.find(0, v).unwrap_or(0));
        Some(u64::from(q) * ENTRY_GFNS + u64::from(within))
    }

    /// First and last kind and the number of boundaries inside the node.
    pub(super) fn summary(&self) -> Summary {
        let mut acc: Option<Summary> = None;
        for e in 0..ENTRIES {
            let s = match self.region(e) {
                Some(r) => r.summary(),
                None => Summary::uniform(block::get(&self.private, e)),
            };
            acc = Some(acc.map_or(s, |a| a.then(s)));
        }
        acc.unwrap_or(Summary::uniform(false))
    }

    /// Heap bytes held, as allocated.
    pub(super) fn heap_bytes(&self) -> usize {
        let index = match &self.index {
            Index::Small(_) => 0,
            Index::Table(table) => table.capacity() * size_of::<u16>(),
        };
        index
            + self.regions.capacity() * size_of::<Region>()
            + self.regions.iter().map(Region::heap_bytes).sum::<usize>()
    }

    /// Number of regions.
    pub(super) fn region_count(&self) -> usize {
        self.regions.len() - usize::from(self.parked.is_some())
    }

    /// Number of regions in the dense form.
    #[cfg(feature = "test-hooks")]
    pub(super) fn dense_regions(&self) -> usize {
        self.regions.iter().filter(|r| r.is_dense()).count()
    }

    /// Checks the node's invariants.
    #[cfg(feature = "test-hooks")]
    pub(super) fn check(&self) -> core::result::Result<(), &'static str> {
        let present: u32 = self.present.iter().map(|w| w.count_ones()).sum();
        if present as usize != self.region_count() {
            return Err("node regions differ from its present entries");
        }
        if let Some(e) = self.parked {
            let e = u32::from(e);
            let i = self.slot(e);
            if self.present(e) || self.regions.get(i).is_none_or(|r| u32::from(r.entry) != e) {
                return Err("parked region present or not indexed");
            }
            if !self.regions[i].parkable() {
                return Err("parked region too big to keep");
            }
        }
        if matches!(self.index, Index::Small(_)) && self.regions.len() > SMALL {
            return Err("node indexes more regions inline than it can");
        }
        for e in 0..ENTRIES {
            if let Some(r) = self.region(e) {
                if u32::from(r.entry) != e {
                    return Err("node index names the wrong region");
                }
                if r.uniform().is_some() {
                    return Err("a uniform 1G region was kept");
                }
                r.check()?;
            }
        }
        Ok(())
    }
}

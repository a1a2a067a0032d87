//! `rangemap`: the off-the-shelf [`rangemap::RangeMap`] from gfn ranges to non-zero attributes,
//! plus a naive eligibility check — the "why not just use a range map" baseline.
//!
//! Conversions are `insert` / `remove` on the map (it coalesces equal neighbours). The fault path
//! asks the map for the attributes of the gfn and, per large level, whether the map's run around
//! the gfn covers the whole large page (or, for shared pages, whether any private run overlaps
//! it): O(log R) searches per level on every fault, with no per-slot large-page state.
//! Memory: a B-tree of (range, value) entries; [`Design::heap_bytes`] estimates its nodes from
//! the entry count (the tree's nodes cannot be seen from outside), see [`btree_bytes`].

use std::ops::Range;

use cvmem::{Access, Error, GfnRange, Level, MaxLevel, PAGE_SHIFT};
use rangemap::RangeMap;

use crate::design::{answer, Design, Slot};
use crate::slots::SlotTable;

/// The range-map baseline.
#[derive(Clone, Debug, Default)]
pub struct RangeMapDesign {
    map: RangeMap<u64, u64>,
    slots: SlotTable<()>,
    entries: usize,
}

impl RangeMapDesign {
    /// An empty VM.
    pub fn new() -> Self {
        Self::default()
    }

    fn uniform(&self, gfn: u64, level: Level) -> bool {
        let start = level.align_down(cvmem::Gfn(gfn)).0;
        let page: Range<u64> = start..start + level.pages();
        match self.map.get_key_value(&gfn) {
            Some((run, _)) => run.start <= page.start && page.end <= run.end,
            None => !self.map.overlaps(&page),
        }
    }
}

/// Estimated heap bytes of a `BTreeMap` with `n` entries of a 16-byte key and an 8-byte value:
/// leaves of 280 bytes holding 11 entries, internal nodes of 376 bytes with 12 children, filled
/// to two thirds (the usual fill after mixed inserts and removals).
pub fn btree_bytes(n: usize) -> usize {
    const LEAF: usize = 280;
    const INTERNAL: usize = 376;
    if n == 0 {
        return 0;
    }
    let mut nodes = n.div_ceil(8);
    let mut bytes = nodes * LEAF;
    while nodes > 1 {
        nodes = nodes.div_ceil(8);
        bytes += nodes * INTERNAL;
    }
    bytes
}

impl Design for RangeMapDesign {
    fn name(&self) -> &'static str {
        "rangemap"
    }

    fn set_attributes(&mut self, range: GfnRange, attributes: u64) -> Result<(), Error> {
        let r = range.gfns();
        if attributes == 0 {
            self.map.remove(r);
        } else {
            self.map.insert(r, attributes);
        }
        self.entries = self.map.len();
        Ok(())
    }

    fn create_slot(&mut self, slot: &Slot) -> Result<(), Error> {
        self.slots.insert(*slot, ());
        Ok(())
    }

    fn delete_slot(&mut self, slot: &Slot) {
        self.slots.remove(slot.id);
    }

    fn move_slot(&mut self, old: &Slot, new: &Slot) -> Result<(), Error> {
        self.slots.remove(old.id);
        self.slots.insert(*new, ());
        Ok(())
    }

    fn set_dirty_log(&mut self, old: &Slot, new: &Slot) {
        if let Some(entry) = self.slots.get_mut(old.id) {
            entry.0 = *new;
        }
    }

    fn max_mapping_level(&self, gpa: u64, access: Access) -> MaxLevel {
        let gfn = gpa >> PAGE_SHIFT;
        answer(
            self.slots.find(gfn).map(|(s, _)| s),
            gpa,
            access,
            || {
                self.map
                    .get(&gfn)
                    .is_some_and(|a| a & cvmem::KVM_MEMORY_ATTRIBUTE_PRIVATE != 0)
            },
            |level| self.uniform(gfn, level),
        )
    }

    fn heap_bytes(&self) -> usize {
        btree_bytes(self.entries) + self.slots.heap_bytes()
    }
}

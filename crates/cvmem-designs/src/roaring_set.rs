//! `roaring`: the compressed bitmap a user would reach for instead — the set of private gfns as
//! a `roaring` treemap, plus the same naive eligibility check as `rangemap`.
//!
//! The set is laid out exactly as [`roaring::RoaringTreemap`] lays itself out (a `BTreeMap` from
//! the high 32 bits of a gfn to a [`RoaringBitmap`] of the low 32 bits), spelled out here
//! because the fault path needs a range count: `RoaringBitmap::range_cardinality` is a binary
//! search plus one container rank, while `RoaringTreemap` offers only `rank`, which sums every
//! container below the value (thousands per TiB) — that would make the baseline a strawman.
//! An aligned 2M or 1G page never crosses a 2^32-gfn (16 TiB) boundary, so one bitmap answers.
//!
//! Conversions are `insert_range` / `remove_range`; a large page is uniform when its private
//! count is 0 or all of it. Memory: the containers' bytes from `RoaringBitmap::statistics` plus
//! a per-container header and the tree's nodes.

use std::collections::BTreeMap;

use cvmem::{Access, Error, GfnRange, Level, MaxLevel, KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SHIFT};
use roaring::RoaringBitmap;

use crate::design::{answer, Design, Slot};
use crate::range_map::btree_bytes;
use crate::slots::SlotTable;

/// Bytes of one container's header in a `RoaringBitmap` (key, length, store tag and pointer).
const CONTAINER_HEADER: u64 = 32;
/// Bytes of one bitset container (65,536 bits).
const BITSET_BYTES: u64 = 8192;

/// The roaring baseline.
#[derive(Clone, Debug, Default)]
pub struct RoaringDesign {
    map: BTreeMap<u32, RoaringBitmap>,
    slots: SlotTable<()>,
}

impl RoaringDesign {
    /// An empty VM.
    pub fn new() -> Self {
        Self::default()
    }

    fn contains(&self, gfn: u64) -> bool {
        self.map
            .get(&((gfn >> 32) as u32))
            .is_some_and(|b| b.contains(gfn as u32))
    }

    fn uniform(&self, gfn: u64, level: Level) -> bool {
        let start = level.align_down(cvmem::Gfn(gfn)).0;
        let private = match self.map.get(&((start >> 32) as u32)) {
            Some(b) => {
                let lo = start as u32;
                b.range_cardinality(lo..=lo + (level.pages() as u32 - 1))
            }
            None => 0,
        };
        private == 0 || private == level.pages()
    }
}

impl Design for RoaringDesign {
    fn name(&self) -> &'static str {
        "roaring"
    }

    fn set_attributes(&mut self, range: GfnRange, attributes: u64) -> Result<(), Error> {
        let private = attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0;
        let range = range.gfns();
        let mut start = range.start;
        while start < range.end {
            let hi = start >> 32;
            let end = range.end.min((hi + 1) << 32);
            let (lo, last) = (start as u32, (end - 1) as u32);
            if private {
                self.map
                    .entry(hi as u32)
                    .or_default()
                    .insert_range(lo..=last);
            } else if let Some(b) = self.map.get_mut(&(hi as u32)) {
                b.remove_range(lo..=last);
                if b.is_empty() {
                    self.map.remove(&(hi as u32));
                }
            }
            start = end;
        }
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
            || self.contains(gfn),
            |level| self.uniform(gfn, level),
        )
    }

    fn heap_bytes(&self) -> usize {
        let containers: u64 = self
            .map
            .values()
            .map(|b| {
                // `statistics` counts array capacity at 4 bytes a value (they are u16) and bitset
                // capacity in bits; count what is allocated.
                let s = b.statistics();
                s.n_bytes_array_containers / 2
                    + u64::from(s.n_bitset_containers) * BITSET_BYTES
                    + u64::from(s.n_containers) * CONTAINER_HEADER
            })
            .sum();
        containers as usize + btree_bytes(self.map.len()) + self.slots.heap_bytes()
    }
}

//! `bitmap`: one bit per 4 KiB page per memslot, as QEMU (a bitmap per RAM block) and
//! cloud-hypervisor keep it. Hugepage eligibility is computed when asked, by scanning: the 512
//! bits (8 words) of a 2M page, and the 2M states of a 1G page, i.e. its 262,144 bits (4,096
//! words). Conversions only fill bits. Attributes outside memslots live in a side table.

use cvmem::{Access, Error, Gfn, GfnRange, MaxLevel, KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SHIFT};

use crate::bits::PageBits;
use crate::design::{answer, Design, Slot};
use crate::option_a::set_outside;
use crate::outside::Outside;
use crate::slots::SlotTable;

/// The flat bitmap.
#[derive(Clone, Debug, Default)]
pub struct FlatBitmap {
    slots: SlotTable<PageBits>,
    outside: Outside,
}

impl FlatBitmap {
    /// An empty VM.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Design for FlatBitmap {
    fn name(&self) -> &'static str {
        "bitmap"
    }

    fn set_attributes(&mut self, range: GfnRange, attributes: u64) -> Result<(), Error> {
        let private = attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0;
        for (slot, bits) in self.slots.overlapping_mut(range.start.0, range.end.0) {
            bits.fill(
                GfnRange::new(
                    range.start.max(Gfn(slot.base_gfn)),
                    range.end.min(Gfn(slot.end_gfn())),
                ),
                private,
            );
        }
        set_outside(&mut self.outside, &self.slots, range, private);
        Ok(())
    }

    fn create_slot(&mut self, slot: &Slot) -> Result<(), Error> {
        let mut bits = PageBits::new(slot.range());
        for run in self.outside.take(slot.range()) {
            bits.fill(run, true);
        }
        self.slots.insert(*slot, bits);
        Ok(())
    }

    fn delete_slot(&mut self, slot: &Slot) {
        if let Some((s, bits)) = self.slots.remove(slot.id) {
            for run in bits.set_runs(s.range()) {
                self.outside.set(run, true);
            }
        }
    }

    fn move_slot(&mut self, old: &Slot, new: &Slot) -> Result<(), Error> {
        self.delete_slot(old);
        self.create_slot(new)
    }

    fn set_dirty_log(&mut self, old: &Slot, new: &Slot) {
        if let Some(entry) = self.slots.get_mut(old.id) {
            entry.0 = *new;
        }
    }

    fn max_mapping_level(&self, gpa: u64, access: Access) -> MaxLevel {
        let gfn = gpa >> PAGE_SHIFT;
        let found = self.slots.find(gfn);
        answer(
            found.map(|(s, _)| s),
            gpa,
            access,
            || found.is_some_and(|(_, b)| b.get(gfn)),
            |level| {
                let (_, b) = found.expect("answer() asks only inside a slot");
                b.uniform_block(level.align_down(cvmem::Gfn(gfn)).0, level.pages() / 64)
                    .is_some()
            },
        )
    }

    fn heap_bytes(&self) -> usize {
        self.slots.heap_bytes()
            + self
                .slots
                .iter()
                .map(|(_, b)| b.heap_bytes())
                .sum::<usize>()
            + self.outside.heap_bytes()
    }
}

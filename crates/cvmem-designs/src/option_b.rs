//! `option-b`: a spare SPTE bit MIXED. Two trees (TDX-like: private and shared); a page is
//! private when the private tree maps it; a non-leaf SPTE whose range holds both kinds carries
//! MIXED, in both trees. Eligibility is "the leaf of the access's kind is this large". The
//! design needs mappings in both trees at all times: its memory is the page tables it forces
//! (see [`crate::mapped`]); it keeps nothing else (the bit is spare).

use cvmem::mmu::Layout;
use cvmem::{Access, Error, GfnRange, MaxLevel, PAGE_SIZE};

use crate::design::{Design, Slot};
use crate::mapped::FullyMapped;

/// Option B.
#[derive(Clone, Debug)]
pub struct OptionB {
    inner: FullyMapped,
}

impl Default for OptionB {
    fn default() -> Self {
        Self::new()
    }
}

impl OptionB {
    /// An empty VM.
    pub fn new() -> Self {
        OptionB {
            inner: FullyMapped::new(Layout::SPLIT),
        }
    }

    /// The page tables (the core's MMU model).
    pub fn mapped(&self) -> &FullyMapped {
        &self.inner
    }
}

impl Design for OptionB {
    fn name(&self) -> &'static str {
        "option-b"
    }

    fn set_attributes(&mut self, range: GfnRange, attributes: u64) -> Result<(), Error> {
        self.inner.set_attributes(range, attributes)
    }

    fn create_slot(&mut self, slot: &Slot) -> Result<(), Error> {
        self.inner.create_slot(slot)
    }

    fn delete_slot(&mut self, slot: &Slot) {
        // Validated at the edge: deleting an existing slot cannot fail.
        let _ = self.inner.delete_slot(slot);
    }

    fn move_slot(&mut self, _old: &Slot, new: &Slot) -> Result<(), Error> {
        self.inner.move_slot(new)
    }

    fn set_dirty_log(&mut self, _old: &Slot, new: &Slot) {
        let _ = self.inner.set_dirty_log(new);
    }

    fn max_mapping_level(&self, gpa: u64, access: Access) -> MaxLevel {
        self.inner.max_mapping_level(gpa, access)
    }

    fn heap_bytes(&self) -> usize {
        0
    }

    fn table_bytes(&self) -> usize {
        (self.inner.table_pages() * PAGE_SIZE) as usize
    }

    fn host_bytes(&self) -> usize {
        self.inner.vm().heap_bytes()
    }
}

//! `option-c`: a SHARED bit in leaf SPTEs of one tree (SNP-like), plus a 512-bit "mixed" bitmap
//! per page table (one bit per entry: the range under it holds both kinds) and one at the root
//! for 1G. Every page must stay mapped: its memory is the page tables it forces (see
//! [`crate::mapped`]) plus 64 bytes of bitmap per table page (counted for every table, an upper
//! bound: leaf tables need none).

use cvmem::mmu::Layout;
use cvmem::{Access, Error, GfnRange, MaxLevel, PAGE_SIZE};

use crate::design::{Design, Slot};
use crate::mapped::FullyMapped;

/// Option C.
#[derive(Clone, Debug)]
pub struct OptionC {
    inner: FullyMapped,
}

impl Default for OptionC {
    fn default() -> Self {
        Self::new()
    }
}

impl OptionC {
    /// An empty VM.
    pub fn new() -> Self {
        OptionC {
            inner: FullyMapped::new(Layout::Unified),
        }
    }

    /// The page tables (the core's MMU model).
    pub fn mapped(&self) -> &FullyMapped {
        &self.inner
    }
}

impl Design for OptionC {
    fn name(&self) -> &'static str {
        "option-c"
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
        (self.inner.table_pages() * 64) as usize
    }

    fn table_bytes(&self) -> usize {
        (self.inner.table_pages() * PAGE_SIZE) as usize
    }

    fn host_bytes(&self) -> usize {
        self.inner.vm().heap_bytes()
    }
}

//! `cvmem`: the core crate's [`cvmem::Tracker`] — the adaptive attribute store (nothing for
//! uniform memory, inline boundaries, bit blocks or dense regions where mixed), no per-slot
//! per-page state, a fault path of one fixed-depth descent.

use cvmem::{Access, Error, GfnRange, Gpa, MaxLevel, MemoryRegion, Tracker, PAGE_SHIFT};

use crate::design::{Design, Slot};

/// The core tracker as a design.
#[derive(Clone, Debug, Default)]
pub struct CvmemDesign {
    tracker: Tracker,
}

impl CvmemDesign {
    /// An empty VM.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tracker.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }
}

fn region(slot: &Slot) -> MemoryRegion {
    MemoryRegion {
        gmem: None,
        slot: slot.id,
        gpa: Gpa(slot.base_gfn << PAGE_SHIFT),
        size: slot.size(),
        flags: slot.flags,
        uaddr: Some(slot.uaddr),
        backing: Some(slot.backing),
    }
}

impl Design for CvmemDesign {
    fn name(&self) -> &'static str {
        "cvmem"
    }

    fn set_attributes(&mut self, range: GfnRange, attributes: u64) -> Result<(), Error> {
        self.tracker
            .set_range_attributes(range, attributes)
            .map(|_| ())
    }

    fn create_slot(&mut self, slot: &Slot) -> Result<(), Error> {
        self.tracker
            .set_user_memory_region(&region(slot))
            .map(|_| ())
    }

    fn delete_slot(&mut self, slot: &Slot) {
        let mut r = region(slot);
        r.size = 0;
        r.uaddr = None;
        r.backing = None;
        // Validated at the edge: deleting an existing slot cannot fail.
        let _ = self.tracker.set_user_memory_region(&r);
    }

    fn move_slot(&mut self, _old: &Slot, new: &Slot) -> Result<(), Error> {
        self.tracker
            .set_user_memory_region(&region(new))
            .map(|_| ())
    }

    fn set_dirty_log(&mut self, _old: &Slot, new: &Slot) {
        let _ = self.tracker.set_user_memory_region(&region(new));
    }

    #[inline]
    fn max_mapping_level(&self, gpa: u64, access: Access) -> MaxLevel {
        self.tracker.max_mapping_level(Gpa(gpa), access)
    }

    fn heap_bytes(&self) -> usize {
        self.tracker.heap_bytes()
    }
}

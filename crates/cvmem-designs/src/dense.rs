//! `dense`: the core's deliberately simple per-page oracle ([`cvmem_testkit::DenseModel`]) as a
//! design, for tests: one attribute per 4 KiB page in a fixed window, brute-force eligibility.

use cvmem::{Access, Error, GfnRange, MaxLevel, PAGE_SHIFT};
use cvmem_testkit::DenseModel;

use crate::design::{Design, Slot};

/// The dense oracle over the gfns `[0, window)`.
#[derive(Clone, Debug)]
pub struct Dense {
    model: DenseModel,
}

impl Dense {
    /// A model of the first `window` gfns.
    pub fn new(window: u64) -> Self {
        Dense {
            model: DenseModel::new(window),
        }
    }

    fn set_slot(&mut self, slot: &Slot, size: u64) {
        let r = self.model.set_memslot(
            slot.id,
            slot.base_gfn << PAGE_SHIFT,
            size,
            slot.flags.guest_memfd,
            slot.flags.dirty_log,
            slot.flags.readonly,
            (size != 0).then_some(slot.uaddr),
            (size != 0).then_some(slot.backing),
        );
        debug_assert!(r.is_ok(), "validated at the edge: {r:?}");
    }
}

impl Design for Dense {
    fn name(&self) -> &'static str {
        "dense"
    }

    fn set_attributes(&mut self, range: GfnRange, attributes: u64) -> Result<(), Error> {
        self.model
            .set_memory_attributes(range.start.gpa().0, range.bytes(), attributes)
            .map_err(|_| Error::Unsupported {
                what: cvmem::Unsupported::OracleRejected,
            })
    }

    fn create_slot(&mut self, slot: &Slot) -> Result<(), Error> {
        self.set_slot(slot, slot.size());
        Ok(())
    }

    fn delete_slot(&mut self, slot: &Slot) {
        self.set_slot(slot, 0);
    }

    fn move_slot(&mut self, _old: &Slot, new: &Slot) -> Result<(), Error> {
        self.set_slot(new, new.size());
        Ok(())
    }

    fn set_dirty_log(&mut self, _old: &Slot, new: &Slot) {
        self.set_slot(new, new.size());
    }

    fn max_mapping_level(&self, gpa: u64, access: Access) -> MaxLevel {
        self.model.max_mapping_level(gpa, access)
    }

    fn heap_bytes(&self) -> usize {
        self.model.window() as usize * 8
    }
}

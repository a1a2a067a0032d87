//! The edge: requests checked once with the core's own KVM rules, turned into typed actions that
//! a [`Design`] applies. Every design therefore sees exactly the same valid requests, and refused
//! requests are refused identically (with the core's [`Error`] and errno). [`Vm`] runs op-logs
//! through [`cvmem_oplog::Driver`] like every other executor.

use cvmem::{
    Access, Errno, Error, GfnRange, Gpa, MapGpaRange, MaxLevel, MemoryRegion, SlotChange, Tracker,
    PAGE_SIZE,
};
use cvmem_oplog::{Driver, Executor, Op, Outcome};

use crate::design::{Design, Slot};

/// A checked request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Set the attributes of a range (KVM_SET_MEMORY_ATTRIBUTES or KVM_HC_MAP_GPA_RANGE).
    Attributes {
        /// The gfns.
        range: GfnRange,
        /// The new attributes.
        attributes: u64,
    },
    /// Create a memslot.
    Create(Slot),
    /// Delete a memslot.
    Delete(Slot),
    /// Move a memslot (and maybe toggle dirty logging).
    Move {
        /// The slot as it is.
        old: Slot,
        /// The slot as it will be.
        new: Slot,
    },
    /// Turn dirty logging on or off.
    DirtyLog {
        /// The slot as it is.
        old: Slot,
        /// The slot as it will be.
        new: Slot,
    },
    /// A memslot request that changes nothing.
    Nothing,
}

/// KVM's rules for memslots and attributes: the core's [`Tracker`] holding the memslots only
/// (a slot costs a fixed few dozen bytes there; attributes are the design's business and are
/// never stored here).
#[derive(Clone, Debug, Default)]
pub struct Rules {
    slots: Tracker,
}

impl Rules {
    /// No memslots; PRIVATE is the supported attribute.
    pub fn new() -> Self {
        Self::default()
    }

    /// The memslot with id `id`.
    pub fn slot(&self, id: u32) -> Option<Slot> {
        self.slots.memslot(id).map(Slot::from)
    }

    /// All memslots in address order.
    pub fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        self.slots.memslots().map(Slot::from)
    }

    /// Checks KVM_SET_MEMORY_ATTRIBUTES; changes nothing.
    pub fn attributes(&self, gpa: Gpa, size: u64, attributes: u64) -> Result<Action, Error> {
        let range = self
            .slots
            .validate_attributes(gpa, size, attributes)?
            .range();
        Ok(Action::Attributes { range, attributes })
    }

    /// Checks KVM_SET_USER_MEMORY_REGION2 with the core's rules; changes nothing.
    pub fn memslot(&self, region: &MemoryRegion) -> Result<Action, Error> {
        let change = self.slots.check_user_memory_region(region)?;
        let old = self.slot(region.slot);
        let moved = |old: Slot| Slot {
            base_gfn: region.gpa.gfn().0,
            flags: cvmem::SlotFlags {
                dirty_log: region.flags.dirty_log,
                ..old.flags
            },
            ..old
        };
        Ok(match (change, old) {
            (SlotChange::Created, _) => Action::Create(Slot {
                id: region.slot,
                base_gfn: region.gpa.gfn().0,
                npages: region.size / PAGE_SIZE,
                flags: region.flags,
                uaddr: region.new_slot_uaddr(),
                backing: region.new_slot_backing(),
            }),
            (SlotChange::Deleted { .. }, Some(old)) => Action::Delete(old),
            (SlotChange::Moved { .. }, Some(old)) => Action::Move {
                old,
                new: moved(old),
            },
            (SlotChange::DirtyLog { .. }, Some(old)) => Action::DirtyLog {
                old,
                new: moved(old),
            },
            _ => Action::Nothing,
        })
    }

    /// Records a memslot request that a design has applied (only running out of memory can
    /// make it fail: the request was checked).
    pub fn commit(&mut self, region: &MemoryRegion) -> Result<SlotChange, Error> {
        self.slots.set_user_memory_region(region)
    }
}

/// Applies a checked action to a design.
#[inline]
pub fn apply(design: &mut dyn Design, action: &Action) -> Result<(), Error> {
    match *action {
        Action::Attributes { range, attributes } => design.set_attributes(range, attributes)?,
        Action::Create(s) => design.create_slot(&s)?,
        Action::Delete(s) => design.delete_slot(&s),
        Action::Move { old, new } => design.move_slot(&old, &new)?,
        Action::DirtyLog { old, new } => design.set_dirty_log(&old, &new),
        Action::Nothing => {}
    }
    Ok(())
}

/// A design behind KVM's rules: an [`Executor`] of op-logs (the MMU operations are refused: a
/// design has no page tables).
pub struct Vm {
    rules: Rules,
    design: Box<dyn Design>,
    driver: Driver,
}

impl Vm {
    /// Wraps a design with an empty VM's rules.
    pub fn new(design: Box<dyn Design>) -> Self {
        Vm {
            rules: Rules::new(),
            design,
            driver: Driver::new(),
        }
    }

    /// Runs one op-log operation through the driver.
    pub fn apply(&mut self, op: &Op) -> Outcome {
        let mut driver = self.driver;
        let outcome = driver.apply(self, op);
        self.driver = driver;
        outcome
    }

    /// The design.
    pub fn design(&self) -> &dyn Design {
        self.design.as_ref()
    }

    /// The design, to drive it directly once the VM is set up (a benchmark's inner loop).
    pub fn into_design(self) -> Box<dyn Design> {
        self.design
    }

    /// Runs `ops` through the driver; the first refused one is returned as an error.
    pub fn run(&mut self, ops: &[Op]) -> Result<(), cvmem_oplog::Rejected> {
        for op in ops {
            if let Outcome::Error(e) = self.apply(op) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The rules (memslot table).
    pub fn rules(&self) -> &Rules {
        &self.rules
    }
}

impl Executor for Vm {
    type Error = Error;

    fn errno(error: &Error) -> &'static str {
        Errno::name(error.errno())
    }

    fn memslot(&mut self, region: &MemoryRegion) -> Result<SlotChange, Error> {
        let action = self.rules.memslot(region)?;
        apply(self.design.as_mut(), &action)?;
        self.rules.commit(region)
    }

    fn set_attributes(&mut self, gpa: Gpa, size: u64, attributes: u64) -> Result<(), Error> {
        let action = self.rules.attributes(Gpa(gpa.0), size, attributes)?;
        apply(self.design.as_mut(), &action)
    }

    fn map_gpa(&mut self, request: &MapGpaRange) -> Result<(), Error> {
        self.set_attributes(request.gpa, request.size(), request.attributes())
    }

    fn query(&mut self, gpa: Gpa, access: Access) -> Result<MaxLevel, Error> {
        Ok(self.design.max_mapping_level(gpa.0, access))
    }
}

//! The edge: op-log operations validated once with KVM's rules, turned into typed actions that a
//! [`Design`] applies. Every design therefore sees exactly the same valid requests, and rejected
//! requests are rejected identically (with the core's [`Error`] and errno).

use std::collections::{BTreeMap, HashMap};

use cvmem::oplog::Op;
use cvmem::{
    Access, Error, GfnRange, Level, MapGpaRange, MaxLevel, Tracker, PAGE_SHIFT, PAGE_SIZE,
};

use crate::design::{Design, Slot};

/// A validated request.
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
    /// A memslot line that changes nothing.
    Nothing,
    /// The fault path's question.
    Query {
        /// The address accessed.
        gpa: u64,
        /// The kind of access.
        access: Access,
    },
}

/// KVM's rules for memslots and attributes, with the memslot table they need.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    by_base: BTreeMap<u64, Slot>,
    by_id: HashMap<u32, u64>,
    attrs: Tracker,
}

impl Rules {
    /// No memslots; PRIVATE is the supported attribute.
    pub fn new() -> Self {
        Self::default()
    }

    /// The memslot with id `id`.
    pub fn slot(&self, id: u32) -> Option<&Slot> {
        self.by_id.get(&id).and_then(|b| self.by_base.get(b))
    }

    /// All memslots in address order.
    pub fn slots(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.by_base.values()
    }

    /// Validates `op` against the current state; changes nothing.
    pub fn check(&self, op: &Op) -> Result<Action, Error> {
        match *op {
            Op::Memslot { .. } => match op.memory_region() {
                Some(region) => self.check_memslot(&region?),
                None => unreachable!("a memslot line is a memory region"),
            },
            Op::Attrs {
                gpa,
                size,
                attributes,
            } => {
                let range = self.attrs.validate_attributes(gpa, size, attributes)?;
                Ok(Action::Attributes { range, attributes })
            }
            Op::MapGpa { gpa, npages, flags } => {
                let req = MapGpaRange::decode(gpa, npages, flags)?;
                let range =
                    self.attrs
                        .validate_attributes(req.gpa, req.size(), req.attributes())?;
                Ok(Action::Attributes {
                    range,
                    attributes: req.attributes(),
                })
            }
            Op::Query { gpa, access } => Ok(Action::Query { gpa, access }),
            Op::Fault { .. } | Op::FaultRange { .. } | Op::Mmu { .. } | Op::Accept { .. } => {
                Err(Error::Unsupported {
                    what: "MMU operations are not part of the tracker designs' workloads",
                })
            }
        }
    }

    fn overlapping(&self, start: u64, end: u64, except: Option<u32>) -> Option<u32> {
        // Slots are disjoint, so only the last slot starting before `end` can reach `start`…
        // unless several start inside the range: check every slot starting in it, and the one
        // before it.
        let before = self.by_base.range(..start).next_back().map(|(_, s)| s);
        let inside = self.by_base.range(start..end).map(|(_, s)| s);
        before
            .into_iter()
            .chain(inside)
            .find(|s| Some(s.id) != except && s.base_gfn < end && start < s.end_gfn())
            .map(|s| s.id)
    }

    fn check_memslot(&self, region: &cvmem::MemoryRegion) -> Result<Action, Error> {
        cvmem::memslot::validate(region)?;
        let cvmem::MemoryRegion {
            slot: id,
            gpa,
            size,
            flags,
            uaddr,
            backing,
        } = *region;
        let npages = size / PAGE_SIZE;
        let base_gfn = gpa >> PAGE_SHIFT;
        let Some(old) = self.slot(id).copied() else {
            if npages == 0 {
                return Err(Error::UnknownSlot { slot: id });
            }
            if let Some(other) = self.overlapping(base_gfn, base_gfn + npages, None) {
                return Err(Error::SlotOverlap { slot: id, other });
            }
            return Ok(Action::Create(Slot {
                id,
                base_gfn,
                npages,
                flags,
                uaddr: uaddr.unwrap_or(gpa),
                backing: backing.unwrap_or(Level::G1),
            }));
        };
        if npages == 0 {
            return Ok(Action::Delete(old));
        }
        if old.flags.guest_memfd {
            return Err(Error::SlotImmutable {
                slot: id,
                what: "a guest-memfd slot",
            });
        }
        let immutable = [
            (npages != old.npages, "the size"),
            (flags.readonly != old.flags.readonly, "readonly"),
            (flags.guest_memfd, "guest-memfd"),
            (uaddr.is_some_and(|u| u != old.uaddr), "uaddr"),
            (backing.is_some_and(|b| b != old.backing), "backing"),
        ];
        if let Some((_, what)) = immutable.iter().find(|(changed, _)| *changed) {
            return Err(Error::SlotImmutable { slot: id, what });
        }
        let mut new = old;
        new.base_gfn = base_gfn;
        new.flags.dirty_log = flags.dirty_log;
        if base_gfn == old.base_gfn {
            return Ok(if new == old {
                Action::Nothing
            } else {
                Action::DirtyLog { old, new }
            });
        }
        if let Some(other) = self.overlapping(base_gfn, base_gfn + npages, Some(id)) {
            return Err(Error::SlotOverlap { slot: id, other });
        }
        Ok(Action::Move { old, new })
    }

    /// Records a memslot action that a design has applied.
    pub fn commit(&mut self, action: &Action) {
        match *action {
            Action::Create(s) => {
                self.by_base.insert(s.base_gfn, s);
                self.by_id.insert(s.id, s.base_gfn);
            }
            Action::Delete(s) => {
                self.by_base.remove(&s.base_gfn);
                self.by_id.remove(&s.id);
            }
            Action::Move { old, new } | Action::DirtyLog { old, new } => {
                self.by_base.remove(&old.base_gfn);
                self.by_base.insert(new.base_gfn, new);
                self.by_id.insert(new.id, new.base_gfn);
            }
            Action::Attributes { .. } | Action::Nothing | Action::Query { .. } => {}
        }
    }
}

/// Applies a validated action to a design. Returns the answer of a query.
#[inline]
pub fn apply(design: &mut dyn Design, action: &Action) -> Result<Option<MaxLevel>, Error> {
    match *action {
        Action::Attributes { range, attributes } => design.set_attributes(range, attributes)?,
        Action::Create(s) => design.create_slot(&s)?,
        Action::Delete(s) => design.delete_slot(&s),
        Action::Move { old, new } => design.move_slot(&old, &new)?,
        Action::DirtyLog { old, new } => design.set_dirty_log(&old, &new),
        Action::Nothing => {}
        Action::Query { gpa, access } => return Ok(Some(design.max_mapping_level(gpa, access))),
    }
    Ok(None)
}

/// A design behind KVM's rules: the simplest way to drive one with op-log operations.
pub struct Vm {
    rules: Rules,
    design: Box<dyn Design>,
}

impl Vm {
    /// Wraps a design with an empty VM's rules.
    pub fn new(design: Box<dyn Design>) -> Self {
        Vm {
            rules: Rules::new(),
            design,
        }
    }

    /// Applies one operation: `Ok(Some(answer))` for a query, `Ok(None)` for a change, `Err` for
    /// a rejected operation (nothing changed).
    pub fn apply(&mut self, op: &Op) -> Result<Option<MaxLevel>, Error> {
        let action = self.rules.check(op)?;
        let answer = apply(self.design.as_mut(), &action)?;
        self.rules.commit(&action);
        Ok(answer)
    }

    /// The design.
    pub fn design(&self) -> &dyn Design {
        self.design.as_ref()
    }

    /// The rules (memslot table).
    pub fn rules(&self) -> &Rules {
        &self.rules
    }
}

//! The op-log replay engine: applies parsed operations to a VM (tracker and TDP MMU model) and
//! reports what each one did.
//!
//! Operation errors are returned as outcomes and replay goes on; parse errors are the parser's
//! business. Output formatting (JSON Lines, tables) is the caller's: this module only produces
//! typed [`Outcome`]s and a [`Summary`].

use alloc::vec::Vec;

use crate::addr::{Level, PAGE_SHIFT, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::hypercall::MapGpaRange;
use crate::mmu::{
    AcceptOutcome, Coverage, FaultOutcome, FaultRangeCounts, Layout, MmuStats, Recovery, Vm,
};
use crate::oplog::Op;
use crate::tracker::{MaxLevel, SlotEligibility, Tracker};

/// What one operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A state change that succeeded; nothing to report.
    Done,
    /// The answer to a `query`.
    Query(MaxLevel),
    /// What a `fault` did.
    Fault(FaultOutcome),
    /// What a `fault-range` did, page by page.
    FaultRange(FaultRangeCounts),
    /// What an `accept` did.
    Accept(AcceptOutcome),
    /// The operation was rejected (state unchanged).
    Error(Error),
}

/// One memslot in the replay summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotSummary {
    /// Slot id.
    pub slot: u32,
    /// Guest physical address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Mixed 2M pages wholly inside the slot.
    pub mixed_2m: u64,
    /// Mixed 1G pages wholly inside the slot.
    pub mixed_1g: u64,
    /// How much of the slot may be mapped at each level.
    pub eligibility: SlotEligibility,
}

/// The state at the end of a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Maximal runs of non-zero attributes: `(gpa, size, attributes)`, in address order.
    pub attributes: Vec<(u64, u64, u64)>,
    /// Memslots by slot id.
    pub memslots: Vec<SlotSummary>,
    /// Attribute boundaries stored (places where the attributes change).
    pub boundaries: usize,
    /// Heap bytes of the tracker.
    pub heap_bytes: usize,
    /// Operations applied, and how many of them were rejected.
    pub ops: u64,
    /// Rejected operations.
    pub errors: u64,
    /// The page tables: leaves, table pages, events.
    pub mmu: MmuStats,
    /// Hugepage coverage and table memory against the optimum.
    pub coverage: Coverage,
}

/// Replays op-log operations against a [`Vm`]: the tracker and the TDP MMU model.
#[derive(Clone, Debug)]
pub struct Replayer {
    vm: Vm,
    ops: u64,
    errors: u64,
}

impl Default for Replayer {
    fn default() -> Self {
        Self::new()
    }
}

impl Replayer {
    /// A fresh VM (no memslots, everything shared) with the spec's default MMU:
    /// `mmu split recovery=on-fault`.
    pub fn new() -> Self {
        Replayer {
            vm: Self::vm_for(Layout::SPLIT, Recovery::OnFault),
            ops: 0,
            errors: 0,
        }
    }

    /// A VM for a scenario file. The file is untrusted input, but needs no limit of its own:
    /// memslots cost a fixed size whatever their size, and each line can add at most a few
    /// regions to the attribute store (bounded per GiB, see [`crate::attrs`]).
    fn vm_for(layout: Layout, recovery: Recovery) -> Vm {
        Vm::new(layout, recovery)
    }

    /// The VM's tracker.
    pub fn tracker(&self) -> &Tracker {
        self.vm.tracker()
    }

    /// The VM: tracker and page tables.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Applies one operation.
    pub fn apply(&mut self, op: &Op) -> Outcome {
        let outcome = match self.try_apply(op) {
            Ok(o) => o,
            Err(e) => Outcome::Error(e),
        };
        self.ops += 1;
        if matches!(outcome, Outcome::Error(_)) {
            self.errors += 1;
        }
        outcome
    }

    fn try_apply(&mut self, op: &Op) -> Result<Outcome> {
        match *op {
            Op::Memslot { .. } => {
                if let Some(region) = op.memory_region() {
                    self.vm.set_user_memory_region(&region?)?;
                }
                Ok(Outcome::Done)
            }
            Op::Attrs {
                gpa,
                size,
                attributes,
            } => {
                self.vm.set_memory_attributes(gpa, size, attributes)?;
                Ok(Outcome::Done)
            }
            Op::MapGpa { gpa, npages, flags } => {
                let req = MapGpaRange::decode(gpa, npages, flags)?;
                self.vm.map_gpa_range(&req)?;
                Ok(Outcome::Done)
            }
            Op::Query { gpa, access } => Ok(Outcome::Query(
                self.vm.tracker().max_mapping_level(gpa, access),
            )),
            Op::Fault { gpa, access } => Ok(Outcome::Fault(self.vm.fault(gpa, access)?)),
            Op::FaultRange { gpa, size, access } => {
                Ok(Outcome::FaultRange(self.vm.fault_range(gpa, size, access)?))
            }
            Op::Accept { gpa, level } => Ok(Outcome::Accept(self.vm.accept(gpa, level)?)),
            Op::Mmu { layout, recovery } => {
                if self.ops != 0 {
                    return Err(Error::Unsupported {
                        what: "`mmu` is only allowed as the first operation",
                    });
                }
                self.vm = Self::vm_for(layout.into(), recovery.unwrap_or(Recovery::OnFault));
                Ok(Outcome::Done)
            }
        }
    }

    /// The end-of-replay summary.
    pub fn summary(&self) -> Summary {
        let t = self.vm.tracker();
        let attributes = t
            .nonzero_runs()
            .map(|r| {
                (
                    r.start << PAGE_SHIFT,
                    (r.end - r.start).saturating_mul(PAGE_SIZE),
                    r.attributes,
                )
            })
            .collect();
        let mut memslots: Vec<SlotSummary> = t
            .memslots()
            .map(|s| SlotSummary {
                slot: s.id(),
                gpa: s.gpa(),
                size: s.size(),
                mixed_2m: t.mixed_count(s.id(), Level::M2),
                mixed_1g: t.mixed_count(s.id(), Level::G1),
                eligibility: t.eligibility(s.id()).unwrap_or_default(),
            })
            .collect();
        memslots.sort_by_key(|s| s.slot);
        Summary {
            attributes,
            memslots,
            boundaries: t.attribute_store().boundaries(),
            heap_bytes: t.heap_bytes(),
            ops: self.ops,
            errors: self.errors,
            mmu: self.vm.stats(),
            coverage: self.vm.coverage(),
        }
    }
}

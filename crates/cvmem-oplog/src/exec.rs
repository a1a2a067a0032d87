//! The one way op-log operations are run: a [`Driver`] holds the format's own rules (the `mmu`
//! line comes first, a `memslot` line is a KVM_SET_USER_MEMORY_REGION2 request, a `map-gpa`
//! line is a decoded KVM_HC_MAP_GPA_RANGE) and hands typed, checked requests to an
//! [`Executor`]; whatever the executor, each line ends as one [`Outcome`].

use alloc::string::{String, ToString};
use core::fmt;

use cvmem::mmu::{AcceptOutcome, FaultOutcome, FaultRangeCounts, Recovery};
use cvmem::{Access, Gpa, Level, MapGpaRange, MaxLevel, MemoryRegion, SlotChange};
use cvmem::{AttrMode, GmemFlags, GmemId, GmemOffset, MergePolicy};

use crate::op::{gmem_id, Op};

/// Something that can run op-log operations: the core's MMU model, a tracking design, a VMM
/// integration under a real guest. Every method gets a request that the format's rules have
/// already accepted; the executor applies KVM's own rules (through the core) and reports.
pub trait Executor {
    /// The executor's error; the driver's own refusals come in as [`cvmem::Error`].
    type Error: From<cvmem::Error> + fmt::Display;

    /// The errno name of an error (`EINVAL`, `EEXIST`, …), as KVM would return it.
    fn errno(error: &Self::Error) -> &'static str;

    /// `mmu LAYOUT [recovery=POLICY]`, only ever as the first operation. The default refuses
    /// it: an executor without an MMU model has nothing to configure.
    fn mmu(
        &mut self,
        layout: cvmem::mmu::Layout,
        recovery: Recovery,
    ) -> Result<Outcome, Self::Error> {
        let _ = (layout, recovery);
        Err(cvmem::Error::Unsupported {
            what: cvmem::Unsupported::NoMmuModel,
        }
        .into())
    }

    /// `memslot`: KVM_SET_USER_MEMORY_REGION2.
    fn memslot(&mut self, region: &MemoryRegion) -> Result<SlotChange, Self::Error>;

    /// `attrs`: KVM_SET_MEMORY_ATTRIBUTES.
    fn set_attributes(&mut self, gpa: Gpa, size: u64, attributes: u64) -> Result<(), Self::Error>;

    /// `map-gpa`: a guest's KVM_HC_MAP_GPA_RANGE, decoded.
    fn map_gpa(&mut self, request: &MapGpaRange) -> Result<(), Self::Error>;

    /// A `map-gpa` whose arguments KVM refuses before it looks at memory (reserved flag bits,
    /// an unaligned or wrapping range): the driver reports `error`; an executor with a real
    /// guest still issues the hypercall, so that the guest sees the error too.
    fn refused_map_gpa(&mut self, gpa: u64, npages: u64, flags: u64) -> Result<(), Self::Error> {
        let _ = (gpa, npages, flags);
        Ok(())
    }

    /// `query`: the fault path's answer.
    fn query(&mut self, gpa: Gpa, access: Access) -> Result<MaxLevel, Self::Error>;

    /// `fault`: a guest access through the MMU model.
    fn fault(&mut self, gpa: Gpa, access: Access) -> Result<FaultOutcome, Self::Error> {
        let _ = (gpa, access);
        Err(no_mmu())
    }

    /// `fault-range`: a fault on every page of the range.
    fn fault_range(
        &mut self,
        gpa: Gpa,
        size: u64,
        access: Access,
    ) -> Result<FaultRangeCounts, Self::Error> {
        let _ = (gpa, size, access);
        Err(no_mmu())
    }

    /// `accept`: a TDX guest accepting a private page.
    fn accept(&mut self, gpa: Gpa, level: Level) -> Result<AcceptOutcome, Self::Error> {
        let _ = (gpa, level);
        Err(no_mmu())
    }

    /// `attr-mode` (v2), only before any other operation but `mmu`. The default accepts
    /// per VM (what every executor without guest_memfd files runs) and refuses per gmem.
    fn attr_mode(&mut self, mode: AttrMode) -> Result<(), Self::Error> {
        match mode {
            AttrMode::PerVm => Ok(()),
            AttrMode::PerGmem => Err(no_gmem()),
        }
    }

    /// `gmem` (v2): KVM_CREATE_GUEST_MEMFD; the file gets the next number. `merge`: the
    /// file's merge policy, if the line names one.
    fn create_gmem(
        &mut self,
        size: u64,
        flags: GmemFlags,
        merge: Option<MergePolicy>,
    ) -> Result<GmemId, Self::Error> {
        let _ = (size, flags, merge);
        Err(no_gmem())
    }

    /// `punch-hole` (v2): `fallocate(PUNCH_HOLE)` on a file.
    fn punch_hole(
        &mut self,
        file: GmemId,
        offset: GmemOffset,
        size: u64,
    ) -> Result<(), Self::Error> {
        let _ = (file, offset, size);
        Err(no_gmem())
    }

    /// `gmem-attrs` (v2): KVM_SET_MEMORY_ATTRIBUTES2 on a file.
    fn gmem_attributes(
        &mut self,
        file: GmemId,
        offset: GmemOffset,
        size: u64,
        attributes: u64,
    ) -> Result<(), Self::Error> {
        let _ = (file, offset, size, attributes);
        Err(no_gmem())
    }

    /// `gmem-pin` / `gmem-unpin` (v2): the host takes (`pin`) or drops a page reference.
    fn gmem_pin(&mut self, file: GmemId, offset: GmemOffset, pin: bool) -> Result<(), Self::Error> {
        let _ = (file, offset, pin);
        Err(no_gmem())
    }
}

fn no_mmu<E: From<cvmem::Error>>() -> E {
    cvmem::Error::Unsupported {
        what: cvmem::Unsupported::NoMmuModel,
    }
    .into()
}

fn no_gmem<E: From<cvmem::Error>>() -> E {
    cvmem::Error::Unsupported {
        what: cvmem::Unsupported::NoGmemModel,
    }
    .into()
}

/// A refused operation: the errno KVM would return and what was wrong. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// `EINVAL`, `EEXIST`, `ENOENT`, `ENOMEM`, `E2BIG`, …
    pub errno: &'static str,
    /// The error, for people.
    pub message: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.errno, self.message)
    }
}

/// What one operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A change that succeeded with nothing to report.
    Done,
    /// What a `memslot` line did.
    Slot(SlotChange),
    /// The answer to a `query`.
    Query(MaxLevel),
    /// What a `fault` did.
    Fault(FaultOutcome),
    /// What a `fault-range` did, page by page.
    FaultRange(FaultRangeCounts),
    /// What an `accept` did.
    Accept(AcceptOutcome),
    /// The file a `gmem` line created.
    Gmem(GmemId),
    /// The `mmu` line was overridden: the model runs this layout and policy instead.
    Overridden {
        /// The layout the model runs.
        layout: cvmem::mmu::Layout,
        /// The recovery policy it runs.
        recovery: Recovery,
    },
    /// The operation was refused; nothing changed.
    Error(Rejected),
}

impl Outcome {
    /// Whether the operation was refused.
    pub fn is_error(&self) -> bool {
        matches!(self, Outcome::Error(_))
    }
}

/// Runs operations, one at a time, against an executor: the only op-log interpreter.
#[derive(Clone, Copy, Debug, Default)]
pub struct Driver {
    ops: u64,
    errors: u64,
    /// `mmu` and `attr-mode` lines so far: `attr-mode` is refused after anything else.
    setup: u64,
}

impl Driver {
    /// A driver at the start of an op-log.
    pub const fn new() -> Self {
        Driver {
            ops: 0,
            errors: 0,
            setup: 0,
        }
    }

    /// Operations run so far.
    pub const fn ops(&self) -> u64 {
        self.ops
    }

    /// Operations refused so far.
    pub const fn errors(&self) -> u64 {
        self.errors
    }

    /// Runs one operation. A refusal is an outcome, not an error: an op-log goes on.
    pub fn apply<E: Executor>(&mut self, executor: &mut E, op: &Op) -> Outcome {
        let outcome = match self.try_apply(executor, op) {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Error(Rejected {
                errno: E::errno(&e),
                message: e.to_string(),
            }),
        };
        self.ops += 1;
        self.setup += u64::from(matches!(op, Op::Mmu { .. } | Op::AttrMode { .. }));
        self.errors += u64::from(outcome.is_error());
        outcome
    }

    fn try_apply<E: Executor>(&self, executor: &mut E, op: &Op) -> Result<Outcome, E::Error> {
        Ok(match *op {
            Op::Mmu { layout, recovery } => {
                if self.ops != 0 {
                    return Err(cvmem::Error::Unsupported {
                        what: cvmem::Unsupported::MmuNotFirst,
                    }
                    .into());
                }
                executor.mmu(layout.into(), recovery.unwrap_or_default())?
            }
            Op::Memslot { .. } => match op.memory_region() {
                Some(region) => Outcome::Slot(executor.memslot(&region?)?),
                None => Outcome::Done, // not reached: every memslot line is a region
            },
            Op::Attrs {
                gpa,
                size,
                attributes,
            } => {
                executor.set_attributes(gpa, size, attributes)?;
                Outcome::Done
            }
            Op::MapGpa { gpa, npages, flags } => match MapGpaRange::decode(gpa, npages, flags) {
                Ok(request) => {
                    executor.map_gpa(&request)?;
                    Outcome::Done
                }
                Err(e) => {
                    executor.refused_map_gpa(gpa, npages, flags)?;
                    return Err(e.into());
                }
            },
            Op::Query { gpa, access } => Outcome::Query(executor.query(gpa, access)?),
            Op::Fault { gpa, access } => Outcome::Fault(executor.fault(gpa, access)?),
            Op::FaultRange { gpa, size, access } => {
                Outcome::FaultRange(executor.fault_range(gpa, size, access)?)
            }
            Op::Accept { gpa, level } => Outcome::Accept(executor.accept(gpa, level)?),
            Op::AttrMode { mode } => {
                if self.ops != self.setup {
                    return Err(cvmem::Error::Unsupported {
                        what: cvmem::Unsupported::AttrModeNotFirst,
                    }
                    .into());
                }
                executor.attr_mode(mode)?;
                Outcome::Done
            }
            Op::Gmem { size, flags, merge } => {
                Outcome::Gmem(executor.create_gmem(size, flags, merge)?)
            }
            Op::PunchHole { file, offset, size } => {
                executor.punch_hole(gmem_id(file), offset, size)?;
                Outcome::Done
            }
            Op::GmemAttrs {
                file,
                offset,
                size,
                attributes,
            } => {
                executor.gmem_attributes(gmem_id(file), offset, size, attributes)?;
                Outcome::Done
            }
            Op::GmemPin { file, offset } => {
                executor.gmem_pin(gmem_id(file), offset, true)?;
                Outcome::Done
            }
            Op::GmemUnpin { file, offset } => {
                executor.gmem_pin(gmem_id(file), offset, false)?;
                Outcome::Done
            }
        })
    }
}

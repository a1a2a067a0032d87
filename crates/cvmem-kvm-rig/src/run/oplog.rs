//! `kvm-run --oplog`: the op-log driver's [`Executor`] on a real VM. `map-gpa` lines are issued
//! by the guest through its transport (one short guest run each, so the guest sees KVM's
//! answer, refusals included); `memslot`, `attrs` and `query` run on the host against
//! [`crate::CvmMemory`]; `fault`, `fault-range` and `accept` go through its MMU model.

use cvmem::mmu::{AcceptOutcome, FaultOutcome, FaultRangeCounts, Layout, Recovery};
use cvmem::{Access, Gpa, Level, MapGpaRange, MaxLevel, MemoryRegion, SlotChange};
use cvmem_oplog::{Driver, Executor, Line, Op, Outcome};

use super::Runner;
use crate::abi::BOOT_SLOT;
use crate::error::{Error, Result};
use crate::report::LineResult;
use crate::script::Script;
use cvmem_kvm::{guest_scope, Backing, ConversionRequest, MmuConfig, RequestSource};

/// `-EINVAL` as the guest sees it in its status register.
const EINVAL: u64 = (libc::EINVAL as u64).wrapping_neg();

/// A [`Runner`] as an op-log executor.
pub(super) struct OplogExecutor<'a> {
    pub(super) runner: &'a mut Runner,
    /// The MMU model the VM was created with (an `mmu` line asking for another is overridden).
    pub(super) mmu: MmuConfig,
}

impl OplogExecutor<'_> {
    /// Runs every line through the driver, recording what each did in the report.
    pub(super) fn run(&mut self, lines: &[Line]) {
        let mut driver = Driver::new();
        let mut adapted = 0;
        for line in lines {
            let op = self.as_run(line.op);
            adapted += usize::from(op != line.op);
            let outcome = driver.apply(self, &op);
            self.runner.report.lines.push(LineResult {
                line: line.number,
                op,
                outcome,
            });
        }
        if let (Some(missing), 1..) = (self.runner.vm.path.guest_memfd_slots_without, adapted) {
            self.runner.report.adaptations.push(format!(
                "{adapted} guest-memfd memslot line(s) ran as anonymous slots: the host lacks {missing}"
            ));
        }
    }

    /// `op` as this host runs it ([`crate::without_guest_memfd`] where KVM has no
    /// guest_memfd); the report's lines hold it so, for a replay to compare with.
    fn as_run(&self, op: Op) -> Op {
        match self.runner.vm.path.guest_memfd_slots_without {
            Some(_) => crate::without_guest_memfd(op),
            None => op,
        }
    }

    /// The guest issues one KVM_HC_MAP_GPA_RANGE and checks its status against `expect`.
    fn guest_map(&mut self, gpa: u64, npages: u64, flags: u64, expect: u64) -> Result<()> {
        let mut script = Script::new(self.runner.vm.memory.kvm_attributes());
        script.map(gpa, npages, flags, expect);
        self.runner.run(&script)
    }
}

impl Executor for OplogExecutor<'_> {
    type Error = Error;

    fn errno(error: &Error) -> &'static str {
        error.errno_name()
    }

    fn mmu(&mut self, layout: Layout, recovery: Recovery) -> Result<Outcome> {
        let MmuConfig {
            layout: runs,
            recovery: with,
        } = self.mmu;
        Ok(if (layout, recovery) == (runs, with) {
            Outcome::Done
        } else {
            Outcome::Overridden {
                layout: runs,
                recovery: with,
            }
        })
    }

    fn memslot(&mut self, region: &MemoryRegion) -> Result<SlotChange> {
        if region.slot == BOOT_SLOT {
            return Err(Error::ReservedSlot(BOOT_SLOT));
        }
        let mem = &self.runner.vm.memory;
        let backing = if region.flags.guest_memfd {
            self.runner.vm.path.backing
        } else {
            Backing::Anonymous
        };
        // The op-log's host address of a new slot is its gpa (KVM's rules see that address).
        let mut region = *region;
        if region.size != 0 && !mem.query().has_slot(region.slot) {
            region.uaddr = Some(region.new_slot_uaddr());
        }
        Ok(mem.set_user_memory_region(&region, backing)?)
    }

    fn set_attributes(&mut self, gpa: Gpa, size: u64, attributes: u64) -> Result<()> {
        let result = self.runner.vm.memory.set_attributes(gpa, size, attributes);
        self.runner.record(RequestSource::Vmm, &result);
        Ok(result.map(drop)?)
    }

    fn map_gpa(&mut self, request: &MapGpaRange) -> Result<()> {
        self.runner.last_refusal = None;
        // The guest expects the VMM's answer: a refusal where it asks for private memory
        // outside every memslot (cvmem_kvm::guest_scope), else success.
        let req = ConversionRequest::from_map_gpa_range(
            RequestSource::PortIo,
            request.gpa.0,
            request.npages,
            request.flags(),
        )?;
        let scope = (self.runner.vm.memory.query()).with_tracker(|t| guest_scope(t, &req));
        let expect = scope.err().map_or(0, |e| e.guest_status());
        self.guest_map(request.gpa.0, request.npages, request.flags(), expect)?;
        // The guest saw its status (another one than expected is a mismatch); a refusal is this
        // line's outcome too.
        match self.runner.last_refusal.take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    fn refused_map_gpa(&mut self, gpa: u64, npages: u64, flags: u64) -> Result<()> {
        self.guest_map(gpa, npages, flags, EINVAL)
    }

    fn query(&mut self, gpa: Gpa, access: Access) -> Result<MaxLevel> {
        Ok(self.runner.vm.memory.query().max_level(gpa, access))
    }

    fn fault(&mut self, gpa: Gpa, access: Access) -> Result<FaultOutcome> {
        Ok(self.runner.vm.memory.fault(gpa, access)?)
    }

    fn fault_range(&mut self, gpa: Gpa, size: u64, access: Access) -> Result<FaultRangeCounts> {
        Ok(self.runner.vm.memory.fault_range(gpa, size, access)?)
    }

    fn accept(&mut self, gpa: Gpa, level: Level) -> Result<AcceptOutcome> {
        Ok(self.runner.vm.memory.accept(gpa, level)?)
    }
}

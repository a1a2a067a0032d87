//! Guest memory seen from the host (reads and writes through the shared mapping), and guest
//! accesses through the MMU model (faults, accepts, touches).

use std::collections::BTreeMap;

#[cfg(feature = "mmu-model")]
use cvmem::mmu::{AcceptOutcome, FaultOutcome, FaultRangeCounts};
use cvmem::Gpa;
#[cfg(feature = "mmu-model")]
use cvmem::{Access, Gfn, GfnRange, Level, Tracker, KVM_MEMORY_ATTRIBUTE_PRIVATE};

use super::CvmMemory;
use crate::backing::SlotMemory;
use crate::error::{Error, Result};

impl CvmMemory {
    /// Runs `f` on the MMU model as tracking time; an error if this memory keeps none.
    #[cfg(feature = "mmu-model")]
    fn model<R>(&self, f: impl FnOnce(&mut cvmem::mmu::Vm) -> cvmem::Result<R>) -> Result<R> {
        let (r, _) = self.timed(|| self.shared.model.with(f));
        let r = r.ok_or(Error::MissingCapability(
            "an MMU model (CvmMemory::with_mmu)",
        ))?;
        Ok(r?)
    }
    /// A guest access of kind `access` to `gpa` through the MMU model (feature `mmu-model`; an
    /// error if this memory keeps no model): what KVM's fault path
    /// would do — map the page at the level the tracker allows (replacing smaller mappings),
    /// or answer spurious, retry (a conversion is changing the pages around it), no slot, or a
    /// memory fault (the access kind differs from the page's: KVM_EXIT_MEMORY_FAULT).
    #[cfg(feature = "mmu-model")]
    pub fn fault(&self, gpa: Gpa, access: Access) -> Result<FaultOutcome> {
        self.model(|vm| vm.fault(gpa, access))
    }

    /// [`CvmMemory::fault`] on every 4K page of `[gpa, gpa + size)` in address order, counted
    /// (the op-log's `fault-range`; checked as `attrs` checks its range).
    #[cfg(feature = "mmu-model")]
    pub fn fault_range(&self, gpa: Gpa, size: u64, access: Access) -> Result<FaultRangeCounts> {
        self.model(|vm| vm.fault_range(gpa, size, access))
    }

    /// A guest that follows the protocol touching every page of `[gpa, gpa + size)`: each page
    /// is accessed as the kind it has now (a TDX guest uses the private or the shared alias, an
    /// SNP guest the C-bit, as it converted them), and faulted through the MMU model. What a
    /// workload reports of the guest's reads and writes of memory.
    #[cfg(feature = "mmu-model")]
    pub fn touch(&self, gpa: Gpa, size: u64) -> Result<FaultRangeCounts> {
        self.model(|vm| -> cvmem::Result<FaultRangeCounts> {
            let range = vm.tracker().validate_attributes(gpa, size, 0)?.range();
            let runs: Vec<(GfnRange, bool)> = vm
                .tracker()
                .runs(range)
                .map(|r| (r.range(), r.attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0))
                .collect();
            let mut total = FaultRangeCounts::default();
            for (run, private) in runs {
                let c =
                    vm.fault_range(run.start.gpa(), run.bytes(), Access::from_private(private))?;
                total.add(&c);
            }
            Ok(total)
        })
    }

    /// A TDX guest accepting the private page at `gpa` at `level` through the MMU model (the
    /// op-log's `accept`; the split layout only). The GUEST_INHIBIT bits the model's accept
    /// sets or clears are copied to the tracker readers see.
    #[cfg(feature = "mmu-model")]
    pub fn accept(&self, gpa: Gpa, level: Level) -> Result<AcceptOutcome> {
        let _writers = self.lock_memory();
        let outcome = self.model(|vm| vm.accept(gpa, level))?;
        if outcome == AcceptOutcome::Accepted {
            let (r, _) = self.timed(|| self.copy_inhibits(gpa.gfn()));
            r?;
        }
        Ok(outcome)
    }

    /// Makes the concurrent front's GUEST_INHIBIT bits of the 1G page holding `gfn` (and its
    /// 2M pages) those of the model.
    #[cfg(feature = "mmu-model")]
    fn copy_inhibits(&self, gfn: Gfn) -> cvmem::Result<()> {
        let g1 = Level::G1.align_down(gfn).0;
        let pages_2m = (0..512).map(|i| Gfn(g1 + i * Level::M2.pages()));
        let want = |t: &Tracker| -> (bool, Vec<bool>) {
            (
                t.is_guest_inhibited(Gfn(g1), Level::G1),
                pages_2m
                    .clone()
                    .map(|g| t.is_guest_inhibited(g, Level::M2))
                    .collect(),
            )
        };
        let Some((want_1g, want_2m)) = self.shared.model.with(|vm| want(vm.tracker())) else {
            return Ok(());
        };
        let range = GfnRange::new(Gfn(g1), Gfn(g1 + Level::G1.pages()));
        self.shared.tracker.update(
            range,
            |_| {},
            |t| {
                let mut changed = false;
                for (g, &on) in pages_2m.clone().zip(&want_2m) {
                    if on != t.is_guest_inhibited(g, Level::M2) {
                        changed = true;
                        if on {
                            // Sets the 2M page's bit and its 1G page's (fixed below if unwanted).
                            if let Err(e) = t.set_guest_inhibit(g, Level::K4) {
                                return (changed, Err(e));
                            }
                        } else {
                            t.clear_guest_inhibit(g, Level::M2);
                        }
                    }
                }
                if want_1g != t.is_guest_inhibited(Gfn(g1), Level::G1) {
                    changed = true;
                    if want_1g {
                        if let Err(e) = t.set_guest_inhibit(Gfn(g1), Level::M2) {
                            return (changed, Err(e));
                        }
                    } else {
                        t.clear_guest_inhibit(Gfn(g1), Level::G1);
                    }
                }
                (changed, Ok(()))
            },
        )
    }

    /// Reads the quadword at `gpa` through the host's shared mapping of its slot.
    pub fn read_u64(&self, gpa: Gpa) -> Result<u64> {
        let gpa = gpa.0;
        let memory = self.lock_memory();
        let (mem, off) = locate(&memory, gpa, 8)?;
        mem.shared()
            .read_u64(off)
            .ok_or(Error::NotInSlot { gpa, size: 8 })
    }

    /// Writes the quadword at `gpa` through the host's shared mapping of its slot.
    pub fn write_u64(&self, gpa: Gpa, value: u64) -> Result<()> {
        let gpa = gpa.0;
        let memory = self.lock_memory();
        let (mem, off) = locate(&memory, gpa, 8)?;
        if mem.shared().write_u64(off, value) {
            Ok(())
        } else {
            Err(Error::NotInSlot { gpa, size: 8 })
        }
    }

    /// Copies `bytes` to `gpa` through the host's shared mapping (one slot only).
    pub fn write_bytes(&self, gpa: Gpa, bytes: &[u8]) -> Result<()> {
        let gpa = gpa.0;
        let memory = self.lock_memory();
        let size = bytes.len() as u64;
        let (mem, off) = locate(&memory, gpa, size)?;
        if mem.shared().write_bytes(off, bytes) {
            Ok(())
        } else {
            Err(Error::NotInSlot { gpa, size })
        }
    }

    /// Writes `f(gpa)` to every quadword of `[gpa, gpa + size)` through the host mapping.
    pub fn write_with(&self, gpa: Gpa, size: u64, f: impl Fn(u64) -> u64) -> Result<()> {
        let gpa = gpa.0;
        let memory = self.lock_memory();
        let (mem, off) = locate(&memory, gpa, size)?;
        for i in (0..size).step_by(8) {
            if !mem.shared().write_u64(off + i as usize, f(gpa + i)) {
                return Err(Error::NotInSlot { gpa, size });
            }
        }
        Ok(())
    }

    /// Calls `f(gpa, value)` with every quadword of `[gpa, gpa + size)` read through the host
    /// mapping, stopping early when `f` returns false.
    pub fn scan_u64(&self, gpa: Gpa, size: u64, mut f: impl FnMut(u64, u64) -> bool) -> Result<()> {
        let gpa = gpa.0;
        let memory = self.lock_memory();
        let (mem, off) = locate(&memory, gpa, size)?;
        for i in (0..size).step_by(8) {
            let v = mem
                .shared()
                .read_u64(off + i as usize)
                .ok_or(Error::NotInSlot { gpa, size })?;
            if !f(gpa + i, v) {
                break;
            }
        }
        Ok(())
    }
}

fn locate(memory: &BTreeMap<u32, SlotMemory>, gpa: u64, size: u64) -> Result<(&SlotMemory, usize)> {
    memory
        .values()
        .find(|m| {
            gpa >= m.gpa
                && gpa
                    .checked_add(size)
                    .is_some_and(|end| end <= m.gpa + m.size())
        })
        .map(|m| (m, (gpa - m.gpa) as usize))
        .ok_or(Error::NotInSlot { gpa, size })
}

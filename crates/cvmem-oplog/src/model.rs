//! `cvmem replay`'s executor: the core's TDP MMU model ([`Vm`]: tracker and page tables), and
//! the summary of its state at the end of an op-log.

use alloc::vec::Vec;

use cvmem::mmu::{
    AcceptOutcome, Coverage, FaultOutcome, FaultRangeCounts, Layout, MmuStats, Recovery, Vm,
};
use cvmem::{
    Access, Errno, Error, Gpa, Level, MapGpaRange, MaxLevel, MemoryRegion, SlotChange,
    SlotEligibility, Tracker, PAGE_SIZE,
};
use cvmem::{AttrMode, GmemFlags, GmemId, GmemOffset, MergePolicy};

use crate::exec::{Driver, Executor, Outcome};
use crate::op::Op;

impl Executor for Vm {
    type Error = Error;

    fn errno(error: &Error) -> &'static str {
        Errno::name(error.errno())
    }

    fn mmu(&mut self, layout: Layout, recovery: Recovery) -> Result<Outcome, Error> {
        *self = Vm::new(layout, recovery).with_gpa_bits(self.tracker().gpa_bits());
        Ok(Outcome::Done)
    }

    fn memslot(&mut self, region: &MemoryRegion) -> Result<SlotChange, Error> {
        self.set_user_memory_region(region)
    }

    fn set_attributes(&mut self, gpa: Gpa, size: u64, attributes: u64) -> Result<(), Error> {
        self.set_memory_attributes(gpa, size, attributes).map(drop)
    }

    fn map_gpa(&mut self, request: &MapGpaRange) -> Result<(), Error> {
        self.map_gpa_range(request).map(drop)
    }

    fn query(&mut self, gpa: Gpa, access: Access) -> Result<MaxLevel, Error> {
        Ok(self.tracker().max_mapping_level(gpa, access))
    }

    fn fault(&mut self, gpa: Gpa, access: Access) -> Result<FaultOutcome, Error> {
        Vm::fault(self, gpa, access)
    }

    fn fault_range(
        &mut self,
        gpa: Gpa,
        size: u64,
        access: Access,
    ) -> Result<FaultRangeCounts, Error> {
        Vm::fault_range(self, gpa, size, access)
    }

    fn accept(&mut self, gpa: Gpa, level: Level) -> Result<AcceptOutcome, Error> {
        Vm::accept(self, gpa, level)
    }

    fn attr_mode(&mut self, mode: AttrMode) -> Result<(), Error> {
        self.set_attr_mode(mode)
    }

    fn create_gmem(
        &mut self,
        size: u64,
        flags: GmemFlags,
        merge: Option<MergePolicy>,
    ) -> Result<GmemId, Error> {
        let merge = merge.unwrap_or(self.tracker().merge_policy());
        self.create_guest_memfd_merging(size, flags, merge)
    }

    fn punch_hole(&mut self, file: GmemId, offset: GmemOffset, size: u64) -> Result<(), Error> {
        self.gmem_punch_hole(file, offset, size)
    }

    fn gmem_attributes(
        &mut self,
        file: GmemId,
        offset: GmemOffset,
        size: u64,
        attributes: u64,
    ) -> Result<(), Error> {
        self.set_gmem_attributes(file, offset, size, attributes, 0)
            .map(drop)
    }

    fn gmem_pin(&mut self, file: GmemId, offset: GmemOffset, pin: bool) -> Result<(), Error> {
        if pin {
            self.gmem_get_page(file, offset)
        } else {
            self.gmem_put_page(file, offset)
        }
    }
}

/// One memslot in the replay summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlotSummary {
    /// Slot id.
    pub slot: u32,
    /// Guest physical address.
    pub gpa: Gpa,
    /// Size in bytes.
    pub size: u64,
    /// Mixed 2M pages wholly inside the slot.
    pub mixed_2m: u64,
    /// Mixed 1G pages wholly inside the slot.
    pub mixed_1g: u64,
    /// How much of the slot may be mapped at each level.
    pub eligibility: SlotEligibility,
}

/// One guest_memfd in the replay summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileSummary {
    /// The file's number.
    pub file: u32,
    /// Size in bytes.
    pub size: u64,
    /// Its folio size.
    pub folio: Level,
    /// Its merge policy.
    pub merge: cvmem::MergePolicy,
    /// Folios split and merged.
    pub counts: cvmem::FolioCounts,
    /// Private bytes in 4K pages, whole 2M folios, whole 1G folios.
    pub private_by_folio: [u64; 3],
}

/// The state at the end of a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Maximal runs of non-zero attributes: `(gpa, size, attributes)`, in address order.
    pub attributes: Vec<(u64, u64, u64)>,
    /// Memslots by slot id.
    pub memslots: Vec<SlotSummary>,
    /// guest_memfd files (op-log v2) by number.
    pub files: Vec<FileSummary>,
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
    driver: Driver,
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
        // A scenario file is untrusted input, but needs no limit of its own: memslots cost a
        // fixed size whatever their size, and each line can add at most a few regions to the
        // attribute store (bounded per GiB, see `cvmem::attrs`).
        Replayer {
            vm: Vm::new(Layout::SPLIT, Recovery::OnFault),
            driver: Driver::new(),
        }
    }

    /// A replayer whose memslots must fit in `bits` of guest-physical address (as the host's
    /// MAXPHYADDR limits x86 KVM; see [`cvmem::Tracker::with_gpa_bits`]).
    pub fn with_gpa_bits(bits: u32) -> Self {
        Replayer {
            vm: Vm::new(Layout::SPLIT, Recovery::OnFault).with_gpa_bits(bits),
            driver: Driver::new(),
        }
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
        self.driver.apply(&mut self.vm, op)
    }

    /// The end-of-replay summary.
    pub fn summary(&self) -> Summary {
        let t = self.vm.tracker();
        let attributes = t
            .private_runs()
            .map(|r| {
                (
                    r.start.gpa().0,
                    (r.end.0 - r.start.0).saturating_mul(PAGE_SIZE),
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
        let files = t
            .gmems()
            .map(|(id, g)| FileSummary {
                file: id.0,
                size: g.size(),
                folio: g.folios().order(),
                merge: g.merge_policy(),
                counts: g.folios().counts(),
                private_by_folio: g.private_by_folio(),
            })
            .collect();
        Summary {
            attributes,
            memslots,
            files,
            boundaries: t.attribute_store().boundaries(),
            heap_bytes: t.heap_bytes(),
            ops: self.driver.ops(),
            errors: self.driver.errors(),
            mmu: self.vm.stats(),
            coverage: self.vm.coverage(),
        }
    }
}

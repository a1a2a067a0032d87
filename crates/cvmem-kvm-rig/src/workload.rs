//! The workloads [`crate::kvm_run`] drives: scripts for the guest plus the memslots they need.

use cvmem::{Level, PAGE_SIZE};
use cvmem_oplog::{Line, Op};

use crate::caps::HostCaps;
use crate::error::{Error, Result};
use crate::report::LineResult;
use crate::run::Workload;
use crate::script::Script;
use cvmem_kvm::{Backing, MmuConfig, SlotSpec};

const PRIVATE: u64 = cvmem::hypercall::KVM_MAP_GPA_RANGE_ENCRYPTED;
const EINVAL: u64 = (libc::EINVAL as u64).wrapping_neg();
const K4: u64 = PAGE_SIZE;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;

/// A workload ready to run.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) name: String,
    /// Memslots to create before the guest starts.
    pub(crate) slots: Vec<SlotSpec>,
    pub(crate) script: Script,
    /// Whether the tracker's final state must equal the script's shadow.
    pub(crate) check_state: bool,
    /// Op-log lines with results known before the run.
    pub(crate) lines: Vec<LineResult>,
}

/// A workload's input, read before the VM exists (an op-log's `mmu` line chooses the model).
#[derive(Debug)]
pub(crate) enum Source {
    Selftest,
    Boot { flips: u64 },
    Oplog { name: String, lines: Vec<Line> },
}

impl Source {
    /// Reads and parses the workload's input.
    pub(crate) fn load(w: &Workload) -> Result<Self> {
        Ok(match w {
            Workload::Selftest => Source::Selftest,
            Workload::Boot { flips } => Source::Boot { flips: *flips },
            Workload::Oplog(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| Error::os("read op-log", e))?;
                let lines = cvmem_oplog::parse(&text)
                    .map_err(|e| Error::Workload(format!("{}: {e}", path.display())))?;
                Source::Oplog {
                    name: path.display().to_string(),
                    lines,
                }
            }
        })
    }

    /// The MMU model the input asks for: an op-log whose first operation is `mmu`.
    pub(crate) fn mmu(&self) -> Option<MmuConfig> {
        match self {
            Source::Oplog { lines, .. } => lines.first().and_then(|l| mmu_of(&l.op)),
            _ => None,
        }
    }
}

fn mmu_of(op: &Op) -> Option<MmuConfig> {
    match *op {
        Op::Mmu { layout, recovery } => Some(MmuConfig {
            layout: layout.into(),
            recovery: recovery.unwrap_or_default(),
        }),
        _ => None,
    }
}

/// The plan of a workload. An op-log's is empty: its lines run one by one through the op-log
/// driver (`run/oplog.rs`), not as a script prepared ahead.
pub(crate) fn build(src: &Source, caps: &HostCaps, attributes_in_kvm: bool) -> Plan {
    match src {
        Source::Selftest => selftest(caps, attributes_in_kvm),
        Source::Boot { flips } => boot(caps, attributes_in_kvm, *flips),
        Source::Oplog { name, .. } => Plan {
            name: format!("oplog {name}"),
            slots: Vec::new(),
            script: Script::new(attributes_in_kvm),
            check_state: false,
            lines: Vec::new(),
        },
    }
}

fn slot(slot: u32, gpa: u64, size: u64, backing: Backing) -> SlotSpec {
    SlotSpec {
        slot,
        gpa: cvmem::Gpa(gpa),
        size,
        backing,
        max_level: Level::G1,
    }
}

/// One stage of KVM's private_mem_conversions_test on `[gpa, gpa + size)`, with patterns
/// derived from `seed`. `separate_private`: private memory is a guest_memfd beside the shared
/// memory and KVM keeps the attributes, so the host's view can be checked not to see private
/// writes.
fn conversion_stage(s: &mut Script, gpa: u64, size: u64, seed: u64, separate_private: bool) {
    let n = size / K4;
    let p = |k: u64| (seed << 8 | k).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    // Shared by default: the guest's writes reach the host, the host's reach the guest.
    s.fill(gpa, n, p(1));
    s.host_check(gpa, n);
    s.host_write(gpa, n, p(2));
    s.check(gpa, n);
    // To private: contents kept or discarded, as the backing says.
    let hint = if gpa % M2 == 0 && size % M2 == 0 {
        1
    } else {
        0
    };
    s.map(gpa, n, PRIVATE | hint, 0);
    s.check(gpa, n);
    s.fill(gpa, n, p(3));
    s.check(gpa, n);
    if separate_private {
        // As private_mem_conversions_test: the private writes land in the guest_memfd, and the
        // host's shared view reads zero (its pages were discarded when they became private).
        s.host_expect(gpa, n, 0);
    }
    // Odd pages back to shared: holes in a private range.
    for i in (0..n).filter(|i| (gpa / K4 + i) % 2 == 1) {
        let page = gpa + i * K4;
        s.map(page, 1, 0, 0);
        s.check(page, 1);
        s.fill(page, 1, p(4));
        s.host_check(page, 1);
        s.host_write(page, 1, p(5));
        s.check(page, 1);
    }
    // The even pages stayed private and kept their bytes.
    s.check(gpa, n);
    // All back to shared: only the pages still private change (and lose their bytes in place).
    s.map(gpa, n, 0, 0);
    s.check(gpa, n);
    s.host_check(gpa, n);
    // Once more as one contiguous range each way.
    s.map(gpa, n, PRIVATE, 0);
    s.fill(gpa, n, p(6));
    s.map(gpa, n, hint, 0);
    s.check(gpa, n);
}

fn selftest(caps: &HostCaps, attributes_in_kvm: bool) -> Plan {
    let mut s = Script::new(attributes_in_kvm);
    let mut slots = Vec::new();
    let best = caps.best_backing();
    let mut backings = vec![best];
    // Where KVM keeps the attributes, a private page of a slot without guest_memfd cannot be
    // reached at all (every access exits with KVM_EXIT_MEMORY_FAULT): conversions run on
    // guest_memfd slots only.
    if best != Backing::Anonymous && !attributes_in_kvm {
        backings.push(Backing::Anonymous);
    }
    s.ping(100);
    for (k, &backing) in backings.iter().enumerate() {
        let base = (4 + 2 * k as u64) * G1;
        slots.push(slot(1 + k as u32, base, G1, backing));
        s.shadow_slot(base, G1, backing);
        let seed = 0x10 * (k as u64 + 1);
        // The stages of private_mem_conversions_test.
        for (i, (off, size)) in [(0, K4), (0, M2), (K4, K4), (K4, M2), (M2, K4)]
            .into_iter()
            .enumerate()
        {
            conversion_stage(
                &mut s,
                base + 8 * M2 * i as u64 + off,
                size,
                seed + i as u64,
                attributes_in_kvm && backing == Backing::GuestMemfdSeparate,
            );
        }
        // Malformed requests change nothing and return -EINVAL.
        let probe = base + 64 * M2;
        s.fill(probe, 2, 0x5a5a_0000_0000_0001);
        for (gpa, npages, attrs) in [
            (probe + 1, 1, PRIVATE),
            (probe, 0, PRIVATE),
            (probe, 1, PRIVATE | 1 << 5),
            (probe, 1, PRIVATE | 3),
            (!0xfff_u64, 2, PRIVATE),
        ] {
            s.map(gpa, npages, attrs, EINVAL);
        }
        s.check(probe, 2);
        // A 2M-hinted conversion of a whole 2M page, and the VMM converting on its own.
        s.map(base + 66 * M2, 512, PRIVATE | 1, 0);
        s.fill(base + 68 * M2, 20, 0x7e7e_0000_0000_0001);
        s.vmm_set_attributes(base + 68 * M2, M2, cvmem::KVM_MEMORY_ATTRIBUTE_PRIVATE);
        s.vmm_set_attributes(base + 68 * M2 + 16 * K4, 4 * K4, 0);
        s.check(base + 68 * M2, 20);
        // Implicit conversions: private accesses to shared pages (guest_memfd slots only),
        // then shared accesses to some of them.
        if backing.has_guest_memfd() {
            let imp = base + 72 * M2;
            s.fill(imp, 16, 0x6b6b_0000_0000_0001);
            s.access(imp, 16, true);
            s.check(imp, 16);
            s.access(imp + 4 * K4, 4, false);
            s.check(imp, 16);
        }
    }
    slot_changes(&mut s, &mut slots);
    Plan {
        name: "selftest".into(),
        slots,
        script: s,
        check_state: true,
        lines: Vec::new(),
    }
}

/// A memslot that moves and has dirty logging turned on and off while the guest uses it (KVM
/// lets anonymous slots do both; guest_memfd slots are immutable): the guest's bytes must
/// follow the slot to its new address, and the model's mappings must be zapped by the move and
/// split to 4K by dirty logging.
fn slot_changes(s: &mut Script, slots: &mut Vec<SlotSpec>) {
    let (id, from, to, npages) = (10, 12 * G1, 13 * G1 + 4 * M2, 4 * M2 / K4);
    slots.push(slot(id, from, npages * K4, Backing::Anonymous));
    s.shadow_slot(from, npages * K4, Backing::Anonymous);
    s.fill(from, npages, 0x5107_0000_0000_0001);
    s.host_check(from, npages);
    s.move_slot(id, from, to);
    s.check(to, npages);
    s.fill(to + M2, 8, 0x5107_0000_0000_0002);
    s.host_check(to, npages);
    s.dirty_log(id, true);
    s.fill(to, 8, 0x5107_0000_0000_0003);
    s.check(to, npages);
    s.dirty_log(id, false);
    s.fill(to + 3 * M2, 1, 0x5107_0000_0000_0004);
    s.check(to, npages);
    s.host_check(to, npages);
}

fn boot(caps: &HostCaps, attributes_in_kvm: bool, flips: u64) -> Plan {
    let backing = caps.best_backing();
    let mut s = Script::new(attributes_in_kvm);
    // A 4 GiB guest: 2 GiB below the 32-bit MMIO hole and 2 GiB above 4 GiB.
    let ram = [(0, 2 * G1), (4 * G1, 2 * G1)];
    let slots: Vec<SlotSpec> = ram
        .iter()
        .enumerate()
        .map(|(i, &(gpa, size))| slot(1 + i as u32, gpa, size, backing))
        .collect();
    for &(gpa, size) in &ram {
        s.shadow_slot(gpa, size, backing);
    }
    s.ping(100);
    // The VMM makes guest_memfd memory private at start-up (as QEMU does).
    if backing.has_guest_memfd() {
        for &(gpa, size) in &ram {
            s.vmm_set_attributes(gpa, size, cvmem::KVM_MEMORY_ATTRIBUTE_PRIVATE);
        }
    }
    // Firmware: the 32-bit MMIO window shared (outside memslots: nothing changes).
    s.map(2 * G1, (3 * G1 / 2) / K4, 0, 0);
    // SWIOTLB: 6% of RAM clamped to [64 MiB, 1 GiB], in 256 KiB slabs, below 2 GiB.
    let swiotlb = ((4 * G1 * 6 / 100) / (256 << 10) * (256 << 10)).clamp(64 << 20, G1);
    let swiotlb_gpa = 0x7000_0000 - swiotlb / M2 * M2;
    s.map(swiotlb_gpa, swiotlb / K4, 0, 0);
    for gpa in [swiotlb_gpa, swiotlb_gpa + swiotlb - 16 * K4] {
        s.fill(gpa, 16, 0x7107_0000_0000_0001);
        s.host_check(gpa, 16);
        s.host_write(gpa, 16, 0x7107_0000_0000_0002);
        s.check(gpa, 16);
    }
    // DMA atomic pools: 128 KiB per GiB of RAM, three pools.
    for i in 0..3 {
        s.map(0x0800_0000 + i * 4 * M2, 4 * 128 * 1024 / K4, 0, 0);
    }
    // Per-vCPU shared pages (8 vCPUs, one 4K page each, 2 MiB apart).
    for cpu in 0..8 {
        s.map(0x0400_0000 + cpu * M2 + 3 * K4, 1, 0, 0);
    }
    // dma_alloc_coherent churn: single pages flipped shared and back across gfn
    // 0x7d3ff-0x7e7fe, and one hot page flipped again and again.
    let (first, span) = (0x7d3ff, 0x1400);
    for i in 0..flips {
        let page = (first + (i * 1237) % span) * K4;
        s.map(page, 1, 0, 0);
        if i % 8 == 0 {
            s.fill(page, 1, 0xd000_0000_0000_0001 + i);
            s.host_check(page, 1);
        }
        s.map(page, 1, PRIVATE, 0);
        if i % 8 == 0 {
            s.check(page, 1);
        }
    }
    let hot = 0x7d9d7 * K4;
    for i in 0..flips / 2 {
        s.map(hot, 1, 0, 0);
        if i % 50 == 0 {
            s.fill(hot, 1, 0xb000_0000_0000_0001 + i);
            s.host_check(hot, 1);
            s.map(hot, 1, PRIVATE, 0);
            s.check(hot, 1);
        } else {
            s.map(hot, 1, PRIVATE, 0);
        }
    }
    s.map(hot, 1, 0, 0);
    Plan {
        name: format!("boot ({flips} flips)"),
        slots,
        script: s,
        check_state: true,
        lines: Vec::new(),
    }
}

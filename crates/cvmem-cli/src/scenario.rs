//! The demo's scenario: a 4 GiB TDX guest booting, as published (FACTS.md) — QEMU's memslots, all
//! memory private, the firmware's MMIO window, the guest's SWIOTLB and DMA pools made shared, per-vCPU
//! and virtio pages, 4K accepts where 2M was possible, transient SWIOTLB buffers, and thousands of
//! 4K flips in a hot range.

use cvmem::{Access, Gpa, Level, SlotFlags};
use cvmem_oplog::{Layout, Op, Recovery};

const K4: u64 = 4096;
const M1: u64 = 1 << 20;
const G1: u64 = 1 << 30;
const PRIVATE: u64 = 0x10;

/// A small deterministic generator (SplitMix64), so the scenario is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `map-gpa` of `size` bytes at `gpa`, to private or shared, with the hint the guest would give.
fn map_gpa(gpa: u64, size: u64, private: bool) -> Op {
    let hint = if gpa % (2 * M1) == 0 && size % (2 * M1) == 0 {
        1
    } else {
        0
    };
    Op::MapGpa {
        gpa,
        npages: size / K4,
        flags: hint | if private { PRIVATE } else { 0 },
    }
}

/// The boot of a 4 GiB, 8-vCPU TD, `flips` 4K conversions in the hot range included. With a
/// recovery policy the page tables are modelled too (TDX layout): the guest accepts and touches its
/// memory before the conversions, so they split and zap, and touches all of it again at the end.
pub(crate) fn tdx_boot_4g(flips: usize, mmu: Option<Recovery>) -> Vec<Op> {
    let mut ops = Vec::new();
    let with_mmu = mmu.is_some();
    if let Some(recovery) = mmu {
        ops.push(Op::Mmu {
            layout: Layout::Split,
            recovery: Some(recovery),
        });
    }
    let gmem = SlotFlags {
        guest_memfd: true,
        ..SlotFlags::default()
    };
    // QEMU's memslots for a 4 GiB TD: low RAM, high RAM, and the firmware volume.
    ops.push(Op::Memslot {
        gmem: None,
        slot: 0,
        gpa: Gpa(0),
        size: 2 * G1,
        flags: gmem,
        uaddr: None,
        backing: None,
    });
    ops.push(Op::Memslot {
        gmem: None,
        slot: 1,
        gpa: Gpa(4 * G1),
        size: 2 * G1,
        flags: gmem,
        uaddr: None,
        backing: None,
    });
    ops.push(Op::Memslot {
        gmem: None,
        slot: 2,
        gpa: Gpa(0xffc0_0000),
        size: 4 * M1,
        flags: SlotFlags::default(),
        uaddr: None,
        backing: Some(Level::K4),
    });
    // QEMU makes every guest_memfd slot private at start-up.
    ops.push(Op::Attrs {
        gpa: Gpa(0),
        size: 2 * G1,
        attributes: 8,
    });
    ops.push(Op::Attrs {
        gpa: Gpa(4 * G1),
        size: 2 * G1,
        attributes: 8,
    });
    // TDVF: the 32-bit MMIO window, 1.5 GiB at 2 GiB, shared in one MapGPA.
    ops.push(map_gpa(2 * G1, 3 * G1 / 2, false));
    if with_mmu {
        // The firmware and early kernel accept at 4K where 2M was possible (published profile).
        for gfn in (0x806..0xa00).chain(0x7e800..0x7ea00) {
            ops.push(Op::Accept {
                gpa: Gpa(gfn * K4),
                level: Level::K4,
            });
        }
        // The kernel touches its memory (private) before it sets up its shared pools.
        for (gpa, size) in [(0, 2 * G1), (4 * G1, 2 * G1)] {
            ops.push(Op::FaultRange {
                gpa: cvmem::Gpa(gpa),
                size,
                access: Access::Private,
            });
        }
    }
    // SWIOTLB: 6% of RAM, clamped to [64 MiB, 1 GiB], just below the hot range.
    let swiotlb = ((4 * G1 * 6 / 100).clamp(64 * M1, G1)) & !(K4 - 1);
    ops.push(map_gpa(0x7d00_0000 - swiotlb, swiotlb, false));
    // DMA atomic pools: 128 KiB per GiB of RAM, three of them.
    for base in [0x0100_0000u64, 0x3f80_0000, 0x1_7fe0_0000] {
        ops.push(map_gpa(base, 512 * 1024, false));
    }
    // Per-vCPU shared pages (GHCB / PV data) for 8 vCPUs, in the per-cpu areas.
    for cpu in 0..8u64 {
        ops.push(map_gpa(0x0260_0000 + cpu * 0x4_0000, K4, false));
    }
    // virtio rings and buffers: dma_alloc_coherent, page granular.
    let mut rng = Rng(0x7d3f_f000);
    for _ in 0..48 {
        let pages = 1 + rng.below(8);
        let gpa = (0x0400_0000 + rng.below(0x1000_0000 / K4) * K4) & !(K4 - 1);
        ops.push(map_gpa(gpa, pages * K4, false));
    }
    if with_mmu {
        // Dynamic SWIOTLB churn once the kernel runs: transient shared buffers of 64-256 KiB in
        // high memory, used for DMA (faulted shared) and converted back to private on unmap.
        for _ in 0..256 {
            let size = (16 + rng.below(49)) * K4;
            let gpa = 4 * G1 + rng.below((2 * G1 - size) / K4) * K4;
            ops.push(map_gpa(gpa, size, false));
            ops.push(Op::FaultRange {
                gpa: cvmem::Gpa(gpa),
                size,
                access: Access::Shared,
            });
            ops.push(map_gpa(gpa, size, true));
        }
    }
    // The hot range: repeated private/shared flips across gfn 0x7d3ff-0x7e7fe; one gfn is the
    // favourite (the published trace flips one 974 times).
    let (lo, hi) = (0x7d3ffu64, 0x7e7ffu64);
    let favourite = 0x7d9d7u64;
    let mut shared = std::collections::BTreeSet::new();
    for i in 0..flips {
        let gfn = if i % 6 == 0 {
            favourite
        } else {
            lo + rng.below(hi - lo)
        };
        let now_private = shared.contains(&gfn);
        if now_private {
            shared.remove(&gfn);
        } else {
            shared.insert(gfn);
        }
        ops.push(map_gpa(gfn * K4, K4, now_private));
        if i % 500 == 0 {
            ops.push(Op::Query {
                gpa: Gpa(gfn * K4),
                access: Access::Private,
            });
        }
    }
    if with_mmu {
        // The guest touches all of its RAM: each page faulted as its own kind.
        for (gpa, size) in [(0, 2 * G1), (4 * G1, 2 * G1)] {
            ops.push(Op::FaultRange {
                gpa: cvmem::Gpa(gpa),
                size,
                access: Access::Private,
            });
            ops.push(Op::FaultRange {
                gpa: cvmem::Gpa(gpa),
                size,
                access: Access::Shared,
            });
        }
    }
    ops
}

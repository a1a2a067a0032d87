//! What a Linux TDX guest makes shared while it boots, from the published facts: the firmware's
//! 32-bit MMIO window, the SWIOTLB bounce pool (6% of RAM clamped to [64 MiB, 1 GiB]), the DMA
//! atomic pools (128 KiB per GiB, 128 KiB … 4 MiB, up to 3), per-vCPU shared pages, and virtio
//! rings from `dma_alloc_coherent`. Placement follows the kernel's allocators (memblock
//! top-down below 4 GiB, naturally aligned buddy pages) with seeded jitter.

use cvmem::PAGE_SIZE;
use cvmem_oplog::Op;

use super::builder::{Builder, Via};
use super::layout::{Layout, LOW_RAM_END};
use super::rng::Rng;
use super::Params;

const K: u64 = 1 << 10;
const M: u64 = 1 << 20;
const G: u64 = 1 << 30;

/// One shared range of a booted guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedRange {
    /// First byte.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// What it is.
    pub what: &'static str,
}

/// The shared ranges of one boot, in the order the guest converts them.
#[derive(Clone, Debug)]
pub struct LinuxGuest {
    /// The ranges.
    pub shared: Vec<SharedRange>,
}

/// The SWIOTLB default size for a confidential guest: 6% of RAM, clamped to [64 MiB, 1 GiB],
/// in 256 KiB segments.
pub fn swiotlb_bytes(ram: u64) -> u64 {
    (ram * 6 / 100).clamp(64 * M, G).next_multiple_of(256 * K)
}

/// The size of one DMA atomic pool: 128 KiB per GiB of RAM, 128 KiB … 4 MiB, allocated as one
/// naturally aligned buddy block.
pub fn atomic_pool_bytes(ram: u64) -> u64 {
    ((ram / G) * 128 * K)
        .clamp(128 * K, 4 * M)
        .next_power_of_two()
}

/// A naturally aligned block of `size` (a power of two) inside `[lo, hi)`.
fn aligned_block(rng: &mut Rng, lo: u64, hi: u64, size: u64) -> u64 {
    let first = lo.next_multiple_of(size);
    let slots = (hi.saturating_sub(first)) / size;
    first + rng.below(slots.max(1)) * size
}

impl LinuxGuest {
    /// Plans one boot of a guest with this layout.
    pub fn plan(layout: &Layout, vcpus: u32, rng: &mut Rng) -> Self {
        let ram = layout.ram_bytes();
        let low_end = layout.ram[0].end().min(LOW_RAM_END);
        let high = layout.high()[0];
        let mut shared = Vec::new();
        // memblock top-down below 4 GiB, under whatever the kernel reserved first.
        let swiotlb = swiotlb_bytes(ram);
        let top = low_end.saturating_sub(rng.below(32 * M / PAGE_SIZE) * PAGE_SIZE);
        let swiotlb_gpa = if top > swiotlb + 64 * M {
            top - swiotlb
        } else {
            high.gpa
        };
        shared.push(SharedRange {
            gpa: swiotlb_gpa,
            size: swiotlb.min(layout.ram_bytes() / 4),
            what: "swiotlb",
        });
        let pool = atomic_pool_bytes(ram);
        if low_end >= 32 * M {
            shared.push(SharedRange {
                gpa: aligned_block(rng, M, 16 * M, pool.min(M)),
                size: pool.min(M),
                what: "dma-pool-dma",
            });
        }
        shared.push(SharedRange {
            gpa: aligned_block(rng, 16 * M, swiotlb_gpa.max(32 * M), pool),
            size: pool,
            what: "dma-pool-dma32",
        });
        shared.push(SharedRange {
            gpa: aligned_block(rng, high.gpa, high.end(), pool),
            size: pool,
            what: "dma-pool-kernel",
        });
        // Per-vCPU pages in the embedded per-cpu first chunk (2M aligned, 256 KiB units).
        let unit = 256 * K;
        let chunk = (u64::from(vcpus) * unit).next_multiple_of(2 * M);
        let percpu = aligned_block(rng, high.gpa, high.end().saturating_sub(chunk), 2 * M);
        let (off_a, off_b) = (
            rng.below(unit / PAGE_SIZE / 2),
            rng.below(unit / PAGE_SIZE / 2),
        );
        for cpu in 0..u64::from(vcpus) {
            for (k, off) in [off_a, unit / PAGE_SIZE / 2 + off_b]
                .into_iter()
                .enumerate()
            {
                shared.push(SharedRange {
                    gpa: percpu + cpu * unit + off * PAGE_SIZE,
                    size: PAGE_SIZE,
                    what: if k == 0 { "ghcb" } else { "pv-data" },
                });
            }
        }
        // virtio rings: split virtqueues, naturally aligned buddy blocks anywhere in RAM.
        let queues = u64::from(vcpus).min(64);
        let devices: [(&str, u64, u64); 4] = [
            ("virtio-net", 2 * queues, 3),
            ("virtio-blk", queues, 3),
            ("virtio-console", 2, 2),
            ("virtio-rng", 1, 2),
        ];
        for (what, nq, pages) in devices {
            for _ in 0..nq {
                let size = (pages * PAGE_SIZE).next_power_of_two();
                let at = layout.ram_at(rng.below(ram / size) * size);
                shared.push(SharedRange {
                    gpa: at,
                    size: pages * PAGE_SIZE,
                    what,
                });
            }
        }
        LinuxGuest { shared }
    }
}

/// The firmware's (TDVF's) 32-bit MMIO window: 1.5 GiB at 2 GiB, made shared in one MapGPA.
pub const MMIO_WINDOW: (u64, u64) = (2 * G, 3 * G / 2);

/// The boot conversions of `guest` (after start-up), each faulted once as shared.
pub fn boot_guest(b: &mut Builder, guest: &LinuxGuest, firmware: bool) {
    if firmware {
        b.convert(MMIO_WINDOW.0, MMIO_WINDOW.1, false, Via::TdxMapGpa);
    }
    for r in &guest.shared {
        b.convert(r.gpa, r.size, false, Via::TdxMapGpa);
        b.fault(r.gpa);
    }
}

/// `boot`: start-up, one Linux boot, the final sweep.
pub fn boot(p: &Params) -> Vec<Op> {
    let mut b = Builder::new(p);
    b.startup();
    let guest = LinuxGuest::plan(&b.layout, p.vcpus, &mut b.rng);
    boot_guest(&mut b, &guest, true);
    b.sweep();
    b.finish()
}

/// `kexec`: boot, then every shared range of RAM back to private, then a second boot.
pub fn kexec(p: &Params) -> Vec<Op> {
    let mut b = Builder::new(p);
    b.startup();
    let first = LinuxGuest::plan(&b.layout, p.vcpus, &mut b.rng);
    boot_guest(&mut b, &first, true);
    for r in &first.shared {
        b.convert(r.gpa, r.size, true, Via::TdxMapGpa);
    }
    let second = LinuxGuest::plan(&b.layout, p.vcpus, &mut b.rng);
    boot_guest(&mut b, &second, false);
    b.sweep();
    b.finish()
}

/// `swiotlb-churn`: boot, four dynamic SWIOTLB pools of 1-4 MiB, then `flips` transient
/// bounce buffers of at most 256 KiB (taken from private memory) made shared on map and
/// private again on unmap, up to 16 in flight.
pub fn swiotlb_churn(p: &Params) -> Vec<Op> {
    let mut b = Builder::new(p);
    b.startup();
    let guest = LinuxGuest::plan(&b.layout, p.vcpus, &mut b.rng);
    boot_guest(&mut b, &guest, true);
    for _ in 0..4 {
        let size = M << b.rng.below(3);
        if let Some(gpa) = b.random_private_range(size, size) {
            b.convert(gpa, size, false, Via::TdxMapGpa);
        }
    }
    let mut in_flight: std::collections::VecDeque<(u64, u64)> = Default::default();
    let mut conversions = 0;
    while conversions < p.flips {
        if in_flight.len() == 16 || (!in_flight.is_empty() && b.rng.chance(1, 2)) {
            let (gpa, size) = in_flight.pop_front().expect("non-empty");
            b.convert(gpa, size, true, Via::TdxMapGpa);
            b.fault(gpa);
        } else {
            let size = b.rng.range(1, 65) * PAGE_SIZE;
            let Some(gpa) = b.random_private_range(size, PAGE_SIZE) else {
                conversions += 1;
                continue;
            };
            b.convert(gpa, size, false, Via::TdxMapGpa);
            b.fault(gpa);
            in_flight.push_back((gpa, size));
        }
        conversions += 1;
    }
    while let Some((gpa, size)) = in_flight.pop_front() {
        b.convert(gpa, size, true, Via::TdxMapGpa);
    }
    b.sweep();
    b.finish()
}

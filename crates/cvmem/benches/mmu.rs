//! The TDP MMU model's costs: faults per second for a 64 GiB guest faulted in at 4K, 2M and 1G;
//! conversion cost with and without splits, and under eager recovery against on-fault; and
//! page-table memory and hugepage coverage against the optimum for a fragmenting workload under
//! each recovery policy (printed).
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, BatchSize, Criterion, Throughput};
use cvmem::mmu::{AcceptOutcome, Layout, Recovery, Vm};
use cvmem::{
    Access, Gfn, Gpa, Level, MemoryRegion, SlotFlags, KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE,
};

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
const GUEST: u64 = 64 * G1;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn gmem() -> SlotFlags {
    SlotFlags {
        guest_memfd: true,
        ..Default::default()
    }
}

/// A 64 GiB TDX guest, all private, backed at most at `backing`, nothing mapped yet.
fn guest(layout: Layout, recovery: Recovery, backing: Level) -> Vm {
    let mut vm = Vm::new(layout, recovery);
    vm.set_user_memory_region(&MemoryRegion {
        gmem: None,
        slot: 0,
        gpa: Gpa(0),
        size: GUEST,
        flags: gmem(),
        uaddr: None,
        backing: Some(backing),
    })
    .unwrap();
    vm.set_memory_attributes(Gpa(0), GUEST, PRIVATE).unwrap();
    vm
}

fn faults(c: &mut Criterion) {
    let mut g = c.benchmark_group("mmu/fault-64G");
    g.sample_size(10);
    for level in [Level::K4, Level::M2, Level::G1] {
        let n = GUEST / level.size();
        g.throughput(Throughput::Elements(n));
        g.bench_function(level.name(), |b| {
            b.iter_batched(
                || guest(Layout::SPLIT, Recovery::OnFault, level),
                |mut vm| {
                    for gpa in (0..GUEST).step_by(level.size() as usize) {
                        black_box(vm.fault(Gpa(gpa), Access::Private).unwrap());
                    }
                    vm
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn conversions(c: &mut Criterion) {
    let mut g = c.benchmark_group("mmu/convert-4K");
    // A 64 GiB guest mapped by 64 1G leaves; one 4K page in the middle becomes shared.
    let mapped = |layout| {
        let mut vm = guest(layout, Recovery::OnFault, Level::G1);
        vm.fault_range(Gpa(0), GUEST, Access::Private).unwrap();
        vm
    };
    let split = mapped(Layout::SPLIT);
    let unified = mapped(Layout::Unified);
    let mut fragmented = mapped(Layout::SPLIT);
    fragmented
        .set_memory_attributes(Gpa(32 * G1 + 4 * M2 + 8 * K4), K4, 0)
        .unwrap();
    for (name, base, gpa) in [
        (
            "split-1G-leaf (2 splits)",
            &split,
            32 * G1 + 4 * M2 + 7 * K4,
        ),
        (
            "unified-1G-leaf (zap, no split)",
            &unified,
            32 * G1 + 4 * M2 + 7 * K4,
        ),
        (
            "split-4K-leaf (no split)",
            &fragmented,
            32 * G1 + 4 * M2 + 7 * K4,
        ),
        (
            "split-unmapped (no leaf)",
            &fragmented,
            32 * G1 + 4 * M2 + 8 * K4,
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || base.clone(),
                |mut vm| {
                    // Shared then private again: the second half finds no old-kind leaf.
                    let attrs = if vm.tracker().is_private(Gfn(gpa / K4)) {
                        0
                    } else {
                        PRIVATE
                    };
                    black_box(vm.set_memory_attributes(Gpa(gpa), K4, attrs).unwrap());
                    vm
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// The cost of eager recovery: one 4K page of a 64 GiB TDX guest becomes shared, under eager
/// recovery against on-fault. Guests mapped whole at 2M and at 1G, and one whose 1G page around
/// the conversion is mapped at 4K because firmware accepted every 2M page of it at 4K (one-way
/// GUEST_INHIBIT): 512 full, never collapsible page tables next to the changing page.
///
/// Only the conversion is timed (one `Instant` pair each, ~50 ns of the figure); between two,
/// untimed, the page turns private again and the guest touches it, which restores the mapping
/// (the huge leaf replaces the split tables, which go to the free list). Successive conversions
/// visit different 1G pages (2M pages in the 4K-accepted one).
fn eager_recovery(c: &mut Criterion) {
    let mut g = c.benchmark_group("mmu/convert-4K-recovery");
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(2));
    let mapped = |recovery, backing| {
        let mut vm = guest(Layout::SPLIT, recovery, backing);
        vm.fault_range(Gpa(0), GUEST, Access::Private).unwrap();
        vm
    };
    let inhibited = |recovery| {
        let mut vm = mapped(recovery, Level::G1);
        for a in (32 * G1..33 * G1).step_by(M2 as usize) {
            assert_eq!(
                vm.accept(Gpa(a), Level::K4).unwrap(),
                AcceptOutcome::Accepted
            );
        }
        vm.fault_range(Gpa(32 * G1), G1, Access::Private).unwrap();
        vm
    };
    // The i-th conversion's page: in the i-th 1G page, or in the i-th 2M page of 1G page 32.
    let in_1g_pages: fn(u64) -> u64 = |i| (i % 64) * G1 + 4 * M2 + 7 * K4;
    let in_2m_pages: fn(u64) -> u64 = |i| 32 * G1 + (i % 512) * M2 + 7 * K4;
    let round_trip = |vm: &mut Vm, gpa: u64| {
        let t = Instant::now();
        black_box(vm.set_memory_attributes(Gpa(gpa), K4, 0).unwrap());
        let took = t.elapsed();
        vm.set_memory_attributes(Gpa(gpa), K4, PRIVATE).unwrap();
        vm.fault(Gpa(gpa), Access::Private).unwrap();
        took
    };
    for recovery in [Recovery::OnFault, Recovery::Eager] {
        let cases = [
            ("mapped-2M", mapped(recovery, Level::M2), in_1g_pages),
            ("mapped-1G", mapped(recovery, Level::G1), in_1g_pages),
            ("4K-accepted-1G", inhibited(recovery), in_2m_pages),
        ];
        for (name, mut vm, place) in cases {
            let before = (vm.stats().leaves(), vm.stats().table_pages);
            round_trip(&mut vm, place(0));
            assert_eq!((vm.stats().leaves(), vm.stats().table_pages), before);
            g.bench_function(format!("{}/{name}", recovery.name()), |b| {
                b.iter_custom(|iters| (0..iters).map(|i| round_trip(&mut vm, place(i))).sum())
            });
        }
    }
    g.finish();
}

/// Boot, bounce pool, page-granular DMA buffers, churn and a cancelled migration (dirty log
/// on then off on the shared device slot); then the guest touches everything.
fn fragmenting_workload(recovery: Recovery) -> Vm {
    let mut vm = guest(Layout::SPLIT, recovery, Level::G1);
    vm.set_user_memory_region(&MemoryRegion {
        gmem: None,
        slot: 1,
        gpa: Gpa(128 * G1),
        size: 4 * G1,
        flags: SlotFlags::default(),
        uaddr: None,
        backing: None,
    })
    .unwrap();
    let touch_all = |vm: &mut Vm| {
        vm.fault_range(Gpa(0), GUEST, Access::Private).unwrap();
        vm.fault_range(Gpa(0), GUEST, Access::Shared).unwrap();
        vm.fault_range(Gpa(128 * G1), 4 * G1, Access::Shared)
            .unwrap();
    };
    touch_all(&mut vm);
    vm.set_memory_attributes(Gpa(3 * G1), G1, 0).unwrap(); // SWIOTLB, 1 GiB
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..1024 {
        let gpa = (rng.next() % GUEST) & !(K4 - 1);
        vm.set_memory_attributes(Gpa(gpa), K4, 0).unwrap(); // dma_alloc_coherent
    }
    touch_all(&mut vm);
    for _ in 0..4096 {
        // Transient conversions, back to private; the guest touches the page again.
        let gpa = (rng.next() % GUEST) & !(K4 - 1);
        if vm.tracker().is_private(Gfn(gpa / K4)) {
            vm.set_memory_attributes(Gpa(gpa), K4, 0).unwrap();
            vm.fault(Gpa(gpa), Access::Shared).unwrap();
            vm.set_memory_attributes(Gpa(gpa), K4, PRIVATE).unwrap();
            vm.fault(Gpa(gpa), Access::Private).unwrap();
        }
    }
    let slot1 = |dirty_log| MemoryRegion {
        gmem: None,
        slot: 1,
        gpa: Gpa(128 * G1),
        size: 4 * G1,
        flags: SlotFlags {
            dirty_log,
            ..Default::default()
        },
        uaddr: None,
        backing: None,
    };
    vm.set_user_memory_region(&slot1(true)).unwrap();
    vm.fault_range(Gpa(128 * G1), 4 * G1, Access::Shared)
        .unwrap();
    vm.set_user_memory_region(&slot1(false)).unwrap();
    touch_all(&mut vm);
    vm
}

fn report_memory() {
    println!("page-table memory of a 64 GiB guest mapped whole (split layout, both roots):");
    for level in [Level::K4, Level::M2, Level::G1] {
        let mut vm = guest(Layout::SPLIT, Recovery::OnFault, level);
        vm.fault_range(Gpa(0), GUEST, Access::Private).unwrap();
        let c = vm.coverage();
        println!(
            "  backing {:>2}: {:>6} table pages = {:>9} bytes (optimum {} pages), {} leaves",
            level.name(),
            c.table_pages,
            c.table_pages * K4,
            c.optimum_table_pages,
            vm.stats().leaves().total()
        );
    }
    println!("fragmenting workload (64 GiB TDX guest + 4 GiB shared device slot):");
    println!("  policy    4K leaves  2M leaves  1G leaves  coverage  table pages  optimum  collapses  replaced");
    for recovery in [Recovery::Off, Recovery::OnFault, Recovery::Eager] {
        let vm = fragmenting_workload(recovery);
        let s = vm.stats();
        let c = vm.coverage();
        let l = s.leaves();
        println!(
            "  {:<8} {:>10} {:>10} {:>10} {:>9.4} {:>12} {:>8} {:>10} {:>9}",
            recovery.name(),
            l.k4,
            l.m2,
            l.g1,
            c.ratio(),
            c.table_pages,
            c.optimum_table_pages,
            s.collapses,
            s.replaced
        );
    }
}

criterion_group!(benches, faults, conversions, eager_recovery);

fn main() {
    report_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}

//! Unit tests of the MMU model: the spec's example, each split / zap / collapse case, accept,
//! memslot changes, paging depth, coverage, and the two upstream regressions.

extern crate std;
use super::*;
use crate::Gfn;
use crate::Gpa;
use crate::{Access, Level, MaxLevel, MemoryRegion, SlotFlags, KVM_MEMORY_ATTRIBUTE_PRIVATE};

const PRIVATE: u64 = KVM_MEMORY_ATTRIBUTE_PRIVATE;
const K4: u64 = 4 << 10;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;

fn region(slot: u32, gpa: u64, size: u64, flags: SlotFlags) -> MemoryRegion {
    MemoryRegion {
        slot,
        gpa: crate::Gpa(gpa),
        size,
        flags,
        ..Default::default()
    }
}

fn gmem() -> SlotFlags {
    SlotFlags {
        guest_memfd: true,
        ..Default::default()
    }
}

fn dirty(on: bool) -> SlotFlags {
    SlotFlags {
        dirty_log: on,
        ..Default::default()
    }
}

/// A VM with one guest_memfd slot `[0, size)`, all private.
fn private_vm(layout: Layout, recovery: Recovery, size: u64) -> Vm {
    let mut vm = Vm::new(layout, recovery);
    vm.set_user_memory_region(&region(0, 0, size, gmem()))
        .unwrap();
    vm.set_memory_attributes(Gpa(0), size, PRIVATE).unwrap();
    ok(&vm);
    vm
}

fn ok(vm: &Vm) {
    if let Err(e) = vm.check_invariants() {
        panic!("invariant broken: {e}");
    }
}

fn mapped(level: Level) -> FaultOutcome {
    FaultOutcome::Mapped { level }
}

fn fault(vm: &mut Vm, gpa: u64, access: Access) -> FaultOutcome {
    let out = vm.fault(Gpa(gpa), access).unwrap();
    ok(vm);
    out
}

fn convert(vm: &mut Vm, gpa: u64, size: u64, attrs: u64) {
    vm.set_memory_attributes(Gpa(gpa), size, attrs).unwrap();
    ok(vm);
}

/// A checked request to make `[gpa, gpa + size)` have `attrs`.
fn req(vm: &Vm, gpa: u64, size: u64, attrs: u64) -> crate::AttrRequest {
    vm.tracker()
        .validate_attributes(crate::Gpa(gpa), size, attrs)
        .unwrap()
}

fn counts(k4: u64, m2: u64, g1: u64) -> LevelCounts {
    LevelCounts { k4, m2, g1 }
}

#[test]
fn spec_example_mmu_oplog() {
    // the spec example `mmu.oplog` (crates/cvmem-cli/tests/fixtures), operation by operation.
    let mut vm = Vm::new(Layout::SPLIT, Recovery::Eager);
    vm.set_user_memory_region(&region(0, 0, G1, gmem()))
        .unwrap();
    convert(&mut vm, 0, G1, PRIVATE);
    assert_eq!(fault(&mut vm, 0x1000, Access::Private), mapped(Level::G1));
    convert(&mut vm, 0x200000, K4, 0);
    assert_eq!(fault(&mut vm, 0x200000, Access::Shared), mapped(Level::K4));
    assert_eq!(
        fault(&mut vm, 0x201000, Access::Private),
        FaultOutcome::Spurious
    );
    convert(&mut vm, 0x200000, K4, PRIVATE);
    assert_eq!(fault(&mut vm, 0x200000, Access::Private), mapped(Level::G1));
    assert_eq!(
        vm.accept(Gpa(0x400000), Level::K4).unwrap(),
        AcceptOutcome::Accepted
    );
    ok(&vm);
    let q = |vm: &Vm, gpa| vm.tracker().max_mapping_level(gpa, Access::Private);
    assert_eq!(q(&vm, Gpa(0)), MaxLevel::Level(Level::M2));
    assert_eq!(q(&vm, Gpa(0x400000)), MaxLevel::Level(Level::K4));
    let r = vm.fault_range(Gpa(0), 4 << 20, Access::Private).unwrap();
    assert_eq!(
        r,
        FaultRangeCounts {
            spurious: 1024,
            ..Default::default()
        }
    );
    let s = vm.stats();
    assert_eq!(s.private, counts(512, 511, 0));
    assert_eq!(s.shared, counts(0, 0, 0));
    assert_eq!(s.table_pages, 5);
    assert_eq!((s.splits, s.zaps, s.collapses), (4, 2, 0));
    assert_eq!(s.table_pages_by_root, [4, 1]);
    assert_eq!(s.paging_levels, 4);
}

#[test]
fn table_pages_count_roots_and_every_level() {
    let mut vm = private_vm(Layout::SPLIT, Recovery::OnFault, 4 * G1);
    assert_eq!(vm.stats().table_pages, 2, "two empty roots");
    vm.set_memory_attributes(Gpa(0), M2, 0).unwrap();
    vm.set_memory_attributes(Gpa(0x1000), K4, PRIVATE).unwrap(); // 2M page 0 mixed
    assert_eq!(fault(&mut vm, 0x1000, Access::Private), mapped(Level::K4));
    // private root + PDPT + PD + PT, and the empty shared root.
    assert_eq!(vm.stats().table_pages, 5);
    assert_eq!(fault(&mut vm, 0, Access::Shared), mapped(Level::K4));
    assert_eq!(vm.stats().table_pages, 8);
    assert_eq!(fault(&mut vm, 2 * G1, Access::Private), mapped(Level::G1));
    assert_eq!(
        vm.stats().table_pages,
        8,
        "a 1G leaf lives in the existing PDPT"
    );
    let mut unified = private_vm(Layout::Unified, Recovery::OnFault, 4 * G1);
    assert_eq!(unified.stats().table_pages, 1);
    unified.set_memory_attributes(Gpa(0), K4, 0).unwrap();
    assert_eq!(fault(&mut unified, 0, Access::Shared), mapped(Level::K4));
    assert_eq!(fault(&mut unified, K4, Access::Private), mapped(Level::K4));
    assert_eq!(unified.stats().table_pages, 4, "one tree for both kinds");
}

/// A split-layout VM with a 1G private leaf over [0, 1G).
fn one_gig_private(recovery: Recovery) -> Vm {
    let mut vm = private_vm(Layout::SPLIT, recovery, 2 * G1);
    assert_eq!(fault(&mut vm, 0, Access::Private), mapped(Level::G1));
    vm
}

#[test]
fn split_when_both_edges_lie_in_one_2m_page() {
    let mut vm = one_gig_private(Recovery::OnFault);
    convert(&mut vm, 0x40_3000, 3 * K4, 0);
    let s = vm.stats();
    assert_eq!((s.splits, s.zaps), (2, 3));
    assert_eq!(s.private, counts(509, 511, 0));
    assert_eq!(s.table_pages, 5);
}

#[test]
fn split_once_when_the_range_is_2m_aligned() {
    let mut vm = one_gig_private(Recovery::OnFault);
    convert(&mut vm, 0x60_0000, 2 * M2, 0);
    let s = vm.stats();
    assert_eq!((s.splits, s.zaps), (1, 2));
    assert_eq!(s.private, counts(0, 510, 0));
    assert_eq!(s.table_pages, 4);
}

#[test]
fn split_head_and_tail_2m_pages_of_an_unaligned_range() {
    let mut vm = one_gig_private(Recovery::OnFault);
    // [2M - 8K, 4M + 4K): 2 pages of the head 2M page, the 2M page at 2M, 1 page of the tail.
    convert(&mut vm, M2 - 2 * K4, M2 + 2 * K4 + M2 + K4 - M2, 0);
    let s = vm.stats();
    assert_eq!(s.splits, 3, "1G, then the head and the tail 2M pages");
    assert_eq!(s.zaps, 2 + 1 + 1);
    assert_eq!(s.private, counts(510 + 511, 509, 0));
    assert_eq!(s.table_pages, 1 + 1 + 1 + 2 + 1);
}

#[test]
fn a_leaf_inside_the_range_is_zapped_without_split() {
    let mut vm = one_gig_private(Recovery::OnFault);
    convert(&mut vm, 0, 2 * G1, 0);
    let s = vm.stats();
    assert_eq!((s.splits, s.zaps), (0, 1));
    assert_eq!(s.private.total(), 0);
    assert_eq!(s.table_pages, 2, "the emptied PDPT was freed");
}

#[test]
fn a_straddling_shared_leaf_is_zapped_whole_in_the_split_layout() {
    let mut vm = Vm::new(Layout::SPLIT, Recovery::OnFault);
    vm.set_user_memory_region(&region(0, 0, 2 * G1, gmem()))
        .unwrap();
    assert_eq!(fault(&mut vm, 0, Access::Shared), mapped(Level::G1));
    convert(&mut vm, 0x1000, K4, PRIVATE);
    let s = vm.stats();
    assert_eq!((s.splits, s.zaps), (0, 1));
    assert_eq!(s.shared.total(), 0);
    assert_eq!(s.table_pages, 2);
    // Refaulting the shared part maps 2M pages and 4K pages around the private one.
    assert_eq!(fault(&mut vm, 0, Access::Shared), mapped(Level::K4));
    assert_eq!(fault(&mut vm, M2, Access::Shared), mapped(Level::M2));
}

#[test]
fn a_straddling_private_leaf_is_zapped_whole_in_the_unified_layout() {
    let mut vm = private_vm(Layout::Unified, Recovery::OnFault, 2 * G1);
    assert_eq!(fault(&mut vm, 0, Access::Private), mapped(Level::G1));
    assert_eq!(fault(&mut vm, G1, Access::Private), mapped(Level::G1));
    convert(&mut vm, 0x1000, K4, 0);
    let s = vm.stats();
    assert_eq!((s.splits, s.zaps), (0, 1));
    assert_eq!(s.private, counts(0, 0, 1), "the other 1G leaf is untouched");
    assert_eq!(fault(&mut vm, 0x1000, Access::Shared), mapped(Level::K4));
    assert_eq!(fault(&mut vm, 0, Access::Private), mapped(Level::K4));
    assert_eq!(fault(&mut vm, M2, Access::Private), mapped(Level::M2));
}

#[test]
fn leaves_of_the_new_kind_are_untouched() {
    for layout in [Layout::SPLIT, Layout::Unified] {
        let mut vm = one_gig_private_in(layout);
        convert(&mut vm, 0, 2 * G1, PRIVATE); // already private: early exit
        convert(&mut vm, G1, G1, 0);
        convert(&mut vm, 0, 2 * G1, PRIVATE); // [0, 1G) stays mapped
        let s = vm.stats();
        assert_eq!(s.private, counts(0, 0, 1), "{layout}");
        assert_eq!((s.splits, s.zaps), (0, 0));
    }
}

fn one_gig_private_in(layout: Layout) -> Vm {
    let mut vm = private_vm(layout, Recovery::OnFault, 2 * G1);
    assert_eq!(fault(&mut vm, 0, Access::Private), mapped(Level::G1));
    vm
}

#[test]
fn on_fault_replaces_small_leaves_with_a_huge_leaf() {
    let mut vm = one_gig_private(Recovery::OnFault);
    convert(&mut vm, 0x40_0000, K4, 0);
    convert(&mut vm, 0x40_0000, K4, PRIVATE);
    assert_eq!(vm.stats().table_pages, 5);
    assert_eq!(
        fault(&mut vm, 0x40_0000, Access::Private),
        mapped(Level::G1)
    );
    let s = vm.stats();
    assert_eq!(s.replaced, 511 + 511);
    assert_eq!(s.private, counts(0, 0, 1));
    assert_eq!(s.table_pages, 3, "PD and PT freed");
}

#[test]
fn off_never_makes_leaves_larger() {
    let mut vm = one_gig_private(Recovery::Off);
    convert(&mut vm, 0x40_0000, K4, 0);
    convert(&mut vm, 0x40_0000, K4, PRIVATE);
    // The 1G and 2M ranges around the hole still hold leaves: only 4K.
    assert_eq!(
        fault(&mut vm, 0x40_0000, Access::Private),
        mapped(Level::K4)
    );
    let s = vm.stats();
    assert_eq!((s.replaced, s.collapses), (0, 0));
    assert_eq!(s.private, counts(512, 511, 0));
    // An empty 1G range elsewhere is mapped at 1G.
    assert_eq!(fault(&mut vm, G1, Access::Private), mapped(Level::G1));
}

#[test]
fn off_lowers_to_the_largest_empty_range() {
    let mut vm = private_vm(Layout::SPLIT, Recovery::Off, G1);
    convert(&mut vm, 0, K4, 0);
    assert_eq!(fault(&mut vm, K4, Access::Private), mapped(Level::K4));
    convert(&mut vm, 0, K4, PRIVATE); // 1G uniform again
    assert_eq!(fault(&mut vm, 0, Access::Private), mapped(Level::K4));
    assert_eq!(fault(&mut vm, M2, Access::Private), mapped(Level::M2));
}

#[test]
fn dirty_log_splits_every_huge_leaf_and_eager_collapses_after() {
    for recovery in [Recovery::OnFault, Recovery::Eager] {
        let mut vm = Vm::new(Layout::SPLIT, recovery);
        vm.set_user_memory_region(&region(3, G1, G1 + 4 * M2, dirty(false)))
            .unwrap();
        let r = vm
            .fault_range(Gpa(G1), G1 + 4 * M2, Access::Shared)
            .unwrap();
        assert_eq!(r.mapped, counts(0, 4, 1));
        vm.set_user_memory_region(&region(3, G1, G1 + 4 * M2, dirty(true)))
            .unwrap();
        ok(&vm);
        let s = vm.stats();
        assert_eq!(s.splits, 1 + 512 + 4);
        assert_eq!(s.shared, counts(516 * 512, 0, 0));
        assert_eq!(s.table_pages, 2 + 1 + 2 + 516);
        assert_eq!(fault(&mut vm, G1, Access::Shared), FaultOutcome::Spurious);
        vm.set_user_memory_region(&region(3, G1, G1 + 4 * M2, dirty(false)))
            .unwrap();
        ok(&vm);
        let s = vm.stats();
        if recovery == Recovery::Eager {
            assert_eq!(s.collapses, 516 + 1);
            assert_eq!(s.shared, counts(0, 4, 1));
            assert_eq!(s.table_pages, 2 + 1 + 1, "the 1G region's PD is gone");
            assert!(vm.collapsible().is_empty());
        } else {
            assert_eq!(s.collapses, 0);
            let c = vm.collapsible();
            assert_eq!(c.iter().filter(|c| c.complete).count(), 516);
            assert!(c.iter().any(|c| c.level == Level::G1 && !c.complete));
        }
    }
}

#[test]
fn delete_and_move_zap_the_old_range() {
    let mut vm = Vm::new(Layout::Unified, Recovery::OnFault);
    vm.set_user_memory_region(&region(1, 0, 8 * M2, dirty(false)))
        .unwrap();
    vm.set_user_memory_region(&region(2, G1, 3 * M2, dirty(false)))
        .unwrap();
    vm.fault_range(Gpa(0), 8 * M2, Access::Shared).unwrap();
    vm.fault_range(Gpa(G1), 3 * M2, Access::Shared).unwrap();
    ok(&vm);
    assert_eq!(vm.stats().shared, counts(0, 11, 0));
    vm.set_user_memory_region(&region(1, 2 * G1, 8 * M2, dirty(false)))
        .unwrap(); // move
    ok(&vm);
    assert_eq!(vm.stats().zaps, 8);
    assert_eq!(
        vm.fault(Gpa(0), Access::Shared).unwrap(),
        FaultOutcome::NoSlot
    );
    vm.set_user_memory_region(&region(2, G1, 0, dirty(false)))
        .unwrap(); // delete
    ok(&vm);
    let s = vm.stats();
    assert_eq!((s.zaps, s.shared.total(), s.table_pages), (11, 0, 1));
}

#[test]
fn paging_grows_to_five_levels_above_2_pow_48_and_back() {
    let mut vm = Vm::new(Layout::SPLIT, Recovery::OnFault);
    vm.set_user_memory_region(&region(0, 0, G1, dirty(false)))
        .unwrap();
    assert_eq!(fault(&mut vm, 0, Access::Shared), mapped(Level::G1));
    assert_eq!(vm.stats().table_pages, 3);
    vm.set_user_memory_region(&region(1, 1 << 48, G1, dirty(false)))
        .unwrap();
    ok(&vm);
    assert_eq!(vm.paging_levels(), 5);
    // A new top level above the shared root (which holds a leaf); the empty private root is
    // relabelled.
    assert_eq!(vm.stats().table_pages, 4);
    assert_eq!(fault(&mut vm, 1 << 48, Access::Shared), mapped(Level::G1));
    assert_eq!(vm.stats().table_pages, 6);
    vm.set_user_memory_region(&region(1, 1 << 48, 0, dirty(false)))
        .unwrap();
    ok(&vm);
    assert_eq!(vm.paging_levels(), 4);
    assert_eq!(vm.stats().table_pages, 3);
    assert_eq!(fault(&mut vm, 0, Access::Shared), FaultOutcome::Spurious);
    // A slot beyond 5-level reach still maps (model-only sixth level).
    vm.set_user_memory_region(&region(2, 1 << 60, G1, dirty(false)))
        .unwrap();
    assert_eq!(vm.paging_levels(), 6);
    assert_eq!(fault(&mut vm, 1 << 60, Access::Shared), mapped(Level::G1));
    ok(&vm);
    let bit51 = Vm::new(
        Layout::Split {
            shared_bit: SharedBit::Bit51,
        },
        Recovery::OnFault,
    );
    assert_eq!(bit51.paging_levels(), 5);
    assert_eq!(
        bit51.decode_tdx_gpa(Gpa((1 << 51) | 0x1000)),
        Some((Gpa(0x1000), Access::Shared))
    );
}

#[test]
fn fault_range_counts_every_page_once() {
    let mut vm = Vm::new(Layout::SPLIT, Recovery::OnFault);
    vm.set_user_memory_region(&region(0, 0, 4 * M2, gmem()))
        .unwrap();
    vm.set_user_memory_region(&region(1, 6 * M2, M2, dirty(false)))
        .unwrap();
    vm.set_memory_attributes(Gpa(0), 3 * M2 + K4, PRIVATE)
        .unwrap();
    let r = vm.fault_range(Gpa(0), 8 * M2, Access::Private).unwrap();
    assert_eq!(r.mapped, counts(1, 3, 0));
    assert_eq!(r.spurious, 3 * 511);
    assert_eq!(r.memory_fault, 511 + 512);
    assert_eq!(r.no_slot, 3 * 512);
    assert_eq!(
        r.mapped.total() + r.spurious + r.memory_fault + r.no_slot,
        8 * 512
    );
    ok(&vm);
    assert!(vm.fault_range(Gpa(0x1001), 4096, Access::Private).is_err());
}

#[test]
fn accept_rules() {
    let mut unified = private_vm(Layout::Unified, Recovery::OnFault, G1);
    assert_eq!(
        unified.accept(Gpa(0), Level::K4).unwrap_err().errno(),
        crate::Errno::EINVAL
    );
    let mut vm = private_vm(Layout::SPLIT, Recovery::OnFault, G1);
    assert!(vm.accept(Gpa(0x1000), Level::M2).is_err(), "unaligned");
    assert_eq!(
        vm.accept(Gpa(G1), Level::K4).unwrap(),
        AcceptOutcome::NoSlot
    );
    vm.set_user_memory_region(&region(1, 2 * G1, M2, dirty(false)))
        .unwrap();
    vm.set_memory_attributes(Gpa(2 * G1), M2, PRIVATE).unwrap();
    assert!(matches!(
        vm.accept(Gpa(2 * G1), Level::K4).unwrap(),
        AcceptOutcome::MemoryFault(_)
    ));
    vm.set_memory_attributes(Gpa(0x10_0000), K4, 0).unwrap();
    assert!(matches!(
        vm.accept(Gpa(0x10_0000), Level::K4).unwrap(),
        AcceptOutcome::MemoryFault(_)
    ));
    // Unmapped page accepted at 2M: faulted in at 2M although 1G was allowed before.
    assert_eq!(
        vm.accept(Gpa(M2 * 8), Level::M2).unwrap(),
        AcceptOutcome::Accepted
    );
    ok(&vm);
    assert_eq!(
        vm.lookup(Gpa(M2 * 8), Access::Private).unwrap().level,
        Level::M2
    );
    // 4K accept in another 2M page: inhibited at 2M, mapped at 4K.
    assert_eq!(
        vm.accept(Gpa(M2 * 9), Level::K4).unwrap(),
        AcceptOutcome::Accepted
    );
    ok(&vm);
    assert_eq!(
        vm.lookup(Gpa(M2 * 9), Access::Private).unwrap().level,
        Level::K4
    );
    assert!(vm
        .tracker()
        .is_guest_inhibited(Gfn((M2 * 9) >> 12), Level::M2));
    assert_eq!(
        fault(&mut vm, M2 * 9 + K4, Access::Private),
        mapped(Level::K4)
    );
    // Accepting an already mapped page at 1G changes nothing.
    assert_eq!(fault(&mut vm, 0, Access::Private), mapped(Level::K4));
    let before = vm.stats();
    assert_eq!(
        vm.accept(Gpa(0), Level::G1).unwrap(),
        AcceptOutcome::Accepted
    );
    assert_eq!(vm.stats(), before);
}

#[test]
fn accept_splits_only_down_to_the_accepted_level() {
    let mut vm = one_gig_private(Recovery::OnFault);
    assert_eq!(
        vm.accept(Gpa(M2), Level::M2).unwrap(),
        AcceptOutcome::Accepted
    );
    ok(&vm);
    let s = vm.stats();
    assert_eq!((s.splits, s.private), (1, counts(0, 512, 0)));
}

#[test]
fn regression_2024_small_slot_head_equals_tail() {
    // Slots smaller than a large page, where the head and tail large pages are the same one.
    for layout in [Layout::SPLIT, Layout::Unified] {
        let mut vm = Vm::new(layout, Recovery::Eager);
        let base = G1 + M2 + 3 * K4;
        vm.set_user_memory_region(&region(0, base, 16 * K4, gmem()))
            .unwrap();
        vm.set_user_memory_region(&region(1, 3 * G1 + 5 * M2, 3 * M2, gmem()))
            .unwrap();
        convert(&mut vm, base + K4, 4 * K4, PRIVATE);
        convert(&mut vm, G1, G1, PRIVATE);
        convert(&mut vm, base + 2 * K4, K4, 0);
        convert(&mut vm, 3 * G1 + 5 * M2 + K4, K4, PRIVATE);
        let r = vm.fault_range(Gpa(base), 16 * K4, Access::Private).unwrap();
        assert_eq!(r.mapped, counts(15, 0, 0), "{layout}");
        assert_eq!(r.memory_fault, 1);
        let r = vm.fault_range(Gpa(3 * G1), G1, Access::Shared).unwrap();
        assert_eq!(r.mapped, counts(511, 2, 0), "{layout}");
        ok(&vm);
        assert_eq!(vm.tracker().mixed_count(1, Level::M2), 1);
        assert_eq!(vm.tracker().mixed_count(1, Level::G1), 0);
    }
}

#[test]
fn regression_2025_no_hugepage_straddles_a_changing_range() {
    for layout in [Layout::SPLIT, Layout::Unified] {
        let mut vm = private_vm(layout, Recovery::OnFault, 2 * G1);
        let c = vm.begin_conversion(req(&vm, G1 + M2 + K4, K4, 0)).unwrap();
        ok(&vm);
        // Unchanged gfns in the head's 2M and 1G pages: a hugepage there would straddle.
        for gpa in [G1 + M2, G1 + M2 + 2 * K4, G1, 2 * G1 - K4] {
            assert_eq!(
                vm.fault(Gpa(gpa), Access::Private).unwrap(),
                FaultOutcome::Retry,
                "{layout} {gpa:#x}"
            );
        }
        assert_eq!(
            vm.fault(Gpa(0), Access::Private).unwrap(),
            mapped(Level::G1),
            "outside the window"
        );
        let r = vm
            .fault_range(Gpa(G1 - M2), 2 * M2, Access::Private)
            .unwrap();
        assert_eq!((r.spurious, r.retry), (512, 512));
        assert!(
            vm.tracker().max_mapping_level(Gpa(G1), Access::Private) == MaxLevel::Level(Level::G1)
        );
        assert!(vm.end_conversion(c).unwrap());
        ok(&vm);
        assert_eq!(fault(&mut vm, G1, Access::Private), mapped(Level::M2));
        assert_eq!(fault(&mut vm, G1 + M2, Access::Private), mapped(Level::K4));
        assert_eq!(
            fault(&mut vm, G1 + M2 + K4, Access::Shared),
            mapped(Level::K4)
        );
        assert_eq!(vm.stats().retries, 4 + 512);
    }
}

#[test]
fn a_begun_conversion_splits_an_existing_huge_leaf_at_once() {
    let mut vm = one_gig_private(Recovery::OnFault);
    let c = vm.begin_conversion(req(&vm, M2, K4, 0)).unwrap();
    assert!(c.changes());
    ok(&vm);
    let s = vm.stats();
    assert_eq!((s.splits, s.zaps), (2, 1));
    // The pages outside the range stay mapped during the window.
    assert!(vm.lookup(Gpa(0), Access::Private).is_some());
    assert_eq!(
        vm.fault(Gpa(0), Access::Private).unwrap(),
        FaultOutcome::Retry
    );
    assert!(vm.end_conversion(c).unwrap());
    ok(&vm);
    let noop = vm.begin_conversion(req(&vm, M2, K4, 0)).unwrap();
    assert!(!noop.changes());
    assert!(!vm.end_conversion(noop).unwrap());
}

#[test]
fn eager_reaches_the_optimum_at_quiescence() {
    for layout in [Layout::SPLIT, Layout::Unified] {
        let mut vm = Vm::new(layout, Recovery::Eager);
        vm.set_user_memory_region(&region(0, 0, 2 * G1, gmem()))
            .unwrap();
        vm.set_user_memory_region(&region(1, 2 * G1 + 4 * K4, 5 * M2, dirty(false)))
            .unwrap();
        convert(&mut vm, 0, 2 * G1, PRIVATE);
        convert(&mut vm, 0x1234_5000, 3 * M2, 0);
        convert(&mut vm, G1 + 7 * M2, K4, 0);
        for gpa in [0, G1, 0x1234_5000, G1 + 7 * M2] {
            vm.fault(Gpa(gpa), Access::Private).unwrap();
        }
        vm.fault_range(Gpa(0), 2 * G1, Access::Private).unwrap();
        vm.fault_range(Gpa(0), 2 * G1, Access::Shared).unwrap();
        vm.fault_range(Gpa(2 * G1), G1, Access::Shared).unwrap();
        ok(&vm);
        let c = vm.coverage();
        assert_eq!(c.huge_bytes, c.optimum_huge_bytes, "{layout}");
        assert_eq!(c.mapped_bytes, c.mappable_bytes);
        assert_eq!(c.table_pages, c.optimum_table_pages);
        assert_eq!(c.ratio(), 1.0);
        let leaves = vm.stats().leaves();
        assert_eq!(leaves, c.optimum_leaves);
        assert_eq!(vm.leaves().count() as u64, leaves.total());
    }
}

/// The 4 GiB TD boot of FACTS.md, accept-wise: firmware accepts two 2M pages at 4K (gfn
/// 0x800-0x9ff, 0x7e800-0x7e9ff), Linux accepts the rest lazily in 2M units, a 64 MiB bounce
/// pool is shared; then the guest touches everything.
fn td_boot(policy: AcceptPolicy) -> (MmuStats, Coverage) {
    td_boot_with(policy, Recovery::Eager)
}

fn td_boot_with(policy: AcceptPolicy, recovery: Recovery) -> (MmuStats, Coverage) {
    let mut vm = Vm::new(Layout::SPLIT, recovery).with_accept_policy(policy);
    vm.set_user_memory_region(&region(0, 0, 2 * G1, gmem()))
        .unwrap();
    vm.set_user_memory_region(&region(1, 4 * G1, 2 * G1, gmem()))
        .unwrap();
    vm.set_memory_attributes(Gpa(0), 2 * G1, PRIVATE).unwrap();
    vm.set_memory_attributes(Gpa(4 * G1), 2 * G1, PRIVATE)
        .unwrap();
    for gfn in (0x800..0xa00).chain(0x7e800..0x7ea00) {
        assert_eq!(
            vm.accept(Gpa(gfn * K4), Level::K4).unwrap(),
            AcceptOutcome::Accepted
        );
    }
    for base in [0, 4 * G1] {
        for gpa in (base..base + 2 * G1).step_by(M2 as usize) {
            if vm.accept(Gpa(gpa), Level::M2).unwrap() != AcceptOutcome::Accepted {
                panic!("accept {gpa:#x}");
            }
        }
    }
    vm.set_memory_attributes(Gpa(0x1000_0000), 64 << 20, 0)
        .unwrap();
    vm.fault_range(Gpa(0), 2 * G1, Access::Private).unwrap();
    vm.fault_range(Gpa(0), 2 * G1, Access::Shared).unwrap();
    vm.fault_range(Gpa(4 * G1), 2 * G1, Access::Private)
        .unwrap();
    ok(&vm);
    (vm.stats(), vm.coverage())
}

#[test]
fn accept_policy_clear_when_accepted_restores_huge_pages() {
    let (one_way, one_way_cov) = td_boot(AcceptPolicy::OneWay);
    let (clear, clear_cov) = td_boot(AcceptPolicy::ClearWhenAccepted);
    // One-way: every 1G page was accepted in 2M units, so none is ever mapped at 1G, and the two
    // firmware 2M pages stay at 4K.
    assert_eq!(one_way.private, counts(1024, 2048 - 32 - 2, 0));
    assert_eq!(one_way.shared, counts(0, 32, 0));
    // Roots, PDPTs, a PD per 1G page, a PT per firmware 2M page; the shared PD.
    assert_eq!(one_way.table_pages, 2 + 2 + 4 + 2 + 1);
    assert_eq!((one_way.splits, one_way.collapses), (0, 0));
    // Cleared once accepted: the 1G pages come back, the bounce pool's 1G page aside.
    assert_eq!(clear.private, counts(0, 512 - 32, 3));
    assert_eq!(clear.shared, counts(0, 32, 0));
    // Roots, PDPTs, the PD of the bounce pool's 1G page in each root.
    assert_eq!(clear.table_pages, 2 + 2 + 2);
    // The two firmware 2M pages (PROMOTE of 512 accepted 4K pages), then four 1G pages once
    // all their 2M units were accepted; the bounce pool split one 1G leaf again.
    assert_eq!((clear.splits, clear.collapses), (1, 6));
    assert_eq!(one_way_cov.huge_bytes + 2 * M2, clear_cov.huge_bytes);
    // Both reach their optimum; the optimum itself differs by the inhibits.
    assert_eq!(one_way_cov.ratio(), 1.0);
    assert_eq!(clear_cov.ratio(), 1.0);
    let tlb = |s: &MmuStats| s.leaves().total();
    assert_eq!((tlb(&one_way), tlb(&clear)), (3070, 515));
}

#[test]
fn accept_without_the_inhibit_differs_only_where_a_zapped_range_faults_in_again() {
    // No promotion (the TDX huge page series): the firmware's two 2M pages were split by their
    // 4K accepts and stay at 4K with or without the inhibit, because their tables hold leaves.
    let (none, _) = td_boot_with(AcceptPolicy::NoInhibit, Recovery::Off);
    let (one_way, _) = td_boot_with(AcceptPolicy::OneWay, Recovery::Off);
    assert_eq!(none.private, one_way.private);
    assert_eq!(none.private.k4, 1024);
    // Once a 2M page of the firmware's is converted
    // back and forth, only the run without the inhibit may map it huge again.
    for policy in [AcceptPolicy::NoInhibit, AcceptPolicy::OneWay] {
        let mut vm = Vm::new(Layout::SPLIT, Recovery::Off).with_accept_policy(policy);
        vm.set_user_memory_region(&region(0, 0, 2 * G1, gmem()))
            .unwrap();
        vm.set_memory_attributes(Gpa(0), 2 * G1, PRIVATE).unwrap();
        for gfn in 0x800..0xa00 {
            vm.accept(Gpa(gfn * K4), Level::K4).unwrap();
        }
        vm.set_memory_attributes(Gpa(0x80_0000), M2, 0).unwrap();
        vm.set_memory_attributes(Gpa(0x80_0000), M2, PRIVATE)
            .unwrap();
        vm.fault(Gpa(0x80_0000), Access::Private).unwrap();
        let leaf = vm.lookup(Gpa(0x80_0000), Access::Private).unwrap();
        // Nothing else is mapped in its 1G page: without the inhibit the fault maps it whole.
        let want = if policy == AcceptPolicy::NoInhibit {
            Level::G1
        } else {
            Level::K4
        };
        assert_eq!(leaf.level, want, "{policy:?}");
        ok(&vm);
    }
}

fn all_runs(vm: &Vm) -> std::vec::Vec<crate::AttrRun> {
    vm.tracker()
        .runs(crate::GfnRange::new(Gfn(0), Gfn(crate::addr::GFN_END)))
        .collect()
}

#[test]
fn abort_conversion_closes_the_window_and_keeps_the_attributes() {
    for layout in [Layout::SPLIT, Layout::Unified] {
        for recovery in [Recovery::Off, Recovery::OnFault, Recovery::Eager] {
            let mut vm = one_gig_private_in_with(layout, recovery);
            let attrs = all_runs(&vm);
            let c = vm.begin_conversion(req(&vm, M2 + K4, 3 * K4, 0)).unwrap();
            assert!(c.changes());
            ok(&vm);
            let leaves: std::vec::Vec<Leaf> = vm.leaves().collect();
            let begun = vm.stats();
            assert_eq!(
                vm.fault(Gpa(0), Access::Private).unwrap(),
                FaultOutcome::Retry
            );
            vm.abort_conversion(c).unwrap();
            ok(&vm);
            // Nothing but the window changed: attributes, large-page info, leaves, counters.
            assert_eq!(all_runs(&vm), attrs, "{layout} {recovery}");
            assert_eq!(vm.tracker().mixed_count(0, Level::M2), 0);
            assert_eq!(vm.tracker().mixed_count(0, Level::G1), 0);
            assert_eq!(vm.leaves().collect::<std::vec::Vec<_>>(), leaves);
            let mut aborted = vm.stats();
            aborted.retries -= 1;
            aborted.faults -= 1;
            assert_eq!(aborted, begun, "{layout} {recovery}");
            // The zapped pages fault in again, as private pages: at 1G, replacing the split
            // leaves (unified: the straddling leaf was zapped whole), except under `off` in
            // the split layout, whose 2M and 1G ranges around the page still hold leaves.
            let want = match (layout, recovery) {
                (Layout::Split { .. }, Recovery::Off) => Level::K4,
                _ => Level::G1,
            };
            assert_eq!(fault(&mut vm, M2 + K4, Access::Private), mapped(want));
            assert!(matches!(
                fault(&mut vm, M2 + K4, Access::Shared),
                FaultOutcome::MemoryFault(_)
            ));
        }
    }
}

fn one_gig_private_in_with(layout: Layout, recovery: Recovery) -> Vm {
    let mut vm = private_vm(layout, recovery, 2 * G1);
    assert_eq!(fault(&mut vm, 0, Access::Private), mapped(Level::G1));
    vm
}

#[test]
fn abort_conversion_of_nothing_or_of_another_vm() {
    let mut vm = one_gig_private(Recovery::Eager);
    let noop = vm.begin_conversion(req(&vm, 0, G1, PRIVATE)).unwrap();
    assert!(!noop.changes());
    let before = vm.stats();
    vm.abort_conversion(noop).unwrap();
    assert_eq!(vm.stats(), before);
    // A conversion another VM began is refused and changes nothing, even when its window id
    // is that of a window open here (both VMs count windows from 0).
    let mut other = one_gig_private(Recovery::Eager);
    let own = vm.begin_conversion(req(&vm, 0, K4, 0)).unwrap();
    let foreign = other.begin_conversion(req(&other, M2, K4, 0)).unwrap();
    let open = vm.stats();
    assert!(vm.abort_conversion(foreign).is_err());
    let foreign = other.begin_conversion(req(&other, M2 + K4, K4, 0)).unwrap();
    assert!(vm.end_conversion(foreign).is_err());
    let foreign_noop = other
        .begin_conversion(req(&other, G1 - K4, K4, PRIVATE))
        .unwrap();
    assert!(vm.end_conversion(foreign_noop).is_err());
    assert_eq!(vm.stats(), open);
    assert!(
        vm.tracker().is_private(Gfn(M2 >> 12)),
        "the foreign range is not stored"
    );
    vm.abort_conversion(own).unwrap();
    assert!(vm.tracker().is_private(Gfn(0)));
    ok(&vm);
}

#[test]
fn abort_keeps_the_accept_record_end_forgets_it() {
    for end in [false, true] {
        let mut vm = private_vm(Layout::SPLIT, Recovery::Eager, G1)
            .with_accept_policy(AcceptPolicy::ClearWhenAccepted);
        assert_eq!(
            vm.accept(Gpa(M2), Level::K4).unwrap(),
            AcceptOutcome::Accepted
        );
        assert_eq!(vm.is_accepted(Gpa(M2), Level::K4), Some(true));
        let c = vm.begin_conversion(req(&vm, M2, K4, 0)).unwrap();
        if end {
            assert!(vm.end_conversion(c).unwrap());
        } else {
            vm.abort_conversion(c).unwrap();
        }
        ok(&vm);
        assert_eq!(vm.is_accepted(Gpa(M2), Level::K4), Some(!end));
        assert_eq!(vm.tracker().is_private(Gfn(M2 >> 12)), !end);
    }
}

#[test]
fn faults_retry_in_the_range_and_the_1g_pages_of_its_head_and_tail() {
    for layout in [Layout::SPLIT, Layout::Unified] {
        let mut vm = private_vm(layout, Recovery::OnFault, 4 * G1);
        // [1G - 2M + 4K, 2G + 2M + 8K): head in the first 1G page, tail in the third.
        let (start, end) = (G1 - M2 + K4, 2 * G1 + M2 + 2 * K4);
        let c = vm
            .begin_conversion(req(&vm, start, end - start, 0))
            .unwrap();
        ok(&vm);
        let retry = [
            0,
            G1 - M2,
            start - K4,
            start,
            2 * G1,
            end - K4,
            end,
            3 * G1 - K4,
        ];
        for gpa in retry {
            assert_eq!(
                vm.fault(Gpa(gpa), Access::Private).unwrap(),
                FaultOutcome::Retry,
                "{layout} {gpa:#x}"
            );
            assert_eq!(
                vm.fault(Gpa(gpa), Access::Shared).unwrap(),
                FaultOutcome::Retry,
                "{layout} {gpa:#x}: whatever the access"
            );
        }
        if layout.is_split() {
            assert_eq!(
                vm.accept(Gpa(G1 - M2), Level::M2).unwrap(),
                AcceptOutcome::Retry
            );
        }
        assert_eq!(
            vm.fault(Gpa(3 * G1), Access::Private).unwrap(),
            mapped(Level::G1),
            "the 1G page after the tail's"
        );
        assert_eq!(
            vm.fault(Gpa(4 * G1), Access::Private).unwrap(),
            FaultOutcome::NoSlot,
            "no slot comes before the window"
        );
        let r = vm.fault_range(Gpa(0), 4 * G1, Access::Private).unwrap();
        assert_eq!((r.retry, r.spurious), (3 * G1 / K4, G1 / K4));
        // A second window on the 4th 1G page; ending the first leaves the second open.
        let second = vm.begin_conversion(req(&vm, 3 * G1 + M2, K4, 0)).unwrap();
        assert!(vm.end_conversion(c).unwrap());
        ok(&vm);
        assert_eq!(fault(&mut vm, 0, Access::Private), mapped(Level::M2));
        assert_eq!(fault(&mut vm, G1 - M2, Access::Private), mapped(Level::K4));
        assert_eq!(fault(&mut vm, start, Access::Shared), mapped(Level::K4));
        assert_eq!(fault(&mut vm, G1, Access::Shared), mapped(Level::G1));
        assert_eq!(
            vm.fault(Gpa(3 * G1), Access::Private).unwrap(),
            FaultOutcome::Retry
        );
        vm.abort_conversion(second).unwrap();
        assert_eq!(
            fault(&mut vm, 3 * G1 + M2, Access::Private),
            mapped(Level::G1),
            "{layout}"
        );
        let s = vm.stats();
        assert_eq!(
            s.retries,
            2 * retry.len() as u64 + u64::from(layout.is_split()) + 3 * G1 / K4 + 1
        );
    }
}

/// Eager recovery of a region that another operation made collapsible while a window held it
/// happens when that window closes, ended or aborted.
#[test]
fn eager_recovery_deferred_by_an_open_window_runs_when_it_closes() {
    for end in [false, true] {
        let mut vm = Vm::new(Layout::SPLIT, Recovery::Eager);
        vm.set_user_memory_region(&region(0, 0, 8 * M2, dirty(true)))
            .unwrap();
        let r = vm.fault_range(Gpa(0), 8 * M2, Access::Shared).unwrap();
        assert_eq!(r.mapped, counts(4096, 0, 0));
        // A conversion of one page of the last 2M page opens a window on the whole 1G page.
        let c = vm.begin_conversion(req(&vm, 7 * M2, K4, PRIVATE)).unwrap();
        vm.set_user_memory_region(&region(0, 0, 8 * M2, dirty(false)))
            .unwrap();
        ok(&vm);
        assert_eq!(vm.stats().collapses, 0, "held by the window");
        assert_eq!(
            vm.collapsible().len(),
            0,
            "regions in a window are not reported"
        );
        if end {
            assert!(vm.end_conversion(c).unwrap());
        } else {
            vm.abort_conversion(c).unwrap();
        }
        ok(&vm); // no complete collapsible region is left
        let s = vm.stats();
        assert_eq!(s.collapses, 7);
        assert_eq!(s.shared, counts(511, 7, 0));
    }
}

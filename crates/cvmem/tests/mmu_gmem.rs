//! The TDP MMU model where each guest_memfd keeps PRIVATE: random faults, accepts, file
//! conversions (through memslots bound congruently with the gfns and not), host references and
//! memslot churn, with the model's invariants after every operation (no leaf maps a page of
//! another kind or outside one memslot) and the optimum reached at quiescence under eager
//! recovery.

use cvmem::mmu::{AcceptPolicy, Layout, Recovery, Vm};
use cvmem::{
    Access, AttrMode, GfnRange, GmemBinding, GmemFlags, GmemId, GmemOffset, Gpa, Kind, Level,
    MemoryRegion, MergePolicy, SlotFlags, KVM_MEMORY_ATTRIBUTE_PRIVATE,
};
use proptest::prelude::*;

const K4: u64 = 4 << 10;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
const FILE: GmemId = GmemId(0);

/// The memslots: slot 0 bound congruently (1G pages map 1G file pages), slot 1 off by three
/// pages (its 2M pages straddle the file's), slot 2 without a file (shared only), slot 3 a
/// small congruent one.
fn regions() -> [MemoryRegion; 4] {
    let gmem = SlotFlags {
        guest_memfd: true,
        ..Default::default()
    };
    let bind = |offset| {
        Some(GmemBinding {
            gmem: FILE,
            offset: GmemOffset(offset),
        })
    };
    [
        MemoryRegion {
            slot: 0,
            gpa: Gpa(0),
            size: G1,
            flags: gmem,
            gmem: bind(0),
            ..Default::default()
        },
        MemoryRegion {
            slot: 1,
            gpa: Gpa(G1),
            size: 8 * M2,
            flags: gmem,
            gmem: bind(4 * G1 + 3 * K4),
            ..Default::default()
        },
        MemoryRegion {
            slot: 2,
            gpa: Gpa(2 * G1),
            size: 3 * M2 + 3 * K4,
            ..Default::default()
        },
        MemoryRegion {
            slot: 3,
            gpa: Gpa(3 * G1 + 4 * M2),
            size: 4 * M2,
            flags: gmem,
            gmem: bind(6 * G1 + 4 * M2),
            ..Default::default()
        },
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Fault {
        gpa: u64,
        private: bool,
    },
    FaultRange {
        gpa: u64,
        size: u64,
        private: bool,
    },
    Convert {
        offset: u64,
        size: u64,
        private: bool,
    },
    Accept {
        gpa: u64,
        level: Level,
    },
    Pin {
        offset: u64,
        pin: bool,
    },
    Punch {
        offset: u64,
        size: u64,
    },
    DeleteSlot {
        slot: u32,
    },
    RecreateSlots,
}

/// Gpas near the memslots' and large pages' edges.
fn gpa() -> impl Strategy<Value = u64> {
    let anchors = [0, M2, G1 - M2, G1, G1 + 4 * M2, 2 * G1, 3 * G1 + 4 * M2];
    (0..anchors.len(), -600i64..600).prop_map(move |(a, pages)| {
        (anchors[a] as i64 + pages * K4 as i64).clamp(0, (4 * G1 - K4) as i64) as u64
    })
}

/// File offsets near the bound ranges' edges.
fn offset() -> impl Strategy<Value = u64> {
    let anchors = [
        0,
        M2,
        G1 - M2,
        4 * G1,
        4 * G1 + 3 * K4 + M2,
        6 * G1 + 4 * M2,
    ];
    (0..anchors.len(), -600i64..600).prop_map(move |(a, pages)| {
        (anchors[a] as i64 + pages * K4 as i64).clamp(0, (8 * G1 - K4) as i64) as u64
    })
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        (1u64..4).prop_map(|n| n * K4),
        (1u64..3).prop_map(|n| n * M2),
        Just(G1),
        (1u64..1500).prop_map(|n| n * K4),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (gpa(), any::<bool>()).prop_map(|(gpa, private)| Op::Fault { gpa, private }),
        2 => (gpa(), (1u64..9).prop_map(|n| n * M2), any::<bool>())
            .prop_map(|(gpa, size, private)| Op::FaultRange { gpa, size, private }),
        5 => (offset(), size(), any::<bool>())
            .prop_map(|(offset, size, private)| Op::Convert { offset, size, private }),
        2 => (gpa(), prop_oneof![Just(Level::K4), Just(Level::M2), Just(Level::G1)])
            .prop_map(|(gpa, level)| Op::Accept { gpa: gpa & !(level.size() - 1), level }),
        1 => (offset(), any::<bool>()).prop_map(|(offset, pin)| Op::Pin { offset, pin }),
        1 => (offset(), size()).prop_map(|(offset, size)| Op::Punch { offset, size }),
        1 => (0u32..4).prop_map(|slot| Op::DeleteSlot { slot }),
        1 => Just(Op::RecreateSlots),
    ]
}

fn apply(vm: &mut Vm, op: &Op) -> Result<(), TestCaseError> {
    match *op {
        Op::Fault { gpa, private } => {
            vm.fault(Gpa(gpa), Access::from_private(private)).unwrap();
        }
        Op::FaultRange { gpa, size, private } => {
            vm.fault_range(Gpa(gpa), size, Access::from_private(private))
                .unwrap();
        }
        Op::Convert {
            offset,
            size,
            private,
        } => {
            let attrs = if private {
                KVM_MEMORY_ATTRIBUTE_PRIVATE
            } else {
                0
            };
            let leaves_before = vm.stats().leaves();
            let refused = vm
                .set_gmem_attributes(FILE, GmemOffset(offset), size, attrs, 0)
                .is_err();
            let now = vm
                .tracker()
                .gmem(FILE)
                .unwrap()
                .uniform(GmemOffset(offset), size);
            if refused {
                // Only a referenced page (shared → private) or the file's end refuses here:
                // nothing changed, not even a leaf.
                prop_assert_eq!(vm.stats().leaves(), leaves_before);
            } else {
                prop_assert_eq!(now, Some(Kind::from_private(private)));
            }
        }
        Op::Accept { gpa, level } => {
            let _ = vm.accept(Gpa(gpa), level);
        }
        Op::Pin { offset, pin } => {
            let _ = if pin {
                vm.gmem_get_page(FILE, GmemOffset(offset))
            } else {
                vm.gmem_put_page(FILE, GmemOffset(offset))
            };
        }
        Op::Punch { offset, size } => {
            let leaves_before = vm.stats().leaves();
            if vm.gmem_punch_hole(FILE, GmemOffset(offset), size).is_err() {
                prop_assert_eq!(vm.stats().leaves(), leaves_before);
            }
        }
        Op::DeleteSlot { slot } => {
            let r = MemoryRegion {
                slot,
                size: 0,
                ..Default::default()
            };
            let _ = vm.set_user_memory_region(&r);
        }
        Op::RecreateSlots => {
            for r in regions() {
                let _ = vm.set_user_memory_region(&r);
            }
        }
    }
    Ok(())
}

/// Faults in every page of every memslot with its own kind.
fn quiesce(vm: &mut Vm) {
    let slots: Vec<GfnRange> = vm.tracker().memslots().map(|s| s.range()).collect();
    for slot in slots {
        let mut runs = Vec::new();
        vm.tracker()
            .for_each_kind_run(slot, |r, k| runs.push((r, k)));
        for (run, kind) in runs {
            vm.fault_range(run.start.gpa(), run.len() * K4, kind.access())
                .unwrap();
        }
    }
}

fn layouts() -> impl Strategy<Value = Layout> {
    prop_oneof![Just(Layout::SPLIT), Just(Layout::Unified)]
}

fn recoveries() -> impl Strategy<Value = Recovery> {
    prop_oneof![
        Just(Recovery::Off),
        Just(Recovery::OnFault),
        Just(Recovery::Eager)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn file_conversions_keep_the_page_tables_consistent(
        layout in layouts(),
        recovery in recoveries(),
        clear in any::<bool>(),
        folio in prop_oneof![Just(Level::K4), Just(Level::M2), Just(Level::G1)],
        merge in prop_oneof![Just(MergePolicy::Never), Just(MergePolicy::OnPunchHole), Just(MergePolicy::Eager)],
        init_shared in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..24),
    ) {
        let policy = if clear { AcceptPolicy::ClearWhenAccepted } else { AcceptPolicy::OneWay };
        let mut vm = Vm::new(layout, recovery)
            .with_accept_policy(policy)
            .with_merge_policy(merge);
        vm.set_attr_mode(AttrMode::PerGmem).unwrap();
        let flags = GmemFlags { mmap: true, init_shared, folio };
        prop_assert_eq!(vm.create_guest_memfd(8 * G1, flags).unwrap(), FILE);
        for r in regions() {
            vm.set_user_memory_region(&r).unwrap();
        }
        for op in &ops {
            apply(&mut vm, op)?;
            if let Err(e) = vm.check_invariants() {
                return Err(TestCaseError::fail(format!("after {op:?}: {e}")));
            }
        }
        quiesce(&mut vm);
        vm.check_invariants().map_err(TestCaseError::fail)?;
        let c = vm.coverage();
        prop_assert_eq!(c.mapped_bytes, c.mappable_bytes);
        prop_assert!(c.huge_bytes <= c.optimum_huge_bytes);
        if recovery == Recovery::Eager {
            prop_assert_eq!(c.huge_bytes, c.optimum_huge_bytes);
            prop_assert_eq!(vm.stats().leaves(), c.optimum_leaves);
        }
    }
}

/// One 4K change inside a 2M private leaf: the split layout demotes the leaf (2M -> 4K), the
/// unified one drops it whole (an SNP PSMASH) — once, whether the VM or a file changes it.
#[test]
fn a_cut_huge_leaf_is_one_demote_or_one_psmash() {
    for (layout, demotes, psmash) in [(Layout::SPLIT, 1, 0), (Layout::Unified, 0, 1)] {
        for per_gmem in [false, true] {
            let mut vm = Vm::new(layout, Recovery::OnFault);
            let region = MemoryRegion {
                slot: 0,
                gpa: Gpa(0),
                size: M2,
                flags: SlotFlags {
                    guest_memfd: true,
                    ..Default::default()
                },
                ..Default::default()
            };
            if per_gmem {
                vm.set_attr_mode(AttrMode::PerGmem).unwrap();
                let flags = GmemFlags {
                    mmap: true,
                    init_shared: false,
                    folio: Level::M2,
                };
                vm.create_guest_memfd(M2, flags).unwrap();
                vm.set_user_memory_region(&MemoryRegion {
                    gmem: Some(GmemBinding {
                        gmem: FILE,
                        offset: GmemOffset(0),
                    }),
                    ..region
                })
                .unwrap();
            } else {
                vm.set_user_memory_region(&region).unwrap();
                vm.set_memory_attributes(Gpa(0), M2, KVM_MEMORY_ATTRIBUTE_PRIVATE)
                    .unwrap();
            }
            vm.fault(Gpa(0), Access::Private).unwrap();
            assert_eq!(vm.stats().private.m2, 1, "{layout} per_gmem {per_gmem}");
            if per_gmem {
                vm.set_gmem_attributes(FILE, GmemOffset(K4), K4, 0, 0)
                    .unwrap();
            } else {
                vm.set_memory_attributes(Gpa(K4), K4, 0).unwrap();
            }
            let s = vm.stats();
            assert_eq!(
                (s.demotes, s.psmash),
                (demotes, psmash),
                "{layout} per_gmem {per_gmem}"
            );
        }
    }
}

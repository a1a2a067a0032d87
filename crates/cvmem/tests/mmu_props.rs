//! Property test of the TDP MMU model: random operation sequences on every layout, recovery
//! policy and accept policy, with the model's invariants and per-operation oracles checked after
//! every operation, and the optimum reached at quiescence under eager recovery. Two-phase
//! conversions run another operation inside their window and end or abort.

use cvmem::mmu::{
    AcceptOutcome, AcceptPolicy, FaultOutcome, Layout, Leaf, Recovery, SharedBit, Vm,
};
use cvmem::{
    Access, Gfn, GfnRange, Gpa, Level, MaxLevel, MemoryRegion, SlotFlags,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
};
use proptest::prelude::*;

const K4: u64 = 4 << 10;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;

/// Points where things happen: slot edges, large-page edges, the movable slot's places.
const ANCHORS: [u64; 10] = [
    0,
    M2,
    G1 - M2,
    G1,
    G1 + 4 * M2,
    2 * G1,
    2 * G1 + 3 * M2 + K4,
    3 * G1 - M2,
    3 * G1 + 5 * M2,
    4 * G1 - 4 * K4,
];

/// Where slot 2 may move (unaligned places included).
const SLOT2_PLACES: [u64; 4] = [2 * G1, 2 * G1 + 3 * M2 + K4, 3 * G1 - M2, G1 + 16 * M2];

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
        gpa: u64,
        size: u64,
        private: bool,
    },
    /// A conversion in two phases: a probing fault and maybe another operation while the
    /// window is open, then the end, or an abort.
    TwoPhase {
        gpa: u64,
        size: u64,
        private: bool,
        probe: u64,
        inner: Option<Box<Op>>,
        abort: bool,
    },
    Accept {
        gpa: u64,
        level: Level,
    },
    /// Every 4K page of a 2M page accepted at 4K (firmware style), or every 2M unit of a 1G
    /// page accepted at 2M (Linux's lazy accept).
    AcceptAll {
        gpa: u64,
        level: Level,
    },
    MoveSlot2 {
        place: usize,
        dirty: bool,
    },
    /// Dirty logging of slot 2 on or off where it is; then, with `touch`, every page of the
    /// slot is faulted in (shared), as a migration's first pass would.
    DirtyLog {
        on: bool,
        touch: bool,
    },
    DeleteSlot {
        slot: u32,
    },
    RecreateSlots,
}

fn gpa() -> impl Strategy<Value = u64> {
    (0..ANCHORS.len(), -600i64..600).prop_map(|(a, pages)| {
        let g = ANCHORS[a] as i64 + pages * K4 as i64;
        g.clamp(0, (4 * G1 - K4) as i64) as u64
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

/// Every operation but `TwoPhase`.
fn simple_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (gpa(), any::<bool>()).prop_map(|(gpa, private)| Op::Fault { gpa, private }),
        2 => (gpa(), (1u64..9).prop_map(|n| n * M2), any::<bool>())
            .prop_map(|(gpa, size, private)| Op::FaultRange { gpa, size, private }),
        4 => (gpa(), size(), any::<bool>())
            .prop_map(|(gpa, size, private)| Op::Convert { gpa, size, private }),
        2 => (gpa(), prop_oneof![Just(Level::K4), Just(Level::M2), Just(Level::G1)])
            .prop_map(|(gpa, level)| Op::Accept { gpa: gpa & !(level.size() - 1), level }),
        1 => (gpa(), prop_oneof![Just(Level::K4), Just(Level::M2)])
            .prop_map(|(gpa, level)| Op::AcceptAll { gpa, level }),
        1 => (0..SLOT2_PLACES.len(), any::<bool>())
            .prop_map(|(place, dirty)| Op::MoveSlot2 { place, dirty }),
        2 => dirty_log(),
        1 => (0u32..4).prop_map(|slot| Op::DeleteSlot { slot }),
        1 => Just(Op::RecreateSlots),
    ]
}

fn dirty_log() -> impl Strategy<Value = Op> {
    (any::<bool>(), any::<bool>()).prop_map(|(on, touch)| Op::DirtyLog { on, touch })
}

fn op() -> impl Strategy<Value = Op> {
    // Inside a window, dirty logging turned off is what makes a held region collapsible.
    let inner = prop_oneof![2 => simple_op(), 1 => dirty_log()];
    let two_phase = (
        (gpa(), size(), any::<bool>(), gpa()),
        proptest::option::of(inner),
        any::<bool>(),
    )
        .prop_map(|((gpa, size, private, probe), inner, abort)| Op::TwoPhase {
            gpa,
            size,
            private,
            probe,
            inner: inner.map(Box::new),
            abort,
        });
    prop_oneof![10 => simple_op(), 2 => two_phase]
}

fn regions() -> [MemoryRegion; 4] {
    let gmem = SlotFlags {
        guest_memfd: true,
        ..Default::default()
    };
    [
        MemoryRegion {
            slot: 0,
            gpa: Gpa(0),
            size: G1,
            flags: gmem,
            ..Default::default()
        },
        MemoryRegion {
            slot: 1,
            gpa: Gpa(G1),
            size: 8 * M2,
            flags: gmem,
            backing: Some(Level::M2),
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
            gpa: Gpa(3 * G1 + 5 * M2 + 8 * K4),
            size: 4 * K4,
            ..Default::default()
        },
    ]
}

/// A checked request to make `[gpa, gpa + size)` have `attrs`.
fn req(vm: &Vm, gpa: u64, size: u64, attrs: u64) -> cvmem::AttrRequest {
    vm.tracker()
        .validate_attributes(Gpa(gpa), size, attrs)
        .unwrap()
}

fn kind(private: bool) -> Access {
    Access::from_private(private)
}

/// Merged gfn ranges mapped by leaves of one kind.
fn mapped(vm: &Vm, private: bool) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut leaves: Vec<Leaf> = vm.leaves().filter(|l| l.private == private).collect();
    leaves.sort_by_key(|l| l.gfn);
    for l in leaves {
        let r = l.range().gfns();
        match out.last_mut() {
            Some(last) if last.1 == r.start => last.1 = r.end,
            _ => out.push((r.start, r.end)),
        }
    }
    out
}

fn covered(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    let i = ranges.partition_point(|r| r.1 <= start);
    ranges.get(i).is_some_and(|r| r.0 <= start && end <= r.1)
}

/// Whether a fault at `gpa` must return `Retry`: it lies in a slot and in the open window.
fn retries(vm: &Vm, window: Option<GfnRange>, gpa: u64) -> bool {
    let g = gpa / K4;
    window.is_some_and(|w| w.contains(Gfn(g))) && vm.tracker().slot_for_gfn(Gfn(g)).is_some()
}

/// The window of a conversion of `range`: widened to the 1G pages of its head and tail.
fn window_of(range: GfnRange) -> GfnRange {
    GfnRange::new(
        Level::G1.align_down(range.start),
        Gfn(range.end.0.div_ceil(Level::G1.pages()) * Level::G1.pages()),
    )
}

fn expect_fault(vm: &Vm, window: Option<GfnRange>, gpa: u64, access: Access) -> FaultOutcome {
    if retries(vm, window, gpa) {
        return FaultOutcome::Retry;
    }
    match vm.tracker().max_mapping_level(Gpa(gpa), access) {
        MaxLevel::NoSlot => FaultOutcome::NoSlot,
        MaxLevel::MemoryFault(m) => FaultOutcome::MemoryFault(m),
        MaxLevel::Level(l) if vm.lookup(Gpa(gpa), access).is_none() => {
            FaultOutcome::Mapped { level: l }
        }
        MaxLevel::Level(_) => FaultOutcome::Spurious,
    }
}

/// Leaves that a conversion of `range` to `private` must leave mapped: outside the range, or
/// of the new kind, or private ones reaching outside in the split layout (their outside part).
fn check_conversion_keeps(
    vm: &Vm,
    before: &[Leaf],
    range: GfnRange,
    private: bool,
) -> Result<(), TestCaseError> {
    let after = [mapped(vm, false), mapped(vm, true)];
    for l in before {
        let r = l.range();
        let keep: Vec<(u64, u64)> = if l.private == private || r.intersect(&range).is_none() {
            vec![(r.start.0, r.end.0)]
        } else if vm.layout().is_split() && l.private {
            let (r, range) = (l.range().gfns(), range.gfns());
            let mut parts = Vec::new();
            if r.start < range.start {
                parts.push((r.start, range.start));
            }
            if range.end < r.end {
                parts.push((range.end, r.end));
            }
            parts
        } else {
            Vec::new()
        };
        for (s, e) in keep {
            prop_assert!(
                covered(&after[l.private as usize], s, e),
                "conversion of {range:?} to private={private} lost {l:?} part {s:#x}..{e:#x}"
            );
        }
    }
    Ok(())
}

/// Applies `op`, with `window` the invalidation window open meanwhile, if any.
fn apply(vm: &mut Vm, op: &Op, window: Option<GfnRange>) -> Result<(), TestCaseError> {
    match *op {
        Op::Fault { gpa, private } => {
            let access = kind(private);
            let want = expect_fault(vm, window, gpa, access);
            let got = vm.fault(Gpa(gpa), access).unwrap();
            match (want, got) {
                (FaultOutcome::Mapped { level: max }, FaultOutcome::Mapped { level }) => {
                    if vm.recovery() == Recovery::Off {
                        prop_assert!(level <= max);
                    } else {
                        prop_assert_eq!(level, max);
                    }
                    let leaf = vm.lookup(Gpa(gpa), access);
                    prop_assert!(leaf.is_some_and(|l| l.level >= level));
                }
                (want, got) => prop_assert_eq!(want, got),
            }
        }
        Op::FaultRange { gpa, size, private } => {
            let r = vm.fault_range(Gpa(gpa), size, kind(private)).unwrap();
            prop_assert_eq!(
                r.mapped.total() + r.spurious + r.memory_fault + r.no_slot + r.retry,
                size / K4
            );
            let range = GfnRange::new(Gfn(gpa / K4), Gfn((gpa + size) / K4));
            let in_window = window.and_then(|w| w.intersect(&range));
            let retry: u64 = vm
                .tracker()
                .memslots()
                .filter_map(|s| in_window.and_then(|w| w.intersect(&s.range())))
                .map(|r| r.len())
                .sum();
            prop_assert_eq!(r.retry, retry);
        }
        Op::Convert { gpa, size, private } => {
            let before: Vec<Leaf> = vm.leaves().collect();
            let attrs = if private {
                KVM_MEMORY_ATTRIBUTE_PRIVATE
            } else {
                0
            };
            vm.set_memory_attributes(Gpa(gpa), size, attrs).unwrap();
            let range = GfnRange::new(Gfn(gpa / K4), Gfn((gpa + size) / K4));
            prop_assert!(vm.tracker().range_has_attributes(range, attrs, u64::MAX));
            check_conversion_keeps(vm, &before, range, private)?;
        }
        Op::TwoPhase {
            gpa,
            size,
            private,
            probe,
            ref inner,
            abort,
        } => {
            let attrs = if private {
                KVM_MEMORY_ATTRIBUTE_PRIVATE
            } else {
                0
            };
            let range = GfnRange::new(Gfn(gpa / K4), Gfn((gpa + size) / K4));
            let attrs_before: Vec<_> = vm.tracker().runs(range).collect();
            let c = vm.begin_conversion(req(vm, gpa, size, attrs)).unwrap();
            vm.check_invariants().map_err(TestCaseError::fail)?;
            let window = c.changes().then(|| window_of(range));
            let out = vm.fault(Gpa(probe), Access::Private).unwrap();
            prop_assert_eq!(
                out == FaultOutcome::Retry,
                retries(vm, window, probe),
                "probe {:#x} -> {:?}",
                probe,
                out
            );
            vm.check_invariants().map_err(TestCaseError::fail)?;
            if let Some(inner) = inner {
                apply(vm, inner, window)?;
                vm.check_invariants()
                    .map_err(|e| TestCaseError::fail(format!("inside the window: {e}")))?;
            }
            let (leaves, stats) = (vm.leaves().collect::<Vec<_>>(), vm.stats());
            if abort {
                vm.abort_conversion(c).unwrap();
                if inner.is_none() {
                    // Nothing but the window changes: no attribute, no leaf, no counter.
                    prop_assert_eq!(vm.tracker().runs(range).collect::<Vec<_>>(), attrs_before);
                    prop_assert_eq!(vm.leaves().collect::<Vec<_>>(), leaves);
                    prop_assert_eq!(vm.stats(), stats);
                }
            } else {
                let changes = c.changes();
                vm.end_conversion(c).unwrap();
                // (An inner conversion may have changed a range that needed no change.)
                if changes || inner.is_none() {
                    prop_assert!(vm.tracker().range_has_attributes(range, attrs, u64::MAX));
                }
            }
        }
        Op::Accept { gpa, level } => {
            match (vm.is_accepted(Gpa(gpa), level), vm.accept(Gpa(gpa), level)) {
                (_, Ok(AcceptOutcome::Retry)) => prop_assert!(retries(vm, window, gpa)),
                (_, Ok(_)) if retries(vm, window, gpa) => {
                    prop_assert!(false, "no retry in the window")
                }
                (_, Err(e)) => prop_assert!(!vm.layout().is_split(), "{e}"),
                (already, Ok(AcceptOutcome::Accepted)) => {
                    let leaf = vm.lookup(Gpa(gpa), Access::Private);
                    // A page accepted before may stay mapped above the level (no re-inhibit);
                    // without the inhibit, eager recovery collapses the accepted page at once.
                    let above_ok = already == Some(true)
                        || (vm.accept_policy() == AcceptPolicy::NoInhibit
                            && vm.recovery() == Recovery::Eager);
                    prop_assert!(
                        leaf.is_some_and(|l| l.level <= level || above_ok),
                        "{leaf:?}"
                    );
                    prop_assert!(vm.tracker().is_private(Gfn(gpa / K4)));
                }
                (_, Ok(AcceptOutcome::NoSlot)) => {
                    prop_assert!(vm.tracker().slot_for_gfn(Gfn(gpa / K4)).is_none())
                }
                (_, Ok(AcceptOutcome::MemoryFault(_))) => {
                    let gmem = vm
                        .tracker()
                        .slot_for_gfn(Gfn(gpa / K4))
                        .is_some_and(|s| s.flags().guest_memfd);
                    prop_assert!(!gmem || !vm.tracker().is_private(Gfn(gpa / K4)));
                }
            }
        }
        Op::AcceptAll { gpa, level } => {
            let large = level.larger().expect("4K or 2M");
            let start = gpa & !(large.size() - 1);
            for a in (start..start + large.size()).step_by(level.size() as usize) {
                if vm.accept(Gpa(a), level).is_err() {
                    prop_assert!(!vm.layout().is_split());
                    break;
                }
            }
            let held = retries(vm, window, start);
            if vm.layout().is_split()
                && vm.accept_policy() == AcceptPolicy::ClearWhenAccepted
                && !held
            {
                let whole = vm
                    .tracker()
                    .runs(GfnRange::new(
                        Gfn(start / K4),
                        Gfn((start + large.size()) / K4),
                    ))
                    .count()
                    == 1;
                let gmem = vm
                    .tracker()
                    .slot_for_gfn(Gfn(start / K4))
                    .is_some_and(|s| s.flags().guest_memfd);
                if whole && gmem && vm.tracker().is_private(Gfn(start / K4)) {
                    prop_assert!(!vm.tracker().is_guest_inhibited(Gfn(start / K4), large));
                }
            }
        }
        Op::DirtyLog { on, touch } => {
            if let Some(s) = vm.tracker().memslot(2) {
                let mut r = regions()[2];
                r.gpa = s.gpa();
                r.flags.dirty_log = on;
                vm.set_user_memory_region(&r).unwrap();
                if touch {
                    vm.fault_range(r.gpa, r.size, Access::Shared).unwrap();
                }
            }
        }
        Op::MoveSlot2 { place, dirty } => {
            let mut r = regions()[2];
            r.gpa = Gpa(SLOT2_PLACES[place]);
            r.flags.dirty_log = dirty;
            let before = vm.tracker().memslot(2).map(|s| s.range());
            let result = vm.set_user_memory_region(&r);
            if let Ok(cvmem::SlotChange::Moved { old }) = result {
                prop_assert_eq!(Some(old), before);
                let shared = mapped(vm, false);
                let private = mapped(vm, true);
                let hit =
                    |v: &[(u64, u64)]| v.iter().any(|&(s, e)| s < old.end.0 && old.start.0 < e);
                prop_assert!(
                    !hit(&shared) && !hit(&private),
                    "leaves left in a moved slot"
                );
            }
            if dirty && result.is_ok() {
                let slot = vm.tracker().memslot(2).unwrap().range();
                prop_assert!(vm
                    .leaves()
                    .all(|l| l.level == Level::K4 || l.range().intersect(&slot).is_none()));
            }
        }
        Op::DeleteSlot { slot } => {
            let mut r = regions()[slot as usize];
            r.size = 0;
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

/// Faults in every mappable page with the access of its own kind.
fn quiesce(vm: &mut Vm) {
    let slots: Vec<GfnRange> = vm.tracker().memslots().map(|s| s.range()).collect();
    for slot in slots {
        let runs: Vec<_> = vm.tracker().runs(slot).collect();
        for run in runs {
            let private = run.attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0;
            vm.fault_range(run.start.gpa(), run.range().bytes(), kind(private))
                .unwrap();
        }
    }
}

fn layouts() -> impl Strategy<Value = Layout> {
    prop_oneof![
        Just(Layout::SPLIT),
        Just(Layout::Split {
            shared_bit: SharedBit::Bit51
        }),
        Just(Layout::Unified),
    ]
}

fn recoveries() -> impl Strategy<Value = Recovery> {
    prop_oneof![
        Just(Recovery::Off),
        Just(Recovery::OnFault),
        Just(Recovery::Eager)
    ]
}

fn policies() -> impl Strategy<Value = AcceptPolicy> {
    prop_oneof![
        Just(AcceptPolicy::OneWay),
        Just(AcceptPolicy::ClearWhenAccepted),
        Just(AcceptPolicy::NoInhibit)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_the_page_tables_consistent(
        layout in layouts(),
        recovery in recoveries(),
        policy in policies(),
        private_start in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..24),
    ) {
        let mut vm = Vm::new(layout, recovery).with_accept_policy(policy);
        for r in regions() {
            vm.set_user_memory_region(&r).unwrap();
        }
        if private_start {
            vm.set_memory_attributes(Gpa(0), G1 + 8 * M2, KVM_MEMORY_ATTRIBUTE_PRIVATE).unwrap();
        }
        for op in &ops {
            apply(&mut vm, op, None)?;
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
            prop_assert_eq!(c.table_pages, c.optimum_table_pages);
        }
        // Deleting every slot leaves only the roots.
        for mut r in regions() {
            r.size = 0;
            let _ = vm.set_user_memory_region(&r);
        }
        vm.check_invariants().map_err(TestCaseError::fail)?;
        let s = vm.stats();
        prop_assert_eq!(s.leaves().total(), 0);
        prop_assert_eq!(s.table_pages, if layout.is_split() { 2 } else { 1 });
    }
}

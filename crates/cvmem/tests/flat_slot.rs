//! A memslot's flat words ([`cvmem::FlatSlot`], what a concurrent front reads without a lock)
//! give the tracker's own fault answer wherever they are complete, and are complete wherever
//! nothing but they decides a fault: random memslots (misaligned, dirty-logged, small, bound
//! to modelled files of every folio size at congruent or other offsets), conversions,
//! GUEST_INHIBIT and holes punched, PRIVATE kept per VM; and never complete where files keep
//! it. The tracker's answers are checked against the dense oracle in `tracker_oracle.rs` and
//! `gmem_tracker.rs`.

use cvmem::{
    Access, AttrMode, Gfn, GmemBinding, GmemFlags, GmemId, GmemOffset, Gpa, Level, MaxLevel,
    MemoryRegion, SlotFlags, Tracker, KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE,
};
use proptest::prelude::*;

const PAGE: u64 = 4096;
const M2: u64 = 512;
const G1: u64 = 512 * 512;
/// Every gfn the strategies produce is below this (3 GiB).
const WINDOW: u64 = 3 * G1;

#[derive(Clone, Debug)]
enum Op {
    File {
        order: Level,
    },
    Slot {
        id: u32,
        gfn: u64,
        pages: u64,
        uaddr_skew: u64,
        dirty_log: bool,
        guest_memfd: bool,
        file: Option<(u32, u64)>,
    },
    Attr {
        gfn: u64,
        pages: u64,
        private: bool,
    },
    Inhibit {
        gfn: u64,
        level: Level,
    },
    Punch {
        file: u32,
        page: u64,
    },
}

/// Gfns near 2M and 1G boundaries, or anywhere in the window.
fn gfn() -> impl Strategy<Value = u64> {
    prop_oneof![
        (
            0u64..3,
            0u64..4,
            prop_oneof![Just(0u64), Just(1), Just(M2 - 1)]
        )
            .prop_map(|(g, m, p)| g * G1 + m * M2 + p),
        0u64..WINDOW - G1,
    ]
}

fn pages() -> impl Strategy<Value = u64> {
    prop_oneof![
        1u64..8,
        Just(M2),
        Just(M2 + 1),
        Just(4 * M2),
        Just(G1),
        1u64..G1
    ]
}

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![Just(Level::K4), Just(Level::M2), Just(Level::G1)]
}

fn op() -> impl Strategy<Value = Op> {
    let slot = (
        0u32..4,
        gfn(),
        pages(),
        prop_oneof![Just(0u64), Just(1), Just(M2)],
        any::<bool>(),
        any::<bool>(),
        proptest::option::of((0u32..3, prop_oneof![Just(0u64), Just(1), Just(M2), 0..G1])),
    )
        .prop_map(
            |(id, gfn, pages, uaddr_skew, dirty_log, guest_memfd, file)| Op::Slot {
                id,
                gfn,
                pages,
                uaddr_skew,
                dirty_log,
                guest_memfd,
                file,
            },
        );
    let attr = (gfn(), pages(), any::<bool>()).prop_map(|(gfn, pages, private)| Op::Attr {
        gfn,
        pages,
        private,
    });
    prop_oneof![
        1 => level().prop_map(|order| Op::File { order }),
        3 => slot,
        4 => attr,
        1 => (gfn(), level()).prop_map(|(gfn, level)| Op::Inhibit { gfn, level }),
        1 => (0u32..3, 0u64..2 * G1).prop_map(|(file, page)| Op::Punch { file, page }),
    ]
}

/// Applies `op`; refusals are part of the sequence (the tracker stays as it was).
fn apply(t: &mut Tracker, op: &Op) {
    match *op {
        Op::File { order } => {
            let flags = GmemFlags {
                folio: order,
                ..Default::default()
            };
            let _ = t.create_guest_memfd(2 * G1 * PAGE, flags);
        }
        Op::Slot {
            id,
            gfn,
            pages,
            uaddr_skew,
            dirty_log,
            guest_memfd,
            file,
        } => {
            let region = |size| MemoryRegion {
                slot: id,
                gpa: Gpa(gfn * PAGE),
                size,
                flags: SlotFlags {
                    guest_memfd,
                    dirty_log,
                    ..Default::default()
                },
                uaddr: Some((gfn + uaddr_skew) * PAGE),
                backing: None,
                gmem: file.filter(|_| guest_memfd).map(|(f, page)| GmemBinding {
                    gmem: GmemId(f),
                    offset: GmemOffset(page * PAGE),
                }),
            };
            // A slot in use is deleted first: its size and binding cannot change.
            let _ = t.set_user_memory_region(&region(0));
            let _ = t.set_user_memory_region(&region(pages * PAGE));
        }
        Op::Attr {
            gfn,
            pages,
            private,
        } => {
            let attributes = if private { PRIVATE } else { 0 };
            let _ = t.set_memory_attributes(Gpa(gfn * PAGE), pages * PAGE, attributes);
        }
        Op::Inhibit { gfn, level } => {
            let _ = t.set_guest_inhibit(Gfn(gfn), level);
        }
        Op::Punch { file, page } => {
            let _ = t.gmem_punch_hole(GmemId(file), GmemOffset(page * PAGE), M2 * PAGE);
        }
    }
}

/// The flat answer for `gfn`: `NoSlot` outside every flat slot, `None` where its slot's words
/// are not complete.
fn flat_answer(t: &Tracker, gfn: Gfn, access: Access) -> Option<MaxLevel> {
    match t.flat_slots().find(|s| s.contains(gfn)) {
        None => Some(MaxLevel::NoSlot),
        Some(s) => s
            .fault_code(gfn, access, || t.attribute_store().probe(gfn))
            .map(|code| code.max_level(gfn, access)),
    }
}

/// Whether only a slot's words decide its faults: no GUEST_INHIBIT, and no file or one of
/// order-0 folios.
fn should_be_complete(t: &Tracker, slot: &cvmem::Memslot) -> bool {
    let inhibited = (0..slot.npages()).step_by(M2 as usize).any(|p| {
        let gfn = Gfn(slot.base_gfn().0 + p);
        Level::LARGE
            .into_iter()
            .any(|l| t.is_guest_inhibited(gfn, l))
    });
    let huge_file = slot
        .gmem()
        .and_then(|b| t.gmem(b.gmem))
        .is_some_and(|g| g.folios().order() != Level::K4);
    t.attr_mode() == AttrMode::PerVm && !inhibited && !huge_file
}

fn check(t: &Tracker, probes: &[u64]) -> Result<(), TestCaseError> {
    let flats: Vec<_> = t.flat_slots().collect();
    prop_assert_eq!(flats.len(), t.memslots().len());
    let mut gfns = probes.to_vec();
    for (slot, flat) in t.memslots().zip(&flats) {
        prop_assert_eq!(flat.base_gfn(), slot.base_gfn());
        prop_assert_eq!(
            flat.is_complete(),
            should_be_complete(t, slot),
            "{:?}",
            slot
        );
        let (base, end) = (slot.base_gfn().0, slot.base_gfn().0 + slot.npages());
        gfns.extend([base.saturating_sub(1), base, base + 1, end - 1, end]);
        for level in Level::LARGE {
            let lp = level.align_down(slot.base_gfn()).0 + level.pages();
            gfns.extend([lp, lp.saturating_sub(1), lp + 7]);
        }
    }
    for gfn in gfns.into_iter().map(Gfn) {
        for access in [Access::Private, Access::Shared] {
            if let Some(answer) = flat_answer(t, gfn, access) {
                prop_assert_eq!(
                    answer,
                    t.max_mapping_level(gfn.gpa(), access),
                    "gfn {:#x} {:?}",
                    gfn.0,
                    access
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("CVMEM_PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2_000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn flat_slots_answer_as_the_tracker(
        ops in prop::collection::vec(op(), 1..24),
        probes in prop::collection::vec(0u64..WINDOW, 16),
    ) {
        let mut t = Tracker::new();
        for op in &ops {
            apply(&mut t, op);
            check(&t, &probes)?;
        }
    }

    #[test]
    fn flat_slots_are_never_complete_where_files_keep_private(
        ops in prop::collection::vec(op(), 1..12),
    ) {
        let mut t = Tracker::new().with_attr_mode(AttrMode::PerGmem);
        for op in &ops {
            apply(&mut t, op);
            prop_assert!(t.flat_slots().all(|s| !s.is_complete()));
        }
    }
}

/// The words alone map a whole 1G page at 1G, cap a private page by an order-0 file at 4K,
/// and leave a file of 2M folios, or GUEST_INHIBIT, to the tracker.
#[test]
fn words_decide_1g_pages_and_order_0_files_only() {
    let mut t = Tracker::new();
    for order in [Level::K4, Level::M2] {
        apply(&mut t, &Op::File { order });
    }
    let slot = |id, gfn, file| Op::Slot {
        id,
        gfn,
        pages: G1,
        uaddr_skew: 0,
        dirty_log: false,
        guest_memfd: true,
        file,
    };
    apply(&mut t, &slot(0, 0, None));
    apply(&mut t, &slot(1, G1, Some((0, 0))));
    apply(&mut t, &slot(2, 2 * G1, Some((1, 0))));
    apply(
        &mut t,
        &Op::Attr {
            gfn: 0,
            pages: 3 * G1,
            private: true,
        },
    );
    let at = |t: &Tracker, gfn| flat_answer(t, Gfn(gfn), Access::Private);
    assert_eq!(at(&t, 7), Some(MaxLevel::Level(Level::G1)));
    assert_eq!(at(&t, G1 + 7), Some(MaxLevel::Level(Level::K4)));
    assert_eq!(at(&t, 2 * G1 + 7), None);
    assert_eq!(at(&t, 3 * G1), Some(MaxLevel::NoSlot));
    let inhibit = Op::Inhibit {
        gfn: 7,
        level: Level::K4,
    };
    apply(&mut t, &inhibit);
    assert_eq!(at(&t, 7), None);
    check(&t, &[7, G1 + 7, 2 * G1 + 7]).unwrap();
}

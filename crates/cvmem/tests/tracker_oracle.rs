//! The tracker against the dense per-page oracle: random operation sequences, and after every
//! operation every query, mixed count and attribute run must agree.

use cvmem::{
    Access, Gfn, GfnRange, Gpa, Level, MapGpaRange, MemoryRegion, SlotFlags, Tracker, PAGE_SIZE,
};
use cvmem_testkit::DenseModel;
use proptest::prelude::*;

/// The modelled window: 6 GiB, beyond every address the strategies produce (< 5.1 GiB), so that
/// 1G pages and slot edges are all exercised.
const WINDOW_PAGES: u64 = 6 << 18;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;

#[derive(Clone, Debug)]
enum Op {
    Memslot {
        id: u32,
        gpa: u64,
        size: u64,
        flags: SlotFlags,
        uaddr: Option<u64>,
        backing: Option<Level>,
    },
    Attrs {
        gpa: u64,
        size: u64,
        attributes: u64,
    },
    MapGpa {
        gpa: u64,
        npages: u64,
        flags: u64,
    },
    Inhibit {
        gpa: u64,
        level: Level,
    },
}

/// Addresses near the edges that matter: 1G and 2M boundaries, plus a few pages either side.
fn addr() -> impl Strategy<Value = u64> {
    let page_in_2m = prop_oneof![Just(0u64), Just(1), Just(511), 0u64..512];
    let m2_in_1g = prop_oneof![Just(0u64), Just(1), Just(511), 0u64..512];
    (0u64..4, m2_in_1g, page_in_2m).prop_map(|(g, m, p)| g * G1 + m * M2 + p * PAGE_SIZE)
}

/// Sizes from one page to a little over 1G, biased to large-page multiples and their neighbours.
fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        (1u64..16).prop_map(|n| n * PAGE_SIZE),
        (1u64..4).prop_map(|n| n * M2),
        (1u64..4, 1u64..3).prop_map(|(n, p)| n * M2 + p * PAGE_SIZE),
        (1u64..4, 1u64..3).prop_map(|(n, p)| n * M2 - p * PAGE_SIZE),
        Just(G1),
        Just(G1 + M2),
        Just(G1 - PAGE_SIZE),
        (1u64..600).prop_map(|n| n * PAGE_SIZE * 7),
    ]
}

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![Just(Level::K4), Just(Level::M2), Just(Level::G1)]
}

fn op() -> impl Strategy<Value = Op> {
    let slot_flags = (
        any::<bool>(),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(guest_memfd, dirty_log, readonly)| SlotFlags {
            guest_memfd,
            dirty_log,
            readonly,
        });
    let uaddr = prop_oneof![
        4 => Just(None),
        1 => (0u64..3, 0u64..4).prop_map(|(k, p)| Some(k * G1 + p * M2 + p * PAGE_SIZE)),
    ];
    let backing = prop_oneof![3 => Just(None), 1 => level().prop_map(Some)];
    let memslot = (
        0u32..5,
        addr(),
        prop_oneof![4 => size(), 1 => Just(0u64)],
        slot_flags,
        uaddr,
        backing,
    )
        .prop_map(|(id, gpa, size, flags, uaddr, backing)| Op::Memslot {
            id,
            gpa,
            size,
            flags,
            uaddr,
            backing,
        });
    let attributes =
        prop_oneof![4 => Just(8u64), 4 => Just(0u64), 1 => Just(1u64), 1 => Just(0x18u64)];
    let attrs = (addr(), size(), attributes).prop_map(|(gpa, size, attributes)| Op::Attrs {
        gpa,
        size,
        attributes,
    });
    let map_gpa = (
        addr(),
        size(),
        prop_oneof![
            Just(0x10u64),
            Just(0u64),
            Just(0x11),
            Just(0x2),
            Just(0x3),
            Just(0x20)
        ],
    )
        .prop_map(|(gpa, size, flags)| Op::MapGpa {
            gpa,
            npages: size / PAGE_SIZE,
            flags,
        });
    let inhibit = (addr(), level()).prop_map(|(gpa, level)| Op::Inhibit { gpa, level });
    prop_oneof![3 => memslot, 5 => attrs, 2 => map_gpa, 1 => inhibit]
}

fn apply(
    t: &mut Tracker,
    o: &mut DenseModel,
    op: &Op,
) -> (Option<cvmem::Errno>, Option<cvmem::Errno>) {
    match *op {
        Op::Memslot {
            id,
            gpa,
            size,
            flags,
            uaddr,
            backing,
        } => {
            let r = MemoryRegion {
                gmem: None,
                slot: id,
                gpa: Gpa(gpa),
                size,
                flags,
                uaddr,
                backing,
            };
            let checked = t.check_user_memory_region(&r);
            let done = t.set_user_memory_region(&r);
            assert_eq!(checked, done, "the dry run predicts the call");
            let a = done.err().map(|e| e.errno());
            let b = o
                .set_memslot(
                    id,
                    gpa,
                    size,
                    flags.guest_memfd,
                    flags.dirty_log,
                    flags.readonly,
                    uaddr,
                    backing,
                )
                .err();
            (a, b)
        }
        Op::Attrs {
            gpa,
            size,
            attributes,
        } => {
            let a = t
                .set_memory_attributes(Gpa(gpa), size, attributes)
                .err()
                .map(|e| e.errno());
            (a, o.set_memory_attributes(gpa, size, attributes).err())
        }
        Op::MapGpa { gpa, npages, flags } => {
            let a = MapGpaRange::decode(gpa, npages, flags)
                .and_then(|m| t.set_memory_attributes(m.gpa, m.size(), m.attributes()))
                .err()
                .map(|e| e.errno());
            (a, o.map_gpa(gpa, npages, flags).err())
        }
        Op::Inhibit { gpa, level } => {
            t.set_guest_inhibit(Gpa(gpa).gfn(), level).unwrap();
            o.set_guest_inhibit(gpa / PAGE_SIZE, level);
            (None, None)
        }
    }
}

/// Every observable of the tracker equals the oracle's.
fn check(t: &Tracker, o: &DenseModel, probes: &[u64]) -> Result<(), TestCaseError> {
    t.attribute_store()
        .check_invariants()
        .map_err(TestCaseError::fail)?;
    let mut gfns: Vec<u64> = probes.to_vec();
    for s in &o.slots {
        let end = s.base + s.npages;
        gfns.extend([s.base.saturating_sub(1), s.base, s.base + 1, end - 1, end]);
        for level in [Level::M2, Level::G1] {
            prop_assert_eq!(
                t.mixed_count(s.id, level),
                o.mixed_count(s.id, level),
                "mixed {} slot {}",
                level,
                s.id
            );
            let lp = level.align_down(Gfn(s.base)).0 + level.pages();
            gfns.extend([lp, lp.saturating_sub(1)]);
        }
    }
    prop_assert_eq!(t.memslots().len(), o.slots.len());
    for gfn in gfns.into_iter().filter(|&g| g < WINDOW_PAGES) {
        for access in [Access::Private, Access::Shared] {
            let gpa = gfn * PAGE_SIZE + 0x123;
            prop_assert_eq!(
                t.max_mapping_level(Gpa(gpa), access),
                o.max_mapping_level(gpa, access),
                "gfn {:#x} {:?}",
                gfn,
                access
            );
        }
        prop_assert_eq!(t.attributes(Gfn(gfn)), o.attributes(gfn));
        prop_assert_eq!(t.allowed_level(Gfn(gfn)), o.allowed_level(gfn));
        // Ranges inside one page and across 2M pages, both kinds (the store answers the first
        // from the uniform page around the start, the others by a scan).
        for len in [1, 3, 700] {
            let r = GfnRange::new(Gfn(gfn), Gfn((gfn + len).min(WINDOW_PAGES)));
            for want in [0, 8] {
                let uniform = r.gfns().all(|g| o.attributes(g) & 8 == want);
                prop_assert_eq!(t.range_has_attributes(r, want, 8), uniform, "{:?}", r);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("CVMEM_PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(10_000),
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    /// ≥ 10,000 random sequences: slots smaller than a large page, misaligned slots and host
    /// addresses, moves, deletes, dirty-log toggles, ranges crossing slots, GUEST_INHIBIT.
    #[test]
    fn tracker_agrees_with_dense_oracle(ops in prop::collection::vec(op(), 1..20), probes in prop::collection::vec(0u64..WINDOW_PAGES, 16)) {
        let mut t = Tracker::new();
        let mut o = DenseModel::new(WINDOW_PAGES);
        for op in &ops {
            let before = (t.nonzero_runs().count(), t.memslots().len());
            let (a, b) = apply(&mut t, &mut o, op);
            prop_assert_eq!(a, b, "errno for {:?}", op);
            if a.is_some() {
                prop_assert_eq!(before, (t.nonzero_runs().count(), t.memslots().len()), "failed op changed state");
            }
            check(&t, &o, &probes)?;
        }
        // Eligibility, once per sequence: the oracle checks every page of every large page.
        for s in &o.slots {
            let e = t.eligibility(s.id).unwrap();
            prop_assert_eq!(
                [e.bytes_1g, e.bytes_2m, e.bytes_4k],
                o.eligibility(s.id).unwrap(),
                "eligibility of slot {}",
                s.id
            );
        }
        // The runs, compared once per sequence: the oracle's brute-force scan is the slow part.
        let runs: Vec<_> = t.nonzero_runs().map(|r| (r.start.0, r.end.0, r.attributes)).collect();
        prop_assert_eq!(runs, o.nonzero_runs());
    }
}

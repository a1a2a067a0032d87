//! The attribute store alone against a dense array: every gfn, every run, every invariant and
//! the memory bound after every operation, over a space of several 1G regions and two 512G
//! units, with operations sized to hit every form (inline slots, blocks, dense regions, runs of
//! units) and every conversion between them.

use cvmem::{
    AttrStore, Gfn, GfnRange, Level, KVM_MEMORY_ATTRIBUTE_PRIVATE as P, WORST_BYTES_PER_GIB,
};
use proptest::prelude::*;

/// A window of 3 GiB that straddles the first 512G unit boundary (gfn 1 << 27).
const BASE: u64 = (1 << 27) - (1 << 18) - 700;
const SPACE: u64 = 3 << 18;

fn dense_runs(dense: &[bool], lo: u64, hi: u64) -> Vec<(u64, u64, u64)> {
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    for g in lo..hi {
        let a = if dense[(g - BASE) as usize] { P } else { 0 };
        match runs.last_mut() {
            Some(r) if r.2 == a => r.1 = g + 1,
            _ => runs.push((g, g + 1, a)),
        }
    }
    runs
}

fn op() -> impl Strategy<Value = (u64, u64, bool)> {
    prop_oneof![
        // single pages and short runs: inline slots and blocks
        4 => (0..SPACE, 1u64..6, any::<bool>()),
        // one 2M page's worth, unaligned
        2 => (0..SPACE, 1u64..1100, any::<bool>()),
        // large: whole 2M and 1G pages, regions appearing and collapsing
        1 => (0..SPACE, 1u64..SPACE, any::<bool>()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn store_matches_dense_array(
        ops in prop::collection::vec(op(), 1..300),
        storm in prop::collection::vec((0u64..3, 0u64..512), 0..3),
    ) {
        let mut store = AttrStore::new();
        let mut dense = vec![false; SPACE as usize];
        // Storms first: every other page of a 2M page (a block), or of a whole 1G (a dense
        // region), checked once at the end.
        for &(region, page) in &storm {
            let base = region * (1 << 18);
            let (from, count) = if page % 2 == 0 { (page * 512, 512) } else { (0, 1 << 18) };
            for i in (0..count).step_by(2) {
                let g = base + from + i;
                store.set(GfnRange::new(Gfn(BASE + g), Gfn(BASE + g + 1)), P).unwrap();
                dense[g as usize] = true;
            }
            store.check_invariants().map_err(TestCaseError::fail)?;
        }
        let all: Vec<_> = ops.iter().map(|&(s, l, v)| (s, l.min(SPACE - s), v)).collect();
        for (i, &(start, len, v)) in all.iter().enumerate() {
            if len == 0 { continue; }
            let range = GfnRange::new(Gfn(BASE + start), Gfn(BASE + start + len));
            let changed = store.set(range, if v { P } else { 0 }).unwrap();
            let slice = &mut dense[start as usize..(start + len) as usize];
            prop_assert_eq!(changed, slice.iter().any(|&d| d != v));
            slice.fill(v);
            store.check_invariants().map_err(TestCaseError::fail)?;
            // The bound: per GiB the store can hold at most a dense region's worth, plus the
            // few fixed vectors and spares.
            prop_assert!(store.heap_bytes() <= 4 * WORST_BYTES_PER_GIB + 8192,
                "{} bytes", store.heap_bytes());
            // Checking everything after every op is slow; check a window and, now and then, all.
            let (lo, hi) = if i % 32 == 0 { (BASE, BASE + SPACE) } else {
                (range.start.0.saturating_sub(600).max(BASE), (range.end.0 + 600).min(BASE + SPACE))
            };
            let runs: Vec<_> = store.runs(GfnRange::new(Gfn(lo), Gfn(hi))).map(|r| (r.start.0, r.end.0, r.attributes)).collect();
            prop_assert_eq!(&runs, &dense_runs(&dense, lo, hi));
        }
        // Per large page of the window: uniform, and of which kind (outside: shared).
        let kind_of = |x: u64| (BASE..BASE + SPACE).contains(&x) && dense[(x - BASE) as usize];
        let uniform_at = |level: Level, g: u64| {
            let page = level.align_down(Gfn(g)).0;
            let k = kind_of(page);
            let inside = page.max(BASE)..(page + level.pages()).min(BASE + SPACE);
            let outside_ok = !k || (BASE <= page && page + level.pages() <= BASE + SPACE);
            outside_ok && inside.clone().all(|x| dense[(x - BASE) as usize] == k)
        };
        let mut memo = std::collections::HashMap::new();
        for g in (BASE..BASE + SPACE).step_by(7) {
            let d = dense[(g - BASE) as usize];
            let probe = store.probe(Gfn(g));
            prop_assert_eq!(probe.private, d);
            for level in [Level::M2, Level::G1] {
                let uniform = *memo
                    .entry((level, level.align_down(Gfn(g)).0))
                    .or_insert_with(|| uniform_at(level, g));
                prop_assert_eq!(probe.uniform >= level, uniform, "gfn {:#x} level {:?}", g, level);
            }
            let run = store.run_from(Gfn(g));
            prop_assert!(run.end.0 > g);
        }
        // Boundaries as a list of runs would store them (nothing is private outside the window).
        let mut expected = usize::from(dense[0]) ;
        expected += dense.windows(2).filter(|w| w[0] != w[1]).count();
        expected += usize::from(dense[SPACE as usize - 1]);
        prop_assert_eq!(store.boundaries(), expected);
    }
}

#[test]
fn huge_uniform_ranges_cost_almost_nothing() {
    let mut store = AttrStore::new();
    // 64 TiB all private.
    store
        .set(GfnRange::new(Gfn(0), Gfn(64 << 18 << 10)), P)
        .unwrap();
    assert!(store.heap_bytes() < 1024, "{}", store.heap_bytes());
    assert_eq!(store.boundaries(), 2);
    // The whole gfn space private, then shared again.
    store
        .set(GfnRange::new(Gfn(0), Gfn(cvmem::GFN_END)), P)
        .unwrap();
    assert!(store.is_private(Gfn(cvmem::GFN_END - 1)));
    assert_eq!(store.boundaries(), 1);
    store
        .set(GfnRange::new(Gfn(0), Gfn(cvmem::GFN_END)), 0)
        .unwrap();
    assert_eq!(store.boundaries(), 0);
    store.check_invariants().unwrap();
}

#[test]
fn other_attribute_bits_are_refused_and_change_nothing() {
    let mut store = AttrStore::new();
    assert!(store.set(GfnRange::new(Gfn(0), Gfn(8)), 1).is_err());
    assert_eq!(store.boundaries(), 0);
}

/// A hostile guest's conversions over `[0, pages)` of the window: alternating pages, runs of
/// `k`, in rising, falling or interleaved order, mixed with large ranges that collapse regions.
fn hostile_ops() -> impl Strategy<Value = Vec<(u64, u64, bool)>> {
    let pattern = (1u64..10, 0u64..SPACE, 512u64..(1 << 19), 0u8..3);
    prop::collection::vec(pattern, 1..6).prop_map(|patterns| {
        let mut ops = Vec::new();
        for (i, (k, start, len, order)) in patterns.into_iter().enumerate() {
            let end = (start + len).min(SPACE);
            let mut runs: Vec<u64> = (start..end).step_by(2 * k as usize).collect();
            match order {
                1 => runs.reverse(),
                2 => runs.sort_by_key(|&r| (r / (2 * k)) % 7),
                _ => {}
            }
            for r in runs {
                ops.push((r, k.min(end - r), i % 2 == 0));
            }
            if i % 3 == 2 {
                ops.push((start, end - start, false));
            }
        }
        ops
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The documented bound holds after every operation of every sequence: never more than
    /// `AttrStore::bound_for` the span touched (about `WORST_BYTES_PER_GIB` per GiB).
    #[test]
    fn no_operation_sequence_exceeds_the_bound(ops in hostile_ops()) {
        let mut store = AttrStore::new();
        let bound = AttrStore::bound_for(GfnRange::new(Gfn(BASE), Gfn(BASE + SPACE)));
        let mut most = 0;
        for &(start, len, v) in &ops {
            let range = GfnRange::new(Gfn(BASE + start), Gfn(BASE + start + len));
            store.set(range, if v { P } else { 0 }).unwrap();
            most = most.max(store.heap_bytes());
            prop_assert!(store.heap_bytes() <= bound, "{} > {} bytes", store.heap_bytes(), bound);
        }
        store.check_invariants().map_err(TestCaseError::fail)?;
        // The bound is within a small constant of a flat bitmap of the span (3 GiB + edges).
        prop_assert!(bound <= 4 * 32768 * 105 / 100 + 16384, "bound {bound}");
        prop_assert!(most <= bound);
    }
}

#[test]
fn every_page_mixed_costs_about_a_flat_bitmap() {
    // Every other page of 4 GiB shared: every 2M page mixed, every region dense.
    let mut store = AttrStore::new();
    let gib = 1u64 << 18;
    store.set(GfnRange::new(Gfn(0), Gfn(4 * gib)), P).unwrap();
    for g in (0..4 * gib).step_by(2) {
        store.set(GfnRange::new(Gfn(g), Gfn(g + 1)), 0).unwrap();
    }
    store.check_invariants().unwrap();
    assert!(store.heap_bytes() <= AttrStore::bound_for(GfnRange::new(Gfn(0), Gfn(4 * gib))));
    // Asymptotically WORST_BYTES_PER_GIB; at 4 GiB the node and spares still show.
    const { assert!(WORST_BYTES_PER_GIB <= 32768 * 101 / 100) };
    let per_gib = store.heap_bytes() / 4;
    assert!(
        per_gib <= 32768 * 105 / 100,
        "{per_gib} bytes per GiB vs a bitmap's 32768"
    );
    assert_eq!(store.shape().dense_regions, 4);
}

/// Whole 1G entries of an existing node, aligned, converted on their own: the entry's kind bit
/// changes without a region, and the node goes once every entry is one kind again.
#[test]
fn whole_aligned_entries_of_an_existing_node() {
    const G1: u64 = 1 << 18;
    let mut store = AttrStore::new();
    store.set(GfnRange::new(Gfn(5), Gfn(6)), P).unwrap();
    for e in [1u64, 3, 511] {
        let range = GfnRange::new(Gfn(e * G1), Gfn((e + 1) * G1));
        assert!(store.set(range, P).unwrap());
        assert!(!store.set(range, P).unwrap());
        store.check_invariants().unwrap();
        assert_eq!(store.shape().regions, 1);
        let probe = store.probe(Gfn(e * G1 + 77));
        assert!(probe.private);
        assert_eq!(probe.uniform, Level::G1);
    }
    for e in [1u64, 3, 511] {
        assert!(store
            .set(GfnRange::new(Gfn(e * G1), Gfn((e + 1) * G1)), 0)
            .unwrap());
        store.check_invariants().unwrap();
    }
    assert!(store.set(GfnRange::new(Gfn(5), Gfn(6)), 0).unwrap());
    store.check_invariants().unwrap();
    assert_eq!(store.shape().nodes, 0);
    assert_eq!(store.boundaries(), 0);
    // All of a node made private one entry at a time becomes a run of units, not a node.
    store.set(GfnRange::new(Gfn(5), Gfn(6)), P).unwrap();
    store.set(GfnRange::new(Gfn(0), Gfn(G1)), P).unwrap();
    for e in 1..512u64 {
        store
            .set(GfnRange::new(Gfn(e * G1), Gfn((e + 1) * G1)), P)
            .unwrap();
    }
    store.check_invariants().unwrap();
    let shape = store.shape();
    assert_eq!(
        (
            shape.nodes,
            shape.regions,
            shape.dense_regions,
            shape.private_runs
        ),
        (0, 0, 0, 1)
    );
}

/// A region whose pages are all uniform goes when its last page of the other kind flips, by
/// whichever path: a whole 2M page (the oracle's shrunk failure), one edge page, two pages.
#[test]
fn a_region_goes_when_its_last_odd_page_flips() {
    const G1: u64 = 1 << 18;
    for (first, last) in [
        (
            GfnRange::new(Gfn(0), Gfn(512)),
            GfnRange::new(Gfn(512), Gfn(1024)),
        ),
        (
            GfnRange::new(Gfn(0), Gfn(100)),
            GfnRange::new(Gfn(100), Gfn(512)),
        ),
        (
            GfnRange::new(Gfn(300), Gfn(700)),
            GfnRange::new(Gfn(0), Gfn(300)),
        ),
    ] {
        let mut store = AttrStore::new();
        store.set(GfnRange::new(Gfn(512), Gfn(1024)), P).unwrap();
        store
            .set(GfnRange::new(Gfn(512), Gfn(G1 + 512)), P)
            .unwrap();
        store.set(first, P).unwrap();
        store.check_invariants().unwrap();
        store.set(last, P).unwrap();
        store.check_invariants().unwrap();
        assert_eq!(
            store.probe(Gfn(7)).uniform,
            Level::G1,
            "{first:?} then {last:?}"
        );
    }
}

/// A copy of a store (the concurrent front keeps two) keeps the room a parked region has for a
/// fresh range, so that the copy makes it into a region without allocating (a debug assertion
/// guards that room: this test fails in a debug build when a copy loses it), and both answer
/// alike.
#[test]
fn a_copy_keeps_the_room_its_updates_need() {
    const G1: u64 = 1 << 18;
    let mut s = AttrStore::new();
    s.set(GfnRange::new(Gfn(0), Gfn(64 * G1)), P).unwrap();
    s.set(GfnRange::new(Gfn(9 * G1 + 7), Gfn(9 * G1 + 9)), 0)
        .unwrap();
    // A region comes and goes in entry 3: parked, with its room.
    s.set(GfnRange::new(Gfn(3 * G1 + 100), Gfn(3 * G1 + 108)), 0)
        .unwrap();
    s.set(GfnRange::new(Gfn(3 * G1 + 100), Gfn(3 * G1 + 108)), P)
        .unwrap();
    let mut copy = s.clone();
    for store in [&mut s, &mut copy] {
        store
            .set(GfnRange::new(Gfn(5 * G1 + 300), Gfn(5 * G1 + 900)), 0)
            .unwrap();
        store.check_invariants().unwrap();
    }
    for gfn in [
        5 * G1 + 299,
        5 * G1 + 300,
        5 * G1 + 899,
        5 * G1 + 900,
        9 * G1 + 8,
    ] {
        assert_eq!(copy.probe(Gfn(gfn)), s.probe(Gfn(gfn)), "gfn {gfn:#x}");
    }
    assert_eq!(copy.shape(), s.shape());
}

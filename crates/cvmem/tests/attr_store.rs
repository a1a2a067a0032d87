//! The attribute store alone against a dense array: every gfn, every run, every invariant and
//! the memory bound after every operation, over a space of several 1G regions and two 512G
//! units, with operations sized to hit every form (inline slots, blocks, dense regions, runs of
//! units) and every conversion between them.

use cvmem::{AttrStore, GfnRange, Level, KVM_MEMORY_ATTRIBUTE_PRIVATE as P, WORST_BYTES_PER_GIB};
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
                store.set(GfnRange::new(BASE + g, BASE + g + 1), P).unwrap();
                dense[g as usize] = true;
            }
            store.check_invariants().map_err(TestCaseError::fail)?;
        }
        let all: Vec<_> = ops.iter().map(|&(s, l, v)| (s, l.min(SPACE - s), v)).collect();
        for (i, &(start, len, v)) in all.iter().enumerate() {
            if len == 0 { continue; }
            let range = GfnRange::new(BASE + start, BASE + start + len);
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
                (range.start.saturating_sub(600).max(BASE), (range.end + 600).min(BASE + SPACE))
            };
            let runs: Vec<_> = store.runs(GfnRange::new(lo, hi)).map(|r| (r.start, r.end, r.attributes)).collect();
            prop_assert_eq!(&runs, &dense_runs(&dense, lo, hi));
        }
        // Per large page of the window: uniform, and of which kind (outside: shared).
        let kind_of = |x: u64| (BASE..BASE + SPACE).contains(&x) && dense[(x - BASE) as usize];
        let uniform_at = |level: Level, g: u64| {
            let page = level.align_down(g);
            let k = kind_of(page);
            let inside = page.max(BASE)..(page + level.pages()).min(BASE + SPACE);
            let outside_ok = !k || (BASE <= page && page + level.pages() <= BASE + SPACE);
            outside_ok && inside.clone().all(|x| dense[(x - BASE) as usize] == k)
        };
        let mut memo = std::collections::HashMap::new();
        for g in (BASE..BASE + SPACE).step_by(7) {
            let d = dense[(g - BASE) as usize];
            let probe = store.probe(g);
            prop_assert_eq!(probe.private, d);
            for level in [Level::M2, Level::G1] {
                let uniform = *memo
                    .entry((level, level.align_down(g)))
                    .or_insert_with(|| uniform_at(level, g));
                prop_assert_eq!(probe.uniform >= level, uniform, "gfn {:#x} level {:?}", g, level);
            }
            let run = store.run_from(g);
            prop_assert!(run.end > g);
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
    store.set(GfnRange::new(0, 64 << 18 << 10), P).unwrap();
    assert!(store.heap_bytes() < 1024, "{}", store.heap_bytes());
    assert_eq!(store.boundaries(), 2);
    // The whole gfn space private, then shared again.
    store.set(GfnRange::new(0, cvmem::GFN_END), P).unwrap();
    assert!(store.is_private(cvmem::GFN_END - 1));
    assert_eq!(store.boundaries(), 1);
    store.set(GfnRange::new(0, cvmem::GFN_END), 0).unwrap();
    assert_eq!(store.boundaries(), 0);
    store.check_invariants().unwrap();
}

#[test]
fn other_attribute_bits_are_refused_and_change_nothing() {
    let mut store = AttrStore::new();
    assert!(store.set(GfnRange::new(0, 8), 1).is_err());
    assert_eq!(store.boundaries(), 0);
}

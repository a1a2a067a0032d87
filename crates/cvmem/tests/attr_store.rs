//! The attribute store alone against a dense array, with enough operations to split, merge and
//! drop chunks: every gfn, every run, every invariant after every operation.

use cvmem::{AttrStore, GfnRange};
use proptest::prelude::*;

const SPACE: u64 = 6000;

fn dense_runs(dense: &[u64], range: GfnRange) -> Vec<(u64, u64, u64)> {
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    for g in range.start..range.end {
        let a = dense[g as usize];
        match runs.last_mut() {
            Some(r) if r.2 == a => r.1 = g + 1,
            _ => runs.push((g, g + 1, a)),
        }
    }
    runs
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn store_matches_dense_array(
        ops in prop::collection::vec((0..SPACE, 1u64..40, prop_oneof![Just(0u64), Just(8), Just(1), Just(9)]), 1..500),
        big in prop::collection::vec((0..SPACE, 0..SPACE, 0u64..3), 0..6),
    ) {
        let mut store = AttrStore::new();
        // Past the modelled space everything stays 0; the store's space is the whole gfn range.
        let mut dense = vec![0u64; SPACE as usize + 64];
        let all = ops.iter().map(|&(s, l, a)| (s, (s + l).min(SPACE), a))
            .chain(big.iter().map(|&(a, b, v)| (a.min(b), a.max(b) + 1, v)));
        for (start, end, attrs) in all {
            let range = GfnRange::new(start, end);
            let changed = store.set(range, attrs).unwrap();
            let was_uniform = (start..end).all(|g| dense[g as usize] == attrs);
            prop_assert_eq!(changed, !was_uniform);
            for g in start..end {
                dense[g as usize] = attrs;
            }
            store.check_invariants().map_err(TestCaseError::fail)?;
            let window = GfnRange::new(start.saturating_sub(50), (end + 50).min(SPACE));
            let runs: Vec<_> = store.runs(window).map(|r| (r.start, r.end, r.attributes)).collect();
            prop_assert_eq!(runs, dense_runs(&dense, window));
        }
        for g in 0..SPACE {
            prop_assert_eq!(store.get(g), dense[g as usize]);
            let run = store.run_at(g);
            prop_assert!(run.start <= g && g < run.end);
        }
        prop_assert!(store.heap_bytes() >= store.boundaries() * 16);
    }
}

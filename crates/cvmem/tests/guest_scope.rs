//! The guest's bound: a guest's conversion converts exactly the gfns of its range that memslots
//! hold, and to private is refused whenever any gfn of the range lies outside them — checked
//! page by page against brute force over random memslot layouts.

use cvmem::{Errno, Gfn, GfnRange, Kind, MemoryRegion, Tracker, PAGE_SIZE};
use proptest::prelude::*;

/// Up to four memslots in the first 256 pages (some adjacent), as (first page, pages).
fn layout() -> impl Strategy<Value = Vec<(u64, u64)>> {
    proptest::collection::vec((0u64..64, 1u64..64), 0..4).prop_map(|slots| {
        let mut at = 0;
        slots
            .into_iter()
            .map(|(gap, pages)| {
                let start = at + if gap < 16 { 0 } else { gap };
                at = start + pages;
                (start, pages)
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn the_scope_is_the_range_inside_memslots(
        slots in layout(),
        start in 0u64..300,
        len in 1u64..300,
        private in any::<bool>(),
    ) {
        let mut t = Tracker::new();
        for (i, &(first, pages)) in slots.iter().enumerate() {
            t.set_user_memory_region(&MemoryRegion {
                slot: i as u32,
                gpa: cvmem::Gpa(first * PAGE_SIZE),
                size: pages * PAGE_SIZE,
                ..Default::default()
            })
            .unwrap();
        }
        let range = GfnRange::new(Gfn(start), Gfn(start + len));
        let inside = |g: u64| slots.iter().any(|&(f, p)| (f..f + p).contains(&g));
        let want: Vec<u64> = range.gfns().filter(|&g| inside(g)).collect();
        match t.guest_scope(range, Kind::from_private(private)) {
            Ok(scope) => {
                prop_assert!(!private || want.len() as u64 == len);
                let got: Vec<u64> = scope.parts.iter().flat_map(|r| r.gfns()).collect();
                prop_assert_eq!(&got, &want);
                prop_assert_eq!(scope.outside_pages, len - want.len() as u64);
                // Parts are maximal: none touches the next.
                for w in scope.parts.windows(2) {
                    prop_assert!(w[0].end < w[1].start);
                }
            }
            Err(e) => {
                prop_assert!(private && (want.len() as u64) < len, "{e}");
                prop_assert_eq!(e.errno(), Errno::EINVAL);
            }
        }
    }
}

//! A node indexes its 1G regions inline while it holds a few and through a table beyond: the
//! store answers the same across both forms and the moves between them (hysteresis included).

use cvmem::{AttrStore, Gfn, GfnRange, Level, KVM_MEMORY_ATTRIBUTE_PRIVATE};

const P: u64 = KVM_MEMORY_ATTRIBUTE_PRIVATE;
const G1: u64 = 1 << 18;

/// One mixed 2M page (its first 4K private) in 1G entry `e` of the first 512G unit.
fn mix(s: &mut AttrStore, e: u64, private: bool) {
    let gfn = e * G1 + 7 * 512;
    s.set(GfnRange::new(gfn, gfn + 1), if private { P } else { 0 })
        .unwrap();
}

fn check(s: &AttrStore, mixed: &[u64]) {
    s.check_invariants().unwrap();
    for e in 0..40u64 {
        let gfn = e * G1 + 7 * 512;
        let is_mixed = mixed.contains(&e);
        assert_eq!(s.is_private(Gfn(gfn)), is_mixed, "entry {e}");
        let probe = s.probe(Gfn(gfn + 1));
        let want = if is_mixed { Level::K4 } else { Level::G1 };
        assert_eq!(probe.uniform, want, "entry {e}");
        assert_eq!(s.is_mixed_2m(Gfn(gfn)), is_mixed, "entry {e}");
    }
}

#[test]
fn regions_are_found_through_either_index() {
    let mut s = AttrStore::new();
    let mut mixed = Vec::new();
    // Grow past the inline index (8) one region at a time, in scattered order.
    for e in [3, 17, 0, 25, 9, 31, 12, 5, 20, 1, 38, 14, 27, 8, 33, 2] {
        mix(&mut s, e, true);
        mixed.push(e);
        check(&s, &mixed);
    }
    let with_table = s.heap_bytes();
    // Shrink below the way back (4), swap-removing from the middle.
    for e in [25, 3, 38, 12, 0, 33, 9, 17, 1, 20, 14, 31] {
        mix(&mut s, e, false);
        mixed.retain(|&m| m != e);
        check(&s, &mixed);
    }
    assert_eq!(mixed.len(), 4);
    assert!(
        s.heap_bytes() + 1024 <= with_table,
        "the table was given back"
    );
    // And up again.
    for e in [10, 11, 12, 13, 14, 15] {
        mix(&mut s, e, true);
        mixed.push(e);
        check(&s, &mixed);
    }
}

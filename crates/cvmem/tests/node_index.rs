//! A node indexes its 1G regions inline while it holds a few and through a table beyond: the
//! store answers the same across both forms and the moves between them (hysteresis included).

use cvmem::{AttrStore, Gfn, GfnRange, Level, KVM_MEMORY_ATTRIBUTE_PRIVATE};

const P: u64 = KVM_MEMORY_ATTRIBUTE_PRIVATE;
const G1: u64 = 1 << 18;

/// One mixed 2M page (its first 4K private) in 1G entry `e` of the first 512G unit.
fn mix(s: &mut AttrStore, e: u64, private: bool) {
    let gfn = e * G1 + 7 * 512;
    s.set(
        GfnRange::new(Gfn(gfn), Gfn(gfn + 1)),
        if private { P } else { 0 },
    )
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

/// A node that held many regions gives back the room once most are gone, and still takes new
/// ones (up to two per set, after dropping some) without the room it reserved for them.
#[test]
fn a_churn_of_regions_leaves_little_room_behind() {
    let mut s = AttrStore::new();
    let mut mixed: Vec<u64> = (0..40).collect();
    for &e in &mixed {
        mix(&mut s, e, true);
    }
    let full = s.heap_bytes();
    for e in 0..34 {
        mix(&mut s, e, false);
    }
    mixed.retain(|&e| e >= 34);
    check(&s, &mixed);
    let after = s.heap_bytes();
    assert!(
        after + 25 * 150 <= full,
        "room for ~34 regions given back: {full} -> {after} bytes"
    );
    // A set that drops the regions of whole entries (34-39) and makes two at its ends.
    let (lo, hi) = (30 * G1 + 100, 45 * G1 + 100);
    s.set(GfnRange::new(Gfn(lo), Gfn(hi)), P).unwrap();
    s.check_invariants().unwrap();
    for (e, below) in [(30, false), (45, true)] {
        assert!(s.is_mixed_2m(Gfn(e * G1)), "entry {e}");
        assert_eq!(s.is_private(Gfn(e * G1 + 99)), below);
        assert_eq!(s.is_private(Gfn(e * G1 + 100)), !below);
    }
    assert_eq!(s.probe(Gfn(37 * G1)).uniform, Level::G1);
    assert_eq!(s.shape().regions, 2, "entries 30 and 45");
}

/// Regions that come and go in a dozen entries, in a scattered order: parked regions are taken
/// back in their own entry and in others, through the inline index and the table, and the
/// store answers as if each were made afresh.
#[test]
fn parked_regions_are_reused_in_any_entry() {
    for keep in [1u64, 10] {
        let mut s = AttrStore::new();
        // Regions that stay (one, or ten so that the node uses its table), so the node stays.
        let mut mixed: Vec<u64> = (40 - keep..40).collect();
        for &e in &mixed {
            mix(&mut s, e, true);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..600 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let e = x % 12;
            let now = !mixed.contains(&e);
            mix(&mut s, e, now);
            if now {
                mixed.push(e);
            } else {
                mixed.retain(|&m| m != e);
            }
            check(&s, &mixed);
        }
    }
}

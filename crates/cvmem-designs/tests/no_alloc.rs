//! Once a conversion has reserved what it needs, carrying it out allocates nothing: counted by
//! the process's allocator (this file is its own test binary, with one test, so that nothing
//! else allocates meanwhile). An allocation there would be infallible — an out-of-memory abort
//! where the store promises `NoMemory` and no change.

use cvmem::{AttrStore, Gfn, GfnRange, KVM_MEMORY_ATTRIBUTE_PRIVATE as P};
use cvmem_designs::meter::{self, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Gfns of a 512 GiB unit: whole units are kept as runs of all-private units.
const UNIT: u64 = 1 << 27;

fn units(a: u64, b: u64) -> GfnRange {
    GfnRange::new(Gfn(a * UNIT), Gfn(b * UNIT))
}

/// Runs `f`, asserting that it allocated nothing.
fn without_allocating(what: &str, f: impl FnOnce()) {
    let before = meter::allocations();
    f();
    assert_eq!(meter::allocations(), before, "{what} allocated");
}

#[test]
fn conversions_with_room_allocate_nothing() {
    let mut s = AttrStore::new();
    // Runs of private units, then fewer: the run list keeps room for three more.
    for u in [2, 4, 6, 8, 10] {
        s.set(units(u, u + 1), P).unwrap();
    }
    for u in [6, 8, 10] {
        s.set(units(u, u + 1), 0).unwrap();
    }
    // Each adds, splits, merges or drops a run: at most one more entry, within that room.
    let cases = [
        (units(0, 1), P, "a run before every other"),
        (units(12, 13), P, "a run after every other"),
        (units(6, 7), P, "a run between two"),
        (units(1, 2), P, "a run joining two"),
        (units(1, 2), 0, "a run split"),
        (units(12, 13), 0, "a run dropped"),
    ];
    for (range, attributes, what) in cases {
        without_allocating(what, || {
            s.set(range, attributes).unwrap();
        });
        s.check_invariants().unwrap();
        // The room taken is made again before the next case (outside the count).
        s.set(units(20, 21), P).unwrap();
        s.set(units(20, 21), 0).unwrap();
    }
    // A new memslot's start-up conversion, once `reserve_span` made ready what it needs: a
    // node for a partial unit, its regions for partial 1G pages, a unit run.
    let slots = [
        GfnRange::new(Gfn(30 * UNIT + 7), Gfn(30 * UNIT + (3 << 18) + 9)),
        GfnRange::new(Gfn(31 * UNIT - 5), Gfn(33 * UNIT + 11)),
        units(40, 42),
    ];
    for range in slots {
        s.reserve_span(range).unwrap();
        without_allocating(&format!("the start-up conversion of {range:?}"), || {
            s.set(range, P).unwrap();
        });
        s.check_invariants().unwrap();
    }
}

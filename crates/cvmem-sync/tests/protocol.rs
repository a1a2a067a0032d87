//! The publication and invalidation protocols step by step, from inside a writer's zap callback
//! (where a conversion is in progress but not yet stored) and around it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use cvmem::{
    Access, Gfn, GfnRange, Gpa, Level, MaxLevel, MemoryRegion, SlotFlags, Tracker,
    KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE,
};
use cvmem_sync::{ConcurrentTracker, FaultAnswer, FaultTicket};

const G1: u64 = 1 << 30;
const M2: u64 = 2 << 20;
const K4: u64 = 4096;

/// 4 GiB guest_memfd slot at 0, all private.
fn private_guest() -> ConcurrentTracker {
    let vm = ConcurrentTracker::new(Tracker::new());
    let flags = SlotFlags {
        guest_memfd: true,
        ..Default::default()
    };
    vm.set_user_memory_region(&MemoryRegion {
        slot: 0,
        gpa: Gpa(0),
        size: 4 * G1,
        flags,
        ..Default::default()
    })
    .unwrap();
    vm.set_memory_attributes(Gpa(0), 4 * G1, PRIVATE).unwrap();
    vm
}

fn ready(answer: FaultAnswer) -> FaultTicket {
    match answer {
        FaultAnswer::Ready(t) => t,
        FaultAnswer::Retry => panic!("expected an answer, got Retry"),
    }
}

#[test]
fn a_fault_during_a_conversion_never_gets_a_huge_page_across_it() {
    let vm = private_guest();
    let converted = 0x1000_0000; // one 4K page made shared
    let before = ready(vm.fault(Gpa(converted + K4), Access::Private));
    assert_eq!(before.answer, MaxLevel::Level(Level::G1));
    let generation = vm.generation();
    vm.set_memory_attributes_with(Gpa(converted), K4, 0, |range| {
        assert_eq!(
            range,
            GfnRange::new(Gfn(converted / K4), Gfn(converted / K4 + 1))
        );
        // Not stored yet: readers see the old state, and nothing blocks them.
        assert_eq!(vm.attributes(Gfn(converted / K4)), PRIVATE);
        assert_eq!(vm.generation(), generation);
        // The converted gfn itself: retry.
        assert_eq!(
            vm.fault(Gpa(converted), Access::Private),
            FaultAnswer::Retry
        );
        // An unchanged gfn whose 1G (and 2M) page straddles the range: the old state would
        // allow 1G; mapping it would cover the page being converted (the 2025 KVM bug).
        assert_eq!(
            vm.fault(Gpa(converted + K4), Access::Private),
            FaultAnswer::Retry
        );
        assert_eq!(
            vm.fault(Gpa(converted - K4), Access::Private),
            FaultAnswer::Retry
        );
        // Another 1G page is not affected.
        let elsewhere = ready(vm.fault(Gpa(2 * G1), Access::Private));
        assert_eq!(elsewhere.answer, MaxLevel::Level(Level::G1));
        assert!(!vm.is_stale(&elsewhere));
        // A ticket issued before the conversion began is stale.
        assert!(vm.is_stale(&before));
    })
    .unwrap();
    assert_eq!(vm.generation(), generation + 1);
    assert!(vm.is_stale(&before));
    // After the conversion: the new state, at the level it allows.
    let after = ready(vm.fault(Gpa(converted + K4), Access::Private));
    assert_eq!(after.answer, MaxLevel::Level(Level::K4));
    assert_eq!(after.generation, generation + 1);
    assert!(!vm.is_stale(&after));
    let neighbour = ready(vm.fault(Gpa(converted + M2), Access::Private));
    assert_eq!(neighbour.answer, MaxLevel::Level(Level::M2));
    assert!(matches!(
        ready(vm.fault(Gpa(converted), Access::Private)).answer,
        MaxLevel::MemoryFault(_)
    ));
}

#[test]
fn a_ticket_outside_the_range_holds_until_the_change_ends() {
    let vm = private_guest();
    vm.set_memory_attributes_with(Gpa(0), M2, 0, |_| {
        let t = ready(vm.fault(Gpa(3 * G1), Access::Private));
        assert!(!vm.is_stale(&t), "same invalidation, disjoint range");
        // KVM also retries when the sequence moved, whatever the range.
    })
    .unwrap();
    let t = ready(vm.fault(Gpa(3 * G1), Access::Private));
    assert!(!vm.is_stale(&t));
    vm.set_memory_attributes(Gpa(G1), K4, 0).unwrap();
    assert!(vm.is_stale(&t), "the sequence moved");
}

#[test]
fn an_unchanged_request_neither_invalidates_nor_counts() {
    let vm = private_guest();
    let t = ready(vm.fault(Gpa(0), Access::Private));
    let generation = vm.generation();
    let mut zapped = false;
    let changed = vm
        .set_memory_attributes_with(Gpa(0), G1, PRIVATE, |_| zapped = true)
        .unwrap();
    assert!(!changed && !zapped);
    assert_eq!(vm.generation(), generation);
    assert!(!vm.is_stale(&t), "KVM's early exit: no invalidation");
    // A rejected request neither.
    let err = vm.set_memory_attributes(Gpa(1), K4, 0).unwrap_err();
    assert_eq!(err.errno(), cvmem::Errno::EINVAL);
    assert!(!vm.is_stale(&t));
    assert_eq!(vm.generation(), generation);
}

#[test]
fn memslot_changes_invalidate_old_and_new_ranges() {
    let vm = ConcurrentTracker::default();
    let slot = |gpa, size, dirty_log| MemoryRegion {
        slot: 1,
        gpa,
        size,
        flags: SlotFlags {
            dirty_log,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut seen = Vec::new();
    vm.set_user_memory_region_with(&slot(Gpa(G1), G1, false), |r| seen.push(r))
        .unwrap();
    vm.set_user_memory_region_with(&slot(Gpa(3 * G1), G1, false), |r| seen.push(r))
        .unwrap();
    vm.set_user_memory_region_with(&slot(Gpa(3 * G1), G1, true), |r| seen.push(r))
        .unwrap();
    vm.set_user_memory_region_with(&slot(Gpa(3 * G1), 0, false), |r| seen.push(r))
        .unwrap();
    let gfns = |a: u64, b: u64| GfnRange::new(Gfn(a / K4), Gfn(b / K4));
    assert_eq!(
        seen,
        [
            gfns(G1, 2 * G1),
            gfns(G1, 4 * G1),
            gfns(3 * G1, 4 * G1),
            gfns(3 * G1, 4 * G1)
        ]
    );
    assert_eq!(vm.generation(), 4);
    assert_eq!(
        vm.max_mapping_level(Gpa(3 * G1), Access::Shared),
        MaxLevel::NoSlot
    );
}

/// A memslot the tests add and remove (4 GiB up, 2 MiB), and its request.
fn extra_slot(size: u64) -> MemoryRegion {
    MemoryRegion {
        slot: 7,
        gpa: Gpa(8 * G1),
        size,
        ..Default::default()
    }
}

#[test]
fn a_memslot_change_blocks_no_reader_and_is_visible_before_it_returns() {
    let vm = private_guest();
    let generation = vm.generation();
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    thread::scope(|s| {
        // A slow reader holds the published copy.
        let vm = &vm;
        s.spawn(move || {
            vm.read(|snap| {
                held_tx.send(snap.generation()).unwrap();
                release_rx.recv().unwrap();
            })
        });
        assert_eq!(held_rx.recv().unwrap(), generation);
        // The writer applies to the other copy, publishes it, then waits for the slow reader.
        let writer = s.spawn(|| vm.set_user_memory_region(&extra_slot(M2)).unwrap());
        // Other readers are not blocked and see the new state while the writer waits.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while vm.generation() == generation {
            assert!(std::time::Instant::now() < deadline, "reader starved");
            thread::yield_now();
        }
        assert_eq!(
            vm.max_mapping_level(Gpa(8 * G1), Access::Shared),
            MaxLevel::Level(Level::M2)
        );
        assert!(
            !writer.is_finished(),
            "the writer waits for the slow reader"
        );
        release_tx.send(()).unwrap();
        writer.join().unwrap();
    });
    // Both copies now hold the change: the next writes and reads agree.
    vm.set_memory_attributes(Gpa(K4), K4, 0).unwrap();
    for _ in 0..4 {
        assert!(vm.read(|s| s.tracker().memslot(7).is_some()));
        assert_eq!(vm.attributes(Gfn(1)), 0);
    }
}

#[test]
fn a_conversion_never_waits_for_a_reader_and_an_overlapped_read_runs_again() {
    let vm = private_guest();
    let generation = vm.generation();
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    thread::scope(|s| {
        let vm = &vm;
        let reader = s.spawn(move || {
            let mut runs = 0;
            let seen = vm.read(|snap| {
                runs += 1;
                if runs == 1 {
                    // The first run stays inside the read until the conversion is done.
                    held_tx.send(snap.generation()).unwrap();
                    release_rx.recv().unwrap();
                }
                (snap.generation(), snap.tracker().attributes(Gfn(0)))
            });
            (runs, seen)
        });
        assert_eq!(held_rx.recv().unwrap(), generation);
        // The one copy is written while the reader is inside its read: nothing waits.
        assert!(vm.set_memory_attributes(Gpa(0), K4, 0).unwrap());
        assert_eq!(vm.generation(), generation + 1);
        release_tx.send(()).unwrap();
        // The overlapped run is thrown away: the read answers from the state after.
        let (runs, seen) = reader.join().unwrap();
        assert_eq!(runs, 2);
        assert_eq!(seen, (generation + 1, 0));
    });
}

#[test]
fn a_writer_that_panics_leaves_a_consistent_state() {
    let vm = private_guest();
    let generation = vm.generation();
    let range = GfnRange::new(Gfn(8 * G1 / K4), Gfn(8 * G1 / K4 + 512));
    // Panics half-way through the first copy: nothing published.
    let r = catch_unwind(AssertUnwindSafe(|| {
        vm.update(
            range,
            |_| {},
            |t| -> (bool, ()) {
                t.set_user_memory_region(&extra_slot(M2)).unwrap();
                panic!("injected");
            },
        )
    }));
    assert!(r.is_err());
    assert_eq!(vm.generation(), generation);
    assert!(vm.read(|s| s.tracker().memslot(7).is_none()));
    assert!(matches!(
        vm.fault(Gpa(0), Access::Private),
        FaultAnswer::Ready(_)
    ));
    // Panics on the second copy, after publishing the first.
    let mut calls = 0;
    let r = catch_unwind(AssertUnwindSafe(|| {
        vm.update(
            range,
            |_| {},
            |t| {
                calls += 1;
                t.set_user_memory_region(&extra_slot(M2)).unwrap();
                assert!(calls < 2, "injected");
                (true, ())
            },
        )
    }));
    assert!(r.is_err());
    assert_eq!(vm.generation(), generation + 1);
    assert!(vm.read(|s| s.tracker().memslot(7).is_some()));
    // The next writers repair the stale copy: every later state is the same on both copies.
    for k in 1..5u64 {
        // Deleted (size 0) and made again, with a new size each time.
        let size = (k % 2 == 0).then_some(k * M2);
        vm.set_user_memory_region(&extra_slot(size.unwrap_or(0)))
            .unwrap();
        vm.set_memory_attributes(Gpa(k * K4), K4, 0).unwrap();
        for _ in 0..3 {
            assert_eq!(vm.read(|s| s.tracker().memslot(7).map(|m| m.size())), size);
            assert!(vm.range_has_attributes(GfnRange::new(Gfn(1), Gfn(k + 1)), 0, PRIVATE));
            assert_eq!(vm.attributes(Gfn(k + 1)), PRIVATE);
        }
    }
    assert!(matches!(
        vm.fault(Gpa(K4), Access::Shared),
        FaultAnswer::Ready(_)
    ));
}

#[test]
fn a_conversion_through_a_copy_is_refused_and_changes_nothing() {
    // The VM's attributes are the front's to write, once: a copy refuses to write them.
    let vm = private_guest();
    let generation = vm.generation();
    let refused = vm.update(
        GfnRange::new(Gfn(0), Gfn(1)),
        |_| {},
        |t| {
            let r = t.set_memory_attributes(Gpa(0), K4, 0);
            (r.is_ok(), r)
        },
    );
    assert!(matches!(refused, Err(cvmem::Error::Unsupported { .. })));
    assert_eq!(vm.generation(), generation);
    assert_eq!(vm.attributes(Gfn(0)), PRIVATE);
}

/// Conversions are checked by the VM's rule kept with the writer, not read from a copy: the rule
/// refuses what the tracker refuses, on every conversion path, and follows the tracker when a
/// published change gives it another rule.
#[test]
fn conversions_are_checked_by_the_vms_rule_on_every_path() {
    use cvmem::{AttrMode, Error, MapGpaRange, Unsupported};
    let vm = private_guest();
    let range = GfnRange::new(Gfn(0), Gfn(1));
    let unsupported = |r: Result<bool, Error>| {
        matches!(r, Err(Error::UnsupportedAttributes { attributes: 2, .. }))
    };
    assert!(unsupported(vm.set_memory_attributes(Gpa(0), K4, 2)));
    assert!(unsupported(
        vm.begin_update(range).commit_attributes(range, 2)
    ));
    assert_eq!(vm.attributes(Gfn(0)), PRIVATE);

    // The VM now keeps PRIVATE per guest_memfd: KVM_SET_MEMORY_ATTRIBUTES refuses it.
    vm.update(
        GfnRange::new(Gfn(0), Gfn(0)),
        |_| {},
        |t| {
            *t = t.clone().with_attr_mode(AttrMode::PerGmem);
            (true, ())
        },
    );
    let generation = vm.generation();
    let per_gmem = |r: Result<bool, Error>| {
        matches!(
            r,
            Err(Error::Unsupported {
                what: Unsupported::AttributesPerGmem
            })
        )
    };
    assert!(per_gmem(vm.set_memory_attributes(Gpa(0), K4, PRIVATE)));
    assert!(per_gmem(
        vm.begin_update(range).commit_attributes(range, PRIVATE)
    ));
    let request = MapGpaRange::decode(0, 1, 1 << 4).unwrap();
    assert!(per_gmem(vm.guest_map_gpa_range(&request, |_| {})));
    assert!(per_gmem(vm.map_gpa_range(&request, |_| {})));
    assert_eq!(
        vm.generation(),
        generation,
        "a refused conversion changed nothing"
    );
}

/// A change that publishes a new rule and then panics on the other copy never returns to the
/// writer that would refresh the kept check: the next writer, repairing the copy, refreshes it.
#[test]
fn the_writers_check_follows_a_change_whose_second_copy_panicked() {
    use cvmem::{AttrMode, Error, Unsupported};
    let vm = private_guest();
    // The VM's rule changes (PRIVATE now per guest_memfd) and is published; the change then
    // panics on the other copy, so it never returns to the writer.
    let mut calls = 0;
    let r = catch_unwind(AssertUnwindSafe(|| {
        vm.update(
            GfnRange::new(Gfn(0), Gfn(0)),
            |_| {},
            |t| {
                calls += 1;
                *t = t.clone().with_attr_mode(AttrMode::PerGmem);
                assert!(calls < 2, "injected");
                (true, ())
            },
        )
    }));
    assert!(r.is_err());
    assert_eq!(
        vm.read(|s| s.tracker().attribute_check().mode()),
        AttrMode::PerGmem
    );
    let generation = vm.generation();
    // The next conversion is checked by the published rule, not the one the writers kept.
    assert!(matches!(
        vm.set_memory_attributes(Gpa(0), K4, PRIVATE),
        Err(Error::Unsupported {
            what: Unsupported::AttributesPerGmem
        })
    ));
    assert_eq!(
        vm.generation(),
        generation,
        "the refused conversion changed nothing"
    );
}

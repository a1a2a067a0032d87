//! Model tests of the publication and invalidation protocols.
//!
//! With loom, every interleaving (up to a preemption bound) of the threads is explored, on the
//! crate's real code (its locks and atomics become loom's):
//! `RUSTFLAGS="--cfg loom" cargo test -p cvmem-sync --test loom --release`.
//! Without loom (plain `cargo test`), the same scenarios run a few hundred times on std threads.

#[cfg(loom)]
use loom::{
    sync::atomic::{AtomicU64, Ordering},
    sync::{Arc, Mutex},
    thread,
};
#[cfg(not(loom))]
use std::{
    sync::atomic::{AtomicU64, Ordering},
    sync::{Arc, Mutex},
    thread,
};

use cvmem::{
    Access, AttrMode, GfnRange, GmemBinding, GmemFlags, GmemId, GmemOffset, Gpa, Level, MaxLevel,
    MemoryRegion, SlotFlags, Tracker, KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE,
};
use cvmem_sync::{Apply, ConcurrentTracker, FaultAnswer, LeftRight};

/// Explores `f` with at most `preemptions` forced switches between threads per execution
/// (`LOOM_PREEMPTIONS` overrides it); every execution also explores which store each relaxed
/// load may read, so the one-copy scenarios need low bounds to finish (times in each).
fn model(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    #[cfg(loom)]
    {
        use std::sync::atomic::AtomicUsize;
        let runs = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&runs);
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(
            std::env::var("LOOM_PREEMPTIONS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(preemptions),
        );
        // Building a store takes more steps than loom's default 1,000 per execution.
        builder.max_branches = 100_000;
        builder.check(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            f()
        });
        eprintln!(
            "loom explored {} interleavings",
            runs.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    #[cfg(not(loom))]
    {
        let _ = preemptions;
        for _ in 0..300 {
            f();
        }
    }
}

/// Two writes of a two-word value, each applied once per copy; two readers. Every read sees
/// both words equal (no torn state), never an older value after a newer one, and never an
/// older value than a write that has returned.
#[test]
fn publication_is_atomic_monotonic_and_applied_once_per_copy() {
    model(3, || {
        let lr = Arc::new(LeftRight::new([0u64; 2]));
        let committed = Arc::new(AtomicU64::new(0));
        let writer = {
            let (lr, committed) = (Arc::clone(&lr), Arc::clone(&committed));
            thread::spawn(move || {
                for k in 1..=2 {
                    lr.writer().apply(|v| {
                        v[0] += 1;
                        v[1] += 1;
                        Apply::Changed(())
                    });
                    committed.store(k, Ordering::Release);
                }
            })
        };
        let reader = {
            let (lr, committed) = (Arc::clone(&lr), Arc::clone(&committed));
            thread::spawn(move || {
                let mut last = 0;
                for _ in 0..2 {
                    let done = committed.load(Ordering::Acquire);
                    let v = lr.read(|v| *v);
                    assert_eq!(v[0], v[1], "torn state");
                    assert!(v[0] >= last, "went back in time");
                    assert!(v[0] >= done, "missed a committed write");
                    last = v[0];
                }
            })
        };
        let v = lr.read(|v| *v);
        assert_eq!(v[0], v[1]);
        writer.join().unwrap();
        reader.join().unwrap();
        // Both copies hold exactly two increments: the next change sees [2, 2] on each.
        lr.writer().apply(|v| {
            assert_eq!(*v, [2, 2]);
            Apply::Unchanged(())
        });
        lr.writer().apply(|v| {
            assert_eq!(*v, [2, 2]);
            v[0] = 3;
            v[1] = 3;
            Apply::Changed(())
        });
        assert_eq!(lr.read(|v| *v), [3, 3]);
    });
}

/// Slot 0: 4 MiB of guest_memfd memory at gpa 0, bound to `gmem` if given.
fn small_slot(gmem: Option<GmemBinding>) -> MemoryRegion {
    MemoryRegion {
        slot: 0,
        gpa: Gpa(0),
        size: 4 << 20,
        flags: SlotFlags {
            guest_memfd: true,
            ..Default::default()
        },
        gmem,
        ..Default::default()
    }
}

/// A 4 MiB guest_memfd slot, all private (2M pages allowed).
fn small_guest() -> ConcurrentTracker {
    let mut t = Tracker::new();
    t.set_user_memory_region(&small_slot(None)).unwrap();
    t.set_memory_attributes(Gpa(0), 4 << 20, PRIVATE).unwrap();
    ConcurrentTracker::new(t)
}

/// A vCPU faults on gfn 1 (unchanged) while another makes gfn 0 shared; both 2M pages' worth of
/// mappings go through a mock `mmu_lock`. Whatever the interleaving, no 2M leaf over gfn 0
/// survives: the fault retries, or its stale ticket is caught under the lock, or the zap removes
/// what it installed first. A fault in the other 2M page is never wrong either.
/// Under loom: two preemptions, 147,842 executions on this project's host (143,685 in 24 s
/// before the fault read the memslots' words; one preemption: 12,507 in 2 s). Before the fault looked the store up unchecked inside its one validated read, the
/// store's own retry loop spun inside it and two preemptions did not finish.
#[test]
fn a_fault_racing_a_conversion_never_keeps_a_huge_page_across_it() {
    model(2, || {
        let vm = Arc::new(small_guest());
        let leaves: Arc<Mutex<Vec<(u64, Level)>>> = Arc::new(Mutex::new(Vec::new()));
        let converter = {
            let (vm, leaves) = (Arc::clone(&vm), Arc::clone(&leaves));
            thread::spawn(move || {
                let zap = |r: GfnRange| {
                    leaves.lock().unwrap().retain(|&(start, level)| {
                        start + level.pages() <= r.start.0 || r.end.0 <= start
                    })
                };
                assert!(vm.set_memory_attributes_with(Gpa(0), 4096, 0, zap).unwrap());
            })
        };
        let vcpus: Vec<_> = [0x1000u64, (2 << 20) + 0x1000]
            .into_iter()
            .map(|gpa| {
                let (vm, leaves) = (Arc::clone(&vm), Arc::clone(&leaves));
                thread::spawn(move || {
                    let FaultAnswer::Ready(ticket) = vm.fault(Gpa(gpa), Access::Private) else {
                        return;
                    };
                    assert_eq!(ticket.answer, expected(gpa, ticket.generation));
                    if let MaxLevel::Level(level) = ticket.answer {
                        let mut leaves = leaves.lock().unwrap();
                        if !vm.is_stale(&ticket) {
                            leaves.push((ticket.range().start.0, level));
                        }
                    }
                })
            })
            .collect();
        converter.join().unwrap();
        for v in vcpus {
            v.join().unwrap();
        }
        for &(start, level) in leaves.lock().unwrap().iter() {
            let now = vm.max_mapping_level(Gpa(start << 12), Access::Private);
            assert!(
                matches!(now, MaxLevel::Level(l) if l >= level),
                "leaf {start:#x} {level} outlived the conversion ({now:?})"
            );
        }
    });
}

/// A 4 MiB guest_memfd slot bound to a file of 2M folios that keeps PRIVATE (all private).
fn small_file_guest() -> ConcurrentTracker {
    let mut t = Tracker::new().with_attr_mode(AttrMode::PerGmem);
    let flags = GmemFlags {
        folio: Level::M2,
        ..Default::default()
    };
    let file = t.create_guest_memfd(4 << 20, flags).unwrap();
    let binding = GmemBinding {
        gmem: file,
        offset: GmemOffset(0),
    };
    t.set_user_memory_region(&small_slot(Some(binding)))
        .unwrap();
    ConcurrentTracker::new(t)
}

/// A file's conversion — its first 2M folio split on both left-right copies, page 0 stored
/// shared in the file's one store, nothing merged back (the default policy) — racing a vCPU's
/// fault in that folio and one in the other: each answer is of the state before (2M) or after
/// (4K in the split folio), as its ticket's generation says, never of split folios with the
/// attributes before them or the reverse. Under loom: one preemption, 95,556 executions in
/// 19 s on this project's host (two: 1,600,283 in 302 s; the fault reads the memslots' words
/// too). With the front's count held odd across the store alone, not the split before it,
/// loom fails it in 13 s: a fault of generation 0 sees the split folio (4K, not 2M).
#[test]
fn a_fault_racing_a_file_conversion_sees_it_whole_or_not_at_all() {
    model(1, || {
        let vm = Arc::new(small_file_guest());
        let converter = {
            let vm = Arc::clone(&vm);
            thread::spawn(move || {
                let file = GmemId(0);
                let changed = vm
                    .set_gmem_attributes_with(file, GmemOffset(0), 4096, 0, |_| {})
                    .unwrap();
                assert!(changed);
            })
        };
        let vcpu = {
            let vm = Arc::clone(&vm);
            thread::spawn(move || {
                for gpa in [0x1000u64, (2 << 20) + 0x1000] {
                    if let FaultAnswer::Ready(ticket) = vm.fault(Gpa(gpa), Access::Private) {
                        assert_eq!(ticket.answer, expected(gpa, ticket.generation), "{gpa:#x}");
                    }
                }
            })
        };
        converter.join().unwrap();
        vcpu.join().unwrap();
        assert_eq!(vm.generation(), 1);
        assert_eq!(
            vm.max_mapping_level(Gpa(0x1000), Access::Private),
            expected(0x1000, 1)
        );
    });
}

/// The answer at generation 0 (all private: 2M everywhere) or 1 (gfn 0 shared: 4K in the first
/// 2M page, still 2M in the second).
fn expected(gpa: u64, generation: u64) -> MaxLevel {
    if generation == 0 || gpa >= 2 << 20 {
        MaxLevel::Level(Level::M2)
    } else {
        MaxLevel::Level(Level::K4)
    }
}

/// The one-copy store's publish protocol alone: a reader's runs over a range a writer extends
/// are the state before or the state after, never a half-stored one; its lookups agree.
/// Under loom: one preemption, 1,045,584 executions in 226 s on this project's host (none, 661,992
/// in 108 s): each relaxed load of the reader may read any store the model allows.
#[test]
fn a_one_copy_read_sees_a_whole_conversion_or_none() {
    use cvmem::Gfn;
    use cvmem_sync::one_copy::OneCopyWriter;
    model(1, || {
        let mut writer = OneCopyWriter::new().unwrap();
        // Gfns 0-1 private: their node exists, the conversion below stays inside it.
        writer.set(GfnRange::new(Gfn(0), Gfn(2)), PRIVATE).unwrap();
        let store = std::sync::Arc::clone(writer.store());
        let reader = thread::spawn(move || {
            let runs = store.runs(GfnRange::new(Gfn(0), Gfn(8)), 4);
            let ends: Vec<(u64, u64)> = runs.iter().map(|r| (r.end.0, r.attributes)).collect();
            (ends, store.attributes(Gfn(3)))
        });
        writer.set(GfnRange::new(Gfn(2), Gfn(4)), PRIVATE).unwrap();
        let (ends, at3) = reader.join().unwrap();
        let before = vec![(2, PRIVATE), (8, 0)];
        let after = vec![(4, PRIVATE), (8, 0)];
        assert!(ends == before || ends == after, "a torn state: {ends:?}");
        assert!(at3 == 0 || at3 == PRIVATE);
    });
}

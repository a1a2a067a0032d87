//! Fault-path read latency through the concurrent front, without and with a writer converting
//! 4K pages in a loop on another thread, against the core tracker and the front's own tracker
//! read directly; and the cost of a 4K conversion through the front against the core's and the
//! bare one-copy store's (a working set, and a store fragmented past the caches), and of the
//! clone an RCU-style design would need per write. `front_ratio` measures the front's ratios
//! with each baseline interleaved in one run.
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkGroup, Criterion};
use cvmem::{Access, Gpa, Tracker};
use cvmem_sync::one_copy::OneCopyWriter;
use cvmem_sync::{ConcurrentTracker, FaultAnswer};

mod common;
use common::{
    bare_store, flips, fragmented_guest, make_shared, pool, probes, set_page, FRAGMENT_PAGES, K4,
    SHARED_PAGES,
};

/// Runs `f` while a thread flips 4K pages between private and shared, one every `pace`
/// (busy-waiting in between), or as fast as it can. The pages come from a fixed pool of
/// `SHARED_PAGES` and each flip is undone by the next one on the same page, so the number of
/// runs stays near its starting value. Returns `f`'s result and the number of
/// conversions done meanwhile.
fn with_writer<R>(
    vm: &ConcurrentTracker,
    pace: Option<Duration>,
    f: impl FnOnce() -> R,
) -> (R, u64) {
    let stop = AtomicBool::new(false);
    let writes = AtomicU64::new(0);
    let r = thread::scope(|s| {
        s.spawn(|| {
            let pool = pool(SHARED_PAGES);
            let mut next = flips(&pool, 0);
            let mut due = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(pace) = pace {
                    due += pace;
                    while Instant::now() < due && !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                }
                let (gpa, attrs) = next();
                vm.set_memory_attributes(Gpa(gpa), K4, attrs).unwrap();
                writes.fetch_add(1, Ordering::Relaxed);
            }
        });
        let r = f();
        stop.store(true, Ordering::Relaxed);
        r
    });
    (r, writes.into_inner())
}

/// CPU time consumed by the calling thread: what a read costs, whether or not the thread was
/// preempted (the 2-core machine runs other builds; a writer thread takes a core).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the OS defines.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Benchmarks `f` by the CPU time of the benchmarking thread.
fn bench_cpu<R>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut f: impl FnMut() -> R) {
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = thread_cpu_time();
            for _ in 0..iters {
                black_box(f());
            }
            thread_cpu_time() - start
        })
    });
}

fn reads(c: &mut Criterion) {
    let tracker = fragmented_guest();
    let probes = probes();
    let vm = ConcurrentTracker::new(tracker.clone());
    let mut g = c.benchmark_group("read");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    let mut i = 0usize;
    let mut next = move || {
        i = (i + 1) & (probes.len() - 1);
        probes[i]
    };
    bench_cpu(&mut g, "core Tracker::max_mapping_level", || {
        tracker.max_mapping_level(Gpa(next()), Access::Private)
    });
    // The front's own tracker (its attributes in the one-copy store) read with no
    // synchronisation: what the front's read adds is the difference.
    let bare = vm.read(|s| s.tracker().clone());
    bench_cpu(&mut g, "bare SharedTracker::max_mapping_level", || {
        bare.max_mapping_level(Gpa(next()), Access::Private)
    });
    bench_cpu(&mut g, "max_mapping_level, no writer", || {
        vm.max_mapping_level(Gpa(next()), Access::Private)
    });
    // One copy published by an atomic pointer, read through arc-swap's guard: what a reader
    // would pay under copy-on-write publication (no writer here; the tracker is never changed).
    let published = arc_swap::ArcSwap::from_pointee(tracker.clone());
    bench_cpu(
        &mut g,
        "arc-swap load + max_mapping_level (one copy by pointer)",
        || {
            published
                .load()
                .max_mapping_level(Gpa(next()), Access::Private)
        },
    );
    // The same read inside an epoch (crossbeam-epoch's pin), the other reclamation scheme.
    bench_cpu(&mut g, "epoch pin + max_mapping_level", || {
        let _guard = crossbeam_epoch::pin();
        tracker.max_mapping_level(Gpa(next()), Access::Private)
    });
    bench_cpu(&mut g, "fault, no writer", || {
        vm.fault(Gpa(next()), Access::Private)
    });
    for (name, pace) in [
        (
            "writer at 100k conversions/s",
            Some(Duration::from_micros(10)),
        ),
        ("writer converting flat out", None),
    ] {
        let (_, writes) = with_writer(&vm, pace, || {
            bench_cpu(&mut g, &format!("max_mapping_level, {name}"), || {
                vm.max_mapping_level(Gpa(next()), Access::Private)
            });
        });
        eprintln!("  (writer: {writes} conversions during that benchmark)");
        let (mut faults, mut retries) = (0u64, 0u64);
        let (_, writes) = with_writer(&vm, pace, || {
            bench_cpu(&mut g, &format!("fault, {name}"), || {
                let a = vm.fault(Gpa(next()), Access::Private);
                faults += 1;
                retries += u64::from(a == FaultAnswer::Retry);
                a
            });
        });
        eprintln!(
            "  (writer: {writes} conversions; {retries} of {faults} faults answered Retry, {:.2}%)",
            retries as f64 * 100.0 / faults as f64
        );
    }
    // Wall-clock time, preemption included, for comparison.
    g.bench_function("wall clock: max_mapping_level, no writer", |b| {
        b.iter(|| vm.max_mapping_level(black_box(Gpa(next())), Access::Private))
    });
    with_writer(&vm, None, || {
        g.bench_function("wall clock: max_mapping_level, writer flat out", |b| {
            b.iter(|| vm.max_mapping_level(black_box(Gpa(next())), Access::Private))
        });
    });
    g.finish();
}

/// The core tracker, the bare one-copy store and the front, converting the same sequence.
struct Conversions<'a> {
    tracker: &'a mut Tracker,
    bare: &'a mut OneCopyWriter,
    vm: &'a ConcurrentTracker,
}

impl Conversions<'_> {
    /// Makes every page of `pool` shared in each store (setup, not measured).
    fn flip_all(&mut self, pool: &[u64]) {
        for &gpa in pool {
            self.tracker.set_memory_attributes(Gpa(gpa), K4, 0).unwrap();
        }
        make_shared(pool, self.vm, self.bare);
    }

    /// Benchmarks a 4K conversion of each, each given its own `sequence()` of (gpa, attributes).
    fn bench<S: FnMut() -> (u64, u64)>(
        &mut self,
        g: &mut BenchmarkGroup<'_, WallTime>,
        prefix: &str,
        sequence: impl Fn() -> S,
    ) {
        let mut next = sequence();
        g.bench_function(format!("{prefix}core set_memory_attributes 4K"), |b| {
            b.iter(|| {
                let (gpa, attrs) = next();
                self.tracker.set_memory_attributes(Gpa(gpa), K4, attrs)
            })
        });
        let mut next = sequence();
        g.bench_function(format!("{prefix}bare one-copy store set 4K"), |b| {
            b.iter(|| {
                let (gpa, attrs) = next();
                set_page(self.bare, gpa, attrs)
            })
        });
        let mut next = sequence();
        g.bench_function(
            format!("{prefix}concurrent set_memory_attributes 4K"),
            |b| {
                b.iter(|| {
                    let (gpa, attrs) = next();
                    self.vm.set_memory_attributes(Gpa(gpa), K4, attrs)
                })
            },
        );
    }
}

fn writes(c: &mut Criterion) {
    let mut tracker = fragmented_guest();
    let vm = ConcurrentTracker::new(tracker.clone());
    let mut bare = bare_store(&tracker);
    let mut g = c.benchmark_group("write");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    let mut three = Conversions {
        tracker: &mut tracker,
        bare: &mut bare,
        vm: &vm,
    };
    // A working set: the same `SHARED_PAGES` pages converted back and forth, as a guest's
    // bounce buffers are; the stores stay as small as they start.
    let working = pool(SHARED_PAGES);
    three.bench(&mut g, "pool: ", || flips(&working, 0));
    // Fragmented: `FRAGMENT_PAGES` pages, all made shared first (not measured), then flipped
    // back and forth: every store holds tens of MB, past the caches, and the same whatever
    // number of conversions criterion runs on it (fresh pages would grow each store by its
    // own count).
    let fragments = pool(FRAGMENT_PAGES);
    three.flip_all(&fragments);
    three.bench(&mut g, "fragmented: ", || flips(&fragments, FRAGMENT_PAGES));
    let snapshot = fragmented_guest();
    g.bench_function("Tracker::clone (RCU-style write, 1 TiB, ~4k runs)", |b| {
        b.iter(|| snapshot.clone())
    });
    g.finish();
}

criterion_group!(benches, reads, writes);
criterion_main!(benches);

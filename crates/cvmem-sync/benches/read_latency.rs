//! Fault-path read latency through the concurrent front, without and with a writer converting
//! 4K pages in a loop on another thread, against the core tracker read directly; and the cost
//! of a write (two applications) against the core's, and of the clone an RCU-style design
//! would need per write.
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkGroup, Criterion};
use cvmem::{
    Access, GfnRange, Gpa, MemoryRegion, SlotFlags, Tracker,
    KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE,
};
use cvmem_sync::one_copy::OneCopyWriter;
use cvmem_sync::{ConcurrentTracker, FaultAnswer};

const K4: u64 = 4096;
const T1: u64 = 1 << 40;
/// Shared 4K pages sprinkled over the private guest: 2 boundaries each, ~4,000 runs.
const SHARED_PAGES: usize = 2000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn page(&mut self) -> u64 {
        (self.next() % (T1 / K4)) * K4
    }
}

/// A 1 TiB guest_memfd guest, private, with `SHARED_PAGES` random shared 4K pages.
fn fragmented_guest() -> Tracker {
    let mut t = Tracker::new();
    t.set_user_memory_region(&MemoryRegion {
        slot: 0,
        gpa: Gpa(0),
        size: T1,
        flags: SlotFlags {
            guest_memfd: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    t.set_memory_attributes(Gpa(0), T1, PRIVATE).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..SHARED_PAGES {
        t.set_memory_attributes(Gpa(rng.page()), K4, 0).unwrap();
    }
    t
}

/// Random probe addresses, precomputed so the loop measures the lookup only.
fn probes() -> Vec<u64> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    (0..1 << 16).map(|_| rng.page()).collect()
}

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
            let mut rng = Rng(0xdead_beef_cafe_f00d);
            let pool: Vec<u64> = (0..SHARED_PAGES).map(|_| rng.page()).collect();
            let mut due = Instant::now();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                if let Some(pace) = pace {
                    due += pace;
                    while Instant::now() < due && !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                }
                let attrs = if (n / SHARED_PAGES) % 2 == 0 {
                    0
                } else {
                    PRIVATE
                };
                vm.set_memory_attributes(Gpa(pool[n % SHARED_PAGES]), K4, attrs)
                    .unwrap();
                n += 1;
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
                self.bare.set(GfnRange::from_len(Gpa(gpa).gfn(), 1), attrs)
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
    // The one-copy store written directly (no validation, lock or invalidation), with the same
    // contents: what the front adds to a conversion is the difference.
    let mut bare = OneCopyWriter::new().unwrap();
    for run in tracker.nonzero_runs() {
        bare.set(run.range(), run.attributes).unwrap();
    }
    let mut g = c.benchmark_group("write");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    // A working set: the same `SHARED_PAGES` pages converted back and forth (each pass flips
    // every page), as a guest's bounce buffers are; the stores stay as small as they start.
    let pool: Vec<u64> = {
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        (0..SHARED_PAGES).map(|_| rng.page()).collect()
    };
    let pool = &pool;
    let pooled = || {
        let mut n = 0usize;
        move || {
            let attrs = if (n / SHARED_PAGES) % 2 == 0 {
                0
            } else {
                PRIVATE
            };
            let gpa = pool[n % SHARED_PAGES];
            n += 1;
            (gpa, attrs)
        }
    };
    let mut three = Conversions {
        tracker: &mut tracker,
        bare: &mut bare,
        vm: &vm,
    };
    three.bench(&mut g, "pool: ", pooled);
    // Fresh random pages, half of them changing: the stores grow with every fragment. Each
    // gets the same sequence.
    let random = || {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut flip = 0u64;
        move || {
            flip ^= PRIVATE;
            (rng.page(), flip)
        }
    };
    three.bench(&mut g, "", random);
    let snapshot = fragmented_guest();
    g.bench_function("Tracker::clone (RCU-style write, 1 TiB, ~4k runs)", |b| {
        b.iter(|| snapshot.clone())
    });
    g.finish();
}

criterion_group!(benches, reads, writes);
criterion_main!(benches);

//! What the concurrent front adds, as ratios against its baselines, each measured in one run
//! with its baseline interleaved: blocks of the front's operation and of the baseline's
//! alternate (which goes first alternates too), so a host whose speed drifts — a nested VM,
//! other tenants — slows both alike, and both run the same number of operations on stores of
//! the same size. Issue 21's targets: a query ≤ 1.2× the bare tracker's (the same tracker code
//! over the same one-copy store, unsynchronised), a conversion ≤ 1.3× the bare store's. Each
//! ratio is reported as its median over the rounds, with the lowest and highest.
//!
//! `cargo bench -p cvmem-sync --bench front_ratio`
#![allow(missing_docs)] // a benchmark binary

use std::hint::black_box;
use std::time::Instant;

use cvmem::{Access, Gpa, MaxLevel};
use cvmem_sync::{ConcurrentTracker, FaultAnswer, SharedTracker};

mod common;
use common::{
    bare_store, flips, fragmented_guest, make_shared, pool, probes, set_page, FRAGMENT_PAGES, K4,
    SHARED_PAGES,
};

/// Rounds per comparison: the spread is the spread of their ratios.
const ROUNDS: usize = 15;

/// One comparison's rounds: (baseline, front) nanoseconds per operation.
struct Rounds(Vec<(f64, f64)>);

impl Rounds {
    /// `ROUNDS` rounds of `blocks` blocks of each side; each call of a side runs `ops`
    /// operations.
    fn measure(blocks: usize, ops: usize, mut base: impl FnMut(), mut front: impl FnMut()) -> Self {
        let mut rounds = Vec::with_capacity(ROUNDS);
        for round in 0..ROUNDS {
            let (mut tb, mut tf) = (0u128, 0u128);
            for block in 0..blocks {
                for side in 0..2 {
                    let start = Instant::now();
                    if (side + block + round) % 2 == 0 {
                        base();
                        tb += start.elapsed().as_nanos();
                    } else {
                        front();
                        tf += start.elapsed().as_nanos();
                    }
                }
            }
            let n = (blocks * ops) as f64;
            rounds.push((tb as f64 / n, tf as f64 / n));
        }
        Rounds(rounds)
    }

    fn report(&self, what: &str, baseline: &str, target: Option<f64>) {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[0], v[v.len() - 1])
        };
        let (b, _, _) = median(self.0.iter().map(|r| r.0).collect());
        let (f, _, _) = median(self.0.iter().map(|r| r.1).collect());
        let (ratio, lo, hi) = median(self.0.iter().map(|r| r.1 / r.0).collect());
        let verdict = target.map_or(String::new(), |t| {
            let mark = if ratio <= t { "met" } else { "NOT met" };
            format!("; target ≤ {t}×: {mark}")
        });
        println!(
            "{what}: {f:.1} ns against {baseline} {b:.1} ns: {ratio:.3}× \
             (rounds {lo:.3}-{hi:.3}){verdict}"
        );
    }
}

/// One block of lookups, `f` at each of `block`'s addresses.
fn lookups<'a, R>(block: &'a [u64], f: impl Fn(Gpa) -> R + Sync + 'a) -> impl Fn() + Sync + 'a {
    move || {
        for &gpa in block {
            black_box(f(Gpa(gpa)));
        }
    }
}

/// `passes` runs of `block` on this thread and, at the same time, on one more: two vCPUs
/// faulting at once.
fn on_two(passes: usize, block: &(impl Fn() + Sync)) {
    let run = || (0..passes).for_each(|_| block());
    std::thread::scope(|s| {
        s.spawn(run);
        run();
    })
}

// Each lookup is one call, as a fault handler's is: neither side's code is merged into the
// benchmark's loop (where the bare tracker's loads of its own fields would be hoisted out of
// it, and the front's, behind its lock, would not).

#[inline(never)]
fn bare_query(t: &SharedTracker, gpa: Gpa) -> MaxLevel {
    t.max_mapping_level(gpa, Access::Private)
}

#[inline(never)]
fn front_query(vm: &ConcurrentTracker, gpa: Gpa) -> MaxLevel {
    vm.max_mapping_level(gpa, Access::Private)
}

#[inline(never)]
fn front_fault(vm: &ConcurrentTracker, gpa: Gpa) -> FaultAnswer {
    vm.fault(gpa, Access::Private)
}

fn main() {
    let guest = fragmented_guest();
    let vm = ConcurrentTracker::new(guest.clone());
    let bare = vm.read(|s| s.tracker().clone());
    let probes = probes();
    let block = &probes[..8192];
    let (bare_block, front_block) = (
        lookups(block, |gpa| bare_query(&bare, gpa)),
        lookups(block, |gpa| front_query(&vm, gpa)),
    );
    let query = Rounds::measure(40, block.len(), &bare_block, &front_block);
    query.report(
        "max_mapping_level through the front",
        "the bare tracker",
        Some(1.2),
    );
    let fault = Rounds::measure(
        40,
        block.len(),
        &bare_block,
        lookups(block, |gpa| front_fault(&vm, gpa)),
    );
    fault.report(
        "fault (with its ticket) through the front",
        "the bare tracker's query",
        None,
    );
    // Two vCPUs faulting at once, 8 passes over the addresses each per block (a thread's
    // start, ~20 µs, is then a few % of a block).
    let two = Rounds::measure(
        4,
        8 * block.len(),
        || on_two(8, &bare_block),
        || on_two(8, &front_block),
    );
    two.report(
        "max_mapping_level on two threads at once, per read per thread",
        "the bare tracker's",
        None,
    );

    // The fragmented regime's pages are made shared first (not measured), so that its stores
    // are large from the first conversion.
    for (regime, pages, shared_first) in [
        ("working set", SHARED_PAGES, false),
        ("fragmented", FRAGMENT_PAGES, true),
    ] {
        let pool = pool(pages);
        let vm = ConcurrentTracker::new(guest.clone());
        let mut store = bare_store(&guest);
        let from = if shared_first {
            make_shared(&pool, &vm, &mut store);
            pages
        } else {
            0
        };
        let (mut next_bare, mut next_front) = (flips(&pool, from), flips(&pool, from));
        const OPS: usize = 1000;
        let conversions = Rounds::measure(
            50,
            OPS,
            || {
                for _ in 0..OPS {
                    let (gpa, attrs) = next_bare();
                    black_box(set_page(&mut store, gpa, attrs));
                }
            },
            || {
                for _ in 0..OPS {
                    let (gpa, attrs) = next_front();
                    black_box(vm.set_memory_attributes(Gpa(gpa), K4, attrs).unwrap());
                }
            },
        );
        conversions.report(
            &format!("a 4K conversion through the front, {regime} ({pages} pages)"),
            "the bare store",
            Some(1.3),
        );
        println!(
            "  (at the end the bare store holds {:.1} MB, the front {:.1} MB)",
            store.heap_bytes() as f64 / 1e6,
            vm.heap_bytes() as f64 / 1e6
        );
    }
}

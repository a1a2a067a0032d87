//! The tracker's conversions alone, without the evaluator around them: replays the attribute
//! changes of a workload into fresh trackers in a tight loop and prints the fastest pass, or
//! times "make 1 TiB private" warm. With a design name, replays them (checked by the rules, as
//! `cvmem compare` does) into that design instead: a pass is timed whole, so no clock read sits
//! in any one conversion. The README's per-conversion figures come from here.
//!
//! `cargo run --release -p cvmem-designs --example conversion_loop -- snp-psc 64 50`
//! `cargo run --release -p cvmem-designs --example conversion_loop -- checkerboard 64 20 bitmap`
//! `cargo run --release -p cvmem-designs --example conversion_loop -- make-private 1000`

use std::time::Instant;

use cvmem::{GfnRange, Gpa, Tracker};
use cvmem_designs::vm;
use cvmem_designs::workloads::{generate, Layout, Params};
use cvmem_oplog::Op;

mod common;

/// A tracker with the memslots of `ops` (those before the first conversion).
fn with_slots(ops: &[Op]) -> Tracker {
    let mut t = Tracker::new();
    for op in ops.iter().take_while(|op| op.attribute_change().is_none()) {
        if let Some(region) = op.memory_region() {
            let region = region.expect("the workload's memslot ids are valid");
            t.set_user_memory_region(&region)
                .expect("the workload's memslots are valid");
        }
    }
    t
}

/// The attribute changes of `ops`, as the tracker takes them.
fn conversions(ops: &[Op]) -> Vec<(GfnRange, u64)> {
    ops.iter()
        .filter_map(|op| op.attribute_change()?.ok())
        .map(|(gpa, size, attributes)| {
            let range = GfnRange::covering(gpa, size);
            (range, attributes)
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let name = args.get(1).map_or("snp-psc", String::as_str);
    if name == "make-private" {
        let layout = Layout::new(1 << 40);
        let ops = layout.memslot_ops();
        let mut slots = layout.ram.clone();
        slots.push(layout.firmware);
        let mut times: Vec<u128> = (0..arg(2, 1000))
            .map(|_| {
                let mut t = with_slots(&ops);
                let start = Instant::now();
                for s in &slots {
                    let range = GfnRange::covering(Gpa(s.gpa), s.size);
                    t.set_range_attributes(range, 8)
                        .expect("inside the gfn space");
                }
                let ns = start.elapsed().as_nanos();
                std::hint::black_box(&t);
                ns
            })
            .collect();
        times.sort_unstable();
        println!(
            "make 1 TiB private, warm: min {} ns, median {} ns",
            times[0],
            times[times.len() / 2]
        );
        return;
    }
    let params = Params {
        guest_bytes: arg(2, 64) << 30,
        ..Params::default()
    };
    let w = generate(name, &params).expect("a known workload");
    if let Some(design) = args.get(4) {
        return design_loop(name, &params, &w.ops, design, arg(3, 20));
    }
    let base = with_slots(&w.ops);
    let convs = conversions(&w.ops);
    let best = fastest_pass(
        arg(3, 20),
        || base.clone(),
        |t| {
            for &(range, attributes) in &convs {
                // Conversions the workload makes outside the slots' rules are skipped alike.
                let _ = t.set_range_attributes(range, attributes);
            }
        },
    );
    report(
        &format!("{name} {}G", params.guest_bytes >> 30),
        convs.len(),
        best,
    );
}

/// The fastest of `passes` passes of `run`, each on a fresh state and timed whole (seconds).
fn fastest_pass<S>(passes: u64, fresh: impl Fn() -> S, run: impl Fn(&mut S)) -> f64 {
    (0..passes)
        .map(|_| {
            let mut state = fresh();
            let start = Instant::now();
            run(&mut state);
            let secs = start.elapsed().as_secs_f64();
            std::hint::black_box(&state);
            secs
        })
        .fold(f64::MAX, f64::min)
}

fn report(what: &str, conversions: usize, best: f64) {
    println!(
        "{what}: {conversions} conversions, fastest pass {:.2} ms ({:.0} ns each)",
        best * 1e3,
        best * 1e9 / conversions as f64
    );
}

/// The workload's conversions replayed into `design` (behind the rules, as `cvmem compare`
/// feeds it): fastest of `passes` passes, each timed whole.
fn design_loop(name: &str, params: &Params, ops: &[Op], design: &str, passes: u64) {
    let actions = common::checked_conversions(ops);
    let best = fastest_pass(
        passes,
        || common::with_slots(design, ops).into_design(),
        |d| {
            for action in &actions {
                // Conversions the design refuses are refused in every pass alike.
                let _ = vm::apply(d.as_mut(), action);
            }
        },
    );
    let what = format!("{name} {}G {design}", params.guest_bytes >> 30);
    report(&what, actions.len(), best);
}

//! Conversions on a cold machine: before each of a workload's first conversions a 32 MiB sweep
//! evicts the caches (and what the TLBs reach), as the other designs' runs do between the
//! rounds of `cvmem compare`. Prints, per design, the median time of each of those conversions
//! over the rounds, and of their sum: what `startup`'s three conversions and `cvmem bench`'s
//! make-private measure, without the rest of a compare run. Rounds interleave the designs.
//!
//! `cargo run --release -p cvmem-designs --example cold_conversions -- startup 64 cvmem,rangemap`
//! (workload, guest GiB, designs, then optionally rounds, conversions and the sweep in MiB: 200,
//! 3 and 32; a sweep of 0 times the same conversions warm)

use std::hint::black_box;
use std::time::Instant;

use cvmem_designs::workloads::{generate, Params};
use cvmem_designs::{vm, Action, Design};

mod common;

/// MiB written before each conversion by default: past the last-level cache of this machine's
/// vCPUs.
const SWEEP_MIB: u64 = 32;

/// Writes one word in every cache line of `junk`.
fn sweep(junk: &mut [u64], round: u64) {
    for (i, w) in junk.iter_mut().enumerate().step_by(8) {
        *w = w.wrapping_add(i as u64 ^ round);
    }
    black_box(junk);
}

/// One conversion, out of line so that callgrind can count it alone
/// (`--toggle-collect='cold_conversions::convert'`).
#[inline(never)]
fn convert(state: &mut dyn Design, action: &Action) {
    // Refused alike in every round (the rules accepted it).
    let _ = vm::apply(state, action);
}

fn median(v: &mut [u128]) -> f64 {
    v.sort_unstable();
    v[v.len() / 2] as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let name = args.get(1).map_or("startup", String::as_str);
    let params = Params {
        guest_bytes: arg(2, 64) << 30,
        ..Params::default()
    };
    let designs: Vec<&str> = args
        .get(3)
        .map_or("cvmem,rangemap", String::as_str)
        .split(',')
        .collect();
    let (rounds, count) = (arg(4, 200), arg(5, 3) as usize);
    let sweep_mib = arg(6, SWEEP_MIB).min(4096);
    let w = generate(name, &params).expect("a known workload");
    let mut actions = common::checked_conversions(&w.ops);
    actions.truncate(count);
    let mut junk = vec![0u64; (sweep_mib << 20) as usize / 8];
    // Per design: per conversion, its time in every round.
    let mut times = vec![vec![Vec::new(); actions.len() + 1]; designs.len()];
    for round in 0..rounds {
        for (d, design) in designs.iter().enumerate() {
            let mut state = common::with_slots(design, &w.ops).into_design();
            let mut sum = 0;
            for (k, action) in actions.iter().enumerate() {
                sweep(&mut junk, round);
                let t = Instant::now();
                convert(state.as_mut(), action);
                let ns = t.elapsed().as_nanos();
                times[d][k].push(ns);
                sum += ns;
            }
            times[d][actions.len()].push(sum);
            black_box(&state);
        }
    }
    println!(
        "{name} {}G, {} conversions, each after a {} MiB sweep; medians of {rounds} rounds:",
        params.guest_bytes >> 30,
        actions.len(),
        sweep_mib
    );
    for (design, per) in designs.iter().zip(&mut times) {
        let (sum, each) = per.split_last_mut().expect("a sum per design");
        let each: Vec<String> = each
            .iter_mut()
            .map(|v| format!("{:.2}", median(v) / 1e3))
            .collect();
        println!(
            "  {design:10} each [{}] µs, together {:.2} µs",
            each.join(", "),
            median(sum) / 1e3
        );
    }
}

//! A workload's first conversions in a fresh process, then again and again: what the first
//! execution of a design's conversion code costs (its code pages faulted in, caches and TLBs
//! cold, the first writes to fresh heap pages) against the same conversions warm. `cvmem
//! bench`'s make-private and `cvmem compare`'s `startup` each measure conversions that run once
//! per VM, so they carry part of this cost. Run one design per process; Linux only (the
//! minor-fault count comes from `/proc/self/stat`).
//!
//! `cargo run --release -p cvmem-designs --example first_conversions -- startup 1024 cvmem`
//! (workload, guest GiB, design, then optionally rounds: 5)

use std::hint::black_box;
use std::time::Instant;

use cvmem_designs::workloads::{generate, Params};
use cvmem_designs::{vm, Action, Design};

mod common;

/// Minor page faults of this process so far (field 10 of `/proc/self/stat`; the command name
/// before it is in parentheses and may hold spaces).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_name
        .split_whitespace()
        .nth(7)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

/// One conversion, out of line as in `cold_conversions`.
#[inline(never)]
fn convert(state: &mut dyn Design, action: &Action) {
    // Refused alike in every round (the rules accepted it).
    let _ = vm::apply(state, action);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let name = args.get(1).map_or("startup", String::as_str);
    let params = Params {
        guest_bytes: arg(2, 64) << 30,
        ..Params::default()
    };
    let design = args.get(3).map_or("cvmem", String::as_str);
    let rounds = arg(4, 5).max(2);
    let w = generate(name, &params).expect("a known workload");
    let actions = common::checked_conversions(&w.ops);
    let first = actions.len().min(3);
    println!(
        "{name} {}G, {design}: its first {first} conversions, each round on a fresh VM",
        params.guest_bytes >> 30
    );
    for round in 0..rounds {
        let mut state = common::with_slots(design, &w.ops).into_design();
        let faults = minor_faults();
        // Raw times only inside the timed loop: formatting allocates.
        let mut ns = [0u128; 3];
        for (action, ns) in actions[..first].iter().zip(&mut ns) {
            let t = Instant::now();
            convert(state.as_mut(), action);
            *ns = t.elapsed().as_nanos();
        }
        let faults = minor_faults() - faults;
        let each: Vec<String> = ns[..first]
            .iter()
            .map(|&n| format!("{:.2}", n as f64 / 1e3))
            .collect();
        let total = ns.iter().sum::<u128>() as f64 / 1e3;
        println!(
            "  round {round}: {total:.2} µs [{}], {faults} minor faults",
            each.join(", "),
        );
        black_box(&state);
    }
}

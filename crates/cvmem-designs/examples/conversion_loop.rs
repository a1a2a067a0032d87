//! The tracker's conversions alone, without the evaluator around them: replays the attribute
//! changes of a workload into fresh trackers in a tight loop and prints the fastest pass, or
//! times "make 1 TiB private" warm. The README's per-conversion figures come from here.
//!
//! `cargo run --release -p cvmem-designs --example conversion_loop -- snp-psc 64 50`
//! `cargo run --release -p cvmem-designs --example conversion_loop -- make-private 1000`

use std::time::Instant;

use cvmem::hypercall::MapGpaRange;
use cvmem::{GfnRange, Tracker, PAGE_SHIFT};
use cvmem_designs::workloads::{generate, Layout, Params};
use cvmem_oplog::Op;

/// A tracker with the memslots of `ops` (those before the first conversion).
fn with_slots(ops: &[Op]) -> Tracker {
    let mut t = Tracker::new();
    for op in ops.iter().take_while(|op| !is_conversion(op)) {
        if let Some(region) = op.memory_region() {
            let region = region.expect("the workload's memslot ids are valid");
            t.set_user_memory_region(&region)
                .expect("the workload's memslots are valid");
        }
    }
    t
}

fn is_conversion(op: &Op) -> bool {
    matches!(op, Op::Attrs { .. } | Op::MapGpa { .. })
}

/// The attribute changes of `ops`, as the tracker takes them.
fn conversions(ops: &[Op]) -> Vec<(GfnRange, u64)> {
    ops.iter()
        .filter_map(|op| match *op {
            Op::Attrs {
                gpa,
                size,
                attributes,
            } => Some((
                GfnRange::new(gpa >> PAGE_SHIFT, (gpa + size) >> PAGE_SHIFT),
                attributes,
            )),
            Op::MapGpa { gpa, npages, flags } => MapGpaRange::decode(gpa, npages, flags)
                .ok()
                .map(|r| (r.range(), r.attributes())),
            _ => None,
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
                    let range = GfnRange::new(s.gpa >> PAGE_SHIFT, s.end() >> PAGE_SHIFT);
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
    let base = with_slots(&w.ops);
    let convs = conversions(&w.ops);
    let best = (0..arg(3, 20))
        .map(|_| {
            let mut t = base.clone();
            let start = Instant::now();
            for &(range, attributes) in &convs {
                // Conversions the workload makes outside the slots' rules are skipped alike.
                let _ = t.set_range_attributes(range, attributes);
            }
            start.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min);
    println!(
        "{name} {}G: {} conversions, fastest pass {:.2} ms ({:.0} ns each)",
        params.guest_bytes >> 30,
        convs.len(),
        best * 1e3,
        best * 1e9 / convs.len() as f64
    );
}

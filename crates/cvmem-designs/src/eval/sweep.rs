//! Conversion time against range size: on an all-private guest, each design converts a range
//! of 4 KiB, 32 KiB, … (×8) at the start of high RAM to shared and back, timed. This is the
//! "conversion time vs range size" chart: per-page designs grow linearly, range designs do not.

use std::time::{Duration, Instant};

use cvmem::{GfnRange, Gpa};
use serde::Serialize;

use crate::make_design;
use crate::vm::Vm;
use crate::workloads::Layout;

/// One measured point.
#[derive(Clone, Debug, Serialize)]
pub struct SweepPoint {
    /// Design.
    pub design: String,
    /// Range size in bytes.
    pub range_bytes: u64,
    /// Mean time of one conversion (shared, then private again), median of the repetitions.
    pub ns: f64,
}

/// The sweep's result: points, and the sizes skipped per design with the reason.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sweep {
    /// The guest the ranges were converted in.
    pub guest_bytes: u64,
    /// Measured points.
    pub points: Vec<SweepPoint>,
    /// (design, first range size not measured, why).
    pub skipped: Vec<(String, u64, String)>,
}

/// Runs the sweep on a guest of `guest_bytes` for `designs`, at most `budget` per design.
pub fn conversion_sweep(designs: &[String], guest_bytes: u64, budget: Duration) -> Sweep {
    let layout = Layout::new(guest_bytes);
    let high = layout.high()[0];
    let mut sweep = Sweep {
        guest_bytes,
        ..Default::default()
    };
    for name in designs {
        let Some(design) = make_design(name) else {
            continue;
        };
        let mut vm = Vm::new(design);
        let mut ops = layout.memslot_ops();
        for s in layout.ram.iter().chain(std::iter::once(&layout.firmware)) {
            ops.push(cvmem_oplog::Op::Attrs {
                gpa: Gpa(s.gpa),
                size: s.size,
                attributes: 8,
            });
        }
        let started = Instant::now();
        let failed = vm.run(&ops).is_err();
        let mut design = vm.into_design();
        if failed || started.elapsed() > budget {
            sweep.skipped.push((
                name.clone(),
                4096,
                format!(
                    "start-up alone took {:.1} s",
                    started.elapsed().as_secs_f64()
                ),
            ));
            continue;
        }
        let mut size = 4096u64;
        let mut last_ns = 0.0f64;
        while size <= high.size {
            let remaining = budget.saturating_sub(started.elapsed()).as_secs_f64() * 1e9;
            if last_ns * 8.0 * 2.0 > remaining {
                sweep.skipped.push((
                    name.clone(),
                    size,
                    format!(
                        "skipped: would exceed budget (predicted {:.1} s for {} ranges)",
                        last_ns * 16.0 / 1e9,
                        cvmem_oplog::fmt_bytes(size)
                    ),
                ));
                break;
            }
            let range = GfnRange::covering(Gpa(high.gpa), size);
            let reps = if size <= 16 << 20 { 9 } else { 1 };
            let mut samples = Vec::with_capacity(reps);
            for _ in 0..reps {
                let t = Instant::now();
                let _ = design.set_attributes(range, 0);
                let _ = design.set_attributes(range, 8);
                samples.push(t.elapsed().as_nanos() as f64 / 2.0);
            }
            samples.sort_by(f64::total_cmp);
            let ns = samples[samples.len() / 2];
            sweep.points.push(SweepPoint {
                design: name.clone(),
                range_bytes: size,
                ns,
            });
            last_ns = ns;
            size *= 8;
        }
    }
    sweep
}

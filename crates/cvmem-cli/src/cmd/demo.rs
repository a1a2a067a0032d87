//! `cvmem demo`: a 4 GiB TDX guest booting, replayed and shown.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use cvmem::fmt_bytes;
use cvmem::replay::{Outcome, Replayer};

use crate::{report, scenario};

/// Arguments of `cvmem demo`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Number of 4K private/shared flips in the hot range.
    #[arg(long, default_value_t = 6000)]
    flips: usize,
    /// Also write the scenario as an op-log to this file (replay it with `cvmem replay`).
    #[arg(long)]
    oplog_out: Option<PathBuf>,
    /// Print the JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> Result<ExitCode, String> {
    let ops = scenario::tdx_boot_4g(args.flips, false);
    if let Some(path) = &args.oplog_out {
        let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(
            f,
            "# cvmem demo: a 4 GiB, 8-vCPU TDX guest booting ({} flips)",
            args.flips
        )
        .and_then(|_| ops.iter().try_for_each(|op| writeln!(f, "{op}")))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let mut replayer = Replayer::new();
    let start = Instant::now();
    let mut errors = Vec::new();
    for op in &ops {
        if let Outcome::Error(e) = replayer.apply(op) {
            errors.push(format!("{op}: {e}"));
        }
    }
    let elapsed = start.elapsed();
    if !errors.is_empty() {
        return Err(format!(
            "the demo scenario was rejected: {}",
            errors.join("; ")
        ));
    }
    let summary = replayer.summary();
    if args.json {
        return report::emit(&format!("{}\n", report::summary_json(&summary)));
    }
    let mut out = String::new();
    let ms = elapsed.as_secs_f64() * 1e3;
    out += "cvmem demo: a 4 GiB, 8-vCPU TDX guest boots\n";
    out += &format!(
        "  {} operations ({} 4K flips in gfn 0x7d3ff-0x7e7fe) replayed in {ms:.2} ms\n\n",
        ops.len(),
        args.flips
    );
    out += "memory map (# private, . shared, : both in the cell; 64 cells per slot):\n";
    out += &report::slot_maps(replayer.tracker(), 64);
    out += "\n";
    out += &report::summary_text(&summary);
    let ram: u64 = summary.memslots.iter().map(|m| m.size).sum();
    out += &format!(
        "\ntracking memory: cvmem {} for {} of memslots; Linux as merged would hold ~{} \
         (one xarray entry per private 4K page, 576-byte nodes, plus 4-byte lpage ints)\n",
        fmt_bytes(summary.heap_bytes as u64),
        fmt_bytes(ram),
        fmt_bytes(linux_bytes(&replayer))
    );
    report::emit(&out)
}

/// Linux's metadata for the same state, from the kernel's layout: an xarray leaf node (576 bytes)
/// per 64 private pages plus upper nodes, and one 4-byte `disallow_lpage` per large page per slot.
fn linux_bytes(r: &Replayer) -> u64 {
    let t = r.tracker();
    let private_pages: u64 = t.nonzero_runs().map(|run| run.end - run.start).sum();
    let leaves = private_pages.div_ceil(64);
    let nodes = leaves + leaves.div_ceil(64) + leaves.div_ceil(4096) + 1;
    let lpage: u64 = t
        .memslots()
        .map(|s| (s.npages().div_ceil(512) + 1 + s.npages().div_ceil(1 << 18) + 1) * 4)
        .sum();
    nodes * 576 + lpage
}

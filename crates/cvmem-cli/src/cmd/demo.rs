//! `cvmem demo`: a 4 GiB TDX guest booting, replayed and shown.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cvmem::mmu::Recovery;
use cvmem_oplog::fmt_bytes;
use cvmem_oplog::Op;
use cvmem_oplog::{Outcome, Replayer};

use crate::{report, scenario};

/// Arguments of `cvmem demo`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Number of 4K private/shared flips in the hot range.
    #[arg(long, default_value_t = 6000)]
    flips: usize,
    /// Hugepage recovery policy of the modelled TDP MMU (the comparison table shows all three).
    #[arg(long, value_enum, default_value_t = Policy::OnFault)]
    recovery: Policy,
    /// Also write the scenario as an op-log to this file (replay it with `cvmem replay`).
    #[arg(long)]
    oplog_out: Option<PathBuf>,
    /// Print the JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

/// The recovery policies, as the op-log names them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Leaves never grow.
    Off,
    /// A fault replaces smaller leaves with a huge one.
    OnFault,
    /// Uniform, wholly mapped regions collapse at once.
    Eager,
}

impl From<Policy> for Recovery {
    fn from(p: Policy) -> Recovery {
        match p {
            Policy::Off => Recovery::Off,
            Policy::OnFault => Recovery::OnFault,
            Policy::Eager => Recovery::Eager,
        }
    }
}

/// Replays `ops`; the replayer and the time it took. Any rejected operation is a bug in the scenario.
fn replay(ops: &[Op]) -> Result<(Replayer, Duration), String> {
    let mut replayer = Replayer::new();
    let start = Instant::now();
    let mut errors = Vec::new();
    for op in ops {
        if let Outcome::Error(e) = replayer.apply(op) {
            errors.push(format!("{op}: {e}"));
        }
    }
    if !errors.is_empty() {
        return Err(format!(
            "the demo scenario was rejected: {}",
            errors.join("; ")
        ));
    }
    Ok((replayer, start.elapsed()))
}

/// One row per recovery policy: the page tables at the end of the same boot.
fn policy_table(flips: usize) -> Result<String, String> {
    let mut out = String::from("recovery policies on the same boot (TDX layout):\n");
    out += "  policy    coverage  TLB entries  table pages (all mapped at best)  splits    zaps  collapses\n";
    for policy in [Policy::Off, Policy::OnFault, Policy::Eager] {
        let (r, _) = replay(&scenario::tdx_boot_4g(flips, Some(policy.into())))?;
        let (m, c) = (r.vm().stats(), r.vm().coverage());
        let leaves = m.leaves();
        out += &format!(
            "  {:<8} {:>8.1}%  {:>11}  {:>11} ({:>18})  {:>6}  {:>6}  {:>9}\n",
            Recovery::from(policy).name(),
            c.ratio() * 100.0,
            leaves.k4 + leaves.m2 + leaves.g1,
            m.table_pages,
            c.optimum_table_pages,
            m.splits,
            m.zaps,
            m.collapses
        );
    }
    Ok(out)
}

fn write_oplog(path: &PathBuf, ops: &[Op], flips: usize) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        f,
        "# cvmem demo: a 4 GiB, 8-vCPU TDX guest booting ({flips} flips)"
    )?;
    ops.iter().try_for_each(|op| writeln!(f, "{op}"))?;
    f.flush()
}

pub(crate) fn run(args: Args) -> Result<ExitCode, String> {
    let ops = scenario::tdx_boot_4g(args.flips, Some(args.recovery.into()));
    if let Some(path) = &args.oplog_out {
        write_oplog(path, &ops, args.flips).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let (replayer, elapsed) = replay(&ops)?;
    let summary = replayer.summary();
    if args.json {
        return report::emit(&format!("{}\n", report::summary_json(&summary)));
    }
    let mut out = String::new();
    out += "cvmem demo: a 4 GiB, 8-vCPU TDX guest boots\n";
    out += &format!(
        "  {} operations ({} 4K flips in gfn 0x7d3ff-0x7e7fe, 1,024 4K accepts, every page touched) \
         replayed in {:.1} ms\n\n",
        ops.len(),
        args.flips,
        elapsed.as_secs_f64() * 1e3
    );
    out += "memory map (# private, . shared, : both in the cell; 64 cells per slot):\n";
    out += &report::slot_maps(replayer.tracker(), 64);
    out += "\n";
    out += &report::summary_text(&summary);
    let ram: u64 = summary.memslots.iter().map(|m| m.size).sum();
    out += &format!(
        "\ntracking memory: cvmem {} for {} of memslots; Linux as merged would hold ~{} \
         (one xarray entry per private 4K page, 576-byte nodes, plus 4-byte lpage ints)\n\n",
        fmt_bytes(summary.heap_bytes as u64),
        fmt_bytes(ram),
        fmt_bytes(linux_bytes(&replayer))
    );
    out += &policy_table(args.flips)?;
    report::emit(&out)
}

/// Linux's metadata for the same state, from the kernel's layout: an xarray leaf node (576 bytes)
/// per 64 private pages plus upper nodes, and one 4-byte `disallow_lpage` per large page per slot.
fn linux_bytes(r: &Replayer) -> u64 {
    let t = r.tracker();
    let private_pages: u64 = t.nonzero_runs().map(|run| run.range().len()).sum();
    let leaves = private_pages.div_ceil(64);
    let nodes = leaves + leaves.div_ceil(64) + leaves.div_ceil(4096) + 1;
    let lpage: u64 = t
        .memslots()
        .map(|s| (s.npages().div_ceil(512) + 1 + s.npages().div_ceil(1 << 18) + 1) * 4)
        .sum();
    nodes * 576 + lpage
}

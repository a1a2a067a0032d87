//! `cvmem bench`: the headline ratios of every design against `linux`, in one process.

use std::process::ExitCode;

use cvmem_designs::eval::bench::{bench, bench_table, BenchConfig};
use cvmem_designs::DESIGNS;

use super::compare::size;
use crate::limits;
use crate::report::emit;

/// Arguments of `cvmem bench`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Guest size of the headline.
    #[arg(long, default_value = "1T")]
    size: String,
    /// Guest size linux is measured at when smaller than --size (its per-page cost is then
    /// scaled up, and the table says so).
    #[arg(long, default_value = "1T")]
    linux_size: String,
    /// Random 4K flips.
    #[arg(long, default_value_t = 1_000_000)]
    flips: u64,
    /// Random queries.
    #[arg(long, default_value_t = 1_000_000)]
    queries: u64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Most seconds one design may spend on flips (slower designs do fewer, and say so).
    #[arg(long, default_value_t = 10.0)]
    flip_budget: f64,
    /// Rounds (every design once per round); figures are min / median / max.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// Designs compared with linux, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = DESIGNS.iter().filter(|d| **d != "linux").map(|s| s.to_string()))]
    designs: Vec<String>,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> Result<ExitCode, String> {
    // A flip is a range and attributes in the plan, a query a gpa and a kind.
    let budget = u64::MAX;
    limits::fits("flips", args.flips, 24, budget)?;
    limits::fits("queries", args.queries, 16, budget)?;
    let cfg = BenchConfig {
        designs: args.designs,
        guest_bytes: limits::guest_size("size", size(&args.size)?)?,
        linux_bytes: limits::guest_size("linux-size", size(&args.linux_size)?)?,
        flips: args.flips,
        queries: args.queries,
        seed: args.seed,
        flip_budget_secs: args.flip_budget,
        repeat: args.repeat,
    };
    let bar = indicatif::ProgressBar::new_spinner();
    let report = bench(&cfg, &mut |design, at| {
        bar.set_message(format!("{design} at {}", cvmem_oplog::fmt_bytes(at)));
        bar.tick();
    });
    bar.finish_and_clear();
    let report = report.map_err(|e| e.to_string())?;
    let out = if args.json {
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n"
    } else {
        bench_table(&report)
    };
    emit(&out)
}

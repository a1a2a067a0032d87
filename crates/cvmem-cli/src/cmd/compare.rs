//! `cvmem compare`: designs × a workload × guest sizes, as a table, JSON and SVG charts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cvmem_designs::eval::compare::{compare, Config, Event, RowResult};
use cvmem_designs::eval::sweep::conversion_sweep;
use cvmem_designs::eval::table::{conversion_chart, memory_chart, query_chart, table};
use cvmem_designs::workloads::{generate, Params, WORKLOADS};
use cvmem_designs::DESIGNS;
use cvmem_oplog::parse_number;
use indicatif::{ProgressBar, ProgressStyle};

use crate::limits;
use crate::report::emit;

/// Arguments of `cvmem compare`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Designs, comma separated (linux, option-a, option-b, option-c, bitmap, rangemap, roaring, cvmem).
    #[arg(long, value_delimiter = ',', default_values_t = DESIGNS.iter().map(|s| s.to_string()))]
    designs: Vec<String>,
    /// Workload generator (see --list).
    #[arg(long, default_value = "boot")]
    workload: String,
    /// Guest sizes, comma separated (4G … 64T).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "4G,16G,64G,256G,1T,4T,16T,64T"
    )]
    sizes: Vec<String>,
    /// vCPUs of the guest.
    #[arg(long, default_value_t = 8)]
    vcpus: u32,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Conversions of the flip-style workloads.
    #[arg(long, default_value_t = 10_000)]
    flips: u64,
    /// Most queries of the final sweep.
    #[arg(long, default_value_t = 65_536)]
    queries: u64,
    /// Time budget per design and size, in seconds.
    #[arg(long, default_value_t = 30.0)]
    budget: f64,
    /// Runs per design and size; times are reported as min / median / max.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// Memory budget per design and size (bytes this process may hold).
    #[arg(long, default_value = "8G")]
    memory_budget: String,
    /// Print the report as JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Write memory.svg, query.svg and conversion.svg (runs the conversion-size sweep) here.
    #[arg(long)]
    svg_dir: Option<PathBuf>,
    /// Guest size of the conversion-size sweep.
    #[arg(long, default_value = "64G")]
    sweep_size: String,
    /// Write the workload at the first size as an op-log to this file.
    #[arg(long)]
    oplog_out: Option<PathBuf>,
    /// List the workloads and designs, and exit.
    #[arg(long)]
    list: bool,
    /// Compare huge-folio policies instead of designs: the workload per guest_memfd with 4K,
    /// 2M and 1G folios under never / punch-hole / eager merging, at each size.
    #[arg(long)]
    folios: bool,
    /// Compare how guests accept memory instead of designs: a TD boot's accepts under each
    /// GUEST_INHIBIT policy, and an SNP guest's lazy 4 MiB acceptance with and without
    /// pre-faulting on order-0 pages and 2M folios, at each size (the workload is ignored).
    #[arg(long, conflicts_with = "folios")]
    accept: bool,
}

impl Args {
    /// The workload parameters at one guest size.
    fn params(&self, guest_bytes: u64) -> Params {
        Params {
            guest_bytes,
            vcpus: self.vcpus,
            seed: self.seed,
            flips: self.flips,
            queries: self.queries,
        }
    }
}

/// Parses a size such as `4G` or `0x100000000`.
pub(crate) fn size(s: &str) -> Result<u64, String> {
    parse_number(s.trim()).map_err(|e| format!("bad size `{s}`: {e}"))
}

pub(crate) fn run(args: Args) -> Result<ExitCode, String> {
    if args.list {
        let mut out = String::from("workloads:\n");
        for (name, what) in WORKLOADS {
            out.push_str(&format!("  {name:<14} {what}\n"));
        }
        out.push_str(&format!("designs: {}\n", DESIGNS.join(", ")));
        return emit(&out);
    }
    let sizes = args
        .sizes
        .iter()
        .map(|s| size(s).and_then(|b| limits::guest_size("sizes", b)))
        .collect::<Result<Vec<u64>, String>>()?;
    let memory_budget = limits::memory_budget(size(&args.memory_budget)?)?;
    if args.folios {
        return folios(&args, &sizes);
    }
    if args.accept {
        return accept(&args, &sizes);
    }
    let op = std::mem::size_of::<cvmem_oplog::Op>();
    limits::fits("flips", args.flips, op, memory_budget)?;
    limits::fits("queries", args.queries, op, memory_budget)?;
    let cfg = Config {
        designs: args.designs.clone(),
        workload: args.workload.clone(),
        sizes: sizes.clone(),
        vcpus: args.vcpus,
        seed: args.seed,
        flips: args.flips,
        queries: args.queries,
        budget_secs: args.budget,
        memory_budget,
        repeat: args.repeat,
    };
    if let Some(path) = &args.oplog_out {
        let first = *sizes.iter().min().ok_or("no size given")?;
        let params = Params {
            guest_bytes: first,
            vcpus: args.vcpus,
            seed: args.seed,
            flips: args.flips,
            queries: args.queries,
        };
        let w = generate(&args.workload, &params).map_err(|e| e.to_string())?;
        let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        w.write_oplog(&mut f)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let bar = ProgressBar::new((sizes.len() * args.designs.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    let report = compare(&cfg, &mut |e| match e {
        Event::Generating { guest_bytes } => bar.set_message(format!(
            "generating {} at {}",
            cfg.workload,
            cvmem_oplog::fmt_bytes(guest_bytes)
        )),
        Event::Running {
            design,
            guest_bytes,
            step,
            steps,
        } => {
            bar.set_length(steps as u64);
            bar.set_position(step as u64);
            bar.set_message(format!(
                "{design} at {}",
                cvmem_oplog::fmt_bytes(guest_bytes)
            ));
        }
        Event::Finished { row } => {
            if let RowResult::Skipped { reason } = &row.result {
                bar.println(format!(
                    "{} at {}: {reason}",
                    row.design,
                    cvmem_oplog::fmt_bytes(row.guest_bytes)
                ));
            }
        }
    });
    bar.finish_and_clear();
    let report = report.map_err(|e| e.to_string())?;
    let mut sweep = None;
    if let Some(dir) = &args.svg_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let s = conversion_sweep(
            &args.designs,
            size(&args.sweep_size)?,
            Duration::from_secs_f64(args.budget),
        );
        let charts = [
            ("memory.svg", memory_chart(&report).to_svg()),
            ("query.svg", query_chart(&report).to_svg()),
            (
                "conversion.svg",
                conversion_chart(&s, &args.designs).to_svg(),
            ),
        ];
        for (name, svg) in charts {
            let path = dir.join(name);
            std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        sweep = Some(s);
    }
    let out = if args.json {
        let value = serde_json::json!({ "report": report, "conversion_sweep": sweep });
        serde_json::to_string_pretty(&value).map_err(|e| e.to_string())? + "\n"
    } else {
        let mut out = table(&report);
        if let Some(dir) = &args.svg_dir {
            out.push_str(&format!(
                "charts: {}/{{memory,query,conversion}}.svg\n",
                dir.display()
            ));
        }
        out
    };
    emit(&out)
}

/// `cvmem compare --accept`: TDX accept and SNP lazy-acceptance patterns at each size.
fn accept(args: &Args, sizes: &[u64]) -> Result<ExitCode, String> {
    use cvmem_designs::eval::accept;
    let mut out = String::new();
    let mut all = Vec::new();
    for &guest_bytes in sizes {
        let params = args.params(guest_bytes);
        let guest = cvmem_oplog::fmt_bytes(guest_bytes).to_string();
        let (tdx, snp) = (accept::tdx(&params), accept::snp(&params));
        out.push_str(&accept::tdx_table(&guest, &tdx));
        out.push_str(&accept::snp_table(&guest, &snp));
        all.push(serde_json::json!({"guest_bytes": guest_bytes, "tdx": tdx, "snp": snp}));
    }
    if args.json {
        out = serde_json::to_string_pretty(&all).map_err(|e| e.to_string())? + "\n";
    }
    emit(&out)
}

/// `cvmem compare --folios`: the folio policies under the workload at each size.
fn folios(args: &Args, sizes: &[u64]) -> Result<ExitCode, String> {
    let mut out = String::new();
    let mut all = Vec::new();
    for &guest_bytes in sizes {
        let params = args.params(guest_bytes);
        let w = generate(&args.workload, &params).map_err(|e| e.to_string())?;
        let rows = cvmem_designs::eval::folios::compare(&w.ops);
        let guest = cvmem_oplog::fmt_bytes(guest_bytes).to_string();
        out.push_str(&cvmem_designs::eval::folios::table(
            &args.workload,
            &guest,
            &rows,
        ));
        all.push(serde_json::json!({"workload": args.workload, "guest_bytes": guest_bytes, "rows": rows}));
    }
    if args.json {
        out = serde_json::to_string_pretty(&all).map_err(|e| e.to_string())? + "\n";
    }
    emit(&out)
}

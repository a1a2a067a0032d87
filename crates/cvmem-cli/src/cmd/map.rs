//! `cvmem map`: a picture of a guest's memory (SVG and PNG) for a workload or an op-log.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::map::{build_with_progress, svg_to_png, MapOptions};
use cvmem::{Level, MergePolicy};
use cvmem_designs::workloads::{generate, Params};
use cvmem_oplog::Replayer;
use cvmem_oplog::{ops, Op};

use super::compare::size;
use crate::report::emit;

/// Arguments of `cvmem map`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Draw this workload generator's guest (see `cvmem compare --list`).
    #[arg(long, conflicts_with = "oplog")]
    workload: Option<String>,
    /// Draw the guest an op-log file leaves behind.
    #[arg(long)]
    oplog: Option<PathBuf>,
    /// Guest size of the workload.
    #[arg(long, default_value = "4G")]
    size: String,
    /// vCPUs of the workload.
    #[arg(long, default_value_t = 8)]
    vcpus: u32,
    /// Seed of the workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Conversions of flip-style workloads.
    #[arg(long, default_value_t = 10_000)]
    flips: u64,
    /// Replay only the first N operations.
    #[arg(long)]
    at: Option<usize>,
    /// First GPA to draw.
    #[arg(long)]
    from: Option<String>,
    /// End GPA to draw.
    #[arg(long)]
    to: Option<String>,
    /// Cell size (power of two, >= 4K; default 2M or larger to fit).
    #[arg(long)]
    cell: Option<String>,
    /// Cells per row.
    #[arg(long, default_value_t = 512)]
    cols: usize,
    /// SVG output path.
    #[arg(short, long, default_value = "cvmem-map.svg")]
    out: PathBuf,
    /// PNG output path (default: the SVG path with .png).
    #[arg(long)]
    png: Option<PathBuf>,
    /// Do not write a PNG.
    #[arg(long)]
    no_png: bool,
    /// Write the generated workload as an op-log.
    #[arg(long)]
    oplog_out: Option<PathBuf>,
    /// Print the map's cells and memslots as JSON.
    #[arg(long)]
    json: bool,
    /// Run the workload per guest_memfd (in-place conversion) with folios of this size (4K,
    /// 2M or 1G), as `cvmem compare --folios` does, and colour private memory by its folio.
    #[arg(long, requires = "workload", value_parser = folio_size)]
    folio: Option<Level>,
    /// With --folio: when split folios merge (never, punch-hole, eager).
    #[arg(long, requires = "folio", default_value = "punch-hole", value_parser = merge_policy)]
    merge: MergePolicy,
}

fn folio_size(s: &str) -> Result<Level, String> {
    Level::from_name(s).ok_or_else(|| format!("`{s}` is not a folio size (4K, 2M or 1G)"))
}

fn merge_policy(s: &str) -> Result<MergePolicy, String> {
    MergePolicy::from_name(s)
        .ok_or_else(|| format!("`{s}` is not a merge policy (never, punch-hole, eager)"))
}

fn read_oplog(path: &std::path::Path) -> Result<Vec<Op>, String> {
    let text = crate::limits::read_oplog(path)?;
    ops(text.lines())
        .map(|l| {
            l.map(|l| l.op)
                .map_err(|e| format!("{}: {e}", path.display()))
        })
        .collect()
}

pub(crate) fn run(args: Args) -> Result<ExitCode, String> {
    let (title, ops) = match (&args.workload, &args.oplog) {
        (Some(name), None) => {
            let params = Params {
                guest_bytes: size(&args.size)?,
                vcpus: args.vcpus,
                seed: args.seed,
                flips: args.flips,
                ..Params::default()
            };
            let mut w = generate(name, &params).map_err(|e| e.to_string())?;
            if let Some(folio) = args.folio {
                w.ops = cvmem_designs::eval::folios::to_per_gmem(&w.ops, folio, args.merge);
            }
            if let Some(path) = &args.oplog_out {
                let mut f =
                    std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
                w.write_oplog(&mut f)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let per_gmem = args.folio.map_or(String::new(), |f| {
                format!(
                    ", per guest_memfd with {} folios (merge {})",
                    f.name(),
                    args.merge.name()
                )
            });
            (
                format!(
                    "workload {name}: {} guest, {} vCPUs, seed {}{per_gmem}",
                    cvmem_oplog::fmt_bytes(params.guest_bytes),
                    params.vcpus,
                    params.seed
                ),
                w.ops,
            )
        }
        (None, Some(path)) => (format!("op-log {}", path.display()), read_oplog(path)?),
        _ => return Err("give --workload NAME or --oplog FILE".into()),
    };
    let n = args.at.unwrap_or(ops.len()).min(ops.len());
    let mut vm = Replayer::new();
    for op in &ops[..n] {
        vm.apply(op);
    }
    let opts = MapOptions {
        from: args.from.as_deref().map(size).transpose()?,
        to: args.to.as_deref().map(size).transpose()?,
        cell_bytes: args.cell.as_deref().map(size).transpose()?,
        cols: args.cols,
        ..MapOptions::default()
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("classifying cells {bar:30} {pos}/{len} ({eta})")
            .expect("a valid template"),
    );
    let map = build_with_progress(vm.tracker(), &opts, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    let title = format!("{title} · after {n} of {} operations", ops.len());
    let svg = map.to_svg(&title);
    std::fs::write(&args.out, &svg).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let mut written = vec![args.out.display().to_string()];
    if !args.no_png {
        let path = args
            .png
            .clone()
            .unwrap_or_else(|| args.out.with_extension("png"));
        // The same picture as the SVG: text, legend and all.
        let png = svg_to_png(&svg)?;
        std::fs::write(&path, png).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path.display().to_string());
    }
    let mut out = String::new();
    if args.json {
        out = serde_json::to_string_pretty(&map).map_err(|e| e.to_string())? + "\n";
    } else {
        out.push_str(&format!(
            "{} · cell {} · {} rows · {}\n",
            title,
            cvmem_oplog::fmt_bytes(map.cell_bytes),
            map.rows.len(),
            map.cell_summary()
        ));
        for s in &map.slots {
            out.push_str(&format!(
                "  slot {:<5} {:#14x} +{:<7} mixed 2M {:<6} 1G-mappable {:<7} 2M {:<7} 4K-only {}\n",
                s.id,
                s.gpa,
                cvmem_oplog::fmt_bytes(s.size).to_string(),
                s.mixed_2m,
                cvmem_oplog::fmt_bytes(s.eligible[0]).to_string(),
                cvmem_oplog::fmt_bytes(s.eligible[1]).to_string(),
                cvmem_oplog::fmt_bytes(s.eligible[2])
            ));
        }
        out.push_str(&format!("wrote {}\n", written.join(", ")));
    }
    emit(&out)
}

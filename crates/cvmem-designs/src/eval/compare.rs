//! `compare`: chosen designs × one workload × guest sizes, within a per-run time and memory
//! budget, every query's answer checked against the first design that ran.
//!
//! Sizes run in increasing order. Before each run the design's cost is predicted from its last
//! run (linear in the pages the workload touches) or, for its first run, from a per-design
//! a-priori rate; a run predicted to exceed the budget is skipped and reported as such, and a
//! run that exceeds it anyway is stopped and reported. Nothing is silently left out. Repeated
//! runs go in rounds (every design once, then again), so that noise on the host is shared.

use std::collections::HashMap;
use std::time::Duration;

use cvmem::PAGE_SIZE;
use cvmem_oplog::Op;
use serde::Serialize;

use super::run::{first_difference, run_design, Run};
use crate::design::answer_name;
use crate::make_design;
use crate::workloads::{self, Params, Workload, WorkloadError};

/// What to compare.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// Design names.
    pub designs: Vec<String>,
    /// Workload name.
    pub workload: String,
    /// Guest sizes in bytes.
    pub sizes: Vec<u64>,
    /// Workload parameters other than the size.
    pub vcpus: u32,
    /// Seed.
    pub seed: u64,
    /// Conversions of flip-style workloads.
    pub flips: u64,
    /// Queries of the final sweep.
    pub queries: u64,
    /// Time budget per design and size.
    pub budget_secs: f64,
    /// Memory budget per design and size (bytes this process may hold for it).
    pub memory_budget: u64,
    /// Runs per design and size (at least 1): times are reported as min / median / max.
    pub repeat: u32,
}

/// One design at one size.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Guest size in bytes.
    pub guest_bytes: u64,
    /// Design.
    pub design: String,
    /// `done`, or `skipped` with the reason.
    #[serde(flatten)]
    pub result: RowResult,
}

/// The outcome of one design at one size.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum RowResult {
    /// It ran.
    Done {
        /// The measurements of the median run (by total conversion time).
        run: Box<Run>,
        /// Tracking bytes plus forced page-table bytes per GiB of guest RAM.
        bytes_per_gib: f64,
        /// The time figures over all runs.
        spread: Spread,
    },
    /// It did not run, or was stopped.
    Skipped {
        /// Why, in words.
        reason: String,
    },
}

/// Smallest, median and largest of one figure over repeated runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MinMedMax {
    /// Smallest.
    pub min: f64,
    /// Median (the lower middle for an even count).
    pub median: f64,
    /// Largest.
    pub max: f64,
}

impl MinMedMax {
    /// Of `values` (none: all zero).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return MinMedMax::default();
        }
        MinMedMax {
            min: v[0],
            median: v[(v.len() - 1) / 2],
            max: v[v.len() - 1],
        }
    }
}

/// The time figures of one design at one size over its repeated runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Spread {
    /// Runs measured.
    pub runs: u32,
    /// Total conversion time.
    pub conversion_total_ns: MinMedMax,
    /// Median conversion.
    pub conversion_p50_ns: MinMedMax,
    /// 99th-percentile conversion.
    pub conversion_p99_ns: MinMedMax,
    /// Median query.
    pub query_p50_ns: MinMedMax,
    /// 99th-percentile query.
    pub query_p99_ns: MinMedMax,
}

impl Spread {
    /// Of `runs`.
    pub fn of(runs: &[Run]) -> Self {
        let f = |g: fn(&Run) -> f64| MinMedMax::of(runs.iter().map(g));
        Spread {
            runs: runs.len() as u32,
            conversion_total_ns: f(|r| r.conversion.total_ns),
            conversion_p50_ns: f(|r| r.conversion.p50_ns),
            conversion_p99_ns: f(|r| r.conversion.p99_ns),
            query_p50_ns: f(|r| r.query.p50_ns),
            query_p99_ns: f(|r| r.query.p99_ns),
        }
    }
}

/// The workload at one size.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadInfo {
    /// Guest size.
    pub guest_bytes: u64,
    /// Operations.
    pub ops: usize,
    /// Conversions.
    pub conversions: usize,
    /// Queries.
    pub queries: usize,
    /// 4K pages whose attributes the conversions and memslot creations cover.
    pub work_pages: u64,
}

/// Everything `compare` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The request.
    pub config: Config,
    /// The workload at each size.
    pub workloads: Vec<WorkloadInfo>,
    /// One row per design and size, sizes ascending.
    pub rows: Vec<Row>,
}

impl Report {
    /// The row of `design` at `guest_bytes`.
    pub fn row(&self, design: &str, guest_bytes: u64) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.design == design && r.guest_bytes == guest_bytes)
    }
}

/// Two designs answered a query differently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Divergence {
    /// Workload.
    pub workload: String,
    /// Guest size.
    pub guest_bytes: u64,
    /// The design that differs.
    pub design: String,
    /// The design it was compared with.
    pub reference: String,
    /// The query (op-log line).
    pub query: String,
    /// Its number among the workload's queries.
    pub query_index: usize,
    /// What `design` answered.
    pub got: String,
    /// What `reference` answered.
    pub want: String,
}

/// Why `compare` failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareError {
    /// A design name nobody knows.
    UnknownDesign(String),
    /// The workload could not be generated.
    Workload(WorkloadError),
    /// Designs disagree: the evaluation is void.
    Divergence(Box<Divergence>),
}

impl std::fmt::Display for CompareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CompareError::UnknownDesign(d) => {
                write!(
                    f,
                    "unknown design `{d}` (known: {})",
                    crate::DESIGNS.join(", ")
                )
            }
            CompareError::Workload(e) => write!(f, "{e}"),
            CompareError::Divergence(d) => write!(
                f,
                "DIVERGENCE: workload {} at {}: query #{} `{}`: {} answered {}, {} answered {}",
                d.workload,
                cvmem_oplog::fmt_bytes(d.guest_bytes),
                d.query_index,
                d.query,
                d.design,
                d.got,
                d.reference,
                d.want
            ),
        }
    }
}

impl std::error::Error for CompareError {}

/// Progress of a long comparison.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    /// A workload is being generated.
    Generating {
        /// Guest size.
        guest_bytes: u64,
    },
    /// A design starts a run at a size; `step` of `steps`.
    Running {
        /// Design.
        design: &'a str,
        /// Guest size.
        guest_bytes: u64,
        /// This step (0-based).
        step: usize,
        /// Steps in all (designs × sizes × rounds).
        steps: usize,
    },
    /// A design finished or was skipped at a size.
    Finished {
        /// The row.
        row: &'a Row,
    },
}

/// 4K pages covered by the workload's conversions and memslot creations.
pub fn work_pages(ops: &[Op]) -> u64 {
    ops.iter()
        .map(|op| match *op {
            Op::Attrs { size, .. } => size / PAGE_SIZE,
            Op::MapGpa { npages, .. } => npages,
            Op::Memslot { size, .. } => size / PAGE_SIZE,
            _ => 0,
        })
        .sum()
}

/// What a design's first run is predicted to cost per page of work: (ns, bytes this process
/// holds). Measured on this machine class (release build); later runs are predicted from the
/// design's previous run, size class by size class.
pub fn apriori_rate(design: &str) -> (f64, f64) {
    match design {
        "linux" => (40.0, 4.2),
        "bitmap" | "option-a" => (0.05, 0.14),
        _ => (0.0, 0.0),
    }
}

/// Conversions per size class (log2 of the page count) of a workload.
pub fn size_histogram(ops: &[Op]) -> Vec<(u32, u64)> {
    let mut hist: Vec<(u32, u64)> = Vec::new();
    for op in ops {
        let pages = match *op {
            Op::Attrs { size, .. } => size / PAGE_SIZE,
            Op::MapGpa { npages, .. } => npages,
            _ => continue,
        };
        let b = 63 - pages.max(1).leading_zeros();
        match hist.iter_mut().find(|(k, _)| *k == b) {
            Some((_, n)) => *n += 1,
            None => hist.push((b, 1)),
        }
    }
    hist.sort_unstable();
    hist
}

/// What a design's last run says about its costs.
#[derive(Clone, Debug)]
struct Previous {
    guest_bytes: u64,
    run: Run,
    bytes_per_page: f64,
}

impl Previous {
    /// Predicted seconds for a workload: each conversion costs what conversions of its size
    /// class cost last time (a class not seen: the nearest smaller one, scaled by the page
    /// ratio — linear, as a per-page design grows), queries what they cost, memslot changes
    /// scale with the guest.
    fn predict_secs(&self, hist: &[(u32, u64)], queries: usize, guest_bytes: u64) -> f64 {
        let by_size = &self.run.by_size;
        let mut ns = 0.0;
        for &(b, count) in hist {
            let mean = match by_size.iter().find(|x| x.log2_pages == b) {
                Some(x) => x.total_ns / x.count as f64,
                None => match by_size.iter().rev().find(|x| x.log2_pages < b) {
                    Some(x) => x.total_ns / x.count as f64 * 2f64.powi((b - x.log2_pages) as i32),
                    None => by_size.first().map_or(0.0, |x| x.total_ns / x.count as f64),
                },
            };
            ns += mean * count as f64;
        }
        ns += self.run.query.mean_ns() * queries as f64;
        ns += self.run.memslot.total_ns * guest_bytes as f64 / self.guest_bytes as f64;
        ns / 1e9
    }
}

/// Runs the comparison. Fails at the first divergence.
pub fn compare(cfg: &Config, progress: &mut dyn FnMut(Event<'_>)) -> Result<Report, CompareError> {
    for d in &cfg.designs {
        if make_design(d).is_none() {
            return Err(CompareError::UnknownDesign(d.clone()));
        }
    }
    let mut sizes = cfg.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let budget = Duration::from_secs_f64(cfg.budget_secs);
    let rounds = cfg.repeat.max(1) as usize;
    let steps = sizes.len() * rounds * cfg.designs.len();
    let mut rows = Vec::new();
    let mut infos = Vec::new();
    // Per design: its last run.
    let mut previous: HashMap<String, Previous> = HashMap::new();
    for (si, &size) in sizes.iter().enumerate() {
        progress(Event::Generating { guest_bytes: size });
        let params = Params {
            guest_bytes: size,
            vcpus: cfg.vcpus,
            seed: cfg.seed,
            flips: cfg.flips,
            queries: cfg.queries,
        };
        let w = workloads::generate(&cfg.workload, &params).map_err(CompareError::Workload)?;
        let work = work_pages(&w.ops).max(1);
        let hist = size_histogram(&w.ops);
        infos.push(WorkloadInfo {
            guest_bytes: size,
            ops: w.ops.len(),
            conversions: w.conversions(),
            queries: w.queries(),
            work_pages: work,
        });
        // Per design: the runs so far, or why it does not (or no longer) run.
        let mut outcomes: Vec<Result<Vec<Run>, String>> = cfg
            .designs
            .iter()
            .map(|design| {
                let (predicted_secs, predicted_bytes, basis) = match previous.get(design) {
                    Some(p) => (
                        p.predict_secs(&hist, w.queries(), size),
                        p.bytes_per_page * work as f64,
                        format!("from its run at {}", cvmem_oplog::fmt_bytes(p.guest_bytes)),
                    ),
                    None => {
                        let (ns, bytes) = apriori_rate(design);
                        (
                            ns * work as f64 / 1e9,
                            bytes * work as f64,
                            format!("at {ns:.0} ns per page of work"),
                        )
                    }
                };
                if predicted_secs > cfg.budget_secs {
                    Err(format!(
                        "skipped: would exceed budget (predicted {:.1} s > {:.1} s, {basis})",
                        predicted_secs, cfg.budget_secs
                    ))
                } else if predicted_bytes > cfg.memory_budget as f64 {
                    Err(format!(
                        "skipped: would exceed memory budget (predicted {} > {})",
                        cvmem_oplog::fmt_bytes(predicted_bytes as u64),
                        cvmem_oplog::fmt_bytes(cfg.memory_budget)
                    ))
                } else {
                    Ok(Vec::new())
                }
            })
            .collect();
        // Rounds of every design in turn, so that a burst of noise on the host falls on all of
        // them alike rather than on one design's repeats.
        let mut reference: Option<(String, Vec<u8>)> = None;
        for round in 0..rounds {
            for (di, design) in cfg.designs.iter().enumerate() {
                let Ok(runs) = &mut outcomes[di] else {
                    continue;
                };
                progress(Event::Running {
                    design,
                    guest_bytes: size,
                    step: (si * rounds + round) * cfg.designs.len() + di,
                    steps,
                });
                let make = || make_design(design).expect("checked above");
                match run_design(&make, &w.ops, budget) {
                    Err(s) => {
                        outcomes[di] = Err(format!(
                            "stopped: exceeded budget after {} of {} ops ({:.1} s)",
                            s.after_ops, s.of_ops, s.seconds
                        ));
                    }
                    Ok(run)
                        if run.host_bytes.max(run.measured_peak_bytes.unwrap_or(0))
                            > cfg.memory_budget =>
                    {
                        // The prediction let it run; what it held is what counts.
                        outcomes[di] = Err(format!(
                            "stopped: held {} > memory budget {}",
                            cvmem_oplog::fmt_bytes(
                                run.host_bytes.max(run.measured_peak_bytes.unwrap_or(0))
                            ),
                            cvmem_oplog::fmt_bytes(cfg.memory_budget)
                        ));
                    }
                    Ok(mut run) => {
                        check_agreement(&w, design, &run.answers, &mut reference)?;
                        run.answers = Vec::new();
                        runs.push(run);
                    }
                }
            }
        }
        for (design, outcome) in cfg.designs.iter().zip(outcomes) {
            let result = match outcome {
                Err(reason) => RowResult::Skipped { reason },
                Ok(mut runs) => {
                    let spread = Spread::of(&runs);
                    runs.sort_by(|a, b| a.conversion.total_ns.total_cmp(&b.conversion.total_ns));
                    let run = runs.swap_remove((runs.len() - 1) / 2);
                    let held = run
                        .host_bytes
                        .max(run.measured_peak_bytes.unwrap_or(0))
                        .max(1);
                    previous.insert(
                        design.clone(),
                        Previous {
                            guest_bytes: size,
                            run: run.clone(),
                            bytes_per_page: held as f64 / work as f64,
                        },
                    );
                    let bytes_per_gib = (run.heap_bytes + run.table_bytes) as f64
                        / (size as f64 / (1u64 << 30) as f64);
                    RowResult::Done {
                        run: Box::new(run),
                        bytes_per_gib,
                        spread,
                    }
                }
            };
            rows.push(Row {
                guest_bytes: size,
                design: design.clone(),
                result,
            });
            progress(Event::Finished {
                row: rows.last().expect("just pushed"),
            });
        }
    }
    Ok(Report {
        config: cfg.clone(),
        workloads: infos,
        rows,
    })
}

fn check_agreement(
    w: &Workload,
    design: &str,
    answers: &[u8],
    reference: &mut Option<(String, Vec<u8>)>,
) -> Result<(), CompareError> {
    let Some((ref_name, ref_answers)) = reference.as_ref() else {
        *reference = Some((design.to_string(), answers.to_vec()));
        return Ok(());
    };
    if let Some((i, got, want)) = first_difference(answers, ref_answers) {
        let query = w
            .ops
            .iter()
            .filter(|op| matches!(op, Op::Query { .. }))
            .nth(i)
            .map_or_else(|| "(missing)".to_string(), |op| op.to_string());
        return Err(CompareError::Divergence(Box::new(Divergence {
            workload: w.name.to_string(),
            guest_bytes: w.params.guest_bytes,
            design: design.to_string(),
            reference: ref_name.clone(),
            query,
            query_index: i,
            got: answer_name(got).to_string(),
            want: answer_name(want).to_string(),
        })));
    }
    Ok(())
}

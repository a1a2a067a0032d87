//! `bench`: the headline ratios, every design against `linux` in one process on one machine —
//! "make the guest private", "random 4K flips", "query", "memory".
//!
//! `linux` touches every 4 KiB page, so at large sizes it is measured on a smaller guest
//! ([`BenchConfig::linux_bytes`]) and its per-page cost is scaled up to the full size; every such
//! figure is marked `extrapolated` with the size it was measured at. Flip and query costs are
//! per operation and reported as measured at that smaller size. Answers are cross-checked: every
//! design's query answers at a size must match `cvmem`'s at that size.

use std::hint::black_box;
use std::time::Instant;

use cvmem::{Access, Gfn, GfnRange, Gpa, PAGE_SHIFT, PAGE_SIZE};
use serde::Serialize;

use super::compare::MinMedMax;
use crate::design::{answer_code, Design};
use crate::make_design;
use crate::vm::Vm;
use crate::workloads::{Layout, Rng};

/// What to measure.
#[derive(Clone, Debug, Serialize)]
pub struct BenchConfig {
    /// Designs (besides `linux`, which is always measured as the baseline).
    pub designs: Vec<String>,
    /// The guest size of the headline (default 1 TiB).
    pub guest_bytes: u64,
    /// The guest size `linux` is measured at when smaller than `guest_bytes`.
    pub linux_bytes: u64,
    /// Random 4K flips.
    pub flips: u64,
    /// Random queries.
    pub queries: u64,
    /// Seed.
    pub seed: u64,
    /// Most seconds a design may spend on flips; a design that would need longer does fewer
    /// (the row says how many) and its queries run on that state.
    pub flip_budget_secs: f64,
    /// Rounds: every design is measured once per round, rounds one after the other, so that a
    /// slow phase of the machine hits every design alike. Figures are min / median / max.
    pub repeat: u32,
}

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    /// The case: `make-private`, `flip-4k`, `query`, `memory`.
    pub case: String,
    /// Design.
    pub design: String,
    /// The value (median over the rounds), for the full guest size.
    pub value: f64,
    /// Smallest value of a round.
    pub min: f64,
    /// Largest value of a round.
    pub max: f64,
    /// `ns` (per operation; for `make-private` the whole conversion) or `bytes`.
    pub unit: String,
    /// The guest size it was measured at.
    pub measured_at: u64,
    /// Whether `value` was scaled from `measured_at` to the full size.
    pub extrapolated: bool,
    /// linux's value divided by this one (how many times faster or smaller).
    pub vs_linux: Option<f64>,
    /// Flips done before the queries and the memory figure (fewer than asked when the flip
    /// budget ran out).
    pub flips_done: u64,
}

/// The result.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// The request.
    pub config: BenchConfig,
    /// Figures, by case then design.
    pub rows: Vec<BenchRow>,
    /// linux's cost per 4K page when making memory private, in ns and kernel bytes.
    pub linux_per_page_ns: f64,
    /// linux's tracking bytes per 4K page of private memory (kernel allocation sizes).
    pub linux_per_page_bytes: f64,
}

/// Raw measurements of one design at one size.
struct Measured {
    make_private_ns: f64,
    pages: u64,
    flip_ns: f64,
    query_ns: f64,
    bytes: f64,
    answers: u64,
    flips_done: u64,
}

/// The random 4K flips of a guest: each page's first flip makes it shared, the next private.
fn flip_plan(layout: &Layout, flips: u64, seed: u64) -> Vec<(GfnRange, u64)> {
    let mut rng = Rng::new(seed);
    let pages = layout.ram_bytes() / PAGE_SIZE;
    let mut shared = std::collections::HashSet::new();
    (0..flips)
        .map(|_| {
            let gfn = layout.ram_at(rng.below(pages) * PAGE_SIZE) >> PAGE_SHIFT;
            let attrs = if shared.insert(gfn) {
                0
            } else {
                shared.remove(&gfn);
                8
            };
            (GfnRange::new(Gfn(gfn), Gfn(gfn + 1)), attrs)
        })
        .collect()
}

/// Random queries, each with the kind its page has after `flips`.
fn query_plan(
    layout: &Layout,
    flips: &[(GfnRange, u64)],
    queries: u64,
    seed: u64,
) -> Vec<(u64, Access)> {
    let mut shared = std::collections::HashSet::new();
    for &(r, attrs) in flips {
        if attrs == 0 {
            shared.insert(r.start);
        } else {
            shared.remove(&r.start);
        }
    }
    let mut rng = Rng::new(seed ^ 0x5157_4552_5900_0000);
    let pages = layout.ram_bytes() / PAGE_SIZE;
    (0..queries)
        .map(|_| {
            let gpa = layout.ram_at(rng.below(pages) * PAGE_SIZE);
            let private = !shared.contains(&Gpa(gpa).gfn());
            (gpa, Access::from_private(private))
        })
        .collect()
}

/// Measures `name` on a guest of `guest_bytes`: all `cfg.flips` flips within the flip budget,
/// or exactly `exact_flips` when given (no budget).
fn measure(
    name: &str,
    guest_bytes: u64,
    cfg: &BenchConfig,
    exact_flips: Option<u64>,
) -> Option<Measured> {
    let layout = Layout::new(guest_bytes);
    let mut vm = Vm::new(make_design(name)?);
    vm.run(&layout.memslot_ops()).ok()?;
    let mut design: Box<dyn Design> = vm.into_design();
    let flips = flip_plan(&layout, exact_flips.unwrap_or(cfg.flips), cfg.seed);
    let mut slots = layout.ram.clone();
    slots.push(layout.firmware);
    let t = Instant::now();
    for s in &slots {
        let range = GfnRange::covering(Gpa(s.gpa), s.size);
        design.set_attributes(range, 8).ok()?;
    }
    let make_private_ns = t.elapsed().as_nanos() as f64;
    let t = Instant::now();
    let mut done = 0;
    for (i, &(range, attrs)) in flips.iter().enumerate() {
        if exact_flips.is_none() && i % 256 == 0 && t.elapsed().as_secs_f64() > cfg.flip_budget_secs
        {
            break;
        }
        design.set_attributes(range, attrs).ok()?;
        done += 1;
    }
    let flip_ns = t.elapsed().as_nanos() as f64 / done.max(1) as f64;
    let queries = query_plan(&layout, &flips[..done], cfg.queries, cfg.seed);
    let t = Instant::now();
    let mut answers = 0u64;
    for &(gpa, access) in &queries {
        let a = black_box(design.max_mapping_level(black_box(gpa), access));
        answers = answers
            .wrapping_mul(5)
            .wrapping_add(u64::from(answer_code(&a)));
    }
    let query_ns = t.elapsed().as_nanos() as f64 / queries.len().max(1) as f64;
    Some(Measured {
        make_private_ns,
        pages: slots.iter().map(|s| s.size / PAGE_SIZE).sum(),
        flip_ns,
        query_ns,
        bytes: (design.heap_bytes() + design.table_bytes()) as f64,
        answers,
        flips_done: done as u64,
    })
}

/// Why the bench failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BenchError {
    /// A design name nobody knows.
    UnknownDesign(String),
    /// A design's answers differ from cvmem's at the same size.
    Divergence {
        /// The design.
        design: String,
        /// The size.
        guest_bytes: u64,
    },
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchError::UnknownDesign(d) => write!(f, "unknown design `{d}`"),
            BenchError::Divergence {
                design,
                guest_bytes,
            } => write!(
                f,
                "DIVERGENCE: {design}'s query answers at {} differ from cvmem's",
                cvmem_oplog::fmt_bytes(*guest_bytes)
            ),
        }
    }
}

impl std::error::Error for BenchError {}

/// Runs the headline measurements; `progress` is told which design starts.
pub fn bench(
    cfg: &BenchConfig,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<BenchReport, BenchError> {
    let full = cfg.guest_bytes;
    let linux_at = cfg.linux_bytes.min(full);
    let mut designs: Vec<String> = vec!["linux".to_string()];
    designs.extend(cfg.designs.iter().filter(|d| *d != "linux").cloned());
    let mut measured: Vec<(String, u64, Vec<Measured>)> = designs
        .iter()
        .map(|d| {
            (
                d.clone(),
                if d == "linux" { linux_at } else { full },
                Vec::new(),
            )
        })
        .collect();
    // cvmem's answers per (size, flips done), the reference every design is checked against.
    let mut reference: Vec<((u64, u64), u64)> = Vec::new();
    for _ in 0..cfg.repeat.max(1) {
        for (d, at, rounds) in &mut measured {
            progress(d, *at);
            let m =
                measure(d, *at, cfg, None).ok_or_else(|| BenchError::UnknownDesign(d.clone()))?;
            let key = (*at, m.flips_done);
            let want = match reference.iter().find(|(k, _)| *k == key) {
                Some(&(_, a)) => a,
                None => {
                    progress("cvmem (reference answers)", *at);
                    let r = measure("cvmem", *at, cfg, Some(m.flips_done))
                        .ok_or_else(|| BenchError::UnknownDesign("cvmem".into()))?;
                    reference.push((key, r.answers));
                    r.answers
                }
            };
            if want != m.answers {
                return Err(BenchError::Divergence {
                    design: d.clone(),
                    guest_bytes: *at,
                });
            }
            rounds.push(m);
        }
    }
    let full_pages =
        Layout::new(full).ram_bytes() / PAGE_SIZE + Layout::new(full).firmware.size / PAGE_SIZE;
    let linux_rounds = &measured[0].2;
    let linux_pages = linux_rounds[0].pages as f64;
    let linux_per_page_ns =
        MinMedMax::of(linux_rounds.iter().map(|m| m.make_private_ns)).median / linux_pages;
    let linux_per_page_bytes = linux_rounds[0].bytes / linux_pages;
    let mut rows = Vec::new();
    let cases: [(&str, &str); 4] = [
        ("make-private", "ns"),
        ("flip-4k", "ns"),
        ("query", "ns"),
        ("memory", "bytes"),
    ];
    for (case, unit) in cases {
        let value_of = |m: &Measured, at: u64| -> (f64, bool) {
            let scale = full_pages as f64 / m.pages as f64;
            match case {
                "make-private" => (m.make_private_ns * scale, at != full),
                "flip-4k" => (m.flip_ns, false),
                "query" => (m.query_ns, false),
                _ => (m.bytes * scale, at != full),
            }
        };
        let over_rounds = |rounds: &[Measured], at: u64| {
            let values = rounds.iter().map(|m| value_of(m, at).0);
            (MinMedMax::of(values), value_of(&rounds[0], at).1)
        };
        let (linux_value, _) = over_rounds(&measured[0].2, measured[0].1);
        for (d, at, rounds) in &measured {
            let (v, extrapolated) = over_rounds(rounds, *at);
            rows.push(BenchRow {
                case: case.to_string(),
                design: d.clone(),
                value: v.median,
                min: v.min,
                max: v.max,
                unit: unit.to_string(),
                measured_at: *at,
                extrapolated,
                vs_linux: (v.median > 0.0).then(|| linux_value.median / v.median),
                flips_done: rounds.iter().map(|m| m.flips_done).min().unwrap_or(0),
            });
        }
    }
    Ok(BenchReport {
        config: cfg.clone(),
        rows,
        linux_per_page_ns,
        linux_per_page_bytes,
    })
}

/// The report as a table for people.
pub fn bench_table(r: &BenchReport) -> String {
    use std::fmt::Write;
    let full = cvmem_oplog::fmt_bytes(r.config.guest_bytes);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "headline at {full}: {} random 4K flips, {} random queries, seed {}",
        r.config.flips, r.config.queries, r.config.seed
    );
    let _ = writeln!(
        out,
        "{:<13} {:<9} {:>12} {:>21} {:>12}  measured",
        "case",
        "design",
        "median",
        format!("min-max of {}", r.config.repeat.max(1)),
        "vs linux"
    );
    let show = |unit: &str, v: f64| {
        if unit == "bytes" {
            cvmem_oplog::fmt_bytes(v as u64).to_string()
        } else {
            super::chart::label(v, super::chart::Unit::Nanos)
        }
    };
    for row in &r.rows {
        let value = show(&row.unit, row.value);
        let spread = format!("{}-{}", show(&row.unit, row.min), show(&row.unit, row.max));
        let ratio = row.vs_linux.map_or_else(
            || "-".to_string(),
            |x| {
                if x >= 10.0 {
                    format!("{x:.0}x")
                } else if x >= 0.1 {
                    format!("{x:.2}x")
                } else {
                    format!("{x:.4}x")
                }
            },
        );
        let how = if row.extrapolated {
            format!(
                "at {}, extrapolated per page to {full}",
                cvmem_oplog::fmt_bytes(row.measured_at)
            )
        } else if row.case != "make-private" && row.flips_done < r.config.flips {
            format!(
                "at {}, after {} flips (flip budget)",
                cvmem_oplog::fmt_bytes(row.measured_at),
                row.flips_done
            )
        } else if row.measured_at != r.config.guest_bytes {
            format!(
                "at {} (per operation)",
                cvmem_oplog::fmt_bytes(row.measured_at)
            )
        } else {
            format!("at {full}")
        };
        let _ = writeln!(
            out,
            "{:<13} {:<9} {:>12} {:>21} {:>12}  {}",
            row.case, row.design, value, spread, ratio, how
        );
    }
    out.push('\n');
    for case in ["make-private", "flip-4k", "query", "memory"] {
        let of = |d: &str| r.rows.iter().find(|x| x.case == case && x.design == d);
        let best = r
            .rows
            .iter()
            .filter(|x| x.case == case && x.design != "cvmem" && x.design != "linux")
            .min_by(|a, b| a.value.total_cmp(&b.value));
        if let (Some(c), Some(b)) = (of("cvmem"), best) {
            let _ = writeln!(
                out,
                "{case}: cvmem {} vs best other {} {} = {:.2}x",
                show(&c.unit, c.value),
                b.design,
                show(&b.unit, b.value),
                c.value / b.value
            );
        }
    }
    let _ = writeln!(
        out,
        "\nlinux per 4K page: {:.1} ns to make private (this model, no locks or RCU; the kernel is \
         published at >= 97 ns per gfn), {:.2} bytes of xarray (576-byte nodes).",
        r.linux_per_page_ns, r.linux_per_page_bytes
    );
    out.push_str("vs linux: how many times faster (time) or smaller (memory) than linux.\n");
    out
}

//! The comparison as a table for people, and as charts.

use std::fmt::Write;

use cvmem_oplog::fmt_bytes;

use super::chart::{label, Bar, Chart, Unit};
use super::compare::{MinMedMax, Report, RowResult, Spread};
use super::sweep::Sweep;

fn ns(v: f64) -> String {
    label(v, Unit::Nanos)
}

/// The report as aligned text: one line per design and size, skipped runs with their reason.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let c = &report.config;
    let _ = writeln!(
        out,
        "workload {} · {} vCPUs · seed {} · budget {:.0} s / {} per run",
        c.workload,
        c.vcpus,
        c.seed,
        c.budget_secs,
        fmt_bytes(c.memory_budget)
    );
    let header = format!(
        "{:>6}  {:<9} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>10} {:>8} {:>8} {:>10}",
        "guest",
        "design",
        "tracking",
        "peak",
        "tables",
        "B/GiB",
        "conv p50",
        "conv p99",
        "conv total",
        "query p50",
        "query p99",
        "measured"
    );
    let mut last = 0;
    for row in &report.rows {
        if row.guest_bytes != last {
            last = row.guest_bytes;
            let info = report.workloads.iter().find(|w| w.guest_bytes == last);
            out.push('\n');
            if let Some(w) = info {
                let _ = writeln!(
                    out,
                    "{}: {} ops ({} conversions over {} pages, {} queries)",
                    fmt_bytes(last),
                    w.ops,
                    w.conversions,
                    w.work_pages,
                    w.queries
                );
            }
            let _ = writeln!(out, "{header}");
        }
        match &row.result {
            RowResult::Done {
                run,
                bytes_per_gib,
                spread,
            } => {
                let _ = writeln!(
                    out,
                    "{:>6}  {:<9} {:>10} {:>10} {:>10} {:>9.0} {:>9} {:>9} {:>10} {:>8} {:>8} {:>10}",
                    fmt_bytes(row.guest_bytes).to_string(),
                    row.design,
                    fmt_bytes(run.heap_bytes).to_string(),
                    fmt_bytes(run.peak_heap_bytes).to_string(),
                    fmt_bytes(run.table_bytes).to_string(),
                    bytes_per_gib,
                    ns(spread.conversion_p50_ns.median),
                    ns(spread.conversion_p99_ns.median),
                    ns(spread.conversion_total_ns.median),
                    ns(spread.query_p50_ns.median),
                    ns(spread.query_p99_ns.median),
                    run.measured_bytes
                        .map_or_else(|| "-".to_string(), |b| fmt_bytes(b).to_string()),
                );
                if spread.runs > 1 {
                    let r = |m: MinMedMax| format!("{}-{}", short_ns(m.min), short_ns(m.max));
                    let _ = writeln!(
                        out,
                        "{:>6}  {:<9} {:>43} {:>9} {:>9} {:>10} {:>8} {:>8}",
                        "",
                        "",
                        format!("min-max of {} runs:", spread.runs),
                        r(spread.conversion_p50_ns),
                        r(spread.conversion_p99_ns),
                        r(spread.conversion_total_ns),
                        r(spread.query_p50_ns),
                        r(spread.query_p99_ns),
                    );
                }
            }
            RowResult::Skipped { reason } => {
                let _ = writeln!(
                    out,
                    "{:>6}  {:<9} {}",
                    fmt_bytes(row.guest_bytes).to_string(),
                    row.design,
                    reason
                );
            }
        }
    }
    for line in verdict(report, "cvmem") {
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(
        "\ntracking: the design's bytes (linux: as the kernel allocates, 576-byte xarray nodes); \
         peak: most held at once; tables: page tables the design forces to exist; \
         B/GiB: (tracking + tables) per GiB of guest; measured: live bytes by the counting allocator (this process).\n\
         Every design answered every query identically.\n",
    );
    out
}

/// A time without its unit's space, for the narrow min-max cells.
fn short_ns(v: f64) -> String {
    ns(v).replace(' ', "")
}

/// How `design` stands against the best *other* design at each size, as ratios of medians
/// (below 1: better): total conversion time, query p50 and p99, tracking memory.
pub fn verdict(report: &Report, design: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for w in &report.workloads {
        let size = w.guest_bytes;
        let done = |r: &&super::compare::Row| r.guest_bytes == size && r.design != design;
        let Some(RowResult::Done {
            run: mine,
            spread: my,
            ..
        }) = report.row(design, size).map(|r| &r.result)
        else {
            continue;
        };
        let others: Vec<_> = report
            .rows
            .iter()
            .filter(done)
            .filter_map(|r| match &r.result {
                RowResult::Done { run, spread, .. } => Some((r.design.as_str(), run, spread)),
                RowResult::Skipped { .. } => None,
            })
            .collect();
        if others.is_empty() {
            continue;
        }
        let best = |f: &Figure| {
            others
                .iter()
                .map(|(d, r, s)| (*d, f(r, s)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .expect("not empty")
        };
        let mut cells = Vec::new();
        let figures: [(&str, &Figure); 4] = [
            ("conv total", &|_, s| s.conversion_total_ns.median),
            ("query p50", &|_, s| s.query_p50_ns.median),
            ("query p99", &|_, s| s.query_p99_ns.median),
            ("memory", &|r, _| (r.heap_bytes + r.table_bytes) as f64),
        ];
        for (name, f) in figures {
            let (who, theirs) = best(f);
            let ours = f(mine, my);
            if theirs > 0.0 {
                cells.push(format!("{name} {:.2}x ({who})", ours / theirs));
            }
        }
        lines.push(format!(
            "{design} at {} vs the best other design: {}",
            fmt_bytes(size),
            cells.join(", ")
        ));
    }
    if !lines.is_empty() {
        lines.insert(0, String::new());
    }
    lines
}

/// One figure of a design's row.
type Figure = dyn Fn(&super::run::Run, &Spread) -> f64;

/// Per design, in the report's order: `f` of each of its rows that gives something.
fn per_design<T>(
    report: &Report,
    f: impl Fn(&super::compare::Row) -> Option<T>,
) -> Vec<(String, Vec<T>)> {
    report
        .config
        .designs
        .iter()
        .map(|d| {
            let items = report.rows.iter().filter(|r| &r.design == d);
            (d.clone(), items.filter_map(&f).collect())
        })
        .collect()
}

/// The min-max spread of a time figure per design, for error bars.
fn spread_bars(report: &Report, f: impl Fn(&Spread) -> MinMedMax) -> Vec<(String, Vec<Bar>)> {
    per_design(report, |r| match &r.result {
        RowResult::Done { spread, .. } if spread.runs > 1 => {
            let m = f(spread);
            Some((r.guest_bytes as f64, m.min.max(0.5), m.max.max(0.5)))
        }
        _ => None,
    })
}

/// One point per size where a design ran, of the figure `f` (of the median run and the spread).
fn done_series(report: &Report, f: &Figure) -> Vec<(String, Vec<(f64, f64)>)> {
    per_design(report, |r| match &r.result {
        RowResult::Done { run, spread, .. } => Some((r.guest_bytes as f64, f(run, spread))),
        RowResult::Skipped { .. } => None,
    })
}

fn skipped_notes(report: &Report) -> Vec<String> {
    let mut notes = Vec::new();
    for d in &report.config.designs {
        let skipped: Vec<String> = report
            .rows
            .iter()
            .filter(|r| &r.design == d && matches!(r.result, RowResult::Skipped { .. }))
            .map(|r| fmt_bytes(r.guest_bytes).to_string())
            .collect();
        if !skipped.is_empty() {
            notes.push(format!("{d}: not run at {} (budget)", skipped.join(", ")));
        }
    }
    notes
}

/// Tracking memory against guest size, log-log.
pub fn memory_chart(report: &Report) -> Chart {
    Chart {
        title: format!("Tracking memory vs guest size ({})", report.config.workload),
        x_label: "guest RAM".into(),
        y_label: "tracking + forced page-table bytes".into(),
        x_unit: Unit::Bytes,
        y_unit: Unit::Bytes,
        series: done_series(report, &|r, _| (r.heap_bytes + r.table_bytes) as f64),
        notes: skipped_notes(report),
        bars: Vec::new(),
    }
}

/// Query latency (p50) against guest size.
pub fn query_chart(report: &Report) -> Chart {
    Chart {
        title: format!("Fault-path query time, p50 ({})", report.config.workload),
        x_label: "guest RAM".into(),
        y_label: "time per query".into(),
        x_unit: Unit::Bytes,
        y_unit: Unit::Nanos,
        series: done_series(report, &|_, s| s.query_p50_ns.median.max(0.5)),
        notes: {
            let mut n = skipped_notes(report);
            // Only where bars are drawn (a design ran more than once somewhere).
            if spread_bars(report, |s| s.query_p50_ns)
                .iter()
                .any(|(_, bars)| !bars.is_empty())
            {
                n.push("bars: min to max over the repeated runs; points: median".into());
            }
            n
        },
        bars: spread_bars(report, |s| s.query_p50_ns),
    }
}

/// Conversion time against range size.
pub fn conversion_chart(sweep: &Sweep, designs: &[String]) -> Chart {
    Chart {
        title: format!(
            "Conversion time vs range size (all-private {} guest)",
            fmt_bytes(sweep.guest_bytes)
        ),
        x_label: "range converted".into(),
        y_label: "time per conversion".into(),
        x_unit: Unit::Bytes,
        y_unit: Unit::Nanos,
        series: designs
            .iter()
            .map(|d| {
                let pts = sweep
                    .points
                    .iter()
                    .filter(|p| &p.design == d)
                    .map(|p| (p.range_bytes as f64, p.ns.max(1.0)))
                    .collect();
                (d.clone(), pts)
            })
            .collect(),
        notes: sweep
            .skipped
            .iter()
            .map(|(d, size, why)| format!("{d}: from {} on, {why}", fmt_bytes(*size)))
            .collect(),
        bars: Vec::new(),
    }
}

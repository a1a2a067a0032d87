//! The evaluator's outputs at small sizes: the bench's ratios and its plainly marked
//! extrapolation, the conversion sweep and the charts.

use std::time::Duration;

use cvmem_designs::eval::bench::{bench, bench_table, BenchConfig};
use cvmem_designs::eval::compare::{compare, Config, RowResult};
use cvmem_designs::eval::sweep::conversion_sweep;
use cvmem_designs::eval::table::{conversion_chart, memory_chart, query_chart, table};

#[test]
fn bench_marks_extrapolated_linux_figures() {
    let cfg = BenchConfig {
        designs: vec!["cvmem".into(), "bitmap".into()],
        guest_bytes: 8 << 30,
        linux_bytes: 4 << 30,
        flips: 2000,
        queries: 2000,
        seed: 5,
        flip_budget_secs: 30.0,
        repeat: 2,
    };
    let r = bench(&cfg, &mut |_, _| {}).unwrap();
    assert_eq!(r.rows.len(), 4 * 3, "4 cases x (linux + 2 designs)");
    for row in &r.rows {
        let linux = row.design == "linux";
        let scaled = row.case == "make-private" || row.case == "memory";
        assert_eq!(row.extrapolated, linux && scaled, "{row:?}");
        assert!(row.value > 0.0 && row.vs_linux.is_some(), "{row:?}");
        assert!(row.min <= row.value && row.value <= row.max, "{row:?}");
        assert_eq!(row.flips_done, 2000);
    }
    let memory = |d: &str| {
        r.rows
            .iter()
            .find(|x| x.case == "memory" && x.design == d)
            .unwrap()
            .value
    };
    assert!(
        memory("linux") > 100.0 * memory("cvmem"),
        "linux spends a node per 64 pages"
    );
    let text = bench_table(&r);
    assert!(text.contains("extrapolated per page to 8G"), "{text}");
    assert!(
        text.contains("min-max of 2") && text.contains("flip-4k: cvmem"),
        "{text}"
    );
    assert!(r.linux_per_page_bytes > 8.0 && r.linux_per_page_bytes < 10.0);
}

#[test]
fn budget_skips_are_reported_not_hidden() {
    let cfg = Config {
        designs: vec!["linux".into(), "cvmem".into()],
        workload: "startup".into(),
        sizes: vec![4 << 30, 1 << 40],
        vcpus: 2,
        seed: 1,
        flips: 10,
        queries: 500,
        budget_secs: 0.5,
        memory_budget: 1 << 30,
        repeat: 3,
    };
    let report = compare(&cfg, &mut |_| {}).unwrap();
    let text = table(&report);
    assert!(text.contains("linux     skipped: would exceed"), "{text}");
    assert_eq!(report.rows.len(), 4);
    // Every time figure over three runs: median in the row, min-max under it, min <= max.
    assert!(text.contains("min-max of 3 runs:"), "{text}");
    assert!(
        text.contains("cvmem at 4G vs the best other design: conv total"),
        "{text}"
    );
    for row in &report.rows {
        if let RowResult::Done { spread, .. } = &row.result {
            assert_eq!(spread.runs, 3);
            let q = spread.query_p50_ns;
            assert!(q.min <= q.median && q.median <= q.max, "{q:?}");
        }
    }
    let svg = memory_chart(&report).to_svg();
    assert!(svg.contains("<polyline") && svg.contains("linux: not run at 1T"));
    let query = query_chart(&report).to_svg();
    assert!(
        query.contains("cvmem") && query.contains("<path d=\"M"),
        "error bars drawn"
    );
}

#[test]
fn sweep_and_conversion_chart() {
    let designs = vec!["linux".to_string(), "cvmem".to_string()];
    let s = conversion_sweep(&designs, 8 << 30, Duration::from_secs(20));
    let linux: Vec<_> = s.points.iter().filter(|p| p.design == "linux").collect();
    assert!(linux.len() >= 5, "4K … 1G measured: {:?}", s.points);
    assert!(
        linux.last().unwrap().ns > linux[0].ns * 100.0,
        "linux grows with the range"
    );
    let svg = conversion_chart(&s, &designs).to_svg();
    assert_eq!(svg.matches("<polyline").count(), 2);
}

//! Every workload, at small sizes: generated deterministically, written as an op-log that parses
//! back to the same operations, and run by every design with identical answers.

use cvmem_designs::eval::compare::{compare, Config, RowResult};
use cvmem_designs::workloads::{generate, Params, WORKLOADS};
use cvmem_designs::DESIGNS;
use cvmem_oplog::parse;

fn small(guest_bytes: u64) -> Params {
    Params {
        guest_bytes,
        vcpus: 4,
        seed: 7,
        flips: 400,
        queries: 3000,
    }
}

#[test]
fn workloads_are_deterministic_and_round_trip_as_oplogs() {
    for (name, _) in WORKLOADS {
        let a = generate(name, &small(4 << 30)).unwrap();
        let b = generate(name, &small(4 << 30)).unwrap();
        assert_eq!(a.ops, b.ops, "{name}: same seed, same ops");
        assert!(
            a.queries() > 0 && a.conversions() > 0,
            "{name}: queries and conversions"
        );
        let mut text = Vec::new();
        a.write_oplog(&mut text).unwrap();
        let parsed = parse(std::str::from_utf8(&text).unwrap()).unwrap();
        let ops: Vec<_> = parsed.into_iter().map(|l| l.op).collect();
        assert_eq!(ops, a.ops, "{name}: op-log round trip");
        let c = generate(
            name,
            &Params {
                seed: 8,
                ..small(4 << 30)
            },
        )
        .unwrap();
        if !["startup", "mmio-storm", "checkerboard"].contains(name) {
            assert_ne!(a.ops, c.ops, "{name}: the seed matters");
        }
    }
}

#[test]
fn every_design_agrees_on_every_workload() {
    for (name, _) in WORKLOADS {
        let cfg = Config {
            designs: DESIGNS.iter().map(|s| s.to_string()).collect(),
            workload: name.to_string(),
            sizes: vec![4 << 30, 6 << 30],
            vcpus: 4,
            seed: 3,
            flips: 300,
            queries: 2000,
            budget_secs: 60.0,
            memory_budget: 4 << 30,
            repeat: 1,
        };
        let report = compare(&cfg, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
        for row in &report.rows {
            match &row.result {
                RowResult::Done { run, .. } => assert!(run.query.count > 0),
                RowResult::Skipped { reason } => panic!("{name}: {} skipped: {reason}", row.design),
            }
        }
    }
}

#[test]
fn bad_parameters_are_errors() {
    assert!(generate(
        "boot",
        &Params {
            guest_bytes: 3 << 20,
            ..small(0)
        }
    )
    .is_err());
    assert!(generate(
        "boot",
        &Params {
            vcpus: 0,
            ..small(4 << 30)
        }
    )
    .is_err());
    assert!(generate("nonsense", &small(4 << 30)).is_err());
}

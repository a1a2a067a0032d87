//! The spec's `examples/mmu.oplog` driven through [`cvmem::mmu::Vm`] directly: every result line
//! and the summary's `mmu` object must be those of `mmu.expected.jsonl`.

use std::fmt::Write as _;
use std::path::PathBuf;

use cvmem::mmu::{AcceptOutcome, FaultOutcome, FaultRangeCounts, Layout, Recovery, Vm};
use cvmem::oplog::{parse, Op};
use cvmem::{MapGpaRange, MaxLevel, MemoryRegion};

fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/spec/examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn levels(c: &cvmem::mmu::LevelCounts) -> String {
    format!(r#"{{"4K": {}, "2M": {}, "1G": {}}}"#, c.k4, c.m2, c.g1)
}

fn range_counts(r: &FaultRangeCounts) -> String {
    format!(
        r#""mapped": {}, "spurious": {}, "memory-fault": {}, "no-slot": {}"#,
        levels(&r.mapped),
        r.spurious,
        r.memory_fault,
        r.no_slot
    )
}

#[test]
fn mmu_example_gives_the_expected_results() {
    let log = parse(&example("mmu.oplog")).expect("the example parses");
    let mut vm = Vm::new(Layout::SPLIT, Recovery::OnFault);
    let mut out = Vec::new();
    for (i, line) in log.iter().enumerate() {
        let n = line.number;
        let result = match line.op {
            Op::Mmu { layout, recovery } if i == 0 => {
                vm = Vm::new(
                    layout.into(),
                    recovery.map_or(Recovery::OnFault, Into::into),
                );
                None
            }
            Op::Memslot {
                slot,
                gpa,
                size,
                flags,
                uaddr,
                backing,
            } => {
                let slot = u32::try_from(slot).unwrap();
                vm.set_user_memory_region(&MemoryRegion {
                    slot,
                    gpa,
                    size,
                    flags,
                    uaddr,
                    backing,
                })
                .unwrap();
                None
            }
            Op::Attrs {
                gpa,
                size,
                attributes,
            } => {
                vm.set_memory_attributes(gpa, size, attributes).unwrap();
                None
            }
            Op::MapGpa { gpa, npages, flags } => {
                vm.map_gpa_range(&MapGpaRange::decode(gpa, npages, flags).unwrap())
                    .unwrap();
                None
            }
            Op::Query { gpa, access } => Some(match vm.tracker().max_mapping_level(gpa, access) {
                MaxLevel::Level(l) => format!(r#""op": "query", "result": "{l}""#),
                MaxLevel::NoSlot => r#""op": "query", "result": "no-slot""#.to_string(),
                MaxLevel::MemoryFault(_) => {
                    r#""op": "query", "result": "memory-fault""#.to_string()
                }
            }),
            Op::Fault { gpa, access } => Some(match vm.fault(gpa, access).unwrap() {
                FaultOutcome::Mapped { level } => {
                    format!(r#""op": "fault", "result": "mapped", "level": "{level}""#)
                }
                o => format!(r#""op": "fault", "result": "{}""#, o.name()),
            }),
            Op::FaultRange { gpa, size, access } => {
                let r = vm.fault_range(gpa, size, access).unwrap();
                Some(format!(r#""op": "fault-range", {}"#, range_counts(&r)))
            }
            Op::Accept { gpa, level } => {
                let o: AcceptOutcome = vm.accept(gpa, level).unwrap();
                Some(format!(r#""op": "accept", "result": "{}""#, o.name()))
            }
            ref op => panic!("unexpected {op}"),
        };
        if let Some(r) = result {
            out.push(format!(r#"{{"line": {n}, {r}}}"#));
        }
        vm.check_invariants().unwrap();
    }
    let s = vm.stats();
    let mut mmu = String::new();
    write!(
        mmu,
        r#""mmu": {{"layout": "{}", "leaves": {{"private": {}, "shared": {}}}, "table_pages": {}, "splits": {}, "zaps": {}, "collapses": {}}}"#,
        s.layout,
        levels(&s.private),
        levels(&s.shared),
        s.table_pages,
        s.splits,
        s.zaps,
        s.collapses
    )
    .unwrap();
    let expected = example("mmu.expected.jsonl");
    let mut lines: Vec<&str> = expected.lines().filter(|l| !l.trim().is_empty()).collect();
    let summary = lines.pop().expect("a summary line");
    assert_eq!(out, lines);
    assert!(
        summary.contains(&mmu),
        "{summary}\n does not contain\n{mmu}"
    );
}

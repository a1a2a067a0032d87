//! The spec's example op-logs parse, name the operations their expected output names, and round-trip.

use super::*;

/// The spec's examples, as checked into the repository (`crates/cvmem-cli/tests/fixtures`).
fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cvmem-cli/tests/fixtures")
}

/// Reads the example `NAME`; it is part of the repository, so a missing file is a failure.
fn example(name: &str) -> String {
    let path = fixtures().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Checks that every result line of an expected `.jsonl` names the operation on that line.
fn check_expected_lines(lines: &[Line], expected: &str) {
    let mut checked = 0;
    for json in expected.lines().filter(|l| l.contains("\"line\":")) {
        let field = |key: &str| -> &str {
            let start = json
                .find(key)
                .unwrap_or_else(|| panic!("no {key} in {json}"))
                + key.len();
            let rest = json[start..].trim_start_matches([' ', '"']);
            let end = rest.find(['"', ',', '}']).unwrap_or(rest.len());
            &rest[..end]
        };
        let number: usize = field("\"line\":").parse().unwrap();
        let name = field("\"op\":");
        let line = lines
            .iter()
            .find(|l| l.number == number)
            .unwrap_or_else(|| panic!("no op on line {number}"));
        assert_eq!(line.op.name(), name, "line {number}");
        checked += 1;
    }
    assert!(checked > 0, "no result lines in the expected output");
}

/// Checks that every parsed op prints back to a line that parses to the same op.
fn check_round_trip(lines: &[Line]) {
    for line in lines {
        let text = line.op.to_string();
        assert_eq!(
            parse_line(&text),
            Ok(Some(line.op)),
            "line {}: {text}",
            line.number
        );
    }
}

#[test]
fn example_basic_parses() {
    let (text, expected) = (example("basic.oplog"), example("basic.expected.jsonl"));
    let lines = parse(&text).unwrap();
    assert_eq!(lines.len(), 19);
    assert_eq!(
        lines[0],
        Line {
            number: 2,
            op: slot_with(memslot(0, 0, 2 * G), GUEST_MEMFD, None, None),
        }
    );
    assert_eq!(lines[2].op, memslot(2, 0xfec0_0000, 4 * K));
    assert_eq!(
        lines[5].op,
        Op::MapGpa {
            gpa: 0x1000_0000,
            npages: 16384,
            flags: 0
        }
    );
    assert_eq!(
        lines[16].op,
        Op::Attrs {
            gpa: Gpa(0x1000),
            size: 0x1001,
            attributes: 8
        }
    );
    assert_eq!(
        lines[18],
        Line {
            number: 20,
            op: Op::MapGpa {
                gpa: 0x2000,
                npages: 1,
                flags: 0x20
            }
        }
    );
    check_expected_lines(&lines, &expected);
    check_round_trip(&lines);
}

#[test]
fn example_mmu_parses() {
    let (text, expected) = (example("mmu.oplog"), example("mmu.expected.jsonl"));
    let lines = parse(&text).unwrap();
    assert_eq!(lines.len(), 13);
    assert_eq!(
        lines[0],
        Line {
            number: 2,
            op: Op::Mmu {
                layout: Layout::Split,
                recovery: Some(Recovery::Eager)
            }
        }
    );
    assert_eq!(
        lines[9],
        Line {
            number: 11,
            op: Op::Accept {
                gpa: Gpa(0x40_0000),
                level: Level::K4
            }
        }
    );
    assert_eq!(
        lines[12],
        Line {
            number: 14,
            op: Op::FaultRange {
                gpa: Gpa(0),
                size: 4 * M,
                access: Access::Private
            }
        }
    );
    check_expected_lines(&lines, &expected);
    check_round_trip(&lines);
}

#[test]
fn every_example_oplog_parses_and_round_trips() {
    let dir = fixtures();
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut parsed = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "oplog") {
            let text = std::fs::read_to_string(&path).unwrap();
            let lines = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!lines.is_empty(), "{}", path.display());
            check_round_trip(&lines);
            parsed += 1;
        }
    }
    assert!(
        parsed >= 2,
        "expected at least basic.oplog and mmu.oplog in {}",
        dir.display()
    );
}

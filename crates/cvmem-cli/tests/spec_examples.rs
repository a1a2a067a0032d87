//! `cvmem replay --json` on the spec's example op-logs must print their expected results.
//!
//! The examples are kept in `tests/fixtures` (copied from the spec), so a plain clone checks them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn replay(oplog: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_cvmem"))
        .arg("replay")
        .arg(oplog)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay {} failed: {}",
        oplog.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every key of `expected` must be in `actual` with the same value (`message` is free text).
fn assert_subset(expected: &Value, actual: &Value, at: &str) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                if k == "message" {
                    continue;
                }
                let got = a
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}: key {k} missing in {actual}"));
                assert_subset(v, got, &format!("{at}.{k}"));
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            assert_eq!(e.len(), a.len(), "{at}: array length");
            for (i, (e, a)) in e.iter().zip(a).enumerate() {
                assert_subset(e, a, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(expected, actual, "at {at}"),
    }
}

fn check(dir: &Path, name: &str) {
    let expected_text =
        std::fs::read_to_string(dir.join(format!("{name}.expected.jsonl"))).unwrap();
    let expected: Vec<Value> = expected_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actual = replay(&dir.join(format!("{name}.oplog")));
    assert_eq!(
        expected.len(),
        actual.len(),
        "{name}: number of output lines"
    );
    for (e, a) in expected.iter().zip(&actual) {
        let mut e = e.clone();
        // The spec compares only these parts of the summary; extra keys are welcome.
        if let Some(mmu) = e.pointer_mut("/summary/mmu").and_then(Value::as_object_mut) {
            mmu.retain(|k, _| k == "leaves" || k == "table_pages" || k == "layout");
        }
        assert_subset(&e, a, name);
    }
}

fn examples(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .into_string()
                .ok()?
                .strip_suffix(".oplog")
                .map(String::from)
        })
        .filter(|n| dir.join(format!("{n}.expected.jsonl")).exists())
        .collect();
    names.sort();
    names
}

#[test]
fn fixture_examples() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let names = examples(&dir);
    assert_eq!(names, ["basic", "gmem", "mmu"]);
    for name in names {
        check(&dir, &name);
    }
}

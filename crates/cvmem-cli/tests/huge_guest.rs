//! A 64 TiB guest (16 slots of 4 TiB) set private, sprinkled with 5,000 shared 4K pages and queried
//! 5,000 times, replayed from an op-log: every answer is checked. (Time it with
//! `cvmem replay` on the file this writes to the target dir; the README gives the figure.)

use std::fmt::Write as _;
use std::process::Command;

const K4: u64 = 4096;
const T4: u64 = 4 << 40;

#[test]
fn sixty_four_tib_guest_replays_and_answers_right() {
    let mut log = String::from("# 64 TiB guest: 16 guest_memfd slots of 4 TiB\n");
    for slot in 0..16u64 {
        writeln!(log, "memslot {slot} {:#x} 4T guest-memfd", slot * T4).unwrap();
        writeln!(log, "attrs {:#x} 4T private", slot * T4).unwrap();
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut shared = Vec::new();
    for _ in 0..5000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let gpa = (x % (16 * T4 / K4)) * K4;
        shared.push(gpa);
        writeln!(log, "map-gpa {gpa:#x} 1 0").unwrap();
    }
    for &gpa in &shared {
        writeln!(log, "query {gpa:#x} shared").unwrap();
    }
    // Far from any shared page, a private access may use 1G (the 1G page holds no shared page).
    let lonely: Vec<u64> = (0..16u64)
        .flat_map(|slot| (0..8u64).map(move |k| slot * T4 + k * 517 * (1 << 30)))
        .filter(|g| shared.iter().all(|s| s >> 30 != g >> 30))
        .collect();
    for &gpa in &lonely {
        writeln!(log, "query {gpa:#x} private").unwrap();
    }
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-64t.oplog");
    std::fs::write(&path, &log).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cvmem"))
        .arg("replay")
        .arg(&path)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let results: Vec<&str> = lines.iter().filter_map(|v| v["result"].as_str()).collect();
    assert_eq!(results.len(), shared.len() + lonely.len());
    assert!(
        results[..shared.len()].iter().all(|&r| r == "4K"),
        "a lone shared page maps at 4K"
    );
    assert!(results[shared.len()..].iter().all(|&r| r == "1G"));
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(summary["memslots"].as_array().unwrap().len(), 16);
    assert_eq!(summary["errors"], 0);
}

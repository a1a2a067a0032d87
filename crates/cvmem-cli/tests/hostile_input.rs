//! `cvmem replay` on hostile op-logs: a 10^6-line file, numbers at and past the u64 limits in
//! every operation, 1 MiB lines, binary garbage, thousands of memslots, unreadable inputs and a
//! closed standard output. Whatever the input, the process ends with 0 (replayed), 1 (parse
//! error) or 2 (I/O error) and never prints a Rust panic; a watchdog turns a hang into a failure.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest any one replay here may take (the slowest takes about a second).
const WATCHDOG: Duration = Duration::from_secs(60);
const U64_MAX: &str = "18446744073709551615";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    /// The JSON objects printed, all of which must parse.
    fn json(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {e}: {l:.200}")))
            .collect()
    }
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("hostile-{name}"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Runs `cvmem replay ARGS`, feeding `stdin`; fails on a hang, a signal or a panic.
fn cvmem(args: &[&std::ffi::OsStr], stdin: &[u8]) -> Run {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cvmem"))
        .arg("replay")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&stdin); // the child may stop reading early
    });
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).unwrap();
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).unwrap();
        v
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > WATCHDOG {
            child.kill().unwrap();
            panic!("cvmem replay {args:?} still running after {WATCHDOG:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    feeder.join().unwrap();
    let stdout = String::from_utf8(reader.join().unwrap()).expect("stdout is UTF-8");
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "cvmem panicked on {args:?}: {stderr:.2000}"
    );
    let code = status
        .code()
        .unwrap_or_else(|| panic!("cvmem killed by a signal ({status}): {stderr:.2000}"));
    assert!(matches!(code, 0..=2), "exit status {code}: {stderr:.2000}");
    Run {
        code,
        stdout,
        stderr,
        elapsed: start.elapsed(),
    }
}

/// Replays `text` from a file, as JSON Lines, and also as text for people.
fn replay(name: &str, text: &[u8]) -> Run {
    let path = temp_file(name, text);
    let text_run = cvmem(&[path.as_os_str()], b"");
    let run = cvmem(&[path.as_os_str(), "--json".as_ref()], b"");
    assert_eq!(run.code, text_run.code, "{name}: JSON and text runs differ");
    run
}

/// The operations with their numeric argument positions, as templates: `{}` is replaced.
const TEMPLATES: [&str; 14] = [
    "memslot {} 0x0 0x200000",
    "memslot 7 {} 0x200000 guest-memfd",
    "memslot 8 0x40000000 {}",
    "memslot 9 0x80000000 0x200000 uaddr={}",
    "attrs {} 0x200000 private",
    "attrs 0x0 {} private",
    "attrs 0x0 0x200000 {}",
    "map-gpa {} 512 0x10",
    "map-gpa 0x0 {} 0x10",
    "map-gpa 0x0 512 {}",
    "query {} private",
    "fault {} shared",
    "fault-range {} 0x200000 private",
    "accept {} 2M",
];

/// Values at the limits of the gfn space, of u64, of alignment and of slot sizes.
const LIMITS: [&str; 16] = [
    "0",
    "1",
    "0xfff",
    "0x1000",
    "4K",
    "0x7fffffff000",
    "8796093018112",
    "0xfffffffffffff",
    "0x10000000000000",
    "0x8000000000000000",
    "0xfffffffffffff000",
    "0xffffffffffffe000",
    "18446744073709551614",
    U64_MAX,
    "16777215T",
    "0x0000000000000000000000000000000000001000",
];

#[test]
fn every_operation_at_every_limit() {
    // Under the default MMU model and both explicit layouts.
    for (name, header) in [
        ("limits.oplog", ""),
        ("limits-split.oplog", "mmu split recovery=eager\n"),
        ("limits-unified.oplog", "mmu unified recovery=off\n"),
    ] {
        every_limit(name, header);
    }
}

fn every_limit(name: &str, header: &str) {
    let mut log = format!("{header}memslot 0 0x0 0x100000000 guest-memfd\nattrs 0 4G private\n");
    let mut lines = 2 + header.lines().count() as u64;
    for template in TEMPLATES {
        for limit in LIMITS {
            writeln!(log, "{}", template.replace("{}", limit)).unwrap();
            lines += 1;
        }
    }
    // Every argument at its largest at once.
    for line in [
        format!("memslot 32763 {U64_MAX} {U64_MAX} guest-memfd dirty-log readonly uaddr={U64_MAX} backing=1G"),
        format!("attrs {U64_MAX} {U64_MAX} {U64_MAX}"),
        format!("map-gpa {U64_MAX} {U64_MAX} {U64_MAX}"),
        format!("fault-range {U64_MAX} {U64_MAX} shared"),
        "fault-range 0 0xfffffffffffff000 private".to_string(),
        "fault-range 0x1000 0xfffffffffffff000 shared".to_string(),
        format!("accept {U64_MAX} 1G"),
        // The last page cannot be in a slot (gpa + size would wrap to 0); the one before can.
        "memslot 1 0xfffffffffffff000 0x1000 guest-memfd".to_string(),
        "memslot 2 0xffffffffffffe000 0x1000 guest-memfd".to_string(),
        "attrs 0xffffffffffffe000 0x1000 private".to_string(),
        "query 0xffffffffffffe000 private".to_string(),
        "attrs 0xfffffffffffff000 0x1000 private".to_string(),
        "query 0xfffffffffffff000 private".to_string(),
        "query 0xffffffffffffffff private".to_string(),
        "mmu split recovery=eager".to_string(),
    ] {
        writeln!(log, "{line}").unwrap();
        lines += 1;
    }
    let run = replay(name, log.as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let objects = run.json();
    let summary = objects.last().unwrap();
    assert!(summary.get("summary").is_some(), "the summary comes last");
    let mut errnos = std::collections::BTreeSet::new();
    for o in &objects[..objects.len() - 1] {
        let line = o["line"].as_u64().expect("every result names its line");
        assert!((1..=lines).contains(&line));
        if let Some(errno) = o.get("error") {
            // What the core can say here: EINVAL (KVM's checks) and EEXIST (overlapping slots).
            // ENOMEM only on a failed allocation, which these few slots and regions never meet.
            let errno = errno.as_str().unwrap();
            assert!(["EINVAL", "EEXIST"].contains(&errno), "{o}");
            errnos.insert(errno.to_string());
        } else {
            assert!(
                o.get("result").is_some() || o.get("mapped").is_some(),
                "{o}"
            );
        }
    }
    assert_eq!(errnos.len(), 2, "both errnos occur: {errnos:?}");
    // The large valid slot at the top of the address space made it in.
    let slots = summary["summary"]["memslots"].as_array().unwrap();
    assert!(slots.iter().any(|s| s["gpa"] == 0xffff_ffff_ffff_e000u64));
    assert!(!slots.iter().any(|s| s["gpa"] == 0xffff_ffff_ffff_f000u64));
}

#[test]
fn numbers_past_u64_are_parse_errors_in_every_position() {
    for template in TEMPLATES {
        for too_big in [
            "18446744073709551616",
            "0x10000000000000000",
            "16777216T",
            "99999999999999999999999",
        ] {
            let log = format!(
                "query 0 private\n{}\nquery 0 shared\n",
                template.replace("{}", too_big)
            );
            let run = cvmem(&["-".as_ref(), "--json".as_ref()], log.as_bytes());
            assert_eq!(run.code, 1, "{log}: {}", run.stderr);
            let objects = run.json();
            let last = objects.last().unwrap();
            assert_eq!(last["line"], 2, "{log}");
            assert!(
                last["parse_error"].as_str().unwrap().contains("64 bits"),
                "{last}"
            );
            assert!(run.stderr.contains("line 2"), "{}", run.stderr);
        }
    }
}

#[test]
fn a_million_lines_replay_in_seconds() {
    let mut log = String::with_capacity(32 << 20);
    log.push_str("memslot 0 0 64G guest-memfd\nattrs 0 64G private\n");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut queries = 0;
    for i in 0..1_000_000u64 - 2 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let gpa = (x % 20_000) * 0x1000 * 97;
        match i % 100 {
            0 => {
                writeln!(log, "query {gpa:#x} private").unwrap();
                queries += 1;
            }
            1..=40 => writeln!(log, "map-gpa {gpa:#x} 1 {}", (i % 2) * 0x10).unwrap(),
            41..=80 => writeln!(
                log,
                "attrs {gpa} 4K {}",
                ["private", "shared"][i as usize % 2]
            )
            .unwrap(),
            81..=90 => log.push_str("# a comment line\n"),
            _ => log.push('\n'),
        }
    }
    assert_eq!(log.lines().count(), 1_000_000);
    let path = temp_file("million.oplog", log.as_bytes());
    let run = cvmem(&[path.as_os_str(), "--json".as_ref()], b"");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let objects = run.json();
    assert_eq!(
        objects.len(),
        queries + 1,
        "one result per query, then the summary"
    );
    assert!(objects[..queries].iter().all(|o| o.get("result").is_some()));
    eprintln!("10^6 lines replayed in {:?}", run.elapsed);
    assert!(run.elapsed < Duration::from_secs(30), "{:?}", run.elapsed);
}

#[test]
fn one_mib_lines() {
    const MIB: usize = 1 << 20;
    let long_number = "1".repeat(MIB);
    let zeros = "0".repeat(MIB);
    let cases: Vec<(&str, String, i32)> = vec![
        ("number", format!("attrs 0 {long_number} private\n"), 1),
        ("hex", format!("attrs 0 0x{long_number} private\n"), 1),
        (
            "leading-zeros",
            format!("attrs 0x{zeros}1000 {zeros}4096 private\nquery 0x1000 private\n"),
            0,
        ),
        (
            "spaces",
            format!("{}attrs 0 4K private\n", " ".repeat(MIB)),
            0,
        ),
        (
            "trailing-tabs",
            format!("query 0 shared{}\n", "\t".repeat(MIB)),
            0,
        ),
        (
            "comment",
            format!("query 0 shared # {}\n", "x".repeat(MIB)),
            0,
        ),
        ("keyword", format!("{}\n", "memslot".repeat(MIB / 7)), 1),
        (
            "flags",
            format!("memslot 0 0 4K{}\n", " readonly".repeat(MIB / 9)),
            1,
        ),
        ("unicode", format!("query 0 {}\n", "é".repeat(MIB / 2)), 1),
        (
            "many-tokens",
            format!("query 0 shared{}\n", " 0".repeat(MIB / 2)),
            1,
        ),
    ];
    for (name, text, code) in cases {
        let run = replay(name, text.as_bytes());
        assert_eq!(run.code, code, "{name}: {}", run.stderr);
        // A quoted token is cut: no message carries the megabyte along.
        assert!(
            run.stderr.len() < 1024,
            "{name}: stderr of {} bytes",
            run.stderr.len()
        );
        assert!(
            run.stdout.lines().all(|l| l.len() < 4096),
            "{name}: a long JSON line"
        );
    }
}

#[test]
fn binary_garbage() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut bytes = |n: usize, alphabet: &[u8]| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if alphabet.is_empty() {
                    x as u8
                } else {
                    alphabet[(x % alphabet.len() as u64) as usize]
                }
            })
            .collect()
    };
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("random-1mib".into(), bytes(1 << 20, b"")),
        ("nul-and-newlines".into(), bytes(1 << 16, b"\0\n\r\t ")),
        ("all-ff".into(), vec![0xff; 1 << 16]),
        (
            "cr-only".into(),
            b"memslot 0 0 2M\rquery 0 shared\r".to_vec(),
        ),
        (
            "bom".into(),
            b"\xef\xbb\xbfmemslot 0 0 2M\nquery 0 shared".to_vec(),
        ),
        ("nul-in-number".into(), b"memslot 0 0 2\x00M\n".to_vec()),
        (
            "bad-utf8-in-keyword".into(),
            b"mem\xc3slot 0 0 2M\n".to_vec(),
        ),
        ("empty".into(), Vec::new()),
    ];
    // Garbage made of op-log words: it parses often, so the replay engine sees it too.
    let words: &[&[u8]] = &[
        b"memslot ",
        b"attrs ",
        b"map-gpa ",
        b"query ",
        b"fault-range ",
        b"accept ",
        b"0 ",
        b"0x1000 ",
        b"2M ",
        b"1G ",
        b"private ",
        b"shared ",
        b"guest-memfd ",
        b"\n",
        b"\n",
        b"0xfffffffffffff000 ",
        b"18446744073709551615 ",
        b"uaddr=0x1000 ",
        b"backing=2M ",
        b"# ",
    ];
    for seed in 0..4 {
        let picks = bytes(20_000, b"");
        let text: Vec<u8> = picks
            .iter()
            .flat_map(|&b| words[usize::from(b) % words.len()].iter().copied())
            .collect();
        cases.push((format!("words-{seed}"), text));
    }
    for (name, data) in cases {
        let run = replay(&name, &data);
        assert!(run.code <= 1, "{name}: {}", run.stderr);
        let objects = run.json();
        if run.code == 0 {
            assert!(objects.last().unwrap().get("summary").is_some(), "{name}");
        } else {
            assert!(
                objects.last().unwrap().get("parse_error").is_some(),
                "{name}"
            );
        }
    }
}

#[test]
fn thousands_of_memslots() {
    // Every user memslot id, created in decreasing address order (each insert goes in front),
    // then queried and deleted; and ids just past the limit.
    let mut log = String::new();
    for id in 0..=32763u64 {
        writeln!(log, "memslot {id} {:#x} 0x200000", (32763 - id) << 21).unwrap();
    }
    log.push_str("memslot 32764 0x1000000000 4K\nmemslot 4294967296 0x1000000000 4K\n");
    for id in (0..=32763u64).step_by(97) {
        writeln!(log, "query {:#x} shared", (32763 - id) << 21).unwrap();
    }
    for id in 0..=32763u64 {
        writeln!(log, "memslot {id} 0 0").unwrap();
    }
    let path = temp_file("slots.oplog", log.as_bytes());
    let run = cvmem(&[path.as_os_str(), "--json".as_ref()], b"");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let objects = run.json();
    let errors = objects.iter().filter(|o| o.get("error").is_some()).count();
    assert_eq!(errors, 2, "the two ids past 32763");
    let results: Vec<&str> = objects
        .iter()
        .filter_map(|o| o["result"].as_str())
        .collect();
    assert!(results.len() > 300 && results.iter().all(|&r| r == "2M"));
    assert_eq!(
        objects.last().unwrap()["summary"]["memslots"],
        serde_json::json!([])
    );
    eprintln!(
        "32,764 memslots created, queried, deleted in {:?}",
        run.elapsed
    );

    // The largest slots KVM allows (2^31 - 1 pages, 8 TiB), 64 of them.
    let mut log = String::new();
    for id in 0..64u64 {
        writeln!(
            log,
            "memslot {id} {:#x} 0x7fffffff000 guest-memfd",
            id << 43
        )
        .unwrap();
        writeln!(log, "attrs {:#x} 0x7fffffff000 private", id << 43).unwrap();
    }
    writeln!(log, "query {:#x} private", 63u64 << 43).unwrap();
    let run = replay("big-slots.oplog", log.as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()[0]["result"], "1G");
    eprintln!("64 slots of 8 TiB in {:?}", run.elapsed);
}

#[test]
fn unreadable_inputs_and_a_closed_stdout() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let run = cvmem(&[dir.as_os_str()], b"");
    assert_eq!(run.code, 2, "a directory: {}", run.stderr);
    let missing = dir.join("no-such-file.oplog");
    let run = cvmem(&[missing.as_os_str()], b"");
    assert_eq!(run.code, 2, "a missing file: {}", run.stderr);
    assert!(run.stderr.contains("no-such-file"));
    // Standard input, garbage.
    let run = cvmem(&["-".as_ref()], b"\xff\xfe\x00query 0 private\n");
    assert_eq!(run.code, 1);

    // `cvmem replay big.oplog | head -1`: the reader goes away; cvmem ends quietly (0) or
    // reports the write error (2), and never panics on the failed write.
    let mut log = String::from("memslot 0 0 1G guest-memfd\n");
    for i in 0..100_000u64 {
        writeln!(log, "query {:#x} shared", (i % 262_144) << 12).unwrap();
    }
    let path = temp_file("pipe.oplog", log.as_bytes());
    let mut child = Command::new(env!("CARGO_BIN_EXE_cvmem"))
        .args(["replay".as_ref(), path.as_os_str(), "--json".as_ref()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(matches!(out.status.code(), Some(0 | 2)), "{stderr}");
}

#[test]
fn a_line_past_the_limit_is_refused_before_it_is_read_whole() {
    // 5 MiB of comment with no newline: past the 4 MiB line limit, refused with exit 2.
    let text = format!("memslot 0 0 1G # {}", "x".repeat(5 << 20));
    let run = replay("over-long-line", text.as_bytes());
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("line 1 is longer than"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.len() < 1024);
}

#[test]
fn terminal_control_bytes_are_echoed_escaped() {
    let run = replay(
        "escapes",
        b"memslot 0 0 1G\nattrs 0 \x1b[2J\x1b]0;title\x07 private\n",
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        !run.stderr.bytes().any(|b| b == 0x1b || b == 0x07),
        "{:?}",
        run.stderr
    );
    assert!(run.stderr.contains("\\u{1b}[2J"), "{}", run.stderr);
}

/// `cvmem ARGS` (any command): its exit code and standard error.
fn command(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cvmem"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    (out.status.code().expect("no signal"), stderr)
}

#[test]
fn counts_and_sizes_that_cannot_be_honoured_exit_2() {
    for (args, says) in [
        (
            "compare --sizes 4G --designs cvmem --workload random-flips --flips 100000000 --repeat 1",
            "memory budget",
        ),
        (
            "bench --size 4G --flips 18446744073709551615 --designs cvmem --repeat 1",
            "overflows",
        ),
        ("bench --size 0", "guest size"),
        ("compare --sizes 4G --designs cvmem --memory-budget 1", "--memory-budget"),
        ("compare --sizes 0x1001 --designs cvmem", "guest size"),
    ] {
        let args: Vec<&str> = args.split(' ').collect();
        let (code, stderr) = command(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

//! Tests of the op-log parser: every operation, flag and malformed form, the spec's examples, and
//! a Display/parse round trip.

extern crate std;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use alloc::{format, vec};

use proptest::prelude::*;

use super::*;
use crate::addr::Level;

const K: u64 = 1 << 10;
const M: u64 = 1 << 20;
const G: u64 = 1 << 30;
const T: u64 = 1 << 40;

/// Parses a line that must hold one operation.
fn op(line: &str) -> Op {
    match parse_line(line) {
        Ok(Some(op)) => op,
        other => panic!("`{line}` should parse to an operation, got {other:?}"),
    }
}

/// Parses a line that must fail, returning what is wrong.
fn err(line: &str) -> ParseErrorKind {
    match parse_line(line) {
        Err(e) => {
            assert_eq!(e.line, 0, "parse_line does not know line numbers");
            e.kind
        }
        Ok(other) => panic!("`{line}` should not parse, got {other:?}"),
    }
}

fn bad_number(argument: &'static str, token: &str, reason: NumberError) -> ParseErrorKind {
    ParseErrorKind::BadNumber {
        argument,
        token: token.to_string(),
        reason,
    }
}

fn memslot(slot: u64, gpa: u64, size: u64) -> Op {
    Op::Memslot {
        slot,
        gpa,
        size,
        flags: MemslotFlags::default(),
        uaddr: None,
        backing: None,
    }
}

// ---- numbers ----

#[test]
fn numbers_decimal_hex_and_suffixes() {
    let cases: &[(&str, u64)] = &[
        ("0", 0),
        ("4096", 4096),
        ("007", 7),
        ("1K", K),
        ("4K", 4 * K),
        ("2M", 2 * M),
        ("4G", 4 * G),
        ("3T", 3 * T),
        ("0K", 0),
        ("0x0", 0),
        ("0x1000", 0x1000),
        ("0x100000000", 1 << 32),
        ("0xfec00000", 0xfec0_0000),
        ("0xFEC00000", 0xfec0_0000),
        ("0xAbCdEf", 0xab_cdef),
        ("0x00000000000000000000000001", 1),
        ("18446744073709551615", u64::MAX),
        ("0xffffffffffffffff", u64::MAX),
        ("16777215T", (1 << 24) * T - T),
        ("17179869183G", u64::MAX >> 30 << 30),
    ];
    for &(token, value) in cases {
        assert_eq!(parse_number(token), Ok(value), "{token}");
    }
}

#[test]
fn numbers_malformed() {
    use NumberError::*;
    let cases: &[(&str, NumberError)] = &[
        ("", Empty),
        ("0x", Empty),
        ("K", Empty),
        ("T", Empty),
        ("0x1M", HexSuffix),
        ("0x10K", HexSuffix),
        ("0xffG", HexSuffix),
        ("0x1T", HexSuffix),
        ("0xK", InvalidDigit),
        ("0X10", InvalidDigit),
        ("0x1g", InvalidDigit),
        ("0x1 ", InvalidDigit),
        ("-1", InvalidDigit),
        ("+1", InvalidDigit),
        ("1_000", InvalidDigit),
        ("4k", InvalidDigit),
        ("2m", InvalidDigit),
        ("1KK", InvalidDigit),
        ("1KB", InvalidDigit),
        ("1.5G", InvalidDigit),
        ("0b101", InvalidDigit),
        ("1e3", InvalidDigit),
        ("٣", InvalidDigit),
        ("18446744073709551616", Overflow),
        ("99999999999999999999999", Overflow),
        ("0x10000000000000000", Overflow),
        ("16777216T", Overflow),
        ("20000000T", Overflow),
        ("17179869184G", Overflow),
        ("18014398509481984K", Overflow),
    ];
    for &(token, reason) in cases {
        assert_eq!(parse_number(token), Err(reason), "{token}");
    }
}

// ---- every operation ----

#[test]
fn memslot_plain_and_every_flag() {
    assert_eq!(op("memslot 0 0 2G"), memslot(0, 0, 2 * G));
    assert_eq!(
        op("memslot 32763 0x100000000 0"),
        memslot(32763, 1 << 32, 0)
    );
    assert_eq!(
        op("memslot 1 0x1000 4K guest-memfd"),
        Op::Memslot {
            slot: 1,
            gpa: 0x1000,
            size: 4 * K,
            flags: MemslotFlags {
                guest_memfd: true,
                dirty_log: false,
                readonly: false
            },
            uaddr: None,
            backing: None,
        }
    );
    let all = Op::Memslot {
        slot: 7,
        gpa: 2 * M,
        size: 1 * G,
        flags: MemslotFlags {
            guest_memfd: true,
            dirty_log: true,
            readonly: true,
        },
        uaddr: Some(0x7f00_0020_0000),
        backing: Some(Level::M2),
    };
    assert_eq!(
        op("memslot 7 2M 1G guest-memfd dirty-log readonly uaddr=0x7f0000200000 backing=2M"),
        all
    );
    // Flags in any order, separated by any white space.
    assert_eq!(
        op("memslot\t7 0x200000 0x40000000   backing=2M readonly\tuaddr=0x7f0000200000 dirty-log guest-memfd"),
        all
    );
    for (name, flags) in [
        (
            "dirty-log",
            MemslotFlags {
                dirty_log: true,
                ..MemslotFlags::default()
            },
        ),
        (
            "readonly",
            MemslotFlags {
                readonly: true,
                ..MemslotFlags::default()
            },
        ),
    ] {
        let Op::Memslot { flags: parsed, .. } = op(&format!("memslot 0 0 4K {name}")) else {
            panic!("not a memslot");
        };
        assert_eq!(parsed, flags, "{name}");
    }
    assert_eq!(
        op("memslot 0 0 4K uaddr=4G"),
        Op::Memslot {
            uaddr: Some(4 * G),
            ..memslot(0, 0, 4 * K)
        }
    );
    for level in Level::ALL {
        assert_eq!(
            op(&format!("memslot 0 0 4K backing={}", level.name())),
            Op::Memslot {
                backing: Some(level),
                ..memslot(0, 0, 4 * K)
            }
        );
    }
}

#[test]
fn memslot_keeps_values_that_are_operation_errors() {
    // Out-of-range slot ids, unaligned addresses and forbidden flag pairs are EINVAL for the
    // replay engine, not parse errors.
    assert_eq!(op("memslot 32764 0 4K"), memslot(32764, 0, 4 * K));
    assert_eq!(
        op("memslot 18446744073709551615 0 4K"),
        memslot(u64::MAX, 0, 4 * K)
    );
    assert_eq!(op("memslot 0 0x1001 0x1001"), memslot(0, 0x1001, 0x1001));
    assert_eq!(
        op("memslot 0 0 4K uaddr=0x123"),
        Op::Memslot {
            uaddr: Some(0x123),
            ..memslot(0, 0, 4 * K)
        }
    );
    let Op::Memslot { flags, .. } = op("memslot 0 0 4K guest-memfd dirty-log") else {
        panic!("not a memslot");
    };
    assert!(flags.guest_memfd && flags.dirty_log);
}

#[test]
fn attrs_numbers_and_words() {
    assert_eq!(
        op("attrs 0 2G private"),
        Op::Attrs {
            gpa: 0,
            size: 2 * G,
            attributes: 8
        }
    );
    assert_eq!(
        op("attrs 0x1000 4K shared"),
        Op::Attrs {
            gpa: 0x1000,
            size: 4 * K,
            attributes: 0
        }
    );
    assert_eq!(
        op("attrs 0 4K 0x8"),
        Op::Attrs {
            gpa: 0,
            size: 4 * K,
            attributes: 8
        }
    );
    assert_eq!(
        op("attrs 0 4K 7"),
        Op::Attrs {
            gpa: 0,
            size: 4 * K,
            attributes: 7
        }
    );
    // Unaligned sizes and unsupported bits are operation errors.
    assert_eq!(
        op("attrs 0x1000 0x1001 0xffffffffffffffff"),
        Op::Attrs {
            gpa: 0x1000,
            size: 0x1001,
            attributes: u64::MAX
        }
    );
}

#[test]
fn map_gpa_query_fault_fault_range_accept() {
    assert_eq!(
        op("map-gpa 0x10000000 16384 0"),
        Op::MapGpa {
            gpa: 0x1000_0000,
            npages: 16384,
            flags: 0
        }
    );
    assert_eq!(
        op("map-gpa 0x2000 1 0x20"),
        Op::MapGpa {
            gpa: 0x2000,
            npages: 1,
            flags: 0x20
        }
    );
    assert_eq!(
        op("query 0x0 private"),
        Op::Query {
            gpa: 0,
            access: Access::Private
        }
    );
    assert_eq!(
        op("query 0x80000000 shared"),
        Op::Query {
            gpa: 0x8000_0000,
            access: Access::Shared
        }
    );
    assert_eq!(
        op("fault 0x1000 private"),
        Op::Fault {
            gpa: 0x1000,
            access: Access::Private
        }
    );
    assert_eq!(
        op("fault 0x200000 shared"),
        Op::Fault {
            gpa: 0x20_0000,
            access: Access::Shared
        }
    );
    assert_eq!(
        op("fault-range 0 4M private"),
        Op::FaultRange {
            gpa: 0,
            size: 4 * M,
            access: Access::Private
        }
    );
    assert_eq!(
        op("fault-range 0x1000 4K shared"),
        Op::FaultRange {
            gpa: 0x1000,
            size: 4 * K,
            access: Access::Shared
        }
    );
    for level in Level::ALL {
        assert_eq!(
            op(&format!("accept 0x400000 {level}")),
            Op::Accept {
                gpa: 0x40_0000,
                level
            }
        );
    }
}

#[test]
fn mmu_layouts_and_policies() {
    assert_eq!(
        op("mmu split"),
        Op::Mmu {
            layout: Layout::Split,
            recovery: None
        }
    );
    assert_eq!(
        op("mmu unified"),
        Op::Mmu {
            layout: Layout::Unified,
            recovery: None
        }
    );
    for (name, policy) in [
        ("off", Recovery::Off),
        ("on-fault", Recovery::OnFault),
        ("eager", Recovery::Eager),
    ] {
        assert_eq!(
            op(&format!("mmu split recovery={name}")),
            Op::Mmu {
                layout: Layout::Split,
                recovery: Some(policy)
            }
        );
        assert_eq!(
            op(&format!("mmu unified recovery={name}")),
            Op::Mmu {
                layout: Layout::Unified,
                recovery: Some(policy)
            }
        );
    }
}

#[test]
fn op_names() {
    let names: Vec<&str> = [
        "memslot 0 0 0",
        "attrs 0 0 0",
        "map-gpa 0 0 0",
        "query 0 shared",
        "fault 0 shared",
        "fault-range 0 0 shared",
        "mmu split",
        "accept 0 4K",
    ]
    .iter()
    .map(|line| op(line).name())
    .collect();
    assert_eq!(
        names,
        [
            "memslot",
            "attrs",
            "map-gpa",
            "query",
            "fault",
            "fault-range",
            "mmu",
            "accept"
        ]
    );
}

// ---- comments and blank lines ----

#[test]
fn blank_and_comment_lines() {
    for line in [
        "",
        " ",
        "\t \t",
        "#",
        "# memslot 0 0 4K",
        "   # indented comment",
        "#query 0 private",
        "\r",
    ] {
        assert_eq!(parse_line(line), Ok(None), "{line:?}");
    }
    assert_eq!(
        op("query 0 private# glued comment"),
        Op::Query {
            gpa: 0,
            access: Access::Private
        }
    );
    assert_eq!(
        op("query 0 private #x # y"),
        Op::Query {
            gpa: 0,
            access: Access::Private
        }
    );
    assert_eq!(
        op("query 0 private\r"),
        Op::Query {
            gpa: 0,
            access: Access::Private
        }
    );
    // A comment cuts the line: what follows `#` is not an argument.
    assert_eq!(
        err("query 0 #private"),
        ParseErrorKind::MissingArgument {
            op: "query",
            argument: "ACCESS"
        }
    );
    assert_eq!(
        err("attrs 0x1000#0 4K private"),
        ParseErrorKind::MissingArgument {
            op: "attrs",
            argument: "SIZE"
        }
    );
}

// ---- malformed lines ----

#[test]
fn unknown_and_uppercase_operations() {
    for keyword in [
        "MEMSLOT",
        "Memslot",
        "Query",
        "ATTRS",
        "map_gpa",
        "mapgpa",
        "fault_range",
        "faultrange",
        "Mmu",
        "ACCEPT",
        "memslots",
        "q",
        "0x1000",
        "-",
    ] {
        assert_eq!(
            err(&format!("{keyword} 0 0 4K")),
            ParseErrorKind::UnknownOperation {
                token: keyword.to_string()
            },
            "{keyword}"
        );
    }
}

#[test]
fn missing_arguments() {
    use ParseErrorKind::MissingArgument as Missing;
    let cases: &[(&str, &str, &str)] = &[
        ("memslot", "memslot", "SLOT"),
        ("memslot 0", "memslot", "GPA"),
        ("memslot 0 0", "memslot", "SIZE"),
        ("attrs", "attrs", "GPA"),
        ("attrs 0", "attrs", "SIZE"),
        ("attrs 0 4K", "attrs", "ATTRIBUTES"),
        ("map-gpa", "map-gpa", "GPA"),
        ("map-gpa 0", "map-gpa", "NPAGES"),
        ("map-gpa 0 1", "map-gpa", "FLAGS"),
        ("query", "query", "GPA"),
        ("query 0", "query", "ACCESS"),
        ("fault", "fault", "GPA"),
        ("fault 0", "fault", "ACCESS"),
        ("fault-range", "fault-range", "GPA"),
        ("fault-range 0", "fault-range", "SIZE"),
        ("fault-range 0 4K", "fault-range", "ACCESS"),
        ("mmu", "mmu", "LAYOUT"),
        ("accept", "accept", "GPA"),
        ("accept 0", "accept", "LEVEL"),
    ];
    for &(line, op_name, argument) in cases {
        assert_eq!(
            err(line),
            Missing {
                op: op_name,
                argument
            },
            "{line}"
        );
    }
}

#[test]
fn trailing_tokens() {
    let cases: &[(&str, &str, &str)] = &[
        ("attrs 0 4K private shared", "attrs", "shared"),
        ("attrs 0 4K 8 8", "attrs", "8"),
        ("map-gpa 0 1 0 0", "map-gpa", "0"),
        ("query 0 private now", "query", "now"),
        ("fault 0 shared 4K", "fault", "4K"),
        ("fault-range 0 4K private x", "fault-range", "x"),
        ("accept 0 4K private", "accept", "private"),
    ];
    for &(line, op_name, token) in cases {
        assert_eq!(
            err(line),
            ParseErrorKind::TrailingToken {
                op: op_name,
                token: token.to_string()
            },
            "{line}"
        );
    }
}

#[test]
fn bad_numbers_in_every_position() {
    use NumberError::*;
    let cases: &[(&str, &str, &str, NumberError)] = &[
        ("memslot x 0 4K", "SLOT", "x", InvalidDigit),
        ("memslot 0 0x1M 4K", "GPA", "0x1M", HexSuffix),
        ("memslot 0 0 20000000T", "SIZE", "20000000T", Overflow),
        ("memslot 0 0 4K uaddr=", "uaddr", "", Empty),
        ("memslot 0 0 4K uaddr=0x2M", "uaddr", "0x2M", HexSuffix),
        ("memslot 0 0 4K uaddr=-1", "uaddr", "-1", InvalidDigit),
        (
            "attrs 18446744073709551616 4K private",
            "GPA",
            "18446744073709551616",
            Overflow,
        ),
        ("attrs 0 4k private", "SIZE", "4k", InvalidDigit),
        ("attrs 0 4K PRIVATE", "ATTRIBUTES", "PRIVATE", InvalidDigit),
        ("attrs 0 4K 0x1_0", "ATTRIBUTES", "0x1_0", InvalidDigit),
        ("map-gpa 0X1000 1 0", "GPA", "0X1000", InvalidDigit),
        ("map-gpa 0 1.5 0", "NPAGES", "1.5", InvalidDigit),
        (
            "map-gpa 0 1 0x10000000000000000",
            "FLAGS",
            "0x10000000000000000",
            Overflow,
        ),
        ("query 0x private", "GPA", "0x", Empty),
        ("fault 1KK shared", "GPA", "1KK", InvalidDigit),
        ("fault-range 0 0x4K private", "SIZE", "0x4K", HexSuffix),
        ("accept -0 4K", "GPA", "-0", InvalidDigit),
    ];
    for &(line, argument, token, reason) in cases {
        assert_eq!(err(line), bad_number(argument, token, reason), "{line}");
    }
}

#[test]
fn bad_access_level_layout_policy_flag() {
    use ParseErrorKind::*;
    for access in ["Private", "SHARED", "both", "p", "0"] {
        for line in [
            format!("query 0 {access}"),
            format!("fault 0 {access}"),
            format!("fault-range 0 4K {access}"),
        ] {
            assert_eq!(
                err(&line),
                BadAccess {
                    token: access.to_string()
                },
                "{line}"
            );
        }
    }
    for level in ["4k", "2m", "1g", "512G", "8K", "1T", "4096", "0"] {
        assert_eq!(
            err(&format!("accept 0 {level}")),
            BadLevel {
                argument: "LEVEL",
                token: level.to_string()
            }
        );
        assert_eq!(
            err(&format!("memslot 0 0 4K backing={level}")),
            BadLevel {
                argument: "backing",
                token: level.to_string()
            }
        );
    }
    for layout in ["Split", "UNIFIED", "tdx", "snp", "recovery=eager"] {
        assert_eq!(
            err(&format!("mmu {layout}")),
            BadLayout {
                token: layout.to_string()
            }
        );
    }
    for policy in ["on_fault", "onfault", "Eager", "OFF", "", "none"] {
        assert_eq!(
            err(&format!("mmu split recovery={policy}")),
            BadRecovery {
                token: policy.to_string()
            }
        );
    }
    for flag in [
        "recovery",
        "eager",
        "policy=eager",
        "split",
        "Recovery=eager",
    ] {
        assert_eq!(
            err(&format!("mmu split {flag}")),
            BadFlag {
                op: "mmu",
                token: flag.to_string()
            }
        );
    }
    for flag in [
        "GUEST-MEMFD",
        "guest_memfd",
        "guestmemfd",
        "dirty_log",
        "read-only",
        "ro",
        "private",
        "uaddr",
        "backing",
        "Backing=2M",
        "UADDR=0",
        "uaddr:0x1000",
        "4K",
    ] {
        assert_eq!(
            err(&format!("memslot 0 0 4K {flag}")),
            BadFlag {
                op: "memslot",
                token: flag.to_string()
            },
            "{flag}"
        );
    }
}

#[test]
fn duplicate_flags() {
    use ParseErrorKind::DuplicateFlag;
    let cases: &[(&str, &str, &str)] = &[
        (
            "memslot 0 0 4K guest-memfd guest-memfd",
            "memslot",
            "guest-memfd",
        ),
        (
            "memslot 0 0 4K dirty-log readonly dirty-log",
            "memslot",
            "dirty-log",
        ),
        ("memslot 0 0 4K readonly readonly", "memslot", "readonly"),
        ("memslot 0 0 4K uaddr=0 uaddr=0", "memslot", "uaddr"),
        ("memslot 0 0 4K backing=4K backing=1G", "memslot", "backing"),
        ("mmu split recovery=off recovery=off", "mmu", "recovery"),
        (
            "mmu unified recovery=eager recovery=on-fault",
            "mmu",
            "recovery",
        ),
    ];
    for &(line, op_name, flag) in cases {
        assert_eq!(err(line), DuplicateFlag { op: op_name, flag }, "{line}");
    }
}

#[test]
fn error_messages_name_line_and_cause() {
    let e = parse("memslot 0 0 2G\n\n# note\nattrs 0 0x4K private\n").unwrap_err();
    assert_eq!(e.line, 4);
    let text = e.to_string();
    assert!(text.starts_with("line 4: "), "{text}");
    assert!(
        text.contains("SIZE") && text.contains("0x4K") && text.contains("no K/M/G/T suffix"),
        "{text}"
    );

    let e = parse_line("frobnicate 1").unwrap_err();
    assert_eq!(e.to_string().split(':').next(), Some("unknown operation `frobnicate` (expected memslot, attrs, map-gpa, query, fault, fault-range, mmu or accept)"));
    assert_eq!(e.clone().at_line(9).line, 9);
    assert!(e
        .at_line(9)
        .to_string()
        .starts_with("line 9: unknown operation"));

    let messages = [
        (err("query 0"), "query: missing argument ACCESS"),
        (
            err("query 0 private x"),
            "query: unexpected token `x` after the last argument",
        ),
        (
            err("query 0 Private"),
            "bad access `Private`: expected `private` or `shared`",
        ),
        (
            err("accept 0 4k"),
            "bad level for LEVEL `4k`: expected `4K`, `2M` or `1G`",
        ),
        (
            err("mmu tdx"),
            "mmu: bad layout `tdx`: expected `split` or `unified`",
        ),
        (
            err("mmu split recovery=lazy"),
            "mmu: bad recovery policy `lazy`: expected `off`, `on-fault` or `eager`",
        ),
        (err("memslot 0 0 4K ro"), "memslot: unknown flag `ro`"),
        (err("memslot 0 0 4K ro"), "memslot: unknown flag `ro`"),
        (
            err("mmu split recovery=off recovery=off"),
            "mmu: flag recovery given twice",
        ),
        (
            err("attrs 0 20000000T private"),
            "bad number for SIZE `20000000T`: does not fit in 64 bits",
        ),
    ];
    for (kind, message) in messages {
        assert_eq!(kind.to_string(), message);
    }
}

// ---- huge and hostile input ----

#[test]
fn long_lines_do_not_panic_and_errors_stay_short() {
    const MIB: usize = 1 << 20;
    let digits = "9".repeat(MIB);
    let e = parse_line(&format!("query {digits} private")).unwrap_err();
    assert!(matches!(
        e.kind,
        ParseErrorKind::BadNumber {
            reason: NumberError::Overflow,
            ..
        }
    ));
    assert!(
        e.to_string().len() < 200,
        "message of {} bytes",
        e.to_string().len()
    );

    let zeros = format!("query 0x{} private", "0".repeat(MIB));
    assert_eq!(
        op(&zeros),
        Op::Query {
            gpa: 0,
            access: Access::Private
        }
    );

    assert_eq!(parse_line(&" ".repeat(MIB)), Ok(None));
    assert_eq!(
        parse_line(&format!("{}#{}", " ".repeat(MIB), "x".repeat(MIB))),
        Ok(None)
    );

    let many = "query 0 private ".repeat(MIB / 16);
    assert_eq!(
        err(&many),
        ParseErrorKind::TrailingToken {
            op: "query",
            token: "query".to_string()
        }
    );

    let flags = format!("memslot 0 0 4K {}", "readonly ".repeat(MIB / 9));
    assert_eq!(
        err(&flags),
        ParseErrorKind::DuplicateFlag {
            op: "memslot",
            flag: "readonly"
        }
    );

    // A long token of multi-byte characters is cut on a character boundary.
    let wide = "é".repeat(MIB / 2);
    let ParseErrorKind::UnknownOperation { token } = err(&wide) else {
        panic!("expected an unknown operation");
    };
    assert_eq!(token.chars().count(), 41);
    assert!(token.ends_with('…'));
    let ParseErrorKind::BadAccess { token } = err(&format!("query 0 {wide}")) else {
        panic!("expected a bad access");
    };
    assert!(token.len() < 100);
}

// ---- whole texts and streaming ----

#[test]
fn parse_numbers_lines_and_stops_at_first_error() {
    let text =
        "# header\nmmu split\r\n\nmemslot 0 0 1G guest-memfd # slot\n   \nquery 0x1000 private\n";
    let lines = parse(text).unwrap();
    assert_eq!(
        lines,
        vec![
            Line {
                number: 2,
                op: Op::Mmu {
                    layout: Layout::Split,
                    recovery: None
                }
            },
            Line {
                number: 4,
                op: Op::Memslot {
                    flags: MemslotFlags {
                        guest_memfd: true,
                        ..MemslotFlags::default()
                    },
                    ..memslot(0, 0, G)
                },
            },
            Line {
                number: 6,
                op: Op::Query {
                    gpa: 0x1000,
                    access: Access::Private
                }
            },
        ]
    );
    assert_eq!(parse(""), Ok(vec![]));
    assert_eq!(parse("# only comments\n\n"), Ok(vec![]));

    let e = parse("query 0 private\nquery 0 privat\nquery zero private\n").unwrap_err();
    assert_eq!(
        e,
        ParseError {
            line: 2,
            kind: ParseErrorKind::BadAccess {
                token: "privat".to_string()
            }
        }
    );
}

#[test]
fn ops_streams_any_line_source_and_goes_on_after_errors() {
    let owned: Vec<String> = ["", "fault 0 shared", "bogus", "# c", "accept 0 2M"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut it = ops(owned);
    assert_eq!(
        it.next(),
        Some(Ok(Line {
            number: 2,
            op: Op::Fault {
                gpa: 0,
                access: Access::Shared
            }
        }))
    );
    assert_eq!(it.lines_read(), 2);
    let e = it.next().unwrap().unwrap_err();
    assert_eq!(e.line, 3);
    assert_eq!(
        e.kind,
        ParseErrorKind::UnknownOperation {
            token: "bogus".to_string()
        }
    );
    assert_eq!(
        it.next(),
        Some(Ok(Line {
            number: 5,
            op: Op::Accept {
                gpa: 0,
                level: Level::M2
            }
        }))
    );
    assert_eq!(it.next(), None);
    assert_eq!(it.lines_read(), 5);
}

#[test]
fn ops_streams_a_million_lines() {
    // A generated 10^6-line op-log, streamed without building the text or a Vec of ops.
    let n = 1_000_000u64;
    let lines = (0..n).map(|i| match i % 4 {
        0 => format!("attrs {:#x} 4K private", i << 12),
        1 => format!("query {:#x} shared # probe", i << 12),
        2 => String::new(),
        _ => format!("map-gpa {} 1 0x10", (i << 12)),
    });
    let mut count = 0u64;
    let mut last = 0;
    for line in ops(lines) {
        let line = line.unwrap();
        assert!(line.number > last);
        last = line.number;
        count += 1;
    }
    assert_eq!(count, n / 4 * 3);
    assert_eq!(last as u64, n);
}

// ---- the spec's examples ----

/// Reads `shared/spec/examples/NAME` beside the repository, if it is there.
fn example(name: &str) -> Option<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/spec/examples")
        .join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) => {
            std::println!("skipping: cannot read {}: {e}", path.display());
            None
        }
    }
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
    let (Some(text), Some(expected)) = (example("basic.oplog"), example("basic.expected.jsonl"))
    else {
        return;
    };
    let lines = parse(&text).unwrap();
    assert_eq!(lines.len(), 19);
    assert_eq!(
        lines[0],
        Line {
            number: 2,
            op: Op::Memslot {
                flags: MemslotFlags {
                    guest_memfd: true,
                    ..MemslotFlags::default()
                },
                ..memslot(0, 0, 2 * G)
            },
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
            gpa: 0x1000,
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
    let (Some(text), Some(expected)) = (example("mmu.oplog"), example("mmu.expected.jsonl")) else {
        return;
    };
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
                gpa: 0x40_0000,
                level: Level::K4
            }
        }
    );
    assert_eq!(
        lines[12],
        Line {
            number: 14,
            op: Op::FaultRange {
                gpa: 0,
                size: 4 * M,
                access: Access::Private
            }
        }
    );
    check_expected_lines(&lines, &expected);
    check_round_trip(&lines);
}

// ---- canonical text ----

#[test]
fn display_is_canonical() {
    let cases: &[(Op, &str)] = &[
        (memslot(0, 0, 2 * G), "memslot 0 0x0 0x80000000"),
        (
            Op::Memslot {
                slot: 32763,
                gpa: 1 << 32,
                size: 4 * K,
                flags: MemslotFlags { guest_memfd: true, dirty_log: true, readonly: true },
                uaddr: Some(0x7f00_0000_0000),
                backing: Some(Level::M2),
            },
            "memslot 32763 0x100000000 0x1000 guest-memfd dirty-log readonly uaddr=0x7f0000000000 backing=2M",
        ),
        (Op::Attrs { gpa: 0, size: G, attributes: 8 }, "attrs 0x0 0x40000000 private"),
        (Op::Attrs { gpa: 0x1000, size: 0x1000, attributes: 0 }, "attrs 0x1000 0x1000 shared"),
        (Op::Attrs { gpa: 0, size: 0x1000, attributes: 9 }, "attrs 0x0 0x1000 0x9"),
        (Op::MapGpa { gpa: 0x1000_0000, npages: 16384, flags: 0x11 }, "map-gpa 0x10000000 0x4000 0x11"),
        (Op::Query { gpa: 0x7d9d_7000, access: Access::Shared }, "query 0x7d9d7000 shared"),
        (Op::Fault { gpa: 0x1000, access: Access::Private }, "fault 0x1000 private"),
        (Op::FaultRange { gpa: 0, size: 4 * M, access: Access::Private }, "fault-range 0x0 0x400000 private"),
        (Op::Mmu { layout: Layout::Unified, recovery: None }, "mmu unified"),
        (Op::Mmu { layout: Layout::Split, recovery: Some(Recovery::OnFault) }, "mmu split recovery=on-fault"),
        (Op::Accept { gpa: 0x40_0000, level: Level::G1 }, "accept 0x400000 1G"),
    ];
    for (op, text) in cases {
        assert_eq!(op.to_string(), *text);
        assert_eq!(parse_line(text), Ok(Some(*op)), "{text}");
    }
}

fn any_access() -> impl Strategy<Value = Access> {
    prop_oneof![Just(Access::Shared), Just(Access::Private)]
}

fn any_level() -> impl Strategy<Value = Level> {
    prop_oneof![Just(Level::K4), Just(Level::M2), Just(Level::G1)]
}

/// Numbers biased to the interesting ones: small, page-aligned, huge, at the 64-bit limit.
fn any_number() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..=16,
        (0u64..1 << 20).prop_map(|p| p << 12),
        any::<u64>(),
        (0u64..=8).prop_map(|d| u64::MAX - d),
    ]
}

fn any_op() -> impl Strategy<Value = Op> {
    let flags = (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(guest_memfd, dirty_log, readonly)| MemslotFlags {
            guest_memfd,
            dirty_log,
            readonly,
        },
    );
    let recovery = prop_oneof![
        Just(Recovery::Off),
        Just(Recovery::OnFault),
        Just(Recovery::Eager)
    ];
    prop_oneof![
        (
            any_number(),
            any_number(),
            any_number(),
            flags,
            proptest::option::of(any_number()),
            proptest::option::of(any_level())
        )
            .prop_map(|(slot, gpa, size, flags, uaddr, backing)| Op::Memslot {
                slot,
                gpa,
                size,
                flags,
                uaddr,
                backing
            }),
        (
            any_number(),
            any_number(),
            prop_oneof![Just(0u64), Just(8), any_number()]
        )
            .prop_map(|(gpa, size, attributes)| Op::Attrs {
                gpa,
                size,
                attributes
            }),
        (any_number(), any_number(), any_number()).prop_map(|(gpa, npages, flags)| Op::MapGpa {
            gpa,
            npages,
            flags
        }),
        (any_number(), any_access()).prop_map(|(gpa, access)| Op::Query { gpa, access }),
        (any_number(), any_access()).prop_map(|(gpa, access)| Op::Fault { gpa, access }),
        (any_number(), any_number(), any_access()).prop_map(|(gpa, size, access)| Op::FaultRange {
            gpa,
            size,
            access
        }),
        (
            prop_oneof![Just(Layout::Split), Just(Layout::Unified)],
            proptest::option::of(recovery)
        )
            .prop_map(|(layout, recovery)| Op::Mmu { layout, recovery }),
        (any_number(), any_level()).prop_map(|(gpa, level)| Op::Accept { gpa, level }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn display_then_parse_is_identity(op in any_op(), comment in proptest::option::of("[ -~]{0,20}")) {
        let mut text = op.to_string();
        if let Some(comment) = comment {
            text.push_str(" #");
            text.push_str(&comment);
        }
        prop_assert_eq!(parse_line(&text), Ok(Some(op)));
    }

    #[test]
    fn numbers_round_trip_in_every_spelling(n in any_number()) {
        prop_assert_eq!(parse_number(&format!("{n}")), Ok(n));
        prop_assert_eq!(parse_number(&format!("{n:#x}")), Ok(n));
        prop_assert_eq!(parse_number(&format!("0x{n:X}")), Ok(n));
        for (suffix, shift) in [("K", 10), ("M", 20), ("G", 30), ("T", 40)] {
            let spelled = format!("{}{suffix}", n >> shift);
            if n % (1 << shift) == 0 {
                prop_assert_eq!(parse_number(&spelled), Ok(n));
            }
            prop_assert_eq!(parse_number(&format!("{n:#x}{suffix}")), Err(NumberError::HexSuffix));
        }
    }

    #[test]
    fn suffix_overflow_is_detected(value in any::<u64>(), shift in prop_oneof![Just(10u32), Just(20), Just(30), Just(40)]) {
        let suffix = match shift { 10 => "K", 20 => "M", 30 => "G", _ => "T" };
        let expected = value.checked_mul(1 << shift).ok_or(NumberError::Overflow);
        prop_assert_eq!(parse_number(&format!("{value}{suffix}")), expected);
    }

    #[test]
    fn arbitrary_text_never_panics(line in "[a-z0-9xKMGT=#\\- \t]{0,60}|\\PC{0,60}") {
        // Whatever the line, the parser answers; an accepted line prints back to itself.
        if let Ok(Some(op)) = parse_line(&line) {
            prop_assert_eq!(parse_line(&op.to_string()), Ok(Some(op)));
        }
    }
}

//! Malformed lines: each kind of parse error, its message, and hostile input.

use super::*;

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
            gpa: Gpa(0),
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

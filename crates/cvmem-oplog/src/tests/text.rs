//! Whole texts and streaming: line numbers, stopping at errors, a million lines.

use super::*;

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
                op: slot_with(memslot(0, 0, G), GUEST_MEMFD, None, None),
            },
            Line {
                number: 6,
                op: Op::Query {
                    gpa: Gpa(0x1000),
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
                gpa: Gpa(0),
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
                gpa: Gpa(0),
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

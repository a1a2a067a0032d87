//! Target (b): arbitrary bytes to the op-log parser and the replay engine. Nothing may panic;
//! every parsed operation prints in canonical form and parses back to itself; error messages stay
//! short whatever the line; the replay summary is well formed.
//!
//! [`oplog_tokens`] feeds the same checks with op-log text assembled from the bytes (keywords,
//! numbers at their limits, flags, junk), which reaches the replay engine far more often than raw
//! bytes do.

use std::fmt::Write as _;

use cvmem_oplog::{ops, parse_line, parse_number, Outcome, Replayer};

use crate::input::{Input, EDGES};

/// Operations replayed per input.
const MAX_OPS: usize = 256;
/// Longest error message accepted: a message quotes at most 40 characters of a token.
const MAX_MESSAGE: usize = 512;

/// Runs one input of raw bytes; panics on a violated property (or a panic inside cvmem).
pub fn oplog_replay(data: &[u8]) {
    replay_text(&String::from_utf8_lossy(data));
}

/// Runs op-log text assembled from the bytes.
pub fn oplog_tokens(data: &[u8]) {
    replay_text(&tokens_to_text(data));
}

/// Parses every line, replays every operation that parses (`cvmem replay` would stop at the
/// first parse error; going on reaches more states), and checks the properties above.
pub fn replay_text(text: &str) {
    let mut replayer = Replayer::new();
    let mut applied = 0;
    for line in ops(text.lines()) {
        match line {
            Ok(line) => {
                let canonical = line.op.to_string();
                assert_eq!(
                    parse_line(&canonical),
                    Ok(Some(line.op)),
                    "canonical form `{canonical}` does not parse back"
                );
                if applied < MAX_OPS {
                    applied += 1;
                    if let Outcome::Error(e) = replayer.apply(&line.op) {
                        let message = e.to_string();
                        assert!(message.len() <= MAX_MESSAGE, "{message}");
                        assert!(e.errno.starts_with('E'), "{}", e.errno);
                    }
                }
            }
            Err(e) => {
                let message = e.to_string();
                assert!(e.line > 0);
                assert!(
                    message.len() <= MAX_MESSAGE,
                    "message of {} bytes",
                    message.len()
                );
            }
        }
    }
    let summary = replayer.summary();
    assert!(
        summary.attributes.windows(2).all(|w| w[0].0 < w[1].0),
        "attribute runs out of order"
    );
    assert!(
        summary.memslots.windows(2).all(|w| w[0].slot < w[1].slot),
        "memslots out of order"
    );
    for s in &summary.memslots {
        let e = s.eligibility;
        assert_eq!(
            e.bytes_1g + e.bytes_2m + e.bytes_4k,
            s.size,
            "slot {}",
            s.slot
        );
    }
    // Numbers: the parser agrees with a reference written from the spec with std's parsers.
    for token in text.split_whitespace().take(64) {
        assert_eq!(
            parse_number(token).ok(),
            reference_number(token),
            "`{token}`"
        );
    }
}

/// The spec's numbers, with std: `0x` + hex digits, or decimal digits with an optional
/// `K`/`M`/`G`/`T` suffix; at most 64 bits.
fn reference_number(token: &str) -> Option<u64> {
    if let Some(hex) = token.strip_prefix("0x") {
        let digits = !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
        return digits.then(|| u64::from_str_radix(hex, 16).ok())?;
    }
    let (digits, shift) = match token.as_bytes().last()? {
        b'K' => (&token[..token.len() - 1], 10),
        b'M' => (&token[..token.len() - 1], 20),
        b'G' => (&token[..token.len() - 1], 30),
        b'T' => (&token[..token.len() - 1], 40),
        _ => (token, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

const KEYWORDS: [&str; 12] = [
    "memslot",
    "attrs",
    "map-gpa",
    "query",
    "fault",
    "fault-range",
    "mmu",
    "accept",
    "#",
    "",
    "Memslot",
    "attrs\t",
];

const WORDS: [&str; 22] = [
    "private",
    "shared",
    "guest-memfd",
    "dirty-log",
    "readonly",
    "uaddr=",
    "backing=4K",
    "backing=2M",
    "backing=1G",
    "backing=",
    "split",
    "unified",
    "recovery=off",
    "recovery=on-fault",
    "recovery=eager",
    "recovery=",
    "4K",
    "2M",
    "1G",
    "0x",
    "-1",
    "\u{feff}",
];

/// Writes one number in a random op-log spelling: decimal, hexadecimal, or with a suffix.
fn number(input: &mut Input<'_>, out: &mut String) {
    let v = match input.below(3) {
        0 => EDGES[usize::from(input.below(EDGES.len() as u8))],
        1 => u64::from(input.u16()) << (12 + input.below(4) * 9),
        _ => input.wild_u64(),
    };
    let _ = match input.below(6) {
        0 => write!(out, "{v}"),
        1 | 2 => write!(out, "{v:#x}"),
        3 => write!(
            out,
            "{}{}",
            v >> 20,
            ["K", "M", "G", "T"][usize::from(input.below(4))]
        ),
        4 => write!(out, "{v}0"),
        _ => write!(out, "0x{v:X}"),
    };
}

/// A plausible address or size: a multiple of 4K, 2M or 1G below 8G, or an edge value.
fn plausible(input: &mut Input<'_>, out: &mut String) {
    if input.below(6) == 0 {
        number(input, out);
        return;
    }
    let unit = [4096u64, 2 << 20, 1 << 30][usize::from(input.below(3))];
    let v = unit * u64::from(input.byte() % 9);
    let v = if input.below(8) == 0 {
        v.wrapping_sub(4096)
    } else {
        v
    };
    let _ = write!(out, "{v:#x}");
}

/// One well-formed line (values may still break the rules).
fn grammar_line(input: &mut Input<'_>, out: &mut String) {
    let access = |input: &mut Input<'_>| ["private", "shared"][usize::from(input.below(2))];
    let level = |input: &mut Input<'_>| ["4K", "2M", "1G"][usize::from(input.below(3))];
    match input.below(8) {
        0 => {
            let _ = write!(out, "memslot {} ", input.below(4));
            plausible(input, out);
            out.push(' ');
            plausible(input, out);
            for flag in ["guest-memfd", "dirty-log", "readonly"] {
                if input.below(3) == 0 {
                    let _ = write!(out, " {flag}");
                }
            }
            if input.below(4) == 0 {
                out.push_str(" uaddr=");
                plausible(input, out);
            }
            if input.below(4) == 0 {
                let _ = write!(out, " backing={}", level(input));
            }
        }
        1 | 2 => {
            out.push_str("attrs ");
            plausible(input, out);
            out.push(' ');
            plausible(input, out);
            let _ = write!(
                out,
                " {}",
                ["private", "shared", "0x8", "0", "0x9"][usize::from(input.below(5))]
            );
        }
        3 => {
            out.push_str("map-gpa ");
            plausible(input, out);
            let _ = write!(out, " {} {:#x}", input.u16(), input.byte() & 0x3f);
        }
        4 => {
            out.push_str(["query ", "fault "][usize::from(input.below(2))]);
            plausible(input, out);
            let _ = write!(out, " {}", access(input));
        }
        5 => {
            out.push_str("fault-range ");
            plausible(input, out);
            let _ = write!(
                out,
                " {:#x} {}",
                u64::from(input.byte()) << 12,
                access(input)
            );
        }
        6 => {
            let _ = write!(
                out,
                "mmu {}",
                ["split", "unified"][usize::from(input.below(2))]
            );
            if input.below(2) == 0 {
                let policy = ["off", "on-fault", "eager"][usize::from(input.below(3))];
                let _ = write!(out, " recovery={policy}");
            }
        }
        _ => {
            out.push_str("accept ");
            plausible(input, out);
            let _ = write!(out, " {}", level(input));
        }
    }
}

/// Op-log text from bytes: mostly well-formed lines with values near the rules' edges, some
/// lines of a keyword and random arguments (numbers, words, junk bytes).
pub fn tokens_to_text(data: &[u8]) -> String {
    let mut input = Input::new(data);
    let mut out = String::new();
    while !input.is_empty() && out.len() < 1 << 16 {
        if input.below(4) != 0 {
            grammar_line(&mut input, &mut out);
            out.push('\n');
            continue;
        }
        out.push_str(KEYWORDS[usize::from(input.below(KEYWORDS.len() as u8))]);
        for _ in 0..input.below(7) {
            out.push(if input.below(8) == 0 { '\t' } else { ' ' });
            match input.below(8) {
                0..=3 => number(&mut input, &mut out),
                4..=5 => out.push_str(WORDS[usize::from(input.below(WORDS.len() as u8))]),
                6 => {
                    out.push_str("uaddr=");
                    number(&mut input, &mut out);
                }
                _ => {
                    let n = usize::from(input.below(6));
                    let junk: Vec<u8> = (0..n).map(|_| input.byte()).collect();
                    out.push_str(&String::from_utf8_lossy(&junk));
                }
            }
        }
        out.push_str(match input.below(8) {
            0 => " # comment\n",
            1 => "\r\n",
            _ => "\n",
        });
    }
    out
}

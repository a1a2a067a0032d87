//! The op-log v1 grammar: numbers, tokens and lines, with typed parse errors.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::str::SplitWhitespace;

use super::op::{Access, Layout, MemslotFlags, Op, Recovery};
use crate::addr::Level;

/// The attribute word `private`: `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
const ATTRIBUTE_PRIVATE: u64 = 1 << 3;

/// Tokens quoted in error messages are cut to this many characters, so a 1 MiB line does not
/// become a 1 MiB message.
const EXCERPT_CHARS: usize = 40;

/// One operation with the number of the line it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Line {
    /// 1-based line number in the op-log.
    pub number: usize,
    /// The operation on that line.
    pub op: Op,
}

/// Why a number token is not a valid op-log number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NumberError {
    /// No digits (`0x`, `K`, or an empty `uaddr=`).
    Empty,
    /// A character that is neither a digit of the number's base nor a final `K`/`M`/`G`/`T` suffix
    /// of a decimal number (signs, `_`, `0X`, lower-case suffixes…).
    InvalidDigit,
    /// A hexadecimal number with a `K`/`M`/`G`/`T` suffix.
    HexSuffix,
    /// The value, or the value times its suffix, does not fit in 64 bits.
    Overflow,
}

impl fmt::Display for NumberError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NumberError::Empty => "no digits",
            NumberError::InvalidDigit => {
                "not a decimal number (optional K/M/G/T suffix) or a 0x hexadecimal number"
            }
            NumberError::HexSuffix => "hexadecimal numbers take no K/M/G/T suffix",
            NumberError::Overflow => "does not fit in 64 bits",
        })
    }
}

/// What is wrong with a line that cannot be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The first token is not an operation keyword (keywords are lower case).
    UnknownOperation {
        /// The token (cut to 40 characters).
        token: String,
    },
    /// The line ends before a required argument.
    MissingArgument {
        /// The operation keyword.
        op: &'static str,
        /// The argument's name in the spec (`GPA`, `SIZE`, …).
        argument: &'static str,
    },
    /// A token after the last argument of an operation that takes no flags.
    TrailingToken {
        /// The operation keyword.
        op: &'static str,
        /// The token (cut to 40 characters).
        token: String,
    },
    /// A number argument that is not an op-log number.
    BadNumber {
        /// The argument's name in the spec.
        argument: &'static str,
        /// The token (cut to 40 characters).
        token: String,
        /// What is wrong with it.
        reason: NumberError,
    },
    /// An access kind other than `private` or `shared`.
    BadAccess {
        /// The token (cut to 40 characters).
        token: String,
    },
    /// A level other than `4K`, `2M` or `1G`.
    BadLevel {
        /// The argument's name (`LEVEL`, `backing`).
        argument: &'static str,
        /// The token (cut to 40 characters).
        token: String,
    },
    /// An `mmu` layout other than `split` or `unified`.
    BadLayout {
        /// The token (cut to 40 characters).
        token: String,
    },
    /// A `recovery=` policy other than `off`, `on-fault` or `eager`.
    BadRecovery {
        /// The policy (cut to 40 characters).
        token: String,
    },
    /// A flag the operation does not know.
    BadFlag {
        /// The operation keyword.
        op: &'static str,
        /// The token (cut to 40 characters).
        token: String,
    },
    /// A flag given twice on one line.
    DuplicateFlag {
        /// The operation keyword.
        op: &'static str,
        /// The flag's name (`guest-memfd`, `uaddr`, `recovery`, …).
        flag: &'static str,
    },
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseErrorKind::UnknownOperation { token } => write!(
                f,
                "unknown operation `{token}` (expected memslot, attrs, map-gpa, query, fault, \
                 fault-range, mmu or accept)"
            ),
            ParseErrorKind::MissingArgument { op, argument } => {
                write!(f, "{op}: missing argument {argument}")
            }
            ParseErrorKind::TrailingToken { op, token } => {
                write!(
                    f,
                    "{op}: unexpected token `{token}` after the last argument"
                )
            }
            ParseErrorKind::BadNumber {
                argument,
                token,
                reason,
            } => {
                write!(f, "bad number for {argument} `{token}`: {reason}")
            }
            ParseErrorKind::BadAccess { token } => {
                write!(f, "bad access `{token}`: expected `private` or `shared`")
            }
            ParseErrorKind::BadLevel { argument, token } => {
                write!(
                    f,
                    "bad level for {argument} `{token}`: expected `4K`, `2M` or `1G`"
                )
            }
            ParseErrorKind::BadLayout { token } => {
                write!(
                    f,
                    "mmu: bad layout `{token}`: expected `split` or `unified`"
                )
            }
            ParseErrorKind::BadRecovery { token } => write!(
                f,
                "mmu: bad recovery policy `{token}`: expected `off`, `on-fault` or `eager`"
            ),
            ParseErrorKind::BadFlag { op, token } => write!(f, "{op}: unknown flag `{token}`"),
            ParseErrorKind::DuplicateFlag { op, flag } => {
                write!(f, "{op}: flag {flag} given twice")
            }
        }
    }
}

/// A line of an op-log that cannot be parsed: replay stops here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number, or 0 when the error came from [`parse_line`], which does not know it.
    pub line: usize,
    /// What is wrong.
    pub kind: ParseErrorKind,
}

impl ParseError {
    /// The same error, located at 1-based line `line`.
    pub fn at_line(self, line: usize) -> Self {
        ParseError { line, ..self }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "line {}: {}", self.line, self.kind)
        }
    }
}

impl core::error::Error for ParseError {}

/// Parses one op-log number: decimal with an optional binary `K`/`M`/`G`/`T` suffix (×2^10 … ×2^40),
/// or `0x` hexadecimal without suffix; unsigned, at most 64 bits.
///
/// ```
/// use cvmem::oplog::{parse_number, NumberError};
/// assert_eq!(parse_number("2M"), Ok(2 << 20));
/// assert_eq!(parse_number("0x100000000"), Ok(1 << 32));
/// assert_eq!(parse_number("0x1M"), Err(NumberError::HexSuffix));
/// assert_eq!(parse_number("20000000T"), Err(NumberError::Overflow));
/// ```
pub fn parse_number(token: &str) -> Result<u64, NumberError> {
    match token.strip_prefix("0x") {
        Some(hex) => parse_hex(hex),
        None => parse_decimal(token),
    }
}

/// The suffix shift of `K`, `M`, `G`, `T`.
fn suffix_shift(byte: u8) -> Option<u32> {
    match byte {
        b'K' => Some(10),
        b'M' => Some(20),
        b'G' => Some(30),
        b'T' => Some(40),
        _ => None,
    }
}

fn parse_hex(digits: &str) -> Result<u64, NumberError> {
    let bytes = digits.as_bytes();
    let Some((&last, head)) = bytes.split_last() else {
        return Err(NumberError::Empty);
    };
    if !bytes.iter().all(u8::is_ascii_hexdigit) {
        let suffixed = suffix_shift(last).is_some()
            && !head.is_empty()
            && head.iter().all(u8::is_ascii_hexdigit);
        return Err(if suffixed {
            NumberError::HexSuffix
        } else {
            NumberError::InvalidDigit
        });
    }
    bytes.iter().try_fold(0u64, |value, &b| {
        // Every byte is an ASCII hex digit, checked above.
        let digit = (b as char).to_digit(16).unwrap_or(0);
        value
            .checked_mul(16)
            .and_then(|v| v.checked_add(u64::from(digit)))
            .ok_or(NumberError::Overflow)
    })
}

fn parse_decimal(token: &str) -> Result<u64, NumberError> {
    let bytes = token.as_bytes();
    let (digits, shift) = match bytes.split_last() {
        None => return Err(NumberError::Empty),
        Some((&last, head)) => match suffix_shift(last) {
            Some(shift) => (head, shift),
            None => (bytes, 0),
        },
    };
    if digits.is_empty() {
        return Err(NumberError::Empty);
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(NumberError::InvalidDigit);
    }
    let value = digits.iter().try_fold(0u64, |value, &b| {
        value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or(NumberError::Overflow)
    })?;
    value
        .checked_mul(1u64 << shift)
        .ok_or(NumberError::Overflow)
}

/// A token for an error message, cut to [`EXCERPT_CHARS`] characters.
fn excerpt(token: &str) -> String {
    match token.char_indices().nth(EXCERPT_CHARS) {
        None => String::from(token),
        Some((end, _)) => {
            let mut s = String::from(&token[..end]);
            s.push('…');
            s
        }
    }
}

/// The arguments of one operation, read left to right.
struct Args<'a> {
    op: &'static str,
    words: SplitWhitespace<'a>,
}

impl<'a> Args<'a> {
    fn next(&mut self, argument: &'static str) -> Result<&'a str, ParseErrorKind> {
        self.words.next().ok_or(ParseErrorKind::MissingArgument {
            op: self.op,
            argument,
        })
    }

    fn number(&mut self, argument: &'static str) -> Result<u64, ParseErrorKind> {
        number(argument, self.next(argument)?)
    }

    fn access(&mut self) -> Result<Access, ParseErrorKind> {
        let token = self.next("ACCESS")?;
        Access::from_name(token).ok_or_else(|| ParseErrorKind::BadAccess {
            token: excerpt(token),
        })
    }

    fn level(&mut self, argument: &'static str) -> Result<Level, ParseErrorKind> {
        level(argument, self.next(argument)?)
    }

    fn attributes(&mut self) -> Result<u64, ParseErrorKind> {
        match self.next("ATTRIBUTES")? {
            "private" => Ok(ATTRIBUTE_PRIVATE),
            "shared" => Ok(0),
            token => number("ATTRIBUTES", token),
        }
    }

    /// Succeeds when no token is left.
    fn end(&mut self) -> Result<(), ParseErrorKind> {
        match self.words.next() {
            None => Ok(()),
            Some(token) => Err(ParseErrorKind::TrailingToken {
                op: self.op,
                token: excerpt(token),
            }),
        }
    }
}

fn number(argument: &'static str, token: &str) -> Result<u64, ParseErrorKind> {
    parse_number(token).map_err(|reason| ParseErrorKind::BadNumber {
        argument,
        token: excerpt(token),
        reason,
    })
}

fn level(argument: &'static str, token: &str) -> Result<Level, ParseErrorKind> {
    Level::from_name(token).ok_or_else(|| ParseErrorKind::BadLevel {
        argument,
        token: excerpt(token),
    })
}

/// Sets a boolean flag that must not be given twice.
fn set_once(op: &'static str, flag: &'static str, slot: &mut bool) -> Result<(), ParseErrorKind> {
    if core::mem::replace(slot, true) {
        return Err(ParseErrorKind::DuplicateFlag { op, flag });
    }
    Ok(())
}

/// Stores an optional value that must not be given twice.
fn store_once<T>(
    op: &'static str,
    flag: &'static str,
    slot: &mut Option<T>,
    value: T,
) -> Result<(), ParseErrorKind> {
    if slot.replace(value).is_some() {
        return Err(ParseErrorKind::DuplicateFlag { op, flag });
    }
    Ok(())
}

fn parse_memslot(args: &mut Args<'_>) -> Result<Op, ParseErrorKind> {
    let op = args.op;
    let slot = args.number("SLOT")?;
    let gpa = args.number("GPA")?;
    let size = args.number("SIZE")?;
    let mut flags = MemslotFlags::default();
    let mut uaddr = None;
    let mut backing = None;
    for token in args.words.by_ref() {
        match token {
            "guest-memfd" => set_once(op, "guest-memfd", &mut flags.guest_memfd)?,
            "dirty-log" => set_once(op, "dirty-log", &mut flags.dirty_log)?,
            "readonly" => set_once(op, "readonly", &mut flags.readonly)?,
            _ => {
                if let Some(value) = token.strip_prefix("uaddr=") {
                    store_once(op, "uaddr", &mut uaddr, number("uaddr", value)?)?;
                } else if let Some(value) = token.strip_prefix("backing=") {
                    store_once(op, "backing", &mut backing, level("backing", value)?)?;
                } else {
                    return Err(ParseErrorKind::BadFlag {
                        op,
                        token: excerpt(token),
                    });
                }
            }
        }
    }
    Ok(Op::Memslot {
        slot,
        gpa,
        size,
        flags,
        uaddr,
        backing,
    })
}

fn parse_mmu(args: &mut Args<'_>) -> Result<Op, ParseErrorKind> {
    let op = args.op;
    let token = args.next("LAYOUT")?;
    let layout = Layout::from_name(token).ok_or_else(|| ParseErrorKind::BadLayout {
        token: excerpt(token),
    })?;
    let mut recovery = None;
    for token in args.words.by_ref() {
        let Some(policy) = token.strip_prefix("recovery=") else {
            return Err(ParseErrorKind::BadFlag {
                op,
                token: excerpt(token),
            });
        };
        let policy = Recovery::from_name(policy).ok_or_else(|| ParseErrorKind::BadRecovery {
            token: excerpt(policy),
        })?;
        store_once(op, "recovery", &mut recovery, policy)?;
    }
    Ok(Op::Mmu { layout, recovery })
}

/// Runs `parse` over the arguments of operation `op`, then checks that no token is left.
fn complete<'a>(
    op: &'static str,
    words: SplitWhitespace<'a>,
    parse: impl FnOnce(&mut Args<'a>) -> Result<Op, ParseErrorKind>,
) -> Result<Op, ParseErrorKind> {
    let mut args = Args { op, words };
    let parsed = parse(&mut args)?;
    args.end()?;
    Ok(parsed)
}

/// Parses the text of one line, without its line number.
fn parse_op(line: &str) -> Result<Option<Op>, ParseErrorKind> {
    let code = line.split_once('#').map_or(line, |(code, _comment)| code);
    let mut words = code.split_whitespace();
    let Some(keyword) = words.next() else {
        return Ok(None);
    };
    let op = match keyword {
        "memslot" => complete("memslot", words, parse_memslot),
        "attrs" => complete("attrs", words, |a| {
            Ok(Op::Attrs {
                gpa: a.number("GPA")?,
                size: a.number("SIZE")?,
                attributes: a.attributes()?,
            })
        }),
        "map-gpa" => complete("map-gpa", words, |a| {
            Ok(Op::MapGpa {
                gpa: a.number("GPA")?,
                npages: a.number("NPAGES")?,
                flags: a.number("FLAGS")?,
            })
        }),
        "query" => complete("query", words, |a| {
            Ok(Op::Query {
                gpa: a.number("GPA")?,
                access: a.access()?,
            })
        }),
        "fault" => complete("fault", words, |a| {
            Ok(Op::Fault {
                gpa: a.number("GPA")?,
                access: a.access()?,
            })
        }),
        "fault-range" => complete("fault-range", words, |a| {
            Ok(Op::FaultRange {
                gpa: a.number("GPA")?,
                size: a.number("SIZE")?,
                access: a.access()?,
            })
        }),
        "mmu" => complete("mmu", words, parse_mmu),
        "accept" => complete("accept", words, |a| {
            Ok(Op::Accept {
                gpa: a.number("GPA")?,
                level: a.level("LEVEL")?,
            })
        }),
        other => Err(ParseErrorKind::UnknownOperation {
            token: excerpt(other),
        }),
    }?;
    Ok(Some(op))
}

/// Parses one op-log line: `Ok(None)` for a blank or comment-only line.
///
/// Errors carry line number 0; use [`ParseError::at_line`] to locate them, or [`ops`], which counts
/// lines itself.
pub fn parse_line(line: &str) -> Result<Option<Op>, ParseError> {
    parse_op(line).map_err(|kind| ParseError { line: 0, kind })
}

/// Parses a whole op-log held in memory; stops at the first line that cannot be parsed.
pub fn parse(text: &str) -> Result<Vec<Line>, ParseError> {
    ops(text.lines()).collect()
}

/// Streams the operations of an op-log given as lines (without their line terminators), skipping
/// blank and comment lines; nothing but the current line is held.
///
/// The iterator yields one `Err` per line that cannot be parsed and then goes on with the next line;
/// a replay stops at the first one.
pub fn ops<I>(lines: I) -> Ops<I::IntoIter>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    Ops {
        lines: lines.into_iter(),
        number: 0,
    }
}

/// The iterator returned by [`ops`].
#[derive(Clone, Debug)]
pub struct Ops<I> {
    lines: I,
    number: usize,
}

impl<I> Ops<I> {
    /// The number of lines read so far (the number of the last line read).
    pub fn lines_read(&self) -> usize {
        self.number
    }
}

impl<I> Iterator for Ops<I>
where
    I: Iterator,
    I::Item: AsRef<str>,
{
    type Item = Result<Line, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let text = self.lines.next()?;
            self.number += 1;
            match parse_op(text.as_ref()) {
                Ok(None) => continue,
                Ok(Some(op)) => {
                    return Some(Ok(Line {
                        number: self.number,
                        op,
                    }))
                }
                Err(kind) => {
                    return Some(Err(ParseError {
                        line: self.number,
                        kind,
                    }))
                }
            }
        }
    }
}

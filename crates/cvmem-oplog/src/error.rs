//! Typed errors of the op-log parser.

use alloc::string::String;
use core::fmt;

/// Tokens quoted in error messages are cut to this many characters, so a 1 MiB line does not
/// become a 1 MiB message.
const EXCERPT_CHARS: usize = 40;

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
    /// An `attr-mode` other than `per-vm` or `per-gmem`.
    BadAttrMode {
        /// The token (cut to 40 characters).
        token: String,
    },
    /// A `gmem=FILE:OFFSET` binding without its colon.
    BadBinding {
        /// The token (cut to 40 characters).
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
            ParseErrorKind::BadAttrMode { token } => write!(
                f,
                "attr-mode: bad mode `{token}`: expected `per-vm` or `per-gmem`"
            ),
            ParseErrorKind::BadBinding { token } => write!(
                f,
                "memslot: bad binding `{token}`: expected gmem=FILE:OFFSET"
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
    /// 1-based line number, or 0 when the error came from [`parse_line`](crate::parse_line), which does not know it.
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

/// A token for an error message, cut to [`EXCERPT_CHARS`] characters.
pub(super) fn excerpt(token: &str) -> String {
    match token.char_indices().nth(EXCERPT_CHARS) {
        None => String::from(token),
        Some((end, _)) => {
            let mut s = String::from(&token[..end]);
            s.push('…');
            s
        }
    }
}

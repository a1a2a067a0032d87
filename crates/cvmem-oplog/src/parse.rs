//! The op-log v1 grammar: tokens and lines to typed operations.

use alloc::vec::Vec;
use core::str::SplitWhitespace;

use super::error::{excerpt, ParseError, ParseErrorKind};
use super::number::parse_number;
use super::op::{Layout, Op, Recovery};
use cvmem::Access;
use cvmem::Level;
use cvmem::SlotFlags;
use cvmem::KVM_MEMORY_ATTRIBUTE_PRIVATE;
use cvmem::{AttrMode, GmemFlags, GmemOffset, Gpa, MergePolicy};

/// One operation with the number of the line it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Line {
    /// 1-based line number in the op-log.
    pub number: usize,
    /// The operation on that line.
    pub op: Op,
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
        match self.next("ACCESS")? {
            "private" => Ok(Access::Private),
            "shared" => Ok(Access::Shared),
            token => Err(ParseErrorKind::BadAccess {
                token: excerpt(token),
            }),
        }
    }

    fn level(&mut self, argument: &'static str) -> Result<Level, ParseErrorKind> {
        level(argument, self.next(argument)?)
    }

    fn attributes(&mut self) -> Result<u64, ParseErrorKind> {
        match self.next("ATTRIBUTES")? {
            "private" => Ok(KVM_MEMORY_ATTRIBUTE_PRIVATE),
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
    let mut flags = SlotFlags::default();
    let mut uaddr = None;
    let mut backing = None;
    let mut gmem = None;
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
                } else if let Some(value) = token.strip_prefix("gmem=") {
                    let (file, offset) =
                        value
                            .split_once(':')
                            .ok_or_else(|| ParseErrorKind::BadBinding {
                                token: excerpt(token),
                            })?;
                    let binding = (number("FILE", file)?, GmemOffset(number("OFFSET", offset)?));
                    store_once(op, "gmem", &mut gmem, binding)?;
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
        gpa: cvmem::Gpa(gpa),
        size,
        flags,
        uaddr,
        backing,
        gmem,
    })
}

fn parse_gmem(args: &mut Args<'_>) -> Result<Op, ParseErrorKind> {
    let op = args.op;
    let size = args.number("SIZE")?;
    let mut flags = GmemFlags::default();
    let (mut folio, mut merge) = (None, None);
    for token in args.words.by_ref() {
        match token {
            "mmap" => set_once(op, "mmap", &mut flags.mmap)?,
            "init-shared" => set_once(op, "init-shared", &mut flags.init_shared)?,
            _ => {
                if let Some(value) = token.strip_prefix("folio=") {
                    store_once(op, "folio", &mut folio, level("folio", value)?)?;
                } else if let Some(value) = token.strip_prefix("merge=") {
                    let policy =
                        MergePolicy::from_name(value).ok_or_else(|| ParseErrorKind::BadFlag {
                            op,
                            token: excerpt(token),
                        })?;
                    store_once(op, "merge", &mut merge, policy)?;
                } else {
                    return Err(ParseErrorKind::BadFlag {
                        op,
                        token: excerpt(token),
                    });
                }
            }
        }
    }
    flags.folio = folio.unwrap_or_default();
    Ok(Op::Gmem { size, flags, merge })
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
                gpa: Gpa(a.number("GPA")?),
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
                gpa: Gpa(a.number("GPA")?),
                access: a.access()?,
            })
        }),
        "fault" => complete("fault", words, |a| {
            Ok(Op::Fault {
                gpa: Gpa(a.number("GPA")?),
                access: a.access()?,
            })
        }),
        "fault-range" => complete("fault-range", words, |a| {
            Ok(Op::FaultRange {
                gpa: Gpa(a.number("GPA")?),
                size: a.number("SIZE")?,
                access: a.access()?,
            })
        }),
        "mmu" => complete("mmu", words, parse_mmu),
        "accept" => complete("accept", words, |a| {
            Ok(Op::Accept {
                gpa: Gpa(a.number("GPA")?),
                level: a.level("LEVEL")?,
            })
        }),
        "attr-mode" => complete("attr-mode", words, |a| {
            let mode = match a.next("MODE")? {
                "per-vm" => AttrMode::PerVm,
                "per-gmem" => AttrMode::PerGmem,
                token => {
                    return Err(ParseErrorKind::BadAttrMode {
                        token: excerpt(token),
                    })
                }
            };
            Ok(Op::AttrMode { mode })
        }),
        "gmem" => complete("gmem", words, parse_gmem),
        "gmem-attrs" => complete("gmem-attrs", words, |a| {
            Ok(Op::GmemAttrs {
                file: a.number("FILE")?,
                offset: GmemOffset(a.number("OFFSET")?),
                size: a.number("SIZE")?,
                attributes: a.attributes()?,
            })
        }),
        "punch-hole" => complete("punch-hole", words, |a| {
            Ok(Op::PunchHole {
                file: a.number("FILE")?,
                offset: GmemOffset(a.number("OFFSET")?),
                size: a.number("SIZE")?,
            })
        }),
        "gmem-pin" => complete("gmem-pin", words, |a| {
            Ok(Op::GmemPin {
                file: a.number("FILE")?,
                offset: GmemOffset(a.number("OFFSET")?),
            })
        }),
        "gmem-unpin" => complete("gmem-unpin", words, |a| {
            Ok(Op::GmemUnpin {
                file: a.number("FILE")?,
                offset: GmemOffset(a.number("OFFSET")?),
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

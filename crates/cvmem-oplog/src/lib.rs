//! The op-log v1: cvmem's plain-text scenario format, one VMM operation per line.
//!
//! This crate owns the format: it turns text into typed [`Op`]s and back, and runs them through
//! one [`Driver`] against anything that implements [`Executor`] — the core's TDP MMU model
//! ([`Replayer`]), the designs evaluator, cvmem-kvm's `CvmMemory` under a real guest — so that an
//! operation or a rule of the format is written once. Results are one [`Outcome`] type, rendered
//! once as text and as JSON ([`render`]). The core crate does not know the format. The grammar
//! is the spec's (`docs/oplog-v1.md`):
//!
//! - one operation per line; blank lines and everything after `#` are ignored; tokens are separated
//!   by white space; keywords are lower case;
//! - numbers are decimal (`4096`), optionally with a binary suffix `K`, `M`, `G`, `T` (`2M` = 2^21),
//!   or `0x` hexadecimal without suffix; unsigned and at most 64 bits ([`parse_number`]);
//! - operations: `memslot SLOT GPA SIZE [guest-memfd] [dirty-log] [readonly] [uaddr=ADDR]
//!   [backing=4K|2M|1G]`, `attrs GPA SIZE ATTRIBUTES|private|shared`, `map-gpa GPA NPAGES FLAGS`,
//!   `query GPA private|shared`, `fault GPA private|shared`, `fault-range GPA SIZE private|shared`,
//!   `mmu split|unified [recovery=off|on-fault|eager]`, `accept GPA 4K|2M|1G`.
//!
//! A line that does not follow the grammar is a [`ParseError`] (with its line number and a typed
//! [`ParseErrorKind`]). Values the grammar accepts but KVM's rules reject — an unaligned GPA, a slot
//! id beyond 32763, reserved hypercall bits, `guest-memfd` with `dirty-log` — parse fine: they are
//! operation errors for the replay engine to report.
//!
//! [`ops`] streams a file line by line (a 10^6-line op-log never has to be held as ops), [`parse`]
//! collects a whole text, and `Op`'s `Display` prints the canonical form that parses back to the same
//! `Op`, so generated workloads can be saved as op-logs.
//!
//! ```
//! use cvmem_oplog::{parse, parse_line, Op};
//! use cvmem::{Access, Gpa};
//!
//! let log = parse("memslot 0 0 2G guest-memfd\n# comment\nquery 0x1000 private # inline\n")?;
//! assert_eq!(log.len(), 2);
//! assert_eq!(log[1].number, 3);
//! assert_eq!(log[1].op, Op::Query { gpa: Gpa(0x1000), access: Access::Private });
//!
//! let op = Op::Attrs { gpa: Gpa(0), size: 2 << 30, attributes: 0x8 };
//! assert_eq!(op.to_string(), "attrs 0x0 0x80000000 private");
//! assert_eq!(parse_line(&op.to_string())?, Some(op));
//!
//! let err = parse("attrs 0 4K private\nattrs 0x1M 4K private\n").unwrap_err();
//! assert_eq!(err.line, 2);
//! # Ok::<(), cvmem_oplog::ParseError>(())
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(feature = "json")]
extern crate std;

mod error;
mod exec;
mod model;
mod number;
mod op;
mod parse;
pub mod render;
mod size;
#[cfg(test)]
mod tests;

pub use error::{NumberError, ParseError, ParseErrorKind};
pub use exec::{Driver, Executor, Outcome, Rejected};
pub use model::{FileSummary, Replayer, SlotSummary, Summary};
pub use number::parse_number;
pub use op::{Layout, Op, Recovery};
pub use parse::{ops, parse, parse_line, Line, Ops};
pub use size::{fmt_bytes, SizeFmt};

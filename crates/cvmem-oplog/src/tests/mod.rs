//! Tests of the op-log parser: every operation, flag and malformed form, huge lines, the spec's
//! examples, and a Display/parse round trip.

extern crate std;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use alloc::{format, vec};

use proptest::prelude::*;

use super::*;
use cvmem::{Access, GmemOffset, Gpa, Level, SlotFlags};

mod examples;
mod malformed;
mod numbers;
mod operations;
mod round_trip;
mod text;

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

const NO_FLAGS: SlotFlags = SlotFlags {
    guest_memfd: false,
    dirty_log: false,
    readonly: false,
};
const GUEST_MEMFD: SlotFlags = SlotFlags {
    guest_memfd: true,
    dirty_log: false,
    readonly: false,
};

/// `base` (a `memslot` op) with other flags, `uaddr` and `backing`.
fn slot_with(base: Op, flags: SlotFlags, uaddr: Option<u64>, backing: Option<Level>) -> Op {
    match base {
        Op::Memslot {
            slot, gpa, size, ..
        } => Op::Memslot {
            gmem: None,
            slot,
            gpa,
            size,
            flags,
            uaddr,
            backing,
        },
        other => other,
    }
}

fn memslot(slot: u64, gpa: u64, size: u64) -> Op {
    Op::Memslot {
        gmem: None,
        slot,
        gpa: cvmem::Gpa(gpa),
        size,
        flags: SlotFlags::default(),
        uaddr: None,
        backing: None,
    }
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

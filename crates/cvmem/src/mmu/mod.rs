//! A model of KVM's TDP MMU for confidential VMs: page tables that follow the tracker.
//!
//! [`Vm`] owns a [`crate::Tracker`] and the second-level page tables of the guest: 512-entry
//! tables, 4- or 5-level, with leaves at 4K, 2M and 1G, every table page counted. Two layouts:
//! [`Layout::Split`] (TDX: a private root and a shared root) and [`Layout::Unified`] (SNP: one
//! root whose leaves record their kind). Operations follow the op-log's "MMU operations"
//! (`shared/spec/oplog.md`):
//!
//! - [`Vm::fault`] / [`Vm::fault_range`]: map at the level the tracker allows, replacing smaller
//!   leaves (lowered under [`Recovery::Off`] so nothing is replaced);
//! - [`Vm::set_memory_attributes`] (= [`Vm::begin_conversion`] + [`Vm::end_conversion`]): zap
//!   the old kind in the range, splitting a straddling private leaf in the split layout so the
//!   part outside stays mapped; faults in the range and in the 1G pages holding its head and
//!   tail return `Retry` until the conversion ends;
//! - [`Recovery::Eager`]: after every operation, uniform, wholly mapped 2M then 1G regions
//!   collapse into one leaf; [`Vm::collapsible`] reports what recovery could still gain;
//! - [`Vm::accept`]: TDX accept with GUEST_INHIBIT (one-way, or [`AcceptPolicy::ClearWhenAccepted`]);
//! - [`Vm::set_user_memory_region`]: delete and move zap, dirty logging splits to 4K;
//! - [`Vm::stats`], [`Vm::coverage`]: leaves per level and kind, table pages, events, and
//!   hugepage coverage and table memory against the optimum.
//!
//! Every page-table walk is a `TdpIter` (Linux's `tdp_iter`), and tables a walk leaves empty
//! are freed, so the table count is always exactly the reachable tables.

mod accept;
mod check;
mod convert;
mod fault;
mod iter;
mod recovery;
mod slots;
mod stats;
mod table;
mod tree;
mod vm;

#[cfg(test)]
mod tests;

pub use accept::{AcceptOutcome, AcceptPolicy};
pub use convert::Conversion;
pub use fault::{FaultOutcome, FaultRangeCounts};
pub use recovery::CollapsibleRegion;
pub use stats::{Coverage, LevelCounts, MmuStats};
pub use tree::Leaf;
pub use vm::{Layout, Leaves, Recovery, SharedBit, Vm};

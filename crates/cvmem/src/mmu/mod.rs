//! A model of KVM's TDP MMU for confidential VMs: page tables that follow the tracker.
//!
//! [`Vm`] owns a [`crate::Tracker`] and the second-level page tables of the guest: 512-entry
//! tables, 4- or 5-level, with leaves at 4K, 2M and 1G, every table page counted. Two layouts:
//! [`Layout::Split`] (TDX: a private root and a shared root) and [`Layout::Unified`] (SNP: one
//! root whose leaves record their kind). Operations follow the op-log's "MMU operations"
//! (`docs/oplog-v1.md`):
//!
//! - [`Vm::fault`] / [`Vm::fault_range`]: map at the level the tracker allows, replacing smaller
//!   leaves (lowered under [`Recovery::Off`] so nothing is replaced);
//! - [`Vm::set_memory_attributes`] (= [`Vm::begin_conversion`] + [`Vm::end_conversion`]): zap
//!   the old kind in the range, splitting a straddling private leaf in the split layout so the
//!   part outside stays mapped; faults in the range and in the 1G pages holding its head and
//!   tail return `Retry` until the conversion ends or is aborted;
//! - [`Vm::abort_conversion`]: close the window of a begun conversion without storing its
//!   attributes (a VMM whose conversion failed part-way);
//! - [`Recovery::Eager`]: after every operation, uniform, wholly mapped 2M then 1G regions
//!   collapse into one leaf (only where the operation could have made one: the 2M pages of its
//!   range and the 1G pages holding them); [`Vm::collapsible`] reports what recovery could
//!   still gain;
//! - [`Vm::accept`]: TDX accept with GUEST_INHIBIT (one-way, or
//!   [`AcceptPolicy::ClearWhenAccepted`]);
//! - [`Vm::set_user_memory_region`]: delete and move zap, dirty logging splits to 4K;
//! - [`Vm::stats`], [`Vm::coverage`]: leaves per level and kind, table pages, events, and
//!   hugepage coverage and table memory against the optimum.
//!
//! Every page-table walk is a `TdpIter` (Linux's `tdp_iter`), and tables a walk leaves empty
//! are freed, so the table count is always exactly the reachable tables.
//!
//! # Conversions in two phases
//!
//! A VMM that has more to do between invalidating and storing (KVM's ioctl, a discard, IOMMU
//! listeners) calls the two phases itself. While the window is open, a fault in the range or in
//! the 1G pages holding its head and tail returns [`FaultOutcome::Retry`]; elsewhere faults
//! proceed. If the other work fails, [`Vm::abort_conversion`] closes the window and keeps the
//! attributes: the zapped pages fault in again as they were.
//!
//! ```
//! use cvmem::mmu::{FaultOutcome, Layout, Recovery, Vm};
//! use cvmem::{Access, Gfn, Gpa, Level, MemoryRegion, SlotFlags, KVM_MEMORY_ATTRIBUTE_PRIVATE};
//!
//! const M2: u64 = 2 << 20;
//! const G1: u64 = 1 << 30;
//! let mut vm = Vm::new(Layout::SPLIT, Recovery::OnFault);
//! let gmem = SlotFlags { guest_memfd: true, ..Default::default() };
//! let slot = MemoryRegion { slot: 0, gpa: Gpa(0), size: 2 * G1, flags: gmem, ..Default::default() };
//! vm.set_user_memory_region(&slot)?;
//! vm.set_memory_attributes(Gpa(0), 2 * G1, KVM_MEMORY_ATTRIBUTE_PRIVATE)?;
//!
//! // One page of the second 1G page becomes shared.
//! let request = vm.tracker().validate_attributes(Gpa(G1 + 0x5000), 4096, 0)?;
//! let conversion = vm.begin_conversion(request)?;
//! // ... the VMM's other work; meanwhile the guest runs:
//! assert_eq!(vm.fault(Gpa(G1), Access::Private)?, FaultOutcome::Retry); // the range's 1G page
//! assert_eq!(vm.fault(Gpa(0), Access::Private)?, FaultOutcome::Mapped { level: Level::G1 });
//! assert!(vm.end_conversion(conversion)?);
//! assert_eq!(vm.fault(Gpa(G1), Access::Private)?, FaultOutcome::Mapped { level: Level::K4 });
//! assert_eq!(vm.fault(Gpa(G1 + M2), Access::Private)?, FaultOutcome::Mapped { level: Level::M2 });
//!
//! // The first 1G page is to become shared, but the other work fails: abort.
//! let request = vm.tracker().validate_attributes(Gpa(0), G1, 0)?;
//! let conversion = vm.begin_conversion(request)?; // zaps the private 1G leaf
//! vm.abort_conversion(conversion)?;
//! assert!(vm.tracker().is_private(Gfn(0)));
//! assert_eq!(vm.fault(Gpa(0), Access::Private)?, FaultOutcome::Mapped { level: Level::G1 });
//! # Ok::<(), cvmem::Error>(())
//! ```

mod accept;
mod check;
mod convert;
mod fault;
mod gmem;
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

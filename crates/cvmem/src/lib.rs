//! # cvmem — hugepage-aware private/shared tracking for confidential VMs
//!
//! Confidential guests (TDX, SEV-SNP, CCA, pKVM) flip their pages between *private* and
//! *shared*. The hypervisor must record every flip and may map a 2M or 1G page only where the
//! whole range has one state inside one memslot. This crate keeps that knowledge with the cost
//! of what is *not* uniform: an attribute store that adapts per region ([`attrs`]: nothing for
//! uniform memory, inline boundaries or bit blocks for mixed 2M pages, never more than a flat
//! bitmap), memslots with KVM's rules and no per-page state, so the fault path answers "largest
//! level?" with one descent of fixed depth and a few bit probes.
//!
//! `#![no_std]` + `alloc`, no unsafe code, no OS calls: embeddable in a hypervisor.
//!
//! Features: `serde` (`Serialize`/`Deserialize` on the state types and [`TrackerSnapshot`]),
//! `vm-memory` (`Gpa` to and from vm-memory's `GuestAddress`; needs std), `mmu` (the TDP MMU
//! model, `cvmem::mmu`: an instrument, off by default), `test-hooks` (the store's invariant
//! check, its memory bound and shape, for tests and fuzzing; off by default).
//!
//! Addresses are typed: a guest physical address is a [`Gpa`], a frame number a [`Gfn`], so a
//! gpa passed where a gfn is meant does not compile.
//!
//! ```
//! use cvmem::{Access, Gfn, Gpa, Level, MaxLevel, MemoryRegion, SlotFlags, Tracker, KVM_MEMORY_ATTRIBUTE_PRIVATE};
//!
//! let mut vm = Tracker::new();
//! let guest_memfd = SlotFlags { guest_memfd: true, ..Default::default() };
//! vm.set_user_memory_region(&MemoryRegion { slot: 0, gpa: Gpa(0), size: 4 << 30, flags: guest_memfd, ..Default::default() })?;
//! vm.set_memory_attributes(Gpa(0), 4 << 30, KVM_MEMORY_ATTRIBUTE_PRIVATE)?; // all private
//! vm.set_memory_attributes(Gpa(0x1000_0000), 4096, 0)?;                      // one page shared
//! assert_eq!(vm.max_mapping_level(Gpa(0x4000_0000), Access::Private), MaxLevel::Level(Level::G1));
//! assert_eq!(vm.max_mapping_level(Gpa(0x1000_1000), Access::Private), MaxLevel::Level(Level::K4));
//! assert_eq!(vm.max_mapping_level(Gpa(0x1020_0000), Access::Private), MaxLevel::Level(Level::M2));
//! assert!(matches!(vm.max_mapping_level(Gpa(0x1000_0000), Access::Private), MaxLevel::MemoryFault(_)));
//! assert!(!vm.is_private(Gpa(0x1000_0000).gfn()) && vm.is_private(Gfn(0x1000_1)));
//! # Ok::<(), cvmem::Error>(())
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod addr;
pub mod attrs;
mod bitmap;
pub mod error;
pub mod gmem;
mod guest_scope;
pub mod hypercall;
mod lpage;
pub mod memslot;
#[cfg(feature = "mmu")]
pub mod mmu;
pub mod snapshot;
pub mod tracker;

pub use addr::{Gfn, GfnRange, Gpa, Level, GFN_END, PAGE_SHIFT, PAGE_SIZE};
#[cfg(feature = "test-hooks")]
pub use attrs::StoreShape;
pub use attrs::{AttrBackend, AttrRun, AttrStore, Probe, WORST_BYTES_PER_GIB};
pub use error::{Arg, Errno, Error, FlagsFault, Result, SlotField, SnapshotFault, Unsupported};
pub use gmem::{
    AttrMode, FileRecord, FolioCounts, Folios, Gmem, GmemBinding, GmemFlags, GmemId, GmemOffset,
    IndexRun, MergePolicy, PageRefs,
};
pub use guest_scope::GuestScope;
pub use hypercall::{MapGpaRange, KVM_HC_MAP_GPA_RANGE};
pub use memslot::{MemoryRegion, Memslot, SlotChange, SlotFlags, MAX_SLOT_ID, MAX_SLOT_PAGES};
pub use snapshot::{TrackerSnapshot, SNAPSHOT_VERSION};
pub use tracker::{
    Access, AttrCheck, AttrRequest, FaultCode, FlatSlot, Kind, MaxLevel, MemoryFault,
    SlotEligibility, StoreOwner, Tracker,
};

/// KVM_MEMORY_ATTRIBUTE_PRIVATE: the only attribute KVM defines.
pub const KVM_MEMORY_ATTRIBUTE_PRIVATE: u64 = 1 << 3;

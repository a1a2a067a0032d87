//! # cvmem-kvm — confidential-VM memory for KVM-based VMMs
//!
//! KVM has no GET for memory attributes: a VMM must mirror the private/shared state of its
//! confidential guest itself, handle the guest's conversion requests, update KVM, discard the
//! old backing and tell DMA users what changed. This crate does that on kvm-ioctls:
//!
//! - [`CvmMemory`]: memslots on the VMM's own memory ([`HostMemory`]: a vm-memory region, or a
//!   host address and length, each with an optional guest_memfd and offset;
//!   [`CvmMemory::attach_slot`]) or on memory it allocates ([`SlotSpec`]: guest_memfd in place
//!   or with separate shared memory, or anonymous), registered in KVM and in the cvmem
//!   [`Tracker`](cvmem::Tracker) under KVM's rules, checked before anything is changed; slots
//!   are created, deleted, moved (contents kept) and have dirty logging toggled;
//!   [`CvmMemory::convert`] applies a conversion (discards, KVM attributes where KVM has them,
//!   the tracker's update, listeners) and undoes it on failure;
//! - the tracker sits behind cvmem-sync's concurrent front: [`MemoryQuery`] handles never
//!   block and never see half a conversion;
//! - with the `mmu-model` feature, [`CvmMemory::with_mmu`] also keeps the TDP page tables KVM
//!   would build ([`cvmem::mmu::Vm`]) as an observer, fed with the accesses the VMM learns of
//!   (`fault`, `touch`, `accept`): leaves per level, splits, zaps, hugepage coverage against the
//!   optimum. A VMM does not need it; the test rig and the evaluator do.
//!   [`CvmMemory::tracking_time`] is the time spent tracking, to hold against an exit's cost;
//! - [`ConversionRequest`]: one typed request from `KVM_EXIT_HYPERCALL` (KVM_HC_MAP_GPA_RANGE),
//!   from this crate's port-I/O transport, or from `KVM_EXIT_MEMORY_FAULT`, validated as the
//!   op-log's `map-gpa`;
//! - [`ConversionListener`]s with exact ranges, and [`IommuListener`] to keep a VFIO-style IOMMU
//!   domain mapping exactly the shared memory;
//! - [`MemoryQuery`]: private/shared/mixed, runs, largest level, memory map — from any thread.
//!
//! The real-guest test rig (`cvmem kvm-run`, `cvmem kvm-diff`) lives in the unpublished
//! `cvmem-kvm-rig` crate: depending on this one builds no guest program.
//!
//! Linux x86-64 only.
//!
//! ## Features
//!
//! - `vm-memory` (default): attach vm-memory 0.18 regions with any dirty bitmap
//!   ([`HostMemory::from_region`], [`HostMemory::from_guest_memory`]); `Gpa` ↔ `GuestAddress`.
//! - `serde`: `Serialize`/`Deserialize` on the core's state types and `TrackerSnapshot`, for
//!   [`CvmMemory::snapshot`] / [`CvmMemory::restore`] across a migration.
//! - `mmu-model`: the TDP page tables KVM would build, as an observer (`CvmMemory::with_mmu`).
//!
//! ## Wiring into a rust-vmm vCPU loop
//!
//! The VM must be one whose guest's conversions reach the VMM: [`ConfidentialVm::create`] picks
//! the confidential VM type and enables KVM_HC_MAP_GPA_RANGE exits (a plain
//! `Kvm::create_vm()` has neither, and private memory would then live in cvmem alone).
//!
//! ```no_run
//! use std::sync::Arc;
//! use cvmem::{Gpa, Level};
//! use cvmem_kvm::{Backing, ConfidentialVm, CvmMemory, SlotSpec, VmType};
//! use cvmem_kvm::kvm_ioctls::{Kvm, VcpuExit};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let kvm = Kvm::new()?;
//! let cvm = ConfidentialVm::create(&kvm, &[VmType::Tdx, VmType::SevSnp, VmType::SwProtected])?;
//! let vm = Arc::new(cvm.vm);
//! let memory = CvmMemory::new(Arc::clone(&vm));
//! memory.add_slot(&SlotSpec {
//!     slot: 0, gpa: Gpa(0), size: 2 << 30,
//!     backing: Backing::GuestMemfdInPlace, max_level: Level::G1,
//! })?;
//! memory.set_attributes(Gpa(0), 2 << 30, cvmem::KVM_MEMORY_ATTRIBUTE_PRIVATE)?; // boot private
//! let query = memory.query(); // hand this to device threads
//! let mut vcpu = vm.create_vcpu(0)?;
//! // ... set up registers and load the guest ...
//! loop {
//!     match vcpu.run()? {
//!         VcpuExit::Hypercall(hc) => *hc.ret = memory.handle_hypercall(hc.nr, &hc.args),
//!         // Implicit conversion: make the page the kind the access wanted, re-enter.
//!         VcpuExit::MemoryFault { flags, gpa, size } => {
//!             memory.handle_memory_fault(flags, gpa, size)?;
//!         }
//!         VcpuExit::Hlt => break,
//!         // Handle your devices' MMIO and port I/O here; never spin on an exit you do not know.
//!         other => return Err(format!("unhandled exit {other:?}").into()),
//!     }
//! }
//! println!("{:?}", query.snapshot());
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg(target_os = "linux")]

mod attributes;
mod backing;
mod error;
mod iommu;
mod listener;
mod memory;
mod observe;
mod query;
mod request;
mod setup;
mod sys;

pub use attributes::{Attributes2Abi, KvmAttributes};
pub use backing::{
    create_guest_memfd, Backing, GuestMemfd, HostMemory, GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP, KVM_CAP_GUEST_MEMFD_FLAGS,
};
pub use error::{Error, Result};
pub use setup::{ConfidentialVm, GuestTransport, VmType};

// The crates whose types this API exposes, so that a VMM uses the same versions.
pub use iommu::{DmaMap, IommuListener, IommuStats, RecordingIommu};
pub use kvm_bindings;
pub use kvm_ioctls;
pub use listener::{Cause, ConversionListener, ListenerError, MemoryEvent, SlotRange};
#[cfg(feature = "mmu-model")]
pub use memory::MmuConfig;
pub use memory::{Conversion, ConversionCost, CvmMemory, SlotSpec};
pub use observe::MemoryStats;
#[cfg(feature = "mmu-model")]
pub use query::MmuSnapshot;
pub use query::{pages_of, MemoryMap, MemoryQuery, RangeKind, SlotSnapshot};
pub use request::{
    guest_scope, ConversionRequest, RequestError, RequestSource, TransportRegs, KVM_ENOSYS,
    KVM_MEMORY_EXIT_FLAG_PRIVATE, PORT_MAP_GPA,
};
#[cfg(feature = "vm-memory")]
pub use vm_memory;

/// The status a guest gets for a conversion: 0, or a negative errno as a two's-complement u64
/// (`hypercall.ret` / RAX): `-EINVAL` for a request KVM's rules reject, `-ENOMEM` when memory ran
/// out, `-EFAULT` when the host could not apply it (KVM, discard or a listener failed).
pub fn guest_status<T>(result: &Result<T>) -> u64 {
    let errno = match result {
        Ok(_) => return 0,
        Err(Error::Request(e)) => return e.guest_status(),
        Err(Error::Tracker(e)) => e.errno().code(),
        Err(_) => libc::EFAULT,
    };
    (errno as u64).wrapping_neg()
}

//! # cvmem-kvm-rig — cvmem-kvm's real-guest test rig
//!
//! What `cvmem kvm-run` and `cvmem kvm-diff` run, kept out of the library a VMM depends on:
//!
//! - [`kvm_run`]: boots the small guest program in `guest/guest.S` (assembled by `build.rs` with
//!   the system assembler) on a [`cvmem_kvm::CvmMemory`] with its MMU model, and runs a
//!   conversion workload ([`Workload`]: scripted scenarios or an op-log) with data checks; the
//!   guest's reads and writes are modelled as faults. The [`Report`] holds exits, conversions,
//!   mismatches and the model's page tables.
//! - [`KernelVm`]: op-log operations applied to a real KVM with nothing of cvmem's rules in
//!   between — the kernel as the second oracle.
//!
//! Linux x86-64 only.
#![cfg(target_os = "linux")]

pub mod abi;
mod caps;
mod error;
mod kernel;
mod report;
mod run;
mod script;
mod sys;
mod vm;
mod workload;

pub use caps::{without_guest_memfd, HostCaps, HostPath};
pub use error::{Error, Result};
pub use kernel::KernelVm;
pub use report::{
    ConversionStats, ExitKind, ExitStats, LineResult, Mismatch, MmuText, Report, Summary,
};
pub use run::{kvm_run, RunOptions, Workload};

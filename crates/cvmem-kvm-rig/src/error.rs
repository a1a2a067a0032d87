//! The rig's error type: cvmem-kvm's, plus the ways a test guest or a workload can fail.

use std::io;

/// Why a rig operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The memory integration (KVM, the tracker, a listener, host memory) failed.
    #[error(transparent)]
    Memory(#[from] cvmem_kvm::Error),
    /// The guest stopped in an unexpected way.
    #[error("guest failed: {0}")]
    Guest(String),
    /// The workload or its input is invalid.
    #[error("workload: {0}")]
    Workload(String),
    /// The memslot is kvm-run's own (it holds the guest program).
    #[error("slot {0} holds kvm-run's guest program")]
    ReservedSlot(u32),
    /// The guest program was not built (no assembler, or not x86-64 Linux).
    #[error("the guest program was not built: {0}")]
    NoGuestProgram(&'static str),
}

/// Shorthand for results of the rig.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<cvmem::Error> for Error {
    fn from(e: cvmem::Error) -> Self {
        Error::Memory(e.into())
    }
}

impl From<cvmem_kvm::RequestError> for Error {
    fn from(e: cvmem_kvm::RequestError) -> Self {
        Error::Memory(e.into())
    }
}

impl Error {
    /// The errno name KVM (or the OS) would give for this error: `EINVAL`, `EEXIST`, …
    pub fn errno_name(&self) -> &'static str {
        match self {
            Error::Memory(e) => e.errno_name(),
            Error::ReservedSlot(_) => "EBUSY",
            _ => "EFAULT",
        }
    }

    /// The memory integration's error, if that is what failed.
    pub fn memory(&self) -> Option<&cvmem_kvm::Error> {
        match self {
            Error::Memory(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn os(what: &'static str, source: io::Error) -> Self {
        cvmem_kvm::Error::Os { what, source }.into()
    }
    pub(crate) fn kvm(what: &'static str, source: kvm_ioctls::Error) -> Self {
        cvmem_kvm::Error::Kvm { what, source }.into()
    }
    pub(crate) fn missing(what: &'static str) -> Self {
        cvmem_kvm::Error::MissingCapability(what).into()
    }
}

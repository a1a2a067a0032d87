//! The crate's error type.

use std::io;

use crate::listener::ListenerError;
use crate::request::RequestError;

/// Why an operation of cvmem-kvm failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        /// The ioctl or step.
        what: &'static str,
        /// The errno KVM returned.
        source: kvm_ioctls::Error,
    },
    /// The host lacks a capability this operation needs.
    #[error("KVM lacks {0}")]
    MissingCapability(&'static str),
    /// A system call on guest memory failed (mmap, fallocate, madvise).
    #[error("{what}: {source}")]
    Os {
        /// The call.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The tracker refused the operation (KVM's rules); nothing changed.
    #[error("tracker: {0}")]
    Tracker(#[from] cvmem::Error),
    /// A conversion request was malformed.
    #[error("request: {0}")]
    Request(#[from] RequestError),
    /// A listener refused a change; the change was rolled back.
    #[error("{0}")]
    Listener(#[from] ListenerError),
    /// A rollback after a failure itself failed: tracker, KVM and listeners may disagree.
    #[error("rollback after `{cause}` failed: {why}")]
    Inconsistent {
        /// The first failure.
        cause: String,
        /// Why the rollback failed.
        why: String,
    },
    /// A guest-physical range is not backed by a memslot of this VM.
    #[error("gpa {gpa:#x} + {size:#x} is not inside one memslot")]
    NotInSlot {
        /// Start of the range.
        gpa: u64,
        /// Its size in bytes.
        size: u64,
    },
    /// The guest stopped in an unexpected way.
    #[error("guest failed: {0}")]
    Guest(String),
    /// The workload or its input is invalid.
    #[error("workload: {0}")]
    Workload(String),
    /// The guest program was not built (no assembler, or not x86-64 Linux).
    #[error("the guest program was not built: {0}")]
    NoGuestProgram(&'static str),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn os(what: &'static str, source: io::Error) -> Self {
        Error::Os { what, source }
    }
    pub(crate) fn kvm(what: &'static str, source: kvm_ioctls::Error) -> Self {
        Error::Kvm { what, source }
    }
}

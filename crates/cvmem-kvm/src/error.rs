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
    /// `KVM_SET_MEMORY_ATTRIBUTES2` refused to make a guest_memfd page private because it is
    /// still referenced elsewhere (`EAGAIN`): drop the host's references (mappings, pins) to
    /// it and convert again. Nothing changed.
    #[error(
        "guest_memfd of memslot {slot}: the page at offset {offset:#x}{} is still referenced (EAGAIN)",
        gpa.map(|g| format!(" (gpa {:#x})", g.0)).unwrap_or_default()
    )]
    GmemBusy {
        /// The memslot whose guest_memfd refused.
        slot: u32,
        /// `error_offset`: the file offset of the page.
        offset: u64,
        /// Its gpa, when the offset lies in the range asked for.
        gpa: Option<cvmem::Gpa>,
    },
    /// A memslot with this id exists already (creating one is EEXIST).
    #[error("memslot {slot} exists already")]
    SlotExists {
        /// The id.
        slot: u32,
    },
    /// Memory handed to [`CvmMemory::attach_slot`](crate::CvmMemory::attach_slot) does not fit
    /// the slot: nothing was attached.
    #[error("attach: {0}")]
    Attach(&'static str),
    /// The host memory is attached to another memslot already.
    #[error("attach: the host memory already backs memslot {slot}")]
    AlreadyAttached {
        /// The slot it backs.
        slot: u32,
    },
    /// A guest-physical range is not backed by a memslot of this VM.
    #[error("gpa {gpa:#x} + {size:#x} is not inside one memslot")]
    NotInSlot {
        /// Start of the range.
        gpa: u64,
        /// Its size in bytes.
        size: u64,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The errno name KVM (or the OS) would give for this error: `EINVAL`, `EEXIST`, …
    pub fn errno_name(&self) -> &'static str {
        let code = match self {
            Error::Tracker(e) => return e.errno().name(),
            Error::Request(_) | Error::Attach(_) => return "EINVAL",
            Error::SlotExists { .. } | Error::AlreadyAttached { .. } => return "EEXIST",
            Error::Kvm { source, .. } => source.errno(),
            Error::Os { source, .. } => source.raw_os_error().unwrap_or(libc::EFAULT),
            _ => libc::EFAULT,
        };
        match code {
            libc::EINVAL => "EINVAL",
            libc::EEXIST => "EEXIST",
            libc::ENOENT => "ENOENT",
            libc::ENOMEM => "ENOMEM",
            libc::E2BIG => "E2BIG",
            libc::EBUSY => "EBUSY",
            libc::EPERM => "EPERM",
            libc::ENOTTY => "ENOTTY",
            libc::EOPNOTSUPP => "EOPNOTSUPP",
            libc::EBADF => "EBADF",
            libc::EAGAIN => "EAGAIN",
            _ => "EFAULT",
        }
    }

    /// An OS call on host memory failed.
    pub fn os(what: &'static str, source: io::Error) -> Self {
        Error::Os { what, source }
    }
    /// A KVM ioctl failed.
    pub fn kvm(what: &'static str, source: kvm_ioctls::Error) -> Self {
        Error::Kvm { what, source }
    }
}

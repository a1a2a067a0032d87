//! The one error type of the core, with the errno KVM would return.

use core::fmt;

/// The errno name an [`Error`] corresponds to in KVM's uAPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Errno {
    /// Invalid argument.
    EINVAL,
    /// The object (a memslot range) already exists.
    EEXIST,
    /// No such object.
    ENOENT,
    /// Out of memory: nothing was changed.
    ENOMEM,
    /// Argument list or range too large.
    E2BIG,
    /// Busy: the operation needs a quiescent state (no conversion in progress).
    EBUSY,
}

impl Errno {
    /// The name, as printed by `strerrorname_np`.
    pub const fn name(self) -> &'static str {
        match self {
            Errno::EINVAL => "EINVAL",
            Errno::EEXIST => "EEXIST",
            Errno::ENOENT => "ENOENT",
            Errno::ENOMEM => "ENOMEM",
            Errno::E2BIG => "E2BIG",
            Errno::EBUSY => "EBUSY",
        }
    }
    /// The positive errno number on Linux.
    pub const fn code(self) -> i32 {
        match self {
            Errno::EINVAL => 22,
            Errno::EEXIST => 17,
            Errno::ENOENT => 2,
            Errno::ENOMEM => 12,
            Errno::E2BIG => 7,
            Errno::EBUSY => 16,
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an operation was refused. Every refused operation leaves the state unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// An address or size is not aligned as required.
    Unaligned {
        /// Which argument.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The alignment it needs, in bytes.
        align: u64,
    },
    /// A size or page count of zero where one is required.
    ZeroSize {
        /// Which argument.
        what: &'static str,
    },
    /// `start + size` does not fit in 64 bits.
    Overflow {
        /// Which range.
        what: &'static str,
        /// Its start.
        start: u64,
        /// Its size.
        size: u64,
    },
    /// Attribute bits outside the supported mask.
    UnsupportedAttributes {
        /// The attributes asked for.
        attributes: u64,
        /// The mask of supported bits.
        supported: u64,
    },
    /// Reserved bits set in a hypercall argument.
    ReservedBits {
        /// Which argument.
        what: &'static str,
        /// The offending bits.
        bits: u64,
    },
    /// A page-size hint outside 0 (4K), 1 (2M), 2 (1G).
    InvalidHint {
        /// The hint.
        hint: u64,
    },
    /// A memslot id beyond the user memslots.
    SlotIdOutOfRange {
        /// The id.
        slot: u32,
        /// The largest valid id.
        max: u32,
    },
    /// A memslot larger than KVM allows (2^31 - 1 pages).
    SlotTooLarge {
        /// Its size in pages.
        pages: u64,
    },
    /// A memslot reaching past the guest-physical address width (x86 KVM: the host's
    /// MAXPHYADDR, `kvm_mmu_max_gfn()`).
    SlotBeyondAddressWidth {
        /// One past the slot's last byte.
        end: u64,
        /// The address width in bits.
        bits: u32,
    },
    /// A snapshot cannot be taken now: conversions are in progress (an open invalidation
    /// window). Finish or abort them first.
    ConversionInProgress {
        /// How many.
        count: usize,
    },
    /// A snapshot to restore is of another format version, or does not describe a state this
    /// tracker could have reached.
    BadSnapshot {
        /// What is wrong with it.
        why: &'static str,
    },
    /// The new memslot range overlaps another slot.
    SlotOverlap {
        /// The slot being set.
        slot: u32,
        /// The slot it overlaps.
        other: u32,
    },
    /// Deleting a memslot that does not exist.
    UnknownSlot {
        /// The id.
        slot: u32,
    },
    /// A change KVM does not allow on an existing slot.
    SlotImmutable {
        /// The slot.
        slot: u32,
        /// What the request tried to change.
        what: &'static str,
    },
    /// A combination of flags KVM rejects.
    InvalidFlags {
        /// Why.
        why: &'static str,
    },
    /// An operation the current configuration does not support.
    Unsupported {
        /// What and why.
        what: &'static str,
    },
    /// A guest asked to make private memory outside every memslot: no memory is there
    /// ([`Tracker::guest_scope`](crate::Tracker::guest_scope)).
    OutsideMemslots {
        /// Start of the requested range.
        gpa: u64,
        /// Its size in bytes.
        size: u64,
        /// How many of its pages no memslot holds.
        outside_pages: u64,
    },
    /// An allocation failed before anything changed.
    NoMemory {
        /// Bytes that could not be allocated.
        bytes: usize,
    },
}

impl Error {
    /// The errno KVM would return for this error.
    pub const fn errno(&self) -> Errno {
        match self {
            Error::SlotOverlap { .. } => Errno::EEXIST,
            Error::NoMemory { .. } => Errno::ENOMEM,
            Error::ConversionInProgress { .. } => Errno::EBUSY,
            _ => Errno::EINVAL,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unaligned { what, value, align } => {
                write!(f, "{what} {value:#x} is not aligned to {align:#x}")
            }
            Error::ZeroSize { what } => write!(f, "{what} must not be zero"),
            Error::Overflow { what, start, size } => {
                write!(f, "{what} {start:#x} + {size:#x} overflows 64 bits")
            }
            Error::UnsupportedAttributes {
                attributes,
                supported,
            } => write!(
                f,
                "attributes {attributes:#x} have unsupported bits {:#x} (supported {supported:#x})",
                attributes & !supported
            ),
            Error::ReservedBits { what, bits } => {
                write!(f, "{what} has reserved bits {bits:#x} set")
            }
            Error::InvalidHint { hint } => {
                write!(f, "page-size hint {hint} is not 0 (4K), 1 (2M) or 2 (1G)")
            }
            Error::SlotIdOutOfRange { slot, max } => {
                write!(f, "memslot {slot} is beyond the last user memslot {max}")
            }
            Error::SlotTooLarge { pages } => {
                write!(
                    f,
                    "memslot of {pages} pages exceeds the limit of 2^31 - 1 pages"
                )
            }
            Error::SlotBeyondAddressWidth { end, bits } => {
                write!(f, "memslot ending at {end:#x} is beyond the {bits}-bit guest-physical address space")
            }
            Error::SlotOverlap { slot, other } => {
                write!(f, "memslot {slot} would overlap memslot {other}")
            }
            Error::ConversionInProgress { count } => write!(
                f,
                "{count} conversion(s) in progress: a snapshot needs them finished or aborted"
            ),
            Error::BadSnapshot { why } => write!(f, "bad snapshot: {why}"),
            Error::UnknownSlot { slot } => write!(f, "memslot {slot} does not exist"),
            Error::SlotImmutable { slot, what } => {
                write!(
                    f,
                    "memslot {slot}: cannot change {what} of an existing slot"
                )
            }
            Error::InvalidFlags { why } => write!(f, "invalid flags: {why}"),
            Error::Unsupported { what } => write!(f, "unsupported: {what}"),
            Error::OutsideMemslots {
                gpa,
                size,
                outside_pages,
            } => write!(
                f,
                "gpa {gpa:#x} + {size:#x} to private: {outside_pages} page(s) lie outside every memslot"
            ),
            Error::NoMemory { bytes } => write!(f, "could not allocate {bytes} bytes"),
        }
    }
}

impl core::error::Error for Error {}

/// Shorthand for results of the core.
pub type Result<T, E = Error> = core::result::Result<T, E>;

//! The one error type of the core, with the errno KVM would return.

use core::fmt;

/// The errno name an [`Error`] corresponds to in KVM's uAPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
    /// Try again: a page is still referenced elsewhere (guest_memfd shared → private).
    EAGAIN,
    /// Bad file descriptor: no such guest_memfd.
    EBADF,
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
            Errno::EAGAIN => "EAGAIN",
            Errno::EBADF => "EBADF",
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
            Errno::EAGAIN => 11,
            Errno::EBADF => 9,
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which value of a request an argument error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Arg {
    /// A memslot's guest physical address.
    MemslotGpa,
    /// A memslot's size.
    MemslotSize,
    /// A memslot's host address.
    MemslotUaddr,
    /// A memslot's range (address + size).
    Memslot,
    /// An attribute change's or a query's guest physical address.
    Gpa,
    /// An attribute change's or a query's size.
    Size,
    /// An attribute change's or a query's range (address + size).
    Range,
    /// KVM_HC_MAP_GPA_RANGE's address (a0).
    MapGpaGpa,
    /// KVM_HC_MAP_GPA_RANGE's page count (a1).
    MapGpaPages,
    /// KVM_HC_MAP_GPA_RANGE's range (a0 + a1 pages).
    MapGpaRange,
    /// KVM_HC_MAP_GPA_RANGE's attributes (a2).
    MapGpaFlags,
    /// A TDX accept's guest physical address.
    AcceptGpa,
    /// An offset into a guest_memfd.
    GmemOffset,
    /// A size of (or in) a guest_memfd.
    GmemSize,
    /// KVM_SET_MEMORY_ATTRIBUTES2's flags.
    GmemFlags,
}

impl Arg {
    /// How messages name it.
    pub const fn name(self) -> &'static str {
        match self {
            Arg::MemslotGpa => "memslot gpa",
            Arg::MemslotSize => "memslot size",
            Arg::MemslotUaddr => "memslot uaddr",
            Arg::Memslot => "memslot",
            Arg::Gpa => "address",
            Arg::Size => "size",
            Arg::Range => "range",
            Arg::MapGpaGpa => "map-gpa gpa",
            Arg::MapGpaPages => "map-gpa npages",
            Arg::MapGpaRange => "map-gpa range",
            Arg::MapGpaFlags => "map-gpa flags",
            Arg::AcceptGpa => "accept gpa",
            Arg::GmemOffset => "guest_memfd offset",
            Arg::GmemSize => "guest_memfd size",
            Arg::GmemFlags => "set-attributes2 flags",
        }
    }
}

/// What an existing memslot cannot change (KVM_SET_USER_MEMORY_REGION2 moves and re-flags
/// only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SlotField {
    /// Anything of a guest-memfd slot: KVM only deletes it.
    GuestMemfdSlot,
    /// The size.
    Size,
    /// The readonly flag.
    Readonly,
    /// The guest-memfd flag.
    GuestMemfd,
    /// The host address.
    Uaddr,
    /// The host memory's largest mapping.
    Backing,
}

/// Why memslot flags (or the memory behind them) were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FlagsFault {
    /// KVM_MEM_GUEST_MEMFD with KVM_MEM_LOG_DIRTY_PAGES.
    GuestMemfdWithDirtyLog,
    /// KVM_MEM_GUEST_MEMFD with KVM_MEM_READONLY.
    GuestMemfdWithReadonly,
    /// Bits KVM does not define.
    UnknownBits,
    /// The guest-memfd flag and the memory attached to the slot disagree.
    BackingDisagrees,
}

/// Why a snapshot was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SnapshotFault {
    /// Another format version.
    Version,
    /// Memslots out of address order.
    SlotOrder,
    /// A host offset that is not page aligned below 1 GiB.
    HostOffset,
    /// Attribute runs empty, reversed, overlapping or out of order.
    RunOrder,
    /// Inhibit records of 4K, repeated or out of order.
    InhibitOrder,
    /// An inhibit record that is not a large page wholly inside a memslot.
    InhibitOutsideSlot,
    /// Not a state a tracker can be in (adjacent equal runs, unsupported attributes, or
    /// inhibits outside memslots).
    Unreachable,
    /// A guest_memfd record whose runs are out of order or outside the file, whose split
    /// folios its folio size cannot have, or with references on private pages.
    FileRecord,
    /// A memslot binding to a guest_memfd the snapshot does not have, or outside it.
    Binding,
    /// The destination already has private memory.
    DestinationNotFresh,
    /// The destination's memslots differ from the snapshot's.
    SlotsDiffer,
}

/// An operation this configuration does not support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Unsupported {
    /// An attribute range empty or reaching past the gfn space.
    OutsideGfnSpace,
    /// A TDX accept on a model without the split (private/shared) layout.
    AcceptNeedsSplitLayout,
    /// Closing a conversion another VM opened.
    ForeignConversion,
    /// An MMU operation on a machine without an MMU model.
    NoMmuModel,
    /// `mmu` anywhere but as an op-log's first operation.
    MmuNotFirst,
    /// Attribute values above 32 bits (the `linux` design's xarray values).
    AttributesAbove32Bits,
    /// The dense oracle refused a range the rules accepted.
    OracleRejected,
    /// PRIVATE set on a guest_memfd while the VM keeps it per VM (no in-place conversion).
    AttributesPerVm,
    /// PRIVATE set on the VM while each guest_memfd keeps its own (in-place conversion).
    AttributesPerGmem,
    /// `GUEST_MEMFD_FLAG_INIT_SHARED` on a VM with private memory kept per VM.
    InitSharedWithPrivateMemory,
    /// Choosing where PRIVATE is kept once memslots or guest_memfds exist.
    AttrModeNotFirst,
    /// guest_memfd files on an executor that does not model them.
    NoGmemModel,
    /// An attribute write (the VM's or a guest_memfd's) through a copy of a concurrent front's
    /// tracker: the front's attribute stores are written by the front itself, once.
    SharedAttributeStore,
}

/// Why an operation was refused. Every refused operation leaves the state unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// An address or size is not aligned as required.
    Unaligned {
        /// Which argument.
        what: Arg,
        /// Its value.
        value: u64,
        /// The alignment it needs, in bytes.
        align: u64,
    },
    /// A size or page count of zero where one is required.
    ZeroSize {
        /// Which argument.
        what: Arg,
    },
    /// `start + size` does not fit in 64 bits.
    Overflow {
        /// Which range.
        what: Arg,
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
        what: Arg,
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
        why: SnapshotFault,
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
        what: SlotField,
    },
    /// A combination of flags KVM rejects.
    InvalidFlags {
        /// Why.
        why: FlagsFault,
    },
    /// An operation the current configuration does not support.
    Unsupported {
        /// What and why.
        what: Unsupported,
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
    /// A guest_memfd range reaching past the end of the file.
    OutsideFile {
        /// Start of the range (bytes into the file).
        offset: u64,
        /// Its size.
        size: u64,
        /// The file's size.
        file_size: u64,
    },
    /// Shared → private of a guest_memfd range whose page at `offset` the host still
    /// references (KVM_SET_MEMORY_ATTRIBUTES2's `-EAGAIN`, `offset` being its `error_offset`).
    PageReferenced {
        /// The first referenced page of the range.
        offset: u64,
    },
    /// A reference asked for on a private guest_memfd page (the host cannot map it).
    PrivatePage {
        /// The page.
        offset: u64,
    },
    /// A reference dropped on a guest_memfd page that holds none.
    NotReferenced {
        /// The page.
        offset: u64,
    },
    /// No guest_memfd has this id (a bad file descriptor to KVM).
    UnknownGmem {
        /// The id asked for.
        gmem: u32,
    },
    /// A memslot bound to a guest_memfd range that another memslot already binds
    /// (`kvm_gmem_bind`'s overlap check: EEXIST).
    GmemBindingOverlap {
        /// The guest_memfd.
        gmem: u32,
        /// The memslot that binds the range.
        other: u32,
    },
    /// A memslot binding a guest_memfd without `KVM_MEM_GUEST_MEMFD`, or a guest_memfd slot
    /// without its file where PRIVATE is kept per guest_memfd.
    GmemBinding {
        /// The memslot.
        slot: u32,
        /// Whether the file was given (without the flag) or missing (with it).
        given: bool,
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
            Error::PageReferenced { .. } => Errno::EAGAIN,
            Error::UnknownGmem { .. } => Errno::EBADF,
            // kvm_gmem_bind's answer (found by `cvmem kvm-diff` on 6.12 and 7.3).
            Error::GmemBindingOverlap { .. } => Errno::EEXIST,
            Error::GmemBinding { given: false, .. } => Errno::EBADF,
            _ => Errno::EINVAL,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unaligned { what, value, align } => {
                write!(f, "{} {value:#x} is not aligned to {align:#x}", what.name())
            }
            Error::ZeroSize { what } => write!(f, "{} must not be zero", what.name()),
            Error::Overflow { what, start, size } => {
                write!(f, "{} {start:#x} + {size:#x} overflows 64 bits", what.name())
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
                write!(f, "{} has reserved bits {bits:#x} set", what.name())
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
            Error::OutsideFile {
                offset,
                size,
                file_size,
            } => write!(
                f,
                "guest_memfd range {offset:#x} + {size:#x} reaches past the file's {file_size:#x} bytes"
            ),
            Error::PageReferenced { offset } => write!(
                f,
                "the guest_memfd page at {offset:#x} is still referenced by the host"
            ),
            Error::UnknownGmem { gmem } => write!(f, "no guest_memfd {gmem}"),
            Error::GmemBindingOverlap { gmem, other } => write!(
                f,
                "the guest_memfd {gmem} range is already bound to memslot {other}"
            ),
            Error::GmemBinding { slot, given: true } => write!(
                f,
                "memslot {slot} names a guest_memfd without KVM_MEM_GUEST_MEMFD"
            ),
            Error::GmemBinding { slot, given: false } => write!(
                f,
                "memslot {slot} has KVM_MEM_GUEST_MEMFD but no guest_memfd, which holds PRIVATE here"
            ),
            Error::PrivatePage { offset } => {
                write!(f, "the guest_memfd page at {offset:#x} is private")
            }
            Error::NotReferenced { offset } => {
                write!(f, "the guest_memfd page at {offset:#x} holds no reference")
            }
            Error::NoMemory { bytes } => write!(f, "could not allocate {bytes} bytes"),
        }
    }
}

impl core::error::Error for Error {}

/// Shorthand for results of the core.
pub type Result<T, E = Error> = core::result::Result<T, E>;

impl fmt::Display for Arg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for SlotField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlotField::GuestMemfdSlot => "a guest-memfd slot",
            SlotField::Size => "the size",
            SlotField::Readonly => "readonly",
            SlotField::GuestMemfd => "guest-memfd",
            SlotField::Uaddr => "uaddr",
            SlotField::Backing => "backing",
        })
    }
}

impl fmt::Display for FlagsFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlagsFault::GuestMemfdWithDirtyLog => "guest-memfd cannot be combined with dirty-log",
            FlagsFault::GuestMemfdWithReadonly => "guest-memfd cannot be combined with readonly",
            FlagsFault::UnknownBits => "unknown memslot flag bits",
            FlagsFault::BackingDisagrees => "the guest-memfd flag and the slot's backing disagree",
        })
    }
}

impl fmt::Display for SnapshotFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotFault::Version => "unknown format version",
            SnapshotFault::SlotOrder => "memslots out of address order",
            SnapshotFault::HostOffset => "a host offset that is not page aligned below 1 GiB",
            SnapshotFault::RunOrder => "runs empty, reversed, overlapping or out of order",
            SnapshotFault::InhibitOrder => "inhibit records of 4K, repeated or out of order",
            SnapshotFault::InhibitOutsideSlot => {
                "an inhibit record that is not a large page wholly inside a memslot"
            }
            SnapshotFault::Unreachable => {
                "it does not describe a state a tracker can be in (adjacent equal runs, \
                 unsupported attributes, or inhibits outside memslots)"
            }
            SnapshotFault::FileRecord => {
                "a guest_memfd record with runs out of order or outside the file, splits its \
                 folio size cannot have, or references on private pages"
            }
            SnapshotFault::Binding => "a memslot bound to a guest_memfd the snapshot lacks",
            SnapshotFault::DestinationNotFresh => "the destination already has private memory",
            SnapshotFault::SlotsDiffer => "the destination's memslots differ from the snapshot's",
        })
    }
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unsupported::OutsideGfnSpace => "attribute range empty or outside the gfn space",
            Unsupported::AcceptNeedsSplitLayout => "accept needs the split layout (TDX)",
            Unsupported::ForeignConversion => "closing a conversion of another VM",
            Unsupported::NoMmuModel => "MMU operations need an MMU model",
            Unsupported::MmuNotFirst => "`mmu` is only allowed as the first operation",
            Unsupported::AttributesAbove32Bits => {
                "attribute values above 32 bits in the linux model"
            }
            Unsupported::OracleRejected => "the dense oracle rejected a validated range",
            Unsupported::AttributesPerVm => {
                "PRIVATE is kept per VM here: set it with KVM_SET_MEMORY_ATTRIBUTES on the VM"
            }
            Unsupported::AttributesPerGmem => {
                "PRIVATE is kept per guest_memfd here: set it with KVM_SET_MEMORY_ATTRIBUTES2 on the file"
            }
            Unsupported::NoGmemModel => "this executor does not model guest_memfd files",
            Unsupported::SharedAttributeStore => {
                "the attributes are shared by a concurrent front: convert through the front"
            }
            Unsupported::AttrModeNotFirst => {
                "where PRIVATE is kept is chosen before any memslot or guest_memfd exists"
            }
            Unsupported::InitSharedWithPrivateMemory => {
                "INIT_SHARED needs a VM without per-VM private memory"
            }
        })
    }
}

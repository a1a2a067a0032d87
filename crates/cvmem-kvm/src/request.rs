//! Conversion requests: one typed request from the three ways a guest asks for a conversion.
//!
//! - [`ConversionRequest::from_hypercall`]: `KVM_EXIT_HYPERCALL` with nr 12
//!   (KVM_HC_MAP_GPA_RANGE), the path on TDX/SNP hosts with `KVM_CAP_EXIT_HYPERCALL`;
//! - [`ConversionRequest::from_port_io`]: the paravirtual transport of this crate, the same
//!   registers carried by an `out` to [`PORT_MAP_GPA`], for hosts
//!   whose KVM does not forward the hypercall;
//! - [`ConversionRequest::from_memory_fault`]: `KVM_EXIT_MEMORY_FAULT`, an implicit conversion of
//!   the faulting range to the kind of the access.
//!
//! All three are validated exactly as the op-log's `map-gpa` (through
//! [`cvmem::MapGpaRange::decode`]): page-size hint bits are a hint, bit 4 is the direction,
//! reserved bits are rejected, ranges are checked.

use cvmem::{
    GfnRange, GuestScope, Kind, Level, MapGpaRange, Tracker, KVM_HC_MAP_GPA_RANGE, PAGE_SIZE,
};

/// The I/O port of this crate's conversion transport, for hosts without hypercall exits: the
/// guest loads RAX = 12 (KVM_HC_MAP_GPA_RANGE), RBX = gpa, RCX = number of 4K pages, RDX =
/// attributes and executes `out %eax, $PORT_MAP_GPA`; the host answers in RAX (0 or -errno).
pub const PORT_MAP_GPA: u16 = 0xe0;

/// `KVM_MEMORY_EXIT_FLAG_PRIVATE`: the faulting access was private.
pub const KVM_MEMORY_EXIT_FLAG_PRIVATE: u64 = 1 << 3;
/// KVM's status for an unknown hypercall number (`-KVM_ENOSYS`, include/uapi/linux/kvm_para.h).
pub const KVM_ENOSYS: u64 = 1000;

/// Where a request came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RequestSource {
    /// `KVM_EXIT_HYPERCALL` (KVM_HC_MAP_GPA_RANGE).
    Hypercall,
    /// The port-I/O transport.
    #[default]
    PortIo,
    /// `KVM_EXIT_MEMORY_FAULT` (implicit conversion).
    MemoryFault,
    /// The VMM itself (`KVM_SET_MEMORY_ATTRIBUTES` on its own initiative, e.g. at start-up).
    Vmm,
}

impl RequestSource {
    /// A short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            RequestSource::Hypercall => "hypercall",
            RequestSource::PortIo => "port-io",
            RequestSource::MemoryFault => "memory-fault",
            RequestSource::Vmm => "vmm",
        }
    }
}

/// A validated request to make a range of guest memory private or shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConversionRequest {
    /// The gfns to convert (never empty, never wrapping).
    pub range: GfnRange,
    /// The kind the range must become.
    pub to: Kind,
    /// The guest's page-size hint (a hint only: it never changes the range).
    pub hint: Level,
    /// Where the request came from.
    pub source: RequestSource,
}

/// The registers of the port-I/O transport, as read from the vCPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportRegs {
    /// The hypercall number (must be 12).
    pub rax: u64,
    /// The first argument: gpa.
    pub rbx: u64,
    /// The second argument: number of 4K pages.
    pub rcx: u64,
    /// The third argument: attributes (bit 4 private, bits 3:0 page-size hint).
    pub rdx: u64,
}

/// Why a conversion request was rejected. Every variant leaves the VM unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The arguments break KVM_HC_MAP_GPA_RANGE's rules (as the op-log's `map-gpa`).
    #[error("KVM_HC_MAP_GPA_RANGE: {0}")]
    MapGpaRange(cvmem::Error),
    /// A hypercall other than KVM_HC_MAP_GPA_RANGE.
    #[error("hypercall {0} is not KVM_HC_MAP_GPA_RANGE (12)")]
    UnknownHypercall(u64),
    /// A port-I/O exit on another port than the transport's.
    #[error("port {0:#x} is not the conversion transport's port")]
    WrongPort(u16),
    /// The transport's `out` did not carry the 4 bytes of EAX.
    #[error("transport write of {len} bytes {value:#x} does not match EAX {eax:#x}")]
    BadPortData {
        /// Bytes written.
        len: usize,
        /// The value written (little endian, zero-extended).
        value: u64,
        /// EAX at the exit.
        eax: u64,
    },
    /// A memory-fault exit with flags other than KVM_MEMORY_EXIT_FLAG_PRIVATE.
    #[error("memory fault flags {0:#x} have unknown bits")]
    FaultFlags(u64),
    /// A memory-fault exit whose size is zero or not a multiple of 4 KiB.
    #[error("memory fault size {0:#x} is not a non-zero multiple of 4 KiB")]
    FaultSize(u64),
    /// A guest asked for more than its memslots hold ([`guest_scope`]): private memory
    /// outside every memslot.
    #[error("{0}")]
    OutsideMemslots(cvmem::Error),
}

impl RequestError {
    /// The status KVM's ABI gives the guest for this error: `-KVM_ENOSYS` for an unknown
    /// hypercall, `-EINVAL` otherwise, as a two's-complement u64 for RAX / `hypercall.ret`.
    pub const fn guest_status(&self) -> u64 {
        match self {
            RequestError::UnknownHypercall(_) => KVM_ENOSYS.wrapping_neg(),
            _ => (libc::EINVAL as u64).wrapping_neg(),
        }
    }
}

/// What [`CvmMemory::convert`](crate::CvmMemory::convert) converts of `req` on a VM with
/// `tracker`'s memslots: the whole range for the VMM ([`RequestSource::Vmm`], KVM's semantics:
/// attributes anywhere); for a guest, only memory inside its memslots
/// ([`Tracker::guest_scope`]: to private reaching outside them is refused, to shared leaves the
/// outside alone). This bounds the tracking a guest can cause by its memslots.
pub fn guest_scope<A: cvmem::AttrBackend>(
    tracker: &Tracker<A>,
    req: &ConversionRequest,
) -> Result<GuestScope, RequestError> {
    if req.source == RequestSource::Vmm {
        return Ok(GuestScope::whole(req.range));
    }
    tracker
        .guest_scope(req.range, req.to)
        .map_err(RequestError::OutsideMemslots)
}

impl ConversionRequest {
    /// Decodes KVM_HC_MAP_GPA_RANGE's three arguments (`gpa`, `npages`, `attrs`).
    pub fn from_map_gpa_range(
        source: RequestSource,
        gpa: u64,
        npages: u64,
        attrs: u64,
    ) -> Result<Self, RequestError> {
        let m = MapGpaRange::decode(gpa, npages, attrs).map_err(RequestError::MapGpaRange)?;
        Ok(ConversionRequest {
            range: m.range(),
            to: Kind::from_private(m.private),
            hint: m.hint,
            source,
        })
    }

    /// Decodes `KVM_EXIT_HYPERCALL` (`VcpuExit::Hypercall`): `nr` must be 12, `args[0..3]` are
    /// gpa, npages, attributes.
    pub fn from_hypercall(nr: u64, args: &[u64; 6]) -> Result<Self, RequestError> {
        if nr != KVM_HC_MAP_GPA_RANGE {
            return Err(RequestError::UnknownHypercall(nr));
        }
        Self::from_map_gpa_range(RequestSource::Hypercall, args[0], args[1], args[2])
    }

    /// Decodes the port-I/O transport: an `out %eax` of 4 bytes to
    /// [`PORT_MAP_GPA`] with RAX = 12, RBX gpa, RCX npages,
    /// RDX attributes.
    pub fn from_port_io(
        port: u16,
        data: &[u8],
        regs: &TransportRegs,
    ) -> Result<Self, RequestError> {
        if port != PORT_MAP_GPA {
            return Err(RequestError::WrongPort(port));
        }
        let mut bytes = [0u8; 8];
        let len = data.len().min(8);
        bytes[..len].copy_from_slice(&data[..len]);
        let value = u64::from_le_bytes(bytes);
        if data.len() != 4 || value != regs.rax & 0xffff_ffff {
            return Err(RequestError::BadPortData {
                len: data.len(),
                value,
                eax: regs.rax & 0xffff_ffff,
            });
        }
        if regs.rax != KVM_HC_MAP_GPA_RANGE {
            return Err(RequestError::UnknownHypercall(regs.rax));
        }
        Self::from_map_gpa_range(RequestSource::PortIo, regs.rbx, regs.rcx, regs.rdx)
    }

    /// Decodes `KVM_EXIT_MEMORY_FAULT` (`VcpuExit::MemoryFault`): converts `[gpa, gpa + size)`
    /// to private when the access was private (flag bit 3), else to shared. Checked as a
    /// `map-gpa` of `size / 4K` pages with a 4K hint.
    pub fn from_memory_fault(flags: u64, gpa: u64, size: u64) -> Result<Self, RequestError> {
        if flags & !KVM_MEMORY_EXIT_FLAG_PRIVATE != 0 {
            return Err(RequestError::FaultFlags(flags));
        }
        if size == 0 || size % PAGE_SIZE != 0 {
            return Err(RequestError::FaultSize(size));
        }
        let attrs = if flags & KVM_MEMORY_EXIT_FLAG_PRIVATE != 0 {
            cvmem::hypercall::KVM_MAP_GPA_RANGE_ENCRYPTED
        } else {
            0
        };
        Self::from_map_gpa_range(RequestSource::MemoryFault, gpa, size / PAGE_SIZE, attrs)
    }

    /// The same request from the fault path's [`cvmem::MemoryFault`] answer.
    pub fn from_fault(fault: &cvmem::MemoryFault) -> Result<Self, RequestError> {
        let flags = if fault.private {
            KVM_MEMORY_EXIT_FLAG_PRIVATE
        } else {
            0
        };
        Self::from_memory_fault(flags, fault.gpa.0, fault.size)
    }

    /// First byte of the range.
    pub const fn gpa(&self) -> u64 {
        self.range.start.gpa().0
    }

    /// Number of 4K pages.
    pub const fn npages(&self) -> u64 {
        self.range.len()
    }

    /// The memory attributes the range must get.
    pub const fn attributes(&self) -> u64 {
        match self.to {
            Kind::Private => cvmem::KVM_MEMORY_ATTRIBUTE_PRIVATE,
            Kind::Shared => 0,
        }
    }
}

#[cfg(test)]
mod tests;

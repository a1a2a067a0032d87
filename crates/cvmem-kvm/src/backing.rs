//! Host memory behind a memslot: guest_memfd (in place or with separate shared memory) or
//! anonymous memory, and how each discards the old contents of a converted range.

use std::fs::File;

use cvmem::{Access, GfnRange, SlotFlags, PAGE_SIZE};
use kvm_bindings::{
    kvm_userspace_memory_region2, KVM_MEM_GUEST_MEMFD, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use crate::error::{Error, Result};
use crate::sys::{self, Mapping};

/// `GUEST_MEMFD_FLAG_MMAP`: the guest_memfd can be mmap'd by the host (Linux 6.18).
pub const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
/// `GUEST_MEMFD_FLAG_INIT_SHARED`: the guest_memfd's pages start shared, so the host may touch
/// them through the mapping (Linux 6.18).
pub const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;
/// `KVM_CAP_GUEST_MEMFD_FLAGS`: the guest_memfd flags this VM supports.
pub const KVM_CAP_GUEST_MEMFD_FLAGS: u32 = 244;

/// How a memslot's memory is backed on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backing {
    /// One guest_memfd, mmap'd (`MMAP | INIT_SHARED`) and given to KVM as the slot's
    /// `userspace_addr` too: shared and private are the same pages. Private→shared punches a
    /// hole (the page reads zero for both sides); shared→private keeps the bytes.
    GuestMemfdInPlace,
    /// A guest_memfd for private memory and separate anonymous memory for shared memory (the
    /// layout of VMMs on Linux 6.8-6.17). Private→shared punches the guest_memfd;
    /// shared→private drops the shared memory (`MADV_DONTNEED`).
    GuestMemfdSeparate,
    /// Anonymous memory only (no guest_memfd: the fallback where KVM lacks it). Shared→private
    /// drops the memory; KVM cannot back private accesses to such a slot.
    Anonymous,
}

impl Backing {
    /// A short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Backing::GuestMemfdInPlace => "guest_memfd (in place)",
            Backing::GuestMemfdSeparate => "guest_memfd + anonymous shared",
            Backing::Anonymous => "anonymous",
        }
    }

    /// Whether the slot has KVM_MEM_GUEST_MEMFD.
    pub const fn has_guest_memfd(self) -> bool {
        !matches!(self, Backing::Anonymous)
    }

    /// What the guest reads from a page after a conversion, on a host where
    /// KVM_SET_MEMORY_ATTRIBUTES is `attributes_in_kvm`: whether a page that becomes private
    /// keeps its bytes, and whether one that becomes shared keeps them (else it reads zero).
    ///
    /// Without memory attributes in KVM every guest access is a shared one, so the guest always
    /// sees the slot's `userspace_addr` memory.
    pub const fn keeps_contents(self, attributes_in_kvm: bool) -> (bool, bool) {
        match (self, attributes_in_kvm) {
            (Backing::GuestMemfdInPlace, _) => (true, false),
            // Private reads come from the punched guest_memfd, shared ones from dropped memory.
            (Backing::GuestMemfdSeparate, true) => (false, false),
            (Backing::GuestMemfdSeparate, false) | (Backing::Anonymous, _) => (false, true),
        }
    }
}

/// The host memory of one memslot. Deleting the memslot from KVM must happen before this is
/// dropped (the owner, [`crate::CvmMemory`], does so).
#[derive(Debug)]
pub(crate) struct SlotMemory {
    pub(crate) backing: Backing,
    /// Where the slot is now (a move changes it; the memory stays).
    pub(crate) gpa: u64,
    /// `dirty_log` and `readonly` as KVM has them (`guest_memfd` follows the backing).
    pub(crate) flags: SlotFlags,
    /// The memory KVM uses for shared accesses (`userspace_addr`).
    pub(crate) shared: Mapping,
    /// The guest_memfd, if any.
    pub(crate) gmem: Option<File>,
}

impl SlotMemory {
    /// Allocates the memory of a slot of `size` bytes at `gpa`, at a host address congruent to
    /// `congruent_to` modulo `align` (pass `gpa` so that KVM may map up to `align` bytes at
    /// once).
    pub(crate) fn new(
        vm: Option<&VmFd>,
        backing: Backing,
        gpa: u64,
        size: u64,
        congruent_to: u64,
        align: u64,
    ) -> Result<Self> {
        let len = usize::try_from(size)
            .map_err(|_| Error::os("mmap", std::io::Error::from_raw_os_error(libc::E2BIG)))?;
        let align = usize::try_from(align).unwrap_or(1 << 30);
        let gmem = match (backing, vm) {
            (Backing::Anonymous, _) => None,
            (_, None) => return Err(Error::MissingCapability("a VM for guest_memfd")),
            (Backing::GuestMemfdInPlace, Some(vm)) => Some(
                sys::create_guest_memfd(
                    vm,
                    size,
                    GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
                )
                .map_err(|e| Error::kvm("KVM_CREATE_GUEST_MEMFD (mmap, init-shared)", e))?,
            ),
            (Backing::GuestMemfdSeparate, Some(vm)) => Some(
                sys::create_guest_memfd(vm, size, 0)
                    .map_err(|e| Error::kvm("KVM_CREATE_GUEST_MEMFD", e))?,
            ),
        };
        let fd = match backing {
            Backing::GuestMemfdInPlace => gmem.as_ref(),
            _ => None,
        };
        let shared = Mapping::new(len, fd, congruent_to, align)
            .map_err(|e| Error::os("mmap guest memory", e))?;
        Ok(SlotMemory {
            backing,
            gpa,
            flags: SlotFlags {
                guest_memfd: backing.has_guest_memfd(),
                ..SlotFlags::default()
            },
            shared,
            gmem,
        })
    }

    /// The `KVM_SET_USER_MEMORY_REGION2` payload of this memory as slot `slot`.
    pub(crate) fn region(&self, slot: u32) -> kvm_userspace_memory_region2 {
        let flag = |on: bool, bit: u32| if on { bit } else { 0 };
        kvm_userspace_memory_region2 {
            slot,
            flags: flag(self.gmem.is_some(), KVM_MEM_GUEST_MEMFD)
                | flag(self.flags.dirty_log, KVM_MEM_LOG_DIRTY_PAGES)
                | flag(self.flags.readonly, KVM_MEM_READONLY),
            guest_phys_addr: self.gpa,
            memory_size: self.shared.len() as u64,
            userspace_addr: self.shared.addr(),
            guest_memfd_offset: 0,
            guest_memfd: self.gmem.as_ref().map_or(0, |f| {
                use std::os::fd::AsRawFd;
                f.as_raw_fd() as u32
            }),
            ..Default::default()
        }
    }

    /// Size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.shared.len() as u64
    }

    /// Byte offset and length of `range` (which the caller has clipped to this slot).
    fn span(&self, range: GfnRange) -> (u64, u64) {
        (range.start * PAGE_SIZE - self.gpa, range.len() * PAGE_SIZE)
    }

    /// Discards the old contents of `range` (inside this slot), which just became `to`:
    /// punches the guest_memfd when it became shared, drops separate shared memory when it
    /// became private. Returns whether anything was discarded.
    pub(crate) fn discard(&self, range: GfnRange, to: Access) -> Result<bool> {
        let (off, len) = self.span(range);
        match (to, self.backing) {
            (Access::Shared, Backing::GuestMemfdInPlace | Backing::GuestMemfdSeparate) => {
                let gmem = self
                    .gmem
                    .as_ref()
                    .ok_or(Error::MissingCapability("guest_memfd"))?;
                fallocate(gmem, FallocateMode::PunchHole, true, off, len).map_err(|e| {
                    Error::os(
                        "fallocate(PUNCH_HOLE) on guest_memfd",
                        std::io::Error::from_raw_os_error(e.errno()),
                    )
                })?;
                Ok(true)
            }
            (Access::Private, Backing::GuestMemfdSeparate | Backing::Anonymous) => {
                self.shared
                    .discard(off as usize, len as usize)
                    .map_err(|e| Error::os("madvise(MADV_DONTNEED) on shared memory", e))?;
                Ok(true)
            }
            (Access::Private, Backing::GuestMemfdInPlace)
            | (Access::Shared, Backing::Anonymous) => Ok(false),
        }
    }

    /// The host mapping through which shared memory is read and written.
    pub(crate) fn shared(&self) -> &Mapping {
        &self.shared
    }
}

//! Host memory behind a memslot: guest_memfd (in place or with separate shared memory) or
//! anonymous memory, and how each discards the old contents of a converted range.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use cvmem::{GfnRange, Kind, Level, SlotFlags, PAGE_SIZE};
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

/// A guest_memfd given to a memslot: the file and the offset of the slot's first byte in it.
#[derive(Debug)]
pub struct GuestMemfd {
    /// The guest_memfd (from `KVM_CREATE_GUEST_MEMFD`, e.g. [`create_guest_memfd`]).
    pub file: File,
    /// Offset of the slot's first byte in the file (page aligned).
    pub offset: u64,
    /// Whether the slot's host mapping is an mmap of this same file (`MMAP | INIT_SHARED`,
    /// Linux 6.18): shared and private are then the same pages ([`Backing::GuestMemfdInPlace`]).
    pub in_place: bool,
}

impl GuestMemfd {
    /// A new guest_memfd of `size` bytes on `vm` for one slot (offset 0), its shared memory
    /// kept separately (`in_place: false`: the layout every guest_memfd-capable KVM supports).
    pub fn create(vm: &VmFd, size: u64) -> Result<Self> {
        Ok(GuestMemfd {
            file: create_guest_memfd(vm, size, 0)?,
            offset: 0,
            in_place: false,
        })
    }
}

/// Separate shared memory backed by a file (memfd, hugetlbfs...): discarding it must punch the
/// file, since `MADV_DONTNEED` on a shared file mapping keeps the file's pages.
#[derive(Clone, Debug)]
struct SharedFile {
    file: Arc<File>,
    offset: u64,
}

/// The host memory behind one memslot: the mapping KVM uses for shared accesses
/// (`userspace_addr`) and, for a confidential slot, its guest_memfd.
///
/// Either allocated by cvmem-kvm ([`HostMemory::allocate`], unmapped when dropped) or the
/// VMM's own memory, attached ([`HostMemory::from_raw_parts`], or a vm-memory region with the
/// `vm-memory` feature) and left mapped when dropped. Give it to
/// [`CvmMemory::attach_slot`](crate::CvmMemory::attach_slot).
#[derive(Debug)]
pub struct HostMemory {
    pub(crate) backing: Backing,
    /// The guest address the memory was placed at by its owner (a vm-memory region's), if any.
    guest_addr: Option<u64>,
    /// The memory KVM uses for shared accesses (`userspace_addr`).
    pub(crate) shared: Mapping,
    shared_file: Option<SharedFile>,
    /// The guest_memfd, if any, and the slot's offset in it.
    pub(crate) gmem: Option<(File, u64)>,
}

/// `KVM_CREATE_GUEST_MEMFD` of `size` bytes with `flags` (e.g. [`GUEST_MEMFD_FLAG_MMAP`]).
pub fn create_guest_memfd(vm: &VmFd, size: u64, flags: u64) -> Result<File> {
    sys::create_guest_memfd(vm, size, flags).map_err(|e| Error::kvm("KVM_CREATE_GUEST_MEMFD", e))
}

impl HostMemory {
    /// Allocates `size` bytes of `backing` memory (creating the guest_memfd on `vm`) at a host
    /// address congruent to `congruent_to` modulo `max_level`'s size: pass the slot's gpa so
    /// that KVM may map it with pages up to `max_level`. Unmapped when dropped.
    pub fn allocate(
        vm: Option<&VmFd>,
        backing: Backing,
        size: u64,
        congruent_to: u64,
        max_level: Level,
    ) -> Result<Self> {
        let len = usize::try_from(size)
            .map_err(|_| Error::os("mmap", std::io::Error::from_raw_os_error(libc::E2BIG)))?;
        let align = usize::try_from(max_level.size()).unwrap_or(1 << 30);
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
        Ok(HostMemory {
            backing,
            guest_addr: None,
            shared,
            shared_file: None,
            gmem: gmem.map(|f| (f, 0)),
        })
    }

    /// The VMM's own memory: `size` bytes mapped read/write at host address `host_addr`
    /// (anonymous private memory, or a shared file mapping described by `shared_file`), and
    /// the slot's guest_memfd if it has one. cvmem-kvm reads and writes it only through
    /// volatile accesses, discards converted ranges of it (`MADV_DONTNEED`, or punching
    /// `shared_file`), and never unmaps it.
    ///
    /// # Safety
    /// `[host_addr, host_addr + size)` must stay mapped read/write for as long as this value
    /// (and the memslot made from it) exists, and the caller must accept that converted ranges
    /// are discarded.
    pub unsafe fn from_raw_parts(
        host_addr: u64,
        size: u64,
        shared_file: Option<(Arc<File>, u64)>,
        guest_memfd: Option<GuestMemfd>,
    ) -> Result<Self> {
        let bad = Error::Attach;
        if size == 0 || size % PAGE_SIZE != 0 || host_addr % PAGE_SIZE != 0 {
            return Err(bad("attached memory must be page aligned and non-empty"));
        }
        let len = usize::try_from(size).map_err(|_| bad("attached memory too large"))?;
        let backing = match &guest_memfd {
            None => Backing::Anonymous,
            Some(g) if g.in_place => Backing::GuestMemfdInPlace,
            Some(_) => Backing::GuestMemfdSeparate,
        };
        if guest_memfd
            .as_ref()
            .is_some_and(|g| g.offset % PAGE_SIZE != 0)
        {
            return Err(bad("the guest_memfd offset must be page aligned"));
        }
        Ok(HostMemory {
            backing,
            guest_addr: None,
            // SAFETY: forwarded to our caller (see `# Safety`).
            shared: unsafe { Mapping::borrowed(host_addr as usize, len) },
            shared_file: shared_file.map(|(file, offset)| SharedFile { file, offset }),
            gmem: guest_memfd.map(|g| (g.file, g.offset)),
        })
    }

    /// The host memory's kind.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The guest address the memory's owner placed it at (a vm-memory region's), if known.
    pub fn guest_addr(&self) -> Option<u64> {
        self.guest_addr
    }

    /// For [`Backing::GuestMemfdInPlace`]: that the shared mapping really is an mmap of the
    /// guest_memfd at the slot's offset (`/proc/self/maps` against the file's inode), so that
    /// a conversion to private really takes the bytes from the host's view. Other backings:
    /// nothing to check.
    pub(crate) fn check_in_place(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let (Backing::GuestMemfdInPlace, Some((file, offset))) = (self.backing, &self.gmem) else {
            return Ok(());
        };
        let inode = file
            .metadata()
            .map_err(|e| Error::os("fstat guest_memfd", e))?
            .ino();
        match sys::mapped_file_at(self.host_addr()) {
            Some((ino, off)) if ino == inode && off == *offset => Ok(()),
            _ => Err(Error::Attach(
                "in_place: the host memory is not an mmap of the guest_memfd at its offset",
            )),
        }
    }

    /// Host address of the first byte of the shared mapping (`userspace_addr`).
    pub fn host_addr(&self) -> u64 {
        self.shared.addr()
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.shared.len() as u64
    }

    /// The `KVM_SET_USER_MEMORY_REGION2` payload of this memory as slot `slot` at `gpa` with
    /// `flags` (`guest_memfd` follows the memory; `dirty_log`, `readonly` are taken).
    pub fn user_memory_region(
        &self,
        slot: u32,
        gpa: u64,
        flags: SlotFlags,
    ) -> kvm_userspace_memory_region2 {
        let flag = |on: bool, bit: u32| if on { bit } else { 0 };
        kvm_userspace_memory_region2 {
            slot,
            flags: flag(self.gmem.is_some(), KVM_MEM_GUEST_MEMFD)
                | flag(flags.dirty_log, KVM_MEM_LOG_DIRTY_PAGES)
                | flag(flags.readonly, KVM_MEM_READONLY),
            guest_phys_addr: gpa,
            memory_size: self.size(),
            userspace_addr: self.shared.addr(),
            guest_memfd_offset: self.gmem.as_ref().map_or(0, |g| g.1),
            guest_memfd: self.gmem.as_ref().map_or(0, |(f, _)| f.as_raw_fd() as u32),
            ..Default::default()
        }
    }

    /// Copies `bytes` to offset `off` of the shared mapping; false outside it.
    pub fn write_bytes(&self, off: u64, bytes: &[u8]) -> bool {
        usize::try_from(off).is_ok_and(|off| self.shared.write_bytes(off, bytes))
    }

    /// Discards the old contents of `[off, off + len)`, which just became `to`: punches the
    /// guest_memfd when it became shared, drops separate shared memory when it became private.
    /// Returns whether anything was discarded.
    pub(crate) fn discard(&self, off: u64, len: u64, to: Kind) -> Result<bool> {
        match (to, self.backing) {
            (Kind::Shared, Backing::GuestMemfdInPlace | Backing::GuestMemfdSeparate) => {
                let (gmem, base) = self
                    .gmem
                    .as_ref()
                    .ok_or(Error::MissingCapability("guest_memfd"))?;
                punch(
                    gmem,
                    base + off,
                    len,
                    "fallocate(PUNCH_HOLE) on guest_memfd",
                )?;
                Ok(true)
            }
            (Kind::Private, Backing::GuestMemfdSeparate | Backing::Anonymous) => {
                match &self.shared_file {
                    Some(f) => punch(
                        &f.file,
                        f.offset + off,
                        len,
                        "fallocate(PUNCH_HOLE) on shared memory",
                    )?,
                    None => self
                        .shared
                        .discard(off as usize, len as usize)
                        .map_err(|e| Error::os("madvise(MADV_DONTNEED) on shared memory", e))?,
                }
                Ok(true)
            }
            (Kind::Private, Backing::GuestMemfdInPlace) | (Kind::Shared, Backing::Anonymous) => {
                Ok(false)
            }
        }
    }
}

fn punch(file: &File, off: u64, len: u64, what: &'static str) -> Result<()> {
    fallocate(file, FallocateMode::PunchHole, true, off, len)
        .map_err(|e| Error::os(what, std::io::Error::from_raw_os_error(e.errno())))
}

#[cfg(feature = "vm-memory")]
impl HostMemory {
    /// A vm-memory region the VMM already has (with any dirty bitmap `B`: `()`,
    /// `AtomicBitmap`...), with the slot's guest_memfd if it has one. The region stays alive
    /// (and mapped) as long as this value; a file-backed region (memfd, hugetlbfs) is discarded
    /// by punching its file. Its guest address is checked against the slot's by
    /// [`crate::CvmMemory::attach_slot`].
    pub fn from_region<B>(
        region: Arc<vm_memory::GuestRegionMmap<B>>,
        guest_memfd: Option<GuestMemfd>,
    ) -> Result<Self>
    where
        B: vm_memory::bitmap::Bitmap + Send + Sync + 'static,
    {
        let keep: Arc<dyn Send + Sync> = region.clone();
        Self::from_region_ref(&region, keep, guest_memfd)
    }

    /// The region of `memory` that starts at `start` (see [`HostMemory::from_region`]); the
    /// whole `memory` (a cheap clone of its region list) keeps it mapped.
    pub fn from_guest_memory<B>(
        memory: &vm_memory::GuestMemoryMmap<B>,
        start: vm_memory::GuestAddress,
        guest_memfd: Option<GuestMemfd>,
    ) -> Result<Self>
    where
        B: vm_memory::bitmap::Bitmap + Send + Sync + 'static,
    {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let region = memory
            .find_region(start)
            .filter(|r| r.start_addr() == start)
            .ok_or(Error::Attach("no region of the guest memory starts there"))?;
        let keep: Arc<dyn Send + Sync> = Arc::new(memory.clone());
        Self::from_region_ref(region, keep, guest_memfd)
    }

    fn from_region_ref<B: vm_memory::bitmap::Bitmap>(
        region: &vm_memory::GuestRegionMmap<B>,
        keep: Arc<dyn Send + Sync>,
        guest_memfd: Option<GuestMemfd>,
    ) -> Result<Self> {
        use vm_memory::GuestMemoryRegion;
        let shared_file = region
            .file_offset()
            .map(|f| (Arc::clone(f.arc()), f.start()));
        let (addr, len) = (region.as_ptr() as u64, region.len());
        // SAFETY: the mapping belongs to `region`, which `keep` keeps alive with this value.
        let mut memory = unsafe { Self::from_raw_parts(addr, len, shared_file, guest_memfd)? };
        memory.guest_addr = Some(region.start_addr().0);
        memory.shared.keep_alive(keep);
        Ok(memory)
    }
}

/// The host memory of one memslot and where KVM has the slot now. Deleting the memslot from
/// KVM must happen before this is dropped (the owner, [`crate::CvmMemory`], does so).
#[derive(Debug)]
pub(crate) struct SlotMemory {
    pub(crate) host: HostMemory,
    /// Where the slot is now (a move changes it; the memory stays).
    pub(crate) gpa: u64,
    /// `dirty_log` and `readonly` as KVM has them (`guest_memfd` follows the backing).
    pub(crate) flags: SlotFlags,
    /// The VMM created the slot in KVM itself ([`crate::CvmMemory::adopt_slot`]): cvmem never
    /// issues KVM_SET_USER_MEMORY_REGION2 for it.
    pub(crate) adopted: bool,
}

impl SlotMemory {
    /// `host` as a slot at `gpa` with `flags`.
    pub(crate) fn new(host: HostMemory, gpa: u64, flags: SlotFlags) -> Self {
        SlotMemory {
            host,
            gpa,
            flags,
            adopted: false,
        }
    }

    /// The `KVM_SET_USER_MEMORY_REGION2` payload of this memory as slot `slot`.
    pub(crate) fn region(&self, slot: u32) -> kvm_userspace_memory_region2 {
        self.host.user_memory_region(slot, self.gpa, self.flags)
    }

    /// Size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.host.size()
    }

    /// Discards the old contents of `range` (inside this slot), which just became `to`.
    pub(crate) fn discard(&self, range: GfnRange, to: Kind) -> Result<bool> {
        let off = range.start.gpa().0 - self.gpa;
        self.host.discard(off, range.bytes(), to)
    }

    /// The host mapping through which shared memory is read and written.
    pub(crate) fn shared(&self) -> &Mapping {
        &self.host.shared
    }
}

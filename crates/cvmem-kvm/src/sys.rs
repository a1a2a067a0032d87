//! The crate's only unsafe code: mappings of guest memory, guest_memfd creation, the memslot
//! ioctl and `madvise`. Each block states why it is sound.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use kvm_bindings::{kvm_create_guest_memfd, kvm_userspace_memory_region2};
use kvm_ioctls::VmFd;

/// A private mapping of host memory that backs guest memory, unmapped on drop.
///
/// Stores the address as an integer: the bytes are shared with the guest (and KVM), so the host
/// only ever touches them with volatile accesses through the methods below.
pub(crate) struct Mapping {
    addr: usize,
    len: usize,
    /// Whether this value unmaps the memory when dropped (it mapped it).
    owned: bool,
    /// What keeps attached memory mapped (a vm-memory region), dropped with this value.
    _keep: Option<Arc<dyn Send + Sync>>,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .field("owned", &self.owned)
            .finish_non_exhaustive()
    }
}

impl Mapping {
    /// Maps `len` bytes — anonymous private memory when `fd` is `None`, else a shared mapping of
    /// `fd` from offset 0 — at a host address congruent to `to` modulo `align` (a power of two).
    /// With `to` = the slot's gpa, KVM may map the memory with pages up to `align` (its `uaddr`
    /// and `gpa` must agree modulo the page size).
    pub(crate) fn new(len: usize, fd: Option<&File>, to: u64, align: usize) -> io::Result<Self> {
        if len == 0 || !align.is_power_of_two() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let reserve = len
            .checked_add(align)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh PROT_NONE reservation at an address of the kernel's choice; it aliases
        // nothing. The result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = base as usize;
        let addr = base + ((to as usize).wrapping_sub(base) & (align - 1));
        let (flags, raw_fd) = match fd {
            Some(f) => (libc::MAP_SHARED | libc::MAP_FIXED, f.as_raw_fd()),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
            ),
        };
        // SAFETY: [addr, addr + len) lies inside the reservation made above, which this function
        // owns, so MAP_FIXED replaces only our own PROT_NONE pages.
        let mapped = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw_fd,
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            // SAFETY: the whole reservation is ours and nothing refers to it.
            unsafe { libc::munmap(base as *mut libc::c_void, reserve) };
            return Err(err);
        }
        // Give back the unused head and tail of the reservation.
        let (end, reserve_end) = (addr + len, base + reserve);
        for (start, stop) in [(base, addr), (end, reserve_end)] {
            if stop > start {
                // SAFETY: part of our reservation outside the new mapping; nothing refers to it.
                unsafe { libc::munmap(start as *mut libc::c_void, stop - start) };
            }
        }
        Ok(Mapping {
            addr,
            len,
            owned: true,
            _keep: None,
        })
    }

    /// Memory someone else mapped; never unmapped by this value.
    ///
    /// # Safety
    /// `[addr, addr + len)` is mapped read/write for as long as this value exists.
    pub(crate) unsafe fn borrowed(addr: usize, len: usize) -> Self {
        Mapping {
            addr,
            len,
            owned: false,
            _keep: None,
        }
    }

    /// Keeps `owner` (which keeps the memory mapped) alive as long as this value.
    #[cfg_attr(not(feature = "vm-memory"), allow(dead_code))]
    pub(crate) fn keep_alive(&mut self, owner: Arc<dyn Send + Sync>) {
        self._keep = Some(owner);
    }

    /// Host virtual address of the first byte.
    pub(crate) fn addr(&self) -> u64 {
        self.addr as u64
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn in_bounds(&self, off: usize, len: usize) -> bool {
        off.checked_add(len).is_some_and(|end| end <= self.len)
    }

    /// Reads the aligned quadword at `off`, or `None` outside the mapping.
    pub(crate) fn read_u64(&self, off: usize) -> Option<u64> {
        if off % 8 != 0 || !self.in_bounds(off, 8) {
            return None;
        }
        // SAFETY: in bounds and aligned inside a live read/write mapping owned by `self`; the
        // access is volatile because the guest may write the same bytes concurrently.
        Some(unsafe { std::ptr::read_volatile((self.addr + off) as *const u64) })
    }

    /// Writes the aligned quadword at `off`; false outside the mapping.
    pub(crate) fn write_u64(&self, off: usize, value: u64) -> bool {
        if off % 8 != 0 || !self.in_bounds(off, 8) {
            return false;
        }
        // SAFETY: as in `read_u64`; the memory is guest memory that no Rust reference covers.
        unsafe { std::ptr::write_volatile((self.addr + off) as *mut u64, value) };
        true
    }

    /// Copies `bytes` to `off`; false outside the mapping. Aligned quadwords are written as
    /// such (one volatile store per 8 bytes), the unaligned head and tail byte by byte.
    pub(crate) fn write_bytes(&self, off: usize, bytes: &[u8]) -> bool {
        if !self.in_bounds(off, bytes.len()) {
            return false;
        }
        let head = ((8 - (self.addr + off) % 8) % 8).min(bytes.len());
        let (first, rest) = bytes.split_at(head);
        let words = rest.chunks_exact(8);
        let tail = words.remainder();
        let byte = |at: usize, b: u8| {
            // SAFETY: `at` is in bounds of a live mapping owned by `self` (checked above).
            unsafe { std::ptr::write_volatile((self.addr + at) as *mut u8, b) };
        };
        for (i, &b) in first.iter().enumerate() {
            byte(off + i, b);
        }
        let mut at = off + head;
        for w in words {
            let value = u64::from_ne_bytes(w.try_into().expect("chunks of 8"));
            // SAFETY: in bounds (checked above) and 8-aligned (`head` aligned it); the memory
            // is guest memory that no Rust reference covers.
            unsafe { std::ptr::write_volatile((self.addr + at) as *mut u64, value) };
            at += 8;
        }
        for (i, &b) in tail.iter().enumerate() {
            byte(at + i, b);
        }
        true
    }

    /// `madvise(MADV_DONTNEED)` on `[off, off + len)`: anonymous private memory reads as zero
    /// afterwards.
    pub(crate) fn discard(&self, off: usize, len: usize) -> io::Result<()> {
        if !self.in_bounds(off, len) || off % 4096 != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: the range lies inside our own mapping; dropping its pages affects only guest
        // memory, which the caller has decided to discard.
        let rc = unsafe {
            libc::madvise(
                (self.addr + off) as *mut libc::c_void,
                len,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // SAFETY: the mapping was created by `Mapping::new` and is unmapped exactly once. Its
        // owner removes the memslot that points at it before dropping it.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// `KVM_CREATE_GUEST_MEMFD`, returned as an owned file.
pub(crate) fn create_guest_memfd(
    vm: &VmFd,
    size: u64,
    flags: u64,
) -> Result<File, kvm_ioctls::Error> {
    let fd = vm.create_guest_memfd(kvm_create_guest_memfd {
        size,
        flags,
        reserved: [0; 6],
    })?;
    // SAFETY: KVM just returned this new descriptor and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `struct kvm_memory_attributes2` of the in-place conversion series (`offset` is the union
/// with `address`; `error_offset` is written by KVM on `EAGAIN`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KvmMemoryAttributes2 {
    pub(crate) offset: u64,
    pub(crate) size: u64,
    pub(crate) attributes: u64,
    pub(crate) flags: u64,
    pub(crate) error_offset: u64,
    pub(crate) reserved: [u64; 11],
}

/// `KVM_SET_MEMORY_ATTRIBUTES2` (request number `request`) on a guest_memfd.
pub(crate) fn set_memory_attributes2(
    file: &File,
    request: u64,
    arg: &mut KvmMemoryAttributes2,
) -> io::Result<()> {
    // SAFETY: `arg` is a live, exclusively borrowed `repr(C)` value of the size the request
    // encodes (128 bytes, checked by a test), which KVM reads and may write within; the fd is
    // open for the call. A kernel without the ioctl fails it (ENOTTY) without touching `arg`.
    let ret = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            request as libc::Ioctl,
            arg as *mut KvmMemoryAttributes2,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `KVM_CHECK_EXTENSION` on the VM for a capability number kvm-ioctls does not name.
pub(crate) fn check_extension_raw(vm: &VmFd, cap: u32) -> i32 {
    vm.check_extension_raw(libc::c_ulong::from(cap))
}

/// `KVM_SET_USER_MEMORY_REGION2`.
///
/// The caller keeps the memory at `userspace_addr` mapped for as long as the slot exists: every
/// slot is created from a [`Mapping`] owned by the same `SlotMemory`, which deletes the slot
/// before the mapping is dropped.
pub(crate) fn set_user_memory_region2(
    vm: &VmFd,
    region: kvm_userspace_memory_region2,
) -> Result<(), kvm_ioctls::Error> {
    // SAFETY: see above: the host memory outlives the slot; KVM validates everything else.
    unsafe { vm.set_user_memory_region2(region) }
}

/// The inode and file offset of the mapping holding host address `addr` in this process
/// (`/proc/self/maps`), if that mapping is of a file.
pub(crate) fn mapped_file_at(addr: u64) -> Option<(u64, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let (start, end) = (
            u64::from_str_radix(start, 16).ok()?,
            u64::from_str_radix(end, 16).ok()?,
        );
        if !(start..end).contains(&addr) {
            return None;
        }
        let _perms = fields.next()?;
        let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
        let _dev = fields.next()?;
        let inode: u64 = fields.next()?.parse().ok()?;
        (inode != 0).then_some((inode, offset + (addr - start)))
    })
}

//! The rig's own system calls, which a VMM does not need: memslots outside any `CvmMemory` (the
//! boot slot, the kernel oracle's slots), `KVM_PRE_FAULT_MEMORY`, the binary statistics, and the
//! host page size of the kernel oracle's slot memory (THP advice, hugetlbfs 1G pages).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

use kvm_bindings::kvm_userspace_memory_region2;
use kvm_ioctls::VmFd;

/// `KVM_SET_USER_MEMORY_REGION2`.
///
/// The caller keeps the memory at `userspace_addr` mapped for as long as the slot exists: every
/// slot is made from a `HostMemory` owned by the same object, which deletes the slot before
/// the memory is dropped.
pub(crate) fn set_user_memory_region2(
    vm: &VmFd,
    region: kvm_userspace_memory_region2,
) -> Result<(), kvm_ioctls::Error> {
    // SAFETY: see above: the host memory outlives the slot; KVM validates everything else.
    unsafe { vm.set_user_memory_region2(region) }
}

/// `KVM_PRE_FAULT_MEMORY` (`_IOWR(KVMIO, 0xd5, struct kvm_pre_fault_memory)`).
const KVM_PRE_FAULT_MEMORY: libc::c_ulong = 0xc040_aed5;
/// `KVM_GET_STATS_FD` (`_IO(KVMIO, 0xce)`).
const KVM_GET_STATS_FD: libc::c_ulong = 0xae_ce;

/// `KVM_PRE_FAULT_MEMORY` of `[gpa, gpa + size)` on `vcpu`: KVM maps the range as a fault of
/// the gfns' own kind would, at the level it allows. `Ok` once all of it is mapped, else the
/// errno (ENOENT outside memslots, EFAULT where KVM would exit with a memory fault).
pub(crate) fn pre_fault_memory(
    vcpu: &kvm_ioctls::VcpuFd,
    gpa: u64,
    size: u64,
) -> Result<(), io::Error> {
    let mut range = kvm_bindings::kvm_pre_fault_memory {
        gpa,
        size,
        ..Default::default()
    };
    while range.size != 0 {
        // SAFETY: the ioctl reads and updates (gpa, size) of a struct we own and that has the
        // size the request number encodes; it touches no other memory of ours.
        let r = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_PRE_FAULT_MEMORY, &mut range) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EAGAIN) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// `KVM_GET_STATS_FD` on the VM: the binary statistics, as a file to `pread`.
pub(crate) fn stats_fd(vm: &VmFd) -> Result<File, io::Error> {
    // SAFETY: an ioctl without argument; it returns a new descriptor or -1.
    let fd = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_GET_STATS_FD) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: KVM just returned this new descriptor and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `madvise(advice)` on `[addr, addr + len)` of a mapping the caller owns (the kernel oracle's
/// slot memory before it is given to KVM): `MADV_HUGEPAGE` or `MADV_NOHUGEPAGE`.
pub(crate) fn advise(addr: u64, len: u64, advice: libc::c_int) -> Result<(), io::Error> {
    // SAFETY: these advices change only whether the kernel backs the range with transparent
    // huge pages; no byte of it changes and nothing is unmapped.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, advice) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Replaces the 1 GiB at `addr` (1 GiB aligned, inside an anonymous private mapping the caller
/// owns and nothing refers to yet) with one hugetlbfs 1G page. Fails (ENOMEM) where the kernel
/// has no free 1G page reserved; the range is then anonymous memory with THP advice again (a
/// failed MAP_FIXED may already have unmapped it).
pub(crate) fn map_hugetlb_1g(addr: u64) -> Result<(), io::Error> {
    const G1: usize = 1 << 30;
    let map = |flags: libc::c_int| {
        // SAFETY: MAP_FIXED replaces only [addr, addr + 1 GiB), part of the caller's own
        // mapping, whose contents nobody has read or handed out yet; the owner unmaps it whole
        // later.
        let mapped = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                G1,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | flags,
                -1,
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    map(libc::MAP_HUGETLB | libc::MAP_HUGE_1GB).or_else(|e| {
        map(libc::MAP_NORESERVE)?;
        advise(addr, G1 as u64, libc::MADV_HUGEPAGE)?;
        Err(e)
    })
}

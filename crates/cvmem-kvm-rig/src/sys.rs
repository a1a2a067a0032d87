//! The rig's own ioctls, which a VMM does not need: memslots outside any `CvmMemory` (the boot
//! slot, the kernel oracle's slots), `KVM_PRE_FAULT_MEMORY` and the binary statistics.

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

//! What the host's KVM offers, and the one decision of how a run uses it ([`HostCaps::path`]).
//!
//! Machines of this kind differ: a full KVM with guest_memfd (MMAP | INIT_SHARED) but no memory
//! attributes, a paravirtualised KVM without guest_memfd that advertises hypercall exits it
//! never delivers, no /dev/kvm at all, or the attribute-capable Linux under QEMU
//! (`tools/realkvm`). Every run and every test takes its path from here, so the decision is
//! unit-tested on a table of capability sets instead of only on the machine CI lands on.

use std::fmt;

use kvm_ioctls::{Cap, Kvm, VmFd};

use cvmem_kvm::{
    Backing, GuestTransport, GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP,
    KVM_CAP_GUEST_MEMFD_FLAGS,
};

use cvmem_oplog::Op;

use crate::error::{Error, Result};

/// `KVM_CAP_VM_TYPES`: the VM types KVM_CREATE_VM accepts, one bit per type.
pub(crate) const KVM_CAP_VM_TYPES: u64 = 235;
/// `KVM_X86_DEFAULT_VM`.
pub(crate) const KVM_X86_DEFAULT_VM: u64 = 0;
/// `KVM_X86_SW_PROTECTED_VM`: private memory and memory attributes without hardware encryption.
pub(crate) const KVM_X86_SW_PROTECTED_VM: u64 = 1;
/// Bit of KVM_HC_MAP_GPA_RANGE (hypercall 12) in KVM_CAP_EXIT_HYPERCALL.
const MAP_GPA_RANGE_EXIT: u64 = 1 << 12;

/// What this host's KVM offers for confidential-memory work, on the VM type chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCaps {
    /// KVM_CAP_VM_TYPES (bit 1: SW_PROTECTED); 0 where KVM has no VM types.
    pub vm_types: u64,
    /// The type of the VM these capabilities are of.
    pub vm_type: u64,
    /// KVM_CAP_USER_MEMORY2.
    pub user_memory2: bool,
    /// KVM_CAP_GUEST_MEMFD.
    pub guest_memfd: bool,
    /// KVM_CAP_GUEST_MEMFD_FLAGS (MMAP = 1, INIT_SHARED = 2).
    pub guest_memfd_flags: u64,
    /// KVM_CAP_MEMORY_ATTRIBUTES (PRIVATE = 8).
    pub memory_attributes: u64,
    /// KVM_CAP_EXIT_HYPERCALL: the hypercalls that can exit to userspace (bit 12 = MAP_GPA_RANGE).
    pub exit_hypercall: u64,
    /// KVM_CAP_SYNC_REGS.
    pub sync_regs: bool,
}

/// How a run uses the host: decided by [`HostCaps::path`] from the capabilities alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPath {
    /// The guest converts with `vmmcall` at CPL 0 (KVM_EXIT_HYPERCALL); else through the port
    /// at CPL 3.
    pub hypercall: bool,
    /// The backing of slots that have guest_memfd (the best the host supports).
    pub backing: Backing,
    /// Why an op-log's `guest-memfd` slots run as plain anonymous slots on this host (the
    /// capability that is missing); `None`: they run as written.
    pub guest_memfd_slots_without: Option<&'static str>,
}

impl HostCaps {
    /// The VM type to create: SW_PROTECTED where KVM offers it (private memory, attributes and
    /// guest_memfd exist only there on Linux 6.12), else the default type.
    /// `CVMEM_KVM_VM_TYPE=default` asks for the default type anyway: a VM without private
    /// memory, whose guest_memfd (`MMAP | INIT_SHARED`, Linux 6.18+) can be a memslot's only
    /// memory.
    pub fn vm_type_of(kvm: &Kvm) -> (u64, u64) {
        let types = kvm.check_extension_raw(KVM_CAP_VM_TYPES).max(0) as u64;
        if std::env::var_os("CVMEM_KVM_VM_TYPE").is_some_and(|v| v == "default") {
            return (types, KVM_X86_DEFAULT_VM);
        }
        (types, Self::vm_type_for(types))
    }

    /// The VM type chosen from KVM_CAP_VM_TYPES.
    pub const fn vm_type_for(types: u64) -> u64 {
        if types & (1 << KVM_X86_SW_PROTECTED_VM) != 0 {
            KVM_X86_SW_PROTECTED_VM
        } else {
            KVM_X86_DEFAULT_VM
        }
    }

    /// The VM type's name for reports.
    pub const fn vm_type_name(&self) -> &'static str {
        match self.vm_type {
            KVM_X86_DEFAULT_VM => "default",
            KVM_X86_SW_PROTECTED_VM => "sw-protected",
            _ => "other",
        }
    }

    /// Whether KVM advertises that KVM_HC_MAP_GPA_RANGE reaches userspace as
    /// KVM_EXIT_HYPERCALL (a paravirtualised KVM may advertise it and never deliver it: see
    /// [`HostCaps::path`]).
    pub const fn hypercall_exits(&self) -> bool {
        self.exit_hypercall & MAP_GPA_RANGE_EXIT != 0
    }

    /// Whether KVM keeps the PRIVATE attribute (KVM_SET_MEMORY_ATTRIBUTES).
    pub const fn private_attribute(&self) -> bool {
        self.memory_attributes & cvmem::KVM_MEMORY_ATTRIBUTE_PRIVATE != 0
    }

    /// Reads the capabilities of `vm` (the VM type fields stay at the default type's).
    pub fn of(vm: &VmFd) -> Self {
        let int = |c: Cap| vm.check_extension_int(c).max(0) as u64;
        HostCaps {
            vm_types: 0,
            vm_type: KVM_X86_DEFAULT_VM,
            user_memory2: int(Cap::UserMemory2) != 0,
            guest_memfd: int(Cap::GuestMemfd) != 0,
            guest_memfd_flags: vm
                .check_extension_raw(u64::from(KVM_CAP_GUEST_MEMFD_FLAGS))
                .max(0) as u64,
            memory_attributes: int(Cap::MemoryAttributes),
            exit_hypercall: int(Cap::ExitHypercall),
            sync_regs: int(Cap::SyncRegs) != 0,
        }
    }

    /// The best guest_memfd backing the host supports: in place if guest_memfd can be mmap'd
    /// and start shared, else guest_memfd with separate shared memory, else anonymous memory.
    pub const fn best_backing(&self) -> Backing {
        let in_place = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
        if self.guest_memfd && self.guest_memfd_flags & in_place == in_place {
            Backing::GuestMemfdInPlace
        } else if self.guest_memfd {
            Backing::GuestMemfdSeparate
        } else {
            Backing::Anonymous
        }
    }

    /// How a run uses this host, or the missing capability that makes it impossible (a test
    /// then skips, naming it).
    ///
    /// - memslots need KVM_CAP_USER_MEMORY2 (the guest_memfd fields of the memslot ioctl);
    /// - the guest converts by `vmmcall` at CPL 0 only where KVM both delivers the hypercall
    ///   exit and keeps memory attributes ([`GuestTransport::for_host`], the published rule);
    ///   everywhere else through the port at CPL 3 (a nested, paravirtualised KVM also emulates
    ///   CPL 0 code at ~1 µs an instruction);
    /// - without guest_memfd an op-log's `guest-memfd` slots run as anonymous slots, on KVM
    ///   and in the core alike (the comparison stays exact, the guest_memfd paths are not run).
    pub fn path(&self) -> Result<HostPath> {
        if !self.user_memory2 {
            return Err(Error::missing("KVM_CAP_USER_MEMORY2"));
        }
        let transport = GuestTransport::for_host(self.hypercall_exits(), self.private_attribute());
        Ok(HostPath {
            hypercall: transport == GuestTransport::Hypercall,
            backing: self.best_backing(),
            guest_memfd_slots_without: (!self.guest_memfd).then_some("KVM_CAP_GUEST_MEMFD"),
        })
    }
}

/// An op-log line as a host without guest_memfd runs it (`path.guest_memfd_slots_without`):
/// a `guest-memfd` memslot without the flag; every other line as it is.
pub fn without_guest_memfd(mut op: Op) -> Op {
    if let Op::Memslot { flags, .. } = &mut op {
        flags.guest_memfd = false;
    }
    op
}

impl fmt::Display for HostCaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vm type {} (types {:#x}), user_memory2 {}, guest_memfd {} (flags {:#x}), memory_attributes {:#x}, exit_hypercall {:#x}, sync_regs {}",
            self.vm_type_name(),
            self.vm_types,
            self.user_memory2,
            self.guest_memfd,
            self.guest_memfd_flags,
            self.memory_attributes,
            self.exit_hypercall,
            self.sync_regs
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The machines this project's code runs on, as their KVMs report themselves.
    fn host(name: &str) -> HostCaps {
        let base = HostCaps {
            user_memory2: true,
            sync_regs: true,
            ..HostCaps::default()
        };
        match name {
            // A full KVM (Linux 6.18+) on a default VM: guest_memfd mmap-able and shared at
            // first, no memory attributes.
            "full" => HostCaps {
                vm_types: 0x1,
                guest_memfd: true,
                guest_memfd_flags: 0x3,
                exit_hypercall: 0x1000,
                ..base
            },
            // The paravirtualised KVM of issue 20: hypercall exits advertised, no guest_memfd.
            "paravirt" => HostCaps {
                vm_types: 0x1,
                exit_hypercall: 0x1000,
                ..base
            },
            // Linux 6.12 under QEMU with SW_PROTECTED VMs (tools/realkvm).
            "realkvm-6.12" => HostCaps {
                vm_types: 0x3,
                vm_type: KVM_X86_SW_PROTECTED_VM,
                guest_memfd: true,
                memory_attributes: 0x8,
                exit_hypercall: 0x1000,
                ..base
            },
            // Linux 7.3 under QEMU: a SW_PROTECTED VM's guest_memfd is MMAP only.
            "realkvm-7.3" => HostCaps {
                vm_types: 0x3,
                vm_type: KVM_X86_SW_PROTECTED_VM,
                guest_memfd: true,
                guest_memfd_flags: 0x1,
                memory_attributes: 0x8,
                exit_hypercall: 0x1000,
                ..base
            },
            // An old KVM: no memslot ioctl with guest_memfd fields.
            "old" => HostCaps {
                user_memory2: false,
                ..base
            },
            _ => unreachable!("no host {name}"),
        }
    }

    #[test]
    fn the_path_follows_the_capabilities() {
        use Backing::*;
        let gmem = Some("KVM_CAP_GUEST_MEMFD");
        for (name, hypercall, backing, without) in [
            ("full", false, GuestMemfdInPlace, None),
            ("paravirt", false, Anonymous, gmem),
            ("realkvm-6.12", true, GuestMemfdSeparate, None),
            ("realkvm-7.3", true, GuestMemfdSeparate, None),
        ] {
            let want = HostPath {
                hypercall,
                backing,
                guest_memfd_slots_without: without,
            };
            assert_eq!(host(name).path().unwrap(), want, "{name}: {}", host(name));
        }
        let err = host("old").path().unwrap_err();
        assert!(err.to_string().contains("KVM_CAP_USER_MEMORY2"), "{err}");
    }

    #[test]
    fn hypercall_exits_need_the_private_attribute_too() {
        let attrs_without_exits = HostCaps {
            exit_hypercall: 0,
            ..host("realkvm-6.12")
        };
        assert!(!attrs_without_exits.path().unwrap().hypercall);
        // Another hypercall's exit bit is not KVM_HC_MAP_GPA_RANGE's.
        let other_exit = HostCaps {
            exit_hypercall: 0x800,
            ..host("realkvm-6.12")
        };
        assert!(!other_exit.path().unwrap().hypercall);
    }

    #[test]
    fn the_vm_type_is_sw_protected_where_offered() {
        assert_eq!(HostCaps::vm_type_for(0), KVM_X86_DEFAULT_VM);
        assert_eq!(HostCaps::vm_type_for(0x1), KVM_X86_DEFAULT_VM);
        assert_eq!(HostCaps::vm_type_for(0x3), KVM_X86_SW_PROTECTED_VM);
        // TDX (type 3) and SNP (type 4) alone are not chosen: the rig runs no such guest.
        assert_eq!(HostCaps::vm_type_for(0x18), KVM_X86_DEFAULT_VM);
    }
}

//! Creating the VM so that the guest's conversions reach the VMM at all: the VM type
//! (`KVM_CAP_VM_TYPES`) and hypercall exits for KVM_HC_MAP_GPA_RANGE (`KVM_CAP_EXIT_HYPERCALL`).
//!
//! A default VM (`Kvm::create_vm`) has no private memory: KVM keeps no attributes for it and
//! never exits on KVM_HC_MAP_GPA_RANGE, so cvmem alone would know what the guest asked for.
//! [`ConfidentialVm::create`] picks the first confidential type KVM offers from the VMM's list
//! and enables the hypercall exit where KVM has it; an explicit
//! [`VmType::Default`] in the list is the opt-in to run without one (development hosts, the port
//! transport).

use std::fmt;

use kvm_bindings::{kvm_enable_cap, KVM_CAP_EXIT_HYPERCALL};
use kvm_ioctls::{Cap, Kvm, VmFd};

use crate::error::{Error, Result};

/// `KVM_CAP_VM_TYPES`: the VM types KVM_CREATE_VM accepts, one bit per type.
const KVM_CAP_VM_TYPES: u64 = 235;
/// KVM_HC_MAP_GPA_RANGE's bit in KVM_CAP_EXIT_HYPERCALL.
const MAP_GPA_RANGE_EXIT: u64 = 1 << cvmem::KVM_HC_MAP_GPA_RANGE;

/// An x86 VM type (`KVM_X86_*_VM`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VmType {
    /// `KVM_X86_DEFAULT_VM` (0): no private memory.
    Default,
    /// `KVM_X86_SW_PROTECTED_VM` (1): private memory and attributes without encryption (for
    /// development and tests; Linux 6.8+ with `CONFIG_KVM_SW_PROTECTED_VM`).
    SwProtected,
    /// `KVM_X86_SNP_VM` (4): AMD SEV-SNP. The VMM still does the SNP launch itself.
    SevSnp,
    /// `KVM_X86_TDX_VM` (5): Intel TDX. The VMM still does the TD initialisation itself.
    Tdx,
}

impl VmType {
    /// The number KVM_CREATE_VM takes.
    pub const fn number(self) -> u64 {
        match self {
            VmType::Default => 0,
            VmType::SwProtected => 1,
            VmType::SevSnp => 4,
            VmType::Tdx => 5,
        }
    }

    /// Whether the type has private memory.
    pub const fn is_confidential(self) -> bool {
        !matches!(self, VmType::Default)
    }

    /// The first of `prefer` in `offered` (a KVM_CAP_VM_TYPES bit mask; the default type is
    /// always offered).
    pub fn choose(prefer: &[VmType], offered: u64) -> Option<VmType> {
        let offered = offered | 1;
        prefer
            .iter()
            .copied()
            .find(|t| offered & (1 << t.number()) != 0)
    }
}

impl fmt::Display for VmType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmType::Default => "default",
            VmType::SwProtected => "sw-protected",
            VmType::SevSnp => "sev-snp",
            VmType::Tdx => "tdx",
        })
    }
}

/// How the guest's conversion requests reach the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestTransport {
    /// KVM_HC_MAP_GPA_RANGE as `KVM_EXIT_HYPERCALL` (TDX MapGPA and SNP page-state changes
    /// arrive this way too).
    Hypercall,
    /// This crate's port transport ([`crate::PORT_MAP_GPA`]): where KVM does not deliver the
    /// hypercall.
    PortIo,
}

/// A VM created for confidential memory, and what it can do.
#[derive(Debug)]
pub struct ConfidentialVm {
    /// The VM.
    pub vm: VmFd,
    /// Its type.
    pub vm_type: VmType,
    /// KVM keeps the PRIVATE attribute for it (`KVM_SET_MEMORY_ATTRIBUTES`).
    pub memory_attributes: bool,
    /// It can have guest_memfd memslots.
    pub guest_memfd: bool,
    /// KVM_HC_MAP_GPA_RANGE exits to userspace (enabled by [`ConfidentialVm::create`]).
    pub hypercall_exits: bool,
}

impl ConfidentialVm {
    /// Creates a VM of the first type of `prefer` that KVM offers, and enables
    /// `KVM_CAP_EXIT_HYPERCALL` for KVM_HC_MAP_GPA_RANGE where KVM has it.
    /// `Err(MissingCapability)` when KVM offers none of them: put [`VmType::Default`] last in
    /// `prefer` to accept a VM without private memory (the port transport then carries the
    /// guest's requests).
    pub fn create(kvm: &Kvm, prefer: &[VmType]) -> Result<Self> {
        let offered = kvm.check_extension_raw(KVM_CAP_VM_TYPES).max(0) as u64;
        let vm_type = VmType::choose(prefer, offered).ok_or(Error::MissingCapability(
            "a VM type of the list (KVM_CAP_VM_TYPES)",
        ))?;
        let vm = kvm
            .create_vm_with_type(vm_type.number())
            .map_err(|e| Error::kvm("KVM_CREATE_VM", e))?;
        let int = |c: Cap| vm.check_extension_int(c).max(0) as u64;
        let memory_attributes =
            int(Cap::MemoryAttributes) & cvmem::KVM_MEMORY_ATTRIBUTE_PRIVATE != 0;
        let guest_memfd = int(Cap::GuestMemfd) != 0;
        let hypercall_exits = int(Cap::ExitHypercall) & MAP_GPA_RANGE_EXIT != 0;
        if hypercall_exits {
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_EXIT_HYPERCALL,
                ..Default::default()
            };
            cap.args[0] = MAP_GPA_RANGE_EXIT;
            vm.enable_cap(&cap)
                .map_err(|e| Error::kvm("KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)", e))?;
        }
        Ok(ConfidentialVm {
            vm,
            vm_type,
            memory_attributes,
            guest_memfd,
            hypercall_exits,
        })
    }

    /// How this VM's guest should ask for conversions: the hypercall where KVM delivers its
    /// exit and keeps memory attributes, else the port transport. (A nested, paravirtualised
    /// KVM may advertise the exit for a default VM and never deliver it.)
    pub const fn guest_transport(&self) -> GuestTransport {
        GuestTransport::for_host(self.hypercall_exits, self.memory_attributes)
    }
}

impl GuestTransport {
    /// The transport on a VM whose KVM advertises KVM_HC_MAP_GPA_RANGE exits
    /// (`hypercall_exits`) and keeps the PRIVATE attribute (`memory_attributes`): the hypercall
    /// only with both, since a nested, paravirtualised KVM advertises the exit for a default
    /// VM and never delivers it (its KVM_RUN of the guest's `vmmcall` does not return).
    pub const fn for_host(hypercall_exits: bool, memory_attributes: bool) -> Self {
        if hypercall_exits && memory_attributes {
            GuestTransport::Hypercall
        } else {
            GuestTransport::PortIo
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_offered_type_of_the_list_is_chosen() {
        use VmType::*;
        let confidential = [Tdx, SevSnp, SwProtected];
        // A TDX host (types 0, 1, 5), an SNP host (0, 1, 2, 3, 4), a paravirtualised host (0).
        assert_eq!(VmType::choose(&confidential, 0b10_0011), Some(Tdx));
        assert_eq!(VmType::choose(&confidential, 0b1_1111), Some(SevSnp));
        assert_eq!(VmType::choose(&confidential, 0b11), Some(SwProtected));
        assert_eq!(VmType::choose(&confidential, 0b1), None);
        assert_eq!(VmType::choose(&confidential, 0), None);
        // The explicit opt-in to a default VM.
        assert_eq!(VmType::choose(&[SwProtected, Default], 0b1), Some(Default));
        assert!(!Default.is_confidential() && Tdx.is_confidential());
    }
}

//! Where KVM keeps PRIVATE, and the one call that sets it: `KVM_SET_MEMORY_ATTRIBUTES` on the VM
//! (Linux 6.8 on), `KVM_SET_MEMORY_ATTRIBUTES2` on each memslot's guest_memfd (in-place
//! conversion, queued for 7.4: PRIVATE per file, keyed by file offset, exclusive with the per-VM
//! attribute), or neither (cvmem-kvm's state is then the only record).
//!
//! The guest_memfd ioctl and its capability are in no released kernel yet and their numbers
//! moved between postings of the series, so they are an [`Attributes2Abi`] value the VMM may
//! override; the probe trusts a capability only if it reports the PRIVATE bit and the VM's
//! own attribute does not (the two are exclusive), so a number that means something else on
//! another kernel is never taken for it.

use std::fs::File;

use cvmem::{GfnRange, Gpa, KVM_MEMORY_ATTRIBUTE_PRIVATE};
use kvm_ioctls::VmFd;

use crate::backing::SlotMemory;
use crate::error::{Error, Result};
use crate::sys;

/// The numbers of the guest_memfd attribute ABI (`KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES` and
/// `KVM_SET_MEMORY_ATTRIBUTES2`), which no released kernel fixes yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attributes2Abi {
    /// The capability: `KVM_CHECK_EXTENSION` returns the attributes a guest_memfd supports.
    pub capability: u32,
    /// The ioctl's number (`nr` in `_IOWR(KVMIO, nr, struct kvm_memory_attributes2)`).
    pub ioctl_nr: u8,
}

impl Attributes2Abi {
    /// The in-place conversion series as posted in 2026 (capability 250 after
    /// `KVM_CAP_S390_HPAGE_2G`, ioctl 0xd2): check them against your kernel's `linux/kvm.h`.
    pub const SERIES_2026: Attributes2Abi = Attributes2Abi {
        capability: 250,
        ioctl_nr: 0xd2,
    };

    /// `_IOWR(KVMIO, ioctl_nr, struct kvm_memory_attributes2)`: read/write, 128 bytes.
    pub const fn request(self) -> u64 {
        const IOC_READ_WRITE: u64 = 3 << 30;
        const KVMIO: u64 = 0xae;
        IOC_READ_WRITE
            | ((size_of::<sys::KvmMemoryAttributes2>() as u64) << 16)
            | (KVMIO << 8)
            | self.ioctl_nr as u64
    }
}

impl Default for Attributes2Abi {
    fn default() -> Self {
        Attributes2Abi::SERIES_2026
    }
}

/// Where KVM keeps the PRIVATE attribute of this VM's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvmAttributes {
    /// Nowhere: KVM has no memory attributes (or no PRIVATE); cvmem-kvm's state is the record.
    None,
    /// Per VM, by `KVM_SET_MEMORY_ATTRIBUTES` on the VM, keyed by gpa.
    PerVm,
    /// Per guest_memfd, by `KVM_SET_MEMORY_ATTRIBUTES2` on each memslot's file, keyed by file
    /// offset (`kvm.gmem_in_place_conversion`). Memory outside guest_memfd memslots has none.
    PerGmem(Attributes2Abi),
}

impl KvmAttributes {
    /// Asks `vm`: PRIVATE per VM where `KVM_CAP_MEMORY_ATTRIBUTES` reports it, else per
    /// guest_memfd where `abi.capability` reports it, else none; with the reason, for the
    /// operator.
    pub fn probe(vm: &VmFd, abi: Attributes2Abi) -> (KvmAttributes, String) {
        let per_vm = vm.check_extension_int(kvm_ioctls::Cap::MemoryAttributes) as u64;
        if per_vm & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0 {
            return (
                KvmAttributes::PerVm,
                format!("KVM_CAP_MEMORY_ATTRIBUTES is {per_vm:#x}: PRIVATE is kept per VM"),
            );
        }
        let per_gmem = sys::check_extension_raw(vm, abi.capability);
        if per_gmem > 0 && per_gmem as u64 & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0 {
            return (
                KvmAttributes::PerGmem(abi),
                format!(
                    "KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES ({}) is {per_gmem:#x}: PRIVATE is kept \
                     per guest_memfd (KVM_SET_MEMORY_ATTRIBUTES2)",
                    abi.capability
                ),
            );
        }
        (
            KvmAttributes::None,
            format!(
                "KVM_CAP_MEMORY_ATTRIBUTES is {per_vm:#x} and capability {} (guest_memfd \
                 attributes) {per_gmem:#x}, neither with PRIVATE: KVM keeps no attributes, \
                 cvmem-kvm's state is the source of truth for private/shared",
                abi.capability
            ),
        )
    }

    /// Whether KVM keeps PRIVATE at all.
    pub const fn in_kvm(self) -> bool {
        !matches!(self, KvmAttributes::None)
    }

    /// The short name: `none`, `per-vm` or `per-gmem`.
    pub const fn name(self) -> &'static str {
        match self {
            KvmAttributes::None => "none",
            KvmAttributes::PerVm => "per-vm",
            KvmAttributes::PerGmem(_) => "per-gmem",
        }
    }
}

/// One `KVM_SET_MEMORY_ATTRIBUTES2` call: a range of one guest_memfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GmemCall {
    /// The memslot whose file it is.
    pub(crate) slot: u32,
    /// The gpa of the first page (to report `error_offset` as a gpa).
    pub(crate) gpa: u64,
    /// The file offset of the first page.
    pub(crate) offset: u64,
    /// Bytes.
    pub(crate) size: u64,
}

/// The guest_memfd ranges behind `range`, each with its file: one call per memslot part with a
/// guest_memfd (the other parts have no file to keep PRIVATE in). In gpa order.
pub(crate) fn gmem_calls<'a>(
    memory: impl IntoIterator<Item = (&'a u32, &'a SlotMemory)>,
    range: GfnRange,
) -> Vec<(&'a File, GmemCall)> {
    let mut calls = Vec::new();
    for (&slot, mem) in memory {
        let Some((file, base)) = &mem.host.gmem else {
            continue;
        };
        let slot_range = GfnRange::covering(Gpa(mem.gpa), mem.host.size());
        if let Some(part) = slot_range.intersect(&range) {
            let call = GmemCall {
                slot,
                gpa: part.start.gpa().0,
                offset: base + (part.start.gpa().0 - mem.gpa),
                size: part.bytes(),
            };
            calls.push((file, call));
        }
    }
    calls.sort_by_key(|(_, c)| c.gpa);
    calls
}

/// Sets `attributes` on `range` where `kind` says KVM keeps them. Per guest_memfd, `EAGAIN`
/// becomes [`Error::GmemBusy`] with the gpa of the page KVM found still referenced.
pub(crate) fn set(
    kind: KvmAttributes,
    vm: Option<&VmFd>,
    memory: &std::collections::BTreeMap<u32, SlotMemory>,
    range: GfnRange,
    attributes: u64,
) -> Result<()> {
    match (kind, vm) {
        (KvmAttributes::None, _) | (_, None) => Ok(()),
        (KvmAttributes::PerVm, Some(vm)) => vm
            .set_memory_attributes(kvm_bindings::kvm_memory_attributes {
                address: range.start.gpa().0,
                size: range.bytes(),
                attributes,
                flags: 0,
            })
            .map_err(|e| Error::kvm("KVM_SET_MEMORY_ATTRIBUTES", e)),
        (KvmAttributes::PerGmem(abi), Some(_)) => {
            for (file, call) in gmem_calls(memory, range) {
                set_on_file(abi, file, &call, attributes)?;
            }
            Ok(())
        }
    }
}

fn set_on_file(abi: Attributes2Abi, file: &File, call: &GmemCall, attributes: u64) -> Result<()> {
    let mut arg = sys::KvmMemoryAttributes2 {
        offset: call.offset,
        size: call.size,
        attributes,
        ..Default::default()
    };
    match sys::set_memory_attributes2(file, abi.request(), &mut arg) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Err(busy(call, arg.error_offset)),
        Err(e) => Err(Error::os("KVM_SET_MEMORY_ATTRIBUTES2 on guest_memfd", e)),
    }
}

/// `EAGAIN` with `error_offset`: the page of `call` KVM found still referenced.
fn busy(call: &GmemCall, error_offset: u64) -> Error {
    // A kernel that reports an offset outside the call is believed for the offset only.
    let gpa = error_offset
        .checked_sub(call.offset)
        .filter(|&off| off < call.size)
        .map(|off| Gpa(call.gpa + off));
    Error::GmemBusy {
        slot: call.slot,
        offset: error_offset,
        gpa,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_number_is_iowr_kvmio_of_the_128_byte_struct() {
        assert_eq!(size_of::<sys::KvmMemoryAttributes2>(), 128);
        // _IOWR(0xae, 0xd2, 128 bytes), as the series' selftests compute it.
        assert_eq!(Attributes2Abi::SERIES_2026.request(), 0xc080_aed2);
        let other = Attributes2Abi {
            capability: 249,
            ioctl_nr: 0xd6,
        };
        assert_eq!(other.request(), 0xc080_aed6);
    }

    #[test]
    fn eagain_reports_the_referenced_page_as_a_gpa() {
        let call = GmemCall {
            slot: 3,
            gpa: 0x1_0000_0000,
            offset: 0x20_0000,
            size: 0x4000,
        };
        let Error::GmemBusy { slot, offset, gpa } = busy(&call, 0x20_2000) else {
            panic!()
        };
        assert_eq!(
            (slot, offset, gpa),
            (3, 0x20_2000, Some(Gpa(0x1_0000_2000)))
        );
        // An offset outside the call is reported as given, without a gpa.
        let Error::GmemBusy { gpa, .. } = busy(&call, 0x10_0000) else {
            panic!()
        };
        assert_eq!(gpa, None);
    }
}

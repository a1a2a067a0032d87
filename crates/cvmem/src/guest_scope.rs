//! The one rule that bounds what a guest can make cvmem track: a conversion the guest asks for
//! (hypercall, port transport, memory-fault exit) touches only memory inside the VM's memslots.
//!
//! - To private, a range that reaches outside every memslot is refused whole
//!   ([`Error::OutsideMemslots`], `-EINVAL` to the guest): there is no memory there to make
//!   private, as QEMU's `kvm_convert_memory()` fails a conversion of memory it does not back.
//! - To shared, the parts outside memslots are left alone and the guest gets success: QEMU
//!   ignores them too, since firmware conservatively asks for MMIO windows (the 32-bit PCI
//!   hole, the IO-APIC page) to be shared. Gfns outside memslots are shared unless the VMM
//!   said otherwise, so nothing the guest could observe differs.
//!
//! What the guest gets back, per transport: through KVM_HC_MAP_GPA_RANGE (hypercall exit or the
//! port transport) `-EINVAL` in its status register, as for any malformed request; a
//! memory-fault exit has no status to return — the conversion error is the VMM's, whose only
//! useful answer is to stop the vCPU (re-entering would fault again), as QEMU does when
//! `kvm_convert_memory()` fails.
//!
//! The VMM's own changes ([`Tracker::set_memory_attributes`]) keep KVM's semantics: attributes
//! anywhere. So whatever a guest asks, the tracking it causes is bounded by its memslots
//! (DESIGN.md, "What a guest can make cvmem track").

use alloc::vec::Vec;

use crate::{Error, GfnRange, Kind, Result, Tracker, PAGE_SIZE};

/// What a guest's conversion of a range converts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GuestScope {
    /// The ranges to convert, in address order (adjacent memslots joined into one).
    pub parts: Vec<GfnRange>,
    /// Pages of the range left alone because no memslot holds them (to shared only).
    pub outside_pages: u64,
}

impl GuestScope {
    /// All of `range`, as converted for the VMM (KVM's semantics: attributes anywhere).
    pub fn whole(range: GfnRange) -> Self {
        GuestScope {
            parts: alloc::vec![range],
            outside_pages: 0,
        }
    }
}

impl<A: crate::AttrBackend> Tracker<A> {
    /// What a guest's request to make `range` of kind `to` converts: its parts inside
    /// memslots, or [`Error::OutsideMemslots`] for a request to private that reaches outside
    /// them. Allocates only when the range covers more than one run of memslots.
    pub fn guest_scope(&self, range: GfnRange, to: Kind) -> Result<GuestScope> {
        let mut parts: Vec<GfnRange> = Vec::new();
        for slot in self.memslots() {
            if slot.range().start >= range.end {
                break;
            }
            if let Some(r) = slot.range().intersect(&range) {
                match parts.last_mut() {
                    Some(last) if last.end == r.start => last.end = r.end,
                    _ => parts.try_reserve(1).map_or_else(
                        |_| Err(Error::NoMemory { bytes: 16 }),
                        |()| {
                            parts.push(r);
                            Ok(())
                        },
                    )?,
                }
            }
        }
        let inside: u64 = parts.iter().map(GfnRange::len).sum();
        let outside_pages = range.len() - inside;
        if outside_pages != 0 && to == Kind::Private {
            return Err(Error::OutsideMemslots {
                gpa: range.start.0 * PAGE_SIZE,
                size: range.bytes(),
                outside_pages,
            });
        }
        Ok(GuestScope {
            parts,
            outside_pages,
        })
    }
}

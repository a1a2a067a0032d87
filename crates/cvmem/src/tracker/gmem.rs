//! The tracker's guest_memfds, and where the fault path reads PRIVATE from.
//!
//! In [`AttrMode::PerVm`] PRIVATE is the VM's store, by gfn. In [`AttrMode::PerGmem`]
//! (in-place conversion) it is each guest_memfd's store, by file offset: a gfn is private when
//! the page its memslot binds is, a memslot without a file is all shared. The fault path, the
//! MIXED counts and eligibility ask [`Tracker::probe_in`] and [`Tracker::mixed_in`] and never
//! which mode holds PRIVATE: one place decides.

use super::Tracker;
use crate::addr::{Gfn, GfnRange, Level, PAGE_SHIFT};
use crate::attrs::Probe;
use crate::error::{Error, Result, Unsupported};
use crate::gmem::{AttrMode, Gmem, GmemBinding, GmemFlags, GmemId, GmemOffset};
use crate::memslot::{MemoryRegion, Memslot};
use crate::KVM_MEMORY_ATTRIBUTE_PRIVATE;

impl Tracker {
    /// The same tracker keeping PRIVATE as `mode` says (`kvm.gmem_in_place_conversion`, a
    /// module parameter: chosen before the VM exists).
    pub const fn with_attr_mode(mut self, mode: AttrMode) -> Self {
        self.mode = mode;
        self
    }

    /// Where this VM keeps PRIVATE.
    pub const fn attr_mode(&self) -> AttrMode {
        self.mode
    }

    /// Refuses PRIVATE through the VM where each guest_memfd keeps it (KVM no longer reports
    /// PRIVATE among the VM's attributes then).
    pub(super) fn check_per_vm(&self, attributes: u64) -> Result<()> {
        if self.mode == AttrMode::PerGmem && attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0 {
            return Err(Error::Unsupported {
                what: Unsupported::AttributesPerGmem,
            });
        }
        Ok(())
    }

    /// `KVM_CREATE_GUEST_MEMFD`: a file of `size` bytes. `INIT_SHARED` is refused on a VM that
    /// keeps private memory per VM (`kvm_arch_supports_gmem_init_shared`).
    pub fn create_guest_memfd(&mut self, size: u64, flags: GmemFlags) -> Result<GmemId> {
        if flags.init_shared && self.mode == AttrMode::PerVm && self.supported != 0 {
            return Err(Error::Unsupported {
                what: Unsupported::InitSharedWithPrivateMemory,
            });
        }
        let id = u32::try_from(self.gmems.len()).map_err(|_| Error::NoMemory {
            bytes: core::mem::size_of::<Gmem>(),
        })?;
        let gmem = Gmem::new(size, flags)?;
        self.gmems.try_reserve(1).map_err(|_| Error::NoMemory {
            bytes: core::mem::size_of::<Gmem>(),
        })?;
        self.gmems.push(gmem);
        Ok(GmemId(id))
    }

    /// The guest_memfd `id`.
    pub fn gmem(&self, id: GmemId) -> Option<&Gmem> {
        self.gmems.get(id.0 as usize)
    }

    /// The guest_memfds, in id order.
    pub fn gmems(&self) -> impl ExactSizeIterator<Item = (GmemId, &Gmem)> + '_ {
        self.gmems
            .iter()
            .enumerate()
            .map(|(i, g)| (GmemId(i as u32), g))
    }

    fn gmem_mut(&mut self, id: GmemId) -> Result<&mut Gmem> {
        self.gmems
            .get_mut(id.0 as usize)
            .ok_or(Error::UnknownGmem { gmem: id.0 })
    }

    /// `KVM_SET_MEMORY_ATTRIBUTES2` on guest_memfd `id` ([`Gmem::set_memory_attributes2`]);
    /// refused where PRIVATE is kept per VM. The fault path sees the change at once through
    /// every memslot bound to the range.
    pub fn set_gmem_attributes(
        &mut self,
        id: GmemId,
        offset: GmemOffset,
        size: u64,
        attributes: u64,
        flags: u64,
    ) -> Result<bool> {
        if self.mode == AttrMode::PerVm {
            self.gmem_mut(id)?;
            return Err(Error::Unsupported {
                what: Unsupported::AttributesPerVm,
            });
        }
        self.gmem_mut(id)?
            .set_memory_attributes2(offset, size, attributes, flags)
    }

    /// The host takes a reference on a shared page of guest_memfd `id` ([`Gmem::get_page`]).
    pub fn gmem_get_page(&mut self, id: GmemId, offset: GmemOffset) -> Result<()> {
        self.gmem_mut(id)?.get_page(offset)
    }

    /// The host drops a reference ([`Gmem::put_page`]).
    pub fn gmem_put_page(&mut self, id: GmemId, offset: GmemOffset) -> Result<()> {
        self.gmem_mut(id)?.put_page(offset)
    }

    /// `kvm_gmem_bind`'s checks for a new memslot: the file exists, the slot's range lies in
    /// it, no other memslot binds any of it; and where each file holds PRIVATE, a guest_memfd
    /// slot names its file.
    pub(super) fn check_binding(&self, r: &MemoryRegion) -> Result<()> {
        let Some(b) = r.gmem else {
            if r.flags.guest_memfd && self.mode == AttrMode::PerGmem {
                return Err(Error::GmemBinding {
                    slot: r.slot,
                    given: false,
                });
            }
            return Ok(());
        };
        let gmem = self
            .gmem(b.gmem)
            .ok_or(Error::UnknownGmem { gmem: b.gmem.0 })?;
        let end = b.offset.0.checked_add(r.size).filter(|&e| e <= gmem.size());
        let Some(end) = end else {
            return Err(Error::OutsideFile {
                offset: b.offset.0,
                size: r.size,
                file_size: gmem.size(),
            });
        };
        let bound = |s: &&Memslot| {
            s.gmem.is_some_and(|o| {
                o.gmem == b.gmem && o.offset.0 < end && b.offset.0 < binding_end(o, s)
            })
        };
        match self.slots.iter().find(bound) {
            Some(other) => Err(Error::GmemBindingOverlap {
                gmem: b.gmem.0,
                other: other.id,
            }),
            None => Ok(()),
        }
    }

    /// The file and the page of it that back `slot`'s first gfn, where the file holds PRIVATE.
    #[inline]
    fn bound(&self, slot: &Memslot) -> Option<(&Gmem, u64)> {
        let b = slot.gmem?;
        Some((self.gmems.get(b.gmem.0 as usize)?, b.offset.page()))
    }

    /// PRIVATE at `gfn` of `slot` and the largest level whose aligned page around it has one
    /// kind, read from wherever PRIVATE is kept. Levels whose page leaves the slot may be
    /// reported either way: the slot's geometry rules them out.
    #[inline]
    pub(crate) fn probe_in(&self, slot: &Memslot, gfn: Gfn) -> Probe {
        if self.mode == AttrMode::PerVm {
            return self.attrs.probe(gfn);
        }
        let Some((gmem, first)) = self.bound(slot) else {
            // No file: nothing here can be private.
            return Probe {
                private: false,
                uniform: Level::G1,
            };
        };
        let page = first + (gfn.0 - slot.base_gfn);
        let probe = gmem.attrs().probe(Gfn(page));
        // The file's aligned pages are the gfn's where the two are congruent; elsewhere the
        // gfn's large page straddles two of the file's and is checked as a range.
        let mut uniform = Level::K4;
        for level in Level::LARGE {
            let ok = if page.wrapping_sub(gfn.0) % level.pages() == 0 {
                probe.uniform >= level
            } else {
                self.file_range(slot, first, level.align_gfn(gfn.0), level)
                    .is_some_and(|r| gmem.attrs().uniform(r).is_some())
            };
            if !ok {
                break;
            }
            uniform = level;
        }
        Probe {
            private: probe.private,
            uniform,
        }
    }

    /// The file pages behind the large page of `level` at `start` (aligned), if it lies inside
    /// `slot`.
    fn file_range(&self, slot: &Memslot, first: u64, start: u64, level: Level) -> Option<GfnRange> {
        let end = start + level.pages();
        (start >= slot.base_gfn && end <= slot.base_gfn + slot.npages).then(|| {
            let s = first + (start - slot.base_gfn);
            GfnRange::new(s, s + level.pages())
        })
    }

    /// Large pages of `level` wholly inside `slot` whose pages are not all of one kind.
    pub(crate) fn mixed_in(&self, slot: &Memslot, level: Level) -> u64 {
        if level == Level::K4 {
            return 0;
        }
        if self.mode == AttrMode::PerVm {
            return self.attrs.mixed_pages(slot.range(), level);
        }
        let Some((gmem, first)) = self.bound(slot) else {
            return 0;
        };
        if first.wrapping_sub(slot.base_gfn) % level.pages() == 0 {
            let range = GfnRange::new(first, first + slot.npages);
            return gmem.attrs().mixed_pages(range, level);
        }
        // Not congruent: one range check per large page of the slot (never per 4K page).
        let lp = slot.lpage(level);
        (lp.first()..lp.first() + lp.len())
            .filter_map(|i| self.file_range(slot, first, i * level.pages(), level))
            .filter(|&r| gmem.attrs().uniform(r).is_none())
            .count() as u64
    }
}

/// The end (bytes into its file) of the range memslot `s` binds with `b`.
fn binding_end(b: GmemBinding, s: &Memslot) -> u64 {
    b.offset.0 + (s.npages << PAGE_SHIFT)
}

//! A deliberately simple dense model of the tracker, for tests and fuzzing only.
//!
//! One attribute per 4 KiB page in a fixed window, memslots in a plain list, and brute-force
//! hugepage eligibility that looks at every page. Written straight from the op-log spec and
//! KVM's documented rules, sharing no code with the real tracker, so that agreement between the
//! two means something.

use std::collections::BTreeSet;

use cvmem::Errno;
use cvmem::KVM_MEMORY_ATTRIBUTE_PRIVATE;
use cvmem::{Access, MaxLevel, MemoryFault};
use cvmem::{Level, PAGE_SHIFT, PAGE_SIZE};

use crate::DenseGmem;

/// A memslot in the dense model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenseSlot {
    /// Slot id.
    pub id: u32,
    /// First gfn.
    pub base: u64,
    /// Pages.
    pub npages: u64,
    /// KVM_MEM_GUEST_MEMFD.
    pub guest_memfd: bool,
    /// Dirty logging.
    pub dirty_log: bool,
    /// Read-only.
    pub readonly: bool,
    /// Host address.
    pub uaddr: u64,
    /// Backing size.
    pub backing: Level,
    /// The guest_memfd and the byte offset of the slot's first page in it.
    pub gmem: Option<(u32, u64)>,
}

/// The dense model: attributes of gfns `[0, window)`, memslots, GUEST_INHIBIT marks.
#[derive(Clone, Debug)]
pub struct DenseModel {
    attrs: Vec<u64>,
    supported: u64,
    /// Memslots in creation order (no index, no sorting: brute force).
    pub slots: Vec<DenseSlot>,
    inhibit: BTreeSet<(u32, u64, u64)>,
    /// PRIVATE kept per guest_memfd (in-place conversion) instead of per VM.
    per_gmem: bool,
    /// guest_memfds by id.
    pub gmems: Vec<DenseGmem>,
}

impl DenseModel {
    /// A model of the first `window` gfns, every page shared, PRIVATE supported.
    pub fn new(window: u64) -> Self {
        DenseModel {
            attrs: vec![0; window as usize],
            supported: KVM_MEMORY_ATTRIBUTE_PRIVATE,
            slots: Vec::new(),
            inhibit: BTreeSet::new(),
            per_gmem: false,
            gmems: Vec::new(),
        }
    }

    /// The same model keeping PRIVATE per guest_memfd: a gfn is private when the file page its
    /// memslot binds is; the VM refuses PRIVATE.
    pub fn per_gmem(mut self) -> Self {
        self.per_gmem = true;
        self.supported = 0;
        self
    }

    /// `KVM_CREATE_GUEST_MEMFD` of `pages` pages; `INIT_SHARED` only where the VM keeps no
    /// private memory itself.
    pub fn create_gmem(&mut self, pages: usize, init_shared: bool) -> Result<u32, Errno> {
        self.create_gmem_folios(pages, init_shared, Level::K4, cvmem::MergePolicy::default())
    }

    /// `KVM_CREATE_GUEST_MEMFD` backed by folios of `order` (the size a multiple of it).
    pub fn create_gmem_folios(
        &mut self,
        pages: usize,
        init_shared: bool,
        order: Level,
        merge: cvmem::MergePolicy,
    ) -> Result<u32, Errno> {
        let bad = pages == 0
            || pages as u64 % order.pages() != 0
            || (init_shared && !self.per_gmem && self.supported != 0);
        if bad {
            return Err(Errno::EINVAL);
        }
        self.gmems
            .push(DenseGmem::with_folios(pages, init_shared, order, merge));
        Ok(self.gmems.len() as u32 - 1)
    }

    /// The folio cap of a private page at `gfn` of `slot`: its file's folio, or none.
    fn folio_cap(&self, slot: &DenseSlot, gfn: u64) -> Level {
        let Some((file, offset)) = slot.gmem else {
            return Level::G1;
        };
        let page = offset / PAGE_SIZE + (gfn - slot.base);
        self.gmems[file as usize].folio_cap(page, gfn)
    }

    /// Number of gfns modelled.
    pub fn window(&self) -> u64 {
        self.attrs.len() as u64
    }

    /// The attributes of `gfn`: per VM, 0 outside the window; per guest_memfd, those of the
    /// file page its memslot binds (0 outside memslots and files).
    pub fn attributes(&self, gfn: u64) -> u64 {
        if !self.per_gmem {
            return self.attrs.get(gfn as usize).copied().unwrap_or(0);
        }
        let page = self.slot_for_gfn(gfn).and_then(|s| {
            let (id, offset) = s.gmem?;
            let i = offset / PAGE_SIZE + (gfn - s.base);
            self.gmems
                .get(id as usize)?
                .private
                .get(i as usize)
                .copied()
        });
        if page == Some(true) {
            KVM_MEMORY_ATTRIBUTE_PRIVATE
        } else {
            0
        }
    }

    /// KVM_SET_MEMORY_ATTRIBUTES. Pages beyond the window are validated but not stored.
    pub fn set_memory_attributes(
        &mut self,
        gpa: u64,
        size: u64,
        attributes: u64,
    ) -> Result<(), Errno> {
        let bad = attributes & !self.supported != 0
            || size == 0
            || gpa % PAGE_SIZE != 0
            || size % PAGE_SIZE != 0
            || gpa.checked_add(size).is_none();
        if bad {
            return Err(Errno::EINVAL);
        }
        let start = gpa / PAGE_SIZE;
        let end = start + size / PAGE_SIZE;
        for gfn in start..end.min(self.window()) {
            self.attrs[gfn as usize] = attributes;
        }
        Ok(())
    }

    /// KVM_HC_MAP_GPA_RANGE handled by the VMM.
    pub fn map_gpa(&mut self, gpa: u64, npages: u64, flags: u64) -> Result<(), Errno> {
        if flags >> 5 != 0 || flags & 0xf > 2 || npages == 0 {
            return Err(Errno::EINVAL);
        }
        let size = npages.checked_mul(PAGE_SIZE).ok_or(Errno::EINVAL)?;
        let attrs = if flags & 0x10 != 0 {
            KVM_MEMORY_ATTRIBUTE_PRIVATE
        } else {
            0
        };
        self.set_memory_attributes(gpa, size, attrs)
    }

    /// KVM_SET_USER_MEMORY_REGION2 per the op-log rules.
    #[allow(clippy::too_many_arguments)]
    pub fn set_memslot(
        &mut self,
        id: u32,
        gpa: u64,
        size: u64,
        guest_memfd: bool,
        dirty_log: bool,
        readonly: bool,
        uaddr: Option<u64>,
        backing: Option<Level>,
    ) -> Result<(), Errno> {
        self.set_memslot_bound(
            id,
            gpa,
            size,
            (guest_memfd, dirty_log, readonly),
            uaddr,
            backing,
            None,
        )
    }

    /// KVM_SET_USER_MEMORY_REGION2 with a guest_memfd range `(file, offset)` bound to the slot:
    /// `flags` are (guest_memfd, dirty_log, readonly).
    #[allow(clippy::too_many_arguments)]
    pub fn set_memslot_bound(
        &mut self,
        id: u32,
        gpa: u64,
        size: u64,
        flags: (bool, bool, bool),
        uaddr: Option<u64>,
        backing: Option<Level>,
        gmem: Option<(u32, u64)>,
    ) -> Result<(), Errno> {
        let (guest_memfd, dirty_log, readonly) = flags;
        let invalid = id > 32763
            || gpa % PAGE_SIZE != 0
            || size % PAGE_SIZE != 0
            || gpa.checked_add(size).is_none()
            || size / PAGE_SIZE > (1 << 31) - 1
            || uaddr.is_some_and(|u| u % PAGE_SIZE != 0)
            || (guest_memfd && (dirty_log || readonly))
            || (gmem.is_some() && !guest_memfd && size != 0)
            || gmem.is_some_and(|(_, off)| off % PAGE_SIZE != 0);
        if invalid {
            return Err(Errno::EINVAL);
        }
        let (base, npages) = (gpa / PAGE_SIZE, size / PAGE_SIZE);
        let overlaps =
            |s: &DenseSlot| s.id != id && base < s.base + s.npages && s.base < base + npages;
        let Some(pos) = self.slots.iter().position(|s| s.id == id) else {
            if size == 0 {
                return Err(Errno::EINVAL);
            }
            if self.slots.iter().any(overlaps) {
                return Err(Errno::EEXIST);
            }
            self.check_binding(guest_memfd, size, gmem)?;
            self.slots.push(DenseSlot {
                id,
                base,
                npages,
                guest_memfd,
                dirty_log,
                readonly,
                uaddr: uaddr.unwrap_or(gpa),
                backing: backing.unwrap_or(Level::G1),
                gmem,
            });
            return Ok(());
        };
        if size == 0 {
            self.slots.remove(pos);
            self.inhibit.retain(|&(s, _, _)| s != id);
            return Ok(());
        }
        let old = self.slots[pos].clone();
        if old.guest_memfd
            || guest_memfd
            || npages != old.npages
            || readonly != old.readonly
            || uaddr.is_some_and(|u| u != old.uaddr)
            || backing.is_some_and(|b| b != old.backing)
        {
            return Err(Errno::EINVAL);
        }
        if base != old.base {
            if self.slots.iter().any(overlaps) {
                return Err(Errno::EEXIST);
            }
            self.inhibit.retain(|&(s, _, _)| s != id);
        }
        self.slots[pos].base = base;
        self.slots[pos].dirty_log = dirty_log;
        Ok(())
    }

    /// `kvm_gmem_bind`: the file exists (else EBADF), the range is inside it (else EINVAL) and
    /// no other slot binds any of its pages (else EEXIST); per guest_memfd, a guest_memfd slot
    /// needs its file.
    fn check_binding(
        &self,
        guest_memfd: bool,
        size: u64,
        gmem: Option<(u32, u64)>,
    ) -> Result<(), Errno> {
        let Some((file, offset)) = gmem else {
            return if guest_memfd && self.per_gmem {
                Err(Errno::EBADF)
            } else {
                Ok(())
            };
        };
        let g = self.gmems.get(file as usize).ok_or(Errno::EBADF)?;
        let file_size = g.private.len() as u64 * PAGE_SIZE;
        if offset.checked_add(size).is_none_or(|end| end > file_size) {
            return Err(Errno::EINVAL);
        }
        let taken = self.slots.iter().any(|s| {
            s.gmem.is_some_and(|(f, o)| {
                f == file && o < offset + size && offset < o + s.npages * PAGE_SIZE
            })
        });
        if taken {
            return Err(Errno::EEXIST);
        }
        Ok(())
    }

    /// `KVM_SET_MEMORY_ATTRIBUTES2` on guest_memfd `file`; refused (EINVAL) where the VM keeps
    /// PRIVATE, EBADF for an unknown file.
    pub fn set_gmem_attributes(
        &mut self,
        file: u32,
        offset: u64,
        size: u64,
        attributes: u64,
    ) -> crate::gmem::Answer {
        let per_gmem = self.per_gmem;
        let g = self
            .gmems
            .get_mut(file as usize)
            .ok_or((Errno::EBADF, None))?;
        if !per_gmem {
            return Err((Errno::EINVAL, None));
        }
        g.set_memory_attributes2(offset, size, attributes, 0)
    }

    /// The slot containing `gfn`, by linear search.
    pub fn slot_for_gfn(&self, gfn: u64) -> Option<&DenseSlot> {
        self.slots
            .iter()
            .find(|s| s.base <= gfn && gfn < s.base + s.npages)
    }

    fn uniform(&self, start: u64, end: u64) -> bool {
        let first = self.attributes(start);
        (start..end).all(|g| self.attributes(g) == first)
    }

    /// Marks GUEST_INHIBIT for the large pages above `level` holding `gfn`.
    pub fn set_guest_inhibit(&mut self, gfn: u64, level: Level) {
        let Some(slot) = self.slot_for_gfn(gfn).cloned() else {
            return;
        };
        for l in Level::LARGE.into_iter().filter(|&l| l > level) {
            let start = l.align_down(cvmem::Gfn(gfn)).0;
            if slot.base <= start && start + l.pages() <= slot.base + slot.npages {
                self.inhibit.insert((slot.id, l.page_shift().into(), start));
            }
        }
    }

    /// Brute-force fault-path answer, straight from the spec's `query`.
    pub fn max_mapping_level(&self, gpa: u64, access: Access) -> MaxLevel {
        let gfn = gpa >> PAGE_SHIFT;
        let Some(slot) = self.slot_for_gfn(gfn) else {
            return MaxLevel::NoSlot;
        };
        let private = access == Access::Private;
        let fault = MaxLevel::MemoryFault(MemoryFault {
            gpa: cvmem::Gpa(gfn << PAGE_SHIFT),
            size: PAGE_SIZE,
            private,
        });
        if private && !slot.guest_memfd {
            return fault;
        }
        if (self.attributes(gfn) & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0) != private {
            return fault;
        }
        let level = self.slot_level(slot, gfn);
        MaxLevel::Level(if private {
            level.min(self.folio_cap(slot, gfn))
        } else {
            level
        })
    }

    /// The largest level the slot's state allows at `gfn` for a page of its own kind, by brute
    /// force; `None` outside memslots.
    pub fn allowed_level(&self, gfn: u64) -> Option<Level> {
        self.slot_for_gfn(gfn).map(|slot| {
            let level = self.slot_level(slot, gfn);
            if self.attributes(gfn) & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0 {
                level.min(self.folio_cap(slot, gfn))
            } else {
                level
            }
        })
    }

    fn slot_level(&self, slot: &DenseSlot, gfn: u64) -> Level {
        let max = if slot.dirty_log {
            Level::K4
        } else {
            slot.backing
        };
        for level in [Level::G1, Level::M2] {
            let start = level.align_down(cvmem::Gfn(gfn)).0;
            let end = start + level.pages();
            let ok = level <= max
                && slot.base <= start
                && end <= slot.base + slot.npages
                && (slot.base ^ (slot.uaddr >> PAGE_SHIFT)) % level.pages() == 0
                && !self
                    .inhibit
                    .contains(&(slot.id, level.page_shift().into(), start))
                && self.uniform(start, end);
            if ok {
                return level;
            }
        }
        Level::K4
    }

    /// Bytes of slot `id` mappable at 1G, at 2M (not 1G), and only at 4K, by brute force;
    /// private memory no larger than its folio.
    pub fn eligibility(&self, id: u32) -> Option<[u64; 3]> {
        let slot = self.slots.iter().find(|s| s.id == id)?;
        let (mut g1, mut m2) = (0, 0);
        let mut gfn = Level::M2.align_down(cvmem::Gfn(slot.base)).0;
        while gfn < slot.base + slot.npages {
            let at = gfn.max(slot.base);
            let mut level = self.slot_level(slot, at);
            // No private mapping above its folio (the page is uniform when level > 4K).
            if self.attributes(at) & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0 {
                level = level.min(self.folio_cap(slot, at));
            }
            match level {
                Level::G1 => g1 += Level::M2.size(),
                Level::M2 => m2 += Level::M2.size(),
                Level::K4 => {}
            }
            gfn += Level::M2.pages();
        }
        Some([g1, m2, slot.npages * PAGE_SIZE - g1 - m2])
    }

    /// Large pages of `level` wholly inside slot `id` whose pages differ in attributes.
    pub fn mixed_count(&self, id: u32, level: Level) -> u64 {
        let Some(slot) = self.slots.iter().find(|s| s.id == id) else {
            return 0;
        };
        let mut n = 0;
        let mut start = slot.base.div_ceil(level.pages()) * level.pages();
        while start + level.pages() <= slot.base + slot.npages {
            if !self.uniform(start, start + level.pages()) {
                n += 1;
            }
            start += level.pages();
        }
        n
    }

    /// Maximal runs of non-zero attributes inside the window: `(start gfn, end gfn, attrs)`.
    pub fn nonzero_runs(&self) -> Vec<(u64, u64, u64)> {
        let mut runs: Vec<(u64, u64, u64)> = Vec::new();
        for (gfn, &a) in self.attrs.iter().enumerate() {
            let gfn = gfn as u64;
            match runs.last_mut() {
                Some(r) if r.1 == gfn && r.2 == a => r.1 += 1,
                _ if a != 0 => runs.push((gfn, gfn + 1, a)),
                _ => {}
            }
        }
        runs
    }
}

//! The tracker's guest_memfds, and where the fault path reads PRIVATE from.
//!
//! In [`AttrMode::PerVm`] PRIVATE is the VM's store, by gfn. In [`AttrMode::PerGmem`]
//! (in-place conversion) it is each guest_memfd's store, by file offset: a gfn is private when
//! the page its memslot binds is, a memslot without a file is all shared. The fault path, the
//! MIXED counts and eligibility ask [`Tracker::probe_in`] and [`Tracker::mixed_in`] and never
//! which mode holds PRIVATE: one place decides.

use super::AttrCheck;
use super::Tracker;
use crate::addr::{Gfn, GfnRange, Level, PAGE_SHIFT};
use crate::attrs::{AttrBackend, AttrRun, AttrStore, Probe};
use crate::error::{Error, Result, Unsupported};
use crate::gmem::{AttrMode, Gmem, GmemBinding, GmemFlags, GmemId, GmemOffset, MergePolicy};
use crate::memslot::{MemoryRegion, Memslot};
use crate::tracker::Kind;

impl<A: AttrBackend> Tracker<A> {
    /// The same tracker keeping PRIVATE as `mode` says (`kvm.gmem_in_place_conversion`, a
    /// module parameter: chosen before the VM exists).
    pub const fn with_attr_mode(mut self, mode: AttrMode) -> Self {
        self.check = AttrCheck::new(self.check.supported(), mode);
        self
    }

    /// The same tracker merging its files' split folios by `policy` (see [`MergePolicy`]).
    pub const fn with_merge_policy(mut self, policy: MergePolicy) -> Self {
        self.merge = policy;
        self
    }

    /// Where this VM keeps PRIVATE.
    pub const fn attr_mode(&self) -> AttrMode {
        self.check.mode()
    }

    /// The one check of the attributes KVM_SET_MEMORY_ATTRIBUTES asks for: only supported
    /// bits, and PRIVATE only where the VM keeps it (per guest_memfd it is set on the files).
    #[inline]
    pub fn check_attributes(&self, attributes: u64) -> Result<()> {
        self.check.attributes(attributes)
    }

    /// `KVM_CREATE_GUEST_MEMFD`: a file of `size` bytes. `INIT_SHARED` is refused on a VM that
    /// keeps private memory per VM (`kvm_arch_supports_gmem_init_shared`).
    pub fn create_guest_memfd(&mut self, size: u64, flags: GmemFlags) -> Result<GmemId>
    where
        A: From<AttrStore>,
    {
        self.create_guest_memfd_merging(size, flags, self.merge)
    }

    /// [`Tracker::create_guest_memfd`] with a merge policy of the file's own.
    pub fn create_guest_memfd_merging(
        &mut self,
        size: u64,
        flags: GmemFlags,
        merge: MergePolicy,
    ) -> Result<GmemId>
    where
        A: From<AttrStore>,
    {
        let gmem = self.new_gmem(size, flags, merge)?;
        self.add_gmem(gmem.map_store(|s| Ok(A::from(s)))?)
    }

    /// The file `KVM_CREATE_GUEST_MEMFD` would make on this VM, with its own [`AttrStore`],
    /// not yet added: the one check of the request (a file's size, flags, and `INIT_SHARED`
    /// refused on a VM that keeps private memory per VM, `kvm_arch_supports_gmem_init_shared`).
    /// [`Tracker::add_gmem`] adds it, its store kept as the tracker keeps its own.
    pub fn new_gmem(&self, size: u64, flags: GmemFlags, merge: MergePolicy) -> Result<Gmem> {
        self.check_gmem_flags(flags)?;
        Ok(Gmem::new(size, flags)?.with_merge_policy(merge))
    }

    /// What this VM refuses of a file's flags: `INIT_SHARED` where it keeps private memory
    /// per VM. [`Gmem::check`] is the rest of the check.
    fn check_gmem_flags(&self, flags: GmemFlags) -> Result<()> {
        if flags.init_shared && self.check.mode() == AttrMode::PerVm && self.check.supported() != 0
        {
            return Err(Error::Unsupported {
                what: Unsupported::InitSharedWithPrivateMemory,
            });
        }
        Ok(())
    }

    /// Adds a file [`Tracker::new_gmem`] made, as the next id. On `NoMemory` nothing changed.
    pub fn add_gmem(&mut self, gmem: Gmem<A>) -> Result<GmemId> {
        let no_memory = Error::NoMemory {
            bytes: core::mem::size_of::<Gmem<A>>(),
        };
        let id = u32::try_from(self.gmems.len()).map_err(|_| no_memory.clone())?;
        self.gmems.try_reserve(1).map_err(|_| no_memory)?;
        self.gmems.push(gmem);
        Ok(GmemId(id))
    }

    /// Adds a file restored from a snapshot (ids in order), under the rules
    /// [`Tracker::create_guest_memfd`] applies.
    pub(crate) fn restore_gmem(&mut self, gmem: Gmem) -> Result<GmemId>
    where
        A: From<AttrStore>,
    {
        self.check_gmem_flags(gmem.flags())?;
        Gmem::check(gmem.size(), gmem.flags())?;
        self.add_gmem(gmem.map_store(|s| Ok(A::from(s)))?)
    }

    /// The guest_memfd `id`.
    pub fn gmem(&self, id: GmemId) -> Option<&Gmem<A>> {
        self.gmems.get(id.0 as usize)
    }

    /// The guest_memfds, in id order.
    pub fn gmems(&self) -> impl ExactSizeIterator<Item = (GmemId, &Gmem<A>)> + '_ {
        self.gmems
            .iter()
            .enumerate()
            .map(|(i, g)| (GmemId(i as u32), g))
    }

    fn gmem_mut(&mut self, id: GmemId) -> Result<&mut Gmem<A>> {
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
        match self.check_gmem_attributes(id, offset, size, attributes, flags)? {
            Some(pages) => self.store_gmem_attributes(id, pages, attributes),
            None => Ok(false),
        }
    }

    /// What [`Tracker::set_gmem_attributes`] would change (the file's pages; `None`: nothing),
    /// or why it is refused, without changing anything.
    pub fn check_gmem_attributes(
        &self,
        id: GmemId,
        offset: GmemOffset,
        size: u64,
        attributes: u64,
        flags: u64,
    ) -> Result<Option<GfnRange>> {
        let gmem = self.gmem(id).ok_or(Error::UnknownGmem { gmem: id.0 })?;
        if self.check.mode() == AttrMode::PerVm {
            return Err(Error::Unsupported {
                what: Unsupported::AttributesPerVm,
            });
        }
        gmem.check_attributes2(offset, size, attributes, flags)
    }

    /// Stores what [`Tracker::check_gmem_attributes`] returned for this state.
    pub(crate) fn store_gmem_attributes(
        &mut self,
        id: GmemId,
        pages: GfnRange,
        attributes: u64,
    ) -> Result<bool> {
        self.gmem_mut(id)?.store(pages, attributes)
    }

    /// [`Gmem::split_for_store`] on file `id`: the first step of a store of PRIVATE that a
    /// front makes once for several copies of this tracker.
    pub fn gmem_split_for_store(
        &mut self,
        id: GmemId,
        pages: GfnRange,
        attributes: u64,
    ) -> Result<()> {
        self.gmem_mut(id)?.split_for_store(pages, attributes)
    }

    /// [`Gmem::merge_after_store`] on file `id`: the last step of that store.
    pub fn gmem_merge_after_store(&mut self, id: GmemId, pages: GfnRange) -> Result<()> {
        self.gmem_mut(id)?.merge_after_store(pages)
    }

    /// Where memslots see pages `pages` of file `id`: for each bound memslot that overlaps,
    /// the gfns and the file page at the first of them.
    pub fn gmem_gfns(
        &self,
        id: GmemId,
        pages: GfnRange,
    ) -> impl Iterator<Item = (GfnRange, u64)> + '_ {
        self.slots.iter().filter_map(move |s| {
            let b = s.gmem.filter(|b| b.gmem == id)?;
            let first = b.offset.page();
            let file = GfnRange::new(Gfn(first), Gfn(first + s.npages)).intersect(&pages)?;
            let gfn = s.base_gfn + (file.start.0 - first);
            Some((GfnRange::from_len(Gfn(gfn), file.len()), file.start.0))
        })
    }

    /// The host takes a reference on a shared page of guest_memfd `id` ([`Gmem::get_page`]).
    pub fn gmem_get_page(&mut self, id: GmemId, offset: GmemOffset) -> Result<()> {
        self.gmem_mut(id)?.get_page(offset)
    }

    /// The host drops a reference ([`Gmem::put_page`]).
    pub fn gmem_put_page(&mut self, id: GmemId, offset: GmemOffset) -> Result<()> {
        self.gmem_mut(id)?.put_page(offset)
    }

    /// The merge policy new files get.
    pub const fn merge_policy(&self) -> MergePolicy {
        self.merge
    }

    /// `fallocate(PUNCH_HOLE)` on file `id` ([`Gmem::punch_hole`]).
    pub fn gmem_punch_hole(&mut self, id: GmemId, offset: GmemOffset, size: u64) -> Result<()> {
        self.gmem_mut(id)?.punch_hole(offset, size)
    }

    /// The level the slot's state allows at `gfn` for a page of the kind `probe` found, no
    /// larger than the folio backing it when it is private in a file the tracker models.
    #[inline(always)]
    pub(crate) fn folio_cap(&self, slot: &Memslot, gfn: Gfn, probe: Probe) -> Level {
        super::fault::capped_level(slot, gfn.0, probe, |level| self.file_cap(slot, gfn, level))
    }

    /// `level` capped by the folio backing private `gfn` of `slot`, if it is in a file the
    /// tracker models.
    #[inline(always)]
    pub(super) fn file_cap(&self, slot: &Memslot, gfn: Gfn, level: Level) -> Level {
        if slot.gmem.is_none() {
            return level;
        }
        self.folio_cap_in_file(slot, gfn, level)
    }

    /// [`Tracker::file_cap`] in a file: out of line, off the path of slots without a
    /// modelled file.
    #[inline(never)]
    pub(super) fn folio_cap_in_file(&self, slot: &Memslot, gfn: Gfn, level: Level) -> Level {
        match self.bound(slot) {
            Some((gmem, first)) => level.min(gmem.folio_cap(first + (gfn.0 - slot.base_gfn), gfn)),
            None => level,
        }
    }

    /// For [`Tracker::eligibility`]: the private 2M pages of `slot` that its state allows at
    /// 1G or 2M but whose folio (or a binding not congruent at that size) allows less, as
    /// `[1G → 2M, 1G → 4K, 2M → 4K]` counts of 2M pages. `level_ok` is the slot's geometry.
    /// One probe per 1G page of the private runs; per 2M page only for files of huge folios
    /// (and where GUEST_INHIBIT is set): order-0 files, every kernel's so far, are counted.
    pub(super) fn folio_demotions(
        &self,
        slot: &Memslot,
        level_ok: impl Fn(Level) -> bool,
    ) -> [u64; 3] {
        let mut down = [0u64; 3];
        let Some((gmem, first)) = self.bound(slot) else {
            return down;
        };
        let (m2, g1) = (slot.lpage(Level::M2), slot.lpage(Level::G1));
        let any_inhibited_2m = m2.any_inhibited();
        let order_0 = gmem.folios().order() == Level::K4;
        let (base, g1_pages) = (slot.base_gfn, Level::G1.pages());
        self.for_each_kind_run(slot.range(), |run, kind| {
            if !kind.is_private() {
                return;
            }
            // The 2M pages wholly inside the run, one 1G page at a time.
            let (mut p, end) = (run.start.0.div_ceil(512) * 512, run.end.0 / 512 * 512);
            while p < end {
                let g = p & !(g1_pages - 1);
                let stop = end.min(g + g1_pages);
                // Only a 1G page wholly inside the slot may count at 1G.
                let inside = g >= base && g + g1_pages <= base + slot.npages;
                let whole_1g = level_ok(Level::G1)
                    && inside
                    && self.probe_in(slot, Gfn(g)).uniform == Level::G1
                    && !g1.is_inhibited(g);
                let allowed_2m =
                    |q: u64| level_ok(Level::M2) && !(any_inhibited_2m && m2.is_inhibited(q));
                if order_0 {
                    // Every private page is its own folio: all of them map at 4K.
                    if whole_1g {
                        down[1] += (stop - p) / 512;
                    } else if level_ok(Level::M2) {
                        let inhibited = if any_inhibited_2m {
                            let pages = (p..stop).step_by(512);
                            pages.filter(|&q| m2.is_inhibited(q)).count() as u64
                        } else {
                            0
                        };
                        down[2] += (stop - p) / 512 - inhibited;
                    }
                    p = stop;
                    continue;
                }
                while p < stop {
                    let allowed = if whole_1g {
                        Level::G1
                    } else if allowed_2m(p) {
                        Level::M2
                    } else {
                        Level::K4
                    };
                    let cap = gmem.folio_cap(first + (p - base), Gfn(p));
                    match (allowed, allowed.min(cap)) {
                        (Level::G1, Level::M2) => down[0] += 1,
                        (Level::G1, Level::K4) => down[1] += 1,
                        (Level::M2, Level::K4) => down[2] += 1,
                        _ => {}
                    }
                    p += 512;
                }
            }
        });
        down
    }

    /// `kvm_gmem_bind`'s checks for a new memslot: the file exists, the slot's range lies in
    /// it, no other memslot binds any of it; and where each file holds PRIVATE, a guest_memfd
    /// slot names its file.
    pub(super) fn check_binding(&self, r: &MemoryRegion) -> Result<()> {
        let Some(b) = r.gmem else {
            if r.flags.guest_memfd && self.check.mode() == AttrMode::PerGmem {
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
    pub(super) fn bound(&self, slot: &Memslot) -> Option<(&Gmem<A>, u64)> {
        let b = slot.gmem?;
        Some((self.gmems.get(b.gmem.0 as usize)?, b.offset.page()))
    }

    /// PRIVATE at `gfn` of `slot` and the largest level whose aligned page around it has one
    /// kind, read from wherever PRIVATE is kept. Levels whose page leaves the slot may be
    /// reported either way: the slot's geometry rules them out.
    #[inline(always)]
    pub(crate) fn probe_in(&self, slot: &Memslot, gfn: Gfn) -> Probe {
        self.probe_in_by(slot, gfn, A::probe)
    }

    /// [`Tracker::probe_in`], with the VM's attribute store looked up by `probe`.
    #[inline(always)]
    pub(crate) fn probe_in_by(
        &self,
        slot: &Memslot,
        gfn: Gfn,
        probe: impl Fn(&A, Gfn) -> Probe,
    ) -> Probe {
        if self.check.mode() == AttrMode::PerVm {
            return probe(&self.attrs, gfn);
        }
        self.probe_in_file(slot, gfn)
    }

    /// [`Tracker::probe_in`] where each guest_memfd keeps PRIVATE: out of line, so that the
    /// per-VM fault path stays one inlined descent of the store.
    #[inline(never)]
    fn probe_in_file(&self, slot: &Memslot, gfn: Gfn) -> Probe {
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
            GfnRange::new(Gfn(s), Gfn(s + level.pages()))
        })
    }

    /// The kind every gfn of `range` has, if they share one, read from wherever PRIVATE is
    /// kept. Per guest_memfd: one range check per memslot the range crosses, gfns outside
    /// memslots or files being shared.
    pub fn uniform_kind(&self, range: GfnRange) -> Option<Kind> {
        if self.check.mode() == AttrMode::PerVm {
            return self.attrs.uniform(range).map(Kind::from_attributes);
        }
        let mut kind = None;
        let mut same = true;
        self.for_each_piece(range, |gfns, file| {
            let piece = match file {
                Some((gmem, page)) => {
                    let pages = GfnRange::new(Gfn(page), Gfn(page + gfns.len()));
                    gmem.attrs().uniform(pages).map(Kind::from_attributes)
                }
                None => Some(Kind::Shared),
            };
            same &= piece.is_some() && (kind.is_none() || kind == piece);
            kind = piece;
            same
        });
        kind.filter(|_| same)
    }

    /// Calls `f` on each run of one kind in `range`, in address order (runs that meet at a
    /// memslot boundary may come as two), read from wherever PRIVATE is kept.
    pub fn for_each_kind_run(&self, range: GfnRange, mut f: impl FnMut(GfnRange, Kind)) {
        if self.check.mode() == AttrMode::PerVm {
            for r in self.attrs.runs(range) {
                f(r.range(), Kind::from_attributes(r.attributes));
            }
            return;
        }
        self.for_each_piece(range, |gfns, file| {
            match file {
                Some((gmem, page)) => {
                    for r in gmem
                        .attrs()
                        .runs(GfnRange::new(Gfn(page), Gfn(page + gfns.len())))
                    {
                        let start = gfns.start + (r.start.0 - page);
                        let run = GfnRange::new(start, start + r.range().len());
                        f(run, Kind::from_attributes(r.attributes));
                    }
                }
                None => f(gfns, Kind::Shared),
            }
            true
        });
    }

    /// Splits `range` into pieces that lie in one memslot or between memslots, each with the
    /// file and file page behind its first gfn (`None`: no file, all shared), while `f` says
    /// go on.
    fn for_each_piece(
        &self,
        range: GfnRange,
        mut f: impl FnMut(GfnRange, Option<(&Gmem<A>, u64)>) -> bool,
    ) {
        let range = range.gfns();
        let mut g = range.start;
        while g < range.end {
            let (end, file) = match self.slot_for_gfn(Gfn(g)) {
                Some(s) => {
                    let end = range.end.min(s.base_gfn + s.npages);
                    let file = self
                        .bound(s)
                        .map(|(gmem, first)| (gmem, first + (g - s.base_gfn)));
                    (end, file)
                }
                None => {
                    let next = self.slots.partition_point(|s| s.base_gfn <= g);
                    let end = self.slots.get(next).map_or(range.end, |s| s.base_gfn);
                    (range.end.min(end), None)
                }
            };
            if !f(GfnRange::new(Gfn(g), Gfn(end)), file) {
                return;
            }
            g = end;
        }
    }

    /// The maximal runs of private gfns in address order, from wherever PRIVATE is kept (per
    /// guest_memfd: each memslot's file pages seen through its binding, runs that meet at a
    /// memslot boundary joined).
    pub fn private_runs(&self) -> impl Iterator<Item = AttrRun> + '_ {
        let per_vm = (self.check.mode() == AttrMode::PerVm).then(|| self.nonzero_runs());
        let per_gmem = (self.check.mode() == AttrMode::PerGmem).then(|| {
            self.slots.iter().flat_map(move |s| {
                let bound = self.bound(s);
                bound.into_iter().flat_map(move |(gmem, first)| {
                    gmem.attrs()
                        .runs(GfnRange::new(Gfn(first), Gfn(first + s.npages)))
                        .filter(|r| r.attributes != 0)
                        .map(move |r| AttrRun {
                            start: Gfn(s.base_gfn + (r.start.0 - first)),
                            end: Gfn(s.base_gfn + (r.end.0 - first)),
                            attributes: r.attributes,
                        })
                })
            })
        });
        Joined {
            runs: per_vm
                .into_iter()
                .flatten()
                .chain(per_gmem.into_iter().flatten())
                .peekable(),
        }
    }

    /// Large pages of `level` wholly inside `slot` whose pages are not all of one kind.
    pub(crate) fn mixed_in(&self, slot: &Memslot, level: Level) -> u64 {
        if level == Level::K4 {
            return 0;
        }
        if self.check.mode() == AttrMode::PerVm {
            return self.attrs.mixed_pages(slot.range(), level);
        }
        let Some((gmem, first)) = self.bound(slot) else {
            return 0;
        };
        if first.wrapping_sub(slot.base_gfn) % level.pages() == 0 {
            let range = GfnRange::new(Gfn(first), Gfn(first + slot.npages));
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

/// Runs with adjacent equal neighbours joined.
struct Joined<I: Iterator<Item = AttrRun>> {
    runs: core::iter::Peekable<I>,
}

impl<I: Iterator<Item = AttrRun>> Iterator for Joined<I> {
    type Item = AttrRun;

    fn next(&mut self) -> Option<AttrRun> {
        let mut run = self.runs.next()?;
        while let Some(next) = self
            .runs
            .next_if(|n| n.start == run.end && n.attributes == run.attributes)
        {
            run.end = next.end;
        }
        Some(run)
    }
}

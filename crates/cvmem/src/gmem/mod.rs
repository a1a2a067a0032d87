//! Attributes per guest_memfd: in-place conversion's model of PRIVATE (queued for Linux 7.4).
//!
//! With `kvm.gmem_in_place_conversion`, PRIVATE is kept by each guest_memfd, keyed by file
//! offset, and changed with `KVM_SET_MEMORY_ATTRIBUTES2` on the guest_memfd's fd (facts in
//! `FACTS.md`, "Where the kernel stands at the end of 2026"). The contract modelled here:
//!
//! - offset and size page aligned, size non-zero, the range inside the file, only PRIVATE, no
//!   flags — else `EINVAL`, nothing changed;
//! - a range that already has the attributes returns at once (nothing to do);
//! - shared → private is refused with `EAGAIN` and `error_offset` = the first page of the range
//!   still referenced elsewhere (the host holds a reference on a shared page: a pin, a mapping
//!   in use), nothing changed;
//! - private → shared needs no reference check;
//! - `ENOMEM` leaves everything as it was.
//!
//! The store is the tracker's own attribute store ([`AttrStore`]), keyed by page index instead
//! of gfn: a file of any size costs what its non-uniform parts cost. References are host-side
//! state (the VMM's pins), kept per page while non-zero.

mod folio;
mod record;

use alloc::collections::BTreeMap;

pub use folio::{FolioCounts, Folios, MergePolicy};
pub use record::{FileRecord, IndexRun, PageRefs};

use crate::addr::{Gfn, GfnRange, Level, PAGE_SHIFT, PAGE_SIZE};
use crate::attrs::{AttrBackend, AttrStore};
use crate::error::{Arg, Error, Result};
use crate::tracker::Kind;
use crate::KVM_MEMORY_ATTRIBUTE_PRIVATE;

/// A byte offset into a guest_memfd file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GmemOffset(pub u64);

/// The number, in hex (`{:#x}` prints `0x…`).
impl core::fmt::LowerHex for GmemOffset {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::LowerHex::fmt(&self.0, f)
    }
}

impl GmemOffset {
    /// The index of the page holding this offset.
    pub const fn page(self) -> u64 {
        self.0 >> PAGE_SHIFT
    }
}

/// A guest_memfd of a [`Tracker`](crate::Tracker) (its file descriptor, to KVM).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GmemId(pub u32);

/// A memslot's guest_memfd range: the file and the offset of the slot's first page in it
/// (KVM_SET_USER_MEMORY_REGION2's `guest_memfd` and `guest_memfd_offset`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GmemBinding {
    /// The file.
    pub gmem: GmemId,
    /// Where the slot's first page is in it (page aligned).
    pub offset: GmemOffset,
}

/// Where a VM keeps PRIVATE (`kvm.gmem_in_place_conversion`; the two are exclusive).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum AttrMode {
    /// Per VM, by gfn, with `KVM_SET_MEMORY_ATTRIBUTES` (every kernel up to 7.3).
    #[default]
    PerVm,
    /// Per guest_memfd, by file offset, with `KVM_SET_MEMORY_ATTRIBUTES2` on the file
    /// (in-place conversion, queued for 7.4): a gfn is private when its memslot's guest_memfd
    /// page is.
    PerGmem,
}

/// `GUEST_MEMFD_FLAG_*` of `KVM_CREATE_GUEST_MEMFD` that the attribute model depends on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GmemFlags {
    /// `GUEST_MEMFD_FLAG_MMAP`: the host may map (shared) pages of the file.
    pub mmap: bool,
    /// `GUEST_MEMFD_FLAG_INIT_SHARED`: every page starts shared (else private).
    pub init_shared: bool,
    /// The folio size backing the file: 4K (order-0 pages, every kernel up to 7.3), or 2M or
    /// 1G HugeTLB pages (the guest_memfd HugeTLB series); the size must be a multiple of it.
    #[cfg_attr(feature = "serde", serde(default))]
    pub folio: Level,
}

/// One guest_memfd's PRIVATE attribute and the references the host holds on its pages.
///
/// PRIVATE is kept in `S`: the core's [`AttrStore`], or a store shared by the copies of a
/// concurrent front (written by the front, once: see [`Gmem::split_for_store`]).
#[derive(Clone, Debug)]
pub struct Gmem<S = AttrStore> {
    size: u64,
    flags: GmemFlags,
    /// PRIVATE per page index.
    attrs: S,
    /// References the host holds on a page (index → count), only while non-zero.
    refs: BTreeMap<u64, u32>,
    /// The backing folios.
    folios: Folios,
    /// When split folios merge.
    merge: MergePolicy,
}

impl Gmem {
    /// A guest_memfd of `size` bytes (page aligned, non-zero), all shared with
    /// [`GmemFlags::init_shared`], else all private.
    pub fn new(size: u64, flags: GmemFlags) -> Result<Self> {
        Self::check(size, flags)?;
        let mut attrs = AttrStore::new();
        if !flags.init_shared {
            attrs.set(
                GfnRange::new(Gfn(0), Gfn(size / PAGE_SIZE)),
                KVM_MEMORY_ATTRIBUTE_PRIVATE,
            )?;
        }
        Ok(Gmem {
            size,
            flags,
            attrs,
            refs: BTreeMap::new(),
            folios: Folios::new(flags.folio),
            merge: MergePolicy::default(),
        })
    }

    /// The checks [`Gmem::new`] makes of a file's size and flags, without making the file.
    pub fn check(size: u64, flags: GmemFlags) -> Result<()> {
        if size == 0 {
            return Err(Error::ZeroSize {
                what: Arg::GmemSize,
            });
        }
        if size % flags.folio.size() != 0 {
            return Err(Error::Unaligned {
                what: Arg::GmemSize,
                value: size,
                align: flags.folio.size(),
            });
        }
        Ok(())
    }
}

impl<S: AttrBackend> Gmem<S> {
    /// The same file with its PRIVATE store made by `f` from this one (folios, references and
    /// policy move as they are).
    pub fn map_store<T>(self, f: impl FnOnce(S) -> Result<T>) -> Result<Gmem<T>> {
        Ok(Gmem {
            size: self.size,
            flags: self.flags,
            attrs: f(self.attrs)?,
            refs: self.refs,
            folios: self.folios,
            merge: self.merge,
        })
    }

    /// The same file merging split folios by `policy` (default [`MergePolicy::OnPunchHole`]).
    pub fn with_merge_policy(mut self, policy: MergePolicy) -> Self {
        self.merge = policy;
        self
    }

    /// Bytes of private memory in whole 1G folios, whole 2M folios and 4K pages (`[4K, 2M,
    /// 1G]`): what can be mapped huge. One step per 1G folio of a private run, one per 2M folio
    /// of a split 1G folio, never per 4K page.
    pub fn private_by_folio(&self) -> [u64; 3] {
        let mut bytes = [0u64; 3];
        let whole = GfnRange::new(Gfn(0), Gfn(self.size / PAGE_SIZE));
        for run in self.attrs.runs(whole).filter(|r| r.attributes != 0) {
            let mut p = run.start.0;
            while p < run.end.0 {
                let level = self.folios.level_at(p);
                let folio_end = (p / level.pages() + 1) * level.pages();
                let end = if level == Level::K4 {
                    // 4K pages up to the next folio that may be huge.
                    run.end.0.min((p / 512 + 1) * 512)
                } else {
                    folio_end.min(run.end.0)
                };
                // A folio counts as huge only if the run covers it whole.
                let huge = level > Level::K4 && p % level.pages() == 0 && end == folio_end;
                let at = if huge { level.index() } else { 0 };
                bytes[at] += (end - p) * PAGE_SIZE;
                p = end;
            }
        }
        bytes
    }

    /// When split folios merge.
    pub const fn merge_policy(&self) -> MergePolicy {
        self.merge
    }

    /// The backing folios.
    pub fn folios(&self) -> &Folios {
        &self.folios
    }

    /// The largest mapping of file page `page` at `gfn` that its folio allows: the folio's size,
    /// lowered until gfn and page are congruent modulo it.
    #[inline]
    pub fn folio_cap(&self, page: u64, gfn: Gfn) -> Level {
        let mut level = self.folios.level_at(page);
        while page.wrapping_sub(gfn.0) % level.pages() != 0 {
            level = level.smaller().unwrap_or(Level::K4);
        }
        level
    }

    /// `fallocate(PUNCH_HOLE)` on `[offset, offset + size)`: the pages are freed (their kind
    /// stays); a split folio wholly inside whose pages share one kind is whole again, unless
    /// the policy is [`MergePolicy::Never`]. EINVAL for a range not page aligned, empty or
    /// past the file.
    pub fn punch_hole(&mut self, offset: GmemOffset, size: u64) -> Result<()> {
        let pages = self.pages(offset, size)?;
        if self.merge == MergePolicy::Never {
            return Ok(());
        }
        let attrs = &self.attrs;
        self.folios
            .merge(pages, true, |r| attrs.uniform(r).is_some())
    }

    /// The file's size in bytes.
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// The flags it was created with.
    pub const fn flags(&self) -> GmemFlags {
        self.flags
    }

    /// The kind of the page holding `offset` (inside the file).
    pub fn kind(&self, offset: GmemOffset) -> Kind {
        Kind::from_private(self.attrs.is_private(Gfn(offset.page())))
    }

    /// The kind of every page of `[offset, offset + size)` if they share one.
    pub fn uniform(&self, offset: GmemOffset, size: u64) -> Option<Kind> {
        let range = self.pages(offset, size).ok()?;
        self.attrs.uniform(range).map(Kind::from_attributes)
    }

    /// The PRIVATE store, by page index.
    pub fn attrs(&self) -> &S {
        &self.attrs
    }

    /// References the host holds on the page at `offset`.
    pub fn references(&self, offset: GmemOffset) -> u32 {
        self.refs.get(&offset.page()).copied().unwrap_or(0)
    }

    /// `KVM_SET_MEMORY_ATTRIBUTES2` on this guest_memfd: makes `[offset, offset + size)`
    /// private (`attributes` = PRIVATE) or shared (0). `Ok(false)` when the range had them
    /// already. Refused, with nothing changed: `EINVAL` for a bad request,
    /// [`Error::PageReferenced`] (`EAGAIN`, its `offset` the kernel's `error_offset`) when a
    /// shared page of the range is referenced elsewhere, `ENOMEM`.
    pub fn set_memory_attributes2(
        &mut self,
        offset: GmemOffset,
        size: u64,
        attributes: u64,
        flags: u64,
    ) -> Result<bool> {
        match self.check_attributes2(offset, size, attributes, flags)? {
            Some(pages) => self.store(pages, attributes),
            None => Ok(false),
        }
    }

    /// What [`Gmem::set_memory_attributes2`] would do, without doing it: the pages that change
    /// (`None`: the range has the attributes already), or why it is refused. The one place the
    /// contract is checked.
    pub fn check_attributes2(
        &self,
        offset: GmemOffset,
        size: u64,
        attributes: u64,
        flags: u64,
    ) -> Result<Option<GfnRange>> {
        if flags != 0 {
            return Err(Error::ReservedBits {
                what: Arg::GmemFlags,
                bits: flags,
            });
        }
        if attributes & !KVM_MEMORY_ATTRIBUTE_PRIVATE != 0 {
            return Err(Error::UnsupportedAttributes {
                attributes,
                supported: KVM_MEMORY_ATTRIBUTE_PRIVATE,
            });
        }
        let range = self.pages(offset, size)?;
        if self.attrs.uniform(range) == Some(attributes) {
            return Ok(None);
        }
        if attributes != 0 {
            // Shared → private: every page must be the guest's alone.
            if let Some((&page, _)) = self.refs.range(range.gfns()).next() {
                return Err(Error::PageReferenced {
                    offset: page << PAGE_SHIFT,
                });
            }
        }
        Ok(Some(range))
    }

    /// Stores `attributes` on pages a [`Gmem::check_attributes2`] of this state returned, in
    /// the three steps of the one rule: [`split_for_store`](Self::split_for_store), the store,
    /// [`merge_after_store`](Self::merge_after_store).
    pub(crate) fn store(&mut self, pages: GfnRange, attributes: u64) -> Result<bool> {
        self.attrs.check_writable()?;
        self.split_for_store(pages, attributes)?;
        let changed = self.attrs.set(pages, attributes)?;
        self.merge_after_store(pages)?;
        Ok(changed)
    }

    /// Before `attributes` are stored on `pages`: the folios the change cuts split (read from
    /// the attributes as they are). A front that stores PRIVATE itself, once, for several
    /// copies of the file calls this on each copy before the store — the copies then agree,
    /// as every one reads the same attributes. On `NoMemory` a split already made stands (it
    /// changes no page's kind).
    pub fn split_for_store(&mut self, pages: GfnRange, attributes: u64) -> Result<()> {
        let attrs = &self.attrs;
        self.folios
            .cut(pages, |r| attrs.uniform(r) != Some(attributes))
    }

    /// After attributes were stored on `pages`: under [`MergePolicy::Eager`] the split folios
    /// the change made whole in kind (and unreferenced) merge (read from the attributes as
    /// they now are). The other half of [`split_for_store`](Self::split_for_store).
    pub fn merge_after_store(&mut self, pages: GfnRange) -> Result<()> {
        if self.merge != MergePolicy::Eager {
            return Ok(());
        }
        let (attrs, refs) = (&self.attrs, &self.refs);
        self.folios.merge(pages, false, |r| {
            attrs.uniform(r).is_some() && refs.range(r.gfns()).next().is_none()
        })
    }

    /// Takes a reference on the shared page at `offset` (the host maps or pins it). Refused
    /// (`EINVAL`) for a private page or an offset outside the file.
    pub fn get_page(&mut self, offset: GmemOffset) -> Result<()> {
        let range = self.pages(GmemOffset(offset.page() << PAGE_SHIFT), PAGE_SIZE)?;
        if self.attrs.is_private(range.start) {
            return Err(Error::PrivatePage {
                offset: offset.0 & !(PAGE_SIZE - 1),
            });
        }
        let count = self.refs.entry(range.start.0).or_insert(0);
        *count = count.checked_add(1).ok_or(Error::Overflow {
            what: Arg::GmemOffset,
            start: offset.0,
            size: PAGE_SIZE,
        })?;
        Ok(())
    }

    /// Drops a reference [`Gmem::get_page`] took. Refused (`EINVAL`) when the page holds none.
    pub fn put_page(&mut self, offset: GmemOffset) -> Result<()> {
        let page = offset.page();
        match self.refs.get_mut(&page) {
            Some(1) => {
                self.refs.remove(&page);
                Ok(())
            }
            Some(count) => {
                *count -= 1;
                Ok(())
            }
            None => Err(Error::NotReferenced {
                offset: page << PAGE_SHIFT,
            }),
        }
    }

    /// Bytes of heap memory held: the attribute store exactly, the reference counts estimated
    /// (a B-tree's nodes are at least half full, so at most twice an entry's size each).
    pub fn heap_bytes(&self) -> usize {
        let per_entry = core::mem::size_of::<(u64, u32)>() * 2;
        self.attrs.heap_bytes() + self.refs.len() * per_entry + self.folios.heap_bytes()
    }

    /// The pages of `[offset, offset + size)`, checked: page aligned, non-empty, inside the
    /// file (EINVAL otherwise).
    pub fn check_range(&self, offset: GmemOffset, size: u64) -> Result<GfnRange> {
        self.pages(offset, size)
    }

    /// The pages of `[offset, offset + size)`, checked: page aligned, non-empty, inside the file.
    fn pages(&self, offset: GmemOffset, size: u64) -> Result<GfnRange> {
        for (what, value) in [(Arg::GmemOffset, offset.0), (Arg::GmemSize, size)] {
            if value % PAGE_SIZE != 0 {
                return Err(Error::Unaligned {
                    what,
                    value,
                    align: PAGE_SIZE,
                });
            }
        }
        if size == 0 {
            return Err(Error::ZeroSize {
                what: Arg::GmemSize,
            });
        }
        match offset.0.checked_add(size) {
            Some(end) if end <= self.size => {
                Ok(GfnRange::new(Gfn(offset.page()), Gfn(end >> PAGE_SHIFT)))
            }
            _ => Err(Error::OutsideFile {
                offset: offset.0,
                size,
                file_size: self.size,
            }),
        }
    }
}

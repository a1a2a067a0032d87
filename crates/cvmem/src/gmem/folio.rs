//! Huge folios of a guest_memfd: the backing order of each range of the file as state.
//!
//! A HugeTLB-backed file (2M or 1G pages; the guest_memfd HugeTLB series, not merged in 7.3)
//! starts with every folio whole. A conversion that cuts a folio — changes part of it — splits
//! it: a 1G folio into 2M folios, and a 2M folio the change still cuts into 4K pages. A split
//! folio whose pages are of one kind again may merge back, by [`MergePolicy`]. No mapping is
//! larger than its folio ([`Folios::level_at`]).
//!
//! Split marks are kept in two [`AttrStore`]s keyed by 2M and 1G folio index (PRIVATE meaning
//! split): a file costs what its split parts cost, never more than a bitmap of its huge pages.

use crate::addr::{Gfn, GfnRange, Level};
use crate::attrs::AttrStore;
use crate::error::Result;
/// The mark of a split folio in the split stores.
pub(super) use crate::KVM_MEMORY_ATTRIBUTE_PRIVATE as SPLIT;

/// When a split huge folio becomes whole again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum MergePolicy {
    /// Never: a split folio stays split while the file lives.
    Never,
    /// When the whole folio is punched out (`fallocate(PUNCH_HOLE)`) and its pages share one
    /// kind: the next allocation is huge again (the HugeTLB series).
    #[default]
    OnPunchHole,
    /// As soon as its pages share one kind and the host holds no reference in it, and on
    /// punch-hole as above.
    Eager,
}

impl MergePolicy {
    /// The name: `never`, `punch-hole`, `eager`.
    pub const fn name(self) -> &'static str {
        match self {
            MergePolicy::Never => "never",
            MergePolicy::OnPunchHole => "punch-hole",
            MergePolicy::Eager => "eager",
        }
    }
    /// Parses a name.
    pub fn from_name(s: &str) -> Option<MergePolicy> {
        [Self::Never, Self::OnPunchHole, Self::Eager]
            .into_iter()
            .find(|p| p.name() == s)
    }
}

/// Splits and merges so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FolioCounts {
    /// Folios split (a 1G folio into 2M ones, a 2M folio into 4K pages).
    pub splits: u64,
    /// Folios merged back.
    pub merges: u64,
}

/// The folios of one file.
#[derive(Clone, Debug)]
pub struct Folios {
    order: Level,
    split_2m: AttrStore,
    split_1g: AttrStore,
    counts: FolioCounts,
}

const M2: u64 = 512;
const G1: u64 = 512 * 512;

impl Folios {
    /// Every folio whole at `order` (4K: order-0 pages, nothing to split).
    pub(crate) const fn new(order: Level) -> Self {
        Folios {
            order,
            split_2m: AttrStore::new(),
            split_1g: AttrStore::new(),
            counts: FolioCounts {
                splits: 0,
                merges: 0,
            },
        }
    }

    /// The split marks: per 2M folio, per 1G folio (for save/restore).
    pub(crate) fn split_stores(&self) -> (&AttrStore, &AttrStore) {
        (&self.split_2m, &self.split_1g)
    }

    /// Folios of `order` with these split marks (checked by the caller); no splits or merges
    /// counted yet.
    pub(crate) fn restored(order: Level, split_2m: AttrStore, split_1g: AttrStore) -> Self {
        Folios {
            order,
            split_2m,
            split_1g,
            counts: FolioCounts::default(),
        }
    }

    /// The file's huge page size.
    pub const fn order(&self) -> Level {
        self.order
    }

    /// Splits and merges so far.
    pub const fn counts(&self) -> FolioCounts {
        self.counts
    }

    /// The size of the folio holding file page `page`.
    #[inline]
    pub fn level_at(&self, page: u64) -> Level {
        if self.order == Level::G1 && !self.split_1g.is_private(Gfn(page / G1)) {
            return Level::G1;
        }
        if self.order >= Level::M2 && !self.split_2m.is_private(Gfn(page / M2)) {
            return Level::M2;
        }
        Level::K4
    }

    /// Heap bytes of the split marks.
    pub fn heap_bytes(&self) -> usize {
        self.split_2m.heap_bytes() + self.split_1g.heap_bytes()
    }

    /// Before `pages` change kind: splits every folio the range cuts (only the folios holding
    /// its first and last page can be cut) where `changes` says the part in the range changes.
    /// On `NoMemory` a split already made stands (it changes no page's kind).
    pub(crate) fn cut(
        &mut self,
        pages: GfnRange,
        changes: impl Fn(GfnRange) -> bool,
    ) -> Result<()> {
        let edges = [pages.start.0, pages.end.0 - 1];
        let mut split_1g = [None; 2];
        let mut split_2m = [None; 2];
        if self.order == Level::G1 {
            for (i, &p) in edges.iter().enumerate() {
                let f = p / G1;
                if Self::cuts(pages, f, G1, &changes) && !self.split_1g.is_private(Gfn(f)) {
                    split_1g[i] = Some(f);
                }
            }
        }
        if self.order >= Level::M2 {
            for (i, &p) in edges.iter().enumerate() {
                let f = p / M2;
                // A 2M folio exists where the file is 2M, or its 1G folio is (or is being) split.
                let in_split_1g = self.order == Level::M2
                    || self.split_1g.is_private(Gfn(p / G1))
                    || split_1g.contains(&Some(p / G1));
                if in_split_1g
                    && Self::cuts(pages, f, M2, &changes)
                    && !self.split_2m.is_private(Gfn(f))
                {
                    split_2m[i] = Some(f);
                }
            }
        }
        if split_1g[0] == split_1g[1] {
            split_1g[1] = None;
        }
        if split_2m[0] == split_2m[1] {
            split_2m[1] = None;
        }
        for f in split_1g.into_iter().flatten() {
            self.split_1g.set(GfnRange::from_len(Gfn(f), 1), SPLIT)?;
            self.counts.splits += 1;
        }
        for f in split_2m.into_iter().flatten() {
            self.split_2m.set(GfnRange::from_len(Gfn(f), 1), SPLIT)?;
            self.counts.splits += 1;
        }
        Ok(())
    }

    /// Whether `pages` changes part, not all, of folio `f` of `size` pages.
    fn cuts(pages: GfnRange, f: u64, size: u64, changes: &impl Fn(GfnRange) -> bool) -> bool {
        let folio = GfnRange::new(Gfn(f * size), Gfn((f + 1) * size));
        !pages.covers(&folio) && folio.intersect(&pages).is_some_and(changes)
    }

    /// Merges the split folios that meet `pages` (with `inside`: that lie wholly inside it)
    /// whose pages `whole` says may be one folio again: 2M folios first, then the 1G folios
    /// whose 2M folios are all whole.
    pub(crate) fn merge(
        &mut self,
        pages: GfnRange,
        inside: bool,
        whole: impl Fn(GfnRange) -> bool,
    ) -> Result<()> {
        if self.order == Level::K4 {
            return Ok(());
        }
        let folios = |size: u64| {
            if inside {
                GfnRange::new(Gfn(pages.start.0.div_ceil(size)), Gfn(pages.end.0 / size))
            } else {
                GfnRange::new(Gfn(pages.start.0 / size), Gfn(pages.end.0.div_ceil(size)))
            }
        };
        let units = folios(M2);
        let split: alloc::vec::Vec<GfnRange> = self
            .split_2m
            .runs(units)
            .filter(|r| r.attributes != 0)
            .map(|r| r.range())
            .collect();
        for run in split {
            for f in run.gfns() {
                if whole(GfnRange::new(Gfn(f * M2), Gfn((f + 1) * M2))) {
                    self.split_2m.set(GfnRange::from_len(Gfn(f), 1), 0)?;
                    self.counts.merges += 1;
                }
            }
        }
        if self.order == Level::G1 {
            let gigs = folios(G1);
            for f in gigs.gfns() {
                let folio = GfnRange::new(Gfn(f * G1), Gfn((f + 1) * G1));
                let no_4k = self.split_2m.uniform(GfnRange::from_len(Gfn(f * 512), 512)) == Some(0);
                if self.split_1g.is_private(Gfn(f)) && no_4k && whole(folio) {
                    self.split_1g.set(GfnRange::from_len(Gfn(f), 1), 0)?;
                    self.counts.merges += 1;
                }
            }
        }
        Ok(())
    }
}

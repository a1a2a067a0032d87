//! A guest_memfd's state for save/restore: its PRIVATE runs, split folios and references, as
//! runs of page (or folio) indices, so that a record costs what the file's non-uniform parts
//! cost. Restoring is hostile input (see [`crate::snapshot`]): every run is checked in order as
//! it comes, and the file is built aside.

use alloc::vec::Vec;

use super::folio::{Folios, SPLIT};
use super::{Gmem, GmemFlags, MergePolicy};
use crate::addr::{Gfn, GfnRange, Level};
use crate::attrs::{AttrBackend, AttrStore};
use crate::error::{Error, Result, SnapshotFault};
use crate::KVM_MEMORY_ATTRIBUTE_PRIVATE;

/// Indices `[start, end)`: file pages, or 2M or 1G folios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct IndexRun {
    /// First index.
    pub start: u64,
    /// One past the last.
    pub end: u64,
}

/// References the host holds on one shared page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct PageRefs {
    /// The file page.
    pub page: u64,
    /// How many (at least one).
    pub count: u32,
}

/// One guest_memfd of a [`TrackerSnapshot`](crate::TrackerSnapshot).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct FileRecord {
    /// Size in bytes.
    pub size: u64,
    /// The flags it was created with (its folio size among them).
    pub flags: GmemFlags,
    /// When its split folios merge.
    pub merge: MergePolicy,
    /// Runs of private pages, in order.
    pub private: Vec<IndexRun>,
    /// Runs of split 1G folios, in order (1G files only).
    pub split_1g: Vec<IndexRun>,
    /// Runs of split 2M folios, in order (inside split 1G folios of a 1G file).
    pub split_2m: Vec<IndexRun>,
    /// References on shared pages, by page.
    pub references: Vec<PageRefs>,
}

fn marked(store: &impl AttrBackend, end: u64) -> Vec<IndexRun> {
    store
        .runs(GfnRange::new(Gfn(0), Gfn(end)))
        .filter(|r| r.attributes != 0)
        .map(|r| IndexRun {
            start: r.start.0,
            end: r.end.0,
        })
        .collect()
}

/// Stores `runs` (in order, inside `[0, end)`) as marked in a fresh store.
fn restore_runs(runs: &[IndexRun], end: u64, mark: u64) -> Result<AttrStore> {
    let bad = Error::BadSnapshot {
        why: SnapshotFault::FileRecord,
    };
    let mut store = AttrStore::new();
    let mut last = 0;
    for r in runs {
        if r.start >= r.end || r.start < last || r.end > end {
            return Err(bad);
        }
        last = r.end;
        store.set(GfnRange::new(Gfn(r.start), Gfn(r.end)), mark)?;
    }
    Ok(store)
}

impl<S: AttrBackend> Gmem<S> {
    /// The file's state as a record.
    pub fn record(&self) -> FileRecord {
        let pages = self.size / crate::PAGE_SIZE;
        let (split_2m, split_1g) = self.folios.split_stores();
        FileRecord {
            size: self.size,
            flags: self.flags,
            merge: self.merge,
            private: marked(&self.attrs, pages),
            split_1g: marked(split_1g, pages.div_ceil(Level::G1.pages())),
            split_2m: marked(split_2m, pages.div_ceil(Level::M2.pages())),
            references: self
                .refs
                .iter()
                .map(|(&page, &count)| PageRefs { page, count })
                .collect(),
        }
    }
}

impl Gmem {
    /// The file `record` describes, checked: runs in order inside the file, split folios only
    /// of the file's folio size or inside split 1G folios, references only on shared pages.
    /// O(record) time and memory, whatever the file's size.
    pub fn from_record(record: &FileRecord) -> Result<Gmem> {
        let bad = || Error::BadSnapshot {
            why: SnapshotFault::FileRecord,
        };
        let flags = GmemFlags {
            init_shared: true,
            ..record.flags
        };
        let mut gmem = Gmem::new(record.size, flags)?.with_merge_policy(record.merge);
        gmem.flags = record.flags;
        let pages = record.size / crate::PAGE_SIZE;
        gmem.attrs = restore_runs(&record.private, pages, KVM_MEMORY_ATTRIBUTE_PRIVATE)?;
        let order = record.flags.folio;
        let split_1g = restore_runs(&record.split_1g, pages / Level::G1.pages(), SPLIT)?;
        let split_2m = restore_runs(&record.split_2m, pages / Level::M2.pages(), SPLIT)?;
        let ok_1g = order == Level::G1 || record.split_1g.is_empty();
        let ok_2m = order >= Level::M2 || record.split_2m.is_empty();
        // A 2M folio of a 1G file exists only inside a split 1G folio.
        let inside = order != Level::G1
            || record.split_2m.iter().all(|r| {
                let g = Level::G1.pages() / Level::M2.pages();
                split_1g.uniform(GfnRange::new(Gfn(r.start / g), Gfn((r.end - 1) / g + 1)))
                    == Some(SPLIT)
            });
        if !(ok_1g && ok_2m && inside) {
            return Err(bad());
        }
        gmem.folios = Folios::restored(order, split_2m, split_1g);
        let mut last = None;
        for r in &record.references {
            let shared = r.page < pages && !gmem.attrs.is_private(Gfn(r.page));
            if r.count == 0 || !shared || last.is_some_and(|l| l >= r.page) {
                return Err(bad());
            }
            last = Some(r.page);
            gmem.refs.insert(r.page, r.count);
        }
        Ok(gmem)
    }
}

//! Save and restore of a [`Tracker`] for snapshots and live migration.
//!
//! A [`TrackerSnapshot`] is the tracker's state in its smallest form: the memslots, the runs of
//! non-zero attributes (a boot-like guest has a handful, a fragmented one one per boundary —
//! never more than the tracker itself holds), and the large pages with GUEST_INHIBIT. The rest
//! of the large-page info (mixed counts) is derived again on restore, never trusted from the
//! snapshot. With the `serde` feature it serialises with any serde format; `version` lets a
//! newer cvmem refuse (or convert) an older layout.
//!
//! A snapshot is hostile input (it crosses a migration): [`Tracker::restore`] costs time and
//! memory in proportion to the snapshot's size, never to the size of the memslots it names —
//! slots cost no memory per page, runs must come sorted (each is an append), GUEST_INHIBIT is
//! sparse (8 bytes a record, never more than a bitmap of the slot). It checks the order of runs
//! and records as it goes, rebuilds through the same operations a VMM would perform (memslot
//! creation, attribute changes, inhibits), and then checks that the result snapshots to
//! exactly the input: a snapshot that no tracker could have produced (overlapping runs,
//! unsupported attributes, inhibits outside memslots...) is refused with
//! [`Error::BadSnapshot`] or the operation's own error.
//!
//! No host virtual address is carried: a slot records only its host offset, `(uaddr - gpa)`
//! modulo 1 GiB, which is all that bounds its mapping level.
//!
//! Version 3 adds where PRIVATE is kept and the guest_memfd files ([`FileRecord`]: private
//! runs, split folios, references, by index) with each memslot's binding; a version 2 snapshot
//! (no files) is still read. Folio split and merge counters are statistics and start again.

use alloc::vec::Vec;

use crate::addr::{Gfn, GfnRange, Gpa, Level};
use crate::error::{Error, Result};
use crate::gmem::{AttrMode, FileRecord, Gmem, GmemBinding};
use crate::memslot::{MemoryRegion, SlotFlags};
use crate::tracker::Tracker;

/// The format version [`Tracker::snapshot`] writes and [`Tracker::restore`] reads (2: host
/// offsets instead of host addresses; 3: guest_memfd files and bindings, version 2 still read).
pub const SNAPSHOT_VERSION: u32 = 3;

/// The part of a slot's host address that bounds its mapping level: congruence modulo the
/// largest level.
const HOST_OFFSET_MASK: u64 = (1 << 30) - 1;

/// One memslot of a [`TrackerSnapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct SlotRecord {
    /// Slot id.
    pub id: u32,
    /// First byte.
    pub gpa: Gpa,
    /// Size in bytes.
    pub size: u64,
    /// Flags.
    pub flags: SlotFlags,
    /// `(uaddr - gpa)` modulo 1 GiB: how the host memory is aligned against the guest's,
    /// which limits huge mappings (the host address itself stays on the source).
    pub host_offset: u64,
    /// The largest mapping the host memory allows.
    pub backing: Level,
    /// The guest_memfd range bound to the slot (version 3).
    #[cfg_attr(feature = "serde", serde(default))]
    pub gmem: Option<GmemBinding>,
}

/// A run of gfns `[start, end)` with non-zero attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct RunRecord {
    /// First gfn.
    pub start: Gfn,
    /// One past the last gfn.
    pub end: Gfn,
    /// The attributes.
    pub attributes: u64,
}

impl RunRecord {
    /// The run's gfns.
    pub const fn range(&self) -> GfnRange {
        GfnRange::new(self.start, self.end)
    }
}

/// A large page with GUEST_INHIBIT: its first gfn and its level (2M or 1G).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct InhibitRecord {
    /// First gfn of the large page.
    pub gfn: Gfn,
    /// Its level.
    pub level: Level,
}

/// A tracker's state, for save/restore (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct TrackerSnapshot {
    /// [`SNAPSHOT_VERSION`] when written.
    pub version: u32,
    /// The attributes the tracker supports.
    pub supported_attributes: u64,
    /// The guest-physical address width (64: unlimited).
    pub gpa_bits: u32,
    /// Memslots in address order.
    pub memslots: Vec<SlotRecord>,
    /// Runs of non-zero attributes in address order (everything else is shared).
    pub runs: Vec<RunRecord>,
    /// Large pages with GUEST_INHIBIT, in address order per level (2M first).
    pub inhibited: Vec<InhibitRecord>,
    /// Where PRIVATE is kept (version 3; per VM before).
    #[cfg_attr(feature = "serde", serde(default))]
    pub attr_mode: AttrMode,
    /// The guest_memfd files, in id order (version 3).
    #[cfg_attr(feature = "serde", serde(default))]
    pub files: Vec<FileRecord>,
}

impl<A: crate::AttrBackend> Tracker<A> {
    /// The state of this tracker, for save/restore. O(slots + runs + inhibits).
    pub fn snapshot(&self) -> TrackerSnapshot {
        let memslots = self
            .memslots()
            .map(|s| SlotRecord {
                id: s.id(),
                gpa: s.gpa(),
                size: s.size(),
                flags: s.flags(),
                host_offset: s.uaddr().wrapping_sub(s.gpa().0) & HOST_OFFSET_MASK,
                backing: s.backing(),
                gmem: s.gmem(),
            })
            .collect();
        let runs = self
            .nonzero_runs()
            .map(|r| RunRecord {
                start: r.start,
                end: r.end,
                attributes: r.attributes,
            })
            .collect();
        let mut inhibited = Vec::new();
        for level in [Level::M2, Level::G1] {
            for s in self.memslots() {
                let gfns = s.lpage(level).inhibited_gfns();
                inhibited.extend(gfns.map(|gfn| InhibitRecord {
                    gfn: Gfn(gfn),
                    level,
                }));
            }
        }
        TrackerSnapshot {
            version: SNAPSHOT_VERSION,
            supported_attributes: self.supported_attributes(),
            gpa_bits: self.gpa_bits(),
            memslots,
            runs,
            inhibited,
            attr_mode: self.attr_mode(),
            files: self.gmems().map(|(_, g)| g.record()).collect(),
        }
    }
}

impl Tracker {
    /// A tracker in the state `snapshot` describes (see the module docs). Refuses another
    /// format version, and anything no tracker could have produced. Time and memory
    /// O(snapshot size); nothing is shared with any other tracker, so a refusal changes
    /// nothing.
    pub fn restore(snapshot: &TrackerSnapshot) -> Result<Tracker> {
        let files = !snapshot.files.is_empty() || snapshot.attr_mode != AttrMode::PerVm;
        let v2 =
            snapshot.version == 2 && !files && snapshot.memslots.iter().all(|s| s.gmem.is_none());
        if snapshot.version != SNAPSHOT_VERSION && !v2 {
            return Err(Error::BadSnapshot {
                why: crate::SnapshotFault::Version,
            });
        }
        let bad = |why| Err(Error::BadSnapshot { why });
        let mut t = Tracker::with_supported_attributes(snapshot.supported_attributes)
            .with_gpa_bits(snapshot.gpa_bits)
            .with_attr_mode(snapshot.attr_mode);
        for f in &snapshot.files {
            t.restore_gmem(Gmem::from_record(f)?)?;
        }
        for (i, s) in snapshot.memslots.iter().enumerate() {
            if i > 0 && snapshot.memslots[i - 1].gpa >= s.gpa {
                return bad(crate::SnapshotFault::SlotOrder);
            }
            if s.host_offset & !HOST_OFFSET_MASK != 0 || s.host_offset % crate::PAGE_SIZE != 0 {
                return bad(crate::SnapshotFault::HostOffset);
            }
            if s.gmem.is_some_and(|b| t.gmem(b.gmem).is_none()) {
                return bad(crate::SnapshotFault::Binding);
            }
            t.set_user_memory_region(&MemoryRegion {
                gmem: s.gmem,
                slot: s.id,
                gpa: s.gpa,
                size: s.size,
                flags: s.flags,
                uaddr: Some(s.gpa.0.wrapping_add(s.host_offset)),
                backing: Some(s.backing),
            })?;
        }
        let mut last_end = Gfn(0);
        for r in &snapshot.runs {
            if r.start >= r.end || r.start < last_end {
                return bad(crate::SnapshotFault::RunOrder);
            }
            last_end = r.end;
            t.set_range_attributes(GfnRange::new(r.start, r.end), r.attributes)?;
        }
        t.restore_inhibits(&snapshot.inhibited)?;
        let again = t.snapshot();
        let same = if v2 {
            TrackerSnapshot {
                version: 2,
                ..again
            } == *snapshot
        } else {
            again == *snapshot
        };
        if !same {
            return bad(crate::SnapshotFault::Unreachable);
        }
        Ok(t)
    }
}

impl<A: crate::AttrBackend> Tracker<A> {
    /// Gives exactly the large pages of `records` GUEST_INHIBIT: afterwards
    /// [`Tracker::snapshot`]'s `inhibited` is `records`. Each record must name the first gfn of
    /// a large page wholly inside a memslot, in the order `snapshot` writes them (2M first,
    /// then 1G; by address within each), else [`Error::BadSnapshot`]. All or nothing: the new
    /// bits are built aside, then swapped in. O(records + memslots). Returns whether a bit
    /// changed.
    pub fn restore_inhibits(&mut self, records: &[InhibitRecord]) -> Result<bool> {
        let mut fresh = self.fresh_inhibits()?;
        let mut last: Option<(Level, u64)> = None;
        for r in records {
            if r.level == Level::K4 || last.is_some_and(|l| l >= (r.level, r.gfn.0)) {
                return Err(Error::BadSnapshot {
                    why: crate::SnapshotFault::InhibitOrder,
                });
            }
            last = Some((r.level, r.gfn.0));
            if !self.add_inhibit(&mut fresh, r.gfn, r.level)? {
                return Err(Error::BadSnapshot {
                    why: crate::SnapshotFault::InhibitOutsideSlot,
                });
            }
        }
        Ok(self.swap_inhibits(fresh))
    }
}

#[cfg(feature = "mmu")]
impl crate::mmu::Vm {
    /// The tracker's state for save/restore (the page tables are not saved: after a restore
    /// every access faults in again, as after a migration). Refused with
    /// [`Error::ConversionInProgress`] (EBUSY) while a conversion is begun and not ended or
    /// aborted: the attributes of its range are about to change, and a snapshot of either
    /// side would lose the guest's request.
    pub fn snapshot(&self) -> Result<TrackerSnapshot> {
        match self.windows.len() {
            0 => Ok(self.tracker().snapshot()),
            count => Err(Error::ConversionInProgress { count }),
        }
    }
}

//! Save and restore of a [`Tracker`] for snapshots and live migration.
//!
//! A [`TrackerSnapshot`] is the tracker's state in its smallest form: the memslots, the runs of
//! non-zero attributes (a boot-like guest has a handful, a fragmented one one per boundary —
//! never more than the tracker itself holds), and the large pages with GUEST_INHIBIT. The rest
//! of the large-page info (mixed counts) is derived again on restore, never trusted from the
//! snapshot. With the `serde` feature it serialises with any serde format; `version` lets a
//! newer cvmem refuse (or convert) an older layout.
//!
//! [`Tracker::restore`] rebuilds a tracker from a snapshot through the same operations a VMM
//! would perform (memslot creation, attribute changes, inhibits) and then checks that the
//! result snapshots to exactly the input: a snapshot that no tracker could have produced
//! (overlapping runs, unsupported attributes, inhibits outside memslots...) is refused with
//! [`Error::BadSnapshot`] or the operation's own error.

use alloc::vec::Vec;

use crate::addr::{Gfn, GfnRange, Level};
use crate::error::{Error, Result};
use crate::memslot::{MemoryRegion, SlotFlags};
use crate::tracker::Tracker;

/// The format version [`Tracker::snapshot`] writes and [`Tracker::restore`] reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// One memslot of a [`TrackerSnapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SlotRecord {
    /// Slot id.
    pub id: u32,
    /// First byte.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Flags.
    pub flags: SlotFlags,
    /// Host address (its alignment against `gpa` limits huge mappings).
    pub uaddr: u64,
    /// The largest mapping the host memory allows.
    pub backing: Level,
}

/// A run of gfns `[start, end)` with non-zero attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RunRecord {
    /// First gfn.
    pub start: u64,
    /// One past the last gfn.
    pub end: u64,
    /// The attributes.
    pub attributes: u64,
}

/// A large page with GUEST_INHIBIT: its first gfn and its level (2M or 1G).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct InhibitRecord {
    /// First gfn of the large page.
    pub gfn: u64,
    /// Its level.
    pub level: Level,
}

/// A tracker's state, for save/restore (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
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
}

impl Tracker {
    /// The state of this tracker, for save/restore. O(slots + runs), plus one check per
    /// large page of the slots that have GUEST_INHIBIT bits.
    pub fn snapshot(&self) -> TrackerSnapshot {
        let memslots = self
            .memslots()
            .map(|s| SlotRecord {
                id: s.id(),
                gpa: s.gpa(),
                size: s.size(),
                flags: s.flags(),
                uaddr: s.uaddr(),
                backing: s.backing(),
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
            for s in self.memslots().filter(|s| s.any_inhibited(level)) {
                let range = s.range();
                let mut gfn = level.align_down(range.start);
                while gfn < range.end {
                    if self.is_guest_inhibited(Gfn(gfn.max(range.start)), level) {
                        inhibited.push(InhibitRecord { gfn, level });
                    }
                    gfn += level.pages();
                }
            }
        }
        TrackerSnapshot {
            version: SNAPSHOT_VERSION,
            supported_attributes: self.supported_attributes(),
            gpa_bits: self.gpa_bits(),
            memslots,
            runs,
            inhibited,
        }
    }

    /// A tracker in the state `snapshot` describes (see the module docs). Refuses another
    /// format version, and anything no tracker could have produced.
    pub fn restore(snapshot: &TrackerSnapshot) -> Result<Tracker> {
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(Error::BadSnapshot {
                why: "unknown format version",
            });
        }
        let mut t = Tracker::with_supported_attributes(snapshot.supported_attributes)
            .with_gpa_bits(snapshot.gpa_bits);
        for s in &snapshot.memslots {
            t.set_user_memory_region(&MemoryRegion {
                slot: s.id,
                gpa: s.gpa,
                size: s.size,
                flags: s.flags,
                uaddr: Some(s.uaddr),
                backing: Some(s.backing),
            })?;
        }
        for r in &snapshot.runs {
            if r.start >= r.end {
                return Err(Error::BadSnapshot {
                    why: "an empty or reversed run",
                });
            }
            t.set_range_attributes(GfnRange::new(r.start, r.end), r.attributes)?;
        }
        t.restore_inhibits(&snapshot.inhibited)?;
        if t.snapshot() != *snapshot {
            return Err(Error::BadSnapshot {
                why: "it does not describe a state a tracker can be in (unsorted, overlapping \
                      or adjacent equal runs, or inhibits outside memslots)",
            });
        }
        Ok(t)
    }
}

impl Tracker {
    /// Gives the large pages of `records` GUEST_INHIBIT, and clears it from those it leaves
    /// out: afterwards [`Tracker::snapshot`]'s `inhibited` is `records` (those inside
    /// memslots). Returns whether a bit changed.
    pub fn restore_inhibits(&mut self, records: &[InhibitRecord]) -> Result<bool> {
        let mut changed = false;
        for i in records {
            // Accepting at the level below sets the inhibit of `i.level` (and of the levels
            // above it, corrected below where `records` does not have them).
            let below = match i.level {
                Level::G1 => Level::M2,
                _ => Level::K4,
            };
            changed |= self.set_guest_inhibit(Gfn(i.gfn), below)?;
        }
        for s in self.snapshot().inhibited {
            if !records.contains(&s) {
                changed |= self.clear_guest_inhibit(Gfn(s.gfn), s.level);
            }
        }
        Ok(changed)
    }
}

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

//! Save and restore of a [`CvmMemory`]'s private/shared state, for snapshots and live
//! migration: the source saves a [`TrackerSnapshot`] (serde with the `serde` feature), the
//! destination creates the same memslots on its own memory and restores the attributes into
//! them — KVM's attributes, discards and listeners included, as if the guest had asked.

use cvmem::snapshot::{InhibitRecord, RunRecord};
use cvmem::{Gfn, GfnRange, Kind, Level, TrackerSnapshot};

use super::CvmMemory;
use crate::error::{Error, Result};
use crate::request::{ConversionRequest, RequestSource};

impl CvmMemory {
    /// The tracker's state. Conversions and memslot changes are serialised with this call, so
    /// the snapshot is never of half a conversion. (With the MMU model, its page tables are not
    /// saved: after a restore every access faults in again.)
    pub fn snapshot(&self) -> TrackerSnapshot {
        let _writers = self.lock_memory();
        self.shared.tracker(|t| t.snapshot())
    }

    /// Restores `snapshot`'s attributes and GUEST_INHIBIT bits into this memory, whose memslots
    /// must be the snapshot's (same ids, places, sizes and flags; the host memory is this VMM's)
    /// and which must still be all shared, as a fresh destination is. Each private run is
    /// applied as a VMM conversion (KVM attributes, discards, listeners).
    ///
    /// All or nothing, in time and memory O(snapshot): the cheap checks first (memslots, a fresh
    /// destination), then the whole snapshot validated by rebuilding it aside
    /// ([`cvmem::Tracker::restore`]), and only then applied. If applying fails on the host (KVM,
    /// a listener), the runs applied so far are converted back to shared and the error is
    /// returned: the destination is as it was (contents discarded by the conversions stay
    /// discarded — a fresh destination has none worth keeping).
    pub fn restore(&self, snapshot: &TrackerSnapshot) -> Result<()> {
        let (slots_differ, fresh) = self.shared.tracker(|t| {
            let ours = t.memslots().map(|s| (s.id(), s.gpa(), s.size(), s.flags()));
            let theirs = (snapshot.memslots.iter()).map(|s| (s.id, s.gpa, s.size, s.flags));
            (!ours.eq(theirs), t.nonzero_runs().next().is_none())
        });
        if slots_differ {
            return Err(cvmem::Error::BadSnapshot {
                why: cvmem::SnapshotFault::SlotsDiffer,
            }
            .into());
        }
        if !fresh {
            return Err(cvmem::Error::BadSnapshot {
                why: cvmem::SnapshotFault::DestinationNotFresh,
            }
            .into());
        }
        // The snapshot must describe a reachable state (version, runs, inhibits).
        cvmem::Tracker::restore(snapshot)?;
        for (done, run) in snapshot.runs.iter().enumerate() {
            let applied = self.convert(&ConversionRequest {
                range: run.range(),
                to: Kind::from_attributes(run.attributes),
                hint: Level::K4,
                source: RequestSource::Vmm,
            });
            if let Err(e) = applied {
                return Err(self.undo_runs(&snapshot.runs[..done], e));
            }
        }
        self.restore_inhibits(&snapshot.inhibited)
            .map_err(|e| self.undo_runs(&snapshot.runs, e))
    }

    /// Converts `runs` back to shared after a failed restore; `cause` is returned, or
    /// [`Error::Inconsistent`] if undoing fails too.
    fn undo_runs(&self, runs: &[RunRecord], cause: Error) -> Error {
        for run in runs.iter().rev() {
            let undone = self.convert(&ConversionRequest {
                range: run.range(),
                to: Kind::Shared,
                hint: Level::K4,
                source: RequestSource::Vmm,
            });
            if let Err(why) = undone {
                return Error::Inconsistent {
                    cause: cause.to_string(),
                    why: why.to_string(),
                };
            }
        }
        cause
    }

    fn restore_inhibits(&self, inhibited: &[InhibitRecord]) -> Result<()> {
        // A one-time step of a restore: one invalidation of the whole space. All or nothing
        // (the core builds the new bits aside), so nothing to publish on failure.
        let everything = GfnRange::new(Gfn(0), Gfn(cvmem::GFN_END));
        self.shared.tracker.update(
            everything,
            |_| {},
            |t| match t.restore_inhibits(inhibited) {
                Ok(changed) => (changed, Ok(())),
                Err(e) => (false, Err(e)),
            },
        )?;
        Ok(())
    }
}

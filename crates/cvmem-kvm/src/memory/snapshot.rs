//! Save and restore of a [`CvmMemory`]'s private/shared state, for snapshots and live
//! migration: the source saves a [`TrackerSnapshot`] (serde with the `serde` feature), the
//! destination creates the same memslots on its own memory and restores the attributes into
//! them — KVM's attributes, discards and listeners included, as if the guest had asked.

use cvmem::snapshot::InhibitRecord;
use cvmem::{GfnRange, Gpa, TrackerSnapshot, PAGE_SIZE};

use super::CvmMemory;
use crate::error::Result;

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
    /// applied as a VMM conversion (KVM attributes, discards, listeners). Refused before
    /// anything changes if the memslots differ, the memory is not fresh, or the snapshot is not
    /// one a tracker can be in.
    pub fn restore(&self, snapshot: &TrackerSnapshot) -> Result<()> {
        // The snapshot must describe a reachable state (version, runs, inhibits).
        cvmem::Tracker::restore(snapshot)?;
        let (slots_differ, fresh) = self.shared.tracker(|t| {
            let ours: Vec<_> = t
                .memslots()
                .map(|s| (s.id(), s.gpa(), s.size(), s.flags()))
                .collect();
            let theirs: Vec<_> = snapshot
                .memslots
                .iter()
                .map(|s| (s.id, s.gpa, s.size, s.flags))
                .collect();
            (ours != theirs, t.nonzero_runs().next().is_none())
        });
        if slots_differ {
            return Err(cvmem::Error::BadSnapshot {
                why: "the destination's memslots differ from the snapshot's",
            }
            .into());
        }
        if !fresh {
            return Err(cvmem::Error::BadSnapshot {
                why: "the destination already has private memory",
            }
            .into());
        }
        for run in &snapshot.runs {
            let range = GfnRange::new(run.start, run.end);
            self.set_attributes(Gpa(range.start * PAGE_SIZE), range.bytes(), run.attributes)?;
        }
        self.restore_inhibits(&snapshot.inhibited)
    }

    fn restore_inhibits(&self, inhibited: &[InhibitRecord]) -> Result<()> {
        // A one-time step of a restore: one invalidation of the whole space.
        let everything = GfnRange::new(0, cvmem::GFN_END);
        self.shared.tracker.update(
            everything,
            |_| {},
            |t| {
                match t.restore_inhibits(inhibited) {
                    Ok(changed) => (changed, Ok(())),
                    // Records before the failing one may be applied: publish what both copies hold.
                    Err(e) => (true, Err(e)),
                }
            },
        )?;
        Ok(())
    }
}

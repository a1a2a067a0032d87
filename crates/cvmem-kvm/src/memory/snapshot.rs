//! Save and restore of a [`CvmMemory`]'s private/shared state, for snapshots and live
//! migration: the source saves a [`TrackerSnapshot`] (serde with the `serde` feature), the
//! destination creates the same memslots on its own memory and restores the attributes into
//! them — KVM's attributes, discards and listeners included, as if the guest had asked.

use cvmem::snapshot::InhibitRecord;
use cvmem::{Gfn, GfnRange, Gpa, Level, TrackerSnapshot, PAGE_SIZE};

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
        for i in inhibited {
            let below = match i.level {
                Level::G1 => Level::M2,
                _ => Level::K4,
            };
            let range = GfnRange::new(
                Level::G1.align_down(i.gfn),
                Level::G1.align_down(i.gfn) + Level::G1.pages(),
            );
            self.shared.tracker.update(
                range,
                |_| {},
                |t| match t.set_guest_inhibit(Gfn(i.gfn), below) {
                    Ok(changed) => (changed, Ok(())),
                    Err(e) => (false, Err(e)),
                },
            )?;
        }
        // A 2M inhibit set its 1G page's too: clear the ones the snapshot does not have.
        let extra: Vec<InhibitRecord> = self.shared.tracker(|t| {
            t.snapshot()
                .inhibited
                .into_iter()
                .filter(|r| !inhibited.contains(r))
                .collect()
        });
        for r in extra {
            let range = GfnRange::new(r.gfn, r.gfn + r.level.pages());
            self.shared.tracker.update(
                range,
                |_| {},
                |t| (t.clear_guest_inhibit(Gfn(r.gfn), r.level), ()),
            );
        }
        Ok(())
    }
}

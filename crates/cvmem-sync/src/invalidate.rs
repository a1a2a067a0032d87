//! KVM's `mmu_invalidate_seq` and invalidation range, for serialised writers.
//!
//! KVM brackets every change that can make a mapping wrong with `invalidate_range_start` /
//! `_end`: while one is in progress, `mmu_invalidate_in_progress` is non-zero and
//! `[mmu_invalidate_range_start, _end)` covers the gfns being changed; at the end
//! `mmu_invalidate_seq` is incremented. A fault snapshots the sequence before it looks at the
//! state, and before installing a mapping (under `mmu_lock`) asks
//! `mmu_invalidate_retry_gfn()`: retry if a change is in progress over the gfn, or if the
//! sequence moved.
//!
//! Here one counter plays both parts, as a seqcount: even = idle, odd = a change of the stored
//! range is in progress (writers are serialised, so there is at most one). The range is checked
//! against the whole range the fault would map, not only the faulting gfn: the 2025 fix for a
//! hugepage installed across the head or tail of a range whose attributes were changing.
//!
//! Ordering: the range is stored before the odd count is published (release), so a reader that
//! sees the odd count sees its range; a release fence before the range stores lets a reader that
//! read a newer range see the newer count when it re-reads it (the classic seqlock read).

use cvmem::GfnRange;

use crate::sync::{fence, AtomicU64, Ordering};

/// The invalidation sequence and range; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct InvalidateSeq {
    seq: AtomicU64,
    start: AtomicU64,
    end: AtomicU64,
}

/// An invalidation in progress; ends (the count becomes even) when dropped, also on unwind.
#[derive(Debug)]
pub(crate) struct Invalidation<'a> {
    inv: &'a InvalidateSeq,
    seq: u64,
}

impl Drop for Invalidation<'_> {
    fn drop(&mut self) {
        self.inv.seq.store(self.seq + 1, Ordering::Release);
    }
}

impl InvalidateSeq {
    /// Starts invalidating `range`. The caller holds the writers' lock.
    pub(crate) fn begin(&self, range: GfnRange) -> Invalidation<'_> {
        let seq = self.seq.load(Ordering::Relaxed);
        debug_assert!(seq % 2 == 0, "writers are serialised");
        // Orders the previous end (even count) before the new range.
        fence(Ordering::Release);
        self.start.store(range.start.0, Ordering::Relaxed);
        self.end.store(range.end.0, Ordering::Relaxed);
        self.seq.store(seq + 1, Ordering::Release);
        Invalidation {
            inv: self,
            seq: seq + 1,
        }
    }

    /// The sequence a fault records before it looks at the state (KVM's `mmu_seq`).
    pub(crate) fn snapshot(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Whether a fault that recorded `seq` must retry instead of mapping `range`: the sequence
    /// moved, or the change in progress when it was recorded covers part of `range`.
    pub(crate) fn retry(&self, seq: u64, range: GfnRange) -> bool {
        let now = self.seq.load(Ordering::Acquire);
        if now != seq {
            return true;
        }
        if now % 2 == 0 {
            return false;
        }
        let start = self.start.load(Ordering::Relaxed);
        let end = self.end.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if self.seq.load(Ordering::Relaxed) != now {
            return true;
        }
        start < range.end.0 && range.start.0 < end
    }
}

//! The fault path's answer under concurrency: a level with a ticket to check before mapping, or
//! retry.

use cvmem::{Access, GfnRange, Gpa, MaxLevel};

/// What [`ConcurrentTracker::fault`](crate::ConcurrentTracker::fault) tells a faulting vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAnswer {
    /// The answer of one committed state; check the ticket again under the MMU lock before
    /// installing anything ([`ConcurrentTracker::is_stale`](crate::ConcurrentTracker::is_stale)).
    Ready(FaultTicket),
    /// A change of the attributes or memslots covering the range is in progress, or completed
    /// while the answer was computed (KVM's `RET_PF_RETRY`): fault again.
    Retry,
}

/// A fault-path answer and what is needed to check, later, that it still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultTicket {
    /// The faulting address.
    pub gpa: Gpa,
    /// The kind of access.
    pub access: Access,
    /// The answer, as the core's [`Tracker::max_mapping_level`](cvmem::Tracker::max_mapping_level)
    /// gives it for the state of `generation`.
    pub answer: MaxLevel,
    /// The generation (number of committed changes) of the state the answer was read from.
    pub generation: u64,
    /// The invalidation sequence recorded before the state was read (KVM's `mmu_seq`).
    pub(crate) seq: u64,
}

impl FaultTicket {
    /// The gfns a mapping made from this answer would cover: the aligned range of the answered
    /// level around the faulting gfn, or the gfn alone for `NoSlot` and memory-fault answers.
    pub fn range(&self) -> GfnRange {
        let gfn = self.gpa.gfn();
        match self.answer {
            MaxLevel::Level(level) => level.page_of(gfn),
            MaxLevel::NoSlot | MaxLevel::MemoryFault(_) => GfnRange::from_len(gfn, 1),
        }
    }
}

//! The front's count: odd while a change that readers must see whole or not at all is being
//! stored — a conversion of the VM's attributes (the store alone), or of a file's (its folios in
//! both left-right copies and its attributes, in three steps). Every read of the front is
//! validated by it; the generation a reader sees counts its writes.
//!
//! A count of the front's own, not the VM store's: the store's own reads wait while its count
//! is odd, and a reader inside a copy would then wait for a file's conversion that waits for it
//! to leave the copy. And it is odd only while something is stored, never across a `zap` (a
//! caller's lock; the reader may hold it).

use crate::sync::{fence, AtomicU64, Ordering};

/// A sequence count, as a seqlock's.
#[derive(Debug, Default)]
pub(crate) struct FrontSeq(AtomicU64);

impl FrontSeq {
    /// The count of a read about to start; `None` while a change is being stored.
    #[inline]
    pub(crate) fn read_begin(&self) -> Option<u64> {
        let seq = self.0.load(Ordering::Acquire);
        (seq % 2 == 0).then_some(seq)
    }

    /// Whether a read that began at `seq` overlapped no change.
    #[inline]
    pub(crate) fn read_valid(&self, seq: u64) -> bool {
        fence(Ordering::Acquire);
        self.0.load(Ordering::Relaxed) == seq
    }

    /// Holds the count odd until the guard drops (one write more then). Writers only, under
    /// the writers' lock.
    pub(crate) fn write(&self) -> FrontWrite<'_> {
        let seq = self.0.load(Ordering::Relaxed);
        self.0.store(seq + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        FrontWrite { count: self, seq }
    }
}

/// A change being stored ([`FrontSeq::write`]): the count is even again when it drops.
#[derive(Debug)]
pub(crate) struct FrontWrite<'a> {
    count: &'a FrontSeq,
    seq: u64,
}

impl Drop for FrontWrite<'_> {
    fn drop(&mut self) {
        self.count.0.store(self.seq + 2, Ordering::Release);
    }
}

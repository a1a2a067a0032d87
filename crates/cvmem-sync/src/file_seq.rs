//! The count a guest_memfd file's conversion holds odd: its folios (in the left-right copies)
//! and its attributes (in the file's one store) change in three steps, and a reader must see
//! all three or none.
//!
//! A count of its own, not the VM store's: the store's own reads wait while its count is odd,
//! and a reader inside a copy would then wait for a writer that waits for it to leave the copy.

use crate::sync::{fence, AtomicU64, Ordering};

/// A sequence count, odd while a file's conversion is in progress (a seqlock's, read by the
/// front's readers around their whole read).
#[derive(Debug, Default)]
pub(crate) struct FileSeq(AtomicU64);

impl FileSeq {
    /// The count of a read about to start; `None` while a conversion is in progress.
    #[inline]
    pub(crate) fn read_begin(&self) -> Option<u64> {
        let seq = self.0.load(Ordering::Acquire);
        (seq % 2 == 0).then_some(seq)
    }

    /// Whether a read that began at `seq` overlapped no conversion.
    #[inline]
    pub(crate) fn read_valid(&self, seq: u64) -> bool {
        fence(Ordering::Acquire);
        self.0.load(Ordering::Relaxed) == seq
    }

    /// Holds the count odd until the guard drops. Writers only, under the writers' lock.
    pub(crate) fn write(&self) -> FileWrite<'_> {
        let seq = self.0.load(Ordering::Relaxed);
        self.0.store(seq + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        FileWrite { count: self, seq }
    }
}

/// A conversion in progress ([`FileSeq::write`]): the count is even again when it drops.
#[derive(Debug)]
pub(crate) struct FileWrite<'a> {
    count: &'a FileSeq,
    seq: u64,
}

impl Drop for FileWrite<'_> {
    fn drop(&mut self) {
        self.count.0.store(self.seq + 2, Ordering::Release);
    }
}

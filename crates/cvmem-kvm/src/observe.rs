//! Observability: counters a VMM can export ([`MemoryStats`]), and `tracing` spans and events
//! (target `cvmem_kvm`) on conversions, memslot changes, failures and rollbacks — nothing is
//! recorded unless the VMM installs a subscriber that enables them.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::memory::Conversion;
use crate::request::RequestError;

/// Counts since a [`CvmMemory`](crate::CvmMemory) was made; cheap to read from any thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStats {
    /// Conversions applied (including those that found nothing to change).
    pub conversions: u64,
    /// Of those, conversions that changed no page (KVM's early exit).
    pub unchanged: u64,
    /// Pages whose kind changed.
    pub changed_pages: u64,
    /// Bytes whose old contents were discarded.
    pub discarded_bytes: u64,
    /// Requests refused before anything was done (KVM's rules: EINVAL, EEXIST...).
    pub refused: u64,
    /// Conversions that failed on the host (KVM, discard, a listener) and were rolled back.
    pub rolled_back: u64,
    /// Failures whose rollback failed too ([`Error::Inconsistent`]).
    pub inconsistent: u64,
    /// Memslot changes applied.
    pub slot_changes: u64,
    /// Of `refused`: guest requests to make memory private outside every memslot.
    pub outside_memslots_refused: u64,
    /// Pages outside every memslot that guests asked to make shared, left alone.
    pub outside_memslots_ignored_pages: u64,
}

/// The atomic counters behind [`MemoryStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    conversions: AtomicU64,
    unchanged: AtomicU64,
    changed_pages: AtomicU64,
    discarded_bytes: AtomicU64,
    refused: AtomicU64,
    rolled_back: AtomicU64,
    inconsistent: AtomicU64,
    slot_changes: AtomicU64,
    outside_memslots_refused: AtomicU64,
    outside_memslots_ignored_pages: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Whether `e` refused a request before anything was changed (as opposed to a host step
/// failing after the conversion began).
pub(crate) fn is_refusal(e: &Error) -> bool {
    matches!(e, Error::Tracker(_) | Error::Request(_))
}

impl Counters {
    pub(crate) fn conversion(&self, result: &Result<Conversion>) {
        match result {
            Ok(c) => {
                add(&self.conversions, 1);
                add(&self.unchanged, u64::from(c.changed_pages == 0));
                add(&self.changed_pages, c.changed_pages);
                add(&self.discarded_bytes, c.discarded_bytes);
                add(&self.outside_memslots_ignored_pages, c.outside_pages);
            }
            Err(e) => self.failure(e),
        }
    }

    pub(crate) fn failure(&self, e: &Error) {
        match e {
            Error::Inconsistent { .. } => add(&self.inconsistent, 1),
            e if is_refusal(e) => {
                add(&self.refused, 1);
                let outside = matches!(e, Error::Request(RequestError::OutsideMemslots(_)));
                add(&self.outside_memslots_refused, u64::from(outside));
            }
            _ => add(&self.rolled_back, 1),
        }
    }

    pub(crate) fn slot_change(&self) {
        add(&self.slot_changes, 1);
    }

    pub(crate) fn read(&self) -> MemoryStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MemoryStats {
            conversions: get(&self.conversions),
            unchanged: get(&self.unchanged),
            changed_pages: get(&self.changed_pages),
            discarded_bytes: get(&self.discarded_bytes),
            refused: get(&self.refused),
            rolled_back: get(&self.rolled_back),
            inconsistent: get(&self.inconsistent),
            slot_changes: get(&self.slot_changes),
            outside_memslots_refused: get(&self.outside_memslots_refused),
            outside_memslots_ignored_pages: get(&self.outside_memslots_ignored_pages),
        }
    }
}

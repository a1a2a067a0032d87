//! The one-copy store as the attribute store of a tracker: what every copy of the concurrent
//! front's tracker holds, one shared store behind them all.

use std::sync::Arc;

use cvmem::{AttrBackend, AttrRun, Error, Gfn, GfnRange, Level, Probe, Result, Unsupported};

use super::OneCopyStore;
use crate::concurrent::RUN_BATCH;

/// A tracker's view of a [`OneCopyStore`] (the VM's attributes or a guest_memfd's): reads go
/// to the shared store (each from one committed state); writes are refused, because the
/// concurrent front writes the store itself, once, not once per copy.
#[derive(Clone, Debug)]
pub struct SharedAttrs(pub(crate) Arc<OneCopyStore>);

impl SharedAttrs {
    /// The store behind this view.
    pub fn store(&self) -> &Arc<OneCopyStore> {
        &self.0
    }
}

/// The runs of a range of a [`OneCopyStore`], read [`RUN_BATCH`] at a time, each batch from one
/// committed state.
#[derive(Debug)]
pub struct SharedRuns<'a> {
    store: &'a OneCopyStore,
    next: Gfn,
    end: Gfn,
    batch: std::vec::IntoIter<AttrRun>,
}

impl Iterator for SharedRuns<'_> {
    type Item = AttrRun;

    fn next(&mut self) -> Option<AttrRun> {
        if let Some(run) = self.batch.next() {
            return Some(run);
        }
        if self.next >= self.end {
            return None;
        }
        let runs = self
            .store
            .runs(GfnRange::new(self.next, self.end), RUN_BATCH);
        self.next = runs.last().map_or(self.end, |r| r.end);
        self.batch = runs.into_iter();
        self.batch.next()
    }
}

impl AttrBackend for SharedAttrs {
    type Runs<'a> = SharedRuns<'a>;

    #[inline]
    fn probe(&self, gfn: Gfn) -> Probe {
        let (private, level) = self.0.probe(gfn);
        Probe::new(private, level)
    }

    /// One descent with no count of its own: the caller's read is validated by the store's
    /// count around it ([`ConcurrentTracker::fault`](crate::ConcurrentTracker::fault)).
    #[inline]
    fn probe_unchecked(&self, gfn: Gfn) -> Probe {
        let (private, level) = self.0.probe_racy(gfn);
        Probe::new(private, level)
    }

    fn range_has(&self, range: GfnRange, attributes: u64, mask: u64) -> bool {
        self.0.range_has(range, attributes, mask)
    }

    fn uniform(&self, range: GfnRange) -> Option<u64> {
        self.0.uniform(range)
    }

    fn runs(&self, range: GfnRange) -> SharedRuns<'_> {
        SharedRuns {
            store: &self.0,
            next: range.start,
            end: range.end,
            batch: Vec::new().into_iter(),
        }
    }

    fn mixed_pages(&self, range: GfnRange, level: Level) -> u64 {
        self.0.mixed_pages(range, level)
    }

    fn set(&mut self, _range: GfnRange, _attributes: u64) -> Result<bool> {
        self.check_writable().map(|()| false)
    }

    fn check_writable(&self) -> Result<()> {
        Err(Error::Unsupported {
            what: Unsupported::SharedAttributeStore,
        })
    }

    fn reserve_span(&mut self, _range: GfnRange) -> Result<()> {
        // The one-copy store makes what an update needs as the update begins.
        Ok(())
    }

    fn heap_bytes(&self) -> usize {
        self.0.heap_bytes()
    }
}

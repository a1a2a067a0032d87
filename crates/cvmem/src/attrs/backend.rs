//! What the tracker asks of wherever a VM's own attributes are kept: [`AttrStore`] here, or a
//! store shared by the copies of a concurrent front (cvmem-sync's one copy).

use crate::addr::{Gfn, GfnRange, Level};
use crate::error::Result;

use super::{AttrRun, AttrStore, Probe, Runs};

/// A VM's own attributes (KVM_SET_MEMORY_ATTRIBUTES') or a guest_memfd's, as the
/// [`crate::Tracker`] reads and writes them. Every method has [`AttrStore`]'s meaning.
pub trait AttrBackend {
    /// The runs of a range, in address order.
    type Runs<'a>: Iterator<Item = AttrRun>
    where
        Self: 'a;

    /// [`AttrStore::probe`].
    fn probe(&self, gfn: Gfn) -> Probe;

    /// [`probe`](Self::probe) for a caller that checks, around its whole read, that no write
    /// overlapped it (a store shared with a writer, read under a sequence count): a store that
    /// validates each lookup itself may skip that here. If a write overlapped, the answer may
    /// be any probe (the caller throws it away); it is never a panic.
    #[inline]
    fn probe_unchecked(&self, gfn: Gfn) -> Probe {
        self.probe(gfn)
    }

    /// [`AttrStore::is_private`].
    fn is_private(&self, gfn: Gfn) -> bool {
        self.probe(gfn).private
    }

    /// [`AttrStore::range_has`].
    fn range_has(&self, range: GfnRange, attributes: u64, mask: u64) -> bool;

    /// [`AttrStore::uniform`].
    fn uniform(&self, range: GfnRange) -> Option<u64>;

    /// [`AttrStore::runs`].
    fn runs(&self, range: GfnRange) -> Self::Runs<'_>;

    /// [`AttrStore::mixed_pages`].
    fn mixed_pages(&self, range: GfnRange, level: Level) -> u64;

    /// [`AttrStore::set`].
    fn set(&mut self, range: GfnRange, attributes: u64) -> Result<bool>;

    /// Whether [`set`](Self::set) may be called at all: a store written elsewhere (a
    /// concurrent front's, shared by copies of a tracker) refuses here, before a caller changes
    /// anything that goes with the store (a file's folios).
    #[inline]
    fn check_writable(&self) -> Result<()> {
        Ok(())
    }

    /// [`AttrStore::reserve_span`].
    fn reserve_span(&mut self, range: GfnRange) -> Result<()>;

    /// [`AttrStore::heap_bytes`].
    fn heap_bytes(&self) -> usize;
}

impl AttrBackend for AttrStore {
    type Runs<'a> = Runs<'a>;

    #[inline]
    fn probe(&self, gfn: Gfn) -> Probe {
        AttrStore::probe(self, gfn)
    }

    fn range_has(&self, range: GfnRange, attributes: u64, mask: u64) -> bool {
        AttrStore::range_has(self, range, attributes, mask)
    }

    fn uniform(&self, range: GfnRange) -> Option<u64> {
        AttrStore::uniform(self, range)
    }

    fn runs(&self, range: GfnRange) -> Runs<'_> {
        AttrStore::runs(self, range)
    }

    fn mixed_pages(&self, range: GfnRange, level: Level) -> u64 {
        AttrStore::mixed_pages(self, range, level)
    }

    #[inline]
    fn set(&mut self, range: GfnRange, attributes: u64) -> Result<bool> {
        AttrStore::set(self, range, attributes)
    }

    fn reserve_span(&mut self, range: GfnRange) -> Result<()> {
        AttrStore::reserve_span(self, range)
    }

    fn heap_bytes(&self) -> usize {
        AttrStore::heap_bytes(self)
    }
}

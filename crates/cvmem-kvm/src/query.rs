//! Read-only questions KVM cannot answer (it has no GET for memory attributes), safe to ask from
//! device-emulation threads while vCPU threads convert.
//!
//! For now a [`MemoryQuery`] takes a read lock for each question; conversions hold the write
//! lock only while the tracker updates.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use cvmem::{Access, AttrRun, GfnRange, Level, MaxLevel, KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SIZE};

use crate::backing::Backing;
use crate::memory::State;

/// Whether a range is wholly private, wholly shared, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RangeKind {
    /// Every page is private.
    Private,
    /// Every page is shared.
    Shared,
    /// Some pages are private and some shared.
    Mixed,
}

impl RangeKind {
    /// `private`, `shared` or `mixed`.
    pub const fn name(self) -> &'static str {
        match self {
            RangeKind::Private => "private",
            RangeKind::Shared => "shared",
            RangeKind::Mixed => "mixed",
        }
    }
}

/// One memslot in a [`MemoryMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotSnapshot {
    /// Slot id.
    pub slot: u32,
    /// First byte.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host memory behind it.
    pub backing: Backing,
    /// Private bytes in the slot.
    pub private_bytes: u64,
    /// 2M pages wholly inside the slot with pages of both kinds.
    pub mixed_2m: u64,
    /// 1G pages wholly inside the slot with pages of both kinds.
    pub mixed_1g: u64,
    /// Bytes mappable with 1G pages for an access of their own kind.
    pub bytes_1g: u64,
    /// Bytes mappable with 2M pages (and not 1G).
    pub bytes_2m: u64,
    /// Bytes mappable only at 4K.
    pub bytes_4k: u64,
}

/// A snapshot of the whole memory state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryMap {
    /// Memslots in address order.
    pub slots: Vec<SlotSnapshot>,
    /// Maximal private ranges `(gpa, size)` in address order (inside or outside memslots).
    pub private: Vec<(u64, u64)>,
    /// Heap bytes the tracker holds.
    pub tracker_heap_bytes: usize,
}

/// A cloneable, thread-safe reader of a [`crate::CvmMemory`]'s state.
#[derive(Clone, Debug)]
pub struct MemoryQuery {
    state: Arc<RwLock<State>>,
}

impl MemoryQuery {
    pub(crate) fn new(state: Arc<RwLock<State>>) -> Self {
        MemoryQuery { state }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `[gpa, gpa + size)` is private, shared or mixed. The range is checked as
    /// KVM_SET_MEMORY_ATTRIBUTES checks its own.
    pub fn range_kind(&self, gpa: u64, size: u64) -> Result<RangeKind, cvmem::Error> {
        let state = self.read();
        let range = state.tracker.validate_attributes(gpa, size, 0)?;
        let p = KVM_MEMORY_ATTRIBUTE_PRIVATE;
        Ok(if state.tracker.range_has_attributes(range, p, p) {
            RangeKind::Private
        } else if state.tracker.range_has_attributes(range, 0, p) {
            RangeKind::Shared
        } else {
            RangeKind::Mixed
        })
    }

    /// Whether the page at `gpa` is private.
    pub fn is_private(&self, gpa: u64) -> bool {
        self.read().tracker.is_private(gpa / PAGE_SIZE)
    }

    /// The attribute runs covering `[gpa, gpa + size)`, clipped to it.
    pub fn runs(&self, gpa: u64, size: u64) -> Result<Vec<AttrRun>, cvmem::Error> {
        let state = self.read();
        let range = state.tracker.validate_attributes(gpa, size, 0)?;
        Ok(state.tracker.runs(range).collect())
    }

    /// The fault path's answer for an access of kind `access` at `gpa`: the largest level it may
    /// be mapped at, no slot, or a memory fault (the access kind differs from the page's).
    pub fn max_level(&self, gpa: u64, access: Access) -> MaxLevel {
        self.read().tracker.max_mapping_level(gpa, access)
    }

    /// The largest level the page at `gpa` may be mapped at for an access of its own kind, or
    /// `None` outside memslots.
    pub fn allowed_level(&self, gpa: u64) -> Option<Level> {
        self.read().tracker.allowed_level(gpa / PAGE_SIZE)
    }

    /// A snapshot of every memslot and every private range.
    pub fn snapshot(&self) -> MemoryMap {
        let state = self.read();
        let t = &state.tracker;
        let slots = t
            .memslots()
            .map(|s| {
                let e = t.eligibility(s.id()).unwrap_or_default();
                let private_pages: u64 = t
                    .runs(s.range())
                    .filter(|r| r.attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0)
                    .map(|r| r.end - r.start)
                    .sum();
                SlotSnapshot {
                    slot: s.id(),
                    gpa: s.gpa(),
                    size: s.size(),
                    backing: state
                        .slots
                        .get(&s.id())
                        .map_or(Backing::Anonymous, |i| i.backing),
                    private_bytes: private_pages * PAGE_SIZE,
                    mixed_2m: e.mixed[0],
                    mixed_1g: e.mixed[1],
                    bytes_1g: e.bytes_1g,
                    bytes_2m: e.bytes_2m,
                    bytes_4k: e.bytes_4k,
                }
            })
            .collect();
        let private = t
            .nonzero_runs()
            .map(|r| (r.start * PAGE_SIZE, GfnRange::new(r.start, r.end).bytes()))
            .collect();
        MemoryMap {
            slots,
            private,
            tracker_heap_bytes: t.heap_bytes(),
        }
    }
}

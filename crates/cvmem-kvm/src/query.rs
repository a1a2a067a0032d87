//! Read-only questions KVM cannot answer (it has no GET for memory attributes), safe to ask from
//! device-emulation threads while vCPU threads convert.
//!
//! A [`MemoryQuery`] reads through cvmem-sync's concurrent front: it never waits for a
//! conversion (or another reader), and every answer comes from one committed state — before or
//! after a conversion, never half of one.

use std::sync::Arc;

#[cfg(feature = "mmu-model")]
use cvmem::mmu::{CollapsibleRegion, Coverage, Leaf, MmuStats};
use cvmem::{
    Access, AttrRun, Gfn, GfnRange, Gpa, Level, MaxLevel, SlotFlags, KVM_MEMORY_ATTRIBUTE_PRIVATE,
};
use cvmem_sync::SharedTracker;

use crate::backing::Backing;
use crate::memory::Shared;

/// Whether a range is wholly private, wholly shared, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
#[non_exhaustive]
pub struct SlotSnapshot {
    /// Slot id.
    pub slot: u32,
    /// First byte.
    pub gpa: Gpa,
    /// Size in bytes.
    pub size: u64,
    /// Host memory behind it.
    pub backing: Backing,
    /// Its flags (`guest_memfd`, `dirty_log`, `readonly`).
    pub flags: SlotFlags,
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
#[non_exhaustive]
pub struct MemoryMap {
    /// Memslots in address order.
    pub slots: Vec<SlotSnapshot>,
    /// Maximal private ranges `(gpa, size)` in address order (inside or outside memslots):
    /// the first [`MemoryMap::PRIVATE_RUNS_MAX`] of them (stream them all with
    /// [`MemoryQuery::for_each_run`]).
    pub private: Vec<(Gpa, u64)>,
    /// How many maximal private ranges there are (more than `private` holds when truncated).
    pub private_runs: u64,
    /// Heap bytes the tracker holds.
    pub tracker_heap_bytes: usize,
}

impl MemoryMap {
    /// The most private ranges a snapshot lists (1 MiB of them): a fragmented guest has
    /// millions, which would make a diagnostic snapshot cost gigabytes.
    pub const PRIVATE_RUNS_MAX: usize = 65_536;

    /// Whether `private` lists only the first of the private ranges.
    pub fn private_truncated(&self) -> bool {
        self.private_runs > self.private.len() as u64
    }
}

/// The MMU model's state: page tables, events, and hugepage coverage.
#[cfg(feature = "mmu-model")]
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MmuSnapshot {
    /// Leaves per level and kind, table pages, splits, zaps, collapses, faults...
    pub stats: MmuStats,
    /// Hugepage coverage and table memory now, against the optimum the attributes, memslots
    /// and backing allow.
    pub coverage: Coverage,
    /// Regions mapped by smaller leaves than the tracker allows (what recovery could gain).
    pub collapsible: Vec<CollapsibleRegion>,
    /// Coverage if the guest now touched every page of every memslot (each as its kind): the
    /// hugepage coverage this layout and recovery policy reach for the final attributes.
    pub touched_all: Coverage,
}

/// The one address rule of every [`MemoryQuery`] range: the bytes `[gpa, gpa + size)` at any
/// alignment, rounded out to the pages that hold them (as [`MemoryQuery::is_private`] takes any
/// address). `ZeroSize` for an empty range, `Overflow` past the end of the address space.
pub fn pages_of(gpa: Gpa, size: u64) -> Result<GfnRange, cvmem::Error> {
    if size == 0 {
        return Err(cvmem::Error::ZeroSize {
            what: cvmem::Arg::Size,
        });
    }
    gpa.checked_add(size).ok_or(cvmem::Error::Overflow {
        what: cvmem::Arg::Range,
        start: gpa.0,
        size,
    })?;
    Ok(GfnRange::covering(gpa, size))
}

/// A cloneable, thread-safe reader of a [`crate::CvmMemory`]'s state that never blocks.
#[derive(Clone, Debug)]
pub struct MemoryQuery {
    shared: Arc<Shared>,
}

impl MemoryQuery {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        MemoryQuery { shared }
    }

    /// Runs `f` on one committed state of the tracker: for questions this handle does not ask
    /// itself. Never waits for a memslot change; `f` runs again if a conversion overlapped it
    /// (see [`cvmem_sync::ConcurrentTracker::read`]).
    pub fn with_tracker<R>(&self, f: impl FnMut(&SharedTracker) -> R) -> R {
        self.shared.tracker(f)
    }

    /// The number of committed changes (conversions, memslot changes) so far: two equal
    /// readings bracket a stretch in which nothing changed.
    pub fn generation(&self) -> u64 {
        self.shared.tracker.generation()
    }

    /// Whether the pages holding the bytes `[gpa, gpa + size)` are private, shared or mixed
    /// (any byte range: a device model's DMA buffer; see [`pages_of`]).
    pub fn range_kind(&self, gpa: Gpa, size: u64) -> Result<RangeKind, cvmem::Error> {
        self.with_tracker(|tracker| {
            let range = pages_of(gpa, size)?;
            let p = KVM_MEMORY_ATTRIBUTE_PRIVATE;
            Ok(if tracker.range_has_attributes(range, p, p) {
                RangeKind::Private
            } else if tracker.range_has_attributes(range, 0, p) {
                RangeKind::Shared
            } else {
                RangeKind::Mixed
            })
        })
    }

    /// Whether the page at `gpa` is private.
    pub fn is_private(&self, gpa: Gpa) -> bool {
        self.with_tracker(|t| t.is_private(gpa.gfn()))
    }

    /// The attribute runs covering the pages of the bytes `[gpa, gpa + size)`, clipped to them
    /// ([`pages_of`]).
    pub fn runs(&self, gpa: Gpa, size: u64) -> Result<Vec<AttrRun>, cvmem::Error> {
        self.with_tracker(|tracker| {
            let range = pages_of(gpa, size)?;
            Ok(tracker.runs(range).collect())
        })
    }

    /// The fault path's answer for an access of kind `access` at `gpa`: the largest level it may
    /// be mapped at, no slot, or a memory fault (the access kind differs from the page's).
    pub fn max_level(&self, gpa: Gpa, access: Access) -> MaxLevel {
        self.shared.tracker.max_mapping_level(gpa, access)
    }

    /// The largest level the page at `gpa` may be mapped at for an access of its own kind, or
    /// `None` outside memslots.
    pub fn allowed_level(&self, gpa: Gpa) -> Option<Level> {
        self.with_tracker(|t| t.allowed_level(gpa.gfn()))
    }

    /// Whether memslot `slot` exists.
    pub fn has_slot(&self, slot: u32) -> bool {
        self.with_tracker(|t| t.memslot(slot).is_some())
    }

    /// The leaf of kind `access` that maps `gpa` in the MMU model, if it keeps one and has one.
    #[cfg(feature = "mmu-model")]
    pub fn leaf(&self, gpa: Gpa, access: Access) -> Option<Leaf> {
        self.shared
            .model
            .with(|vm| vm.lookup(gpa, access))
            .flatten()
    }

    /// The MMU model's counters and leaves (cheap), if the memory keeps a model. Unlike the
    /// tracker's questions, this waits for the model's lock.
    #[cfg(feature = "mmu-model")]
    pub fn mmu_stats(&self) -> Option<MmuStats> {
        self.shared.model.with(|vm| vm.stats())
    }

    /// The MMU model's state with its coverage, collapsible regions, and the coverage a guest
    /// touching all its memory now would reach (computed on a copy of the model: O(large pages
    /// of the memslots + page tables)), if the memory keeps a model.
    #[cfg(feature = "mmu-model")]
    pub fn mmu_snapshot(&self) -> Option<MmuSnapshot> {
        let mut all = self.shared.model.with(|vm| vm.clone())?;
        let stats = all.stats();
        let coverage = all.coverage();
        let collapsible = all.collapsible();
        let runs: Vec<(u64, u64, cvmem::Kind)> = all
            .tracker()
            .memslots()
            .flat_map(|s| all.tracker().runs(s.range()))
            .map(|r| {
                (
                    r.start.gpa().0,
                    r.range().bytes(),
                    cvmem::Kind::from_private(r.attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0),
                )
            })
            .collect();
        for (gpa, size, kind) in runs {
            // Only NoMemory can fail: the figure is then what could be mapped.
            let _ = all.fault_range(Gpa(gpa), size, kind.access());
        }
        Some(MmuSnapshot {
            stats,
            coverage,
            collapsible,
            touched_all: all.coverage(),
        })
    }

    /// A snapshot of every memslot and of the private ranges (the first
    /// [`MemoryMap::PRIVATE_RUNS_MAX`]). Memory bounded whatever the fragmentation. The
    /// memslots and their eligibility come from one committed state; the private ranges are
    /// streamed ([`MemoryQuery::for_each_run`]: the read side held one batch at a time, so a
    /// fragmented guest's snapshot never stalls conversions), so a conversion made meanwhile
    /// may show in the ranges after it.
    pub fn snapshot(&self) -> MemoryMap {
        let infos = self.shared.slots.read(std::collections::BTreeMap::clone);
        let (mut map, ranges): (MemoryMap, Vec<GfnRange>) = self.with_tracker(|t| {
            let ranges = t.memslots().map(|s| s.range()).collect();
            (self.slots_of(t, &infos), ranges)
        });
        let mut next = 0;
        let everything = GfnRange::new(Gfn(0), Gfn(cvmem::GFN_END));
        self.shared.tracker.for_each_run(everything, |r| {
            if r.attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE == 0 {
                return std::ops::ControlFlow::<()>::Continue(());
            }
            let run = r.range();
            // Runs and memslots are both in address order: one merge.
            while next < ranges.len() && ranges[next].end <= run.start {
                next += 1;
            }
            for (i, s) in ranges.iter().enumerate().skip(next) {
                if s.start >= run.end {
                    break;
                }
                if let Some(slot) = map.slots.get_mut(i) {
                    slot.private_bytes += s.intersect(&run).map_or(0, |x| x.bytes());
                }
            }
            map.private_runs += 1;
            if map.private.len() < MemoryMap::PRIVATE_RUNS_MAX {
                map.private.push((run.start.gpa(), run.bytes()));
            }
            std::ops::ControlFlow::Continue(())
        });
        map
    }

    /// Visits the attribute runs covering the pages of the bytes `[gpa, gpa + size)`
    /// ([`pages_of`]), clipped to them, in address order, until `f` breaks; returns its
    /// value. Streams (see [`cvmem_sync::ConcurrentTracker::for_each_run`]): no allocation per
    /// run, the read side held for one batch at a time.
    pub fn for_each_run<B>(
        &self,
        gpa: Gpa,
        size: u64,
        f: impl FnMut(&AttrRun) -> std::ops::ControlFlow<B>,
    ) -> Result<Option<B>, cvmem::Error> {
        Ok(self.shared.tracker.for_each_run(pages_of(gpa, size)?, f))
    }

    /// The memslots of `t` with their eligibility (private bytes and ranges are added by
    /// [`MemoryQuery::snapshot`]).
    fn slots_of(
        &self,
        t: &SharedTracker,
        infos: &std::collections::BTreeMap<u32, crate::memory::SlotInfo>,
    ) -> MemoryMap {
        let memslots: Vec<&cvmem::Memslot> = t.memslots().collect();
        let slots = memslots
            .iter()
            .map(|s| {
                let e = t.eligibility(s.id()).unwrap_or_default();
                SlotSnapshot {
                    slot: s.id(),
                    gpa: s.gpa(),
                    size: s.size(),
                    backing: infos.get(&s.id()).map_or(Backing::Anonymous, |i| i.backing),
                    flags: s.flags(),
                    private_bytes: 0,
                    mixed_2m: e.mixed[0],
                    mixed_1g: e.mixed[1],
                    bytes_1g: e.bytes_1g,
                    bytes_2m: e.bytes_2m,
                    bytes_4k: e.bytes_4k,
                }
            })
            .collect();
        MemoryMap {
            slots,
            private: Vec::new(),
            private_runs: 0,
            tracker_heap_bytes: t.heap_bytes(),
        }
    }
}

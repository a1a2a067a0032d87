//! The fault path: map one page, or every page of a range, at the level the tracker allows.

use crate::addr::{Gfn, GfnRange, Gpa, Level, GFN_END};
use crate::error::Result;
use crate::tracker::{Access, MaxLevel, MemoryFault};

use super::stats::LevelCounts;
use super::vm::{Recovery, Vm};

/// What a guest access did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOutcome {
    /// A new leaf of this level maps the page.
    Mapped {
        /// The leaf's level.
        level: Level,
    },
    /// A leaf of the access's kind already maps the page.
    Spurious,
    /// The page lies in the invalidation window of a conversion in progress (the changing
    /// range and the 1G pages holding its head and tail): the guest retries the access.
    Retry,
    /// No memslot contains the page.
    NoSlot,
    /// The access kind differs from the page's attributes, or a private access hit a slot
    /// without guest_memfd: KVM_EXIT_MEMORY_FAULT.
    MemoryFault(MemoryFault),
}

impl FaultOutcome {
    /// The op-log's name: `mapped`, `spurious`, `retry`, `no-slot` or `memory-fault`.
    pub const fn name(&self) -> &'static str {
        match self {
            FaultOutcome::Mapped { .. } => "mapped",
            FaultOutcome::Spurious => "spurious",
            FaultOutcome::Retry => "retry",
            FaultOutcome::NoSlot => "no-slot",
            FaultOutcome::MemoryFault(_) => "memory-fault",
        }
    }
}

/// Counts of a `fault-range`: one outcome per 4K page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct FaultRangeCounts {
    /// Pages whose fault installed a leaf, by the leaf's level.
    pub mapped: LevelCounts,
    /// Pages already mapped (also by a leaf installed earlier in the same range).
    pub spurious: u64,
    /// Pages whose access kind differs from their attributes (or private without guest_memfd).
    pub memory_fault: u64,
    /// Pages outside every memslot.
    pub no_slot: u64,
    /// Pages in an open invalidation window (0 unless a conversion was begun and not ended).
    pub retry: u64,
}

impl FaultRangeCounts {
    /// Adds `other`'s counts to these (totals over several ranges).
    pub fn add(&mut self, other: &FaultRangeCounts) {
        for level in [Level::K4, Level::M2, Level::G1] {
            self.mapped.add(level, other.mapped.get(level));
        }
        self.spurious += other.spurious;
        self.memory_fault += other.memory_fault;
        self.no_slot += other.no_slot;
        self.retry += other.retry;
    }
}

impl Vm {
    /// A guest access of kind `access` to `gpa`: the op-log's `fault`.
    ///
    /// Maps the page at the level [`crate::Tracker::max_mapping_level`] gives, lowered under
    /// [`Recovery::Off`] to the largest level whose aligned range holds no leaf of that kind
    /// yet; every leaf of that kind inside the new leaf's range is replaced by it. Fails only
    /// with `NoMemory` (nothing changed).
    ///
    /// Under [`Recovery::Eager`] no collapse pass is needed after a fault: the new leaf has the
    /// largest level allowed at `gpa`, so no larger region holding it is allowed either.
    pub fn fault(&mut self, gpa: Gpa, access: Access) -> Result<FaultOutcome> {
        self.fault_gfn(gpa.gfn().0, access)
    }

    pub(crate) fn fault_gfn(&mut self, gfn: u64, access: Access) -> Result<FaultOutcome> {
        self.fault_capped(gfn, access, Level::G1)
    }

    /// A fault that maps at most at `cap` (an accept's fault-in).
    pub(crate) fn fault_capped(
        &mut self,
        gfn: u64,
        access: Access,
        cap: Level,
    ) -> Result<FaultOutcome> {
        self.counters.faults += 1;
        if self.tracker.slot_for_gfn(Gfn(gfn)).is_none() {
            return Ok(FaultOutcome::NoSlot);
        }
        if self.in_window(gfn).is_some() {
            self.counters.retries += 1;
            return Ok(FaultOutcome::Retry);
        }
        let max = match self.tracker.max_mapping_level(Gfn(gfn).gpa(), access) {
            MaxLevel::Level(l) => l.min(cap),
            MaxLevel::NoSlot => return Ok(FaultOutcome::NoSlot),
            MaxLevel::MemoryFault(m) => return Ok(FaultOutcome::MemoryFault(m)),
        };
        let private = access.is_private();
        if self.trees.lookup(gfn, private).is_some() {
            return Ok(FaultOutcome::Spurious);
        }
        let mut level = max;
        if self.recovery == Recovery::Off {
            while let Some(smaller) = level.smaller() {
                let start = level.align_gfn(gfn);
                if !self.trees.has_leaf(
                    GfnRange::new(Gfn(start), Gfn(start + level.pages())),
                    private,
                ) {
                    break;
                }
                level = smaller;
            }
        }
        self.trees.tables.reserve(self.trees.tables_per_install())?;
        match self.trees.install(gfn, level, private) {
            Some(replaced) => {
                self.counters.replaced += replaced;
                Ok(FaultOutcome::Mapped { level })
            }
            None => Ok(FaultOutcome::Spurious),
        }
    }

    /// `fault` on every 4K page of `[gpa, gpa + size)` in address order, counted: the op-log's
    /// `fault-range`. EINVAL for a range `attrs` would reject. Pages are decided in bulk where
    /// the answer is known to repeat (the rest of a leaf just installed or found, the rest of a
    /// gap between slots, of a run of the wrong kind, of a window), so faulting a 64 GiB guest
    /// mapped at 1G costs 64 faults, not 16 million.
    pub fn fault_range(&mut self, gpa: Gpa, size: u64, access: Access) -> Result<FaultRangeCounts> {
        let range = self
            .tracker
            .validate_attributes(gpa, size, 0)?
            .range()
            .gfns();
        let mut counts = FaultRangeCounts::default();
        let mut gfn = range.start;
        while gfn < range.end {
            let outcome = self.fault_gfn(gfn, access)?;
            let next = self.extent_end(gfn, access, &outcome).min(range.end);
            let n = next - gfn;
            match outcome {
                FaultOutcome::Mapped { level } => {
                    counts.mapped.add(level, 1);
                    counts.spurious += n - 1;
                }
                FaultOutcome::Spurious => counts.spurious += n,
                FaultOutcome::Retry => {
                    counts.retry += n;
                    self.counters.retries += n - 1;
                }
                FaultOutcome::NoSlot => counts.no_slot += n,
                FaultOutcome::MemoryFault(_) => counts.memory_fault += n,
            }
            self.counters.faults += n - 1;
            gfn = next;
        }
        Ok(counts)
    }

    /// One past the last gfn after `gfn` whose fault would give the same answer without
    /// changing anything (`outcome` is `gfn`'s).
    fn extent_end(&self, gfn: u64, access: Access, outcome: &FaultOutcome) -> u64 {
        let slot_end = self
            .tracker
            .slot_for_gfn(Gfn(gfn))
            .map_or(gfn + 1, |s| s.range().end.0);
        let next_window = self
            .windows
            .iter()
            .map(|w| w.range.start.0)
            .filter(|&s| s > gfn)
            .min()
            .unwrap_or(GFN_END);
        match outcome {
            FaultOutcome::Mapped { .. } | FaultOutcome::Spurious => self
                .trees
                .lookup(gfn, access.is_private())
                .map_or(gfn + 1, |leaf| leaf.range().end.0)
                .min(next_window),
            FaultOutcome::NoSlot => {
                let after = self
                    .tracker
                    .memslots()
                    .map(|s| s.base_gfn().0)
                    .find(|&b| b > gfn);
                after.unwrap_or(GFN_END)
            }
            FaultOutcome::Retry => self
                .in_window(gfn)
                .map_or(gfn + 1, |w| w.range.end.0)
                .min(slot_end),
            FaultOutcome::MemoryFault(m) => {
                let no_gmem = m.private
                    && !self
                        .tracker
                        .slot_for_gfn(Gfn(gfn))
                        .is_some_and(|s| s.flags().guest_memfd);
                let end = if no_gmem {
                    slot_end
                } else {
                    self.tracker
                        .attribute_store()
                        .next_change(Gfn(gfn))
                        .min(slot_end)
                };
                end.min(next_window)
            }
        }
    }
}

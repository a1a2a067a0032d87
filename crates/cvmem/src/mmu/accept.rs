//! TDX guest accept (TDG.MEM.PAGE.ACCEPT) and the GUEST_INHIBIT policy.
//!
//! A guest that accepts a page at 4K needs the Secure EPT to map it at 4K at that moment, so the
//! TDX huge page series sets GUEST_INHIBIT on the large pages above the accepted level, one-way:
//! they are never mapped huge again while the slot exists. Linux guests accept unaccepted memory
//! lazily in 2M units, so under the one-way rule *every* 1G page a guest accepts is inhibited at
//! 1G forever, and every 2M page touched by a 4K accept (firmware) stays at 4K.
//!
//! [`AcceptPolicy::ClearWhenAccepted`], which cvmem recommends, keeps the inhibit only while it
//! is needed: once every 4K page of an inhibited 2M page has been accepted (or every 2M unit of
//! a 1G page), no accept below that level can come any more, so the inhibit is cleared and the
//! region may be mapped huge again (TDX PROMOTE merges accepted 4K pages). A conversion makes
//! its changed pages unaccepted again. See the `accept_policy_*` tests for numbers.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::addr::{Gfn, GfnRange, Gpa, Level, PAGE_SHIFT, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::tracker::{Access, MemoryFault};

use super::fault::FaultOutcome;
use super::vm::Vm;

/// When GUEST_INHIBIT is cleared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AcceptPolicy {
    /// Never (the TDX huge page series, and the op-log's `accept`).
    #[default]
    OneWay,
    /// Once the whole inhibited large page has been accepted (cvmem's recommendation).
    ClearWhenAccepted,
    /// Never set: an accept splits the leaf over the page down to its level and maps it there,
    /// but a later fault may map the large page again once its range is empty (the "without
    /// the inhibit" column of the huge page series' published boot figures). Meaningful with
    /// [`Recovery::Off`](super::Recovery::Off) or `OnFault` only: under eager recovery (TDX
    /// PROMOTE) the 4K mapping the guest's accept needs is collapsed again at once — the
    /// livelock the inhibit exists to prevent.
    NoInhibit,
}

impl AcceptPolicy {
    /// Short name for reports: `one-way`, `clear-when-accepted` or `no-inhibit`.
    pub const fn name(self) -> &'static str {
        match self {
            AcceptPolicy::OneWay => "one-way",
            AcceptPolicy::ClearWhenAccepted => "clear-when-accepted",
            AcceptPolicy::NoInhibit => "no-inhibit",
        }
    }
}

/// The result of a guest accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AcceptOutcome {
    /// Accepted; the page is mapped at or below the accepted level.
    Accepted,
    /// No memslot contains the page.
    NoSlot,
    /// The page is not private, or its slot has no guest_memfd.
    MemoryFault(MemoryFault),
    /// The page lies in the invalidation window of a conversion in progress.
    Retry,
}

impl AcceptOutcome {
    /// The op-log's name: `accepted`, `no-slot`, `memory-fault` or `retry`.
    pub const fn name(&self) -> &'static str {
        match self {
            AcceptOutcome::Accepted => "accepted",
            AcceptOutcome::NoSlot => "no-slot",
            AcceptOutcome::MemoryFault(_) => "memory-fault",
            AcceptOutcome::Retry => "retry",
        }
    }
}

/// 512 bits.
type Bits = [u64; 8];
const FULL: Bits = [u64::MAX; 8];

fn set_bit(bits: &mut Bits, i: u64) {
    bits[(i / 64) as usize] |= 1 << (i % 64);
}

fn clear_bits(bits: &mut Bits, lo: u64, hi: u64) {
    for i in lo..hi {
        bits[(i / 64) as usize] &= !(1 << (i % 64));
    }
}

/// Which pages were accepted, kept only under [`AcceptPolicy::ClearWhenAccepted`].
#[derive(Clone, Debug, Default)]
pub(crate) struct AcceptLog {
    /// Per 2M page (gfn >> 9) with 4K accepts: one bit per accepted 4K page.
    small: BTreeMap<u64, Bits>,
    /// Per 1G page (gfn >> 18) with accepts below 1G: one bit per wholly accepted 2M unit.
    units: BTreeMap<u64, Bits>,
}

impl AcceptLog {
    /// Records an accept; returns the large pages whose inhibit may now be cleared.
    fn record(&mut self, gfn: u64, level: Level) -> Vec<(u64, Level)> {
        let mut clear = Vec::new();
        let m2 = gfn >> Level::M2.page_shift();
        match level {
            Level::K4 => {
                let bits = self.small.entry(m2).or_insert([0; 8]);
                set_bit(bits, gfn & 511);
                if *bits == FULL {
                    clear.push((gfn, Level::M2));
                    self.unit_done(m2, &mut clear);
                }
            }
            Level::M2 => {
                if let Some(bits) = self.small.get_mut(&m2) {
                    *bits = FULL;
                }
                clear.push((gfn, Level::M2));
                self.unit_done(m2, &mut clear);
            }
            Level::G1 => {
                let lo = m2;
                for (&k, bits) in self.small.range_mut(lo..lo + 512) {
                    *bits = FULL;
                    clear.push((k << Level::M2.page_shift(), Level::M2));
                }
                self.units.insert(gfn >> Level::G1.page_shift(), FULL);
                clear.push((gfn, Level::G1));
            }
        }
        clear
    }

    /// Whether the page of `level` at `gfn` has been accepted already (wholly).
    fn is_accepted(&self, gfn: u64, level: Level) -> bool {
        let m2 = gfn >> Level::M2.page_shift();
        let unit = |m2: u64| {
            self.units
                .get(&(m2 >> 9))
                .is_some_and(|b| b[((m2 & 511) / 64) as usize] >> (m2 % 64) & 1 != 0)
        };
        match level {
            Level::K4 => {
                unit(m2)
                    || self
                        .small
                        .get(&m2)
                        .is_some_and(|b| b[((gfn & 511) / 64) as usize] >> (gfn % 64) & 1 != 0)
            }
            Level::M2 => unit(m2),
            Level::G1 => self.units.get(&(gfn >> Level::G1.page_shift())) == Some(&FULL),
        }
    }

    fn unit_done(&mut self, m2: u64, clear: &mut Vec<(u64, Level)>) {
        let bits = self.units.entry(m2 >> 9).or_insert([0; 8]);
        set_bit(bits, m2 & 511);
        if *bits == FULL {
            clear.push((m2 << Level::M2.page_shift(), Level::G1));
        }
    }

    /// Forgets the accepts of `range` (its pages changed attributes or left their slot).
    fn forget(&mut self, range: GfnRange) {
        if range.is_empty() {
            return;
        }
        let (first, last) = (range.start.0 >> 9, (range.end.0 - 1) >> 9);
        for (&k, bits) in self.small.range_mut(first..=last) {
            let base = k << 9;
            let lo = range.start.0.max(base) - base;
            let hi = range.end.0.min(base + 512) - base;
            clear_bits(bits, lo, hi);
        }
        let (ufirst, ulast) = (first >> 9, last >> 9);
        for (&k, bits) in self.units.range_mut(ufirst..=ulast) {
            let base = k << 9;
            let lo = first.max(base) - base;
            let hi = (last + 1).min(base + 512) - base;
            clear_bits(bits, lo, hi);
        }
        self.small.retain(|_, b| *b != [0; 8]);
        self.units.retain(|_, b| *b != [0; 8]);
    }
}

impl Vm {
    /// A TDX guest accepts the private page at `gpa` at `level` (split layout only). Accepting
    /// below a level sets GUEST_INHIBIT on the large pages above it that hold `gpa`; a leaf over
    /// `gpa` larger than `level` is split down to it; if `gpa` is not mapped it is then faulted
    /// in as a private fault would, never above `level`. EINVAL in the unified layout or when
    /// `gpa` is not aligned to `level`.
    pub fn accept(&mut self, gpa: Gpa, level: Level) -> Result<AcceptOutcome> {
        let gpa = gpa.0;
        if !self.layout.is_split() {
            return Err(Error::Unsupported {
                what: crate::Unsupported::AcceptNeedsSplitLayout,
            });
        }
        if gpa % level.size() != 0 {
            return Err(Error::Unaligned {
                what: crate::Arg::AcceptGpa,
                value: gpa,
                align: level.size(),
            });
        }
        let gfn = gpa >> PAGE_SHIFT;
        let Some(slot) = self.tracker.slot_for_gfn(Gfn(gfn)) else {
            return Ok(AcceptOutcome::NoSlot);
        };
        if self.in_window(gfn).is_some() {
            self.counters.retries += 1;
            return Ok(AcceptOutcome::Retry);
        }
        if !slot.flags().guest_memfd || !self.tracker.is_private(Gfn(gfn)) {
            return Ok(AcceptOutcome::MemoryFault(MemoryFault {
                gpa: Gfn(gfn).gpa(),
                size: PAGE_SIZE,
                private: true,
            }));
        }
        self.trees
            .tables
            .reserve(2 + self.trees.tables_per_install())?;
        let clearing = self.accept_policy == AcceptPolicy::ClearWhenAccepted;
        if clearing && self.accepted.is_accepted(gfn, level) {
            // TDX_PAGE_ALREADY_ACCEPTED: the guest needs no mapping change, so neither an
            // inhibit nor a split (which eager recovery would only undo).
            if self.trees.lookup(gfn, true).is_none() {
                self.fault_capped(gfn, Access::Private, level)?;
            }
            self.recover_accepted(gfn, level);
            return Ok(AcceptOutcome::Accepted);
        }
        if self.accept_policy != AcceptPolicy::NoInhibit {
            self.tracker.set_guest_inhibit(Gfn(gfn), level)?;
        }
        self.counters.splits += self
            .trees
            .split_down(GfnRange::new(Gfn(gfn), Gfn(gfn + 1)), level);
        if self.trees.lookup(gfn, true).is_none() {
            let outcome = self.fault_capped(gfn, Access::Private, level)?;
            debug_assert!(matches!(outcome, FaultOutcome::Mapped { .. }));
        }
        if clearing {
            for (g, l) in self.accepted.record(gfn, level) {
                self.tracker.clear_guest_inhibit(Gfn(g), l);
            }
        }
        // A fault-in capped below the allowed level, or a cleared inhibit, may have made the
        // accepted page's 2M pages or its 1G page collapsible.
        self.recover_accepted(gfn, level);
        Ok(AcceptOutcome::Accepted)
    }

    /// Eager recovery after an accept of `gfn` at `level`: the 2M pages of the accepted page
    /// (a capped fault-in, a cleared 2M inhibit; all 512 of them when a 1G accept clears
    /// theirs) and the 1G page holding it.
    fn recover_accepted(&mut self, gfn: u64, level: Level) {
        self.recover(GfnRange::new(Gfn(gfn), Gfn(gfn + level.pages())));
    }

    /// Whether the private page of `level` at `gpa` has been wholly accepted since it last
    /// changed attributes; `None` under [`AcceptPolicy::OneWay`], which keeps no record.
    pub fn is_accepted(&self, gpa: Gpa, level: Level) -> Option<bool> {
        (self.accept_policy == AcceptPolicy::ClearWhenAccepted)
            .then(|| self.accepted.is_accepted(gpa.gfn().0, level))
    }

    /// Before the attributes of `range` become `attributes`: the pages that change are no
    /// longer accepted.
    pub(crate) fn forget_accepts_of_changing(&mut self, range: GfnRange, attributes: u64) {
        if self.accept_policy != AcceptPolicy::ClearWhenAccepted {
            return;
        }
        let changing: Vec<GfnRange> = self
            .tracker
            .runs(range)
            .filter(|r| r.attributes != attributes)
            .map(|r| r.range())
            .collect();
        for r in changing {
            self.accepted.forget(r);
        }
    }

    /// A memslot left `range`: its accepts are gone.
    pub(crate) fn forget_accepts(&mut self, range: GfnRange) {
        self.accepted.forget(range);
    }
}

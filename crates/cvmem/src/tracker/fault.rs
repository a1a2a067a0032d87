//! The fault path's rule, written once over what it reads of a memslot ([`FaultSlot`]): the
//! slot as the tracker keeps it ([`Memslot`]), or its few words ([`FlatSlot`]) that a
//! concurrent front keeps where its readers take no lock.

use crate::addr::{Gfn, Level, PAGE_SIZE};
use crate::attrs::Probe;
use crate::gmem::AttrMode;
use crate::memslot::Memslot;

use super::{Access, MaxLevel, MemoryFault, Tracker};

/// What the fault rule reads of a memslot besides PRIVATE.
pub(crate) trait FaultSlot {
    /// The slot is bound to a guest_memfd (may hold private memory).
    fn guest_memfd(&self) -> bool;
    /// The largest level any fault in the slot may use (backing, dirty logging).
    fn max_level(&self) -> Level;
    /// `level` is disallowed everywhere in the slot (host and guest addresses not congruent).
    fn misaligned(&self, level: Level) -> bool;
    /// The large page of `level` holding `gfn` lies wholly inside the slot.
    fn lpage_inside(&self, level: Level, gfn: u64) -> bool;
    /// The large page of `level` holding `gfn` carries GUEST_INHIBIT.
    fn inhibited(&self, level: Level, gfn: u64) -> bool;
}

impl FaultSlot for Memslot {
    #[inline]
    fn guest_memfd(&self) -> bool {
        self.flags.guest_memfd
    }
    #[inline]
    fn max_level(&self) -> Level {
        Memslot::max_level(self)
    }
    #[inline]
    fn misaligned(&self, level: Level) -> bool {
        Memslot::misaligned(self, level)
    }
    #[inline]
    fn lpage_inside(&self, level: Level, gfn: u64) -> bool {
        Memslot::lpage_inside(self, level, gfn)
    }
    #[inline]
    fn inhibited(&self, level: Level, gfn: u64) -> bool {
        self.lpage(level).is_inhibited(gfn)
    }
}

/// A fault's answer without the address it is for: what [`MaxLevel`] says, in two bytes that
/// a caller's retry loop keeps in a register (a [`MaxLevel`] of 24 bytes, built field by field
/// and copied whole at once through a loop's `Option`s, stalled on store forwarding: the
/// concurrent front's query measured ~1.7× the bare tracker's, not ~1.1×).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultCode {
    /// [`MaxLevel::Level`].
    Level(Level),
    /// [`MaxLevel::NoSlot`].
    NoSlot,
    /// [`MaxLevel::MemoryFault`], of the page of the access.
    MemoryFault,
}

impl FaultCode {
    /// The answer for an access of kind `access` to `gfn`.
    #[inline]
    pub const fn max_level(self, gfn: Gfn, access: Access) -> MaxLevel {
        match self {
            FaultCode::Level(level) => MaxLevel::Level(level),
            FaultCode::NoSlot => MaxLevel::NoSlot,
            FaultCode::MemoryFault => MaxLevel::MemoryFault(MemoryFault {
                gpa: gfn.gpa(),
                size: PAGE_SIZE,
                private: access.is_private(),
            }),
        }
    }
}

impl From<MaxLevel> for FaultCode {
    fn from(answer: MaxLevel) -> Self {
        match answer {
            MaxLevel::Level(level) => FaultCode::Level(level),
            MaxLevel::NoSlot => FaultCode::NoSlot,
            MaxLevel::MemoryFault(_) => FaultCode::MemoryFault,
        }
    }
}

/// The fault rule: the largest level at which `gfn` of `slot` may be mapped for `access`, or
/// the memory fault KVM exits with. `probe` reads PRIVATE (and the largest uniform page)
/// around `gfn`; `file_cap` caps a private page's level by its guest_memfd folio.
#[inline(always)]
pub(crate) fn fault_level(
    slot: &impl FaultSlot,
    gfn: u64,
    access: Access,
    probe: impl FnOnce() -> Probe,
    file_cap: impl FnOnce(Level) -> Level,
) -> FaultCode {
    if access.is_private() && !slot.guest_memfd() {
        return FaultCode::MemoryFault;
    }
    let probe = probe();
    if probe.private != access.is_private() {
        return FaultCode::MemoryFault;
    }
    FaultCode::Level(capped_level(slot, gfn, probe, file_cap))
}

/// The largest level `slot`'s state allows at `gfn` for a page of the probed kind: the slot's
/// geometry and GUEST_INHIBIT, then a private page's folio (`file_cap`).
#[inline(always)]
pub(crate) fn capped_level(
    slot: &impl FaultSlot,
    gfn: u64,
    probe: Probe,
    file_cap: impl FnOnce(Level) -> Level,
) -> Level {
    let max = slot.max_level().min(probe.uniform);
    let mut level = Level::K4;
    for large in [Level::G1, Level::M2] {
        if large <= max
            && !slot.misaligned(large)
            && slot.lpage_inside(large, gfn)
            && !slot.inhibited(large, gfn)
        {
            level = large;
            break;
        }
    }
    if !probe.private || level == Level::K4 {
        return level;
    }
    file_cap(level)
}

/// A memslot's part of the fault rule in three words, for a reader that cannot hold the
/// tracker: a concurrent front keeps them in atomics, read under its sequence count. Any three
/// words decode to some slot (a torn read gives some answer, thrown away by its validation).
/// The slot's largest level is kept already lowered below a misaligned level (misaligned at
/// 2M is misaligned at 1G too), so the words' reader tests no misalignment.
/// Complete where nothing else decides a fault in the slot: PRIVATE kept per VM, no
/// GUEST_INHIBIT set in the slot, and its file (if the tracker models one) of order-0 folios,
/// whose cap is the same for every page. Elsewhere [`FlatSlot::fault_code`] answers
/// `None`: ask the tracker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlatSlot {
    base_gfn: u64,
    npages: u64,
    /// [`FlatSlot`]'s bits: see the `BIT_`/`SHIFT_` constants.
    bits: u64,
}

const BIT_GUEST_MEMFD: u64 = 1 << 0;
const BIT_COMPLETE: u64 = 1 << 1;
const SHIFT_MAX_LEVEL: u32 = 2;
const SHIFT_FILE_CAP: u32 = 4;

/// Two bits of a level; the fourth value decodes as 1G (only a torn read holds it).
const fn level_bits(level: Level) -> u64 {
    level.index() as u64
}

#[inline(always)]
const fn bits_level(bits: u64) -> Level {
    // A match, not a table: the compiler built the table on the stack at every decode.
    match bits & 3 {
        0 => Level::K4,
        1 => Level::M2,
        _ => Level::G1,
    }
}

impl FlatSlot {
    /// The words a front stores.
    pub const fn to_words(self) -> [u64; 3] {
        [self.base_gfn, self.npages, self.bits]
    }

    /// The slot three words hold (any words).
    pub const fn from_words(words: [u64; 3]) -> Self {
        FlatSlot {
            base_gfn: words[0],
            npages: words[1],
            bits: words[2],
        }
    }

    /// The slot's first gfn.
    pub const fn base_gfn(&self) -> Gfn {
        Gfn(self.base_gfn)
    }

    /// Whether the words decide every fault in the slot (see [`FlatSlot`]).
    pub const fn is_complete(&self) -> bool {
        self.bits & BIT_COMPLETE != 0
    }

    /// Whether `gfn` is in the slot.
    pub const fn contains(&self, gfn: Gfn) -> bool {
        gfn.0.wrapping_sub(self.base_gfn) < self.npages
    }

    /// The tracker's answer ([`Tracker::max_mapping_level`]) for `gfn` of this slot, with
    /// `probe` reading the VM's attribute store; `None` where the slot is not complete.
    #[inline]
    pub fn fault_code(
        &self,
        gfn: Gfn,
        access: Access,
        probe: impl FnOnce() -> Probe,
    ) -> Option<FaultCode> {
        if !self.is_complete() {
            return None;
        }
        let cap = bits_level(self.bits >> SHIFT_FILE_CAP);
        Some(fault_level(self, gfn.0, access, probe, |level| {
            level.min(cap)
        }))
    }
}

impl FaultSlot for FlatSlot {
    #[inline]
    fn guest_memfd(&self) -> bool {
        self.bits & BIT_GUEST_MEMFD != 0
    }
    #[inline]
    fn max_level(&self) -> Level {
        bits_level(self.bits >> SHIFT_MAX_LEVEL)
    }
    #[inline]
    fn misaligned(&self, _: Level) -> bool {
        // Folded into `max_level`.
        false
    }
    #[inline]
    fn lpage_inside(&self, level: Level, gfn: u64) -> bool {
        crate::lpage::inside(self.base_gfn, self.npages, level, gfn)
    }
    #[inline]
    fn inhibited(&self, _: Level, _: u64) -> bool {
        // Complete only without GUEST_INHIBIT.
        false
    }
}

impl<A: crate::attrs::AttrBackend> Tracker<A> {
    /// Every memslot's part of the fault rule, in address order ([`FlatSlot`]).
    pub fn flat_slots(&self) -> impl ExactSizeIterator<Item = FlatSlot> + '_ {
        let per_vm = self.check.mode() == AttrMode::PerVm;
        self.slots
            .iter()
            .map(move |slot| self.flat_slot(slot, per_vm))
    }

    fn flat_slot(&self, slot: &Memslot, per_vm: bool) -> FlatSlot {
        let inhibits = Level::LARGE
            .into_iter()
            .any(|l| slot.lpage(l).any_inhibited());
        // A file of order-0 folios caps every private page alike; a file of huge folios
        // caps by the folio, which splits and merges.
        let file_cap = match self.bound(slot) {
            None => Some(Level::G1),
            Some((gmem, _)) => (gmem.folios().order() == Level::K4)
                .then(|| self.folio_cap_in_file(slot, Gfn(slot.base_gfn), Level::G1)),
        };
        let complete = per_vm && !inhibits && file_cap.is_some();
        let aligned = Level::LARGE
            .into_iter()
            .take_while(|&l| !slot.misaligned(l))
            .last()
            .unwrap_or(Level::K4);
        let flag = |on: bool, bit: u64| if on { bit } else { 0 };
        FlatSlot {
            base_gfn: slot.base_gfn,
            npages: slot.npages,
            bits: flag(slot.flags.guest_memfd, BIT_GUEST_MEMFD)
                | flag(complete, BIT_COMPLETE)
                | level_bits(slot.max_level().min(aligned)) << SHIFT_MAX_LEVEL
                | level_bits(file_cap.unwrap_or(Level::K4)) << SHIFT_FILE_CAP,
        }
    }
}

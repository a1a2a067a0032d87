//! Large-page info of one memslot at one large level: what KVM's `disallow_lpage` knows
//! besides the attributes.
//!
//! KVM keeps an int per large page: MIXED (bit 31), GUEST_INHIBIT (bit 30) and a count of other
//! reasons. The other reasons are geometric (a large page not wholly inside the slot, host and
//! guest addresses not congruent modulo the level) and are derived from the slot's bounds when
//! asked. MIXED is not stored per slot at all: for a large page wholly inside the slot it is
//! exactly "the page's gfns differ", which the attribute store answers in its descent
//! ([`crate::AttrStore::probe`]). What remains is GUEST_INHIBIT, a bit per large page
//! allocated only once a guest accepts below the level. So a slot costs no memory per page
//! until a TDX guest accepts at 4K.

#[cfg(test)]
use crate::addr::Gfn;
use crate::addr::{GfnRange, Level};
use crate::bitmap::IndexSet;
use crate::error::Result;

/// GUEST_INHIBIT of one slot at one level, and the geometry of its large pages.
#[derive(Clone, Debug)]
pub(crate) struct LpageInfo {
    level: Level,
    /// Index (`gfn >> level shift`) of the first large page wholly inside the slot.
    first: u64,
    /// Large pages wholly inside the slot.
    count: u64,
    /// GUEST_INHIBIT: large-page indices; no memory until first needed.
    inhibit: IndexSet,
}

impl LpageInfo {
    /// The info of a slot covering `slot`: no allocation.
    pub(crate) fn new(level: Level, slot: GfnRange) -> Self {
        let (first, count) = bounds(level, slot.start.0, slot.end.0);
        LpageInfo {
            level,
            first,
            count,
            inhibit: IndexSet::new(count),
        }
    }

    /// The bit index of the large page holding `gfn`, if that page lies wholly inside the slot
    /// (the same answer as [`inside`], from the bounds worked out once: tested equal below).
    #[inline]
    fn index(&self, gfn: u64) -> Option<u64> {
        let i = (gfn >> self.level.page_shift()).wrapping_sub(self.first);
        (i < self.count).then_some(i)
    }

    /// Whether the large page holding `gfn` carries GUEST_INHIBIT.
    #[inline]
    pub(crate) fn is_inhibited(&self, gfn: u64) -> bool {
        !self.inhibit.is_empty() && self.index(gfn).is_some_and(|i| self.inhibit.contains(i))
    }

    /// Makes sure the next [`LpageInfo::set_inhibit`] will not allocate.
    pub(crate) fn reserve_inhibit(&mut self) -> Result<()> {
        self.inhibit.reserve_one()
    }

    /// Sets GUEST_INHIBIT on the large page holding `gfn` (if wholly inside the slot).
    /// Returns whether the bit was newly set. Call [`LpageInfo::reserve_inhibit`] first.
    pub(crate) fn set_inhibit(&mut self, gfn: u64) -> bool {
        self.index(gfn).is_some_and(|i| self.inhibit.insert(i))
    }

    /// Clears GUEST_INHIBIT on the large page holding `gfn`. Returns whether it was set.
    pub(crate) fn clear_inhibit(&mut self, gfn: u64) -> bool {
        self.index(gfn).is_some_and(|i| self.inhibit.remove(i))
    }

    /// The first gfn of every large page with GUEST_INHIBIT, ascending: O(inhibits) while
    /// sparse, O(pages / 64) once dense.
    pub(crate) fn inhibited_gfns(&self) -> impl Iterator<Item = u64> + '_ {
        let (first, shift) = (self.first, self.level.page_shift());
        self.inhibit.iter().map(move |i| (first + i) << shift)
    }

    /// Whether any large page carries GUEST_INHIBIT.
    pub(crate) fn any_inhibited(&self) -> bool {
        self.inhibit.count() != 0
    }

    /// Number of large pages with GUEST_INHIBIT.
    pub(crate) fn inhibited_count(&self) -> u64 {
        self.inhibit.count()
    }

    /// Number of large pages wholly inside the slot.
    pub(crate) fn len(&self) -> u64 {
        self.count
    }

    /// Absolute index of the first large page wholly inside the slot.
    pub(crate) fn first(&self) -> u64 {
        self.first
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.inhibit.heap_bytes()
    }
}

/// The index (`gfn >> level shift`) of the first large page of `level` wholly inside the gfns
/// `[start, end)`, and how many are.
#[inline]
const fn bounds(level: Level, start: u64, end: u64) -> (u64, u64) {
    let first = start.div_ceil(level.pages());
    (first, (end >> level.page_shift()).saturating_sub(first))
}

/// Whether the large page of `level` holding `gfn` lies wholly inside the `npages` gfns from
/// `base_gfn` (any values, wrapping): it starts at or after the first gfn and ends at or before
/// the end. The one formula for "inside the slot", which KVM marks as its own disallow reason;
/// the fault path reads it from a slot's bounds alone.
#[inline]
pub(crate) const fn inside(base_gfn: u64, npages: u64, level: Level, gfn: u64) -> bool {
    let start = gfn & !(level.pages() - 1);
    start >= base_gfn && (start - base_gfn).wrapping_add(level.pages()) <= npages
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The info's index answers [`inside`] for slots and gfns around every edge of a large
    /// page, at both levels.
    #[test]
    fn index_agrees_with_inside() {
        for level in Level::LARGE {
            let p = level.pages();
            let edges = [0, 1, p - 1, p, p + 1, 2 * p - 1, 2 * p, 3 * p + 7];
            for base in edges {
                for npages in edges.iter().map(|&e| e + 1).chain([1, p, 2 * p, 3 * p + 1]) {
                    let info = LpageInfo::new(level, GfnRange::new(Gfn(base), Gfn(base + npages)));
                    for gfn in (0..=base + npages + p).step_by(7).chain(edges) {
                        assert_eq!(
                            info.index(gfn).is_some(),
                            inside(base, npages, level, gfn),
                            "level {level:?}, slot [{base:#x}, +{npages:#x}), gfn {gfn:#x}"
                        );
                    }
                }
            }
        }
    }
}

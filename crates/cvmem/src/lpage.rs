//! Large-page info: for one memslot and one large level, which large pages may be mapped huge.
//!
//! KVM keeps a `disallow_lpage` int per large page: MIXED (bit 31), GUEST_INHIBIT (bit 30) and a
//! count of other reasons. The other reasons are all geometric — a large page not wholly inside
//! the slot, or host and guest addresses not congruent modulo the level — and are derived here
//! from the slot's bounds when asked, so no per-page count is stored. What remains per large page
//! wholly inside the slot is two bits: MIXED, and PRIVATE (the attribute of a uniform large page,
//! which lets the fault path decide the common case without searching the runs). GUEST_INHIBIT
//! costs a third bit, allocated only once a guest accepts below the level.
//! Memory: 2 bits per 2M page, ~64 KiB per TiB, where Linux spends 4 bytes (2 MiB per TiB).

use crate::addr::{GfnRange, Level};
use crate::attrs::{AttrRun, AttrStore};
use crate::bitmap::Bitmap;
use crate::error::Result;
use crate::KVM_MEMORY_ATTRIBUTE_PRIVATE;

/// Large-page state of one slot at one level.
#[derive(Clone, Debug)]
pub(crate) struct LpageInfo {
    level: Level,
    /// Index (`gfn >> level shift`) of the first large page wholly inside the slot.
    first: u64,
    /// Pages inside whose attributes differ.
    mixed: Bitmap,
    /// For pages that are not mixed: whether they are private.
    private: Bitmap,
    /// GUEST_INHIBIT; empty until first needed.
    inhibit: Bitmap,
}

impl LpageInfo {
    /// Heap bytes [`LpageInfo::build`] allocates for a slot covering `slot`.
    pub(crate) fn bytes_for(level: Level, slot: GfnRange) -> usize {
        let first = slot.start.div_ceil(level.pages());
        let count = (slot.end >> level.page_shift()).saturating_sub(first);
        usize::try_from(count.div_ceil(64) * 8 * 2).unwrap_or(usize::MAX)
    }

    /// Builds the info of a slot covering `slot` from the attribute runs, in
    /// O(runs in the slot + large pages / 64): never per 4K page.
    pub(crate) fn build(level: Level, slot: GfnRange, attrs: &AttrStore) -> Result<Self> {
        let shift = level.page_shift();
        let first = slot.start.div_ceil(level.pages());
        let end = slot.end >> shift;
        let count = end.saturating_sub(first);
        let mut info = LpageInfo {
            level,
            first,
            mixed: Bitmap::try_new(count)?,
            private: Bitmap::try_new(count)?,
            inhibit: Bitmap::default(),
        };
        if count == 0 {
            return Ok(info);
        }
        let full = GfnRange::new(first << shift, end << shift);
        for run in attrs.runs(full) {
            // A run boundary strictly inside a large page makes it mixed (runs are maximal).
            if !level.is_aligned(run.start) {
                info.mixed.set((run.start >> shift) - first, true);
            }
            if run.attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0 {
                let lo = run.start.div_ceil(level.pages());
                let hi = run.end >> shift;
                if lo < hi {
                    info.private.fill(lo - first, hi - first, true);
                }
            }
        }
        Ok(info)
    }

    /// The bit index of the large page holding `gfn`, if that page lies wholly inside the slot.
    #[inline]
    fn index(&self, gfn: u64) -> Option<u64> {
        let i = (gfn >> self.level.page_shift()).wrapping_sub(self.first);
        (i < self.mixed.len()).then_some(i)
    }

    /// Whether the large page holding `gfn` lies wholly inside the slot.
    pub(crate) fn inside(&self, gfn: u64) -> bool {
        self.index(gfn).is_some()
    }

    /// Whether the large page holding `gfn` may be mapped at this level, as far as this info
    /// knows (inside the slot, not mixed, not inhibited); the caller checks backing and alignment.
    #[inline]
    pub(crate) fn allows(&self, gfn: u64) -> bool {
        match self.index(gfn) {
            Some(i) => !self.mixed.get(i) && !self.inhibited(i),
            None => false,
        }
    }

    /// Whether the page is private, when the large page holding `gfn` is uniform; `None` when
    /// it is mixed or not wholly inside the slot.
    #[inline]
    pub(crate) fn uniform_private(&self, gfn: u64) -> Option<bool> {
        let i = self.index(gfn)?;
        (!self.mixed.get(i)).then(|| self.private.get(i))
    }

    /// Whether the large page holding `gfn` is mixed (false outside the slot, as in KVM).
    pub(crate) fn is_mixed(&self, gfn: u64) -> bool {
        self.index(gfn).is_some_and(|i| self.mixed.get(i))
    }

    /// Whether the large page holding `gfn` carries GUEST_INHIBIT.
    pub(crate) fn is_inhibited(&self, gfn: u64) -> bool {
        self.index(gfn).is_some_and(|i| self.inhibited(i))
    }

    #[inline]
    fn inhibited(&self, i: u64) -> bool {
        self.inhibit.len() != 0 && self.inhibit.get(i)
    }

    /// Makes sure [`LpageInfo::set_inhibit`] will not allocate.
    pub(crate) fn reserve_inhibit(&mut self) -> Result<()> {
        if self.inhibit.len() == 0 && self.mixed.len() != 0 {
            self.inhibit = Bitmap::try_new(self.mixed.len())?;
        }
        Ok(())
    }

    /// Sets GUEST_INHIBIT on the large page holding `gfn` (if wholly inside the slot).
    /// Returns whether the bit was newly set. Call [`LpageInfo::reserve_inhibit`] first.
    pub(crate) fn set_inhibit(&mut self, gfn: u64) -> bool {
        match self.index(gfn) {
            Some(i) if !self.inhibit.get(i) => {
                self.inhibit.set(i, true);
                true
            }
            _ => false,
        }
    }

    /// Clears GUEST_INHIBIT on the large page holding `gfn`. Returns whether it was set.
    pub(crate) fn clear_inhibit(&mut self, gfn: u64) -> bool {
        match self.index(gfn) {
            Some(i) if self.inhibited(i) => {
                self.inhibit.set(i, false);
                true
            }
            _ => false,
        }
    }

    /// Updates MIXED / PRIVATE after the attributes of `changed` were set, `run` being the
    /// maximal run that now holds it: large pages wholly inside the range become uniform, and
    /// the head and tail large pages are uniform exactly when they lie inside `run` (a large
    /// page holding part of the range meets `run`; it is uniform iff it lies in one run). No
    /// search at all.
    pub(crate) fn update(&mut self, changed: GfnRange, run: &AttrRun) {
        let count = self.mixed.len();
        if count == 0 {
            return;
        }
        let shift = self.level.page_shift();
        let private = run.attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0;
        let lo = changed.start.div_ceil(self.level.pages()).max(self.first);
        let hi = (changed.end >> shift).min(self.first + count);
        if lo < hi {
            self.mixed.fill(lo - self.first, hi - self.first, false);
            self.private.fill(lo - self.first, hi - self.first, private);
        }
        for page in [changed.start >> shift, (changed.end - 1) >> shift] {
            let i = page.wrapping_sub(self.first);
            if i >= count {
                continue;
            }
            let uniform = run.start <= page << shift && (page + 1) << shift <= run.end;
            self.mixed.set(i, !uniform);
            self.private.set(i, uniform && private);
        }
    }

    /// How many large pages with absolute indices `[start, end)` (wholly inside the slot) are
    /// neither mixed nor inhibited: a popcount, a word at a time.
    pub(crate) fn allowed_count(&self, start: u64, end: u64) -> u64 {
        let (lo, hi) = (
            start.max(self.first) - self.first,
            end.min(self.first + self.len()),
        );
        let hi = hi.saturating_sub(self.first);
        if lo >= hi {
            return 0;
        }
        (hi - lo) - self.mixed.count_either(&self.inhibit, lo, hi)
    }

    /// Number of large pages with GUEST_INHIBIT.
    pub(crate) fn inhibited_count(&self) -> u64 {
        self.inhibit.count_ones()
    }

    /// Number of mixed large pages.
    pub(crate) fn mixed_count(&self) -> u64 {
        self.mixed.count_ones()
    }

    /// Number of large pages wholly inside the slot.
    pub(crate) fn len(&self) -> u64 {
        self.mixed.len()
    }

    /// Absolute index of the first large page wholly inside the slot.
    pub(crate) fn first(&self) -> u64 {
        self.first
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.mixed.heap_bytes() + self.private.heap_bytes() + self.inhibit.heap_bytes()
    }
}

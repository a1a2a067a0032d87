//! `option-a`: per-memslot arrays per level — 1 bit per 4 KiB page (PRIVATE), and 2 bits per 2M
//! and per 1G page (shared, private, mixed).
//!
//! A conversion fills the 4K bits a word at a time, sets the 2-bit state of every large page it
//! covers wholly, and rescans only the head and tail large pages: 8 words of bits for a 2M page,
//! 16 words of 2M states for a 1G page. The fault path reads the 2M state (and the 4K bit only
//! inside a mixed 2M page) and the 1G state. Memory: 32 MiB of bits per TiB of memslots.
//! Attributes of gfns outside every memslot live in a side table ([`crate::outside`]).

use cvmem::{
    Access, Error, Gfn, GfnRange, Level, MaxLevel, KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SHIFT,
};

use crate::bits::{Crumb, Crumbs, PageBits};
use crate::design::{answer, Design, Slot};
use crate::outside::Outside;
use crate::slots::SlotTable;

/// Arrays of one slot: bits from a 1G-aligned origin, states indexed from the same origin.
#[derive(Clone, Debug)]
struct Arrays {
    bits: PageBits,
    m2: Crumbs,
    g1: Crumbs,
}

impl Arrays {
    fn state(&self, level: Level, gfn: u64) -> Crumb {
        let i = (gfn - self.bits.origin()) >> level.page_shift();
        match level {
            Level::M2 => self.m2.get(i),
            _ => self.g1.get(i),
        }
    }

    /// Recomputes the state of the large page starting at `gfn` (wholly inside the slot).
    fn rescan(&mut self, level: Level, gfn: u64) {
        let origin = self.bits.origin();
        let c = match level {
            Level::M2 => match self.bits.uniform_block(gfn, Level::M2.pages() / 64) {
                Some(true) => Crumb::Private,
                Some(false) => Crumb::Shared,
                None => Crumb::Mixed,
            },
            _ => self
                .m2
                .uniform_block((gfn - origin) >> Level::M2.page_shift(), 512)
                .unwrap_or(Crumb::Mixed),
        };
        let i = (gfn - origin) >> level.page_shift();
        match level {
            Level::M2 => self.m2.set(i, c),
            _ => self.g1.set(i, c),
        }
    }

    /// After the bits of `range` (inside `slot`) were set to `private`: whole large pages take
    /// the state, head and tail are rescanned; levels in increasing order.
    fn update(&mut self, slot: &Slot, range: GfnRange, private: bool) {
        let range = range.gfns();
        let uniform = if private {
            Crumb::Private
        } else {
            Crumb::Shared
        };
        let origin = self.bits.origin();
        for level in Level::LARGE {
            let nr = level.pages();
            let first = range.start.div_ceil(nr) * nr;
            let last = level.align_down(cvmem::Gfn(range.end)).0;
            if first < last {
                let (a, b) = ((first - origin) / nr, (last - origin) / nr);
                match level {
                    Level::M2 => self.m2.fill(a, b, uniform),
                    _ => self.g1.fill(a, b, uniform),
                }
            }
            let head = level.align_down(cvmem::Gfn(range.start)).0;
            let tail = level.align_down(cvmem::Gfn(range.end - 1)).0;
            for page in [head, tail] {
                let wholly_covered = page >= range.start && page + nr <= range.end;
                if !wholly_covered && slot.large_page(page, level).is_some() {
                    self.rescan(level, page);
                }
                if head == tail {
                    break;
                }
            }
        }
    }

    fn build(slot: &Slot, private_runs: &[GfnRange]) -> Self {
        let bits = PageBits::new(slot.range());
        let origin = bits.origin();
        let end = slot.end_gfn();
        let mut a = Arrays {
            m2: Crumbs::new((end - origin).div_ceil(Level::M2.pages()), Crumb::Mixed),
            g1: Crumbs::new((end - origin).div_ceil(Level::G1.pages()), Crumb::Mixed),
            bits,
        };
        for r in private_runs {
            a.bits.fill(*r, true);
        }
        // Every large page wholly inside the slot is scanned once.
        for level in Level::LARGE {
            let nr = level.pages();
            let mut page = slot.base_gfn.div_ceil(nr) * nr;
            while page + nr <= end {
                a.rescan(level, page);
                page += nr;
            }
        }
        a
    }

    fn heap_bytes(&self) -> usize {
        self.bits.heap_bytes() + self.m2.heap_bytes() + self.g1.heap_bytes()
    }
}

/// Option A.
#[derive(Clone, Debug, Default)]
pub struct OptionA {
    slots: SlotTable<Arrays>,
    outside: Outside,
}

impl OptionA {
    /// An empty VM.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Applies `range` to the parts no slot covers.
pub(crate) fn set_outside<T>(
    outside: &mut Outside,
    slots: &SlotTable<T>,
    range: GfnRange,
    private: bool,
) {
    let mut at = range.start;
    for (slot, _) in slots.overlapping(range.start.0, range.end.0) {
        if at < Gfn(slot.base_gfn) {
            outside.set(GfnRange::new(at, Gfn(slot.base_gfn)), private);
        }
        at = at.max(Gfn(slot.end_gfn()));
    }
    if at < range.end {
        outside.set(GfnRange::new(at, range.end), private);
    }
}

impl Design for OptionA {
    fn name(&self) -> &'static str {
        "option-a"
    }

    fn set_attributes(&mut self, range: GfnRange, attributes: u64) -> Result<(), Error> {
        let private = attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0;
        for (slot, arrays) in self.slots.overlapping_mut(range.start.0, range.end.0) {
            let clipped = GfnRange::new(
                range.start.max(Gfn(slot.base_gfn)),
                range.end.min(Gfn(slot.end_gfn())),
            );
            arrays.bits.fill(clipped, private);
            arrays.update(slot, clipped, private);
        }
        set_outside(&mut self.outside, &self.slots, range, private);
        Ok(())
    }

    fn create_slot(&mut self, slot: &Slot) -> Result<(), Error> {
        let runs = self.outside.take(slot.range());
        self.slots.insert(*slot, Arrays::build(slot, &runs));
        Ok(())
    }

    fn delete_slot(&mut self, slot: &Slot) {
        if let Some((s, arrays)) = self.slots.remove(slot.id) {
            for run in arrays.bits.set_runs(s.range()) {
                self.outside.set(run, true);
            }
        }
    }

    fn move_slot(&mut self, old: &Slot, new: &Slot) -> Result<(), Error> {
        self.delete_slot(old);
        self.create_slot(new)
    }

    fn set_dirty_log(&mut self, old: &Slot, new: &Slot) {
        if let Some(entry) = self.slots.get_mut(old.id) {
            entry.0 = *new;
        }
    }

    fn max_mapping_level(&self, gpa: u64, access: Access) -> MaxLevel {
        let gfn = gpa >> PAGE_SHIFT;
        let found = self.slots.find(gfn);
        answer(
            found.map(|(s, _)| s),
            gpa,
            access,
            || {
                let (_, a) = found.expect("answer() asks only inside a slot");
                match a.state(Level::M2, gfn) {
                    Crumb::Private => true,
                    Crumb::Shared => false,
                    Crumb::Mixed => a.bits.get(gfn),
                }
            },
            |level| {
                let (_, a) = found.expect("answer() asks only inside a slot");
                a.state(level, gfn) != Crumb::Mixed
            },
        )
    }

    fn heap_bytes(&self) -> usize {
        self.slots.heap_bytes()
            + self
                .slots
                .iter()
                .map(|(_, a)| a.heap_bytes())
                .sum::<usize>()
            + self.outside.heap_bytes()
    }
}

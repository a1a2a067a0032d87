//! `linux`: Option D as merged in Linux 6.8 — the per-VM `mem_attr_array` xarray with one value
//! entry per 4 KiB gfn, and per-memslot `kvm_lpage_info` ints with the MIXED bit.
//!
//! The algorithms follow `virt/kvm/kvm_main.c` and `arch/x86/kvm/mmu/mmu.c`:
//! - `kvm_vm_set_mem_attributes`: early exit when the range already has the attributes
//!   (`kvm_range_has_memory_attributes`), `xa_reserve` of every gfn, then `xa_store` of every gfn
//!   (NULL for attributes 0, which erases), then `kvm_arch_post_set_memory_attributes` per slot;
//! - `kvm_arch_post_set_memory_attributes`: per level, increasing, the head large page is
//!   rescanned if it straddles the range and lies in the slot, fully covered ones have MIXED
//!   cleared, the tail one is rescanned; at 1G `hugepage_has_attrs` reuses the 2M MIXED flags and
//!   the first gfn of each 2M page;
//! - slot creation (`kvm_alloc_memslot_metadata` + `kvm_mmu_init_memslot_memory_attributes`)
//!   scans every large page wholly in the slot, 512 gfns per 2M page;
//! - the fault path: `xa_load` for `kvm_mem_is_private`, then the level walks down while
//!   `disallow_lpage != 0`.
//!
//! Memory is the kernel's: 576 bytes per xarray node plus the `kvcalloc` of the ints.

mod lpage;
mod xarray;

pub use lpage::{kvmalloc_bytes, LpageInfo, MIXED};
pub use xarray::{XArray, XA_NODE_BYTES};

use cvmem::{Access, Error, Gfn, GfnRange, Level, MaxLevel, MemoryFault, PAGE_SHIFT, PAGE_SIZE};

use crate::design::{Design, Slot};
use crate::slots::SlotTable;

/// Per-slot `arch.lpage_info` for 2M (index 0) and 1G (index 1).
type SlotLpage = [LpageInfo; 2];

/// Option D as merged.
#[derive(Clone, Debug, Default)]
pub struct Linux {
    xa: XArray,
    slots: SlotTable<SlotLpage>,
    lpage_bytes: usize,
    peak_bytes: usize,
}

fn attr_value(attributes: u64) -> Result<u32, Error> {
    u32::try_from(attributes)
        .ok()
        .filter(|&v| v < u32::MAX - 2)
        .ok_or(Error::Unsupported {
            what: cvmem::Unsupported::AttributesAbove32Bits,
        })
}

impl Linux {
    /// An empty VM.
    pub fn new() -> Self {
        Self::default()
    }

    /// The xarray.
    pub fn xarray(&self) -> &XArray {
        &self.xa
    }

    /// `kvm_get_memory_attributes`.
    #[inline]
    fn get(&self, gfn: u64) -> u32 {
        self.xa.load(gfn).unwrap_or(0)
    }

    /// `kvm_range_has_memory_attributes(kvm, start, end, ~0, attrs)`.
    fn range_has(&self, start: u64, end: u64, attrs: u32) -> bool {
        if attrs == 0 {
            !self.xa.any_in(start, end)
        } else {
            self.xa.all_equal(start, end, attrs)
        }
    }

    /// `hugepage_has_attrs`.
    fn hugepage_has_attrs(&self, lpage: &SlotLpage, gfn: u64, level: Level, attrs: u32) -> bool {
        let end = gfn + level.pages();
        if level == Level::M2 {
            return self.range_has(gfn, end, attrs);
        }
        let small = Level::M2.pages();
        (gfn..end)
            .step_by(small as usize)
            .all(|g| !lpage[0].test_mixed(g) && self.get(g) == attrs)
    }

    fn note_peak(&mut self) {
        let bytes = self.xa.peak_nodes() * XA_NODE_BYTES + self.lpage_bytes;
        self.peak_bytes = self.peak_bytes.max(bytes);
    }

    /// `kvm_arch_post_set_memory_attributes` for one slot, `range` clipped to it.
    fn post_set(&self, slot: &Slot, lpage: &mut SlotLpage, range: GfnRange, attrs: u32) {
        let range = range.gfns();
        for (k, level) in Level::LARGE.into_iter().enumerate() {
            let nr = level.pages();
            let mut gfn = level.align_down(cvmem::Gfn(range.start)).0;
            if gfn != range.start || gfn + nr > range.end {
                if gfn >= slot.base_gfn && gfn + nr <= slot.end_gfn() {
                    if self.hugepage_has_attrs(lpage, gfn, level, attrs) {
                        lpage[k].clear_mixed(gfn);
                    } else {
                        lpage[k].set_mixed(gfn);
                    }
                }
                gfn += nr;
            }
            while gfn + nr <= range.end {
                lpage[k].clear_mixed(gfn);
                gfn += nr;
            }
            if gfn < range.end && gfn + nr <= slot.end_gfn() {
                if self.hugepage_has_attrs(lpage, gfn, level, attrs) {
                    lpage[k].clear_mixed(gfn);
                } else {
                    lpage[k].set_mixed(gfn);
                }
            }
        }
    }

    /// `kvm_alloc_memslot_metadata` + `kvm_mmu_init_memslot_memory_attributes`.
    fn build_lpage(&self, slot: &Slot) -> SlotLpage {
        let mut lpage = [
            LpageInfo::new(slot, Level::M2),
            LpageInfo::new(slot, Level::G1),
        ];
        for (k, level) in Level::LARGE.into_iter().enumerate() {
            let nr = level.pages();
            let end = level.align_down(cvmem::Gfn(slot.end_gfn())).0;
            let mut start = level.align_down(cvmem::Gfn(slot.base_gfn)).0;
            if start < slot.base_gfn {
                start += nr;
            }
            let mut gfn = start;
            while gfn < end {
                let attrs = self.get(gfn);
                if self.hugepage_has_attrs(&lpage, gfn, level, attrs) {
                    lpage[k].clear_mixed(gfn);
                } else {
                    lpage[k].set_mixed(gfn);
                }
                gfn += nr;
            }
        }
        lpage
    }

    fn lpage_bytes_of(lpage: &SlotLpage) -> usize {
        lpage.iter().map(LpageInfo::kernel_bytes).sum()
    }
}

impl Design for Linux {
    fn name(&self) -> &'static str {
        "linux"
    }

    fn set_attributes(&mut self, range: GfnRange, attributes: u64) -> Result<(), Error> {
        let attrs = attr_value(attributes)?;
        if self.range_has(range.start.0, range.end.0, attrs) {
            return Ok(());
        }
        // Reserve memory ahead of time to avoid having to deal with failures.
        for gfn in range.gfns() {
            self.xa.reserve(gfn);
        }
        self.note_peak();
        // (kvm_handle_gfn_range(pre_set_range) zaps SPTEs: no page tables in this model.)
        if attrs == 0 {
            for gfn in range.gfns() {
                self.xa.erase(gfn);
            }
        } else {
            for gfn in range.gfns() {
                self.xa.store(gfn, attrs);
            }
        }
        let mut slots = std::mem::take(&mut self.slots);
        for (slot, lpage) in slots.overlapping_mut(range.start.0, range.end.0) {
            let clipped = GfnRange::new(
                range.start.max(Gfn(slot.base_gfn)),
                range.end.min(Gfn(slot.end_gfn())),
            );
            self.post_set(slot, lpage, clipped, attrs);
        }
        self.slots = slots;
        self.note_peak();
        Ok(())
    }

    fn create_slot(&mut self, slot: &Slot) -> Result<(), Error> {
        let lpage = self.build_lpage(slot);
        self.lpage_bytes += Self::lpage_bytes_of(&lpage);
        self.slots.insert(*slot, lpage);
        self.note_peak();
        Ok(())
    }

    fn delete_slot(&mut self, slot: &Slot) {
        if let Some((_, lpage)) = self.slots.remove(slot.id) {
            self.lpage_bytes -= Self::lpage_bytes_of(&lpage);
        }
    }

    fn move_slot(&mut self, old: &Slot, new: &Slot) -> Result<(), Error> {
        // KVM_MR_MOVE allocates fresh metadata for the new location, then frees the old.
        let lpage = self.build_lpage(new);
        self.lpage_bytes += Self::lpage_bytes_of(&lpage);
        self.note_peak();
        self.delete_slot(old);
        self.slots.insert(*new, lpage);
        Ok(())
    }

    fn set_dirty_log(&mut self, old: &Slot, new: &Slot) {
        if let Some(entry) = self.slots.get_mut(old.id) {
            entry.0 = *new;
        }
    }

    fn max_mapping_level(&self, gpa: u64, access: Access) -> MaxLevel {
        let gfn = gpa >> PAGE_SHIFT;
        let Some((slot, lpage)) = self.slots.find(gfn) else {
            return MaxLevel::NoSlot;
        };
        let fault = MaxLevel::MemoryFault(MemoryFault {
            gpa: cvmem::Gpa(gfn << PAGE_SHIFT),
            size: PAGE_SIZE,
            private: access.is_private(),
        });
        if access.is_private() && !slot.flags.guest_memfd {
            return fault;
        }
        let private = self.get(gfn) & cvmem::KVM_MEMORY_ATTRIBUTE_PRIVATE as u32 != 0;
        if private != access.is_private() {
            return fault;
        }
        // kvm_mmu_max_mapping_level: walk down while disallow_lpage != 0; dirty logging and the
        // host mapping size cap the level.
        let max = slot.max_level();
        for (k, level) in [(1, Level::G1), (0, Level::M2)] {
            if level <= max && lpage[k].disallow(gfn) == 0 {
                return MaxLevel::Level(level);
            }
        }
        MaxLevel::Level(Level::K4)
    }

    fn heap_bytes(&self) -> usize {
        self.xa.kernel_bytes() + self.lpage_bytes
    }

    fn peak_heap_bytes(&self) -> usize {
        self.peak_bytes.max(self.heap_bytes())
    }

    fn host_bytes(&self) -> usize {
        self.xa.host_bytes()
            + self
                .slots
                .iter()
                .map(|(_, l)| l.iter().map(LpageInfo::host_bytes).sum::<usize>())
                .sum::<usize>()
            + self.slots.heap_bytes()
    }
}

//! The common ground of Options B and C: per-page state kept in the page tables themselves, on
//! the core's TDP MMU model ([`cvmem::mmu::Vm`]).
//!
//! Both designs record a page's kind in its mapping (B: which tree maps it; C: a SHARED bit in
//! the leaf) and hugepage eligibility next to the mappings (B: a spare MIXED bit in non-leaf
//! SPTEs; C: a 512-bit "mixed" bitmap per page table and one at the root). Either way the state
//! exists only where mappings exist, so the designs must keep every page of every memslot
//! mapped at all times: after every memslot change and conversion the affected pages are
//! faulted in again, at the largest level allowed (the model's eager recovery collapses what
//! becomes uniform). Their memory is the page-table pages this forces to exist.
//!
//! In the model, the level a fault may use is decided by the model's own tracker; it stands in
//! for the MIXED bits B and C would keep in their tables (same answers, and the cost that
//! dominates — the tables — is the model's real count). The fault path here reads only the page
//! tables: the leaf of the access's kind gives the level; no leaf means the page has the other
//! kind (or cannot be mapped), a memory fault.

use cvmem::mmu::{Layout, Recovery, Vm};
use cvmem::{
    Access, Error, Gfn, GfnRange, Gpa, MaxLevel, MemoryFault, MemoryRegion, PAGE_SHIFT, PAGE_SIZE,
};

use crate::design::{Design, Slot};

/// A VM whose memslots are always wholly mapped.
#[derive(Clone, Debug)]
pub struct FullyMapped {
    vm: Vm,
}

fn region(slot: &Slot, size: u64) -> MemoryRegion {
    MemoryRegion {
        gmem: None,
        slot: slot.id,
        gpa: Gpa(slot.base_gfn << PAGE_SHIFT),
        size,
        flags: slot.flags,
        uaddr: (size != 0).then_some(slot.uaddr),
        backing: (size != 0).then_some(slot.backing),
    }
}

impl FullyMapped {
    /// An empty VM with page tables of `layout`.
    pub fn new(layout: Layout) -> Self {
        FullyMapped {
            vm: Vm::new(layout, Recovery::Eager),
        }
    }

    /// The model.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Faults every page of `range` that a memslot covers, each with the kind it has.
    fn map(&mut self, range: GfnRange) -> Result<(), Error> {
        let runs: Vec<(GfnRange, bool)> = {
            let t = self.vm.tracker();
            let mut out = Vec::new();
            for s in t.memslots() {
                let Some(r) = s.range().intersect(&range) else {
                    continue;
                };
                for run in t.runs(r) {
                    let private = run.attributes & cvmem::KVM_MEMORY_ATTRIBUTE_PRIVATE != 0;
                    if private && !s.flags().guest_memfd {
                        continue; // cannot be mapped at all
                    }
                    out.push((run.range(), private));
                }
            }
            out
        };
        for (r, private) in runs {
            self.vm
                .fault_range(r.start.gpa(), r.bytes(), Access::from_private(private))?;
        }
        Ok(())
    }

    /// A conversion, then the pages it unmapped faulted in again: the range itself, and what
    /// is left of a leaf of the old kind that straddled either end (split or removed).
    pub fn set_attributes(&mut self, range: GfnRange, attributes: u64) -> Result<(), Error> {
        let straddling = |vm: &Vm, gfn: u64| -> Option<GfnRange> {
            let t = vm.tracker();
            t.slot_for_gfn(Gfn(gfn))?;
            let access = Access::from_private(t.is_private(Gfn(gfn)));
            let leaf = vm.lookup(Gpa(gfn << PAGE_SHIFT), access)?;
            let r = leaf.range();
            (r.intersect(&range).is_some()).then_some(r)
        };
        let before: Vec<GfnRange> = [range.start.0.checked_sub(1), Some(range.end.0)]
            .into_iter()
            .flatten()
            .filter_map(|g| straddling(&self.vm, g))
            .collect();
        self.vm
            .set_memory_attributes(range.start.gpa(), range.bytes(), attributes)?;
        self.map(range)?;
        for leaf in before {
            if leaf.start < range.start {
                self.map(GfnRange::new(leaf.start, range.start))?;
            }
            if leaf.end > range.end {
                self.map(GfnRange::new(range.end, leaf.end))?;
            }
        }
        Ok(())
    }

    /// A new memslot, wholly mapped.
    pub fn create_slot(&mut self, slot: &Slot) -> Result<(), Error> {
        self.vm.set_user_memory_region(&region(slot, slot.size()))?;
        self.map(slot.range())
    }

    /// Deletes a memslot (its leaves are zapped).
    pub fn delete_slot(&mut self, slot: &Slot) -> Result<(), Error> {
        self.vm.set_user_memory_region(&region(slot, 0)).map(|_| ())
    }

    /// Moves a memslot (and maybe changes dirty logging), then maps it at its new place.
    pub fn move_slot(&mut self, new: &Slot) -> Result<(), Error> {
        self.vm.set_user_memory_region(&region(new, new.size()))?;
        self.map(new.range())
    }

    /// Turns dirty logging on (leaves split to 4K) or off (regions collapse again).
    pub fn set_dirty_log(&mut self, new: &Slot) -> Result<(), Error> {
        self.vm.set_user_memory_region(&region(new, new.size()))?;
        self.map(new.range())
    }

    /// The fault path, from the page tables.
    pub fn max_mapping_level(&self, gpa: u64, access: Access) -> MaxLevel {
        let gfn = gpa >> PAGE_SHIFT;
        let Some(slot) = self.vm.tracker().slot_for_gfn(Gfn(gfn)) else {
            return MaxLevel::NoSlot;
        };
        if access.is_private() && !slot.flags().guest_memfd {
            return fault(gfn, access);
        }
        match self.vm.lookup(Gpa(gpa), access) {
            Some(leaf) => MaxLevel::Level(leaf.level),
            None => fault(gfn, access),
        }
    }

    /// Page-table pages reachable from the roots.
    pub fn table_pages(&self) -> u64 {
        self.vm.stats().table_pages
    }
}

fn fault(gfn: u64, access: Access) -> MaxLevel {
    MaxLevel::MemoryFault(MemoryFault {
        gpa: Gpa(gfn << PAGE_SHIFT),
        size: PAGE_SIZE,
        private: access.is_private(),
    })
}

/// What distinguishes the designs built on [`FullyMapped`]: their name, their tree layout, and
/// the bytes they keep beside the page tables.
pub trait SpteScheme {
    /// The design's name.
    const NAME: &'static str;
    /// One tree or two.
    const LAYOUT: Layout;
    /// Bytes kept beside `table_pages` page-table pages.
    fn side_bytes(table_pages: u64) -> usize;
}

/// A design whose per-page state lives in the page tables (Options B and C).
#[derive(Clone, Debug)]
pub struct OnTables<S> {
    inner: FullyMapped,
    scheme: core::marker::PhantomData<S>,
}

impl<S: SpteScheme> Default for OnTables<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SpteScheme> OnTables<S> {
    /// An empty VM.
    pub fn new() -> Self {
        OnTables {
            inner: FullyMapped::new(S::LAYOUT),
            scheme: core::marker::PhantomData,
        }
    }

    /// The page tables (the core's MMU model).
    pub fn mapped(&self) -> &FullyMapped {
        &self.inner
    }
}

impl<S: SpteScheme> Design for OnTables<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn set_attributes(&mut self, range: GfnRange, attributes: u64) -> Result<(), Error> {
        self.inner.set_attributes(range, attributes)
    }

    fn create_slot(&mut self, slot: &Slot) -> Result<(), Error> {
        self.inner.create_slot(slot)
    }

    fn delete_slot(&mut self, slot: &Slot) {
        // Validated at the edge: deleting an existing slot cannot fail.
        let _ = self.inner.delete_slot(slot);
    }

    fn move_slot(&mut self, _old: &Slot, new: &Slot) -> Result<(), Error> {
        self.inner.move_slot(new)
    }

    fn set_dirty_log(&mut self, _old: &Slot, new: &Slot) {
        let _ = self.inner.set_dirty_log(new);
    }

    fn max_mapping_level(&self, gpa: u64, access: Access) -> MaxLevel {
        self.inner.max_mapping_level(gpa, access)
    }

    fn heap_bytes(&self) -> usize {
        S::side_bytes(self.inner.table_pages())
    }

    fn table_bytes(&self) -> usize {
        (self.inner.table_pages() * PAGE_SIZE) as usize
    }

    fn host_bytes(&self) -> usize {
        self.inner.vm().heap_bytes()
    }
}

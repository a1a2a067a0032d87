//! guest_memfd operations on the MMU model: a file's attribute change zaps, through every
//! memslot bound to the changing pages, the leaves of the old kind, as a VM conversion does.

use alloc::vec::Vec;

use crate::addr::GfnRange;
use crate::error::{Error, Result, Unsupported};
use crate::gmem::{AttrMode, GmemFlags, GmemId, GmemOffset, MergePolicy};
use crate::KVM_MEMORY_ATTRIBUTE_PRIVATE;

use super::accept::AcceptPolicy;
use super::tree::Kinds;
use super::vm::Vm;

impl Vm {
    /// Where the VM keeps PRIVATE (see [`AttrMode`]); only before any memslot or guest_memfd
    /// exists, as a module parameter is read when the VM is created.
    pub fn set_attr_mode(&mut self, mode: AttrMode) -> Result<()> {
        if self.tracker.memslots().len() != 0 || self.tracker.gmems().len() != 0 {
            return Err(Error::Unsupported {
                what: Unsupported::AttrModeNotFirst,
            });
        }
        self.tracker = core::mem::take(&mut self.tracker).with_attr_mode(mode);
        Ok(())
    }

    /// The same VM merging its files' split folios by `policy` (set it before creating files).
    pub fn with_merge_policy(mut self, policy: MergePolicy) -> Self {
        self.tracker = core::mem::take(&mut self.tracker).with_merge_policy(policy);
        self
    }

    /// `KVM_CREATE_GUEST_MEMFD` ([`crate::Tracker::create_guest_memfd`]).
    pub fn create_guest_memfd(&mut self, size: u64, flags: GmemFlags) -> Result<GmemId> {
        self.tracker.create_guest_memfd(size, flags)
    }

    /// [`Vm::create_guest_memfd`] with a merge policy of the file's own.
    pub fn create_guest_memfd_merging(
        &mut self,
        size: u64,
        flags: GmemFlags,
        merge: MergePolicy,
    ) -> Result<GmemId> {
        self.tracker.create_guest_memfd_merging(size, flags, merge)
    }

    /// The host takes a reference on a shared file page ([`crate::Tracker::gmem_get_page`]).
    pub fn gmem_get_page(&mut self, id: GmemId, offset: GmemOffset) -> Result<()> {
        self.tracker.gmem_get_page(id, offset)
    }

    /// The host drops a reference ([`crate::Tracker::gmem_put_page`]).
    pub fn gmem_put_page(&mut self, id: GmemId, offset: GmemOffset) -> Result<()> {
        self.tracker.gmem_put_page(id, offset)
    }

    /// `fallocate(PUNCH_HOLE)` on file `id`: every private leaf over the punched pages, in
    /// every memslot bound to them, is zapped (split first where the layout is split and the
    /// leaf reaches outside), then the file frees the pages and merges what its policy allows
    /// ([`crate::Gmem::punch_hole`]).
    pub fn gmem_punch_hole(&mut self, id: GmemId, offset: GmemOffset, size: u64) -> Result<()> {
        let gmem = self
            .tracker
            .gmem(id)
            .ok_or(Error::UnknownGmem { gmem: id.0 })?;
        // Checked before anything is zapped: a refusal changes nothing.
        let pages = gmem.check_range(offset, size)?;
        for gfns in self.bound_gfns(id, pages)? {
            self.zap_changing(gfns, Kinds::Only(true));
        }
        self.tracker.gmem_punch_hole(id, offset, size)
    }

    /// `KVM_SET_MEMORY_ATTRIBUTES2` on file `id`: checked first (nothing changes on a refusal),
    /// then every leaf of the old kind over the changing pages, in every memslot bound to them,
    /// is zapped as a VM conversion zaps and the attributes stored. Returns whether anything
    /// changed.
    pub fn set_gmem_attributes(
        &mut self,
        id: GmemId,
        offset: GmemOffset,
        size: u64,
        attributes: u64,
        flags: u64,
    ) -> Result<bool> {
        let Some(pages) = self
            .tracker
            .check_gmem_attributes(id, offset, size, attributes, flags)?
        else {
            return Ok(false);
        };
        let bound = self.bound_gfns(id, pages)?;
        let new_private = attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0;
        for &gfns in &bound {
            self.zap_changing(gfns, Kinds::Only(!new_private));
            if !new_private && self.accept_policy == AcceptPolicy::ClearWhenAccepted {
                // Every private page of the range becomes shared (a shared page has no accept).
                self.forget_accepts(gfns);
            }
        }
        let changed = self.tracker.store_gmem_attributes(id, pages, attributes)?;
        for gfns in bound {
            self.recover(gfns);
        }
        Ok(changed)
    }

    /// The gfns through which memslots see pages `pages` of file `id`, with the tables zapping
    /// them may need reserved.
    fn bound_gfns(&mut self, id: GmemId, pages: GfnRange) -> Result<Vec<GfnRange>> {
        let bound: Vec<GfnRange> = self.tracker.gmem_gfns(id, pages).map(|(g, _)| g).collect();
        self.reserve_zaps(bound.len())?;
        Ok(bound)
    }
}

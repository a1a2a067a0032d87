//! Memslot changes on the VM: delete and move zap, dirty logging splits and un-splits.

use crate::addr::{GfnRange, Level};
use crate::error::Result;
use crate::memslot::{MemoryRegion, SlotChange};

use super::tree::Kinds;
use super::vm::Vm;

impl Vm {
    /// KVM_SET_USER_MEMORY_REGION2 on the VM, with the tracker's rules. Deleting or moving a
    /// slot removes every leaf of its old range; turning dirty logging on splits every leaf of
    /// the slot larger than 4K down to 4K (eager split); turning it off lets the slot's regions
    /// collapse again under [`super::Recovery::Eager`]. The paging depth follows the slots
    /// (see [`Vm::paging_levels`]). On error nothing changed.
    pub fn set_user_memory_region(&mut self, r: &MemoryRegion) -> Result<SlotChange> {
        // Allocate before anything changes: the eager split, and a depth change of two levels.
        let mut tables = 2 * usize::from(self.trees.nroots());
        if let Some(old) = self.tracker.memslot(r.slot) {
            let enabling = r.size != 0 && r.flags.dirty_log && !old.flags().dirty_log;
            if enabling && r.gpa == old.gpa() {
                tables += self.trees.tables_to_split(old.range(), Level::K4);
            }
        }
        self.trees.tables.reserve(tables)?;
        let change = self.tracker.set_user_memory_region(r)?;
        match change {
            SlotChange::Deleted { old } | SlotChange::Moved { old } => {
                let count = self.trees.zap(old, Kinds::Both, |_| false);
                self.counters.zaps += count.zaps;
                self.forget_accepts(old);
            }
            SlotChange::DirtyLog { enabled } => {
                let range = GfnRange::new(r.gpa.gfn(), (r.gpa + r.size).gfn());
                if enabled {
                    self.counters.splits += self.trees.split_down(range, Level::K4);
                } else {
                    self.recover(range);
                }
            }
            SlotChange::Created | SlotChange::Unchanged => {}
        }
        self.adjust_depth()?;
        Ok(change)
    }
}

//! Hugepage recovery: eager collapse, and the report of collapsible regions.

use alloc::vec::Vec;

use crate::addr::{Gfn, GfnRange, Level};

use super::table::{entry_pages, TableId, ENTRIES};
use super::vm::{Recovery, Vm, Window};

/// A region that the tracker allows at a larger level than the leaves that map it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct CollapsibleRegion {
    /// First gfn of the region.
    pub gfn: Gfn,
    /// The level it could be mapped at (2M or 1G).
    pub level: Level,
    /// Kind of its leaves.
    pub private: bool,
    /// 4K pages of the region mapped now.
    pub mapped_pages: u64,
    /// Whether every page is mapped by smaller leaves of one kind (eager collapses these at
    /// once; on-fault never will, since no access to the region faults any more).
    pub complete: bool,
}

impl Vm {
    /// Under [`Recovery::Eager`], collapses every 2M and then 1G region intersecting `range`
    /// that the tracker allows at that level for its kind and whose every page is mapped by
    /// smaller leaves of that kind, outside open invalidation windows. Never allocates.
    ///
    /// Callers pass only what their operation could have made collapsible: a region becomes
    /// collapsible when its attributes, its GUEST_INHIBIT or its slot's dirty logging change,
    /// or when leaves inside it change, and every operation changes those only in the 2M pages
    /// of its range (and the 1G pages holding them, which the walk at 1G visits anyway). A
    /// complete region skipped because an open window holds it marks that window `deferred`;
    /// [`Vm::close_window`] then recovers the whole window.
    pub(crate) fn recover(&mut self, range: GfnRange) {
        if self.recovery != Recovery::Eager || range.is_empty() {
            return;
        }
        for level in [Level::M2, Level::G1] {
            let Vm {
                trees,
                tracker,
                windows,
                ..
            } = self;
            // Called only for a region whose table holds 512 leaves of one kind.
            let allowed = |gfn: u64, private: bool| {
                let region = GfnRange::from_len(Gfn(gfn), level.pages());
                let mut blocked = false;
                for w in windows.iter_mut() {
                    if w.range.intersect(&region).is_some() {
                        w.deferred = true;
                        blocked = true;
                    }
                }
                !blocked
                    && matches!(
                        tracker.max_mapping_level(crate::Gfn(gfn).gpa(), crate::Access::from_private(private)),
                        crate::MaxLevel::Level(l) if l >= level
                    )
            };
            self.counters.collapses += trees.collapse(range, level, allowed);
        }
    }

    /// Closes the invalidation window `window` (already removed from the open ones) after an
    /// operation on `changed`: eager recovery of `changed`, or of the whole window if recovery
    /// of a region inside it was deferred while it was open.
    pub(crate) fn close_window(&mut self, window: Window, changed: GfnRange) {
        self.recover(if window.deferred {
            window.range
        } else {
            changed
        });
    }

    /// Every region the tracker allows at 2M or 1G that is mapped only by smaller leaves of
    /// one kind: what recovery could still gain. Regions in open windows are left out.
    pub fn collapsible(&self) -> Vec<CollapsibleRegion> {
        let mut out = Vec::new();
        for r in 0..self.trees.nroots() {
            self.collect_collapsible(self.trees.root(r), &mut out);
        }
        out.sort_by_key(|c| (c.gfn, c.level, c.private));
        out
    }

    fn collect_collapsible(&self, table: TableId, out: &mut Vec<CollapsibleRegion>) {
        let t = &self.trees.tables;
        let level = t.level(table);
        if level > 1 {
            for e in t.entries(table).iter().filter(|e| e.is_table()) {
                self.collect_collapsible(e.table_id(), out);
            }
        }
        let region_level = match level {
            1 => Level::M2,
            2 => Level::G1,
            _ => return,
        };
        let gfn = t.base_gfn(table);
        let entries = t.entries(table);
        let Some(private) = self.first_leaf_kind(table) else {
            return;
        };
        // Leaves of the other kind make the region mixed: the tracker would refuse it anyway.
        let mut mapped = 0;
        let mut complete = t.present(table) == ENTRIES;
        for e in entries.iter().filter(|e| e.is_present()) {
            if e.is_leaf() && e.is_private() != private {
                return;
            }
            mapped += if e.is_leaf() {
                entry_pages(level)
            } else {
                complete = false;
                self.mapped_pages_below(e.table_id())
            };
        }
        let region = GfnRange::from_len(Gfn(gfn), region_level.pages());
        if self.window_overlaps(region) {
            return;
        }
        if self
            .allowed(gfn, private)
            .is_some_and(|l| l >= region_level)
        {
            out.push(CollapsibleRegion {
                gfn: Gfn(gfn),
                level: region_level,
                private,
                mapped_pages: mapped,
                complete,
            });
        }
    }

    /// The kind of the first leaf under `table` (tables are never empty).
    fn first_leaf_kind(&self, table: TableId) -> Option<bool> {
        let t = &self.trees.tables;
        let e = *t.entries(table).iter().find(|e| e.is_present())?;
        if e.is_leaf() {
            Some(e.is_private())
        } else {
            self.first_leaf_kind(e.table_id())
        }
    }

    fn mapped_pages_below(&self, table: TableId) -> u64 {
        let t = &self.trees.tables;
        let level = t.level(table);
        t.entries(table)
            .iter()
            .map(|e| {
                if e.is_leaf() {
                    entry_pages(level)
                } else if e.is_table() {
                    self.mapped_pages_below(e.table_id())
                } else {
                    0
                }
            })
            .sum()
    }
}

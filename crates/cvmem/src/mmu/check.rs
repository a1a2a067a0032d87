//! The invariants of the MMU model, checked by walking every table. For tests and fuzzing.

use alloc::format;
use alloc::string::String;

use crate::addr::{Gfn, GfnRange, Level};

use super::table::{entry_pages, leaf_level, TableId};
use super::vm::{Recovery, Vm};

#[derive(Default)]
struct Tally {
    tables: [u64; 2],
    leaves: [[u64; 3]; 2],
}

impl Vm {
    /// Checks that:
    /// - every table reachable from a root is allocated, has the level and first gfn its
    ///   position implies, an exact present count, and (roots aside) at least one entry;
    /// - allocated table pages == reachable table pages, per root, and the leaf counters match;
    /// - every leaf lies in the private root iff it is private (split layout), maps pages whose
    ///   attributes all equal its kind, lies inside one memslot, and does not exceed the level
    ///   the tracker allows for its kind;
    /// - under [`Recovery::Eager`] with no conversion in progress, no region is collapsible
    ///   and complete.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut tally = Tally::default();
        for r in 0..self.trees.nroots() {
            let root = self.trees.root(r);
            if self.trees.tables.level(root) != self.trees.depth() {
                return Err(format!(
                    "root {r} has level {}",
                    self.trees.tables.level(root)
                ));
            }
            self.check_table(r, root, self.trees.depth(), 0, true, &mut tally)?;
        }
        let t = &self.trees.tables;
        let reachable = tally.tables[0] + tally.tables[1];
        if reachable != t.allocated() {
            return Err(format!(
                "{} table pages allocated, {reachable} reachable",
                t.allocated()
            ));
        }
        for r in 0..2u8 {
            if t.allocated_in(r) != tally.tables[r as usize] {
                return Err(format!("root {r}: table count out of date"));
            }
        }
        for (p, private) in [(0, false), (1, true)] {
            for level in Level::ALL {
                if t.leaves(private, level) != tally.leaves[p][level.index()] {
                    return Err(format!(
                        "leaf counter of {level} private={private} out of date"
                    ));
                }
            }
        }
        if self.recovery == Recovery::Eager && self.windows.is_empty() {
            if let Some(c) = self.collapsible().into_iter().find(|c| c.complete) {
                return Err(format!(
                    "eager: complete collapsible region at gfn {:#x} level {}",
                    c.gfn, c.level
                ));
            }
        }
        Ok(())
    }

    fn check_table(
        &self,
        r: u8,
        id: TableId,
        level: u8,
        base: u64,
        is_root: bool,
        tally: &mut Tally,
    ) -> Result<(), String> {
        let t = &self.trees.tables;
        if !t.in_use(id) {
            return Err(format!("table {id} reachable but free"));
        }
        if t.level(id) != level || t.root_of(id) != r || (!is_root && t.base_gfn(id) != base) {
            return Err(format!(
                "table {id} at gfn {base:#x} level {level}: wrong metadata"
            ));
        }
        tally.tables[r as usize] += 1;
        let entries = t.entries(id);
        let present = entries.iter().filter(|e| e.is_present()).count();
        if present != t.present(id) {
            return Err(format!("table {id}: present count out of date"));
        }
        if present == 0 && !is_root {
            return Err(format!("empty table {id} at gfn {base:#x} level {level}"));
        }
        for (idx, e) in entries.iter().enumerate() {
            let gfn = base + idx as u64 * entry_pages(level);
            if e.is_table() {
                if level == 1 {
                    return Err(format!("table entry in a PT at gfn {gfn:#x}"));
                }
                self.check_table(r, e.table_id(), level - 1, gfn, false, tally)?;
            } else if e.is_leaf() {
                let Some(l) = leaf_level(level) else {
                    return Err(format!("leaf in a table of level {level} at gfn {gfn:#x}"));
                };
                tally.leaves[usize::from(e.is_private())][l.index()] += 1;
                self.check_leaf(r, gfn, l, e.is_private())?;
            }
        }
        Ok(())
    }

    fn check_leaf(&self, r: u8, gfn: u64, level: Level, private: bool) -> Result<(), String> {
        let what = || {
            format!(
                "{level} {} leaf at gfn {gfn:#x}",
                if private { "private" } else { "shared" }
            )
        };
        if self.layout.is_split() && self.trees.root_index(private) != r {
            return Err(format!("{} in the wrong root", what()));
        }
        let range = GfnRange::new(Gfn(gfn), Gfn(gfn + level.pages()));
        let want = crate::Kind::from_private(private);
        if self.tracker.uniform_kind(range) != Some(want) {
            return Err(format!("{} maps pages of other attributes", what()));
        }
        match self.tracker.slot_for_gfn(Gfn(gfn)) {
            Some(s) if s.range().covers(&range) => {}
            _ => return Err(format!("{} is not inside one memslot", what())),
        }
        match self.allowed(gfn, private) {
            Some(max) if max >= level => Ok(()),
            max => Err(format!("{} exceeds the allowed level {max:?}", what())),
        }
    }
}

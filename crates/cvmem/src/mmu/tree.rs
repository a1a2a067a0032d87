//! The TDP MMU's trees: one root (unified layout) or a private and a shared root (split), and
//! the walks that install, split, zap and collapse leaves. Every walk is a [`TdpIter`].

use crate::addr::{Gfn, GfnRange, Level};
use crate::error::Result;

use super::iter::TdpIter;
use super::table::{leaf_level, table_level_of, PageTables, Spte, TableId, ENTRIES};

/// A leaf of the page tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Leaf {
    /// First gfn mapped.
    pub gfn: Gfn,
    /// The mapping level.
    pub level: Level,
    /// Whether it maps private memory.
    pub private: bool,
}

impl Leaf {
    /// The gfns it maps.
    pub const fn range(&self) -> GfnRange {
        GfnRange::from_len(self.gfn, self.level.pages())
    }
}

/// Which leaves a walk acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kinds {
    /// Only private (`true`) or only shared (`false`) leaves.
    Only(bool),
    /// Both kinds.
    Both,
}

impl Kinds {
    fn matches(self, spte: Spte) -> bool {
        match self {
            Kinds::Only(p) => spte.is_private() == p,
            Kinds::Both => true,
        }
    }
}

/// Leaves removed and split by a zap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ZapCount {
    pub(crate) zaps: u64,
    pub(crate) splits: u64,
    /// Huge private leaves removed whole though the range changes only part of them.
    pub(crate) straddling: u64,
}

/// The page-table trees.
#[derive(Clone, Debug)]
pub(crate) struct Trees {
    pub(crate) tables: PageTables,
    /// Root 0: the private root (split) or the only root (unified); root 1: the shared root.
    roots: [TableId; 2],
    nroots: u8,
    /// Level of the root tables (4 for 4-level paging).
    depth: u8,
}

impl Trees {
    /// Empty trees with `nroots` roots (1 or 2) of `depth` levels.
    pub(crate) fn new(nroots: u8, depth: u8) -> Result<Self> {
        let mut tables = PageTables::default();
        tables.reserve(nroots as usize)?;
        let mut roots = [0; 2];
        for (r, root) in roots.iter_mut().enumerate().take(nroots as usize) {
            *root = tables.alloc(depth, r as u8, 0);
        }
        Ok(Trees {
            tables,
            roots,
            nroots,
            depth,
        })
    }

    /// Number of roots.
    pub(crate) fn nroots(&self) -> u8 {
        self.nroots
    }

    /// Level of the roots.
    pub(crate) fn depth(&self) -> u8 {
        self.depth
    }

    /// Root index holding leaves of kind `private`.
    #[inline]
    pub(crate) fn root_index(&self, private: bool) -> u8 {
        u8::from(self.nroots == 2 && !private)
    }

    /// The root table of root index `r`.
    #[inline]
    pub(crate) fn root(&self, r: u8) -> TableId {
        self.roots[r as usize]
    }

    /// The roots (and the kinds each holds) that a walk over `kinds` must visit.
    fn roots_for(&self, kinds: Kinds) -> impl Iterator<Item = (u8, Kinds)> {
        let split = self.nroots == 2;
        let list: [(u8, Kinds); 2] = match (split, kinds) {
            (false, k) => [(0, k), (u8::MAX, k)],
            (true, Kinds::Only(p)) => [(self.root_index(p), kinds), (u8::MAX, kinds)],
            (true, Kinds::Both) => [(0, Kinds::Only(true)), (1, Kinds::Only(false))],
        };
        list.into_iter().filter(|(r, _)| *r != u8::MAX)
    }

    /// A walk of root `r` over `range` down to table level `min_level`.
    #[inline]
    pub(crate) fn walk(&self, r: u8, range: GfnRange, min_level: u8) -> TdpIter {
        TdpIter::new(
            self.root(r),
            self.depth,
            range.start.0,
            range.end.0,
            min_level,
        )
    }

    /// The leaf of kind `private` that maps `gfn`, if any.
    pub(crate) fn lookup(&self, gfn: u64, private: bool) -> Option<Leaf> {
        let mut it = self.walk(
            self.root_index(private),
            GfnRange::new(Gfn(gfn), Gfn(gfn + 1)),
            1,
        );
        while it.valid() {
            let e = it.spte(&self.tables);
            if e.is_leaf() {
                return (e.is_private() == private).then(|| Leaf {
                    gfn: Gfn(it.gfn()),
                    level: leaf_level(it.level()).expect("leaves live in levels 1-3"),
                    private,
                });
            }
            if !e.is_present() {
                return None;
            }
            it.next(&self.tables);
        }
        None
    }

    /// Whether any leaf of kind `private` maps a gfn of `range`.
    pub(crate) fn has_leaf(&self, range: GfnRange, private: bool) -> bool {
        let mut it = self.walk(self.root_index(private), range, 1);
        while it.valid() {
            let e = it.spte(&self.tables);
            if e.is_leaf() && e.is_private() == private {
                return true;
            }
            it.next(&self.tables);
        }
        false
    }

    /// Tables a fault may need (one per level below the root).
    pub(crate) fn tables_per_install(&self) -> usize {
        self.depth as usize - 1
    }

    /// Installs a leaf of `level` and kind `private` over `gfn`, replacing whatever the tree
    /// holds in that range (KVM replaces a lower table with a huge leaf). Call
    /// [`PageTables::reserve`] with [`Trees::tables_per_install`] first. Returns the number of
    /// leaves replaced, or `None` (nothing changed) if a larger leaf already covers `gfn`.
    pub(crate) fn install(&mut self, gfn: u64, level: Level, private: bool) -> Option<u64> {
        let target = table_level_of(level);
        let r = self.root_index(private);
        let mut it = self.walk(r, GfnRange::new(Gfn(gfn), Gfn(gfn + 1)), target);
        while it.valid() {
            let e = it.spte(&self.tables);
            if it.level() == target {
                let replaced = if e.is_table() {
                    self.tables.set(it.table(), it.index(), Spte::NONE);
                    self.tables.free_subtree(e.table_id())
                } else {
                    u64::from(e.is_leaf())
                };
                self.tables.set(it.table(), it.index(), Spte::leaf(private));
                return Some(replaced);
            }
            if e.is_leaf() {
                return None;
            }
            if !e.is_present() {
                let child = self.tables.alloc(it.level() - 1, r, it.gfn());
                self.tables.set(it.table(), it.index(), Spte::table(child));
            }
            it.next(&self.tables);
        }
        None
    }

    /// Replaces the leaf at the iterator's position by a table of 512 leaves of the next level.
    fn split_at(&mut self, it: &TdpIter) {
        let e = it.spte(&self.tables);
        debug_assert!(e.is_leaf() && it.level() > 1);
        let r = self.tables.root_of(it.table());
        let child = self.tables.alloc(it.level() - 1, r, it.gfn());
        for idx in 0..ENTRIES {
            self.tables.set(child, idx, Spte::leaf(e.is_private()));
        }
        self.tables.set(it.table(), it.index(), Spte::table(child));
    }

    /// Removes every leaf of `kinds` that intersects `range`. A leaf reaching outside the range
    /// is split (repeatedly, until none straddles) when `split` says so for its kind, else
    /// removed whole. Splitting needs 4 reserved tables (two per range edge).
    pub(crate) fn zap(
        &mut self,
        range: GfnRange,
        kinds: Kinds,
        split: impl Fn(bool) -> bool,
    ) -> ZapCount {
        let mut count = ZapCount::default();
        for (r, kinds) in self.roots_for(kinds) {
            let mut it = self.walk(r, range, 1);
            while it.valid() {
                let e = it.spte(&self.tables);
                if e.is_leaf() && kinds.matches(e) {
                    let leaf = GfnRange::new(Gfn(it.gfn()), Gfn(it.gfn() + it.pages()));
                    if !range.covers(&leaf) && split(e.is_private()) {
                        self.split_at(&it);
                        count.splits += 1;
                    } else {
                        let huge = it.pages() > 1;
                        count.straddling +=
                            u64::from(huge && e.is_private() && !range.covers(&leaf));
                        self.tables.set(it.table(), it.index(), Spte::NONE);
                        count.zaps += 1;
                    }
                }
                it.next_mut(&mut self.tables);
            }
        }
        count
    }

    /// Tables needed to split every leaf of `range` above `level` down to `level`.
    pub(crate) fn tables_to_split(&self, range: GfnRange, level: Level) -> usize {
        let mut n = 0usize;
        for r in 0..self.nroots {
            let mut it = self.walk(r, range, 1);
            while it.valid() {
                let e = it.spte(&self.tables);
                if e.is_leaf() {
                    let l = leaf_level(it.level()).expect("leaves live in levels 1-3");
                    n += match (l, level) {
                        (Level::G1, Level::K4) => {
                            // The 1G leaf, then each of its 2M children the range touches.
                            let lo = it.gfn().max(range.start.0) >> Level::M2.page_shift();
                            let hi = (it.gfn() + it.pages()).min(range.end.0) - 1;
                            1 + ((hi >> Level::M2.page_shift()) - lo + 1) as usize
                        }
                        (Level::G1, Level::M2) | (Level::M2, Level::K4) => 1,
                        _ => 0,
                    };
                }
                it.next(&self.tables);
            }
        }
        n
    }

    /// Splits every leaf that intersects `range` and is larger than `level` down to `level`.
    /// Returns the number of leaves split. Reserve [`Trees::tables_to_split`] tables first.
    pub(crate) fn split_down(&mut self, range: GfnRange, level: Level) -> u64 {
        let mut splits = 0;
        let floor = table_level_of(level);
        for r in 0..self.nroots {
            let mut it = self.walk(r, range, floor);
            while it.valid() {
                if it.level() > floor && it.spte(&self.tables).is_leaf() {
                    self.split_at(&it);
                    splits += 1;
                }
                it.next_mut(&mut self.tables);
            }
        }
        splits
    }

    /// The kind of the leaves of table `id`, if it holds exactly 512 leaves of one kind.
    pub(crate) fn full_of_leaves(&self, id: TableId) -> Option<bool> {
        if self.tables.present(id) != ENTRIES {
            return None;
        }
        let entries = self.tables.entries(id);
        let first = entries[0];
        let same = entries
            .iter()
            .all(|e| e.is_leaf() && e.is_private() == first.is_private());
        same.then_some(first.is_private())
    }

    /// Collapses, in `range`, every table of leaves of `level`'s next smaller level that holds
    /// 512 leaves of one kind into one leaf of `level`, where `allowed(gfn, private)` says the
    /// region may be mapped at `level`. Returns the number of collapses. Never allocates.
    pub(crate) fn collapse(
        &mut self,
        range: GfnRange,
        level: Level,
        mut allowed: impl FnMut(u64, bool) -> bool,
    ) -> u64 {
        let at = table_level_of(level);
        let mut collapses = 0;
        for r in 0..self.nroots {
            let mut it = self.walk(r, range, at);
            while it.valid() {
                let e = it.spte(&self.tables);
                if it.level() == at && e.is_table() {
                    if let Some(private) = self.full_of_leaves(e.table_id()) {
                        if allowed(it.gfn(), private) {
                            self.tables.set(it.table(), it.index(), Spte::NONE);
                            self.tables.free_subtree(e.table_id());
                            self.tables.set(it.table(), it.index(), Spte::leaf(private));
                            collapses += 1;
                        }
                    }
                }
                it.next_mut(&mut self.tables);
            }
        }
        collapses
    }

    /// Changes the paging depth. Growing puts a new root above each non-empty root; shrinking
    /// requires that nothing is mapped above the new reach. Reserve `2 * levels` tables first.
    pub(crate) fn set_depth(&mut self, depth: u8) {
        while self.depth < depth {
            for r in 0..self.nroots {
                let root = self.roots[r as usize];
                if self.tables.present(root) == 0 {
                    self.tables.set_level(root, self.depth + 1);
                } else {
                    let top = self.tables.alloc(self.depth + 1, r, 0);
                    self.tables.set(top, 0, Spte::table(root));
                    self.roots[r as usize] = top;
                }
            }
            self.depth += 1;
        }
        while self.depth > depth {
            for r in 0..self.nroots {
                let root = self.roots[r as usize];
                debug_assert!(self.tables.present(root) <= 1);
                let first = self.tables.get(root, 0);
                if first.is_table() {
                    self.tables.set(root, 0, Spte::NONE);
                    self.tables.free(root);
                    self.roots[r as usize] = first.table_id();
                } else {
                    self.tables.set_level(root, self.depth - 1);
                }
            }
            self.depth -= 1;
        }
    }
}

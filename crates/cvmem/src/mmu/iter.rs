//! The page-table walk every operation uses, in the spirit of Linux's `tdp_iter`.
//!
//! A [`TdpIter`] visits, in pre-order, every entry of one tree whose range intersects a gfn
//! range `[start, end)`, down to a minimum table level. It holds no borrow of the tables: the
//! caller reads and writes the current entry between steps, and the next step sees the change
//! (it steps down into a table just installed by a split, and not into one just replaced by a
//! leaf). [`TdpIter::next_mut`] frees every table that is empty when the walk leaves it, so no
//! operation leaves an empty table behind.

use super::table::{entry_index, entry_pages, PageTables, Spte, TableId, ENTRIES};

/// The largest table level the model supports (a sixth level beyond 5-level paging keeps the
/// whole 64-bit space mappable; see [`super::vm::Vm::paging_levels`]).
///
/// Table levels are numbers (1 = the 4K tables, up to 6), not [`crate::Level`]s: a
/// [`crate::Level`] is a mapping size a leaf may have (4K, 2M, 1G); levels 4-6 hold tables only,
/// and the model's public face ([`crate::mmu::Leaf`]) speaks in [`crate::Level`]s.
pub(crate) const MAX_LEVEL: u8 = 6;

/// What one step did.
enum Step {
    /// Positioned on a new entry.
    Entry,
    /// Left this table (now positioned on the parent entry that points to it).
    Left(TableId),
    /// The walk is over.
    Done,
}

/// A cursor over the entries of one tree that intersect a gfn range.
#[derive(Clone, Debug)]
pub(crate) struct TdpIter {
    end: u64,
    min_level: u8,
    root_level: u8,
    /// `path[l]` is the table of level `l` on the current path.
    path: [TableId; MAX_LEVEL as usize + 1],
    /// Level of the table holding the current entry.
    level: u8,
    /// First gfn the current entry maps.
    gfn: u64,
    /// Where a step down resumes (Linux's `next_last_level_gfn`).
    next_gfn: u64,
    /// The current entry was visited: the next step goes sideways or up.
    visited: bool,
    valid: bool,
}

impl TdpIter {
    /// A walk of the tree under `root` (a table of `root_level`) over `[start, end)`, visiting
    /// entries of tables down to `min_level` (1 = PT). Starts on the root entry holding `start`.
    pub(crate) fn new(root: TableId, root_level: u8, start: u64, end: u64, min_level: u8) -> Self {
        let span = entry_pages(root_level).saturating_mul(ENTRIES as u64);
        let mut path = [0; MAX_LEVEL as usize + 1];
        path[root_level as usize] = root;
        TdpIter {
            end: end.min(span),
            min_level,
            root_level,
            path,
            level: root_level,
            gfn: start & !(entry_pages(root_level) - 1),
            next_gfn: start,
            visited: false,
            valid: start < end && start < span,
        }
    }

    /// Whether the walk is positioned on an entry.
    #[inline]
    pub(crate) fn valid(&self) -> bool {
        self.valid
    }
    /// Level of the table holding the current entry (1 = PT).
    #[inline]
    pub(crate) fn level(&self) -> u8 {
        self.level
    }
    /// First gfn mapped by the current entry.
    #[inline]
    pub(crate) fn gfn(&self) -> u64 {
        self.gfn
    }
    /// Gfns mapped by the current entry.
    #[inline]
    pub(crate) fn pages(&self) -> u64 {
        entry_pages(self.level)
    }
    /// The table holding the current entry.
    #[inline]
    pub(crate) fn table(&self) -> TableId {
        self.path[self.level as usize]
    }
    /// Index of the current entry in its table.
    #[inline]
    pub(crate) fn index(&self) -> usize {
        entry_index(self.gfn, self.level)
    }
    /// The current entry.
    #[inline]
    pub(crate) fn spte(&self, t: &PageTables) -> Spte {
        t.get(self.table(), self.index())
    }

    fn step(&mut self, t: &PageTables) -> Step {
        if !self.valid {
            return Step::Done;
        }
        if !self.visited {
            self.visited = true;
            let e = self.spte(t);
            if self.level > self.min_level && e.is_table() {
                self.level -= 1;
                self.path[self.level as usize] = e.table_id();
                self.gfn = self.next_gfn & !(entry_pages(self.level) - 1);
                self.visited = false;
                return Step::Entry;
            }
        }
        let next = self.gfn + entry_pages(self.level);
        if next < self.end && entry_index(next, self.level) != 0 {
            self.gfn = next;
            self.next_gfn = next;
            self.visited = false;
            return Step::Entry;
        }
        if self.level == self.root_level {
            self.valid = false;
            return Step::Done;
        }
        let left = self.table();
        self.level += 1;
        self.gfn &= !(entry_pages(self.level) - 1);
        Step::Left(left)
    }

    /// Moves to the next entry, without changing the tables.
    #[inline]
    pub(crate) fn next(&mut self, t: &PageTables) {
        while let Step::Left(_) = self.step(t) {}
    }

    /// Moves to the next entry, freeing each table the walk leaves empty (never the root).
    pub(crate) fn next_mut(&mut self, t: &mut PageTables) {
        loop {
            match self.step(t) {
                Step::Entry | Step::Done => return,
                Step::Left(table) => {
                    if t.present(table) == 0 {
                        t.set(self.table(), self.index(), Spte::NONE);
                        t.free(table);
                    }
                }
            }
        }
    }
}

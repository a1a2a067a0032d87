//! Page-table pages: 512-entry tables in an arena, with exact page and leaf counting.
//!
//! Every table is one 4 KiB page of 512 SPTEs. Tables live in an arena indexed by [`TableId`];
//! freed tables go on an intrusive free list (no allocation on free) and are reused first. Space
//! for new tables is reserved up front ([`PageTables::reserve`]) so that an operation either fails
//! with `NoMemory` before changing anything or completes without allocating. Every write goes
//! through [`PageTables::set`], which keeps the per-table present count and the per-kind,
//! per-level leaf counters exact.

use alloc::vec::Vec;
use core::mem::size_of;

use crate::addr::Level;
use crate::error::{Error, Result};

/// Entries per table.
pub(crate) const ENTRIES: usize = 512;
/// log2 of [`ENTRIES`].
pub(crate) const ENTRY_SHIFT: u32 = 9;

/// Index of a table in the arena.
pub(crate) type TableId = u32;

/// Number of gfns one entry of a table of `level` maps (level 1 = PT: 1 gfn).
#[inline]
pub(crate) const fn entry_pages(level: u8) -> u64 {
    1 << (ENTRY_SHIFT * (level as u32 - 1))
}

/// Index in a table of `level` of the entry that maps `gfn`.
#[inline]
pub(crate) const fn entry_index(gfn: u64, level: u8) -> usize {
    ((gfn >> (ENTRY_SHIFT * (level as u32 - 1))) & (ENTRIES as u64 - 1)) as usize
}

/// The table level whose entries are leaves of `level` (4K in PTs, 2M in PDs, 1G in PDPTs).
#[inline]
pub(crate) const fn table_level_of(level: Level) -> u8 {
    level.index() as u8 + 1
}

/// The leaf level of an entry in a table of `level`, if leaves may live there.
#[inline]
pub(crate) const fn leaf_level(table_level: u8) -> Option<Level> {
    match table_level {
        1 => Some(Level::K4),
        2 => Some(Level::M2),
        3 => Some(Level::G1),
        _ => None,
    }
}

/// A shadow page-table entry: empty, a pointer to a lower table, or a leaf of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Spte(u64);

impl Spte {
    const PRESENT: u64 = 1 << 0;
    const LEAF: u64 = 1 << 1;
    const PRIVATE: u64 = 1 << 2;
    const ID_SHIFT: u32 = 32;

    /// The empty entry.
    pub(crate) const NONE: Spte = Spte(0);

    /// An entry pointing to table `id`.
    pub(crate) const fn table(id: TableId) -> Spte {
        Spte(Self::PRESENT | (id as u64) << Self::ID_SHIFT)
    }
    /// A leaf mapping private or shared memory.
    pub(crate) const fn leaf(private: bool) -> Spte {
        Spte(Self::PRESENT | Self::LEAF | if private { Self::PRIVATE } else { 0 })
    }
    pub(crate) const fn is_present(self) -> bool {
        self.0 & Self::PRESENT != 0
    }
    pub(crate) const fn is_leaf(self) -> bool {
        self.0 & Self::LEAF != 0
    }
    pub(crate) const fn is_table(self) -> bool {
        self.is_present() && !self.is_leaf()
    }
    /// Whether a leaf maps private memory.
    pub(crate) const fn is_private(self) -> bool {
        self.0 & Self::PRIVATE != 0
    }
    /// The table a non-leaf entry points to.
    pub(crate) const fn table_id(self) -> TableId {
        (self.0 >> Self::ID_SHIFT) as TableId
    }
}

const NO_TABLE: TableId = TableId::MAX;

#[derive(Clone, Copy, Debug)]
struct Meta {
    /// 1 = PT (4K entries) … 6.
    level: u8,
    /// Which root's tree the table belongs to (0 or 1).
    root: u8,
    in_use: bool,
    /// Present entries.
    present: u16,
    /// First gfn the table maps.
    base_gfn: u64,
    /// Next table on the free list.
    next_free: TableId,
}

/// The arena of page-table pages with leaf and table counters.
#[derive(Clone, Debug, Default)]
pub(crate) struct PageTables {
    entries: Vec<[Spte; ENTRIES]>,
    meta: Vec<Meta>,
    free_head: Option<TableId>,
    free_count: usize,
    /// Leaves per kind (0 shared, 1 private) and level.
    leaves: [[u64; 3]; 2],
    /// Table pages in use per root.
    per_root: [u64; 2],
}

impl PageTables {
    /// Makes sure `n` tables can be allocated without allocating memory.
    pub(crate) fn reserve(&mut self, n: usize) -> Result<()> {
        let more = n.saturating_sub(self.free_count);
        let oom = |_| Error::NoMemory {
            bytes: more * (size_of::<[Spte; ENTRIES]>() + size_of::<Meta>()),
        };
        self.entries.try_reserve(more).map_err(oom)?;
        self.meta.try_reserve(more).map_err(oom)?;
        if self.entries.len() + more > TableId::MAX as usize {
            return Err(Error::NoMemory {
                bytes: more * size_of::<[Spte; ENTRIES]>(),
            });
        }
        Ok(())
    }

    /// A new empty table (from the free list, else from reserved capacity).
    pub(crate) fn alloc(&mut self, level: u8, root: u8, base_gfn: u64) -> TableId {
        let meta = Meta {
            level,
            root,
            in_use: true,
            present: 0,
            base_gfn,
            next_free: NO_TABLE,
        };
        self.per_root[root as usize] += 1;
        if let Some(id) = self.free_head {
            let m = &mut self.meta[id as usize];
            self.free_head = (m.next_free != NO_TABLE).then_some(m.next_free);
            *m = meta;
            self.free_count -= 1;
            return id;
        }
        debug_assert!(
            self.entries.len() < self.entries.capacity(),
            "reserve() first"
        );
        self.entries.push([Spte::NONE; ENTRIES]);
        self.meta.push(meta);
        (self.entries.len() - 1) as TableId
    }

    /// Returns an empty table to the free list.
    pub(crate) fn free(&mut self, id: TableId) {
        let m = &mut self.meta[id as usize];
        debug_assert!(m.in_use && m.present == 0, "only empty tables are freed");
        m.in_use = false;
        m.next_free = self.free_head.unwrap_or(NO_TABLE);
        self.per_root[m.root as usize] -= 1;
        self.free_head = Some(id);
        self.free_count += 1;
    }

    /// Entry `idx` of table `id`.
    #[inline]
    pub(crate) fn get(&self, id: TableId, idx: usize) -> Spte {
        self.entries[id as usize][idx]
    }

    /// Writes entry `idx` of table `id`, keeping the counters exact.
    #[inline]
    pub(crate) fn set(&mut self, id: TableId, idx: usize, new: Spte) {
        let old = core::mem::replace(&mut self.entries[id as usize][idx], new);
        let m = &mut self.meta[id as usize];
        match (old.is_present(), new.is_present()) {
            (false, true) => m.present += 1,
            (true, false) => m.present -= 1,
            _ => {}
        }
        let level = m.level;
        if let Some(l) = leaf_level(level) {
            if old.is_leaf() {
                self.leaves[old.is_private() as usize][l.index()] -= 1;
            }
            if new.is_leaf() {
                self.leaves[new.is_private() as usize][l.index()] += 1;
            }
        }
    }

    /// All 512 entries of table `id`.
    pub(crate) fn entries(&self, id: TableId) -> &[Spte; ENTRIES] {
        &self.entries[id as usize]
    }

    /// The level of table `id` (1 = PT).
    #[inline]
    pub(crate) fn level(&self, id: TableId) -> u8 {
        self.meta[id as usize].level
    }

    /// Relabels a root table after the paging depth changed (it must be empty or re-rooted).
    pub(crate) fn set_level(&mut self, id: TableId, level: u8) {
        self.meta[id as usize].level = level;
    }

    /// The root index table `id` belongs to.
    pub(crate) fn root_of(&self, id: TableId) -> u8 {
        self.meta[id as usize].root
    }

    /// First gfn mapped by table `id`.
    pub(crate) fn base_gfn(&self, id: TableId) -> u64 {
        self.meta[id as usize].base_gfn
    }

    /// Present entries of table `id`.
    #[inline]
    pub(crate) fn present(&self, id: TableId) -> usize {
        self.meta[id as usize].present as usize
    }

    /// Whether table `id` is allocated (not on the free list).
    pub(crate) fn in_use(&self, id: TableId) -> bool {
        self.meta.get(id as usize).is_some_and(|m| m.in_use)
    }

    /// Table pages in use.
    pub(crate) fn allocated(&self) -> u64 {
        (self.meta.len() - self.free_count) as u64
    }

    /// Table pages in use in the tree of root index `root`.
    pub(crate) fn allocated_in(&self, root: u8) -> u64 {
        self.per_root[root as usize]
    }

    /// Leaves of one kind at one level.
    pub(crate) fn leaves(&self, private: bool, level: Level) -> u64 {
        self.leaves[private as usize][level.index()]
    }

    /// Heap bytes held by the arena (the model's bookkeeping, not the modelled tables).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.entries.capacity() * size_of::<[Spte; ENTRIES]>()
            + self.meta.capacity() * size_of::<Meta>()
    }

    /// Empties table `id` and every table below it, freeing them all (`id` included).
    /// Returns the number of leaves removed.
    pub(crate) fn free_subtree(&mut self, id: TableId) -> u64 {
        let mut leaves = 0;
        for idx in 0..ENTRIES {
            let e = self.get(id, idx);
            if e.is_table() {
                leaves += self.free_subtree(e.table_id());
            } else if e.is_leaf() {
                leaves += 1;
            }
            if e.is_present() {
                self.set(id, idx, Spte::NONE);
            }
        }
        self.free(id);
        leaves
    }
}

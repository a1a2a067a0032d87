//! Statistics of the MMU: leaves per level and kind, table pages, events, and hugepage
//! coverage against the optimum the attributes, memslots and backing allow.

use crate::addr::{Gfn, GfnRange, Level, PAGE_SIZE};

use super::iter::MAX_LEVEL;
use super::table::table_level_of;
use super::vm::{Layout, Recovery, Vm};

/// A count per mapping level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LevelCounts {
    /// 4K.
    pub k4: u64,
    /// 2M.
    pub m2: u64,
    /// 1G.
    pub g1: u64,
}

impl LevelCounts {
    /// The count of `level`.
    pub const fn get(&self, level: Level) -> u64 {
        match level {
            Level::K4 => self.k4,
            Level::M2 => self.m2,
            Level::G1 => self.g1,
        }
    }
    /// Adds `n` to the count of `level`.
    pub fn add(&mut self, level: Level, n: u64) {
        match level {
            Level::K4 => self.k4 += n,
            Level::M2 => self.m2 += n,
            Level::G1 => self.g1 += n,
        }
    }
    /// Sum over the levels.
    pub const fn total(&self) -> u64 {
        self.k4 + self.m2 + self.g1
    }
    /// Bytes mapped when each count is of leaves.
    pub const fn bytes(&self) -> u64 {
        self.k4 * Level::K4.size() + self.m2 * Level::M2.size() + self.g1 * Level::G1.size()
    }
    /// Bytes mapped by the 2M and 1G leaves.
    pub const fn huge_bytes(&self) -> u64 {
        self.m2 * Level::M2.size() + self.g1 * Level::G1.size()
    }
}

/// The state and event counters of the MMU; cheap to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MmuStats {
    /// The layout.
    pub layout: Layout,
    /// The recovery policy.
    pub recovery: Recovery,
    /// Levels of page tables (4 or 5; see [`Vm::paging_levels`]).
    pub paging_levels: u32,
    /// Leaves mapping private memory (all in the private root in the split layout).
    pub private: LevelCounts,
    /// Leaves mapping shared memory (all in the shared root in the split layout).
    pub shared: LevelCounts,
    /// Page-table pages reachable from the roots, roots included (4 KiB each).
    pub table_pages: u64,
    /// Table pages per root: split `[private, shared]`, unified `[root, 0]`.
    pub table_pages_by_root: [u64; 2],
    /// Leaves split into the 512 leaves of the next level (conversions, accepts, dirty log).
    pub splits: u64,
    /// Leaves removed by conversions and memslot deletes and moves.
    pub zaps: u64,
    /// Private leaves a conversion or punch-hole split because the change cut them (split
    /// layout: TDX's `tdh_mem_page_demote`, `kvm_split_cross_boundary_leafs`).
    pub demotes: u64,
    /// Huge private leaves a conversion or punch-hole removed whole though it changed only part
    /// of them (unified layout: SNP must PSMASH the 2M RMP entry before a 4K change inside it).
    pub psmash: u64,
    /// Regions collapsed into one leaf by eager recovery.
    pub collapses: u64,
    /// Smaller leaves replaced by a fault's huge leaf.
    pub replaced: u64,
    /// Faults (and accepts) answered `Retry`.
    pub retries: u64,
    /// Faults handled, `fault-range` pages included.
    pub faults: u64,
}

impl MmuStats {
    /// Every leaf, per level.
    pub fn leaves(&self) -> LevelCounts {
        LevelCounts {
            k4: self.private.k4 + self.shared.k4,
            m2: self.private.m2 + self.shared.m2,
            g1: self.private.g1 + self.shared.g1,
        }
    }
    /// Bytes mapped.
    pub fn mapped_bytes(&self) -> u64 {
        self.leaves().bytes()
    }
    /// Bytes of page-table pages.
    pub fn table_bytes(&self) -> u64 {
        self.table_pages * PAGE_SIZE
    }
    /// TLB reach per entry: mapped bytes per leaf (4096 when everything is 4K, up to 1 GiB).
    pub fn tlb_reach_per_entry(&self) -> u64 {
        self.mapped_bytes()
            .checked_div(self.leaves().total())
            .unwrap_or(0)
    }
}

/// Hugepage coverage and page-table memory against the optimum: every page that may be mapped
/// at all mapped at the largest level the tracker allows (attributes, memslots, backing, dirty
/// logging, GUEST_INHIBIT). O(large pages of the memslots) to compute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Coverage {
    /// Bytes mapped now.
    pub mapped_bytes: u64,
    /// Bytes mapped now by 2M and 1G leaves.
    pub huge_bytes: u64,
    /// Bytes that may be mapped at all (inside memslots; private pages only in guest_memfd slots).
    pub mappable_bytes: u64,
    /// Bytes that may be mapped by 2M and 1G leaves: the optimum of `huge_bytes`.
    pub optimum_huge_bytes: u64,
    /// The leaves of the optimum mapping of all mappable memory.
    pub optimum_leaves: LevelCounts,
    /// Table pages now.
    pub table_pages: u64,
    /// Table pages of the optimum mapping of all mappable memory.
    pub optimum_table_pages: u64,
}

impl Coverage {
    /// `huge_bytes / optimum_huge_bytes` (1 when nothing may be mapped huge).
    pub fn ratio(&self) -> f64 {
        if self.optimum_huge_bytes == 0 {
            1.0
        } else {
            self.huge_bytes as f64 / self.optimum_huge_bytes as f64
        }
    }
}

/// Accumulates the optimum mapping, region by region in address order.
struct Optimum {
    depth: u8,
    split: bool,
    /// Last table counted per root and table level (tables come in address order).
    last: [[Option<u64>; MAX_LEVEL as usize + 1]; 2],
    tables: u64,
    leaves: LevelCounts,
    mappable: u64,
}

impl Optimum {
    /// `pages` gfns from `gfn` (inside one 2M page when `level` is 4K) mapped at `level`.
    fn add(&mut self, gfn: u64, pages: u64, level: Level, private: bool) {
        let r = usize::from(self.split && !private);
        self.mappable += pages * PAGE_SIZE;
        self.leaves.add(level, pages / level.pages());
        for t in table_level_of(level)..self.depth {
            let index = gfn >> (9 * u32::from(t));
            if self.last[r][t as usize] != Some(index) {
                self.last[r][t as usize] = Some(index);
                self.tables += 1;
            }
        }
    }
}

impl Vm {
    /// The state and event counters.
    pub fn stats(&self) -> MmuStats {
        let t = &self.trees.tables;
        let counts = |private| LevelCounts {
            k4: t.leaves(private, Level::K4),
            m2: t.leaves(private, Level::M2),
            g1: t.leaves(private, Level::G1),
        };
        MmuStats {
            layout: self.layout,
            recovery: self.recovery,
            paging_levels: self.paging_levels(),
            private: counts(true),
            shared: counts(false),
            table_pages: t.allocated(),
            table_pages_by_root: [t.allocated_in(0), t.allocated_in(1)],
            splits: self.counters.splits,
            zaps: self.counters.zaps,
            demotes: self.counters.demotes,
            psmash: self.counters.psmash,
            collapses: self.counters.collapses,
            replaced: self.counters.replaced,
            retries: self.counters.retries,
            faults: self.counters.faults,
        }
    }

    /// Hugepage coverage and page-table memory against the optimum.
    pub fn coverage(&self) -> Coverage {
        let stats = self.stats();
        let mut opt = Optimum {
            depth: self.trees.depth(),
            split: self.layout.is_split(),
            last: [[None; MAX_LEVEL as usize + 1]; 2],
            tables: 0,
            leaves: LevelCounts::default(),
            mappable: 0,
        };
        let (g1, m2) = (Level::G1.pages(), Level::M2.pages());
        for slot in self.tracker.memslots() {
            let range = slot.range().gfns();
            let mut g = range.start;
            while g < range.end {
                if Level::G1.is_aligned_gfn(g) && g + g1 <= range.end {
                    if let Some(p) = self.uniform_kind(GfnRange::from_len(Gfn(g), g1)) {
                        if self.allowed(g, p) == Some(Level::G1) {
                            opt.add(g, g1, Level::G1, p);
                            g += g1;
                            continue;
                        }
                    }
                }
                let end = (Level::M2.align_gfn(g) + m2).min(range.end);
                let whole = Level::M2.is_aligned_gfn(g) && end - g == m2;
                match self.uniform_kind(GfnRange::new(Gfn(g), Gfn(end))) {
                    Some(p) if whole => match self.allowed(g, p) {
                        Some(l) if l >= Level::M2 => opt.add(g, m2, Level::M2, p),
                        Some(_) => opt.add(g, m2, Level::K4, p),
                        None => {}
                    },
                    _ => {
                        self.tracker.for_each_kind_run(
                            GfnRange::new(Gfn(g), Gfn(end)),
                            |run, kind| {
                                let p = kind.is_private();
                                if self.allowed(run.start.0, p).is_some() {
                                    opt.add(run.start.0, run.len(), Level::K4, p);
                                }
                            },
                        );
                    }
                }
                g = end;
            }
        }
        Coverage {
            mapped_bytes: stats.mapped_bytes(),
            huge_bytes: stats.leaves().huge_bytes(),
            mappable_bytes: opt.mappable,
            optimum_huge_bytes: opt.leaves.huge_bytes(),
            optimum_leaves: opt.leaves,
            table_pages: stats.table_pages,
            optimum_table_pages: opt.tables + u64::from(self.trees.nroots()),
        }
    }

    /// Whether every gfn of `range` is private (`Some(true)`) or shared (`Some(false)`).
    fn uniform_kind(&self, range: GfnRange) -> Option<bool> {
        self.tracker
            .uniform_kind(range)
            .map(crate::Kind::is_private)
    }
}

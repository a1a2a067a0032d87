//! A region's life cycle and form: fresh, parked and spare regions, the move between the sparse
//! and the dense form, and the invariants.

use super::*;

impl Region {
    /// Whether [`Region::reset`] keeps the region's allocations: sparse and small (64 slots, 8
    /// blocks at most), so that a spare does not hold on to a big region's memory.
    pub(super) fn keeps_leaves(&self) -> bool {
        match &self.leaves {
            Leaves::Sparse { slots, blocks } => slots.capacity() <= 64 && blocks.capacity() <= 8,
            Leaves::Dense(_) => false,
        }
    }

    /// Makes the region all `v` as entry `entry`, keeping small allocations for reuse.
    pub(super) fn reset(&mut self, entry: u16, v: bool) {
        self.mixed = [0; 8];
        self.first = block::filled(v);
        self.rank = [0; 8];
        self.entry = entry;
        if self.keeps_leaves() {
            if let Leaves::Sparse { slots, blocks } = &mut self.leaves {
                slots.clear();
                blocks.clear();
            }
        } else {
            self.leaves = Leaves::Sparse {
                slots: Vec::new(),
                blocks: Vec::new(),
            };
        }
    }

    /// Makes the region entry `entry`, all `!v` but offsets `[lo, hi)` (less than the whole
    /// region): the plan of that range on a uniform region, whose edge pages are inline codes
    /// of at most two boundaries. Needs room for [`FRESH_SLOTS`] ([`Region::reserve_fresh`]);
    /// never allocates.
    pub(in crate::attrs) fn make(&mut self, entry: u16, lo: u32, hi: u32, v: bool) {
        debug_assert!(lo < hi && hi <= REGION_GFNS && hi - lo < REGION_GFNS);
        self.reset(entry, !v);
        let plan = self.plan(lo, hi, v);
        debug_assert!(self.has(self.room(&plan)), "a fresh region has its slots");
        self.apply(&plan);
    }

    /// Whether the region, once uniform, may be kept for reuse: sparse, with room for what a
    /// fresh region needs ([`Region::reserve_fresh`]) and no more than [`Region::reset`] keeps.
    pub(in crate::attrs) fn parkable(&self) -> bool {
        self.keeps_leaves()
            && matches!(&self.leaves, Leaves::Sparse { slots, .. } if slots.capacity() >= FRESH_SLOTS)
    }

    /// Room for the [`FRESH_SLOTS`] a fresh region gets when a range is set inside it, room
    /// that [`Region::reset`] keeps: a spare that was a big region gets small vectors first.
    pub(in crate::attrs) fn reserve_fresh(&mut self) -> Alloc<()> {
        if !self.keeps_leaves() {
            self.leaves = Leaves::Sparse {
                slots: Vec::new(),
                blocks: Vec::new(),
            };
        }
        if let Leaves::Sparse { slots, .. } = &mut self.leaves {
            grow(slots, FRESH_SLOTS, PAGES as usize)?;
        }
        Ok(())
    }

    /// Changes the form when the other one fits better (see the module docs). Optional work:
    /// when memory is short the region simply stays as it is.
    pub(in crate::attrs) fn adapt(&mut self) {
        let mixed = self.rank_of(PAGES) as u32;
        match &self.leaves {
            Leaves::Sparse { .. } if self.heap_bytes() > DENSE_BYTES => {
                let mut dense = Vec::new();
                if dense.try_reserve_exact(PAGES as usize).is_ok() {
                    dense.extend((0..PAGES).map(|p| self.page(p)));
                    self.leaves = Leaves::Dense(dense);
                }
            }
            Leaves::Dense(blocks) if mixed < SPARSE_BELOW => {
                let mixed_pages = (0..PAGES).filter(|&p| self.is_mixed(p));
                let codes = mixed_pages
                    .clone()
                    .map(|p| block::encode(&blocks[p as usize]));
                let nblocks = codes.clone().filter(Option::is_none).count();
                let (mut slots, mut sparse_blocks) = (Vec::new(), Vec::new());
                if slots.try_reserve_exact(mixed as usize).is_err()
                    || sparse_blocks.try_reserve_exact(nblocks).is_err()
                {
                    return;
                }
                for (p, code) in mixed_pages.zip(codes) {
                    slots.push(code.unwrap_or_else(|| {
                        sparse_blocks.push(blocks[p as usize]);
                        BLOCK_REF | (sparse_blocks.len() - 1) as u64
                    }));
                }
                self.leaves = Leaves::Sparse {
                    slots,
                    blocks: sparse_blocks,
                };
            }
            _ => {}
        }
    }

    /// Checks the region's invariants (not that it is non-uniform: its node does).
    #[cfg(feature = "test-hooks")]
    pub(in crate::attrs) fn check(&self) -> core::result::Result<(), &'static str> {
        let mut rank = [0u16; 8];
        for w in 1..8 {
            rank[w] = rank[w - 1] + self.mixed[w - 1].count_ones() as u16;
        }
        if rank != self.rank {
            return Err("region rank index out of date");
        }
        for p in 0..PAGES {
            let bits = self.page(p);
            let first = block::get(&self.first, p);
            match (self.is_mixed(p), block::uniform(&bits)) {
                (false, Some(v)) if v == first => {}
                (true, None) if block::get(&bits, 0) == first => {}
                _ => return Err("2M page masks disagree with its bits"),
            }
        }
        match &self.leaves {
            Leaves::Dense(blocks) => {
                if blocks.len() != PAGES as usize {
                    return Err("dense region without a block per page");
                }
            }
            Leaves::Sparse { slots, blocks } => {
                if slots.len() != self.rank_of(PAGES) {
                    return Err("sparse slots differ from the mixed pages");
                }
                let mut refs = 0;
                let mut named: Block = [0; 8];
                for &slot in slots {
                    if slot & BLOCK_REF != 0 {
                        let idx = (slot & !BLOCK_REF) as usize;
                        if idx >= blocks.len() {
                            return Err("slot names a missing block");
                        }
                        if block::get(&named, idx as u32) {
                            return Err("two slots share a block");
                        }
                        block::fill(&mut named, idx as u32, idx as u32 + 1, true);
                        if block::boundaries(&blocks[idx]) <= INLINE_BACK {
                            return Err("a block with few boundaries was not made inline");
                        }
                        refs += 1;
                    } else if !(1..=block::INLINE_MAX).contains(&block::inline_count(slot)) {
                        return Err("inline slot with a bad boundary count");
                    }
                }
                if refs != blocks.len() {
                    return Err("blocks not referenced exactly once");
                }
            }
        }
        Ok(())
    }
}

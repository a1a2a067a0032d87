//! The one writer: the only code that touches a region's masks, rank index, slots and blocks
//! ([`Region::store`] for one page, [`Region::store_run`] for whole pages), and the update that
//! hands it a plan.

use super::*;

impl Region {
    /// Sets gfns `[lo, hi)` (offsets in the region) to `v`, allocating first what that needs
    /// (on `NoMemory` nothing changed).
    #[inline]
    pub(in crate::attrs) fn update(&mut self, lo: u32, hi: u32, v: bool) -> Alloc<Update> {
        let (p, a, b) = (lo / PAGE_GFNS, lo % PAGE_GFNS, (hi - 1) % PAGE_GFNS + 1);
        if p == (hi - 1) / PAGE_GFNS && (a != 0 || b != PAGE_GFNS) {
            // The plan of a range inside one 2M page is that page's edit alone.
            let Some((at, content)) = self.edit(p, a, b, v) else {
                return Ok(Update::Unchanged);
            };
            let room = self.page_room(&at, &content);
            let grew = !self.has(room);
            if grew {
                self.reserve_room(room)?;
            }
            let turned_uniform = self.store(at, content);
            return Ok(self.outcome(grew, turned_uniform));
        }
        self.update_pages(lo, hi, v)
    }

    /// [`Region::update`] of a range over more than one 2M page, or of one whole page: the plan
    /// of edge pages and whole pages, checked, given its room and carried out.
    #[inline]
    fn update_pages(&mut self, lo: u32, hi: u32, v: bool) -> Alloc<Update> {
        let plan = self.plan(lo, hi, v);
        if !plan.changes() {
            return Ok(Update::Unchanged);
        }
        let room = self.room(&plan);
        let grew = !self.has(room);
        if grew {
            self.reserve_room(room)?;
        }
        let turned_uniform = self.apply(&plan);
        Ok(self.outcome(grew, turned_uniform))
    }

    /// What a carried-out change leaves to settle.
    #[inline(always)]
    pub(super) fn outcome(&self, grew: bool, turned_uniform: bool) -> Update {
        // A region that took memory may want the dense form; one where a page turned uniform
        // may be uniform (told from its masks here), or, dense, want the sparse form.
        if grew || (turned_uniform && (self.is_dense() || self.uniform().is_some())) {
            Update::Changed
        } else {
            Update::Edited
        }
    }

    /// [`Region::apply`] of the plan of `[lo, hi)` to `v`; needs its [`Region::reserve`].
    pub(in crate::attrs) fn set(&mut self, lo: u32, hi: u32, v: bool) {
        self.apply(&self.plan(lo, hi, v));
    }

    /// Carries out `plan` (made on the region as it is; its room there): the later edge page,
    /// the whole pages, then the earlier edge page, each handed to the writer. Returns whether
    /// a page turned uniform. Never allocates.
    #[inline(always)]
    pub(in crate::attrs) fn apply(&mut self, plan: &Plan) -> bool {
        let mut turned = false;
        if let Some((at, content)) = &plan.edges[0] {
            // Nothing was stored yet: the plan's decoding still holds.
            turned |= self.store(*at, *content);
        }
        if plan.full_changes {
            turned |= self.store_run(plan.full.0, plan.full.1, plan.v);
        }
        if let Some((at, content)) = &plan.edges[1] {
            // The later stores never move its rank, but may have moved its block: a block is
            // decoded again.
            let at = match at.stored {
                Stored::Block { .. } => self.at(at.page),
                _ => *at,
            };
            turned |= self.store(at, *content);
        }
        turned
    }

    /// The writer for one page: stores `content` as page `at.page` (decoded as `at`, with room
    /// for what it adds), keeping the masks, the rank index, the slots and the blocks right.
    /// Returns whether the page changed and is uniform now, so that the region may be.
    #[inline(always)]
    pub(super) fn store(&mut self, at: At, content: Content) -> bool {
        match content {
            Content::Fill { a, b, v } => self.store_fill(at, a, b, v),
            _ => self.store_form(at, content),
        }
    }

    /// The writer's part for a page stored as a code or as uniform (not a fill).
    #[inline(always)]
    pub(super) fn store_form(&mut self, at: At, content: Content) -> bool {
        let (page, rank) = (at.page, at.rank as usize);
        let (now_mixed, first) = match content {
            Content::Uniform(v) => (false, v),
            Content::Inline { first, .. } => (true, first),
            Content::Fill { .. } => unreachable!("fills go to store_fill"),
        };
        let was_mixed = at.stored.is_mixed();
        match &mut self.leaves {
            Leaves::Dense(blocks) => {
                blocks[page as usize] = match content {
                    Content::Inline { code, first } => block::decode(code, first),
                    _ => block::filled(first),
                };
            }
            Leaves::Sparse { slots, blocks } => {
                let slot = match content {
                    Content::Inline { code, .. } => Some(code),
                    _ => None,
                };
                match (slot, was_mixed) {
                    (Some(s), true) => slots[rank] = s,
                    (Some(s), false) => {
                        debug_assert!(slots.len() < slots.capacity(), "room was made");
                        slots.insert(rank, s);
                    }
                    (None, true) => {
                        slots.remove(rank);
                    }
                    (None, false) => {}
                }
                if let Stored::Block { index, .. } = at.stored {
                    free_block(slots, blocks, index as usize);
                }
            }
        }
        let first_was = at.stored.first();
        block::set(&mut self.first, page, first);
        if was_mixed != now_mixed {
            block::set(&mut self.mixed, page, now_mixed);
            self.rank_moved(page, now_mixed);
        }
        !now_mixed && (was_mixed || first_was != first)
    }

    /// The writer's fill: offsets `[a, b)` of page `at` set to `v` in the page's block (a dense
    /// region's, a sparse one's, or a new one for an inline page outgrowing its code), then the
    /// page's form made to follow its bits: uniform, back inline at few boundaries (sparse), or
    /// a block. Returns whether the page turned uniform.
    #[inline(always)]
    pub(super) fn store_fill(&mut self, at: At, a: u32, b: u32, v: bool) -> bool {
        let page = at.page;
        let dense = self.is_dense();
        let bits = match (at.stored, &mut self.leaves) {
            (Stored::Block { index, .. }, Leaves::Sparse { blocks, .. }) => {
                &mut blocks[index as usize]
            }
            (_, Leaves::Dense(blocks)) => &mut blocks[page as usize],
            (Stored::Inline { code, first }, Leaves::Sparse { slots, blocks }) => {
                debug_assert!(blocks.len() < blocks.capacity(), "room was made");
                blocks.push(block::decode(code, first));
                slots[at.rank as usize] = BLOCK_REF | (blocks.len() - 1) as u64;
                blocks.last_mut().expect("just pushed")
            }
            _ => unreachable!("a uniform page's edit is an inline code"),
        };
        // One gfn whose flip leaves no fewer boundaries (told from its neighbours): the page keeps
        // its form, with no count and no copy — the common change of a fragmented page.
        let keeps_form = if b == a + 1 {
            let keeps = block::flip_keeps_boundaries(bits, a, v);
            block::set(bits, a, v);
            keeps
        } else {
            block::fill(bits, a, b, v);
            false
        };
        let first = bits[0] & 1 != 0;
        // What the bits call for, if not the block they are in.
        let form = if keeps_form {
            None
        } else if dense {
            block::uniform(bits).map(Content::Uniform)
        } else if block::boundaries_above(bits, INLINE_BACK) {
            None
        } else {
            Some(match block::uniform(bits) {
                Some(u) => Content::Uniform(u),
                None => Content::Inline {
                    code: block::encode(bits).expect("few boundaries fit inline"),
                    first,
                },
            })
        };
        match form {
            // The page is (now) a block, or a mixed page of a dense region.
            None => {
                block::set(&mut self.first, page, first);
                if !at.stored.is_mixed() {
                    block::set(&mut self.mixed, page, true);
                    self.rank_moved(page, true);
                }
                false
            }
            // Stored as its bits call for, from the block it is in now.
            Some(content) => self.store_form(self.at(page), content),
        }
    }

    /// The writer for whole pages: makes 2M pages `[a, b)` all `v`, dropping their slots and
    /// blocks. Returns whether one of them changed (all are uniform now).
    pub(super) fn store_run(&mut self, a: u32, b: u32, v: bool) -> bool {
        let (r0, r1) = (self.rank_of(a), self.rank_of(b));
        match &mut self.leaves {
            Leaves::Dense(blocks) => {
                for blk in &mut blocks[a as usize..b as usize] {
                    *blk = block::filled(v);
                }
            }
            Leaves::Sparse { slots, blocks } => {
                let mut freed = false;
                for &slot in &slots[r0..r1] {
                    if slot & BLOCK_REF != 0 {
                        // A stored block is never uniform: all-zero marks it free.
                        blocks[(slot & !BLOCK_REF) as usize] = [0; 8];
                        freed = true;
                    }
                }
                slots.drain(r0..r1);
                if freed {
                    compact(slots, blocks);
                }
            }
        }
        block::fill(&mut self.mixed, a, b, false);
        block::fill(&mut self.first, a, b, v);
        for (w, rank) in self.rank.iter_mut().enumerate() {
            let start = w as u32 * 64;
            if start >= b {
                *rank -= (r1 - r0) as u16;
            } else if start > a {
                // Every mixed page between `a` and this word's start is gone.
                *rank = r0 as u16;
            }
        }
        true
    }

    /// Keeps the rank index right after page `p` became mixed (`up`) or stopped being mixed:
    /// no count of bits (popcount is a software routine on baseline x86-64, and this runs on
    /// every conversion that adds or drops a mixed page).
    #[inline(always)]
    pub(super) fn rank_moved(&mut self, p: u32, up: bool) {
        for rank in &mut self.rank[(p / 64) as usize + 1..] {
            *rank = if up { *rank + 1 } else { *rank - 1 };
        }
    }
}

/// Drops block `idx` by moving the last block into its place (fixing the slot that named it).
fn free_block(slots: &mut [u64], blocks: &mut Vec<Block>, idx: usize) {
    let last = blocks.len() - 1;
    blocks.swap_remove(idx);
    if idx != last {
        if let Some(s) = slots.iter_mut().find(|s| **s == BLOCK_REF | last as u64) {
            *s = BLOCK_REF | idx as u64;
        }
    }
}

/// Removes the blocks marked free (all zero), moving live ones down and renaming their slots.
fn compact(slots: &mut [u64], blocks: &mut Vec<Block>) {
    let mut i = 0;
    while i < blocks.len() {
        if block::is_clear(&blocks[i]) {
            free_block(slots, blocks, i);
        } else {
            i += 1;
        }
    }
}

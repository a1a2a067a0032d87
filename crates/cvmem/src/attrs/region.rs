//! A 1G region whose gfns are not all of one kind.
//!
//! Per 2M page two mask bits say whether the page is mixed and, if not, which kind it is, so the
//! fault path decides a uniform 2M page with one probe. A mixed page is stored in one of two
//! forms, chosen per region like roaring's containers:
//! - **sparse**: an 8-byte slot per mixed page, in page order (found by a rank over the mixed
//!   mask): its boundaries inline when it has at most six, else the index of a 64-byte block;
//! - **dense**: 512 blocks, one per page, once the sparse form would be bigger than that
//!   (32 KiB, what a flat bitmap spends on 1 GiB); back to sparse below 64 mixed pages.
//!
//! A region never holds more than the dense form plus its masks, whatever a guest does.

use alloc::vec::Vec;
use core::mem::size_of;

use super::block::{self, Block, BLOCK_REF, INLINE_BACK, INLINE_MAX, PAGE_GFNS};
use super::{grow, Summary};
use crate::error::Result;

/// Gfns per region (1G).
pub(super) const REGION_GFNS: u32 = 1 << 18;
/// 2M pages per region.
const PAGES: u32 = 512;
/// Heap bytes of the dense form.
pub(super) const DENSE_BYTES: usize = PAGES as usize * size_of::<Block>();
/// A dense region goes back to the sparse form below this many mixed pages (hysteresis: it
/// became dense only when its sparse form outgrew [`DENSE_BYTES`]).
const SPARSE_BELOW: u32 = 64;

#[derive(Clone, Debug)]
pub(super) struct Region {
    /// 2M pages whose gfns are not all of one kind.
    mixed: Block,
    /// Per 2M page: its kind if uniform, the kind of its first gfn if mixed.
    first: Block,
    /// Mixed pages before each word of `mixed`: the rank index of the sparse slots.
    rank: [u16; 8],
    /// Which 1G entry of its node the region is.
    pub(super) entry: u16,
    leaves: Leaves,
}

/// What a set does to a region: see [`Region::plan`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    /// Whole 2M pages `[a, b)` that become `v`.
    full: (u32, u32),
    v: bool,
    /// The partly covered 2M pages and their new contents.
    edges: [Option<(u32, Edit)>; 2],
}

/// What an update did to a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Update {
    /// Nothing: every gfn had the attributes already.
    Unchanged,
    /// Gfns changed, but the region took no memory, kept its form and cannot have become
    /// uniform: nothing to settle.
    Edited,
    /// Anything else: the region may have become uniform or want the other form.
    Changed,
}

/// An inline code before and after an edit of one 2M page (no boundaries: uniform).
#[derive(Clone, Copy, Debug)]
struct InlineEdit {
    page: u32,
    /// The page's slot rank; stays right while only later pages change.
    rank: usize,
    mixed: bool,
    code: u64,
    first: bool,
    new: u64,
    new_first: bool,
}

impl InlineEdit {
    fn unchanged(&self) -> bool {
        (self.new, self.new_first) == (self.code, self.first)
    }
    fn adds_slot(&self) -> bool {
        !self.mixed && block::inline_count(self.new) > 0
    }
    /// The page changed and is uniform now (it was mixed, or of the other kind).
    fn turns_uniform(&self) -> bool {
        !self.unchanged() && block::inline_count(self.new) == 0
    }
}

/// The new contents of one 2M page.
#[derive(Clone, Copy, Debug)]
enum Edit {
    /// Unchanged.
    Same,
    /// All of one kind.
    Uniform(bool),
    /// An inline code and the first gfn's kind.
    Inline(u64, bool),
    /// Offsets `[a, b)` filled in the page's bits (a block, or a code outgrowing the inline
    /// form), kept in a block; `first` is the first gfn's kind after. The bits are made where
    /// they are stored, so that a plan stays small.
    Fill { a: u32, b: u32, first: bool },
}

#[derive(Debug)]
enum Leaves {
    /// One slot per mixed page, in page order; blocks in no order.
    Sparse { slots: Vec<u64>, blocks: Vec<Block> },
    /// A block per page, uniform pages filled.
    Dense(Vec<Block>),
}

/// A copy with the room of the original: a region's spare room is part of its state (a parked
/// or spare region is made into a fresh one without allocating), and a copy of the store — the
/// concurrent front keeps two — must be able to take the same updates.
impl Clone for Leaves {
    fn clone(&self) -> Self {
        fn with_room<T: Copy>(v: &[T], capacity: usize) -> Vec<T> {
            let mut copy = Vec::with_capacity(capacity);
            copy.extend_from_slice(v);
            copy
        }
        match self {
            Leaves::Sparse { slots, blocks } => Leaves::Sparse {
                slots: with_room(slots, slots.capacity()),
                blocks: with_room(blocks, blocks.capacity()),
            },
            Leaves::Dense(blocks) => Leaves::Dense(blocks.clone()),
        }
    }
}

impl Region {
    /// An all-shared region with no heap memory (it gets some from [`Region::reserve`]).
    pub(super) const fn new() -> Self {
        Region {
            mixed: [0; 8],
            first: [0; 8],
            rank: [0; 8],
            entry: 0,
            leaves: Leaves::Sparse {
                slots: Vec::new(),
                blocks: Vec::new(),
            },
        }
    }

    /// Whether [`Region::reset`] keeps the region's allocations: sparse and small (64 slots, 8
    /// blocks at most), so that a spare does not hold on to a big region's memory.
    fn keeps_leaves(&self) -> bool {
        match &self.leaves {
            Leaves::Sparse { slots, blocks } => slots.capacity() <= 64 && blocks.capacity() <= 8,
            Leaves::Dense(_) => false,
        }
    }

    /// Makes the region all `v` as entry `entry`, keeping small allocations for reuse.
    fn reset(&mut self, entry: u16, v: bool) {
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
    /// region), keeping small allocations for reuse: the whole 2M pages inside are kind bits,
    /// each partly covered page (one or two) an inline code of at most two boundaries. No plan:
    /// a region is made on every conversion that mixes a uniform 1G page (and cold, at
    /// start-up). Needs room for two slots ([`Region::reserve_fresh`]); never allocates.
    pub(super) fn make(&mut self, entry: u16, lo: u32, hi: u32, v: bool) {
        debug_assert!(lo < hi && hi <= REGION_GFNS && hi - lo < REGION_GFNS);
        self.reset(entry, !v);
        let (full_lo, full_hi) = (lo.div_ceil(PAGE_GFNS), hi / PAGE_GFNS);
        if full_lo < full_hi {
            block::fill(&mut self.first, full_lo, full_hi, v);
        }
        let (p, q) = (lo / PAGE_GFNS, (hi - 1) / PAGE_GFNS);
        let (a, b) = (lo % PAGE_GFNS, (hi - 1) % PAGE_GFNS + 1);
        // The partly covered pages, in page order (so are their slots).
        if p == q {
            if a != 0 || b != PAGE_GFNS {
                self.make_mixed(p, a, b, v);
            }
        } else {
            if a != 0 {
                self.make_mixed(p, a, PAGE_GFNS, v);
            }
            if b != PAGE_GFNS {
                self.make_mixed(q, 0, b, v);
            }
        }
    }

    /// Makes uniform page `p`, after any other mixed page, all `!v` but `[a, b)`: a slot of
    /// its inline code appended.
    fn make_mixed(&mut self, p: u32, a: u32, b: u32, v: bool) {
        if let Leaves::Sparse { slots, .. } = &mut self.leaves {
            debug_assert!(slots.len() < slots.capacity(), "room for two slots");
            slots.push(block::inline_run(a, b));
        }
        block::set(&mut self.mixed, p, true);
        block::set(&mut self.first, p, if a == 0 { v } else { !v });
        self.rank_moved(p, true);
    }

    /// Whether the region, once uniform, may be kept for reuse: sparse, with room for what a
    /// fresh region needs ([`Region::reserve_fresh`]) and no more than [`Region::reset`] keeps.
    pub(super) fn parkable(&self) -> bool {
        self.keeps_leaves()
            && matches!(&self.leaves, Leaves::Sparse { slots, .. } if slots.capacity() >= 2)
    }

    /// Room for the two slots a fresh region gets when a range is set inside it (its edge
    /// pages, with at most two boundaries each: inline, never blocks), room that
    /// [`Region::reset`] keeps: a spare that was a big region gets small vectors first.
    pub(super) fn reserve_fresh(&mut self) -> Result<()> {
        if !self.keeps_leaves() {
            let mut slots = Vec::new();
            grow(&mut slots, 2, PAGES as usize)?;
            self.leaves = Leaves::Sparse {
                slots,
                blocks: Vec::new(),
            };
        } else if let Leaves::Sparse { slots, .. } = &mut self.leaves {
            grow(slots, 2, PAGES as usize)?;
        }
        Ok(())
    }

    /// What setting `[lo, hi)` to `v` does: whole 2M pages made uniform and the new contents of
    /// the (at most two) partly covered ones, worked out from the masks and inline codes
    /// without decoding a page unless it is a block or outgrows the inline form.
    pub(super) fn plan(&self, lo: u32, hi: u32, v: bool) -> Plan {
        debug_assert!(lo < hi && hi <= REGION_GFNS);
        let mut edges = [None, None];
        let pages = super::edges(u64::from(lo), u64::from(hi), u64::from(PAGE_GFNS));
        for (slot, (p, a, b)) in edges.iter_mut().zip(pages) {
            *slot = Some((p as u32, self.edit(p as u32, a as u32, b as u32, v)));
        }
        Plan {
            full: (lo.div_ceil(PAGE_GFNS), hi / PAGE_GFNS),
            v,
            edges,
        }
    }

    /// The new contents of 2M page `p` once offsets `[a, b)` in it are `v`.
    fn edit(&self, p: u32, a: u32, b: u32, v: bool) -> Edit {
        if let Some(e) = self.inline_edit(p, a, b, v) {
            return if e.unchanged() {
                Edit::Same
            } else if block::inline_count(e.new) == 0 {
                Edit::Uniform(e.new_first)
            } else {
                Edit::Inline(e.new, e.new_first)
            };
        }
        // A block, a mixed page of a dense region, or a code outgrowing the inline form.
        let mut bits = self.page(p);
        if !block::fill_changed(&mut bits, a, b, v) {
            return Edit::Same;
        }
        match block::uniform(&bits) {
            Some(u) => Edit::Uniform(u),
            // A block goes back inline only at few boundaries (hysteresis); a dense page stays.
            None if !self.is_dense() && !block::boundaries_above(&bits, INLINE_BACK) => {
                let code = block::encode(&bits).expect("few boundaries fit inline");
                Edit::Inline(code, bits[0] & 1 != 0)
            }
            None => Edit::Fill {
                a,
                b,
                first: bits[0] & 1 != 0,
            },
        }
    }

    /// The slots and blocks carrying out `plan` adds (sparse form).
    fn additions(&self, plan: &Plan) -> (usize, usize) {
        let (mut new_slots, mut new_blocks) = (0, 0);
        for (p, edit) in plan.edges.iter().flatten() {
            let bits = match edit {
                Edit::Same | Edit::Uniform(_) => continue,
                Edit::Inline(..) => false,
                Edit::Fill { .. } => true,
            };
            new_slots += usize::from(!self.is_mixed(*p));
            new_blocks += usize::from(bits && !self.is_block(*p));
        }
        (new_slots, new_blocks)
    }

    /// Makes sure [`Region::apply`] of `plan` completes without allocating: exactly the slots
    /// and blocks its edge pages will need, so that no region carries room for blocks it never
    /// holds.
    pub(super) fn reserve(&mut self, plan: &Plan) -> Result<()> {
        let (new_slots, new_blocks) = self.additions(plan);
        if let Leaves::Sparse { slots, blocks } = &mut self.leaves {
            // A few spare slots (8 bytes each) keep later flips on the fast path.
            if new_slots > 0 {
                grow(slots, new_slots.max(4), PAGES as usize)?;
            }
            if new_blocks > 0 {
                grow(blocks, new_blocks.max(2), PAGES as usize)?;
            }
        }
        Ok(())
    }

    /// Whether 2M page `p` is stored as a block (sparse form).
    fn is_block(&self, p: u32) -> bool {
        match &self.leaves {
            Leaves::Sparse { slots, .. } if self.is_mixed(p) => {
                slots[self.rank_of(p)] & BLOCK_REF != 0
            }
            _ => false,
        }
    }

    #[inline]
    fn rank_of(&self, page: u32) -> usize {
        if page >= PAGES {
            return self.rank[7] as usize + self.mixed[7].count_ones() as usize;
        }
        let w = (page / 64) as usize;
        let below = self.mixed[w] & ((1u64 << (page % 64)) - 1);
        self.rank[w] as usize + below.count_ones() as usize
    }

    /// Keeps the rank index right after the mixed pages among `[a, b)` (ranks `[r0, r1)`)
    /// stopped being mixed: no count of bits (popcount is a software routine on baseline
    /// x86-64, and this runs on every conversion).
    fn rank_cleared(&mut self, a: u32, b: u32, r0: usize, r1: usize) {
        for (w, rank) in self.rank.iter_mut().enumerate() {
            let start = w as u32 * 64;
            if start >= b {
                *rank -= (r1 - r0) as u16;
            } else if start > a {
                // Every mixed page between `a` and this word's start is gone.
                *rank = r0 as u16;
            }
        }
    }

    /// Keeps the rank index right after page `p` became mixed (`up`) or stopped being mixed.
    fn rank_moved(&mut self, p: u32, up: bool) {
        for rank in &mut self.rank[(p / 64) as usize + 1..] {
            *rank = if up { *rank + 1 } else { *rank - 1 };
        }
    }

    /// Whether 2M page `page` is mixed.
    #[inline]
    pub(super) fn is_mixed(&self, page: u32) -> bool {
        block::get(&self.mixed, page)
    }

    /// Mixed 2M pages among `[lo, hi)`.
    pub(super) fn mixed_count(&self, lo: u32, hi: u32) -> u32 {
        let mut m = self.mixed;
        block::fill(&mut m, 0, lo, false);
        block::fill(&mut m, hi, PAGES, false);
        m.iter().map(|w| w.count_ones()).sum()
    }

    /// The kind of the gfn at offset `off`, and whether its 2M page is uniform. A bit probe in
    /// the masks, then for a mixed page one rank and a slot (sparse) or a bit probe (dense).
    #[inline]
    pub(super) fn probe(&self, off: u32) -> (bool, bool) {
        let page = off / PAGE_GFNS;
        let first = block::get(&self.first, page);
        if !self.is_mixed(page) {
            return (first, true);
        }
        let bit = off % PAGE_GFNS;
        let v = match &self.leaves {
            Leaves::Dense(blocks) => block::get(&blocks[page as usize], bit),
            Leaves::Sparse { slots, blocks } => {
                let slot = slots[self.rank_of(page)];
                if slot & BLOCK_REF != 0 {
                    block::get(&blocks[(slot & !BLOCK_REF) as usize], bit)
                } else {
                    block::inline_get(slot, first, bit)
                }
            }
        };
        (v, false)
    }

    /// The bits of 2M page `page`, whatever form it is stored in.
    fn page(&self, page: u32) -> Block {
        let first = block::get(&self.first, page);
        if !self.is_mixed(page) {
            return block::filled(first);
        }
        match &self.leaves {
            Leaves::Dense(blocks) => blocks[page as usize],
            Leaves::Sparse { slots, blocks } => {
                let slot = slots[self.rank_of(page)];
                if slot & BLOCK_REF != 0 {
                    blocks[(slot & !BLOCK_REF) as usize]
                } else {
                    block::decode(slot, first)
                }
            }
        }
    }

    /// `Some(v)` when every gfn of the region is `v`.
    pub(super) fn uniform(&self) -> Option<bool> {
        if !block::is_clear(&self.mixed) {
            return None;
        }
        block::uniform(&self.first)
    }

    /// Carries out `plan` (made on the region as it is). Needs [`Region::reserve`] of it
    /// first; never allocates.
    pub(super) fn apply(&mut self, plan: &Plan) {
        let (a, b) = plan.full;
        if a < b {
            self.set_pages(a, b, plan.v);
        }
        for (p, edit) in plan.edges.iter().flatten() {
            self.put(*p, edit, plan.v);
        }
    }

    /// Sets gfns `[lo, hi)` (offsets in the region) to `v`, allocating first what that needs
    /// (on `NoMemory` nothing changed): inside one 2M page, or over two adjacent ones, the
    /// in-page edits when they fit; anything else its plan, reserved and carried out.
    #[inline]
    pub(super) fn update(&mut self, lo: u32, hi: u32, v: bool) -> Result<Update> {
        let (p, q) = (lo / PAGE_GFNS, (hi - 1) / PAGE_GFNS);
        let (a, b) = (lo % PAGE_GFNS, (hi - 1) % PAGE_GFNS + 1);
        let done = if p == q {
            self.update_in_page(p, a, b, v)
        } else if q == p + 1 {
            self.update_in_two_pages(p, a, b, v)
        } else {
            None
        };
        match done {
            Some(done) => Ok(done),
            None => self.update_by_plan(lo, hi, v),
        }
    }

    /// [`Region::update`] beyond the in-page paths: the plan, reserved and carried out (kept
    /// out of line so that the in-page paths stay short).
    #[inline(never)]
    fn update_by_plan(&mut self, lo: u32, hi: u32, v: bool) -> Result<Update> {
        let plan = self.plan(lo, hi, v);
        if !self.changes(&plan) {
            return Ok(Update::Unchanged);
        }
        self.reserve(&plan)?;
        self.apply(&plan);
        Ok(Update::Changed)
    }

    /// The common conversions, inside 2M page `p`, that need no memory and keep the form: the
    /// page's inline code edited (or made, for a uniform page, in a slot already there, or
    /// dropped), one bit of its block, or a fill in a dense region. [`Update::Changed`] only
    /// when a page turned uniform and the region may have become uniform (or, dense, want the
    /// sparse form); `None` (nothing changed) for anything else.
    fn update_in_page(&mut self, p: u32, a: u32, b: u32, v: bool) -> Option<Update> {
        if self.is_dense() {
            return Some(self.update_dense_page(p, a, b, v));
        }
        let edit = match self.inline_edit(p, a, b, v) {
            Some(edit) => edit,
            // A block: one bit, if it stays a block.
            None if b == a + 1 && self.is_mixed(p) => return self.try_flip(p, a, v),
            None => return None,
        };
        if edit.unchanged() {
            return Some(Update::Unchanged);
        }
        if !self.has_slots(usize::from(edit.adds_slot())) {
            return None;
        }
        self.commit_inline(&edit);
        Some(self.after_inline(edit.turns_uniform()))
    }

    /// A range over the end of 2M page `p` (from `a`) and the start of page `p + 1` (to `b`),
    /// both inline or uniform and staying so, with the slots they need already there: the two
    /// codes edited. `None` (nothing changed) otherwise.
    fn update_in_two_pages(&mut self, p: u32, a: u32, b: u32, v: bool) -> Option<Update> {
        if self.is_dense() {
            return None;
        }
        let head = self.inline_edit(p, a, PAGE_GFNS, v)?;
        let tail = self.inline_edit(p + 1, 0, b, v)?;
        if head.unchanged() && tail.unchanged() {
            return Some(Update::Unchanged);
        }
        if !self.has_slots(usize::from(head.adds_slot()) + usize::from(tail.adds_slot())) {
            return None;
        }
        // The later page first: the earlier one's slot rank does not depend on it (and the
        // later one's was taken before the earlier one changed).
        self.commit_inline(&tail);
        self.commit_inline(&head);
        Some(self.after_inline(head.turns_uniform() || tail.turns_uniform()))
    }

    /// What setting offsets `[a, b)` of 2M page `p` to `v` does to its inline code (a uniform
    /// page being a code of no boundaries), without changing anything; `None` when the page is
    /// a block, a mixed page of a dense region, or would outgrow the inline form.
    #[inline(always)]
    fn inline_edit(&self, p: u32, a: u32, b: u32, v: bool) -> Option<InlineEdit> {
        let mixed = self.is_mixed(p);
        let first = block::get(&self.first, p);
        let rank = self.rank_of(p);
        let code = match &self.leaves {
            _ if !mixed => 0,
            Leaves::Sparse { slots, .. } if slots[rank] & BLOCK_REF == 0 => slots[rank],
            _ => return None,
        };
        let (new, new_first) = block::inline_set(code, first, a, b, v)?;
        Some(InlineEdit {
            page: p,
            rank,
            mixed,
            code,
            first,
            new,
            new_first,
        })
    }

    /// Whether the sparse slots can take `n` more without allocating.
    #[inline(always)]
    fn has_slots(&self, n: usize) -> bool {
        match &self.leaves {
            Leaves::Sparse { slots, .. } => slots.capacity() - slots.len() >= n,
            Leaves::Dense(_) => false,
        }
    }

    /// Stores an inline edit (sparse form, room checked).
    #[inline(always)]
    fn commit_inline(&mut self, e: &InlineEdit) {
        if e.unchanged() {
            return;
        }
        let r = e.rank;
        let Leaves::Sparse { slots, .. } = &mut self.leaves else {
            unreachable!("inline edits are made on the sparse form");
        };
        let now_mixed = block::inline_count(e.new) > 0;
        match (e.mixed, now_mixed) {
            (true, true) => slots[r] = e.new,
            (false, true) => slots.insert(r, e.new),
            (true, false) => {
                slots.remove(r);
            }
            // A whole uniform page of the other kind.
            (false, false) => {}
        }
        block::set(&mut self.first, e.page, e.new_first);
        if e.mixed != now_mixed {
            block::set(&mut self.mixed, e.page, now_mixed);
            self.rank_moved(e.page, now_mixed);
        }
    }

    /// What inline edits leave to settle: [`Update::Changed`] when a page turned uniform and no
    /// page is mixed any more, so that the region may be uniform.
    #[inline(always)]
    fn after_inline(&self, turned_uniform: bool) -> Update {
        if turned_uniform && block::is_clear(&self.mixed) && block::uniform(&self.first).is_some() {
            Update::Changed
        } else {
            Update::Edited
        }
    }

    /// [`Region::apply`] of the plan of `[lo, hi)` to `v`; needs its [`Region::reserve`].
    pub(super) fn set(&mut self, lo: u32, hi: u32, v: bool) {
        self.apply(&self.plan(lo, hi, v));
    }

    /// Whether carrying out `plan` changes any gfn.
    pub(super) fn changes(&self, plan: &Plan) -> bool {
        let (a, b) = plan.full;
        plan.edges
            .iter()
            .flatten()
            .any(|(_, e)| !matches!(e, Edit::Same))
            || (a < b
                && (block::find(&self.mixed, a, false).is_some_and(|q| q < b)
                    || block::find(&self.first, a, plan.v).is_some_and(|q| q < b)))
    }

    /// Sets gfn `off` of mixed page `p`, stored as a block (sparse form), to `v` with one bit
    /// write when the page stays a block. `None` (nothing changed) when it changes form or is
    /// not a block.
    fn try_flip(&mut self, p: u32, off: u32, v: bool) -> Option<Update> {
        let r = self.rank_of(p);
        let Leaves::Sparse { slots, blocks } = &mut self.leaves else {
            return None;
        };
        if slots[r] & BLOCK_REF == 0 {
            return None; // inline, outgrowing its code
        }
        let bits = &mut blocks[(slots[r] & !BLOCK_REF) as usize];
        if block::get(bits, off) == v {
            return Some(Update::Unchanged);
        }
        block::fill(bits, off, off + 1, v);
        // A block keeps its form while it has more than INLINE_BACK boundaries.
        if !block::boundaries_above(bits, INLINE_BACK) {
            block::fill(bits, off, off + 1, !v);
            return None;
        }
        if off == 0 {
            block::set(&mut self.first, p, v);
        }
        Some(Update::Edited)
    }

    /// Sets offsets `[a, b)` of 2M page `p` of a dense region to `v`: a fill of its block (a
    /// dense region holds every page's bits) and its mask bits. [`Update::Changed`] when the
    /// page turned uniform and the region may now be uniform or want the sparse form.
    fn update_dense_page(&mut self, p: u32, a: u32, b: u32, v: bool) -> Update {
        let Leaves::Dense(blocks) = &mut self.leaves else {
            unreachable!("called on dense regions only");
        };
        let bits = &mut blocks[p as usize];
        if !block::fill_changed(bits, a, b, v) {
            return Update::Unchanged;
        }
        let mixed = block::uniform(bits).is_none();
        let first = bits[0] & 1 != 0;
        block::set(&mut self.first, p, first);
        if mixed != self.is_mixed(p) {
            block::set(&mut self.mixed, p, mixed);
            self.rank_moved(p, mixed);
            if !mixed {
                return Update::Changed;
            }
        }
        Update::Edited
    }

    /// Makes whole 2M pages `[a, b)` all `v`.
    fn set_pages(&mut self, a: u32, b: u32, v: bool) {
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
        self.rank_cleared(a, b, r0, r1);
    }

    /// Stores the new contents of 2M page `p` (`v` for a fill): a uniform page leaves the sparse
    /// slots, an inline code takes the page's slot (freeing a block it had), a fill is made in
    /// the page's block or, for an inline page outgrowing its code, in a new one.
    fn put(&mut self, p: u32, edit: &Edit, v: bool) {
        let (mixed, first) = match *edit {
            Edit::Same => return,
            Edit::Uniform(u) => (false, u),
            Edit::Inline(_, f) => (true, f),
            Edit::Fill { first, .. } => (true, first),
        };
        let was_mixed = self.is_mixed(p);
        let first_was = block::get(&self.first, p);
        let r = self.rank_of(p);
        match &mut self.leaves {
            Leaves::Dense(blocks) => {
                let bits = &mut blocks[p as usize];
                match *edit {
                    Edit::Inline(code, f) => *bits = block::decode(code, f),
                    Edit::Fill { a, b, .. } => block::fill(bits, a, b, v),
                    _ => *bits = block::filled(first),
                }
            }
            Leaves::Sparse { slots, blocks } => {
                let old_block = was_mixed
                    .then(|| slots[r])
                    .filter(|s| s & BLOCK_REF != 0)
                    .map(|s| (s & !BLOCK_REF) as usize);
                let slot = match (*edit, old_block) {
                    (Edit::Fill { a, b, .. }, Some(idx)) => {
                        block::fill(&mut blocks[idx], a, b, v);
                        Some(BLOCK_REF | idx as u64)
                    }
                    (Edit::Fill { a, b, .. }, None) => {
                        let mut bits = block::decode(slots[r], first_was);
                        block::fill(&mut bits, a, b, v);
                        blocks.push(bits);
                        Some(BLOCK_REF | (blocks.len() - 1) as u64)
                    }
                    (Edit::Inline(code, _), _) => Some(code),
                    _ => None,
                };
                match (slot, was_mixed) {
                    (Some(s), true) => slots[r] = s,
                    (Some(s), false) => slots.insert(r, s),
                    (None, true) => {
                        slots.remove(r);
                    }
                    (None, false) => {}
                }
                if let (Some(idx), false) = (old_block, matches!(edit, Edit::Fill { .. })) {
                    free_block(slots, blocks, idx);
                }
            }
        }
        block::set(&mut self.first, p, first);
        if was_mixed != mixed {
            block::set(&mut self.mixed, p, mixed);
            self.rank_moved(p, mixed);
        }
    }

    /// Changes the form when the other one fits better (see the module docs). Optional work:
    /// when memory is short the region simply stays as it is.
    pub(super) fn adapt(&mut self) {
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

    /// Whether the region is in the dense form.
    pub(super) fn is_dense(&self) -> bool {
        matches!(self.leaves, Leaves::Dense(_))
    }

    /// The first offset at or after `from` whose gfn is not `v`.
    pub(super) fn find(&self, from: u32, v: bool) -> Option<u32> {
        let p = from / PAGE_GFNS;
        if self.is_mixed(p) {
            if let Some(o) = block::find(&self.page(p), from % PAGE_GFNS, v) {
                return Some(p * PAGE_GFNS + o);
            }
        } else if block::get(&self.first, p) != v {
            return Some(from);
        }
        if p + 1 >= PAGES {
            return None;
        }
        // Pages that are mixed or of the other kind.
        let mut candidates = self.first;
        for (c, m) in candidates.iter_mut().zip(self.mixed) {
            *c = (*c ^ if v { u64::MAX } else { 0 }) | m;
        }
        let q = block::find(&candidates, p + 1, false)?;
        let within = if self.is_mixed(q) {
            block::find(&self.page(q), 0, v).unwrap_or(0)
        } else {
            0
        };
        Some(q * PAGE_GFNS + within)
    }

    /// First and last kind and the number of boundaries inside the region.
    pub(super) fn summary(&self) -> Summary {
        let mut acc: Option<Summary> = None;
        for p in 0..PAGES {
            let first = block::get(&self.first, p);
            let s = if !self.is_mixed(p) {
                Summary::uniform(first)
            } else {
                let bits = self.page(p);
                Summary {
                    first,
                    last: block::get(&bits, PAGE_GFNS - 1),
                    count: u64::from(block::boundaries(&bits)),
                }
            };
            acc = Some(acc.map_or(s, |a| a.then(s)));
        }
        acc.unwrap_or(Summary::uniform(false))
    }

    /// Heap bytes held, as allocated.
    pub(super) fn heap_bytes(&self) -> usize {
        match &self.leaves {
            Leaves::Sparse { slots, blocks } => {
                slots.capacity() * size_of::<u64>() + blocks.capacity() * size_of::<Block>()
            }
            Leaves::Dense(blocks) => blocks.capacity() * size_of::<Block>(),
        }
    }

    /// Checks the region's invariants (not that it is non-uniform: its node does).
    pub(super) fn check(&self) -> core::result::Result<(), &'static str> {
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
                    } else if !(1..=INLINE_MAX).contains(&block::inline_count(slot)) {
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

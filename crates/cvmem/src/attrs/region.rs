//! A 1G region whose gfns are not all of one kind.
//!
//! Per 2M page two mask bits say whether the page is mixed and, if not, which kind it is, so the
//! fault path decides a uniform 2M page with one probe. A mixed page is stored in one of two
//! region forms, chosen per region like roaring's containers:
//! - **sparse**: an 8-byte slot per mixed page, in page order (found by a rank over the mixed
//!   mask): its boundaries inline when it has at most six, else the index of a 64-byte block;
//! - **dense**: 512 blocks, one per page, once the sparse form would be bigger than that
//!   (32 KiB, what a flat bitmap spends on 1 GiB); back to sparse below 64 mixed pages.
//!
//! A region never holds more than the dense form plus its masks, whatever a guest does.
//!
//! **One decoder, one writer.** A page's stored form is read in one place ([`Region::at`], a
//! [`Stored`]); its new contents ([`Content`]) are worked out from that; and the only code that
//! touches the masks, the rank index, the slots and the blocks is the writer
//! ([`Region::store`] for one page, [`Region::store_run`] for whole pages), which also says
//! whether the region may have become uniform. Every change — a fresh region, a one-gfn flip,
//! a range over many pages — is a [`Plan`] of at most two edge pages and a run of whole pages,
//! checked for a change once ([`Plan::changes`]), given its room once ([`Room`]) and handed to
//! the writer. The changes that need no memory are that same plan with the room already there.

use alloc::vec::Vec;
use core::mem::size_of;

use super::block::{self, Block, BLOCK_REF, INLINE_BACK, PAGE_GFNS};
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
/// Slots a range set inside a uniform 1G page needs: its (at most two) edge pages, each an
/// inline code of at most two boundaries. A spare or parked region keeps this room, so that a
/// region is made without allocating.
pub(super) const FRESH_SLOTS: usize = 2;
/// Slots and blocks added beyond what a change needs when the sparse form must grow, so that
/// the next few changes find their room (8 and 64 bytes each).
const SLOT_HEADROOM: usize = 4;
const BLOCK_HEADROOM: usize = 2;

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

#[derive(Debug)]
enum Leaves {
    /// One slot per mixed page, in page order; blocks in no order.
    Sparse { slots: Vec<u64>, blocks: Vec<Block> },
    /// A block per page, uniform pages filled.
    Dense(Vec<Block>),
}

/// How one 2M page is stored, decoded once ([`Region::at`]).
#[derive(Clone, Copy, Debug)]
enum Stored {
    /// All of one kind: its mask bits only.
    Uniform(bool),
    /// Mixed, its boundaries inline in its slot.
    Inline { code: u64, first: bool },
    /// Mixed, its bits in block `index` (sparse form).
    Block { index: u32, first: bool },
    /// Mixed, its bits in its own block of a dense region.
    Dense { first: bool },
}

/// A 2M page as decoded: where it is and how it is stored.
#[derive(Clone, Copy, Debug)]
struct At {
    page: u32,
    /// Its slot's position (the mixed pages before it), whether or not it has a slot (sparse
    /// form; 0 in a dense region, which has no slots).
    rank: u32,
    stored: Stored,
}

/// The new contents of one 2M page.
#[derive(Clone, Copy, Debug)]
enum Content {
    /// All of one kind.
    Uniform(bool),
    /// Mixed with few boundaries: an inline code and the first gfn's kind.
    Inline { code: u64, first: bool },
    /// The page's bits with offsets `[a, b)` set to `v`, made where they are stored (a block,
    /// or a new one for an inline page outgrowing its code); the page's form then follows its
    /// bits ([`Region::store_fill`]).
    Fill { a: u32, b: u32, v: bool },
}

/// What setting a range of a region to one kind does, worked out on the region as it is: the
/// new contents of the (at most two) partly covered 2M pages, in the order they are stored
/// (the later page first), and the run of whole pages between them.
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    /// Partly covered pages that change, later page first.
    edges: [Option<(At, Content)>; 2],
    /// Whole 2M pages `[a, b)` that become `v`.
    full: (u32, u32),
    v: bool,
    /// Whether any whole page changes.
    full_changes: bool,
}

impl Plan {
    /// Whether carrying the plan out changes any gfn: the one place where "nothing changes" is
    /// decided for a region.
    pub(super) fn changes(&self) -> bool {
        self.full_changes || self.edges.iter().any(Option::is_some)
    }
}

/// The slots and blocks a plan adds to the sparse form: what it needs to be carried out
/// without allocating, computed once from the plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Room {
    slots: usize,
    blocks: usize,
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

impl Stored {
    fn is_mixed(self) -> bool {
        !matches!(self, Stored::Uniform(_))
    }
    /// The kind of the page's first gfn.
    fn first(self) -> bool {
        match self {
            Stored::Uniform(first)
            | Stored::Inline { first, .. }
            | Stored::Block { first, .. }
            | Stored::Dense { first } => first,
        }
    }
}

impl Region {
    /// An all-shared region with no heap memory (it gets some from [`Region::reserve_fresh`]).
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

    // ---- Reading: the one decoder and what is built on it ----

    /// How 2M page `page` is stored.
    #[inline(always)]
    fn at(&self, page: u32) -> At {
        let first = block::get(&self.first, page);
        let mixed = self.is_mixed(page);
        let (rank, stored) = match &self.leaves {
            // A dense page has no slot: no rank to count.
            Leaves::Dense(_) if mixed => (0, Stored::Dense { first }),
            Leaves::Dense(_) => (0, Stored::Uniform(first)),
            Leaves::Sparse { .. } if !mixed => (self.rank_of(page), Stored::Uniform(first)),
            Leaves::Sparse { slots, .. } => {
                let rank = self.rank_of(page);
                let slot = slots[rank];
                let stored = if slot & BLOCK_REF != 0 {
                    Stored::Block {
                        index: (slot & !BLOCK_REF) as u32,
                        first,
                    }
                } else {
                    Stored::Inline { code: slot, first }
                };
                (rank, stored)
            }
        };
        At {
            page,
            rank: rank as u32,
            stored,
        }
    }

    /// The bits of a page as stored.
    #[inline(always)]
    fn bits_of(&self, at: &At) -> Block {
        match (at.stored, &self.leaves) {
            (Stored::Uniform(v), _) => block::filled(v),
            (Stored::Inline { code, first }, _) => block::decode(code, first),
            (Stored::Block { index, .. }, Leaves::Sparse { blocks, .. }) => blocks[index as usize],
            (Stored::Dense { .. }, Leaves::Dense(blocks)) => blocks[at.page as usize],
            _ => unreachable!("a page's stored form belongs to its region's form"),
        }
    }

    /// The block holding a mixed page's bits, if it has one (a block of the sparse form, or its
    /// page of a dense region).
    #[inline(always)]
    fn stored_block(&self, at: &At) -> Option<&Block> {
        match (at.stored, &self.leaves) {
            (Stored::Block { index, .. }, Leaves::Sparse { blocks, .. }) => {
                Some(&blocks[index as usize])
            }
            (Stored::Dense { .. }, Leaves::Dense(blocks)) => Some(&blocks[at.page as usize]),
            _ => None,
        }
    }

    /// The bits of 2M page `page`, whatever form it is stored in.
    #[inline]
    fn page(&self, page: u32) -> Block {
        if !self.is_mixed(page) {
            return block::filled(block::get(&self.first, page));
        }
        self.bits_of(&self.at(page))
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

    /// The kind of the gfn at offset `off`, and whether its 2M page is uniform: a bit probe in
    /// the masks, then for a mixed page its slot (sparse) or a bit probe (dense).
    #[inline]
    pub(super) fn probe(&self, off: u32) -> (bool, bool) {
        let page = off / PAGE_GFNS;
        if !self.is_mixed(page) {
            return (block::get(&self.first, page), true);
        }
        let bit = off % PAGE_GFNS;
        let v = match (self.at(page).stored, &self.leaves) {
            (Stored::Inline { code, first }, _) => block::inline_get(code, first, bit),
            (Stored::Block { index, .. }, Leaves::Sparse { blocks, .. }) => {
                block::get(&blocks[index as usize], bit)
            }
            (_, Leaves::Dense(blocks)) => block::get(&blocks[page as usize], bit),
            _ => unreachable!("a mixed page is inline, a block or dense"),
        };
        (v, false)
    }

    /// `Some(v)` when every gfn of the region is `v`.
    pub(super) fn uniform(&self) -> Option<bool> {
        if !block::is_clear(&self.mixed) {
            return None;
        }
        block::uniform(&self.first)
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

    // ---- Planning: a change as edge pages and whole pages ----

    /// What setting offsets `[lo, hi)` to `v` does: the new contents of the partly covered 2M
    /// pages that change, worked out from their inline codes without decoding unless a page is
    /// a block or outgrows the inline form, and the whole pages in between.
    #[inline(always)]
    pub(super) fn plan(&self, lo: u32, hi: u32, v: bool) -> Plan {
        debug_assert!(lo < hi && hi <= REGION_GFNS);
        let (p, q) = (lo / PAGE_GFNS, (hi - 1) / PAGE_GFNS);
        let (a, b) = (lo % PAGE_GFNS, (hi - 1) % PAGE_GFNS + 1);
        let mut edges = [None, None];
        let full = if p == q && (a != 0 || b != PAGE_GFNS) {
            edges[0] = self.edit(p, a, b, v);
            (0, 0)
        } else {
            // The later page first: storing it moves no earlier page's rank.
            if b != PAGE_GFNS {
                edges[0] = self.edit(q, 0, b, v);
            }
            if a != 0 {
                edges[1] = self.edit(p, a, PAGE_GFNS, v);
            }
            (p + u32::from(a != 0), q + u32::from(b == PAGE_GFNS))
        };
        let full_changes = full.0 < full.1 && self.run_changes(full.0, full.1, v);
        Plan {
            edges,
            full,
            v,
            full_changes,
        }
    }

    /// Whether making whole pages `[a, b)` all `v` changes any: one is mixed or of the other
    /// kind.
    fn run_changes(&self, a: u32, b: u32, v: bool) -> bool {
        block::find(&self.mixed, a, false).is_some_and(|q| q < b)
            || block::find(&self.first, a, v).is_some_and(|q| q < b)
    }

    /// Page `p` with offsets `[a, b)` in it set to `v`: `None` when that changes nothing.
    #[inline(always)]
    fn edit(&self, p: u32, a: u32, b: u32, v: bool) -> Option<(At, Content)> {
        let at = self.at(p);
        let inline = match at.stored {
            Stored::Uniform(first) => Some((0, first)),
            Stored::Inline { code, first } => Some((code, first)),
            Stored::Block { .. } | Stored::Dense { .. } => None,
        };
        if let Some((code, first)) = inline {
            if let Some((new, new_first)) = block::inline_set(code, first, a, b, v) {
                return if (new, new_first) == (code, first) {
                    None
                } else if block::inline_count(new) == 0 {
                    Some((at, Content::Uniform(new_first)))
                } else {
                    Some((
                        at,
                        Content::Inline {
                            code: new,
                            first: new_first,
                        },
                    ))
                };
            }
        }
        // A block, a mixed page of a dense region, or a code outgrowing the inline form: a
        // fill of the page's bits, made where they are stored, whose form then follows them.
        let changes = match self.stored_block(&at) {
            Some(bits) => block::fill_would_change(bits, a, b, v),
            None => true, // an inline code that outgrows its form has changed
        };
        changes.then_some((at, Content::Fill { a, b, v }))
    }

    /// The slots and blocks carrying out `plan` adds (sparse form; a dense region has a block
    /// for every page).
    #[inline(always)]
    fn room(&self, plan: &Plan) -> Room {
        let mut room = Room::default();
        for (at, content) in plan.edges.iter().flatten() {
            let page = self.page_room(at, content);
            room.slots += page.slots;
            room.blocks += page.blocks;
        }
        room
    }

    /// The slots and blocks storing `content` as page `at` adds.
    #[inline(always)]
    fn page_room(&self, at: &At, content: &Content) -> Room {
        let new_slot = usize::from(!at.stored.is_mixed());
        match content {
            _ if self.is_dense() => Room::default(),
            Content::Uniform(_) => Room::default(),
            Content::Inline { .. } => Room {
                slots: new_slot,
                blocks: 0,
            },
            // A block or a dense page fills in place; an inline page gets a block.
            Content::Fill { .. } => Room {
                slots: 0,
                blocks: usize::from(matches!(at.stored, Stored::Inline { .. })),
            },
        }
    }

    /// Whether the sparse form holds `room` already.
    #[inline(always)]
    fn has(&self, room: Room) -> bool {
        if room == Room::default() {
            return true;
        }
        match &self.leaves {
            Leaves::Sparse { slots, blocks } => {
                slots.capacity() - slots.len() >= room.slots
                    && blocks.capacity() - blocks.len() >= room.blocks
            }
            Leaves::Dense(_) => true,
        }
    }

    /// Makes `room` (and some headroom) in the sparse form.
    fn reserve_room(&mut self, room: Room) -> Result<()> {
        if let Leaves::Sparse { slots, blocks } = &mut self.leaves {
            if room.slots > 0 {
                grow(slots, room.slots.max(SLOT_HEADROOM), PAGES as usize)?;
            }
            if room.blocks > 0 {
                grow(blocks, room.blocks.max(BLOCK_HEADROOM), PAGES as usize)?;
            }
        }
        Ok(())
    }

    /// Makes sure [`Region::apply`] of `plan` completes without allocating: exactly the slots
    /// and blocks its edge pages will need (and the headroom), so that no region carries room
    /// for blocks it never holds.
    pub(super) fn reserve(&mut self, plan: &Plan) -> Result<()> {
        let room = self.room(plan);
        if self.has(room) {
            return Ok(());
        }
        self.reserve_room(room)
    }

    // ---- Changing: plans carried out by the one writer ----

    /// Sets gfns `[lo, hi)` (offsets in the region) to `v`, allocating first what that needs
    /// (on `NoMemory` nothing changed).
    #[inline]
    pub(super) fn update(&mut self, lo: u32, hi: u32, v: bool) -> Result<Update> {
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
    fn outcome(&self, grew: bool, turned_uniform: bool) -> Update {
        // A region that took memory may want the dense form; one where a page turned uniform
        // may be uniform (told from its masks here), or, dense, want the sparse form.
        if grew || (turned_uniform && (self.is_dense() || self.uniform().is_some())) {
            Update::Changed
        } else {
            Update::Edited
        }
    }

    /// [`Region::apply`] of the plan of `[lo, hi)` to `v`; needs its [`Region::reserve`].
    pub(super) fn set(&mut self, lo: u32, hi: u32, v: bool) {
        self.apply(&self.plan(lo, hi, v));
    }

    /// Carries out `plan` (made on the region as it is; its room there): the later edge page,
    /// the whole pages, then the earlier edge page, each handed to the writer. Returns whether
    /// a page turned uniform. Never allocates.
    #[inline(always)]
    fn apply(&mut self, plan: &Plan) -> bool {
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
    fn store(&mut self, at: At, content: Content) -> bool {
        match content {
            Content::Fill { a, b, v } => self.store_fill(at, a, b, v),
            _ => self.store_form(at, content),
        }
    }

    /// The writer's part for a page stored as a code or as uniform (not a fill).
    #[inline(always)]
    fn store_form(&mut self, at: At, content: Content) -> bool {
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
    fn store_fill(&mut self, at: At, a: u32, b: u32, v: bool) -> bool {
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
        // One gfn whose flip adds boundaries (told from its two neighbours): the page keeps
        // its form, with no count and no copy — the common change of a fragmented page.
        let keeps_form = if b == a + 1 {
            let keeps = block::flip_delta(bits, a) >= 0;
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
    fn store_run(&mut self, a: u32, b: u32, v: bool) -> bool {
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
    fn rank_moved(&mut self, p: u32, up: bool) {
        for rank in &mut self.rank[(p / 64) as usize + 1..] {
            *rank = if up { *rank + 1 } else { *rank - 1 };
        }
    }

    // ---- Life cycle: fresh, parked and spare regions, and the form ----

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
    /// region): the plan of that range on a uniform region, whose edge pages are inline codes
    /// of at most two boundaries. Needs room for [`FRESH_SLOTS`] ([`Region::reserve_fresh`]);
    /// never allocates.
    pub(super) fn make(&mut self, entry: u16, lo: u32, hi: u32, v: bool) {
        debug_assert!(lo < hi && hi <= REGION_GFNS && hi - lo < REGION_GFNS);
        self.reset(entry, !v);
        let plan = self.plan(lo, hi, v);
        debug_assert!(self.has(self.room(&plan)), "a fresh region has its slots");
        self.apply(&plan);
    }

    /// Whether the region, once uniform, may be kept for reuse: sparse, with room for what a
    /// fresh region needs ([`Region::reserve_fresh`]) and no more than [`Region::reset`] keeps.
    pub(super) fn parkable(&self) -> bool {
        self.keeps_leaves()
            && matches!(&self.leaves, Leaves::Sparse { slots, .. } if slots.capacity() >= FRESH_SLOTS)
    }

    /// Room for the [`FRESH_SLOTS`] a fresh region gets when a range is set inside it, room
    /// that [`Region::reset`] keeps: a spare that was a big region gets small vectors first.
    pub(super) fn reserve_fresh(&mut self) -> Result<()> {
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

    /// Checks the region's invariants (not that it is non-uniform: its node does).
    #[cfg(feature = "test-hooks")]
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

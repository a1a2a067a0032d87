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
use super::{grow, Alloc, Summary};

mod form;
mod plan;
mod write;

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
}

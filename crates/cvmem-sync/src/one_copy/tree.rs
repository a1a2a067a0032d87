//! The levels of the one-copy store, cut like the page tables it feeds: a [`Node`] per mixed
//! 1G page, and directories of 64 entries above it, each entry all shared, all private, or a
//! child. Everything is type-stable: a child, a chunk of words or a block, once made, lives
//! as long as the store. An entry that turns uniform gives its child's blocks back to the
//! child's free list and keeps the child for the next time it is mixed; so the memory held is
//! the most ever needed at once, and a reader following a stale index reads live words.

use cvmem::{Error, Level, Result};

use super::page::{self, Bits, Held, PAGE_GFNS};
use crate::sync::{AtomicU32, AtomicU64, AtomicU8, OnceBox, Ordering};

/// 2M pages in a node.
const PAGES: usize = 512;
const WORDS: usize = PAGES / 64;
/// Held words per chunk: a chunk is made when a page of its 64 is first mixed.
const HELD_CHUNK: usize = if cfg!(loom) { 16 } else { 64 };
/// Blocks per chunk (2 KiB): a node makes them as its pages need blocks.
const BLOCK_CHUNK: usize = 32;
const BLOCK_CHUNKS: usize = PAGES / BLOCK_CHUNK;
/// The end of a node's free list.
const NONE: u32 = u32::MAX;

const SHARED: u8 = 0;
const PRIVATE: u8 = 1;
const CHILD: u8 = 2;

/// One block: a mixed page's 512 bits.
type Block = [AtomicU64; 8];

/// A value on the heap, allocated fallibly: `NoMemory` instead of an abort. (A one-element
/// array: safe Rust makes a fallible `Box<[T]>`, and that converts to `Box<[T; 1]>` only.)
pub(super) fn try_box<T>(value: T) -> Result<Box<[T; 1]>> {
    let mut v = Vec::new();
    v.try_reserve_exact(1).map_err(|_| Error::NoMemory {
        bytes: size_of::<T>(),
    })?;
    v.push(value);
    Ok(v.into_boxed_slice()
        .try_into()
        .unwrap_or_else(|_| unreachable!("one element")))
}

/// What the writer and the readers do at every level.
pub(super) trait Tree: Sized {
    /// log2 of the gfns the level spans.
    const SPAN_SHIFT: u32;

    /// An all-shared level.
    fn make() -> Result<Box<[Self; 1]>>;

    /// The kind of gfn `off` and the largest level of a uniform page around it. Any contents
    /// give an answer (a reader may race the writer; the sequence count tells it to retry).
    fn probe(&self, off: u64) -> (bool, Level);

    /// The first offset in `[off, limit)` whose kind is not `v` (or one past `limit` inside
    /// the last 2M page).
    fn find(&self, off: u64, limit: u64, v: bool) -> Option<u64>;

    /// Makes every gfn `v`, its blocks back on free lists (writer).
    fn fill(&self, v: bool);

    /// Makes what setting `[lo, hi)` to `v` will need — children, chunks, free blocks — where
    /// the level holds `now` throughout (its own contents when `None`). Changes nothing a
    /// reader sees (writer).
    fn prepare(&self, lo: u64, hi: u64, v: bool, now: Option<bool>) -> Result<()>;

    /// Sets `[lo, hi)` to `v` (prepared); `Some(u)` when the whole level is `u` afterwards
    /// (writer).
    fn set(&self, lo: u64, hi: u64, v: bool) -> Option<bool>;

    /// Heap bytes below this level (its own size is its parent's).
    fn heap_bytes(&self) -> usize;

    /// Mixed pages of `level` wholly inside `[lo, hi)`, below this level (a 1G page's own
    /// mixedness is its parent's to count).
    fn mixed_pages(&self, lo: u64, hi: u64, level: Level) -> u64;
}

/// A 1G page: per 2M page a mixed bit and a kind bit; per mixed page a word (inline
/// exceptions, or the index of one of the node's blocks).
#[derive(Debug)]
pub(super) struct Node {
    mixed: [AtomicU64; WORDS],
    /// Kind of each page that is not mixed.
    kind: [AtomicU64; WORDS],
    held: [OnceBox<[[AtomicU32; HELD_CHUNK]; 1]>; PAGES / HELD_CHUNK],
    blocks: [OnceBox<[[Block; BLOCK_CHUNK]; 1]>; BLOCK_CHUNKS],
    /// The writer's: first free block (`NONE` if none), free blocks, chunks of blocks made.
    free: AtomicU32,
    free_count: AtomicU32,
    chunks: AtomicU32,
}

#[inline]
fn bit(words: &[AtomicU64; WORDS], i: usize) -> bool {
    words[i / 64].load(Ordering::Relaxed) >> (i % 64) & 1 != 0
}

/// Sets bits `[a, b)` of `words` to `v` (the one writer: load, then store).
fn set_bits(words: &[AtomicU64; WORDS], a: usize, b: usize, v: bool) {
    for (i, w) in words.iter().enumerate().take(b.div_ceil(64)).skip(a / 64) {
        let (lo, hi) = (i * 64, i * 64 + 64);
        let (s, e) = (a.max(lo), b.min(hi));
        let n = e - s;
        let mask = if n == 64 {
            !0
        } else {
            ((1u64 << n) - 1) << (s - lo)
        };
        let old = w.load(Ordering::Relaxed);
        w.store(if v { old | mask } else { old & !mask }, Ordering::Relaxed);
    }
}

#[inline]
fn load(w: &AtomicU32) -> u32 {
    w.load(Ordering::Relaxed)
}

fn store(w: &AtomicU32, v: u32) {
    w.store(v, Ordering::Relaxed);
}

impl Node {
    /// The word of page `p`, if its chunk was made.
    #[inline]
    fn held(&self, p: usize) -> Option<&AtomicU32> {
        self.held[p / HELD_CHUNK]
            .get()
            .map(|c| &c[0][p % HELD_CHUNK])
    }

    /// Block `index`, if it was made.
    #[inline]
    fn block(&self, index: u32) -> Option<&Block> {
        let i = index as usize;
        let chunk = self.blocks.get(i / BLOCK_CHUNK)?.get()?;
        Some(&chunk[0][i % BLOCK_CHUNK])
    }

    /// How mixed page `p` is held (a reader's may be torn: any word decodes).
    #[inline]
    fn held_form(&self, p: usize) -> Held {
        Held::decode(self.held(p).map_or(0, load))
    }

    /// The bits of mixed page `p` (a block not made reads as shared).
    fn bits(&self, p: usize) -> Bits {
        match self.held_form(p) {
            Held::Inline { base, count, at } => Held::inline_bits(base, count, &at),
            Held::Block(index) => self.block(index).map_or([0; 8], |b| {
                core::array::from_fn(|i| b[i].load(Ordering::Relaxed))
            }),
        }
    }

    /// A free block, taken from the free list (writer; reserved by `prepare`).
    fn take(&self) -> u32 {
        let index = load(&self.free);
        let block = self
            .block(index)
            .unwrap_or_else(|| unreachable!("a free block is reserved before an update"));
        store(&self.free, block[0].load(Ordering::Relaxed) as u32);
        store(&self.free_count, load(&self.free_count) - 1);
        index
    }

    /// Puts block `index` on the free list (writer).
    fn give(&self, index: u32) {
        let Some(block) = self.block(index) else {
            return;
        };
        block[0].store(u64::from(load(&self.free)), Ordering::Relaxed);
        store(&self.free, index);
        store(&self.free_count, load(&self.free_count) + 1);
    }

    /// Gives back page `p`'s block if it has one (writer).
    fn release(&self, p: usize) {
        if let Held::Block(index) = self.held_form(p) {
            self.give(index);
        }
    }

    /// Makes sure `n` blocks are free (writer).
    fn reserve_blocks(&self, n: u32) -> Result<()> {
        while load(&self.free_count) < n {
            let c = load(&self.chunks) as usize;
            if c == BLOCK_CHUNKS {
                unreachable!("a node never needs more blocks than pages");
            }
            let chunk = try_box(core::array::from_fn(|_| {
                core::array::from_fn(|_| AtomicU64::new(0))
            }))?;
            let _ = self.blocks[c].set(chunk);
            store(&self.chunks, c as u32 + 1);
            for i in (c * BLOCK_CHUNK..(c + 1) * BLOCK_CHUNK).rev() {
                self.give(i as u32);
            }
        }
        Ok(())
    }

    /// Stores page `p`'s new bits in the form they need (writer).
    fn store(&self, p: usize, bits: &Bits) {
        let was = bit(&self.mixed, p).then(|| self.held_form(p));
        let old_block = match was {
            Some(Held::Block(index)) => Some(index),
            _ => None,
        };
        if let Some(u) = page::uniform(bits) {
            if let Some(index) = old_block {
                self.give(index);
            }
            set_bits(&self.mixed, p, p + 1, false);
            set_bits(&self.kind, p, p + 1, u);
            return;
        }
        let held = match (Held::inline_of(bits), old_block) {
            (Some(inline), old) => {
                if let Some(index) = old {
                    self.give(index);
                }
                inline
            }
            (None, old) => {
                let index = old.unwrap_or_else(|| self.take());
                let block = self
                    .block(index)
                    .unwrap_or_else(|| unreachable!("blocks in use were made"));
                for (w, &v) in block.iter().zip(bits) {
                    w.store(v, Ordering::Relaxed);
                }
                Held::Block(index)
            }
        };
        let word = self
            .held(p)
            .unwrap_or_else(|| unreachable!("held chunks are made before an update"));
        store(word, held.encode());
        set_bits(&self.mixed, p, p + 1, true);
    }

    /// Whether setting `[a, b)` of page `p` (held as `now` if known) to the other kind may
    /// take a new block: not when it stays within three exceptions, or has a block already.
    fn needs_block(&self, p: usize, a: u32, b: u32, now: Option<bool>) -> bool {
        let exceptions = b - a;
        match (now, bit(&self.mixed, p)) {
            (Some(_), _) | (None, false) => exceptions > 3 && exceptions < PAGE_GFNS - 3,
            (None, true) => match self.held_form(p) {
                Held::Block(_) => false,
                Held::Inline { count, .. } => exceptions > 1 || count == 3,
            },
        }
    }

    /// Sets gfn `o` of inline page `p` to `v` by editing its exceptions, when the page stays
    /// inline or turns uniform (the common 4K conversion); `false` when it needs the general
    /// path (writer).
    fn toggle_inline(&self, p: usize, o: u32, v: bool) -> bool {
        let Held::Inline {
            base,
            mut count,
            mut at,
        } = self.held_form(p)
        else {
            return false;
        };
        if let Some(k) = at[..count].iter().position(|&x| x == o) {
            if base != v {
                return true; // already an exception: already `v`
            }
            at[k] = at[count - 1];
            count -= 1;
        } else if base == v {
            return true;
        } else if count == at.len() {
            return false;
        } else {
            at[count] = o;
            count += 1;
        }
        if count == 0 {
            set_bits(&self.mixed, p, p + 1, false);
            set_bits(&self.kind, p, p + 1, base);
        } else if let Some(word) = self.held(p) {
            store(word, Held::Inline { base, count, at }.encode());
        }
        true
    }

    /// `Some(v)` when every page is `v` (writer).
    fn uniform(&self) -> Option<bool> {
        if self.mixed.iter().any(|w| w.load(Ordering::Relaxed) != 0) {
            return None;
        }
        let first = self.kind[0].load(Ordering::Relaxed);
        (matches!(first, 0 | u64::MAX)
            && self.kind.iter().all(|w| w.load(Ordering::Relaxed) == first))
        .then_some(first != 0)
    }

    /// Whether every gfn of `[lo, hi)` is `v` (writer).
    pub(super) fn all(&self, lo: u64, hi: u64, v: bool) -> bool {
        if hi == lo + 1 {
            return self.probe(lo).0 == v;
        }
        self.find(lo, hi, v).is_none_or(|o| o >= hi)
    }

    /// The partly covered pages of `[lo, hi)` and their ranges inside the page.
    fn edges(lo: u64, hi: u64) -> impl Iterator<Item = (usize, u32, u32)> {
        // A page's offsets are below PAGE_GFNS.
        edges(lo, hi, u64::from(PAGE_GFNS)).map(|(p, a, b)| (p, a as u32, b as u32))
    }

    /// What page `p` holds, `None` when it is mixed (writer, or under `now`).
    fn page_kind(&self, p: usize, now: Option<bool>) -> Option<bool> {
        now.or_else(|| (!bit(&self.mixed, p)).then(|| bit(&self.kind, p)))
    }
}

impl Tree for Node {
    const SPAN_SHIFT: u32 = 18;

    fn make() -> Result<Box<[Self; 1]>> {
        try_box(Node {
            mixed: Default::default(),
            kind: Default::default(),
            held: Default::default(),
            blocks: Default::default(),
            free: AtomicU32::new(NONE),
            free_count: AtomicU32::new(0),
            chunks: AtomicU32::new(0),
        })
    }

    #[inline]
    fn probe(&self, off: u64) -> (bool, Level) {
        let p = (off / u64::from(PAGE_GFNS)) as usize % PAGES;
        if !bit(&self.mixed, p) {
            return (bit(&self.kind, p), Level::M2);
        }
        let o = (off % u64::from(PAGE_GFNS)) as u32;
        let private = match self.held_form(p) {
            Held::Inline { base, count, at } => Held::inline_get(base, count, &at, o),
            Held::Block(index) => self
                .block(index)
                .is_some_and(|b| b[(o / 64) as usize].load(Ordering::Relaxed) >> (o % 64) & 1 != 0),
        };
        (private, Level::K4)
    }

    fn find(&self, off: u64, limit: u64, v: bool) -> Option<u64> {
        let g = u64::from(PAGE_GFNS);
        let first = (off / g) as usize;
        let last = (limit.div_ceil(g) as usize).min(PAGES);
        for p in first..last {
            let base = p as u64 * g;
            let from = if p == first { (off - base) as u32 } else { 0 };
            if bit(&self.mixed, p) {
                if let Some(o) = page::find(&self.bits(p), from, v) {
                    return Some(base + u64::from(o));
                }
            } else if bit(&self.kind, p) != v {
                return Some(base + u64::from(from));
            }
        }
        None
    }

    fn fill(&self, v: bool) {
        for (i, w) in self.mixed.iter().enumerate() {
            let mut m = w.load(Ordering::Relaxed);
            while m != 0 {
                self.release(i * 64 + m.trailing_zeros() as usize);
                m &= m - 1;
            }
            w.store(0, Ordering::Relaxed);
            self.kind[i].store(if v { !0 } else { 0 }, Ordering::Relaxed);
        }
    }

    fn prepare(&self, lo: u64, hi: u64, v: bool, now: Option<bool>) -> Result<()> {
        let mut blocks = 0;
        for (p, a, b) in Self::edges(lo, hi) {
            if self.page_kind(p, now) == Some(v) {
                continue;
            }
            let chunk = &self.held[p / HELD_CHUNK];
            if chunk.get().is_none() {
                let _ = chunk.set(try_box(core::array::from_fn(|_| AtomicU32::new(0)))?);
            }
            blocks += u32::from(self.needs_block(p, a, b, now));
        }
        self.reserve_blocks(blocks)
    }

    fn set(&self, lo: u64, hi: u64, v: bool) -> Option<bool> {
        for (p, a, b) in Self::edges(lo, hi) {
            let mut bits = match self.page_kind(p, None) {
                Some(u) if u == v => continue,
                Some(u) if b == a + 1 => {
                    // One gfn of a uniform page: one exception, inline.
                    let held = Held::Inline {
                        base: u,
                        count: 1,
                        at: [a, 0, 0],
                    };
                    if let Some(word) = self.held(p) {
                        store(word, held.encode());
                    }
                    set_bits(&self.mixed, p, p + 1, true);
                    continue;
                }
                Some(u) => [if u { !0 } else { 0 }; 8],
                None if b == a + 1 && self.toggle_inline(p, a, v) => continue,
                None => self.bits(p),
            };
            page::fill(&mut bits, a, b, v);
            self.store(p, &bits);
        }
        // Whole pages: their blocks back, then one fill of the bits.
        let g = u64::from(PAGE_GFNS);
        let (a, b) = (lo.div_ceil(g) as usize, (hi / g) as usize);
        if a < b {
            for (i, w) in self
                .mixed
                .iter()
                .enumerate()
                .take(b.div_ceil(64))
                .skip(a / 64)
            {
                let mut m = w.load(Ordering::Relaxed);
                while m != 0 {
                    let p = i * 64 + m.trailing_zeros() as usize;
                    if (a..b).contains(&p) {
                        self.release(p);
                    }
                    m &= m - 1;
                }
            }
            set_bits(&self.mixed, a, b, false);
            set_bits(&self.kind, a, b, v);
        }
        self.uniform()
    }

    fn heap_bytes(&self) -> usize {
        let held = self.held.iter().filter(|c| c.get().is_some()).count();
        held * size_of::<[AtomicU32; HELD_CHUNK]>()
            + load(&self.chunks) as usize * size_of::<[Block; BLOCK_CHUNK]>()
    }

    fn mixed_pages(&self, lo: u64, hi: u64, level: Level) -> u64 {
        if level != Level::M2 {
            return 0;
        }
        let g = u64::from(PAGE_GFNS);
        let (a, b) = (lo.div_ceil(g) as usize, (hi / g) as usize);
        (a..b).filter(|&p| bit(&self.mixed, p)).count() as u64
    }
}

/// `N` entries of `C`'s span each.
#[derive(Debug)]
pub(super) struct Dir<C, const N: usize> {
    state: [AtomicU8; N],
    child: [OnceBox<[C; 1]>; N],
    /// Entries all private, and entries with a child: whether the directory is uniform,
    /// without a scan (the writer's).
    private: AtomicU32,
    children: AtomicU32,
}

const fn state_of(v: bool) -> u8 {
    if v {
        PRIVATE
    } else {
        SHARED
    }
}

impl<C: Tree, const N: usize> Dir<C, N> {
    #[inline]
    fn child(&self, e: usize) -> Option<&C> {
        self.child[e].get().map(|c| &c[0])
    }

    /// Child `e`, made by `prepare` (writer).
    fn made(&self, e: usize) -> &C {
        self.child(e)
            .unwrap_or_else(|| unreachable!("children are made before an update"))
    }

    #[inline]
    fn state(&self, e: usize) -> u8 {
        self.state[e].load(Ordering::Relaxed)
    }

    /// Stores entry `e`'s state, keeping the counts (writer).
    fn set_state(&self, e: usize, new: u8) {
        let old = self.state(e);
        if old == new {
            return;
        }
        for (s, up) in [(old, false), (new, true)] {
            let count = match s {
                PRIVATE => &self.private,
                CHILD => &self.children,
                _ => continue,
            };
            let n = load(count);
            store(count, if up { n + 1 } else { n - 1 });
        }
        self.state[e].store(new, Ordering::Relaxed);
    }

    /// The entry holding offset `off`.
    pub(super) fn index(off: u64) -> usize {
        (off >> C::SPAN_SHIFT) as usize % N
    }

    /// Child `e` if the entry is mixed (writer).
    pub(super) fn active(&self, e: usize) -> Option<&C> {
        (self.state(e) == CHILD).then(|| self.child(e)).flatten()
    }

    /// Entry `e`'s child became all `u`: the entry says so; `Some(w)` if the whole directory
    /// is now `w` (writer).
    pub(super) fn settle(&self, e: usize, u: bool) -> Option<bool> {
        self.set_state(e, state_of(u));
        self.uniform()
    }

    /// `Some(v)` when every entry is `v` (writer).
    fn uniform(&self) -> Option<bool> {
        if load(&self.children) != 0 {
            return None;
        }
        match load(&self.private) as usize {
            0 => Some(false),
            n if n == N => Some(true),
            _ => None,
        }
    }

    /// The entries `[lo, hi)` touches partly, and their ranges inside the child.
    fn edges(lo: u64, hi: u64) -> impl Iterator<Item = (usize, u64, u64)> {
        edges(lo, hi, 1 << C::SPAN_SHIFT)
    }
}

/// The (at most two) pieces of `span` gfns that the non-empty `[lo, hi)` covers partly: each
/// piece's index and the range covered inside it.
fn edges(lo: u64, hi: u64, span: u64) -> impl Iterator<Item = (usize, u64, u64)> {
    let (first, last) = ((lo / span) as usize, ((hi - 1) / span) as usize);
    [Some(first), (last != first).then_some(last)]
        .into_iter()
        .flatten()
        .filter_map(move |i| {
            let base = i as u64 * span;
            let (a, b) = (lo.max(base) - base, hi.min(base + span) - base);
            (a != 0 || b != span).then_some((i, a, b))
        })
}

impl<C: Tree, const N: usize> Tree for Dir<C, N> {
    const SPAN_SHIFT: u32 = C::SPAN_SHIFT + N.trailing_zeros();

    fn make() -> Result<Box<[Self; 1]>> {
        try_box(Dir {
            state: core::array::from_fn(|_| AtomicU8::new(SHARED)),
            child: core::array::from_fn(|_| OnceBox::new()),
            private: AtomicU32::new(0),
            children: AtomicU32::new(0),
        })
    }

    #[inline]
    fn probe(&self, off: u64) -> (bool, Level) {
        let e = (off >> C::SPAN_SHIFT) as usize % N;
        match self.state(e) {
            SHARED => (false, Level::G1),
            PRIVATE => (true, Level::G1),
            _ => self.child(e).map_or((false, Level::K4), |c| {
                c.probe(off & ((1 << C::SPAN_SHIFT) - 1))
            }),
        }
    }

    fn find(&self, off: u64, limit: u64, v: bool) -> Option<u64> {
        let span = 1u64 << C::SPAN_SHIFT;
        let first = (off / span) as usize;
        let last = (limit.div_ceil(span) as usize).min(N);
        for e in first..last {
            let base = e as u64 * span;
            let from = if e == first { off - base } else { 0 };
            match self.state(e) {
                CHILD => {
                    let to = (limit - base).min(span);
                    if let Some(o) = self.child(e).and_then(|c| c.find(from, to, v)) {
                        return Some(base + o);
                    }
                }
                s if (s == PRIVATE) != v => return Some(base + from),
                _ => {}
            }
        }
        None
    }

    fn fill(&self, v: bool) {
        if self.uniform() == Some(v) {
            // Already all `v` (a directory made or released: no children, nothing to give back).
            return;
        }
        for e in 0..N {
            if self.state(e) == CHILD {
                self.made(e).fill(false);
            }
            self.set_state(e, state_of(v));
        }
    }

    fn prepare(&self, lo: u64, hi: u64, v: bool, now: Option<bool>) -> Result<()> {
        for (e, a, b) in Self::edges(lo, hi) {
            let held = now.or(match self.state(e) {
                SHARED => Some(false),
                PRIVATE => Some(true),
                _ => None,
            });
            if held == Some(v) {
                continue;
            }
            if self.child[e].get().is_none() {
                let _ = self.child[e].set(C::make()?);
            }
            self.made(e).prepare(a, b, v, held)?;
        }
        Ok(())
    }

    fn set(&self, lo: u64, hi: u64, v: bool) -> Option<bool> {
        let span = 1u64 << C::SPAN_SHIFT;
        let (first, last) = ((lo / span) as usize, ((hi - 1) / span) as usize);
        for e in first..=last {
            let base = e as u64 * span;
            let (a, b) = (lo.max(base) - base, hi.min(base + span) - base);
            let state = self.state(e);
            if a == 0 && b == span {
                if state == CHILD {
                    self.made(e).fill(false);
                }
                self.set_state(e, state_of(v));
                continue;
            }
            if state == state_of(v) {
                continue;
            }
            let child = self.made(e);
            if state != CHILD {
                child.fill(state == PRIVATE);
            }
            // Uniform again, it holds no blocks and is kept as it is for its next use.
            self.set_state(e, child.set(a, b, v).map_or(CHILD, state_of));
        }
        self.uniform()
    }

    fn heap_bytes(&self) -> usize {
        self.child
            .iter()
            .filter_map(OnceBox::get)
            .map(|c| size_of::<C>() + c[0].heap_bytes())
            .sum()
    }

    fn mixed_pages(&self, lo: u64, hi: u64, level: Level) -> u64 {
        let span = 1u64 << C::SPAN_SHIFT;
        let (first, last) = ((lo / span) as usize, ((hi - 1) / span) as usize);
        let mut mixed = 0;
        for e in first..=last.min(N - 1) {
            let Some(child) = self.active(e) else {
                continue;
            };
            let base = e as u64 * span;
            let (a, b) = (lo.max(base) - base, hi.min(base + span) - base);
            if level == Level::G1 && C::SPAN_SHIFT == Level::G1.page_shift() {
                // The child is a node: its 1G page is mixed, counted if wholly inside.
                mixed += u64::from(a == 0 && b == span);
            } else {
                mixed += child.mixed_pages(a, b, level);
            }
        }
        mixed
    }
}

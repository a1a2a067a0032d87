//! One 2M page's attributes as 512 bits, and the 8-byte inline form of a page with few
//! boundaries.
//!
//! Every change inside a 2M page is made on a decoded [`Block`] (8 words), whatever the page is
//! stored as, so there is one place where bits are filled, compared and counted.

/// The attributes of the 512 gfns of one 2M page, bit `i` = gfn `i` is private.
pub(super) type Block = [u64; 8];

/// Gfns per 2M page.
pub(super) const PAGE_GFNS: u32 = 512;

/// Most boundaries an inline code holds: six 9-bit offsets and a 3-bit count fit in 57 bits.
pub(super) const INLINE_MAX: u32 = 6;
/// A page stored as a block goes back inline only at this many boundaries or fewer, so that a
/// flip storm on one page does not move it between the two forms on every flip.
pub(super) const INLINE_BACK: u32 = 3;

const COUNT_SHIFT: u32 = 54;
/// Bit 63 of a slot marks a block reference (the low bits are the block's index).
pub(super) const BLOCK_REF: u64 = 1 << 63;

/// A block whose bits are all `v`.
#[inline]
pub(super) const fn filled(v: bool) -> Block {
    [if v { u64::MAX } else { 0 }; 8]
}

/// Bit `i` of `b`.
#[inline]
pub(super) fn get(b: &Block, i: u32) -> bool {
    (b[(i / 64) as usize] >> (i % 64)) & 1 != 0
}

/// Sets bit `i` of `b` to `v`.
#[inline]
pub(super) fn set(b: &mut Block, i: u32, v: bool) {
    let (w, bit) = ((i / 64) as usize, 1u64 << (i % 64));
    if v {
        b[w] |= bit;
    } else {
        b[w] &= !bit;
    }
}

/// Sets bits `[lo, hi)` of `b` to `v`, a word at a time.
#[inline]
pub(super) fn fill(b: &mut Block, lo: u32, hi: u32, v: bool) {
    fill_changed(b, lo, hi, v);
}

/// [`fill`], returning whether any bit changed (no copy of the block to compare).
#[inline]
pub(super) fn fill_changed(b: &mut Block, lo: u32, hi: u32, v: bool) -> bool {
    debug_assert!(lo <= hi && hi <= PAGE_GFNS);
    if lo >= hi {
        return false;
    }
    let (first, last) = ((lo / 64) as usize, ((hi - 1) / 64) as usize);
    let head = u64::MAX << (lo % 64);
    let tail = u64::MAX >> (63 - (hi - 1) % 64);
    let mut diff = 0;
    let mut apply = |w: &mut u64, mask: u64| {
        let new = if v { *w | mask } else { *w & !mask };
        diff |= new ^ *w;
        *w = new;
    };
    if first == last {
        apply(&mut b[first], head & tail);
    } else {
        apply(&mut b[first], head);
        for w in &mut b[first + 1..last] {
            apply(w, u64::MAX);
        }
        apply(&mut b[last], tail);
    }
    diff != 0
}

/// Whether [`fill`] of `[lo, hi)` with `v` would change a bit of `b` (read only).
#[inline]
pub(super) fn fill_would_change(b: &Block, lo: u32, hi: u32, v: bool) -> bool {
    debug_assert!(lo < hi && hi <= PAGE_GFNS);
    if hi == lo + 1 {
        return get(b, lo) != v; // one gfn, the common change of a fragmented page
    }
    let (first, last) = ((lo / 64) as usize, ((hi - 1) / 64) as usize);
    let head = u64::MAX << (lo % 64);
    let tail = u64::MAX >> (63 - (hi - 1) % 64);
    let differs = |w: u64, mask: u64| (if v { !w } else { w }) & mask != 0;
    if first == last {
        return differs(b[first], head & tail);
    }
    differs(b[first], head)
        || b[first + 1..last].iter().any(|&w| differs(w, u64::MAX))
        || differs(b[last], tail)
}

/// Whether no bit of `b` is set (an OR of the words: no call to `memcmp`).
#[inline]
pub(super) fn is_clear(b: &Block) -> bool {
    b.iter().fold(0, |acc, &w| acc | w) == 0
}

/// `Some(v)` when every bit of `b` is `v`.
#[inline]
pub(super) fn uniform(b: &Block) -> Option<bool> {
    if is_clear(b) {
        Some(false)
    } else if b.iter().fold(u64::MAX, |acc, &w| acc & w) == u64::MAX {
        Some(true)
    } else {
        None
    }
}

/// The word of "bit i differs from bit i-1" for word `w` (bit 0 of the page never differs).
#[inline]
fn changes(b: &Block, w: usize) -> u64 {
    let carry = if w == 0 { b[0] & 1 } else { b[w - 1] >> 63 };
    b[w] ^ ((b[w] << 1) | carry)
}

/// Number of boundaries: offsets `i` in 1..512 whose bit differs from bit `i - 1`.
pub(super) fn boundaries(b: &Block) -> u32 {
    (0..8).map(|w| changes(b, w).count_ones()).sum()
}

/// Whether setting bit `i` of `b` (now `!v`) to `v` leaves at least as many boundaries, from
/// its two neighbours alone, so that a one-gfn change of a block needs no copy and no count: a
/// neighbour of the old kind gains a boundary, and only one can be lost on the other side.
#[inline]
pub(super) fn flip_keeps_boundaries(b: &Block, i: u32, v: bool) -> bool {
    debug_assert!(get(b, i) != v, "the flip changes its gfn");
    (i > 0 && get(b, i - 1) != v) || (i + 1 < PAGE_GFNS && get(b, i + 1) != v)
}

/// Whether `b` has more than `n` boundaries, counting only until it knows: a fragmented block
/// usually tells in its first word (popcount is a software routine on baseline x86-64).
pub(super) fn boundaries_above(b: &Block, n: u32) -> bool {
    let mut count = 0;
    for w in 0..8 {
        let c = changes(b, w);
        if c != 0 {
            count += c.count_ones();
            if count > n {
                return true;
            }
        }
    }
    false
}

/// The first offset at or after `from` whose bit is not `v`.
pub(super) fn find(b: &Block, from: u32, v: bool) -> Option<u32> {
    if from >= PAGE_GFNS {
        return None;
    }
    let flip = if v { u64::MAX } else { 0 };
    let mut w = (from / 64) as usize;
    let mut word = (b[w] ^ flip) & (u64::MAX << (from % 64));
    loop {
        if word != 0 {
            return Some(w as u32 * 64 + word.trailing_zeros());
        }
        w += 1;
        if w == 8 {
            return None;
        }
        word = b[w] ^ flip;
    }
}

/// The inline code of a mixed page with at most [`INLINE_MAX`] boundaries: their offsets
/// (ascending, 9 bits each) and their count. The page's first bit is kept by the caller.
pub(super) fn encode(b: &Block) -> Option<u64> {
    let mut code = 0u64;
    let mut n = 0u32;
    for w in 0..8 {
        let mut c = changes(b, w);
        while c != 0 {
            if n == INLINE_MAX {
                return None;
            }
            let off = w as u64 * 64 + u64::from(c.trailing_zeros());
            code |= off << (9 * n);
            n += 1;
            c &= c - 1;
        }
    }
    Some(code | u64::from(n) << COUNT_SHIFT)
}

/// Number of boundaries in an inline code.
#[inline]
pub(super) const fn inline_count(code: u64) -> u32 {
    ((code >> COUNT_SHIFT) & 7) as u32
}

/// Boundary `k` of an inline code.
#[inline]
const fn inline_at(code: u64, k: u32) -> u32 {
    ((code >> (9 * k)) & 511) as u32
}

/// The bit at `off` of an inline page that starts with `first`: flipped once per boundary at or
/// before `off`. Six comparisons without a branch (the fault path runs this with cold branch
/// predictors: a loop over the boundary count mispredicts its exit).
#[inline]
pub(super) fn inline_get(code: u64, first: bool, off: u32) -> bool {
    let n = inline_count(code);
    let mut flips = 0;
    for k in 0..INLINE_MAX {
        flips += u32::from(k < n) & u32::from(inline_at(code, k) <= off);
    }
    first ^ (flips & 1 == 1)
}

/// The inline code of a page that starts with `first` after offsets `[lo, hi)` become `v`, or
/// `None` when the page needs more than [`INLINE_MAX`] boundaries. A code of no boundaries (a
/// uniform page) is valid both ways: the result has none when the page becomes uniform. Only
/// the boundaries at `lo` and `hi` can appear and only those strictly inside can vanish: a pass
/// over at most six offsets, no decoding. Returns the new code and first kind.
pub(super) fn inline_set(code: u64, first: bool, lo: u32, hi: u32, v: bool) -> Option<(u64, bool)> {
    debug_assert!(lo < hi && hi <= PAGE_GFNS);
    let n = inline_count(code);
    // Boundaries before `lo` stay; the kind at `lo - 1` flips once per boundary passed.
    let mut k = 0;
    while k < n && inline_at(code, k) < lo {
        k += 1;
    }
    let kept = k;
    let before = lo > 0 && (first ^ (k & 1 == 1)) != v;
    // Boundaries in `[lo, hi]` vanish; the kind at `hi` is the old one after them.
    while k < n && inline_at(code, k) <= hi {
        k += 1;
    }
    let after = hi < PAGE_GFNS && (first ^ (k & 1 == 1)) != v;
    let count = kept + u32::from(before) + u32::from(after) + (n - k);
    if count > INLINE_MAX {
        return None;
    }
    // Offsets are 9 bits each: keep the first `kept`, then `lo` and `hi`, then the tail.
    let low = code & ((1u64 << (9 * kept)) - 1);
    let mut out = low;
    let mut at = kept;
    for (present, off) in [(before, lo), (after, hi)] {
        if present {
            out |= u64::from(off) << (9 * at);
            at += 1;
        }
    }
    let tail = (code & ((1u64 << (9 * n)) - 1)) >> (9 * k);
    out |= tail << (9 * at);
    let out = out | u64::from(count) << COUNT_SHIFT;
    Some((out, if lo == 0 { v } else { first }))
}

/// The block an inline code stands for.
pub(super) fn decode(code: u64, first: bool) -> Block {
    let mut b = filled(first);
    let n = inline_count(code);
    let mut v = first;
    for k in 0..n {
        let start = inline_at(code, k);
        let end = if k + 1 < n {
            inline_at(code, k + 1)
        } else {
            PAGE_GFNS
        };
        v = !v;
        fill(&mut b, start, end, v);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(b: &Block) -> u32 {
        (1..PAGE_GFNS)
            .filter(|&i| get(b, i) != get(b, i - 1))
            .count() as u32
    }

    #[test]
    fn fill_find_count_and_inline_agree_with_bit_by_bit() {
        let cases: [(u32, u32); 9] = [
            (0, 1),
            (5, 6),
            (63, 65),
            (0, 512),
            (1, 511),
            (100, 300),
            (64, 128),
            (511, 512),
            (200, 201),
        ];
        for first in [false, true] {
            for &(lo, hi) in &cases {
                for &(lo2, hi2) in &cases {
                    let mut b = filled(first);
                    fill(&mut b, lo, hi, !first);
                    fill(&mut b, lo2, hi2, first);
                    for i in 0..PAGE_GFNS {
                        let want = if (lo2..hi2).contains(&i) {
                            first
                        } else {
                            (lo..hi).contains(&i) != first
                        };
                        assert_eq!(get(&b, i), want);
                    }
                    assert_eq!(boundaries(&b), naive(&b));
                    for n in [0, 1, 3, 6, 200] {
                        assert_eq!(boundaries_above(&b, n), naive(&b) > n);
                    }
                    assert_eq!(find(&b, PAGE_GFNS, false), None);
                    for from in [0, 1, 63, 64, 200, 511] {
                        for v in [false, true] {
                            let want = (from..PAGE_GFNS).find(|&i| get(&b, i) != v);
                            assert_eq!(find(&b, from, v), want);
                        }
                    }
                    if let Some(code) = encode(&b) {
                        for &(a, z) in &cases {
                            for v in [false, true] {
                                let mut set = b;
                                fill(&mut set, a, z, v);
                                let want = encode(&set).map(|c| (c, get(&set, 0)));
                                let got = inline_set(code, get(&b, 0), a, z, v);
                                assert_eq!(got, want, "set [{a}, {z}) to {v}");
                            }
                        }
                    }
                    match encode(&b) {
                        Some(code) => {
                            assert_eq!(inline_count(code), naive(&b));
                            assert_eq!(decode(code, get(&b, 0)), b);
                            for i in 0..PAGE_GFNS {
                                assert_eq!(inline_get(code, get(&b, 0), i), get(&b, i));
                            }
                        }
                        None => assert!(naive(&b) > INLINE_MAX),
                    }
                }
            }
        }
        let mut alternating = filled(false);
        for i in (0..PAGE_GFNS).step_by(2) {
            fill(&mut alternating, i, i + 1, true);
        }
        assert_eq!(boundaries(&alternating), 511);
        assert!(encode(&alternating).is_none());
    }
}

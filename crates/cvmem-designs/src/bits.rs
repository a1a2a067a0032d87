//! Word-level bit arrays for the per-page designs: one bit per 4 KiB gfn of a memslot (the
//! PRIVATE attribute), and two bits per large page (shared, private, mixed).

use cvmem::{Gfn, GfnRange, Level};

/// One bit per gfn over `[origin, origin + len)`, where `origin` is 1G aligned so that every
/// 2M page is 8 whole words and every 1G page 4096 whole words.
#[derive(Clone, Debug, Default)]
pub struct PageBits {
    origin: u64,
    len: u64,
    words: Vec<u64>,
}

impl PageBits {
    /// Clear bits covering `range` (rounded out to 1G at the start).
    pub fn new(range: GfnRange) -> Self {
        let origin = Level::G1.align_down(range.start).0;
        let len = range.end.0 - origin;
        PageBits {
            origin,
            len,
            words: vec![0; len.div_ceil(64) as usize],
        }
    }

    /// The first gfn the array could hold (1G aligned).
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// Bit of `gfn` (which must be covered).
    #[inline]
    pub fn get(&self, gfn: u64) -> bool {
        let i = gfn - self.origin;
        (self.words[(i / 64) as usize] >> (i % 64)) & 1 != 0
    }

    /// Sets the bits of `range` (which must be covered) to `v`, a word at a time.
    pub fn fill(&mut self, range: GfnRange, v: bool) {
        fill_bits(
            &mut self.words,
            range.start.0 - self.origin,
            range.end.0 - self.origin,
            v,
        );
    }

    /// If every bit of the aligned block `[start, start + 64 * words)` is equal, its value.
    /// `start` must be 64-gfn aligned.
    #[inline]
    pub fn uniform_block(&self, start: u64, words: u64) -> Option<bool> {
        let w = ((start - self.origin) / 64) as usize;
        let block = &self.words[w..w + words as usize];
        let first = block[0];
        if first != 0 && first != u64::MAX {
            return None;
        }
        block.iter().all(|&x| x == first).then_some(first != 0)
    }

    /// The maximal runs of set bits inside `range`, in address order.
    pub fn set_runs(&self, range: GfnRange) -> Vec<GfnRange> {
        let range = range.gfns();
        let mut runs = Vec::new();
        let mut gfn = range.start;
        let mut run_start: Option<u64> = None;
        while gfn < range.end {
            let i = gfn - self.origin;
            let word = self.words[(i / 64) as usize];
            let off = i % 64;
            let span = (64 - off).min(range.end - gfn);
            let mask = if span == 64 {
                u64::MAX
            } else {
                ((1u64 << span) - 1) << off
            };
            let bits = word & mask;
            if bits == mask {
                run_start.get_or_insert(gfn);
            } else if bits == 0 {
                if let Some(s) = run_start.take() {
                    runs.push(GfnRange::new(Gfn(s), Gfn(gfn)));
                }
            } else {
                for k in 0..span {
                    let set = (word >> (off + k)) & 1 != 0;
                    match (set, run_start) {
                        (true, None) => run_start = Some(gfn + k),
                        (false, Some(s)) => {
                            runs.push(GfnRange::new(Gfn(s), Gfn(gfn + k)));
                            run_start = None;
                        }
                        _ => {}
                    }
                }
            }
            gfn += span;
        }
        if let Some(s) = run_start {
            runs.push(GfnRange::new(Gfn(s), Gfn(range.end)));
        }
        runs
    }

    /// Heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.words.capacity() * 8
    }

    /// Number of gfns covered from the origin.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no gfn is covered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Sets bits `[start, end)` of `words` to `v`.
pub fn fill_bits(words: &mut [u64], start: u64, end: u64, v: bool) {
    let mut i = start;
    while i < end {
        let w = (i / 64) as usize;
        let lo = i % 64;
        let hi = (end - (i - lo)).min(64);
        let mask = if hi - lo == 64 {
            u64::MAX
        } else {
            ((1u64 << (hi - lo)) - 1) << lo
        };
        if lo == 0 && hi == 64 {
            // Whole words: let the compiler turn this into a memset.
            let last = (end / 64) as usize;
            words[w..last].fill(if v { u64::MAX } else { 0 });
            i = last as u64 * 64;
            continue;
        }
        if v {
            words[w] |= mask;
        } else {
            words[w] &= !mask;
        }
        i += hi - lo;
    }
}

/// The state of a large page in Option A: two bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Crumb {
    /// Every page shared.
    Shared = 0,
    /// Every page private.
    Private = 1,
    /// Pages differ, or the large page is not wholly inside the slot.
    Mixed = 2,
}

/// Two bits per large page, 32 per word.
#[derive(Clone, Debug, Default)]
pub struct Crumbs {
    words: Vec<u64>,
    len: u64,
}

const CRUMB_PATTERN: [u64; 3] = [0, 0x5555_5555_5555_5555, 0xaaaa_aaaa_aaaa_aaaa];

impl Crumbs {
    /// `len` states, all `init`.
    pub fn new(len: u64, init: Crumb) -> Self {
        Crumbs {
            words: vec![CRUMB_PATTERN[init as usize]; len.div_ceil(32) as usize],
            len,
        }
    }

    /// Number of states.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there is no state.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// State `i`.
    #[inline]
    pub fn get(&self, i: u64) -> Crumb {
        match (self.words[(i / 32) as usize] >> (2 * (i % 32))) & 3 {
            0 => Crumb::Shared,
            1 => Crumb::Private,
            _ => Crumb::Mixed,
        }
    }

    /// Sets state `i`.
    #[inline]
    pub fn set(&mut self, i: u64, c: Crumb) {
        let w = &mut self.words[(i / 32) as usize];
        let shift = 2 * (i % 32);
        *w = (*w & !(3 << shift)) | ((c as u64) << shift);
    }

    /// Sets states `[start, end)` to `c`, a word at a time.
    pub fn fill(&mut self, start: u64, end: u64, c: Crumb) {
        let pattern = CRUMB_PATTERN[c as usize];
        let mut i = start;
        while i < end {
            let w = (i / 32) as usize;
            let lo = i % 32;
            let hi = (end - (i - lo)).min(32);
            let mask = if hi - lo == 32 {
                u64::MAX
            } else {
                ((1u64 << (2 * (hi - lo))) - 1) << (2 * lo)
            };
            self.words[w] = (self.words[w] & !mask) | (pattern & mask);
            i += hi - lo;
        }
    }

    /// If the 32-aligned block of `count` states starting at `start` (a multiple of 32) is all
    /// Shared or all Private, that state.
    pub fn uniform_block(&self, start: u64, count: u64) -> Option<Crumb> {
        let w = (start / 32) as usize;
        let block = &self.words[w..w + count.div_ceil(32) as usize];
        let first = block[0];
        let c = if first == CRUMB_PATTERN[0] {
            Crumb::Shared
        } else if first == CRUMB_PATTERN[1] {
            Crumb::Private
        } else {
            return None;
        };
        block.iter().all(|&x| x == first).then_some(c)
    }

    /// Heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.words.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_bits_matches_bit_by_bit() {
        for (start, end) in [
            (0, 0),
            (0, 1),
            (3, 64),
            (0, 64),
            (63, 65),
            (5, 200),
            (64, 192),
            (1, 255),
        ] {
            let mut w = vec![0u64; 4];
            fill_bits(&mut w, start, end, true);
            for i in 0..256u64 {
                let bit = (w[(i / 64) as usize] >> (i % 64)) & 1 != 0;
                assert_eq!(
                    bit,
                    (start..end).contains(&i),
                    "bit {i} after {start}..{end}"
                );
            }
            fill_bits(&mut w, start, end, false);
            assert!(w.iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn runs_of_page_bits() {
        let mut b = PageBits::new(GfnRange::new(Gfn(0x40000 + 5), Gfn(0x40000 + 1000)));
        b.fill(GfnRange::new(Gfn(0x40000 + 10), Gfn(0x40000 + 20)), true);
        b.fill(GfnRange::new(Gfn(0x40000 + 64), Gfn(0x40000 + 300)), true);
        let runs = b.set_runs(GfnRange::new(Gfn(0x40000 + 5), Gfn(0x40000 + 1000)));
        assert_eq!(
            runs,
            vec![
                GfnRange::new(Gfn(0x40000 + 10), Gfn(0x40000 + 20)),
                GfnRange::new(Gfn(0x40000 + 64), Gfn(0x40000 + 300))
            ]
        );
        assert_eq!(b.uniform_block(0x40000 + 64, 2), Some(true));
        assert_eq!(b.uniform_block(0x40000, 1), None);
        assert_eq!(b.uniform_block(0x40000 + 320, 1), Some(false));
    }

    #[test]
    fn crumbs_fill_and_uniform() {
        let mut c = Crumbs::new(100, Crumb::Mixed);
        c.fill(3, 70, Crumb::Private);
        for i in 0..100 {
            let want = if (3..70).contains(&i) {
                Crumb::Private
            } else {
                Crumb::Mixed
            };
            assert_eq!(c.get(i), want);
        }
        assert_eq!(c.uniform_block(32, 32), Some(Crumb::Private));
        assert_eq!(c.uniform_block(0, 32), None);
        c.set(40, Crumb::Shared);
        assert_eq!(c.uniform_block(32, 32), None);
    }
}

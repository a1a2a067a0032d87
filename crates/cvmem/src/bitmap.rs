//! A fixed-size bitmap whose only allocation is fallible and happens up front.

use alloc::vec::Vec;

use crate::error::{Error, Result};

/// `len` bits, all allocated by [`Bitmap::try_new`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bitmap {
    words: Vec<u64>,
    len: u64,
}

impl Bitmap {
    /// A bitmap of `len` clear bits, or `NoMemory` without side effects.
    pub(crate) fn try_new(len: u64) -> Result<Self> {
        let n =
            usize::try_from(len.div_ceil(64)).map_err(|_| Error::NoMemory { bytes: usize::MAX })?;
        let mut words = Vec::new();
        words
            .try_reserve_exact(n)
            .map_err(|_| Error::NoMemory { bytes: n * 8 })?;
        words.resize(n, 0);
        Ok(Bitmap { words, len })
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    #[inline]
    pub(crate) fn get(&self, i: u64) -> bool {
        debug_assert!(i < self.len);
        (self.words[(i / 64) as usize] >> (i % 64)) & 1 != 0
    }

    #[inline]
    pub(crate) fn set(&mut self, i: u64, v: bool) {
        let w = &mut self.words[(i / 64) as usize];
        let bit = 1u64 << (i % 64);
        if v {
            *w |= bit;
        } else {
            *w &= !bit;
        }
    }

    /// Sets bits `[start, end)` to `v`, a word at a time.
    pub(crate) fn fill(&mut self, start: u64, end: u64, v: bool) {
        debug_assert!(start <= end && end <= self.len);
        let mut i = start;
        while i < end {
            let word = (i / 64) as usize;
            let lo = i % 64;
            let hi = if end - (i - lo) >= 64 {
                64
            } else {
                end - (i - lo)
            };
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            if v {
                self.words[word] |= mask;
            } else {
                self.words[word] &= !mask;
            }
            i += hi - lo;
        }
    }

    /// Number of bits in `[start, end)` set in this bitmap or in `other` (which may be empty),
    /// a word at a time.
    pub(crate) fn count_either(&self, other: &Bitmap, start: u64, end: u64) -> u64 {
        let mut n = 0;
        let mut i = start;
        while i < end {
            let word = (i / 64) as usize;
            let lo = i % 64;
            let hi = (end - (i - lo)).min(64);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            let other_word = other.words.get(word).copied().unwrap_or(0);
            n += u64::from(((self.words[word] | other_word) & mask).count_ones());
            i += hi - lo;
        }
        n
    }

    /// Number of set bits.
    pub(crate) fn count_ones(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.words.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_matches_bit_by_bit() {
        for (start, end) in [
            (0, 0),
            (0, 1),
            (3, 64),
            (0, 64),
            (63, 65),
            (5, 200),
            (64, 128),
            (1, 199),
        ] {
            let mut a = Bitmap::try_new(200).unwrap();
            a.fill(start, end, true);
            for i in 0..200 {
                assert_eq!(
                    a.get(i),
                    (start..end).contains(&i),
                    "bit {i} after fill {start}..{end}"
                );
            }
            assert_eq!(a.count_ones(), end - start);
            let empty = Bitmap::default();
            assert_eq!(a.count_either(&empty, 0, 200), end - start);
            assert_eq!(a.count_either(&empty, start, end), end - start);
            assert_eq!(a.count_either(&empty, 0, start), 0);
            a.fill(start, end, false);
            assert_eq!(a.count_ones(), 0);
        }
    }
}

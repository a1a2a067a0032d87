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
    fn set_get_and_count() {
        let mut a = Bitmap::try_new(200).unwrap();
        for i in [0, 63, 64, 199] {
            a.set(i, true);
        }
        assert_eq!(a.count_ones(), 4);
        assert!(a.get(63) && a.get(64) && !a.get(65));
        a.set(63, false);
        assert_eq!(a.count_ones(), 3);
        assert_eq!(a.heap_bytes(), 32);
    }
}

//! A set of large-page indices (GUEST_INHIBIT of one slot at one level) that costs what is set,
//! never more than a flat bitmap, and allocates only fallibly, before it changes.
//!
//! Sparse (a sorted vector of indices, 8 bytes each) while that is under an eighth of a bitmap
//! of the slot's large pages, dense (the bitmap) from then on. A bitmap of an 8 TiB slot's 2M
//! pages is 512 KiB: sparse keeps a snapshot with one inhibit per huge slot from costing a
//! bitmap per slot, and the switch keeps the memory under 64 bytes a set index. The fault path
//! asks: an empty set answers at once, a sparse one with a binary search of at most
//! log2(len / 512) steps (13 for an 8 TiB slot, 10 for 1 TiB), a dense one with one bit probe.

use alloc::vec::Vec;

use crate::error::{Error, Result};

/// A subset of `0..len`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct IndexSet {
    len: u64,
    repr: Repr,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Repr {
    /// Sorted, distinct indices.
    #[default]
    Empty,
    Sparse(Vec<u64>),
    /// One bit per index, and how many are set.
    Dense {
        words: Vec<u64>,
        ones: u64,
    },
}

impl IndexSet {
    /// An empty subset of `0..len`: no allocation.
    pub(crate) const fn new(len: u64) -> Self {
        IndexSet {
            len,
            repr: Repr::Empty,
        }
    }

    /// Indices a sparse set holds before it turns dense: an eighth of the bitmap's bytes, which
    /// bounds the fault path's binary search.
    fn sparse_limit(&self) -> u64 {
        self.len / 512
    }

    /// Whether nothing was ever set (or everything was cleared by a swap): the fault path's
    /// first, cheapest answer.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        matches!(self.repr, Repr::Empty)
    }

    #[inline]
    pub(crate) fn contains(&self, i: u64) -> bool {
        match &self.repr {
            Repr::Empty => false,
            Repr::Sparse(v) => v.binary_search(&i).is_ok(),
            Repr::Dense { words, .. } => words
                .get((i / 64) as usize)
                .is_some_and(|w| w >> (i % 64) & 1 != 0),
        }
    }

    /// Makes sure the next [`IndexSet::insert`] does not allocate: room for one more index,
    /// or the dense form. `NoMemory` leaves the set as it was.
    pub(crate) fn reserve_one(&mut self) -> Result<()> {
        let limit = self.sparse_limit();
        match &mut self.repr {
            Repr::Dense { .. } => Ok(()),
            Repr::Sparse(v) if (v.len() as u64) < limit => try_reserve(v, 1),
            Repr::Empty if limit > 0 => {
                let mut v = Vec::new();
                try_reserve(&mut v, 1)?;
                self.repr = Repr::Sparse(v);
                Ok(())
            }
            _ => self.densify(),
        }
    }

    /// The dense form of the set (fallible; the set is unchanged on `NoMemory`).
    fn densify(&mut self) -> Result<()> {
        let n = usize::try_from(self.len.div_ceil(64))
            .map_err(|_| Error::NoMemory { bytes: usize::MAX })?;
        let mut words = Vec::new();
        words
            .try_reserve_exact(n)
            .map_err(|_| Error::NoMemory { bytes: n * 8 })?;
        words.resize(n, 0);
        let mut ones = 0;
        for i in self.iter() {
            words[(i / 64) as usize] |= 1 << (i % 64);
            ones += 1;
        }
        self.repr = Repr::Dense { words, ones };
        Ok(())
    }

    /// Adds `i` (< len). Returns whether it was new. Call [`IndexSet::reserve_one`] first;
    /// without the room this adds nothing and returns false (never allocates).
    pub(crate) fn insert(&mut self, i: u64) -> bool {
        debug_assert!(i < self.len);
        match &mut self.repr {
            Repr::Empty => false,
            Repr::Sparse(v) => match v.binary_search(&i) {
                Ok(_) => false,
                Err(at) if v.len() < v.capacity() => {
                    v.insert(at, i);
                    true
                }
                Err(_) => false,
            },
            Repr::Dense { words, ones } => {
                let w = &mut words[(i / 64) as usize];
                let bit = 1u64 << (i % 64);
                let new = *w & bit == 0;
                *w |= bit;
                *ones += u64::from(new);
                new
            }
        }
    }

    /// Removes `i`. Returns whether it was there.
    pub(crate) fn remove(&mut self, i: u64) -> bool {
        match &mut self.repr {
            Repr::Empty => false,
            Repr::Sparse(v) => match v.binary_search(&i) {
                Ok(at) => {
                    v.remove(at);
                    true
                }
                Err(_) => false,
            },
            Repr::Dense { words, ones } => {
                let Some(w) = words.get_mut((i / 64) as usize) else {
                    return false;
                };
                let bit = 1u64 << (i % 64);
                let was = *w & bit != 0;
                *w &= !bit;
                *ones -= u64::from(was);
                was
            }
        }
    }

    /// Number of indices in the set.
    pub(crate) fn count(&self) -> u64 {
        match &self.repr {
            Repr::Empty => 0,
            Repr::Sparse(v) => v.len() as u64,
            Repr::Dense { ones, .. } => *ones,
        }
    }

    /// The indices in ascending order: O(count) sparse, O(len / 64) dense.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let (sparse, dense): (&[u64], &[u64]) = match &self.repr {
            Repr::Empty => (&[], &[]),
            Repr::Sparse(v) => (v, &[]),
            Repr::Dense { words, .. } => (&[], words),
        };
        let dense = dense.iter().enumerate().flat_map(|(k, &w)| {
            let mut w = w;
            core::iter::from_fn(move || {
                (w != 0).then(|| {
                    let bit = u64::from(w.trailing_zeros());
                    w &= w - 1;
                    k as u64 * 64 + bit
                })
            })
        });
        sparse.iter().copied().chain(dense)
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        match &self.repr {
            Repr::Empty => 0,
            Repr::Sparse(v) => v.capacity() * 8,
            Repr::Dense { words, .. } => words.capacity() * 8,
        }
    }
}

fn try_reserve(v: &mut Vec<u64>, n: usize) -> Result<()> {
    v.try_reserve(n).map_err(|_| Error::NoMemory {
        bytes: (v.len() + n) * 8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(s: &mut IndexSet, i: u64) -> bool {
        s.reserve_one().unwrap();
        s.insert(i)
    }

    #[test]
    fn sparse_until_a_bitmap_is_smaller_then_dense() {
        let mut s = IndexSet::new(512 * 4);
        assert_eq!(s.heap_bytes(), 0);
        assert!(s.is_empty());
        for i in [2000, 3, 100, 64] {
            assert!(add(&mut s, i));
        }
        assert!(matches!(s.repr, Repr::Sparse(_)), "{s:?}");
        assert_eq!(s.iter().collect::<Vec<_>>(), [3, 64, 100, 2000]);
        assert!(s.contains(100) && !s.contains(101) && !s.is_empty());
        // Room for a fifth index: 32 bytes of indices reach an eighth of the 256-byte bitmap.
        assert!(!add(&mut s, 3));
        assert!(add(&mut s, 2047));
        assert!(matches!(s.repr, Repr::Dense { .. }), "{s:?}");
        assert_eq!(s.iter().collect::<Vec<_>>(), [3, 64, 100, 2000, 2047]);
        assert_eq!(s.count(), 5);
        assert!(s.contains(64) && !s.contains(65));
        assert!(s.remove(64) && !s.remove(64));
        assert_eq!(s.count(), 4);
        assert_eq!(s.heap_bytes(), 256);
    }

    #[test]
    fn insert_without_room_changes_nothing() {
        let mut s = IndexSet::new(1 << 20);
        assert!(!s.insert(5));
        assert!(!s.contains(5) && s.count() == 0);
    }
}

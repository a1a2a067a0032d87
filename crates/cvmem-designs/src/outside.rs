//! PRIVATE attributes of gfns that no memslot covers, for the designs that keep their state per
//! memslot (Option A, the flat bitmap).
//!
//! KVM_SET_MEMORY_ATTRIBUTES applies to a range whether or not memslots cover it, and a slot
//! created later sees the attributes already set. A design whose arrays live inside memslots
//! therefore needs a side table for the rest; this is it: sorted, disjoint, merged private runs.
//! Creating a slot moves the runs it covers into the slot's arrays; deleting one moves its
//! private pages back here.

use cvmem::Gfn;
use cvmem::GfnRange;

/// Private runs outside memslots.
#[derive(Clone, Debug, Default)]
pub struct Outside {
    runs: Vec<(u64, u64)>,
}

impl Outside {
    /// No private gfn.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `gfn` is private.
    pub fn get(&self, gfn: u64) -> bool {
        let i = self.runs.partition_point(|&(s, _)| s <= gfn);
        i > 0 && gfn < self.runs[i - 1].1
    }

    /// Sets `range` private or shared.
    pub fn set(&mut self, range: GfnRange, private: bool) {
        if range.is_empty() {
            return;
        }
        let range = range.gfns();
        let (mut start, mut end) = (range.start, range.end);
        // Runs that overlap or touch the range.
        let lo = self.runs.partition_point(|&(_, e)| e < start);
        let hi = self.runs.partition_point(|&(s, _)| s <= end);
        let mut keep: Vec<(u64, u64)> = Vec::new();
        for &(s, e) in &self.runs[lo..hi] {
            if private {
                start = start.min(s);
                end = end.max(e);
            } else {
                if s < range.start {
                    keep.push((s, range.start));
                }
                if e > range.end {
                    keep.push((range.end, e));
                }
            }
        }
        if private {
            keep.push((start, end));
        }
        self.runs.splice(lo..hi, keep);
    }

    /// Removes and returns the private runs inside `range` (clipped to it).
    pub fn take(&mut self, range: GfnRange) -> Vec<GfnRange> {
        let taken = self.runs_in(range);
        self.set(range, false);
        taken
    }

    /// The private runs inside `range`, clipped to it.
    pub fn runs_in(&self, range: GfnRange) -> Vec<GfnRange> {
        let range = range.gfns();
        let lo = self.runs.partition_point(|&(_, e)| e <= range.start);
        self.runs[lo..]
            .iter()
            .take_while(|&&(s, _)| s < range.end)
            .map(|&(s, e)| GfnRange::new(Gfn(s.max(range.start)), Gfn(e.min(range.end))))
            .collect()
    }

    /// Number of runs.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// Whether no gfn outside memslots is private.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.runs.capacity() * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_merges_and_splits() {
        let mut o = Outside::new();
        o.set(GfnRange::new(Gfn(10), Gfn(20)), true);
        o.set(GfnRange::new(Gfn(20), Gfn(30)), true);
        o.set(GfnRange::new(Gfn(40), Gfn(50)), true);
        assert_eq!(o.runs, vec![(10, 30), (40, 50)]);
        o.set(GfnRange::new(Gfn(15), Gfn(45)), false);
        assert_eq!(o.runs, vec![(10, 15), (45, 50)]);
        assert!(o.get(14) && !o.get(15) && o.get(45) && !o.get(50));
        assert_eq!(
            o.take(GfnRange::new(Gfn(12), Gfn(48))),
            vec![
                GfnRange::new(Gfn(12), Gfn(15)),
                GfnRange::new(Gfn(45), Gfn(48))
            ]
        );
        assert_eq!(o.runs, vec![(10, 12), (48, 50)]);
    }
}

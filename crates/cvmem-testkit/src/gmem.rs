//! The dense oracle of a guest_memfd's attributes: one kind and one reference count per page,
//! the `KVM_SET_MEMORY_ATTRIBUTES2` contract checked by brute force, in the order the uAPI
//! documents it (flags, attributes, alignment, size, bounds, nothing to do, references).

use cvmem::{Errno, Level, MergePolicy};

const PAGE: u64 = 4096;
const PRIVATE: u64 = 1 << 3;

/// One guest_memfd, page by page.
#[derive(Clone, Debug)]
pub struct DenseGmem {
    /// Whether each page is private.
    pub private: Vec<bool>,
    /// References the host holds on each page.
    pub refs: Vec<u32>,
    /// The size of the folio holding each page.
    pub order: Vec<Level>,
    /// The file's huge page size.
    pub file_order: Level,
    /// When split folios merge.
    pub merge: MergePolicy,
    /// Folios split so far.
    pub splits: u64,
    /// Folios merged so far.
    pub merges: u64,
}

/// What `KVM_SET_MEMORY_ATTRIBUTES2` answers: changed or not, or the errno and, for `EAGAIN`,
/// the `error_offset`.
pub type Answer = Result<bool, (Errno, Option<u64>)>;

impl DenseGmem {
    /// A file of `pages` pages, all shared or all private.
    pub fn new(pages: usize, init_shared: bool) -> Self {
        Self::with_folios(pages, init_shared, Level::K4, MergePolicy::default())
    }

    /// A file of `pages` pages backed by folios of `order`, merging by `merge`.
    pub fn with_folios(pages: usize, init_shared: bool, order: Level, merge: MergePolicy) -> Self {
        DenseGmem {
            private: vec![!init_shared; pages],
            refs: vec![0; pages],
            order: vec![order; pages],
            file_order: order,
            merge,
            splits: 0,
            merges: 0,
        }
    }

    /// The largest mapping of page `page` at `gfn` its folio allows: the folio's size, lowered
    /// until gfn and page are congruent modulo it.
    pub fn folio_cap(&self, page: u64, gfn: u64) -> Level {
        let mut level = self.order[page as usize];
        while page.wrapping_sub(gfn) % level.pages() != 0 {
            level = level.smaller().unwrap_or(Level::K4);
        }
        level
    }

    /// The aligned block of `level` holding page `i`.
    fn block(i: usize, level: Level) -> std::ops::Range<usize> {
        let n = level.pages() as usize;
        i / n * n..(i / n + 1) * n
    }

    /// Splits, one order at a time, every folio that `pages` changes part of but not all.
    fn split_cut(&mut self, pages: std::ops::Range<usize>, to: bool) {
        loop {
            // Folio by folio over the range (each page's folio is the block of its order).
            let mut cut = None;
            let mut i = pages.start;
            while i < pages.end {
                let folio = Self::block(i, self.order[i]);
                let covered = pages.start <= folio.start && folio.end <= pages.end;
                let changes = (folio.start.max(pages.start)..folio.end.min(pages.end))
                    .any(|j| self.private[j] != to);
                if !covered && changes {
                    cut = Some(folio);
                    break;
                }
                i = folio.end;
            }
            let Some(folio) = cut else { return };
            let smaller = self.order[folio.start].smaller().unwrap_or(Level::K4);
            for j in folio {
                self.order[j] = smaller;
            }
            self.splits += 1;
        }
    }

    /// Merges split folios (2M, then 1G) that meet `pages` (`inside`: lie wholly inside it)
    /// and that `whole` accepts.
    fn merge_where(
        &mut self,
        pages: std::ops::Range<usize>,
        inside: bool,
        whole: impl Fn(&Self, std::ops::Range<usize>) -> bool,
    ) {
        for (level, from) in [(Level::M2, Level::K4), (Level::G1, Level::M2)] {
            if self.file_order < level {
                continue;
            }
            let n = level.pages() as usize;
            for start in (0..self.private.len()).step_by(n) {
                let block = start..start + n;
                let meets = if inside {
                    pages.start <= block.start && block.end <= pages.end
                } else {
                    block.start < pages.end && pages.start < block.end
                };
                let split = block.clone().all(|j| self.order[j] == from);
                if meets && split && whole(self, block.clone()) {
                    for j in block {
                        self.order[j] = level;
                    }
                    self.merges += 1;
                }
            }
        }
    }

    fn one_kind(&self, block: std::ops::Range<usize>) -> bool {
        block
            .clone()
            .all(|j| self.private[j] == self.private[block.start])
    }

    /// `fallocate(PUNCH_HOLE)`: split folios wholly inside whose pages share one kind merge,
    /// unless the policy is never.
    pub fn punch_hole(&mut self, offset: u64, size: u64) -> Result<(), Errno> {
        let file = self.private.len() as u64 * PAGE;
        let bad = offset % PAGE != 0
            || size % PAGE != 0
            || size == 0
            || offset.checked_add(size).is_none_or(|end| end > file);
        if bad {
            return Err(Errno::EINVAL);
        }
        if self.merge != MergePolicy::Never {
            let pages = (offset / PAGE) as usize..((offset + size) / PAGE) as usize;
            self.merge_where(pages, true, |g, b| g.one_kind(b));
        }
        Ok(())
    }

    /// `KVM_SET_MEMORY_ATTRIBUTES2(offset, size, attributes, flags)`.
    pub fn set_memory_attributes2(
        &mut self,
        offset: u64,
        size: u64,
        attributes: u64,
        flags: u64,
    ) -> Answer {
        let einval = Err((Errno::EINVAL, None));
        if flags != 0 || attributes & !PRIVATE != 0 {
            return einval;
        }
        if offset % PAGE != 0 || size % PAGE != 0 || size == 0 {
            return einval;
        }
        let file = self.private.len() as u64 * PAGE;
        if offset.checked_add(size).is_none_or(|end| end > file) {
            return einval;
        }
        let pages = (offset / PAGE) as usize..((offset + size) / PAGE) as usize;
        let to = attributes != 0;
        if self.private[pages.clone()].iter().all(|&p| p == to) {
            return Ok(false);
        }
        if to {
            if let Some(i) = pages.clone().find(|&i| self.refs[i] > 0) {
                return Err((Errno::EAGAIN, Some(i as u64 * PAGE)));
            }
        }
        self.split_cut(pages.clone(), to);
        for i in pages.clone() {
            self.private[i] = to;
        }
        if self.merge == MergePolicy::Eager {
            self.merge_where(pages, false, |g, b| {
                g.one_kind(b.clone()) && b.into_iter().all(|j| g.refs[j] == 0)
            });
        }
        Ok(true)
    }

    /// The host takes a reference on a shared page; private pages and offsets past the file
    /// are refused.
    pub fn get_page(&mut self, offset: u64) -> Result<(), Errno> {
        let i = (offset / PAGE) as usize;
        match self.private.get(i) {
            Some(false) => {
                self.refs[i] += 1;
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// The host drops a reference it holds.
    pub fn put_page(&mut self, offset: u64) -> Result<(), Errno> {
        let i = (offset / PAGE) as usize;
        match self.refs.get_mut(i) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    }
}

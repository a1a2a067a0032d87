//! The dense oracle of a guest_memfd's attributes: one kind and one reference count per page,
//! the `KVM_SET_MEMORY_ATTRIBUTES2` contract checked by brute force, in the order the uAPI
//! documents it (flags, attributes, alignment, size, bounds, nothing to do, references).

use cvmem::Errno;

const PAGE: u64 = 4096;
const PRIVATE: u64 = 1 << 3;

/// One guest_memfd, page by page.
#[derive(Clone, Debug)]
pub struct DenseGmem {
    /// Whether each page is private.
    pub private: Vec<bool>,
    /// References the host holds on each page.
    pub refs: Vec<u32>,
}

/// What `KVM_SET_MEMORY_ATTRIBUTES2` answers: changed or not, or the errno and, for `EAGAIN`,
/// the `error_offset`.
pub type Answer = Result<bool, (Errno, Option<u64>)>;

impl DenseGmem {
    /// A file of `pages` pages, all shared or all private.
    pub fn new(pages: usize, init_shared: bool) -> Self {
        DenseGmem {
            private: vec![!init_shared; pages],
            refs: vec![0; pages],
        }
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
        for i in pages {
            self.private[i] = to;
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

//! `kvm_lpage_info` as merged: one `int disallow_lpage` per large page a memslot overlaps, per
//! large level, allocated with `kvcalloc`. Bit 31 is KVM_LPAGE_MIXED_FLAG; the low bits count
//! other reasons (the slot's partial head and tail pages get +1, a slot whose host and guest
//! addresses are not congruent modulo the level gets 1 everywhere).

use cvmem::Level;

use crate::design::Slot;

/// KVM_LPAGE_MIXED_FLAG.
pub const MIXED: u32 = 1 << 31;

/// The `disallow_lpage` ints of one slot at one level.
#[derive(Clone, Debug)]
pub struct LpageInfo {
    level: Level,
    /// `base_gfn >> shift`: index 0 of `ints`.
    base: u64,
    ints: Vec<u32>,
}

impl LpageInfo {
    /// `kvm_alloc_memslot_metadata` for one level: zeroed ints, +1 for a partial head and tail,
    /// 1 everywhere when the slot's addresses are misaligned for the level.
    pub fn new(slot: &Slot, level: Level) -> Self {
        let shift = level.page_shift();
        let base = slot.base_gfn >> shift;
        let lpages = ((slot.end_gfn() - 1) >> shift) - base + 1;
        let mut ints = vec![0u32; lpages as usize];
        if !level.is_aligned(cvmem::Gfn(slot.base_gfn)) {
            ints[0] += 1;
        }
        if !level.is_aligned(cvmem::Gfn(slot.end_gfn())) {
            ints[lpages as usize - 1] += 1;
        }
        if slot.misaligned(level) {
            ints.fill(1);
        }
        LpageInfo { level, base, ints }
    }

    #[inline]
    fn index(&self, gfn: u64) -> usize {
        ((gfn >> self.level.page_shift()) - self.base) as usize
    }

    /// `disallow_lpage` of the large page holding `gfn` (which must be in the slot).
    #[inline]
    pub fn disallow(&self, gfn: u64) -> u32 {
        self.ints[self.index(gfn)]
    }

    /// `hugepage_test_mixed`.
    #[inline]
    pub fn test_mixed(&self, gfn: u64) -> bool {
        self.disallow(gfn) & MIXED != 0
    }

    /// `hugepage_set_mixed`.
    #[inline]
    pub fn set_mixed(&mut self, gfn: u64) {
        let i = self.index(gfn);
        self.ints[i] |= MIXED;
    }

    /// `hugepage_clear_mixed`.
    #[inline]
    pub fn clear_mixed(&mut self, gfn: u64) {
        let i = self.index(gfn);
        self.ints[i] &= !MIXED;
    }

    /// Number of ints (large pages the slot overlaps).
    pub fn len(&self) -> usize {
        self.ints.len()
    }

    /// Whether the slot overlaps no large page (never: a slot has at least one page).
    pub fn is_empty(&self) -> bool {
        self.ints.is_empty()
    }

    /// Bytes the kernel allocates for the array (`kvcalloc(lpages, 4)`).
    pub fn kernel_bytes(&self) -> usize {
        kvmalloc_bytes(self.ints.len() * 4)
    }

    /// Bytes this process holds.
    pub fn host_bytes(&self) -> usize {
        self.ints.capacity() * 4
    }
}

/// What `kvmalloc(size)` really takes: a kmalloc size class up to 8 KiB, then whole pages
/// rounded up to a power of two (the page allocator) up to 4 MiB, then whole pages (vmalloc).
pub fn kvmalloc_bytes(size: usize) -> usize {
    const CLASSES: [usize; 13] = [
        8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192,
    ];
    if size == 0 {
        return 0;
    }
    if let Some(&c) = CLASSES.iter().find(|&&c| c >= size) {
        return c;
    }
    let pages = size.div_ceil(4096);
    if pages <= 1024 {
        pages.next_power_of_two() * 4096
    } else {
        pages * 4096
    }
}

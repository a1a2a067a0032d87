//! Guest addresses, frame numbers and mapping levels.

use core::fmt;

/// log2 of the base page size (4 KiB).
pub const PAGE_SHIFT: u32 = 12;
/// The base page size in bytes.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// One past the largest gfn: a 64-bit GPA space holds 2^52 base pages.
pub const GFN_END: u64 = 1 << (64 - PAGE_SHIFT);

/// A guest physical address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Gpa(pub u64);

/// A guest frame number: a guest physical address divided by the 4 KiB page size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Gfn(pub u64);

impl Gpa {
    /// The frame holding this address.
    pub const fn gfn(self) -> Gfn {
        Gfn(self.0 >> PAGE_SHIFT)
    }
    /// Whether the address is aligned to `level`.
    pub const fn is_aligned(self, level: Level) -> bool {
        self.0 & (level.size() - 1) == 0
    }
    /// The address `bytes` further on, if it does not pass the end of the 64-bit space.
    pub const fn checked_add(self, bytes: u64) -> Option<Gpa> {
        match self.0.checked_add(bytes) {
            Some(a) => Some(Gpa(a)),
            None => None,
        }
    }
}

impl Gfn {
    /// The first byte of the frame.
    pub const fn gpa(self) -> Gpa {
        Gpa(self.0 << PAGE_SHIFT)
    }
}

/// The address `bytes` further on (wrapping is the caller's to rule out, as with `u64`).
impl core::ops::Add<u64> for Gpa {
    type Output = Gpa;
    fn add(self, bytes: u64) -> Gpa {
        Gpa(self.0 + bytes)
    }
}

/// The frame `pages` further on.
impl core::ops::Add<u64> for Gfn {
    type Output = Gfn;
    fn add(self, pages: u64) -> Gfn {
        Gfn(self.0 + pages)
    }
}

/// A rust-vmm guest address is a guest physical address (feature `vm-memory`).
#[cfg(feature = "vm-memory")]
impl From<vm_memory::GuestAddress> for Gpa {
    fn from(a: vm_memory::GuestAddress) -> Self {
        Gpa(a.0)
    }
}

/// A guest physical address as rust-vmm's `GuestAddress` (feature `vm-memory`).
#[cfg(feature = "vm-memory")]
impl From<Gpa> for vm_memory::GuestAddress {
    fn from(gpa: Gpa) -> Self {
        vm_memory::GuestAddress(gpa.0)
    }
}

impl fmt::Display for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// The number, in hex (`{:#x}` prints `0x…`).
impl fmt::LowerHex for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

/// The number, in hex (`{:#x}` prints `0x…`).
impl fmt::LowerHex for Gfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl fmt::Display for Gfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gfn {:#x}", self.0)
    }
}

/// A mapping level: the size of one leaf in the second-level page tables.
///
/// Ordered by size, so `Level::G1 > Level::M2 > Level::K4`; the default is the base page, 4K.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Level {
    /// A 4 KiB page (PG_LEVEL_4K).
    #[default]
    K4,
    /// A 2 MiB page (PG_LEVEL_2M).
    M2,
    /// A 1 GiB page (PG_LEVEL_1G).
    G1,
}

impl Level {
    /// All levels, smallest first.
    pub const ALL: [Level; 3] = [Level::K4, Level::M2, Level::G1];
    /// The large levels tracked per memslot, smallest first.
    pub const LARGE: [Level; 2] = [Level::M2, Level::G1];

    /// log2 of the number of 4 KiB pages in one page of this level.
    pub const fn page_shift(self) -> u32 {
        match self {
            Level::K4 => 0,
            Level::M2 => 9,
            Level::G1 => 18,
        }
    }
    /// Number of 4 KiB pages in one page of this level.
    pub const fn pages(self) -> u64 {
        1 << self.page_shift()
    }
    /// Size in bytes of one page of this level.
    pub const fn size(self) -> u64 {
        PAGE_SIZE << self.page_shift()
    }
    /// Index of this level in [`Level::ALL`] (0 for 4K).
    pub const fn index(self) -> usize {
        match self {
            Level::K4 => 0,
            Level::M2 => 1,
            Level::G1 => 2,
        }
    }
    /// The next smaller level, if any.
    pub const fn smaller(self) -> Option<Level> {
        match self {
            Level::K4 => None,
            Level::M2 => Some(Level::K4),
            Level::G1 => Some(Level::M2),
        }
    }
    /// The next larger level, if any.
    pub const fn larger(self) -> Option<Level> {
        match self {
            Level::K4 => Some(Level::M2),
            Level::M2 => Some(Level::G1),
            Level::G1 => None,
        }
    }
    /// The first gfn of the page of this level that contains `gfn`.
    pub const fn align_down(self, gfn: Gfn) -> Gfn {
        Gfn(self.align_gfn(gfn.0))
    }
    /// Whether `gfn` is the first gfn of a page of this level.
    pub const fn is_aligned(self, gfn: Gfn) -> bool {
        self.is_aligned_gfn(gfn.0)
    }
    /// The gfns of the page of this level that holds `gfn`.
    pub const fn page_of(self, gfn: Gfn) -> GfnRange {
        let start = self.align_gfn(gfn.0);
        GfnRange::new(Gfn(start), Gfn(start + self.pages()))
    }
    /// [`Level::align_down`] of a gfn's number, for the store's and the model's arithmetic.
    pub(crate) const fn align_gfn(self, gfn: u64) -> u64 {
        gfn & !(self.pages() - 1)
    }
    /// [`Level::is_aligned`] of a gfn's number.
    pub(crate) const fn is_aligned_gfn(self, gfn: u64) -> bool {
        gfn & (self.pages() - 1) == 0
    }
    /// The name used by KVM and the op-log: `4K`, `2M` or `1G`.
    pub const fn name(self) -> &'static str {
        match self {
            Level::K4 => "4K",
            Level::M2 => "2M",
            Level::G1 => "1G",
        }
    }
    /// Parses `4K`, `2M` or `1G`.
    pub fn from_name(s: &str) -> Option<Level> {
        match s {
            "4K" => Some(Level::K4),
            "2M" => Some(Level::M2),
            "1G" => Some(Level::G1),
            _ => None,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A half-open range of gfns `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GfnRange {
    /// First gfn of the range.
    pub start: Gfn,
    /// One past the last gfn.
    pub end: Gfn,
}

impl GfnRange {
    /// A range; `start <= end` is the caller's promise (empty ranges are allowed).
    pub const fn new(start: Gfn, end: Gfn) -> Self {
        GfnRange { start, end }
    }
    /// The `pages` gfns from `start` (the end saturates at the 64-bit space's end).
    pub const fn from_len(start: Gfn, pages: u64) -> Self {
        GfnRange {
            start,
            end: Gfn(start.0.saturating_add(pages)),
        }
    }
    /// The gfns of every page the bytes `[gpa, gpa + size)` touch: the start rounded down, the
    /// end up (bytes reaching past the 64-bit space end at its last page); empty when `size` is 0.
    pub const fn covering(gpa: Gpa, size: u64) -> Self {
        let start = gpa.gfn();
        if size == 0 {
            return GfnRange { start, end: start };
        }
        let end = match gpa.0.checked_add(size) {
            Some(end) => end.div_ceil(PAGE_SIZE),
            None => GFN_END,
        };
        GfnRange {
            start,
            end: Gfn(end),
        }
    }
    /// Number of gfns in the range.
    pub const fn len(&self) -> u64 {
        self.end.0.saturating_sub(self.start.0)
    }
    /// Whether the range holds no gfn.
    pub const fn is_empty(&self) -> bool {
        self.end.0 <= self.start.0
    }
    /// Whether `gfn` lies in the range.
    pub const fn contains(&self, gfn: Gfn) -> bool {
        self.start.0 <= gfn.0 && gfn.0 < self.end.0
    }
    /// The overlap of two ranges, if any.
    pub fn intersect(&self, other: &GfnRange) -> Option<GfnRange> {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        (start < end).then_some(GfnRange { start, end })
    }
    /// Whether `other` lies wholly inside this range.
    pub const fn covers(&self, other: &GfnRange) -> bool {
        self.start.0 <= other.start.0 && other.end.0 <= self.end.0
    }
    /// The byte size of the range (saturating at `u64::MAX` for the whole space).
    pub const fn bytes(&self) -> u64 {
        self.len().saturating_mul(PAGE_SIZE)
    }
    /// The gfns as numbers, for arithmetic and iteration.
    pub const fn gfns(&self) -> core::ops::Range<u64> {
        self.start.0..self.end.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_rounds_out_to_whole_pages_and_saturates() {
        assert_eq!(
            GfnRange::covering(Gpa(0x1000), 0x2000),
            GfnRange::new(Gfn(1), Gfn(3))
        );
        assert_eq!(
            GfnRange::covering(Gpa(0x1fff), 2),
            GfnRange::new(Gfn(1), Gfn(3))
        );
        assert!(GfnRange::covering(Gpa(0x1800), 0).is_empty());
        assert_eq!(
            GfnRange::covering(Gpa(u64::MAX - 0xfff), 0x1000),
            GfnRange::new(Gfn(GFN_END - 1), Gfn(GFN_END))
        );
        assert_eq!(GfnRange::covering(Gpa(0), u64::MAX).end, Gfn(GFN_END));
    }

    #[test]
    fn gpa_and_gfn_convert_without_losing_the_page_offset_rule() {
        let gpa = Gpa(0x1_2345_6789);
        assert_eq!(gpa.gfn(), Gfn(0x12_3456));
        assert_eq!(gpa.gfn().gpa(), Gpa(0x1_2345_6000));
        assert!(Gpa(2 << 20).is_aligned(Level::M2) && !gpa.is_aligned(Level::K4));
    }

    #[cfg(feature = "vm-memory")]
    #[test]
    fn gpa_and_guest_address_convert_both_ways() {
        let a = vm_memory::GuestAddress(0x1_0000_2000);
        let gpa = Gpa::from(a);
        assert_eq!(gpa, Gpa(0x1_0000_2000));
        assert_eq!(vm_memory::GuestAddress::from(gpa), a);
    }
}

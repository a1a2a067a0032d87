//! The one trait every design implements, and the memslot descriptor it is handed.
//!
//! Requests are validated once, at the edge ([`crate::Vm`]), with KVM's rules; a design only ever
//! sees valid, typed changes: a gfn range and its new attributes, a slot to create, delete, move or
//! re-flag. The fault path ([`Design::max_mapping_level`]) answers with the core's [`MaxLevel`], so
//! that every design can be checked against every other on every query.

use cvmem::{
    Access, Error, Gfn, GfnRange, Level, MaxLevel, MemoryFault, SlotFlags, PAGE_SHIFT, PAGE_SIZE,
};

/// A valid memslot as a design sees it: the core's memslot without its large-page info (the
/// geometry rules are the core's, [`cvmem::memslot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    /// Slot id (0 ..= 32763).
    pub id: u32,
    /// First gfn.
    pub base_gfn: u64,
    /// Size in 4 KiB pages (at least 1).
    pub npages: u64,
    /// Flags (guest-memfd, dirty-log, readonly).
    pub flags: SlotFlags,
    /// Host virtual address of the first byte.
    pub uaddr: u64,
    /// The largest mapping the backing memory allows.
    pub backing: Level,
}

impl From<&cvmem::Memslot> for Slot {
    fn from(s: &cvmem::Memslot) -> Self {
        Slot {
            id: s.id(),
            base_gfn: s.base_gfn().0,
            npages: s.npages(),
            flags: s.flags(),
            uaddr: s.uaddr(),
            backing: s.backing(),
        }
    }
}

impl Slot {
    /// One past the last gfn.
    pub const fn end_gfn(&self) -> u64 {
        self.base_gfn + self.npages
    }
    /// The gfns the slot covers.
    pub const fn range(&self) -> GfnRange {
        GfnRange::new(Gfn(self.base_gfn), Gfn(self.end_gfn()))
    }
    /// Whether `gfn` lies in the slot.
    pub const fn contains(&self, gfn: u64) -> bool {
        self.base_gfn <= gfn && gfn < self.end_gfn()
    }
    /// The largest level any fault in the slot may use: the backing, or 4K under dirty logging.
    pub const fn max_level(&self) -> Level {
        self.flags.max_level(self.backing)
    }
    /// Whether host and guest addresses are not congruent modulo `level` (KVM disallows the
    /// whole level in the slot).
    pub const fn misaligned(&self, level: Level) -> bool {
        cvmem::memslot::misaligned(self.base_gfn, self.uaddr, level)
    }
    /// The large page of `level` around `gfn`, if it lies wholly inside the slot.
    pub const fn large_page(&self, gfn: u64, level: Level) -> Option<GfnRange> {
        let start = level.align_down(cvmem::Gfn(gfn)).0;
        let end = start + level.pages();
        if self.base_gfn <= start && end <= self.end_gfn() {
            Some(GfnRange::new(Gfn(start), Gfn(end)))
        } else {
            None
        }
    }
    /// Whether the geometry alone (backing, dirty logging, alignment, slot bounds) allows a
    /// mapping of `level` at `gfn`; attributes still have to be uniform.
    pub const fn geometry_allows(&self, gfn: u64, level: Level) -> bool {
        match level {
            Level::K4 => true,
            _ => {
                (level as u8) <= (self.max_level() as u8)
                    && !self.misaligned(level)
                    && self.large_page(gfn, level).is_some()
            }
        }
    }
    /// Size in bytes.
    pub const fn size(&self) -> u64 {
        self.npages * PAGE_SIZE
    }
}

/// A private/shared tracker with hugepage eligibility: one of the designs being compared.
///
/// Every method receives only valid requests (see [`crate::Vm`]); errors are reserved for
/// allocation failure. All designs must give the same answer to every query.
pub trait Design {
    /// Short name (`linux`, `option-a`, `bitmap`, `rangemap`, `cvmem`, …).
    fn name(&self) -> &'static str;

    /// KVM_SET_MEMORY_ATTRIBUTES on a valid gfn range, memslots or not.
    fn set_attributes(&mut self, range: GfnRange, attributes: u64) -> Result<(), Error>;

    /// A new memslot (no overlap with existing ones).
    fn create_slot(&mut self, slot: &Slot) -> Result<(), Error>;

    /// Deletes an existing memslot.
    fn delete_slot(&mut self, slot: &Slot);

    /// Moves `old` to `new.base_gfn` (and maybe turns dirty logging on or off). Only slots
    /// without guest-memfd move; the new range overlaps no other slot.
    fn move_slot(&mut self, old: &Slot, new: &Slot) -> Result<(), Error>;

    /// Turns dirty logging of `old` on or off, as in `new` (same range).
    fn set_dirty_log(&mut self, old: &Slot, new: &Slot);

    /// The fault path: the largest level at which the page at `gpa` may be mapped for an access
    /// of kind `access`, or why it cannot be (same answer type as
    /// [`cvmem::Tracker::max_mapping_level`]).
    fn max_mapping_level(&self, gpa: u64, access: Access) -> MaxLevel;

    /// Bytes of memory the design's tracking state takes, counted exactly as it is allocated
    /// (for `linux`: as the kernel would allocate it).
    fn heap_bytes(&self) -> usize;

    /// The most [`Design::heap_bytes`] ever held at once, including inside an operation (for
    /// `linux`, the entries reserved before they are stored). At least the current value.
    fn peak_heap_bytes(&self) -> usize {
        self.heap_bytes()
    }

    /// Bytes of page-table pages the design forces to exist (0 for designs that do not need
    /// mappings).
    fn table_bytes(&self) -> usize {
        0
    }

    /// Bytes this process holds for the design (differs from [`Design::heap_bytes`] only for
    /// models of another allocator, such as `linux`).
    fn host_bytes(&self) -> usize {
        self.heap_bytes()
    }
}

/// The common shape of the fault path, shared by every design so that they differ only in the
/// data structures they consult: slot lookup, guest-memfd check, attribute check, then the
/// largest level whose large page the design allows.
///
/// `private` answers "is this gfn private?"; `allows(level)` answers "is the `level` page around
/// the gfn, known to lie inside the slot with congruent addresses, uniform?".
#[inline]
pub fn answer(
    slot: Option<&Slot>,
    gpa: u64,
    access: Access,
    private: impl FnOnce() -> bool,
    mut allows: impl FnMut(Level) -> bool,
) -> MaxLevel {
    let gfn = gpa >> PAGE_SHIFT;
    let Some(slot) = slot else {
        return MaxLevel::NoSlot;
    };
    let fault = MaxLevel::MemoryFault(MemoryFault {
        gpa: cvmem::Gpa(gfn << PAGE_SHIFT),
        size: PAGE_SIZE,
        private: access.is_private(),
    });
    if access.is_private() && !slot.flags.guest_memfd {
        return fault;
    }
    if private() != access.is_private() {
        return fault;
    }
    for level in [Level::G1, Level::M2] {
        if slot.geometry_allows(gfn, level) && allows(level) {
            return MaxLevel::Level(level);
        }
    }
    MaxLevel::Level(Level::K4)
}

/// A compact code for a [`MaxLevel`] (0 no-slot, 1 memory-fault, 2 4K, 3 2M, 4 1G), used to
/// compare answers of designs that run one after the other.
pub const fn answer_code(a: &MaxLevel) -> u8 {
    match a {
        MaxLevel::NoSlot => 0,
        MaxLevel::MemoryFault(_) => 1,
        MaxLevel::Level(Level::K4) => 2,
        MaxLevel::Level(Level::M2) => 3,
        MaxLevel::Level(Level::G1) => 4,
    }
}

/// The name of an answer code, as the op-log prints query results.
pub const fn answer_name(code: u8) -> &'static str {
    match code {
        0 => "no-slot",
        1 => "memory-fault",
        2 => "4K",
        3 => "2M",
        4 => "1G",
        _ => "?",
    }
}

//! Memslots as KVM_SET_USER_MEMORY_REGION2 defines them.

use crate::addr::{Gfn, GfnRange, Gpa, Level, PAGE_SHIFT, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::gmem::GmemBinding;
use crate::lpage::LpageInfo;

/// The largest user memslot id on x86 KVM (KVM_USER_MEM_SLOTS - 1).
pub const MAX_SLOT_ID: u32 = 32763;
/// The largest memslot in pages on x86-64 (KVM_MEM_MAX_NR_PAGES).
pub const MAX_SLOT_PAGES: u64 = (1 << 31) - 1;

/// Flags of a memslot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SlotFlags {
    /// KVM_MEM_GUEST_MEMFD: the slot can back private memory.
    pub guest_memfd: bool,
    /// KVM_MEM_LOG_DIRTY_PAGES: dirty logging forces 4K mappings.
    pub dirty_log: bool,
    /// KVM_MEM_READONLY.
    pub readonly: bool,
}

impl SlotFlags {
    /// The largest level any fault in a slot with these flags may use: its backing's, or 4K
    /// under dirty logging.
    pub const fn max_level(self, backing: Level) -> Level {
        if self.dirty_log {
            Level::K4
        } else {
            backing
        }
    }
}

/// Whether a slot whose first gfn is `base_gfn` and whose host address is `uaddr` cannot map
/// `level` anywhere, because guest and host addresses are not congruent modulo the level
/// (KVM's whole-level disallow).
pub const fn misaligned(base_gfn: u64, uaddr: u64, level: Level) -> bool {
    (base_gfn ^ (uaddr >> PAGE_SHIFT)) & (level.pages() - 1) != 0
}

/// A request to create, delete, move or re-flag a memslot (KVM_SET_USER_MEMORY_REGION2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MemoryRegion {
    /// Slot id, 0 ..= [`MAX_SLOT_ID`].
    pub slot: u32,
    /// Guest physical address of the first byte.
    pub gpa: Gpa,
    /// Size in bytes; 0 deletes the slot.
    pub size: u64,
    /// Flags.
    pub flags: SlotFlags,
    /// Host virtual address of the first byte; `None`: equal to `gpa` for a new slot, unchanged
    /// for an existing one.
    pub uaddr: Option<u64>,
    /// The largest mapping the backing memory allows; `None`: 1G for a new slot, unchanged for
    /// an existing one.
    pub backing: Option<Level>,
    /// The guest_memfd range that backs the slot's private memory (`guest_memfd` +
    /// `guest_memfd_offset`), with [`SlotFlags::guest_memfd`] only. `None`: a file the tracker
    /// does not model (PRIVATE kept per VM), or no file.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub gmem: Option<GmemBinding>,
}

impl MemoryRegion {
    /// The host address a new slot gets: `uaddr`, or the gpa when none is given.
    pub const fn new_slot_uaddr(&self) -> u64 {
        match self.uaddr {
            Some(uaddr) => uaddr,
            None => self.gpa.0,
        }
    }
    /// The backing a new slot gets: `backing`, or 1G when none is given.
    pub const fn new_slot_backing(&self) -> Level {
        match self.backing {
            Some(backing) => backing,
            None => Level::G1,
        }
    }
}

/// What a [`MemoryRegion`] request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotChange {
    /// A new slot.
    Created,
    /// The slot was deleted; its old range.
    Deleted {
        /// The range it covered.
        old: GfnRange,
    },
    /// The slot moved (and maybe changed dirty logging).
    Moved {
        /// The range it covered before.
        old: GfnRange,
    },
    /// Dirty logging was turned on or off.
    DirtyLog {
        /// The new state.
        enabled: bool,
    },
    /// The request matched the slot as it is.
    Unchanged,
}

/// One memslot and its large-page info.
#[derive(Clone, Debug)]
pub struct Memslot {
    pub(crate) id: u32,
    pub(crate) base_gfn: u64,
    pub(crate) npages: u64,
    pub(crate) flags: SlotFlags,
    pub(crate) uaddr: u64,
    pub(crate) backing: Level,
    /// Large-page info for 2M (index 0) and 1G (index 1).
    pub(crate) lpage: [LpageInfo; 2],
    /// The guest_memfd range bound to the slot.
    pub(crate) gmem: Option<GmemBinding>,
}

impl Memslot {
    /// The slot id.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// First gfn.
    pub fn base_gfn(&self) -> Gfn {
        Gfn(self.base_gfn)
    }
    /// Size in pages.
    pub fn npages(&self) -> u64 {
        self.npages
    }
    /// The gfns the slot covers.
    pub fn range(&self) -> GfnRange {
        GfnRange::from_len(Gfn(self.base_gfn), self.npages)
    }
    /// Guest physical address of the first byte.
    pub fn gpa(&self) -> Gpa {
        Gpa(self.base_gfn << PAGE_SHIFT)
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.npages * PAGE_SIZE
    }
    /// Flags.
    pub fn flags(&self) -> SlotFlags {
        self.flags
    }
    /// Host virtual address of the first byte.
    pub fn uaddr(&self) -> u64 {
        self.uaddr
    }
    /// The largest mapping the backing allows.
    pub fn backing(&self) -> Level {
        self.backing
    }
    /// The guest_memfd range bound to the slot, if the tracker models its file.
    pub fn gmem(&self) -> Option<GmemBinding> {
        self.gmem
    }
    /// The largest level any fault in this slot may use: the backing, or 4K under dirty logging.
    pub fn max_level(&self) -> Level {
        self.flags.max_level(self.backing)
    }
    /// Whether `level` is disallowed everywhere in the slot because the host address and the
    /// GPA are not congruent modulo the level (KVM's whole-level disallow).
    pub fn misaligned(&self, level: Level) -> bool {
        misaligned(self.base_gfn, self.uaddr, level)
    }

    /// Whether the large page of `level` holding `gfn` lies wholly inside the slot
    /// ([`crate::lpage::inside`], the one formula).
    #[inline]
    pub(crate) fn lpage_inside(&self, level: Level, gfn: u64) -> bool {
        crate::lpage::inside(self.base_gfn, self.npages, level, gfn)
    }

    pub(crate) fn lpage(&self, level: Level) -> &LpageInfo {
        &self.lpage[level.index() - 1]
    }
    pub(crate) fn lpage_mut(&mut self, level: Level) -> &mut LpageInfo {
        &mut self.lpage[level.index() - 1]
    }
}

/// The checks KVM makes on a KVM_SET_USER_MEMORY_REGION2 request before it looks at the
/// existing slots: id, alignment, overflow, size limit, flag combinations.
pub fn validate(r: &MemoryRegion) -> Result<()> {
    if r.slot > MAX_SLOT_ID {
        return Err(Error::SlotIdOutOfRange {
            slot: r.slot,
            max: MAX_SLOT_ID,
        });
    }
    if !r.gpa.is_aligned(Level::K4) {
        return Err(Error::Unaligned {
            what: crate::Arg::MemslotGpa,
            value: r.gpa.0,
            align: PAGE_SIZE,
        });
    }
    if r.size % PAGE_SIZE != 0 {
        return Err(Error::Unaligned {
            what: crate::Arg::MemslotSize,
            value: r.size,
            align: PAGE_SIZE,
        });
    }
    if let Some(uaddr) = r.uaddr.filter(|u| u % PAGE_SIZE != 0) {
        return Err(Error::Unaligned {
            what: crate::Arg::MemslotUaddr,
            value: uaddr,
            align: PAGE_SIZE,
        });
    }
    if r.gpa.checked_add(r.size).is_none() {
        return Err(Error::Overflow {
            what: crate::Arg::Memslot,
            start: r.gpa.0,
            size: r.size,
        });
    }
    if r.size / PAGE_SIZE > MAX_SLOT_PAGES {
        return Err(Error::SlotTooLarge {
            pages: r.size / PAGE_SIZE,
        });
    }
    if r.flags.guest_memfd && r.flags.dirty_log {
        return Err(Error::InvalidFlags {
            why: crate::FlagsFault::GuestMemfdWithDirtyLog,
        });
    }
    // KVM has no read-only private memory: it refuses KVM_MEM_READONLY with KVM_MEM_GUEST_MEMFD
    // (found by `cvmem kvm-diff` against Linux 6.12; op-log v1 did not say).
    if r.flags.guest_memfd && r.flags.readonly {
        return Err(Error::InvalidFlags {
            why: crate::FlagsFault::GuestMemfdWithReadonly,
        });
    }
    // KVM ignores the file without the flag; a library that did so would hide a VMM's bug.
    if r.gmem.is_some() && !r.flags.guest_memfd && r.size != 0 {
        return Err(Error::GmemBinding {
            slot: r.slot,
            given: true,
        });
    }
    if let Some(b) = r.gmem.filter(|b| b.offset.0 % PAGE_SIZE != 0) {
        return Err(Error::Unaligned {
            what: crate::Arg::GmemOffset,
            value: b.offset.0,
            align: PAGE_SIZE,
        });
    }
    Ok(())
}

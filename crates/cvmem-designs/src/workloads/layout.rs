//! Where a guest's memory lies: QEMU/TDX style memslots.
//!
//! As in the published 4 GiB TD: low RAM at 0 (up to 2 GiB), high RAM from 4 GiB, the firmware
//! (TDVF) image as a 4 MiB slot at 0xffc00000, all guest-memfd. High RAM above 4 TiB is split
//! into 4 TiB memslots (a slot holds at most 2^31 - 1 pages).

use cvmem::Gpa;
use cvmem::SlotFlags;
use cvmem_oplog::Op;

const G: u64 = 1 << 30;
/// Low RAM ends here at most: the 32-bit PCI hole starts at 2 GiB.
pub const LOW_RAM_END: u64 = 2 * G;
/// High RAM starts at 4 GiB.
pub const HIGH_RAM_START: u64 = 4 * G;
/// The firmware (TDVF) slot: 4 MiB below 4 GiB.
pub const FIRMWARE: (u64, u64) = (0xffc0_0000, 4 << 20);
/// The largest high-RAM memslot this layout makes.
pub const MAX_SLOT_BYTES: u64 = 4 << 40;

/// One RAM memslot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamSlot {
    /// Slot id.
    pub id: u64,
    /// First byte.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
}

impl RamSlot {
    /// One past the last byte.
    pub const fn end(&self) -> u64 {
        self.gpa + self.size
    }
}

/// A guest's RAM layout.
#[derive(Clone, Debug)]
pub struct Layout {
    /// RAM memslots in address order (low RAM, then high RAM pieces).
    pub ram: Vec<RamSlot>,
    /// The firmware memslot.
    pub firmware: RamSlot,
}

impl Layout {
    /// The layout of a guest with `guest_bytes` of RAM.
    pub fn new(guest_bytes: u64) -> Self {
        let low = guest_bytes.min(LOW_RAM_END);
        let mut ram = vec![RamSlot {
            id: 0,
            gpa: 0,
            size: low,
        }];
        let mut left = guest_bytes - low;
        let mut gpa = HIGH_RAM_START;
        let mut id = 1;
        while left > 0 {
            let size = left.min(MAX_SLOT_BYTES);
            ram.push(RamSlot { id, gpa, size });
            id = if id == 1 { 3 } else { id + 1 };
            gpa += size;
            left -= size;
        }
        Layout {
            ram,
            firmware: RamSlot {
                id: 2,
                gpa: FIRMWARE.0,
                size: FIRMWARE.1,
            },
        }
    }

    /// Total RAM bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.ram.iter().map(|s| s.size).sum()
    }

    /// One past the highest RAM byte.
    pub fn ram_end(&self) -> u64 {
        self.ram.last().map_or(0, |s| s.end())
    }

    /// The `memslot` lines QEMU issues, every slot guest-memfd backed.
    pub fn memslot_ops(&self) -> Vec<Op> {
        let flags = SlotFlags {
            guest_memfd: true,
            ..Default::default()
        };
        let mut slots: Vec<RamSlot> = self.ram.clone();
        slots.push(self.firmware);
        slots.sort_by_key(|s| s.gpa);
        slots
            .iter()
            .map(|s| Op::Memslot {
                gmem: None,
                slot: s.id,
                gpa: Gpa(s.gpa),
                size: s.size,
                flags,
                uaddr: None,
                backing: None,
            })
            .collect()
    }

    /// The byte at `offset` into RAM, counting slots in address order (wraps at the end).
    pub fn ram_at(&self, offset: u64) -> u64 {
        let mut off = offset % self.ram_bytes().max(1);
        for s in &self.ram {
            if off < s.size {
                return s.gpa + off;
            }
            off -= s.size;
        }
        0
    }

    /// The high-RAM slots (from 4 GiB), or low RAM when the guest has none.
    pub fn high(&self) -> &[RamSlot] {
        if self.ram.len() > 1 {
            &self.ram[1..]
        } else {
            &self.ram[..1]
        }
    }
}

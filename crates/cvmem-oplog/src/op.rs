//! The operations of the op-log v1 as typed values, and their canonical text.

use core::fmt;

use cvmem::hypercall::MapGpaRange;
pub use cvmem::mmu::Recovery;
use cvmem::Access;
use cvmem::Error;
use cvmem::Gpa;
use cvmem::Level;
use cvmem::KVM_MEMORY_ATTRIBUTE_PRIVATE;
use cvmem::{AttrMode, GmemBinding, GmemFlags, GmemId, GmemOffset, MergePolicy};
use cvmem::{MemoryRegion, SlotFlags, MAX_SLOT_ID};

/// The page-table layout of the TDP MMU model (`mmu LAYOUT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// TDX-like: a private root and a shared root.
    Split,
    /// SNP-like: one root whose leaves are marked private or shared.
    Unified,
}

impl Layout {
    /// The op-log keyword: `split` or `unified`.
    pub const fn name(self) -> &'static str {
        match self {
            Layout::Split => "split",
            Layout::Unified => "unified",
        }
    }
    /// Parses `split` or `unified`.
    pub fn from_name(s: &str) -> Option<Layout> {
        match s {
            "split" => Some(Layout::Split),
            "unified" => Some(Layout::Unified),
            _ => None,
        }
    }
}

/// The model's layout for the op-log keyword (`split` has its shared bit at 47).
impl From<Layout> for cvmem::mmu::Layout {
    fn from(l: Layout) -> Self {
        match l {
            Layout::Split => cvmem::mmu::Layout::SPLIT,
            Layout::Unified => cvmem::mmu::Layout::Unified,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One operation of an op-log, as written; the replay engine checks the rules of the spec.
///
/// Values are kept as written (for example a `memslot` SLOT beyond 32763 or an unaligned GPA), because
/// the spec makes those *operation* errors (EINVAL), not parse errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `memslot SLOT GPA SIZE [FLAG…]`: KVM_SET_USER_MEMORY_REGION2.
    Memslot {
        /// The slot id (valid ids are 0 … 32763; the replay engine checks).
        slot: u64,
        /// Guest physical address of the slot's first byte.
        gpa: Gpa,
        /// Size in bytes; 0 deletes the slot.
        size: u64,
        /// `guest-memfd`, `dirty-log`, `readonly`.
        flags: SlotFlags,
        /// `uaddr=ADDR`: host virtual address of the first byte (default: the GPA).
        uaddr: Option<u64>,
        /// `backing=4K|2M|1G`: largest host mapping of the backing memory (default: 1G).
        backing: Option<Level>,
        /// `gmem=FILE:OFFSET` (op-log v2): the guest_memfd range bound to the slot.
        gmem: Option<(u64, GmemOffset)>,
    },
    /// `attrs GPA SIZE ATTRIBUTES`: KVM_SET_MEMORY_ATTRIBUTES.
    Attrs {
        /// First byte of the range.
        gpa: Gpa,
        /// Size in bytes.
        size: u64,
        /// The attribute mask (`private` = 0x8, `shared` = 0).
        attributes: u64,
    },
    /// `map-gpa GPA NPAGES FLAGS`: a guest's KVM_HC_MAP_GPA_RANGE.
    MapGpa {
        /// First byte of the range.
        gpa: u64,
        /// Number of 4 KiB pages.
        npages: u64,
        /// The hypercall's third argument (bit 4 private, bits 3:0 page-size hint).
        flags: u64,
    },
    /// `query GPA private|shared`: the fault path's question for one access.
    Query {
        /// The address accessed.
        gpa: Gpa,
        /// The kind of access.
        access: Access,
    },
    /// `fault GPA private|shared`: a guest access through the MMU model.
    Fault {
        /// The address accessed.
        gpa: Gpa,
        /// The kind of access.
        access: Access,
    },
    /// `fault-range GPA SIZE private|shared`: a `fault` on every 4 KiB page of the range.
    FaultRange {
        /// First byte of the range.
        gpa: Gpa,
        /// Size in bytes.
        size: u64,
        /// The kind of access.
        access: Access,
    },
    /// `mmu LAYOUT [recovery=POLICY]`: configures the MMU model (first operation only).
    Mmu {
        /// `split` or `unified`.
        layout: Layout,
        /// The recovery policy, if given (default `on-fault`).
        recovery: Option<Recovery>,
    },
    /// `accept GPA 4K|2M|1G`: a TDX guest accepting a private page at a level.
    Accept {
        /// The page accepted.
        gpa: Gpa,
        /// The level accepted at.
        level: Level,
    },
    /// `attr-mode per-vm|per-gmem` (v2): where the VM keeps PRIVATE.
    AttrMode {
        /// The mode.
        mode: AttrMode,
    },
    /// `gmem SIZE [mmap] [init-shared] [folio=4K|2M|1G] [merge=never|punch-hole|eager]` (v2):
    /// KVM_CREATE_GUEST_MEMFD; files are numbered 0, 1, … in creation order.
    Gmem {
        /// Size in bytes.
        size: u64,
        /// `mmap`, `init-shared`, `folio=`.
        flags: GmemFlags,
        /// `merge=`: when the file's split folios merge (default: the executor's).
        merge: Option<MergePolicy>,
    },
    /// `punch-hole FILE OFFSET SIZE` (v2): `fallocate(PUNCH_HOLE)` on a file.
    PunchHole {
        /// The file.
        file: u64,
        /// First byte.
        offset: GmemOffset,
        /// Size in bytes.
        size: u64,
    },
    /// `gmem-attrs FILE OFFSET SIZE ATTRIBUTES` (v2): KVM_SET_MEMORY_ATTRIBUTES2 on a file.
    GmemAttrs {
        /// The file.
        file: u64,
        /// First byte of the range in the file.
        offset: GmemOffset,
        /// Size in bytes.
        size: u64,
        /// `private` (0x8) or `shared` (0), or a number.
        attributes: u64,
    },
    /// `gmem-pin FILE OFFSET` (v2): the host takes a reference on a shared file page.
    GmemPin {
        /// The file.
        file: u64,
        /// A byte in the page.
        offset: GmemOffset,
    },
    /// `gmem-unpin FILE OFFSET` (v2): the host drops a reference it took.
    GmemUnpin {
        /// The file.
        file: u64,
        /// A byte in the page.
        offset: GmemOffset,
    },
}

/// A file number of a v2 line as the core's id (numbers beyond 32 bits name no file).
pub(crate) fn gmem_id(file: u64) -> GmemId {
    GmemId(u32::try_from(file).unwrap_or(u32::MAX))
}

impl Op {
    /// For a `memslot` line, the KVM_SET_USER_MEMORY_REGION2 request it makes, or EINVAL for a
    /// slot id beyond the user memslots (which the grammar lets through); `None` for any other
    /// operation. The one place a `memslot` line becomes a typed request.
    pub fn memory_region(&self) -> Option<Result<MemoryRegion, Error>> {
        let Op::Memslot {
            slot,
            gpa,
            size,
            flags,
            uaddr,
            backing,
            gmem,
        } = *self
        else {
            return None;
        };
        let gmem = gmem.map(|(file, offset)| GmemBinding {
            gmem: gmem_id(file),
            offset,
        });
        Some(
            match u32::try_from(slot).ok().filter(|&s| s <= MAX_SLOT_ID) {
                Some(slot) => Ok(MemoryRegion {
                    gmem,
                    slot,
                    gpa,
                    size,
                    flags,
                    uaddr,
                    backing,
                }),
                None => Err(Error::SlotIdOutOfRange {
                    slot: u32::try_from(slot).unwrap_or(u32::MAX),
                    max: MAX_SLOT_ID,
                }),
            },
        )
    }

    /// For an `attrs` or `map-gpa` line, the attribute change it asks for, `(gpa, size,
    /// attributes)` — a `map-gpa` decoded as KVM decodes the hypercall, or the error it gives;
    /// `None` for any other operation. For tools that replay an op-log's conversions alone.
    pub fn attribute_change(&self) -> Option<Result<(Gpa, u64, u64), Error>> {
        match *self {
            Op::Attrs {
                gpa,
                size,
                attributes,
            } => Some(Ok((gpa, size, attributes))),
            Op::MapGpa { gpa, npages, flags } => Some(
                MapGpaRange::decode(gpa, npages, flags).map(|r| (r.gpa, r.size(), r.attributes())),
            ),
            _ => None,
        }
    }

    /// The operation keyword: `memslot`, `attrs`, `map-gpa`, `query`, `fault`, `fault-range`, `mmu`
    /// or `accept`.
    pub const fn name(&self) -> &'static str {
        match self {
            Op::Memslot { .. } => "memslot",
            Op::Attrs { .. } => "attrs",
            Op::MapGpa { .. } => "map-gpa",
            Op::Query { .. } => "query",
            Op::Fault { .. } => "fault",
            Op::FaultRange { .. } => "fault-range",
            Op::Mmu { .. } => "mmu",
            Op::Accept { .. } => "accept",
            Op::AttrMode { .. } => "attr-mode",
            Op::Gmem { .. } => "gmem",
            Op::PunchHole { .. } => "punch-hole",
            Op::GmemAttrs { .. } => "gmem-attrs",
            Op::GmemPin { .. } => "gmem-pin",
            Op::GmemUnpin { .. } => "gmem-unpin",
        }
    }
}

/// Prints the operation in canonical op-log syntax: the keyword, the slot id in decimal, every other
/// number in hexadecimal, attributes 0 and 0x8 as `shared` and `private`, flags in a fixed order.
/// [`parse_line`](super::parse_line) reads the text back to the same `Op`.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match *self {
            Op::Memslot {
                slot,
                gpa,
                size,
                flags,
                uaddr,
                backing,
                gmem,
            } => {
                write!(f, " {slot} {gpa:#x} {size:#x}")?;
                if flags.guest_memfd {
                    f.write_str(" guest-memfd")?;
                }
                if flags.dirty_log {
                    f.write_str(" dirty-log")?;
                }
                if flags.readonly {
                    f.write_str(" readonly")?;
                }
                if let Some(uaddr) = uaddr {
                    write!(f, " uaddr={uaddr:#x}")?;
                }
                if let Some(backing) = backing {
                    write!(f, " backing={backing}")?;
                }
                if let Some((file, offset)) = gmem {
                    write!(f, " gmem={file}:{offset:#x}")?;
                }
                Ok(())
            }
            Op::Attrs {
                gpa,
                size,
                attributes,
            } => {
                write!(f, " {gpa:#x} {size:#x} ")?;
                write_attributes(f, attributes)
            }
            Op::MapGpa { gpa, npages, flags } => write!(f, " {gpa:#x} {npages:#x} {flags:#x}"),
            Op::Query { gpa, access } | Op::Fault { gpa, access } => {
                write!(f, " {gpa:#x} {}", access.name())
            }
            Op::FaultRange { gpa, size, access } => {
                write!(f, " {gpa:#x} {size:#x} {}", access.name())
            }
            Op::Mmu { layout, recovery } => {
                write!(f, " {layout}")?;
                match recovery {
                    Some(recovery) => write!(f, " recovery={recovery}"),
                    None => Ok(()),
                }
            }
            Op::Accept { gpa, level } => write!(f, " {gpa:#x} {level}"),
            Op::AttrMode { mode } => f.write_str(match mode {
                AttrMode::PerVm => " per-vm",
                AttrMode::PerGmem => " per-gmem",
            }),
            Op::Gmem { size, flags, merge } => {
                write!(f, " {size:#x}")?;
                if flags.mmap {
                    f.write_str(" mmap")?;
                }
                if flags.init_shared {
                    f.write_str(" init-shared")?;
                }
                if flags.folio != Level::K4 {
                    write!(f, " folio={}", flags.folio)?;
                }
                if let Some(merge) = merge {
                    write!(f, " merge={}", merge.name())?;
                }
                Ok(())
            }
            Op::PunchHole { file, offset, size } => write!(f, " {file} {offset:#x} {size:#x}"),
            Op::GmemAttrs {
                file,
                offset,
                size,
                attributes,
            } => {
                write!(f, " {file} {offset:#x} {size:#x} ")?;
                write_attributes(f, attributes)
            }
            Op::GmemPin { file, offset } | Op::GmemUnpin { file, offset } => {
                write!(f, " {file} {offset:#x}")
            }
        }
    }
}

fn write_attributes(f: &mut fmt::Formatter<'_>, attributes: u64) -> fmt::Result {
    match attributes {
        0 => f.write_str("shared"),
        KVM_MEMORY_ATTRIBUTE_PRIVATE => f.write_str("private"),
        other => write!(f, "{other:#x}"),
    }
}

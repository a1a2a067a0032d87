//! Decoding of the guest's KVM_HC_MAP_GPA_RANGE hypercall.

use crate::addr::{Gfn, GfnRange, Gpa, Level, GFN_END, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::tracker::{AttrRequest, Kind};
use crate::KVM_MEMORY_ATTRIBUTE_PRIVATE;

/// The hypercall number of KVM_HC_MAP_GPA_RANGE.
pub const KVM_HC_MAP_GPA_RANGE: u64 = 12;
/// Bit 4 of the attributes argument: make the range private (encrypted).
pub const KVM_MAP_GPA_RANGE_ENCRYPTED: u64 = 1 << 4;
/// Bits 3:0 of the attributes argument: the page-size hint.
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_MASK: u64 = 0xf;

/// A validated KVM_HC_MAP_GPA_RANGE request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MapGpaRange {
    /// First byte, page aligned.
    pub gpa: Gpa,
    /// Number of 4 KiB pages, at least 1.
    pub npages: u64,
    /// Make private (bit 4 set) or shared.
    pub private: bool,
    /// The guest's page-size hint: a hint only, it never changes the range.
    pub hint: Level,
}

impl MapGpaRange {
    /// Decodes the hypercall's three arguments: `a0` gpa, `a1` pages, `a2` attributes.
    pub fn decode(gpa: u64, npages: u64, attrs: u64) -> Result<Self> {
        let reserved = attrs & !(KVM_MAP_GPA_RANGE_ENCRYPTED | KVM_MAP_GPA_RANGE_PAGE_SZ_MASK);
        if reserved != 0 {
            return Err(Error::ReservedBits {
                what: crate::Arg::MapGpaFlags,
                bits: reserved,
            });
        }
        let hint = match attrs & KVM_MAP_GPA_RANGE_PAGE_SZ_MASK {
            0 => Level::K4,
            1 => Level::M2,
            2 => Level::G1,
            hint => return Err(Error::InvalidHint { hint }),
        };
        if gpa % PAGE_SIZE != 0 {
            return Err(Error::Unaligned {
                what: crate::Arg::MapGpaGpa,
                value: gpa,
                align: PAGE_SIZE,
            });
        }
        if npages == 0 {
            return Err(Error::ZeroSize {
                what: crate::Arg::MapGpaPages,
            });
        }
        let overflow = Error::Overflow {
            what: crate::Arg::MapGpaRange,
            start: gpa,
            size: npages,
        };
        let size = npages.checked_mul(PAGE_SIZE).ok_or(overflow.clone())?;
        gpa.checked_add(size).ok_or(overflow)?;
        Ok(MapGpaRange {
            gpa: Gpa(gpa),
            npages,
            private: attrs & KVM_MAP_GPA_RANGE_ENCRYPTED != 0,
            hint,
        })
    }

    /// Size in bytes (saturating: a value built by hand rather than by `decode` may be absurd).
    pub const fn size(&self) -> u64 {
        self.npages.saturating_mul(PAGE_SIZE)
    }

    /// The gfns the request covers (clipped to the gfn space for a hand-built value).
    pub const fn range(&self) -> GfnRange {
        let start = self.gpa.gfn();
        let end = start.0.saturating_add(self.npages);
        GfnRange::new(start, Gfn(if end > GFN_END { GFN_END } else { end }))
    }

    /// The memory attributes the request asks for.
    pub const fn attributes(&self) -> u64 {
        if self.private {
            KVM_MEMORY_ATTRIBUTE_PRIVATE
        } else {
            0
        }
    }

    /// The checked KVM_SET_MEMORY_ATTRIBUTES request the VMM makes for it (an error only for a
    /// value built by hand with an empty or out-of-space range: `decode` never makes one).
    pub fn request(&self) -> Result<AttrRequest> {
        AttrRequest::new(self.range(), Kind::from_private(self.private))
    }

    /// Encodes the request back into the hypercall's attributes argument.
    pub const fn flags(&self) -> u64 {
        let hint = match self.hint {
            Level::K4 => 0,
            Level::M2 => 1,
            Level::G1 => 2,
        };
        hint | if self.private {
            KVM_MAP_GPA_RANGE_ENCRYPTED
        } else {
            0
        }
    }
}

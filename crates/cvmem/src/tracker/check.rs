//! The one check of a KVM_SET_MEMORY_ATTRIBUTES request, as a value: what a VM accepts is fixed
//! once it exists (its supported attributes, where it keeps PRIVATE), so a writer that checks
//! many requests can keep it rather than read the tracker each time.

use crate::addr::{GfnRange, Gpa, Level, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::gmem::AttrMode;
use crate::tracker::AttrRequest;
use crate::{Arg, Unsupported, KVM_MEMORY_ATTRIBUTE_PRIVATE};

/// What KVM_SET_MEMORY_ATTRIBUTES accepts on one VM ([`crate::Tracker::attribute_check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttrCheck {
    supported: u64,
    mode: AttrMode,
    /// The bits refused: one test on the conversion path, the error worked out only when it
    /// fails.
    refused: u64,
}

impl AttrCheck {
    /// The check of a VM supporting `supported` and keeping PRIVATE as `mode` says.
    pub(crate) const fn new(supported: u64, mode: AttrMode) -> Self {
        let refused = match mode {
            AttrMode::PerVm => !supported,
            // Each guest_memfd keeps PRIVATE: it is set on the files.
            AttrMode::PerGmem => !supported | KVM_MEMORY_ATTRIBUTE_PRIVATE,
        };
        AttrCheck {
            supported,
            mode,
            refused,
        }
    }

    /// The supported attribute mask.
    pub const fn supported(&self) -> u64 {
        self.supported
    }

    /// Where the VM keeps PRIVATE.
    pub const fn mode(&self) -> AttrMode {
        self.mode
    }

    /// Only supported bits, and PRIVATE only where the VM keeps it.
    #[inline]
    pub fn attributes(&self, attributes: u64) -> Result<()> {
        if attributes & self.refused == 0 {
            return Ok(());
        }
        Err(self.refused(attributes))
    }

    #[cold]
    fn refused(&self, attributes: u64) -> Error {
        if self.mode == AttrMode::PerGmem && attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0 {
            return Error::Unsupported {
                what: Unsupported::AttributesPerGmem,
            };
        }
        Error::UnsupportedAttributes {
            attributes,
            supported: self.supported,
        }
    }

    /// A whole KVM_SET_MEMORY_ATTRIBUTES request: the attributes, then a non-empty, page-aligned
    /// range that does not wrap; its gfn range.
    pub fn request(&self, gpa: Gpa, size: u64, attributes: u64) -> Result<AttrRequest> {
        self.attributes(attributes)?;
        if size == 0 {
            return Err(Error::ZeroSize { what: Arg::Size });
        }
        if !gpa.is_aligned(Level::K4) {
            return Err(Error::Unaligned {
                what: Arg::Gpa,
                value: gpa.0,
                align: PAGE_SIZE,
            });
        }
        if size % PAGE_SIZE != 0 {
            return Err(Error::Unaligned {
                what: Arg::Size,
                value: size,
                align: PAGE_SIZE,
            });
        }
        gpa.checked_add(size).ok_or(Error::Overflow {
            what: Arg::Range,
            start: gpa.0,
            size,
        })?;
        Ok(AttrRequest {
            range: GfnRange::covering(gpa, size),
            attributes,
        })
    }
}

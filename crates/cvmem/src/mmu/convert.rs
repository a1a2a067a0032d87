//! Conversions: KVM_SET_MEMORY_ATTRIBUTES as KVM runs it, in two phases around an
//! invalidation window.

use crate::addr::{Gfn, GfnRange, Gpa, Level, GFN_END};
use crate::error::Result;
use crate::hypercall::MapGpaRange;
use crate::tracker::AttrRequest;
use crate::KVM_MEMORY_ATTRIBUTE_PRIVATE;

use super::tree::Kinds;
use super::vm::{Vm, Window};

/// A conversion begun by [`Vm::begin_conversion`]: its window stays open until it is passed to
/// [`Vm::end_conversion`] (the attributes change) or [`Vm::abort_conversion`] (they do not).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a conversion must be ended or aborted"]
pub struct Conversion {
    range: GfnRange,
    attributes: u64,
    /// The VM that began it ([`Vm`]'s brand).
    vm: u64,
    /// `None` when the range already had the attributes (KVM's early exit).
    window: Option<u64>,
}

impl Conversion {
    /// The gfns whose attributes change.
    pub fn range(&self) -> GfnRange {
        self.range
    }
    /// The new attributes.
    pub fn attributes(&self) -> u64 {
        self.attributes
    }
    /// Whether the conversion changes anything (else nothing was invalidated).
    pub fn changes(&self) -> bool {
        self.window.is_some()
    }
}

/// The invalidation window of a changing range: the range widened to the 1G pages that hold
/// its first and last gfn, so a fault on an unchanged gfn next to the range cannot install a
/// huge page that straddles its head or tail (the 2025 KVM fix).
pub(crate) fn window_of(range: GfnRange) -> GfnRange {
    let g = Level::G1.pages();
    let end = range.end.0.div_ceil(g).saturating_mul(g).min(GFN_END);
    GfnRange::new(Gfn(Level::G1.align_gfn(range.start.0)), Gfn(end))
}

impl Vm {
    /// The tables [`Vm::zap_changing`] may need for `ranges` changing ranges: two splits per
    /// edge of each (1G -> 2M -> 4K), in the split layout only.
    pub(crate) fn reserve_zaps(&mut self, ranges: usize) -> Result<()> {
        if self.layout.is_split() {
            self.trees.tables.reserve(4 * ranges)?;
        }
        Ok(())
    }

    /// Removes the leaves of `kinds` over a changing range (a conversion's, a file change's, a
    /// punch-hole's); a private leaf reaching outside is split first in the split layout (TDX
    /// demotes private pages rather than drop them), dropped whole otherwise (SNP must PSMASH a
    /// 2M RMP entry before a 4K change inside it). Counts zaps, splits, demotes and PSMASHes.
    /// Call [`Vm::reserve_zaps`] first.
    pub(crate) fn zap_changing(&mut self, range: GfnRange, kinds: Kinds) {
        let split = self.layout.is_split();
        let count = self.trees.zap(range, kinds, |private| split && private);
        self.counters.zaps += count.zaps;
        self.counters.splits += count.splits;
        self.counters.demotes += count.splits;
        self.counters.psmash += count.straddling;
    }

    /// KVM_SET_MEMORY_ATTRIBUTES on the VM: [`Vm::begin_conversion`] then
    /// [`Vm::end_conversion`]. Returns whether anything changed. On error nothing changed.
    pub fn set_memory_attributes(&mut self, gpa: Gpa, size: u64, attributes: u64) -> Result<bool> {
        let request = self.tracker.validate_attributes(gpa, size, attributes)?;
        self.convert(request)
    }

    /// A guest's KVM_HC_MAP_GPA_RANGE, handled as the VMM would: a conversion of its range.
    pub fn map_gpa_range(&mut self, request: &MapGpaRange) -> Result<bool> {
        self.convert(request.request()?)
    }

    /// A checked attribute change: [`Vm::begin_conversion`] then [`Vm::end_conversion`].
    /// Returns whether anything changed. On error nothing changed.
    pub fn convert(&mut self, request: AttrRequest) -> Result<bool> {
        let conversion = self.begin_conversion(request)?;
        self.end_conversion(conversion)
    }

    /// Phase one of a conversion: validate, allocate, invalidate. Every leaf of the old kind
    /// (the opposite of `attributes`) that intersects the range is removed; one that reaches
    /// outside the range is first split into the 512 leaves of the next level, repeatedly, when
    /// the layout is split and the leaf is private (TDX demotes private pages rather than drop
    /// them), and otherwise removed whole. Leaves of the new kind are untouched. Until the
    /// conversion is ended or aborted, a fault in the range or in the 1G pages holding its head
    /// and tail returns [`super::FaultOutcome::Retry`]. The attributes themselves do not change
    /// yet: [`Vm::end_conversion`] stores them, [`Vm::abort_conversion`] leaves them as they
    /// were.
    ///
    /// If the range already has the attributes, nothing is invalidated (KVM's early exit, the
    /// one place "does anything change?" is decided: see [`Conversion::changes`]). On error
    /// nothing changed.
    pub fn begin_conversion(&mut self, request: AttrRequest) -> Result<Conversion> {
        let (range, attributes) = (request.range(), request.attributes());
        if attributes & !self.tracker.supported_attributes() != 0 {
            return Err(crate::Error::UnsupportedAttributes {
                attributes,
                supported: self.tracker.supported_attributes(),
            });
        }
        // The VM's own attributes: where each guest_memfd keeps PRIVATE, the VM only ever
        // stores shared, and its conversions never touch the files' pages.
        if self
            .tracker
            .range_has_attributes(range, attributes, u64::MAX)
        {
            return Ok(Conversion {
                range,
                attributes,
                vm: self.brand,
                window: None,
            });
        }
        self.windows
            .try_reserve(1)
            .map_err(|_| crate::Error::NoMemory {
                bytes: core::mem::size_of::<Window>(),
            })?;
        self.reserve_zaps(1)?;
        let new_private = attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0;
        self.zap_changing(range, Kinds::Only(!new_private));
        let id = self.next_window;
        self.next_window += 1;
        self.windows.push(Window {
            id,
            range: window_of(range),
            deferred: false,
        });
        Ok(Conversion {
            range,
            attributes,
            vm: self.brand,
            window: Some(id),
        })
    }

    /// Phase two: the attributes and large-page info are updated, the window closes, and under
    /// [`super::Recovery::Eager`] the regions the conversion made collapsible collapse (the 2M
    /// pages of its range and the 1G pages holding them). Returns whether anything changed. If
    /// storing the attributes fails (`NoMemory`), the window is closed anyway and the
    /// attributes are unchanged, as after [`Vm::abort_conversion`].
    pub fn end_conversion(&mut self, conversion: Conversion) -> Result<bool> {
        let Some(window) = self.take_window(&conversion)? else {
            return Ok(false);
        };
        self.forget_accepts_of_changing(conversion.range, conversion.attributes);
        let stored = self
            .tracker
            .set_range_attributes(conversion.range, conversion.attributes);
        self.close_window(window, conversion.range);
        stored
    }

    /// Undoes phase one instead of ending the conversion, for a VMM whose conversion failed
    /// part-way (a KVM ioctl error, say): the window closes and the attributes stay as they
    /// were. The leaves phase one zapped simply fault in again, and those it split stay split
    /// (a fault replaces them under [`super::Recovery::OnFault`] and `Eager`); nothing else
    /// changes, the accept record included.
    pub fn abort_conversion(&mut self, conversion: Conversion) -> Result<()> {
        if let Some(window) = self.take_window(&conversion)? {
            self.close_window(window, conversion.range);
        }
        Ok(())
    }

    /// Removes the open window of `conversion`; `None` if it opened none (nothing changes).
    /// A conversion begun by another VM is refused, whatever its window id.
    fn take_window(&mut self, conversion: &Conversion) -> Result<Option<Window>> {
        let foreign = crate::Error::Unsupported {
            what: crate::Unsupported::ForeignConversion,
        };
        if conversion.vm != self.brand {
            return Err(foreign);
        }
        let Some(id) = conversion.window else {
            return Ok(None);
        };
        let at = self.windows.iter().position(|w| w.id == id);
        // Each conversion is moved in once, so its own window is always still open.
        Ok(Some(self.windows.swap_remove(at.ok_or(foreign)?)))
    }
}

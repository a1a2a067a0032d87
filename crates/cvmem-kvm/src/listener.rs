//! Listeners: who must hear which guest memory became shared or private (VFIO/IOMMU users,
//! vhost back-ends), with the exact ranges.

use cvmem::{GfnRange, Kind};

use crate::error::Error;

/// Why a listener is notified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cause {
    /// A conversion (guest request or VMM attribute change).
    Conversion,
    /// Undoing a change that failed part-way.
    Rollback,
    /// A memslot was added: its shared ranges appear.
    SlotAdded,
    /// A memslot is being removed: its shared ranges disappear.
    SlotRemoved,
    /// The listener was just registered: the shared ranges that exist now.
    Registered,
}

/// A range of one memslot's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SlotRange {
    /// The memslot.
    pub slot: u32,
    /// The gfns (inside the slot).
    pub range: GfnRange,
    /// Host virtual address of the range's first byte in the slot's shared mapping.
    pub hva: u64,
}

impl SlotRange {
    /// First byte (the IOVA under an identity IOMMU mapping).
    pub const fn gpa(&self) -> u64 {
        self.range.start.gpa().0
    }
    /// Size in bytes.
    pub const fn size(&self) -> u64 {
        self.range.len() * cvmem::PAGE_SIZE
    }
}

/// A change of memslot memory seen by listeners: `ranges` became `to`.
///
/// `to == Shared`: the ranges may now be used for DMA (map them). `to == Private`: they may not
/// any more (unmap them) — sent *before* the pages become private, so no device writes into
/// memory the guest owns. The ranges are exact: only pages whose kind changed, clipped to
/// memslots, in address order, never overlapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryEvent<'a> {
    /// The new kind of the ranges.
    pub to: Kind,
    /// Why.
    pub cause: Cause,
    /// The ranges.
    pub ranges: &'a [SlotRange],
}

/// A listener refused an event. It must have left its own state as before the event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("listener {listener}: {message}")]
pub struct ListenerError {
    /// The listener's name.
    pub listener: String,
    /// What went wrong.
    pub message: String,
}

/// Something that must follow which guest memory is shared.
///
/// `notify` is called with no cvmem lock held except the conversion lock, so it may query the
/// memory state; it must not start a conversion itself. If it fails it must leave its own state
/// unchanged: the conversion is then rolled back and the other listeners see the reverse event.
pub trait ConversionListener: Send + Sync {
    /// A name for errors and reports.
    fn name(&self) -> &str;
    /// Applies one event.
    fn notify(&self, event: &MemoryEvent<'_>) -> Result<(), ListenerError>;
}

/// Notifies every listener in order; if one fails, the ones already notified get the reverse
/// event (cause [`Cause::Rollback`]) and the failure is returned.
pub(crate) fn notify_all(
    listeners: &[std::sync::Arc<dyn ConversionListener>],
    event: &MemoryEvent<'_>,
) -> Result<(), Error> {
    if event.ranges.is_empty() {
        return Ok(());
    }
    for (i, l) in listeners.iter().enumerate() {
        if let Err(e) = l.notify(event) {
            undo(&listeners[..i], event).map_err(|why| Error::Inconsistent {
                cause: e.to_string(),
                why,
            })?;
            return Err(e.into());
        }
    }
    Ok(())
}

/// Sends the reverse of `event` to `listeners`, last first.
pub(crate) fn undo(
    listeners: &[std::sync::Arc<dyn ConversionListener>],
    event: &MemoryEvent<'_>,
) -> Result<(), String> {
    if event.ranges.is_empty() {
        return Ok(());
    }
    let reverse = MemoryEvent {
        to: event.to.opposite(),
        cause: Cause::Rollback,
        ranges: event.ranges,
    };
    for l in listeners.iter().rev() {
        l.notify(&reverse).map_err(|e| e.to_string())?;
    }
    Ok(())
}

//! Tracker handles: what a C caller holds is never dereferenced, so a freed, foreign or
//! forged handle is detected (`-EBADF`) instead of being undefined behaviour.
//!
//! A handle is a tagged value: a 16-bit magic, a 24-bit slot index and a 24-bit generation,
//! looked up in one registry. Freeing bumps the slot's generation, so a stale handle no longer
//! matches; a tracker in use by another thread while it is freed stays alive until that call
//! returns (it is reference-counted). What cannot be detected: a stale handle after its slot
//! has been reused 2^24 times (its generation wrapped), and a forged value that happens to
//! carry the magic, a live index and that slot's generation.

use std::sync::{Arc, PoisonError, RwLock};

use cvmem_sync::ConcurrentTracker;

use crate::CvmemTracker;

/// The tag in a handle's top 16 bits (no x86-64 or AArch64 user-space pointer has it).
const MAGIC: u64 = 0xc7e3;
const INDEX_BITS: u32 = 24;
const GENERATION_BITS: u32 = 24;
const GENERATION_MASK: u64 = (1 << GENERATION_BITS) - 1;
/// The most trackers alive at once.
pub(crate) const MAX_LIVE: usize = (1 << INDEX_BITS) - 1;

#[derive(Default)]
struct Registry {
    /// Per slot: its generation and the tracker it holds now.
    slots: Vec<(u64, Option<Arc<ConcurrentTracker>>)>,
    /// Slots whose tracker was freed.
    free: Vec<usize>,
}

static REGISTRY: RwLock<Registry> = RwLock::new(Registry {
    slots: Vec::new(),
    free: Vec::new(),
});

fn encode(index: usize, generation: u64) -> *mut CvmemTracker {
    let value = MAGIC << 48 | (index as u64 + 1) << GENERATION_BITS | generation;
    // An opaque value, never dereferenced: only `decode` reads it back.
    value as usize as *mut CvmemTracker
}

fn decode(handle: *const CvmemTracker) -> Option<(usize, u64)> {
    let value = handle as usize as u64;
    if value >> 48 != MAGIC {
        return None;
    }
    let index = (value >> GENERATION_BITS & ((1 << INDEX_BITS) - 1)).checked_sub(1)?;
    Some((index as usize, value & GENERATION_MASK))
}

/// Why a handle was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BadHandle {
    /// NULL.
    Null,
    /// Not a live handle: freed, foreign or forged.
    Stale,
}

/// Registers `tracker`; `None` when [`MAX_LIVE`] trackers are alive or memory ran out.
pub(crate) fn insert(tracker: ConcurrentTracker) -> Option<*mut CvmemTracker> {
    let mut guard = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
    let r = &mut *guard;
    let tracker = Some(Arc::new(tracker));
    let index = match r.free.pop() {
        Some(i) => i,
        None if r.slots.len() < MAX_LIVE => {
            r.slots.try_reserve(1).ok()?;
            r.free.try_reserve(r.slots.len() + 1 - r.free.len()).ok()?;
            r.slots.push((0, None));
            r.slots.len() - 1
        }
        None => return None,
    };
    let slot = &mut r.slots[index];
    slot.1 = tracker;
    Some(encode(index, slot.0))
}

/// The tracker behind `handle`, kept alive for the caller.
pub(crate) fn get(handle: *const CvmemTracker) -> Result<Arc<ConcurrentTracker>, BadHandle> {
    if handle.is_null() {
        return Err(BadHandle::Null);
    }
    let (index, generation) = decode(handle).ok_or(BadHandle::Stale)?;
    let r = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
    match r.slots.get(index) {
        Some((g, Some(t))) if *g == generation => Ok(Arc::clone(t)),
        _ => Err(BadHandle::Stale),
    }
}

/// Unregisters `handle`; its tracker is dropped once no call uses it any more.
pub(crate) fn remove(handle: *const CvmemTracker) -> Result<(), BadHandle> {
    if handle.is_null() {
        return Err(BadHandle::Null);
    }
    let (index, generation) = decode(handle).ok_or(BadHandle::Stale)?;
    let mut r = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
    let tracker = match r.slots.get_mut(index) {
        Some((g, t @ Some(_))) if *g == generation => {
            *g = (*g + 1) & GENERATION_MASK;
            t.take()
        }
        _ => return Err(BadHandle::Stale),
    };
    // Room was reserved when the slot was made.
    r.free.push(index);
    drop(r);
    drop(tracker);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cvmem::Tracker;

    #[test]
    fn freed_foreign_and_forged_handles_are_refused() {
        let h = insert(ConcurrentTracker::new(Tracker::new())).unwrap();
        assert!(get(h).is_ok());
        let local = 5u64;
        let foreign = (&raw const local).cast::<CvmemTracker>();
        assert_eq!(get(foreign).unwrap_err(), BadHandle::Stale);
        assert_eq!(get(std::ptr::null()).unwrap_err(), BadHandle::Null);
        remove(h).unwrap();
        assert_eq!(get(h).unwrap_err(), BadHandle::Stale);
        assert_eq!(remove(h).unwrap_err(), BadHandle::Stale);
        // The slot is reused with another generation: the old handle stays dead.
        let h2 = insert(ConcurrentTracker::new(Tracker::new())).unwrap();
        assert_ne!(h, h2);
        assert_eq!(get(h).unwrap_err(), BadHandle::Stale);
        assert!(get(h2).is_ok());
        remove(h2).unwrap();
    }
}

//! [`CvmMemory`]: a VM's convertible memory — memslots with their host memory, the cvmem
//! tracker, KVM's memory attributes, discards and listeners — kept consistent.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use cvmem::{
    Access, GfnRange, Level, MemoryRegion, SlotFlags, Tracker, KVM_MEMORY_ATTRIBUTE_PRIVATE,
    PAGE_SIZE,
};
use kvm_bindings::kvm_memory_attributes;
use kvm_ioctls::VmFd;

use crate::backing::{Backing, SlotMemory};
use crate::error::{Error, Result};
use crate::listener::{self, Cause, ConversionListener, MemoryEvent, SlotRange};
use crate::query::MemoryQuery;
use crate::request::{ConversionRequest, RequestSource};
use crate::sys;

/// A memslot to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotSpec {
    /// Slot id (0 ..= 32763).
    pub slot: u32,
    /// First guest-physical byte (4 KiB aligned).
    pub gpa: u64,
    /// Size in bytes (4 KiB aligned, non-zero).
    pub size: u64,
    /// Host memory behind it.
    pub backing: Backing,
    /// The largest mapping the host memory allows (the tracker's `backing`): what a hugepage
    /// backed guest_memfd or THP would give. The host mapping is aligned for it.
    pub max_level: Level,
}

/// What the memory state of one slot is, for queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotInfo {
    pub(crate) backing: Backing,
    pub(crate) hva: u64,
}

/// The state readers see: tracker plus per-slot facts.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) tracker: Tracker,
    pub(crate) slots: BTreeMap<u32, SlotInfo>,
}

/// Time spent in each step of one conversion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConversionCost {
    /// Reading the current runs and updating the tracker (the cost of tracking itself).
    pub tracking: Duration,
    /// KVM_SET_MEMORY_ATTRIBUTES (zero where KVM lacks it).
    pub kvm: Duration,
    /// Discarding old contents (fallocate / madvise).
    pub discard: Duration,
    /// Listener notifications.
    pub listeners: Duration,
}

/// The result of a conversion that succeeded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conversion {
    /// Pages whose kind changed (0: the range already had it; nothing was done).
    pub changed_pages: u64,
    /// The changed ranges inside memslots (what listeners saw).
    pub slot_ranges: Vec<SlotRange>,
    /// Bytes whose old contents were discarded.
    pub discarded_bytes: u64,
    /// Time per step.
    pub cost: ConversionCost,
}

/// A VM's convertible memory: memslots and their host memory, the private/shared state (the
/// cvmem [`Tracker`]), KVM's attributes, and listeners, updated together.
///
/// `CvmMemory` is `Sync`: vCPU threads convert through `&self` (conversions are serialised),
/// and [`MemoryQuery`] handles read the state from any thread.
pub struct CvmMemory {
    state: Arc<RwLock<State>>,
    /// Host memory per slot; its lock also serialises conversions and slot changes.
    memory: Mutex<BTreeMap<u32, SlotMemory>>,
    listeners: RwLock<Vec<Arc<dyn ConversionListener>>>,
    vm: Option<Arc<VmFd>>,
    kvm_attributes: bool,
    notes: Mutex<Vec<String>>,
}

impl std::fmt::Debug for CvmMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CvmMemory")
            .field("kvm_attributes", &self.kvm_attributes)
            .field("vm", &self.vm.is_some())
            .finish_non_exhaustive()
    }
}

fn read(state: &RwLock<State>) -> RwLockReadGuard<'_, State> {
    state.read().unwrap_or_else(PoisonError::into_inner)
}
fn write(state: &RwLock<State>) -> RwLockWriteGuard<'_, State> {
    state.write().unwrap_or_else(PoisonError::into_inner)
}

impl CvmMemory {
    /// Memory of the VM `vm`. `KVM_SET_MEMORY_ATTRIBUTES` is used only if the VM reports
    /// `KVM_CAP_MEMORY_ATTRIBUTES` with the PRIVATE bit; otherwise this object's state is the
    /// only record of which memory is private, and a note says so once.
    pub fn new(vm: Arc<VmFd>) -> Self {
        let caps = vm.check_extension_int(kvm_ioctls::Cap::MemoryAttributes) as u64;
        let kvm_attributes = caps & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0;
        let mem = Self::build(Some(vm), kvm_attributes);
        if !kvm_attributes {
            mem.note(format!(
                "KVM_CAP_MEMORY_ATTRIBUTES is {caps:#x} (no PRIVATE): KVM keeps no attributes, \
                 cvmem-kvm's state is the source of truth for private/shared"
            ));
        }
        mem
    }

    /// Memory without a VM: anonymous slots only, no KVM calls (for tests and tools).
    pub fn detached() -> Self {
        Self::build(None, false)
    }

    fn build(vm: Option<Arc<VmFd>>, kvm_attributes: bool) -> Self {
        CvmMemory {
            state: Arc::new(RwLock::new(State {
                tracker: Tracker::new(),
                slots: BTreeMap::new(),
            })),
            memory: Mutex::new(BTreeMap::new()),
            listeners: RwLock::new(Vec::new()),
            vm,
            kvm_attributes,
            notes: Mutex::new(Vec::new()),
        }
    }

    fn note(&self, s: String) {
        self.notes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(s);
    }

    /// Things worth telling the operator once (e.g. that KVM keeps no attributes).
    pub fn notes(&self) -> Vec<String> {
        self.notes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether KVM_SET_MEMORY_ATTRIBUTES is used.
    pub fn kvm_attributes(&self) -> bool {
        self.kvm_attributes
    }

    /// A handle for reading the memory state from any thread.
    pub fn query(&self) -> MemoryQuery {
        MemoryQuery::new(Arc::clone(&self.state))
    }

    fn lock_memory(&self) -> MutexGuard<'_, BTreeMap<u32, SlotMemory>> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn listeners(&self) -> Vec<Arc<dyn ConversionListener>> {
        self.listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Creates a memslot: host memory, the tracker's slot (KVM's rules), then KVM's slot; its
    /// shared memory is announced to listeners. On error nothing is left behind.
    pub fn add_slot(&self, spec: &SlotSpec) -> Result<()> {
        let mut memory = self.lock_memory();
        if memory.contains_key(&spec.slot) {
            // Moving or re-flagging a slot would need its memory kept: not supported here.
            return Err(cvmem::Error::Unsupported {
                what: "changing an existing memslot through CvmMemory::add_slot",
            }
            .into());
        }
        let backing = spec.backing;
        let mem = SlotMemory::new(
            self.vm.as_deref(),
            backing,
            spec.gpa,
            spec.size,
            spec.max_level.size(),
        )?;
        let region = MemoryRegion {
            slot: spec.slot,
            gpa: spec.gpa,
            size: spec.size,
            flags: SlotFlags {
                guest_memfd: backing.has_guest_memfd(),
                ..Default::default()
            },
            uaddr: Some(mem.shared().addr()),
            backing: Some(spec.max_level),
        };
        write(&self.state).tracker.set_user_memory_region(&region)?;
        let undo_tracker = |state: &RwLock<State>| {
            let _ = write(state).tracker.set_user_memory_region(&MemoryRegion {
                slot: spec.slot,
                size: 0,
                ..region
            });
        };
        if let Some(vm) = &self.vm {
            if let Err(e) = sys::set_user_memory_region2(vm, mem.region(spec.slot)) {
                undo_tracker(&self.state);
                return Err(Error::kvm("KVM_SET_USER_MEMORY_REGION2", e));
            }
        }
        let hva = mem.shared().addr();
        write(&self.state)
            .slots
            .insert(spec.slot, SlotInfo { backing, hva });
        memory.insert(spec.slot, mem);
        let shared = self.slot_runs(spec.slot, Access::Shared);
        let event = MemoryEvent {
            to: Access::Shared,
            cause: Cause::SlotAdded,
            ranges: &shared,
        };
        if let Err(e) = listener::notify_all(&self.listeners(), &event) {
            let mem = memory.remove(&spec.slot);
            self.delete_slot_locked(spec.slot, mem);
            return Err(e);
        }
        Ok(())
    }

    /// Removes a memslot: listeners hear its shared memory go, then KVM and the tracker drop
    /// the slot, then its host memory is freed.
    pub fn remove_slot(&self, slot: u32) -> Result<()> {
        let mut memory = self.lock_memory();
        if !memory.contains_key(&slot) {
            return Err(cvmem::Error::UnknownSlot { slot }.into());
        }
        let shared = self.slot_runs(slot, Access::Shared);
        listener::notify_all(
            &self.listeners(),
            &MemoryEvent {
                to: Access::Private,
                cause: Cause::SlotRemoved,
                ranges: &shared,
            },
        )?;
        let mem = memory.remove(&slot);
        self.delete_slot_locked(slot, mem);
        Ok(())
    }

    fn delete_slot_locked(&self, slot: u32, mem: Option<SlotMemory>) {
        if let (Some(vm), Some(m)) = (&self.vm, &mem) {
            let mut region = m.region(slot);
            region.memory_size = 0;
            // Deleting an existing slot cannot fail for a valid id; the memory is freed after.
            let _ = sys::set_user_memory_region2(vm, region);
        }
        let mut state = write(&self.state);
        let _ = state.tracker.set_user_memory_region(&MemoryRegion {
            slot,
            size: 0,
            ..Default::default()
        });
        state.slots.remove(&slot);
        drop(state);
        drop(mem);
    }

    /// The ranges of `slot` that are of kind `kind` now.
    fn slot_runs(&self, slot: u32, kind: Access) -> Vec<SlotRange> {
        let state = read(&self.state);
        let (Some(s), Some(info)) = (state.tracker.memslot(slot), state.slots.get(&slot)) else {
            return Vec::new();
        };
        let base = s.base_gfn();
        state
            .tracker
            .runs(s.range())
            .filter(|r| (r.attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0) == kind.is_private())
            .map(|r| SlotRange {
                slot,
                range: r.range(),
                hva: info.hva + (r.start - base) * PAGE_SIZE,
            })
            .collect()
    }

    /// Registers a listener and tells it which slot memory is shared now (cause
    /// [`Cause::Registered`]). If it refuses, it is not registered.
    pub fn add_listener(&self, l: Arc<dyn ConversionListener>) -> Result<()> {
        let memory = self.lock_memory();
        let mut shared = Vec::new();
        for &slot in memory.keys() {
            shared.extend(self.slot_runs(slot, Access::Shared));
        }
        shared.sort_by_key(|r| r.range.start);
        if !shared.is_empty() {
            l.notify(&MemoryEvent {
                to: Access::Shared,
                cause: Cause::Registered,
                ranges: &shared,
            })?;
        }
        self.listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(l);
        Ok(())
    }

    /// KVM_SET_MEMORY_ATTRIBUTES on the VMM's own initiative (e.g. everything private at
    /// start-up, as QEMU does for guest_memfd slots), with discards and listeners as for a
    /// guest request. Only 0 (shared) and PRIVATE are accepted.
    pub fn set_attributes(&self, gpa: u64, size: u64, attributes: u64) -> Result<Conversion> {
        let range = read(&self.state)
            .tracker
            .validate_attributes(gpa, size, attributes)?;
        self.convert(&ConversionRequest {
            range,
            to: Access::from_private(attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0),
            hint: Level::K4,
            source: RequestSource::Vmm,
        })
    }

    /// Applies a conversion request: the pages of `req.range` that are not yet of kind `req.to`
    /// change kind. The steps, in order:
    ///
    /// 1. to private: listeners hear the shared slot ranges go (no DMA into private memory);
    ///    to shared: the old private contents are discarded (guest_memfd hole punch);
    /// 2. KVM_SET_MEMORY_ATTRIBUTES, where KVM has it;
    /// 3. the tracker;
    /// 4. to private: separately backed shared memory is discarded (`MADV_DONTNEED`);
    ///    to shared: listeners hear the new shared slot ranges.
    ///
    /// If a step fails, the earlier ones are undone (tracker, KVM, listeners agree again) and
    /// the error is returned; contents already discarded stay discarded — the guest gave them
    /// up by asking. [`Error::Inconsistent`] reports the rare case where undoing failed too.
    pub fn convert(&self, req: &ConversionRequest) -> Result<Conversion> {
        let memory = self.lock_memory();
        let mut out = Conversion::default();
        let target = req.attributes();
        let t = Instant::now();
        let (changed, slot_ranges) = {
            let state = read(&self.state);
            let changed: Vec<(GfnRange, u64)> = state
                .tracker
                .runs(req.range)
                .filter(|r| r.attributes != target)
                .map(|r| (r.range(), r.attributes))
                .collect();
            let slot_ranges = clip_to_slots(&state, changed.iter().map(|c| c.0));
            (changed, slot_ranges)
        };
        out.cost.tracking += t.elapsed();
        if changed.is_empty() {
            return Ok(out);
        }
        out.changed_pages = changed.iter().map(|c| c.0.len()).sum();
        let listeners = self.listeners();
        let event = MemoryEvent {
            to: req.to,
            cause: Cause::Conversion,
            ranges: &slot_ranges,
        };

        // 1.
        match req.to {
            Access::Private => {
                let t = Instant::now();
                listener::notify_all(&listeners, &event)?;
                out.cost.listeners += t.elapsed();
            }
            Access::Shared => {
                let t = Instant::now();
                out.discarded_bytes = discard(&memory, &slot_ranges, Access::Shared)?;
                out.cost.discard += t.elapsed();
            }
        }
        let undo_listeners = |cause: Error| -> Error {
            if req.to == Access::Private {
                if let Err(why) = listener::undo(&listeners, &event) {
                    return Error::Inconsistent {
                        cause: cause.to_string(),
                        why,
                    };
                }
            }
            cause
        };

        // 2.
        if self.kvm_attributes {
            let t = Instant::now();
            let r = self.set_kvm_attributes(req.range, target);
            out.cost.kvm += t.elapsed();
            if let Err(e) = r {
                return Err(undo_listeners(e));
            }
        }
        let undo_kvm = |cause: Error| -> Error {
            if self.kvm_attributes {
                for &(range, old) in &changed {
                    if let Err(e) = self.set_kvm_attributes(range, old) {
                        return Error::Inconsistent {
                            cause: cause.to_string(),
                            why: e.to_string(),
                        };
                    }
                }
            }
            undo_listeners(cause)
        };

        // 3.
        let t = Instant::now();
        let r = write(&self.state)
            .tracker
            .set_range_attributes(req.range, target);
        out.cost.tracking += t.elapsed();
        if let Err(e) = r {
            return Err(undo_kvm(e.into()));
        }
        let undo_tracker = |cause: Error| -> Error {
            let mut state = write(&self.state);
            for &(range, old) in &changed {
                if let Err(e) = state.tracker.set_range_attributes(range, old) {
                    return Error::Inconsistent {
                        cause: cause.to_string(),
                        why: e.to_string(),
                    };
                }
            }
            drop(state);
            undo_kvm(cause)
        };

        // 4.
        match req.to {
            Access::Private => {
                let t = Instant::now();
                let r = discard(&memory, &slot_ranges, Access::Private);
                out.cost.discard += t.elapsed();
                out.discarded_bytes = r.map_err(undo_tracker)?;
            }
            Access::Shared => {
                let t = Instant::now();
                let r = listener::notify_all(&listeners, &event);
                out.cost.listeners += t.elapsed();
                r.map_err(undo_tracker)?;
            }
        }
        out.slot_ranges = slot_ranges;
        Ok(out)
    }

    fn set_kvm_attributes(&self, range: GfnRange, attributes: u64) -> Result<()> {
        let Some(vm) = &self.vm else { return Ok(()) };
        vm.set_memory_attributes(kvm_memory_attributes {
            address: range.start * PAGE_SIZE,
            size: range.len() * PAGE_SIZE,
            attributes,
            flags: 0,
        })
        .map_err(|e| Error::kvm("KVM_SET_MEMORY_ATTRIBUTES", e))
    }

    /// Reads the quadword at `gpa` through the host's shared mapping of its slot.
    pub fn read_u64(&self, gpa: u64) -> Result<u64> {
        let memory = self.lock_memory();
        let (mem, off) = locate(&memory, gpa, 8)?;
        mem.shared()
            .read_u64(off)
            .ok_or(Error::NotInSlot { gpa, size: 8 })
    }

    /// Writes the quadword at `gpa` through the host's shared mapping of its slot.
    pub fn write_u64(&self, gpa: u64, value: u64) -> Result<()> {
        let memory = self.lock_memory();
        let (mem, off) = locate(&memory, gpa, 8)?;
        if mem.shared().write_u64(off, value) {
            Ok(())
        } else {
            Err(Error::NotInSlot { gpa, size: 8 })
        }
    }

    /// Copies `bytes` to `gpa` through the host's shared mapping (one slot only).
    pub fn write_bytes(&self, gpa: u64, bytes: &[u8]) -> Result<()> {
        let memory = self.lock_memory();
        let size = bytes.len() as u64;
        let (mem, off) = locate(&memory, gpa, size)?;
        if mem.shared().write_bytes(off, bytes) {
            Ok(())
        } else {
            Err(Error::NotInSlot { gpa, size })
        }
    }

    /// Writes `f(gpa)` to every quadword of `[gpa, gpa + size)` through the host mapping.
    pub fn write_with(&self, gpa: u64, size: u64, f: impl Fn(u64) -> u64) -> Result<()> {
        let memory = self.lock_memory();
        let (mem, off) = locate(&memory, gpa, size)?;
        for i in (0..size).step_by(8) {
            if !mem.shared().write_u64(off + i as usize, f(gpa + i)) {
                return Err(Error::NotInSlot { gpa, size });
            }
        }
        Ok(())
    }

    /// Calls `f(gpa, value)` with every quadword of `[gpa, gpa + size)` read through the host
    /// mapping, stopping early when `f` returns false.
    pub fn scan_u64(&self, gpa: u64, size: u64, mut f: impl FnMut(u64, u64) -> bool) -> Result<()> {
        let memory = self.lock_memory();
        let (mem, off) = locate(&memory, gpa, size)?;
        for i in (0..size).step_by(8) {
            let v = mem
                .shared()
                .read_u64(off + i as usize)
                .ok_or(Error::NotInSlot { gpa, size })?;
            if !f(gpa + i, v) {
                break;
            }
        }
        Ok(())
    }
}

impl Drop for CvmMemory {
    fn drop(&mut self) {
        // Delete the memslots from KVM before their host memory is unmapped.
        let memory = std::mem::take(&mut *self.lock_memory());
        for (slot, mem) in memory {
            self.delete_slot_locked(slot, Some(mem));
        }
    }
}

fn locate(memory: &BTreeMap<u32, SlotMemory>, gpa: u64, size: u64) -> Result<(&SlotMemory, usize)> {
    memory
        .values()
        .find(|m| {
            gpa >= m.gpa
                && gpa
                    .checked_add(size)
                    .is_some_and(|end| end <= m.gpa + m.size())
        })
        .map(|m| (m, (gpa - m.gpa) as usize))
        .ok_or(Error::NotInSlot { gpa, size })
}

/// The parts of `ranges` (in address order) inside memslots.
fn clip_to_slots(state: &State, ranges: impl Iterator<Item = GfnRange>) -> Vec<SlotRange> {
    let mut out = Vec::new();
    for range in ranges {
        for s in state.tracker.memslots() {
            if s.range().start >= range.end {
                break;
            }
            if let (Some(r), Some(info)) = (s.range().intersect(&range), state.slots.get(&s.id())) {
                out.push(SlotRange {
                    slot: s.id(),
                    range: r,
                    hva: info.hva + (r.start - s.base_gfn()) * PAGE_SIZE,
                });
            }
        }
    }
    out
}

fn discard(memory: &BTreeMap<u32, SlotMemory>, ranges: &[SlotRange], to: Access) -> Result<u64> {
    let mut bytes = 0;
    for r in ranges {
        if let Some(m) = memory.get(&r.slot) {
            if m.discard(r.range, to)? {
                bytes += r.size();
            }
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;

//! [`CvmMemory`]: a VM's convertible memory — memslots with their host memory, the cvmem MMU
//! model (the tracker and the TDP page tables that follow it), KVM's memory attributes, discards
//! and listeners — kept consistent.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use cvmem::mmu::{Layout, Recovery, Vm};
use cvmem::{Access, AttrRequest, GfnRange, Gpa, Level, KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SIZE};
use kvm_bindings::kvm_memory_attributes;
use kvm_ioctls::VmFd;

use crate::backing::{Backing, SlotMemory};
use crate::error::{Error, Result};
use crate::listener::{self, Cause, ConversionListener, MemoryEvent, SlotRange};
use crate::query::MemoryQuery;
use crate::request::{ConversionRequest, RequestSource};

pub(crate) mod access;
mod slots;

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

/// The TDP MMU model a [`CvmMemory`] keeps: its page-table layout and hugepage recovery policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmuConfig {
    /// `split` (TDX-like: a private and a shared root) or `unified` (SNP-like: one root).
    pub layout: Layout,
    /// When huge mappings come back after a region became uniform again.
    pub recovery: Recovery,
}

impl Default for MmuConfig {
    /// The op-log's default: `mmu split recovery=on-fault` (TDX-like, shared bit 47).
    fn default() -> Self {
        MmuConfig {
            layout: Layout::SPLIT,
            recovery: Recovery::OnFault,
        }
    }
}

/// What the memory state of one slot is, for queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotInfo {
    pub(crate) backing: Backing,
    /// Host address of the slot's first byte in its shared mapping (what listeners get).
    pub(crate) hva: u64,
}

/// The state readers see: the MMU model (which owns the tracker) plus per-slot facts.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) vm: Vm,
    pub(crate) slots: BTreeMap<u32, SlotInfo>,
}

/// Time spent in each step of one conversion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConversionCost {
    /// The tracker and the MMU model, write lock included: reading the runs that change,
    /// invalidating (the model's begin phase: zaps and splits), and storing the attributes and
    /// large-page info (its end phase, with eager recovery). The cost of tracking itself.
    pub tracking: Duration,
    /// Of `tracking`: the MMU model's invalidation alone (zaps and splits).
    pub invalidate: Duration,
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

/// A VM's convertible memory: memslots and their host memory, the private/shared state and
/// the page tables KVM would build for it (the cvmem [`Vm`] model, which owns the
/// [`Tracker`](cvmem::Tracker)), KVM's attributes, and listeners, updated together.
///
/// `CvmMemory` is `Sync`: vCPU threads convert and fault through `&self` (conversions and slot
/// changes are serialised), and [`MemoryQuery`] handles read the state from any thread.
pub struct CvmMemory {
    state: Arc<RwLock<State>>,
    /// Host memory per slot; its lock also serialises conversions and slot changes.
    memory: Mutex<BTreeMap<u32, SlotMemory>>,
    listeners: RwLock<Vec<Arc<dyn ConversionListener>>>,
    vm: Option<Arc<VmFd>>,
    kvm_attributes: bool,
    notes: Mutex<Vec<String>>,
    /// Nanoseconds spent in the tracker and the MMU model (locks included), ever.
    tracking_ns: AtomicU64,
}

impl std::fmt::Debug for CvmMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CvmMemory")
            .field("kvm_attributes", &self.kvm_attributes)
            .field("vm", &self.vm.is_some())
            .finish_non_exhaustive()
    }
}

pub(crate) fn read(state: &RwLock<State>) -> RwLockReadGuard<'_, State> {
    state.read().unwrap_or_else(PoisonError::into_inner)
}
fn write(state: &RwLock<State>) -> RwLockWriteGuard<'_, State> {
    state.write().unwrap_or_else(PoisonError::into_inner)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl CvmMemory {
    /// Memory of the VM `vm`, modelled as a TDX-like guest (split layout, on-fault recovery).
    /// `KVM_SET_MEMORY_ATTRIBUTES` is used only if the VM reports `KVM_CAP_MEMORY_ATTRIBUTES`
    /// with the PRIVATE bit; otherwise this object's state is the only record of which memory is
    /// private, and a note says so once.
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self::with_mmu(vm, MmuConfig::default())
    }

    /// As [`CvmMemory::new`], with the MMU model's layout and recovery policy chosen.
    pub fn with_mmu(vm: Arc<VmFd>, mmu: MmuConfig) -> Self {
        let caps = vm.check_extension_int(kvm_ioctls::Cap::MemoryAttributes) as u64;
        let kvm_attributes = caps & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0;
        let mem = Self::build(Some(vm), kvm_attributes, mmu);
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
        Self::detached_with_mmu(MmuConfig::default())
    }

    /// As [`CvmMemory::detached`], with the MMU model's layout and recovery policy chosen.
    pub fn detached_with_mmu(mmu: MmuConfig) -> Self {
        Self::build(None, false, mmu)
    }

    fn build(vm: Option<Arc<VmFd>>, kvm_attributes: bool, mmu: MmuConfig) -> Self {
        CvmMemory {
            state: Arc::new(RwLock::new(State {
                vm: Vm::new(mmu.layout, mmu.recovery),
                slots: BTreeMap::new(),
            })),
            memory: Mutex::new(BTreeMap::new()),
            listeners: RwLock::new(Vec::new()),
            vm,
            kvm_attributes,
            notes: Mutex::new(Vec::new()),
            tracking_ns: AtomicU64::new(0),
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

    /// The MMU model's layout and recovery policy.
    pub fn mmu_config(&self) -> MmuConfig {
        let state = read(&self.state);
        MmuConfig {
            layout: state.vm.layout(),
            recovery: state.vm.recovery(),
        }
    }

    /// A handle for reading the memory state from any thread.
    pub fn query(&self) -> MemoryQuery {
        MemoryQuery::new(Arc::clone(&self.state))
    }

    /// Total time this object has spent in the tracker and the MMU model (conversions, faults,
    /// slot changes; the state lock included): the cost of tracking. Reading it before and
    /// after a vCPU exit gives that exit's tracking time.
    pub fn tracking_time(&self) -> Duration {
        Duration::from_nanos(self.tracking_ns.load(Ordering::Relaxed))
    }

    /// Runs `f` on the state under the write lock; the time, lock included, is tracking time.
    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> (R, Duration) {
        let t = Instant::now();
        let r = f(&mut write(&self.state));
        let d = t.elapsed();
        self.tracking_ns.fetch_add(nanos(d), Ordering::Relaxed);
        (r, d)
    }

    /// Runs `f` on the state under the read lock; the time, lock included, is tracking time.
    fn inspect<R>(&self, f: impl FnOnce(&State) -> R) -> (R, Duration) {
        let t = Instant::now();
        let r = f(&read(&self.state));
        let d = t.elapsed();
        self.tracking_ns.fetch_add(nanos(d), Ordering::Relaxed);
        (r, d)
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

    /// The ranges of `slot` that are of kind `kind` now.
    fn slot_runs(&self, slot: u32, kind: Access) -> Vec<SlotRange> {
        let state = read(&self.state);
        let tracker = state.vm.tracker();
        let (Some(s), Some(info)) = (tracker.memslot(slot), state.slots.get(&slot)) else {
            return Vec::new();
        };
        let base = s.base_gfn();
        tracker
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
    pub fn set_attributes(&self, gpa: Gpa, size: u64, attributes: u64) -> Result<Conversion> {
        let request = read(&self.state)
            .vm
            .tracker()
            .validate_attributes(gpa, size, attributes)?;
        self.convert(&ConversionRequest {
            range: request.range(),
            to: request.to(),
            hint: Level::K4,
            source: RequestSource::Vmm,
        })
    }

    /// Applies a conversion request: the pages of `req.range` that are not yet of kind `req.to`
    /// change kind. The steps, in order:
    ///
    /// 1. the MMU model invalidates the range ([`Vm::begin_conversion`]): mappings of the old
    ///    kind are zapped, a straddling private huge leaf is split (split layout), and faults
    ///    around the range retry until step 4;
    /// 2. to private: listeners hear the shared slot ranges go (no DMA into private memory);
    ///    to shared: the old private contents are discarded (guest_memfd hole punch);
    /// 3. KVM_SET_MEMORY_ATTRIBUTES, where KVM has it;
    /// 4. the model stores the attributes and large-page info ([`Vm::end_conversion`]);
    /// 5. to private: separately backed shared memory is discarded (`MADV_DONTNEED`);
    ///    to shared: listeners hear the new shared slot ranges.
    ///
    /// If a step fails, the earlier ones are undone (tracker, KVM, listeners agree again; zapped
    /// mappings simply fault in again) and the error is returned; contents already discarded
    /// stay discarded — the guest gave them up by asking. [`Error::Inconsistent`] reports the
    /// rare case where undoing failed too.
    pub fn convert(&self, req: &ConversionRequest) -> Result<Conversion> {
        let memory = self.lock_memory();
        let mut out = Conversion::default();
        let request = AttrRequest::new(req.range, req.to)?;
        let target = request.attributes();

        // 1.
        let (begun, took) = self.update(|state| -> Result<_> {
            let t = Instant::now();
            let pending = state.vm.begin_conversion(request)?;
            let invalidate = t.elapsed();
            if !pending.changes() {
                // KVM's early exit: the range already has the attributes, nothing was zapped.
                state.vm.end_conversion(pending)?;
                return Ok(None);
            }
            // The attributes are still the old ones until step 4.
            let changed: Vec<(GfnRange, u64)> = state
                .vm
                .tracker()
                .runs(req.range)
                .filter(|r| r.attributes != target)
                .map(|r| (r.range(), r.attributes))
                .collect();
            let slot_ranges = clip_to_slots(state, changed.iter().map(|c| c.0));
            Ok(Some((changed, slot_ranges, pending, invalidate)))
        });
        out.cost.tracking += took;
        let Some((changed, slot_ranges, pending, invalidate)) = begun? else {
            return Ok(out);
        };
        out.cost.invalidate = invalidate;
        out.changed_pages = changed.iter().map(|c| c.0.len()).sum();
        let listeners = self.listeners();
        let event = MemoryEvent {
            to: req.to,
            cause: Cause::Conversion,
            ranges: &slot_ranges,
        };
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
        let step = match req.to {
            Access::Private => {
                let t = Instant::now();
                let r = listener::notify_all(&listeners, &event);
                out.cost.listeners += t.elapsed();
                r
            }
            Access::Shared => {
                let t = Instant::now();
                let r = discard(&memory, &slot_ranges, Access::Shared);
                out.cost.discard += t.elapsed();
                r.map(|bytes| out.discarded_bytes = bytes)
            }
        };
        if let Err(e) = step {
            // notify_all has undone its own partial notifications.
            return Err(self.cancel(pending, e));
        }

        // 3.
        if self.kvm_attributes {
            let t = Instant::now();
            let r = self.set_kvm_attributes(req.range, target);
            out.cost.kvm += t.elapsed();
            if let Err(e) = r {
                return Err(self.cancel(pending, undo_listeners(e)));
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

        // 4.
        let (r, took) = self.update(|state| state.vm.end_conversion(pending));
        out.cost.tracking += took;
        if let Err(e) = r {
            // The window is closed and the attributes are unchanged.
            return Err(undo_kvm(e.into()));
        }
        let undo_model = |cause: Error| -> Error {
            let (r, _) = self.update(|state| restore(&mut state.vm, &changed));
            match r {
                Ok(()) => undo_kvm(cause),
                Err(e) => Error::Inconsistent {
                    cause: cause.to_string(),
                    why: e.to_string(),
                },
            }
        };

        // 5.
        match req.to {
            Access::Private => {
                let t = Instant::now();
                let r = discard(&memory, &slot_ranges, Access::Private);
                out.cost.discard += t.elapsed();
                out.discarded_bytes = r.map_err(undo_model)?;
            }
            Access::Shared => {
                let t = Instant::now();
                let r = listener::notify_all(&listeners, &event);
                out.cost.listeners += t.elapsed();
                r.map_err(undo_model)?;
            }
        }
        out.slot_ranges = slot_ranges;
        Ok(out)
    }

    /// Abandons a begun conversion after a failure: the attributes were never stored, so
    /// closing the model's invalidation window is the whole undo (zapped pages fault in again).
    fn cancel(&self, pending: cvmem::mmu::Conversion, cause: Error) -> Error {
        let (r, _) = self.update(|state| state.vm.abort_conversion(pending));
        match r {
            Ok(()) => cause,
            Err(e) => Error::Inconsistent {
                cause: cause.to_string(),
                why: e.to_string(),
            },
        }
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
}

/// Stores the old attributes of every changed run back (a conversion each, as KVM would).
fn restore(vm: &mut Vm, changed: &[(GfnRange, u64)]) -> cvmem::Result<()> {
    for &(range, old) in changed {
        vm.convert(AttrRequest::new(range, Access::from_attributes(old))?)?;
    }
    Ok(())
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

/// The parts of `ranges` (in address order) inside memslots.
fn clip_to_slots(state: &State, ranges: impl Iterator<Item = GfnRange>) -> Vec<SlotRange> {
    let mut out = Vec::new();
    let tracker = state.vm.tracker();
    for range in ranges {
        for s in tracker.memslots() {
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
mod mmu_tests;
#[cfg(test)]
mod tests;

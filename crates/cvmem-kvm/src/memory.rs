//! [`CvmMemory`]: a VM's convertible memory — memslots with their host memory, the tracker
//! (behind cvmem-sync's concurrent front), KVM's memory attributes, discards, listeners and,
//! optionally, the TDP MMU model — kept consistent.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

#[cfg(feature = "mmu-model")]
use cvmem::mmu::{Layout, Recovery};
use cvmem::{
    AttrRequest, GfnRange, Gpa, Kind, Level, Tracker, KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SIZE,
};
use cvmem_sync::{ConcurrentTracker, LeftRight, SharedTracker};
use kvm_ioctls::VmFd;

use crate::attributes::{Attributes2Abi, KvmAttributes};
use crate::backing::{Backing, SlotMemory};
use crate::error::{Error, Result};
use crate::listener::{self, Cause, ConversionListener, MemoryEvent, SlotRange};
use crate::observe::{Counters, MemoryStats};
use crate::query::MemoryQuery;
use crate::request::{guest_scope, ConversionRequest, RequestSource};

pub(crate) mod access;
mod model;
mod slots;
mod snapshot;

use model::{Model, Token};

/// A memslot to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotSpec {
    /// Slot id (0 ..= 32763).
    pub slot: u32,
    /// First guest-physical byte (4 KiB aligned).
    pub gpa: Gpa,
    /// Size in bytes (4 KiB aligned, non-zero).
    pub size: u64,
    /// Host memory behind it.
    pub backing: Backing,
    /// The largest mapping the host memory allows (the tracker's `backing`): what a hugepage
    /// backed guest_memfd or THP would give. The host mapping is aligned for it.
    pub max_level: Level,
}

/// The TDP MMU model a [`CvmMemory`] may keep as an observer (feature `mmu-model`,
/// [`CvmMemory::with_mmu`]): its page-table layout and hugepage recovery policy.
#[cfg(feature = "mmu-model")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmuConfig {
    /// `split` (TDX-like: a private and a shared root) or `unified` (SNP-like: one root).
    pub layout: Layout,
    /// When huge mappings come back after a region became uniform again.
    pub recovery: Recovery,
}

#[cfg(feature = "mmu-model")]
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

/// The state [`MemoryQuery`] handles read without blocking: the tracker and per-slot facts,
/// each published by left-right copies (cvmem-sync), plus the optional MMU model.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) tracker: ConcurrentTracker,
    pub(crate) slots: LeftRight<BTreeMap<u32, SlotInfo>>,
    pub(crate) model: Model,
}

impl Shared {
    /// Runs `f` on one committed state of the tracker (never waits for a memslot change;
    /// runs again if a conversion overlapped it, see [`ConcurrentTracker::read`]).
    pub(crate) fn tracker<R>(&self, mut f: impl FnMut(&SharedTracker) -> R) -> R {
        self.tracker.read(|s| f(s.tracker()))
    }
}

/// Time spent in each step of one conversion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConversionCost {
    /// The tracker (and the MMU model, if kept): reading the runs that change, storing the
    /// attributes and large-page info in both copies of the concurrent front and publishing
    /// them (and the model's zaps, splits and recovery). The cost of tracking itself.
    pub tracking: Duration,
    /// Of `tracking`: the MMU model's invalidation alone (zaps and splits; zero without one).
    pub invalidate: Duration,
    /// KVM_SET_MEMORY_ATTRIBUTES (zero where KVM lacks it).
    pub kvm: Duration,
    /// Discarding old contents (fallocate / madvise).
    pub discard: Duration,
    /// Listener notifications.
    pub listeners: Duration,
}

impl ConversionCost {
    /// Adds `other`'s time to each step (a request converted in parts).
    fn add(&mut self, other: &ConversionCost) {
        self.tracking += other.tracking;
        self.invalidate += other.invalidate;
        self.kvm += other.kvm;
        self.discard += other.discard;
        self.listeners += other.listeners;
    }
}

/// What a conversion changes (see [`CvmMemory::plan`]).
struct Plan {
    /// The runs of another kind in the range, with their old attributes.
    changed: Vec<(GfnRange, u64)>,
    /// Their parts inside memslots (what listeners hear).
    slot_ranges: Vec<SlotRange>,
}

impl Plan {
    fn event(&self, to: Kind) -> MemoryEvent<'_> {
        MemoryEvent {
            to,
            cause: Cause::Conversion,
            ranges: &self.slot_ranges,
        }
    }
}

/// The steps of a conversion done so far: what [`CvmMemory::roll_back`] undoes.
#[derive(Default)]
struct Progress {
    /// The model's invalidation window, open until it ends or is aborted.
    model_window: Option<Token>,
    /// Listeners heard of a change to private (step 2).
    listeners_told: bool,
    /// KVM has the new attributes (step 3).
    kvm_set: bool,
    /// The tracker holds the new attributes (step 4).
    stored: bool,
}

/// The result of a conversion that succeeded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Conversion {
    /// Pages whose kind changed (0: the range already had it; nothing was done).
    pub changed_pages: u64,
    /// The changed ranges inside memslots (what listeners saw).
    pub slot_ranges: Vec<SlotRange>,
    /// Bytes whose old contents were discarded.
    pub discarded_bytes: u64,
    /// Pages of a guest's request to make memory shared that lie outside every memslot and were
    /// left alone (see [`RequestError::OutsideMemslots`](crate::RequestError) for the other
    /// direction).
    pub outside_pages: u64,
    /// Time per step.
    pub cost: ConversionCost,
}

/// A VM's convertible memory: memslots and their host memory, the private/shared state (the
/// cvmem [`Tracker`] behind cvmem-sync's [`ConcurrentTracker`]), KVM's attributes and
/// listeners, updated together; optionally the page tables KVM would build (feature
/// `mmu-model`).
///
/// `CvmMemory` is `Sync`: vCPU threads convert through `&self` (conversions and slot changes
/// are serialised), and [`MemoryQuery`] handles read the state from any thread without ever
/// blocking, always seeing a committed state (never half a conversion).
pub struct CvmMemory {
    shared: Arc<Shared>,
    /// Host memory per slot; its lock also serialises conversions and slot changes.
    memory: Mutex<BTreeMap<u32, SlotMemory>>,
    listeners: RwLock<Vec<Arc<dyn ConversionListener>>>,
    vm: Option<Arc<VmFd>>,
    /// Where KVM keeps PRIVATE (decided once, from the VM's capabilities).
    attributes: KvmAttributes,
    notes: Mutex<Vec<String>>,
    /// Nanoseconds spent in the tracker and the MMU model (locks included), ever.
    tracking_ns: AtomicU64,
    counters: Counters,
}

impl std::fmt::Debug for CvmMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CvmMemory")
            .field("attributes", &self.attributes)
            .field("vm", &self.vm.is_some())
            .finish_non_exhaustive()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl CvmMemory {
    /// Memory of the VM `vm`. PRIVATE goes where the VM keeps it ([`KvmAttributes::probe`]
    /// with the default [`Attributes2Abi`]): `KVM_SET_MEMORY_ATTRIBUTES` on the VM, or
    /// `KVM_SET_MEMORY_ATTRIBUTES2` on each memslot's guest_memfd; where it keeps none, this
    /// object's state is the only record of which memory is private. A note says which, once.
    pub fn new(vm: Arc<VmFd>) -> Self {
        let (attributes, why) = KvmAttributes::probe(&vm, Attributes2Abi::default());
        Self::build(Some(vm), Model::none(), attributes, why)
    }

    /// As [`CvmMemory::new`], with where KVM keeps PRIVATE decided by the caller (e.g. from
    /// [`KvmAttributes::probe`] with the guest_memfd ABI numbers of its kernel's headers).
    pub fn with_attributes(vm: Arc<VmFd>, attributes: KvmAttributes) -> Self {
        let why = format!("KVM attributes: {} (chosen by the VMM)", attributes.name());
        Self::build(Some(vm), Model::none(), attributes, why)
    }

    /// As [`CvmMemory::new`], with the TDP MMU model kept as an observer of every conversion,
    /// memslot change and reported guest access.
    #[cfg(feature = "mmu-model")]
    pub fn with_mmu(vm: Arc<VmFd>, mmu: MmuConfig) -> Self {
        let (attributes, why) = KvmAttributes::probe(&vm, Attributes2Abi::default());
        Self::build(Some(vm), Model::new(Some(mmu)), attributes, why)
    }

    /// Memory without a VM: anonymous slots only, no KVM calls (for tests and tools).
    pub fn detached() -> Self {
        Self::build(None, Model::none(), KvmAttributes::None, String::new())
    }

    /// As [`CvmMemory::detached`], with the MMU model kept.
    #[cfg(feature = "mmu-model")]
    pub fn detached_with_mmu(mmu: MmuConfig) -> Self {
        Self::build(
            None,
            Model::new(Some(mmu)),
            KvmAttributes::None,
            String::new(),
        )
    }

    fn build(vm: Option<Arc<VmFd>>, model: Model, attributes: KvmAttributes, why: String) -> Self {
        let mem = CvmMemory {
            shared: Arc::new(Shared {
                tracker: ConcurrentTracker::new(Tracker::new()),
                slots: LeftRight::new(BTreeMap::new()),
                model,
            }),
            memory: Mutex::new(BTreeMap::new()),
            listeners: RwLock::new(Vec::new()),
            attributes,
            notes: Mutex::new(Vec::new()),
            tracking_ns: AtomicU64::new(0),
            counters: Counters::default(),
            vm,
        };
        if mem.vm.is_some() && attributes != KvmAttributes::PerVm {
            mem.note(why);
        }
        mem
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

    /// Whether KVM keeps PRIVATE (per VM or per guest_memfd).
    pub fn kvm_attributes(&self) -> bool {
        self.attributes.in_kvm()
    }

    /// Where KVM keeps PRIVATE.
    pub fn attributes_in_kvm(&self) -> KvmAttributes {
        self.attributes
    }

    /// The MMU model's layout and recovery policy, if this memory keeps one.
    #[cfg(feature = "mmu-model")]
    pub fn mmu_config(&self) -> Option<MmuConfig> {
        self.shared.model.with(|vm| MmuConfig {
            layout: vm.layout(),
            recovery: vm.recovery(),
        })
    }

    /// A handle for reading the memory state from any thread (never blocks).
    pub fn query(&self) -> MemoryQuery {
        MemoryQuery::new(Arc::clone(&self.shared))
    }

    /// Total time this object has spent in the tracker (and the MMU model, if kept):
    /// conversions, faults, slot changes — the cost of tracking. Reading it before and after a
    /// vCPU exit gives that exit's tracking time.
    pub fn tracking_time(&self) -> Duration {
        Duration::from_nanos(self.tracking_ns.load(Ordering::Relaxed))
    }

    /// What this memory has done so far: conversions, pages, discards, refusals, rollbacks.
    pub fn stats(&self) -> MemoryStats {
        self.counters.read()
    }

    /// Runs `f`, counting its time as tracking time.
    fn timed<R>(&self, f: impl FnOnce() -> R) -> (R, Duration) {
        let t = Instant::now();
        let r = f();
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
    fn slot_runs(&self, slot: u32, kind: Kind) -> Vec<SlotRange> {
        let Some(info) = self.shared.slots.read(|slots| slots.get(&slot).copied()) else {
            return Vec::new();
        };
        self.shared.tracker(|tracker| {
            let Some(s) = tracker.memslot(slot) else {
                return Vec::new();
            };
            let base = s.base_gfn();
            tracker
                .runs(s.range())
                .filter(|r| (r.attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0) == kind.is_private())
                .map(|r| SlotRange {
                    slot,
                    range: r.range(),
                    hva: info.hva + (r.start.0 - base.0) * PAGE_SIZE,
                })
                .collect()
        })
    }

    /// Registers a listener and tells it which slot memory is shared now (cause
    /// [`Cause::Registered`]). If it refuses, it is not registered.
    pub fn add_listener(&self, l: Arc<dyn ConversionListener>) -> Result<()> {
        let memory = self.lock_memory();
        let mut shared = Vec::new();
        for &slot in memory.keys() {
            shared.extend(self.slot_runs(slot, Kind::Shared));
        }
        shared.sort_by_key(|r| r.range.start);
        if !shared.is_empty() {
            l.notify(&MemoryEvent {
                to: Kind::Shared,
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

    /// `KVM_EXIT_HYPERCALL`: the guest's KVM_HC_MAP_GPA_RANGE decoded and converted; the
    /// status to put in the exit's `ret` (0, `-EINVAL`, `-KVM_ENOSYS` for another hypercall, or
    /// the errno of a failed conversion). Every refusal is counted in [`MemoryStats`].
    pub fn handle_hypercall(&self, nr: u64, args: &[u64; 6]) -> u64 {
        match ConversionRequest::from_hypercall(nr, args) {
            Ok(req) => crate::guest_status(&self.convert(&req)),
            Err(e) => self.refuse(&e),
        }
    }

    /// An `out` to this crate's port transport ([`crate::PORT_MAP_GPA`]): the request in the
    /// registers decoded and converted; the status for the guest's RAX.
    pub fn handle_port_io(&self, port: u16, data: &[u8], regs: &crate::TransportRegs) -> u64 {
        match ConversionRequest::from_port_io(port, data, regs) {
            Ok(req) => crate::guest_status(&self.convert(&req)),
            Err(e) => self.refuse(&e),
        }
    }

    /// `KVM_EXIT_MEMORY_FAULT`: the implicit conversion of the faulting range to the kind of
    /// the access. An error means the vCPU cannot usefully re-enter (stop it, as QEMU does).
    pub fn handle_memory_fault(&self, flags: u64, gpa: u64, size: u64) -> Result<Conversion> {
        match ConversionRequest::from_memory_fault(flags, gpa, size) {
            Ok(req) => self.convert(&req),
            Err(e) => {
                self.refuse(&e);
                Err(e.into())
            }
        }
    }

    /// A guest request that did not decode (a malformed hypercall, a port write of the wrong
    /// size, unknown memory-fault flags): counted as refused in [`MemoryStats`] like every
    /// other refusal, and the status to give the guest (`-EINVAL`, or `-KVM_ENOSYS` for an
    /// unknown hypercall).
    pub fn refuse(&self, e: &crate::RequestError) -> u64 {
        let status = e.guest_status();
        let e = Error::Request(e.clone());
        self.counters.failure(&e);
        tracing::debug!(target: "cvmem_kvm", error = %e, "guest request refused");
        status
    }

    /// KVM_SET_MEMORY_ATTRIBUTES on the VMM's own initiative (e.g. everything private at
    /// start-up, as QEMU does for guest_memfd slots), with discards and listeners as for a
    /// guest request. Only 0 (shared) and PRIVATE are accepted.
    pub fn set_attributes(&self, gpa: Gpa, size: u64, attributes: u64) -> Result<Conversion> {
        let request = self
            .shared
            .tracker(|t| t.validate_attributes(gpa, size, attributes))
            .map_err(|e| {
                let e = Error::from(e);
                self.counters.failure(&e);
                tracing::debug!(target: "cvmem_kvm", error = %e, "attribute change refused");
                e
            })?;
        self.convert(&ConversionRequest {
            range: request.range(),
            to: request.to(),
            hint: Level::K4,
            source: RequestSource::Vmm,
        })
    }

    /// Applies a conversion request: the pages of `req.range` that are not yet of kind `req.to`
    /// change kind. Nothing to change is KVM's early exit: nothing is done. Otherwise, inside
    /// one invalidation of the range (faults racing with it through cvmem-sync retry; readers
    /// keep seeing the old state until step 4 publishes the new one):
    ///
    /// 1. the MMU model, if kept, invalidates the range ([`cvmem::mmu::Vm::begin_conversion`]:
    ///    zaps and splits);
    /// 2. to private: listeners hear the shared slot ranges go (no DMA into private memory);
    ///    to shared: the old private contents are discarded (guest_memfd hole punch);
    /// 3. KVM_SET_MEMORY_ATTRIBUTES, where KVM has it;
    /// 4. the tracker stores the attributes and large-page info and publishes them (and the
    ///    model ends its window);
    /// 5. to private: separately backed shared memory is discarded (`MADV_DONTNEED`, or a punch
    ///    of its file); to shared: listeners hear the new shared slot ranges.
    ///
    /// If a step fails, the earlier ones are undone (tracker, KVM, listeners agree again; zapped
    /// mappings simply fault in again) and the error is returned; contents already discarded
    /// stay discarded — the guest gave them up by asking. [`Error::Inconsistent`] reports the
    /// rare case where undoing failed too.
    pub fn convert(&self, req: &ConversionRequest) -> Result<Conversion> {
        let _span = tracing::debug_span!(
            target: "cvmem_kvm",
            "convert",
            gpa = req.range.start.gpa().0,
            pages = req.range.len(),
            to = req.to.name(),
            source = req.source.name(),
        )
        .entered();
        let result = self.convert_in_scope(req);
        self.counters.conversion(&result);
        match &result {
            Ok(c) => {
                tracing::debug!(target: "cvmem_kvm", changed_pages = c.changed_pages, discarded = c.discarded_bytes, "converted");
            }
            Err(e @ Error::Inconsistent { .. }) => {
                tracing::error!(target: "cvmem_kvm", error = %e, "conversion failed and could not be rolled back");
            }
            Err(e) if crate::observe::is_refusal(e) => {
                tracing::debug!(target: "cvmem_kvm", error = %e, "conversion refused");
            }
            Err(e) => {
                tracing::warn!(target: "cvmem_kvm", error = %e, "conversion failed; rolled back");
            }
        }
        result
    }

    /// What [`CvmMemory::convert`] does, without its span and counters: the parts of the
    /// request its source may convert ([`guest_scope`]), each converted in turn under the
    /// memory lock (so the memslots cannot change in between).
    fn convert_in_scope(&self, req: &ConversionRequest) -> Result<Conversion> {
        let memory = self.lock_memory();
        let scope = self.shared.tracker(|t| guest_scope(t, req))?;
        let mut out = Conversion {
            outside_pages: scope.outside_pages,
            ..Conversion::default()
        };
        for range in scope.parts {
            let part = self.convert_locked(&memory, &ConversionRequest { range, ..*req })?;
            out.changed_pages += part.changed_pages;
            out.slot_ranges.extend(part.slot_ranges);
            out.discarded_bytes += part.discarded_bytes;
            out.cost.add(&part.cost);
        }
        Ok(out)
    }

    /// Converts `req.range` (inside the caller's memory lock): the steps of
    /// [`CvmMemory::convert`] in order ([`CvmMemory::convert_steps`]); on any failure one
    /// rollback path ([`CvmMemory::roll_back`]) undoes what [`Progress`] says was done.
    fn convert_locked(
        &self,
        memory: &BTreeMap<u32, SlotMemory>,
        req: &ConversionRequest,
    ) -> Result<Conversion> {
        let request = AttrRequest::new(req.range, req.to)?;
        let (plan, took) = self.timed(|| self.plan(request));
        let mut out = Conversion::default();
        out.cost.tracking = took;
        // KVM's early exit: nothing changes, nothing is done.
        if plan.changed.is_empty() {
            return Ok(out);
        }
        out.changed_pages = plan.changed.iter().map(|c| c.0.len()).sum();
        let listeners = self.listeners();
        let mut done = Progress::default();
        let t = Instant::now();
        let result = self.convert_steps(memory, request, &plan, &listeners, &mut done, &mut out);
        let host = out.cost.listeners + out.cost.discard + out.cost.kvm;
        let took = t.elapsed().saturating_sub(host);
        self.tracking_ns.fetch_add(nanos(took), Ordering::Relaxed);
        out.cost.tracking += took;
        match result {
            Ok(()) => {
                out.slot_ranges = plan.slot_ranges;
                Ok(out)
            }
            Err(cause) => Err(self.roll_back(memory, request.to(), &plan, &listeners, done, cause)),
        }
    }

    /// What a conversion changes: the runs of another kind in the range (with their old
    /// attributes) and their parts inside memslots. The memory lock keeps it true until the
    /// store.
    fn plan(&self, request: AttrRequest) -> Plan {
        let target = request.attributes();
        let changed: Vec<(GfnRange, u64)> = self.shared.tracker(|t| {
            t.runs(request.range())
                .filter(|r| r.attributes != target)
                .map(|r| (r.range(), r.attributes))
                .collect()
        });
        let slot_ranges = self.clip_to_slots(changed.iter().map(|c| c.0));
        Plan {
            changed,
            slot_ranges,
        }
    }

    /// The steps of a conversion, each recorded in `done` once it succeeded. Steps 1-4 run
    /// inside one invalidation of the range: readers keep the old state, faults retry.
    fn convert_steps(
        &self,
        memory: &BTreeMap<u32, SlotMemory>,
        request: AttrRequest,
        plan: &Plan,
        listeners: &[Arc<dyn ConversionListener>],
        done: &mut Progress,
        out: &mut Conversion,
    ) -> Result<()> {
        let (to, range, target) = (request.to(), request.range(), request.attributes());
        let event = plan.event(to);
        let pending = self.shared.tracker.begin_update(range);
        // 1. The model, if kept, zaps and splits.
        let (token, took) = self.timed(|| self.shared.model.begin(request));
        out.cost.invalidate = took;
        done.model_window = Some(token?);
        // 2. To private: DMA users let go of the shared ranges (`notify_all` undoes its own
        //    partial notifications); to shared: the old private contents go.
        match to {
            Kind::Private => {
                let t = Instant::now();
                let told = listener::notify_all(listeners, &event);
                out.cost.listeners += t.elapsed();
                told?;
                done.listeners_told = true;
            }
            Kind::Shared => {
                let t = Instant::now();
                let discarded = discard(memory, &plan.slot_ranges, Kind::Shared);
                out.cost.discard += t.elapsed();
                out.discarded_bytes = discarded?;
            }
        }
        // 3. KVM's attributes, where KVM has them.
        if self.attributes.in_kvm() {
            let t = Instant::now();
            let set = self.set_kvm_attributes(memory, range, target);
            out.cost.kvm += t.elapsed();
            set?;
            done.kvm_set = true;
        }
        // 4. The tracker stores (once, in the front's shared store); the model ends its window.
        pending.commit_attributes(range, target)?;
        done.stored = true;
        if let Some(token) = done.model_window.take() {
            self.shared.model.end(token)?;
        }
        // 5. To private: separately backed shared memory goes; to shared: DMA users hear of the
        //    new shared ranges.
        match to {
            Kind::Private => {
                let t = Instant::now();
                let discarded = discard(memory, &plan.slot_ranges, Kind::Private);
                out.cost.discard += t.elapsed();
                out.discarded_bytes = discarded?;
            }
            Kind::Shared => {
                let t = Instant::now();
                let told = listener::notify_all(listeners, &event);
                out.cost.listeners += t.elapsed();
                told?;
            }
        }
        Ok(())
    }

    /// The one rollback path: undoes, newest first, what `done` says a failed conversion did,
    /// and returns `cause` — or [`Error::Inconsistent`] with the first undo that failed (the
    /// others are still tried). Contents already discarded stay discarded: the guest gave them
    /// up by asking; zapped mappings simply fault in again.
    fn roll_back(
        &self,
        memory: &BTreeMap<u32, SlotMemory>,
        to: Kind,
        plan: &Plan,
        listeners: &[Arc<dyn ConversionListener>],
        done: Progress,
        cause: Error,
    ) -> Error {
        let mut why: Option<String> = None;
        let mut note = |r: std::result::Result<(), String>| {
            if let (Err(e), None) = (r, &why) {
                why = Some(e);
            }
        };
        if done.stored {
            let (r, _) = self.timed(|| self.restore_runs(&plan.changed));
            note(r.map_err(|e| e.to_string()));
        }
        if let Some(token) = done.model_window {
            let (r, _) = self.timed(|| self.shared.model.abort(token));
            note(r.map_err(|e| e.to_string()));
        }
        if done.kvm_set {
            for &(range, old) in &plan.changed {
                note(
                    self.set_kvm_attributes(memory, range, old)
                        .map_err(|e| e.to_string()),
                );
            }
        }
        if done.listeners_told {
            note(listener::undo(listeners, &plan.event(to)));
        }
        match why {
            None => cause,
            Some(why) => Error::Inconsistent {
                cause: cause.to_string(),
                why,
            },
        }
    }

    /// Stores the old attributes of every changed run back, in the tracker and the model.
    fn restore_runs(&self, changed: &[(GfnRange, u64)]) -> cvmem::Result<()> {
        for &(range, old) in changed {
            let request = AttrRequest::new(range, Kind::from_attributes(old))?;
            self.shared.tracker.convert_with(request, |_| {})?;
        }
        self.shared.model.restore(changed)
    }

    /// The parts of `ranges` (in address order) inside memslots.
    fn clip_to_slots(&self, ranges: impl Iterator<Item = GfnRange>) -> Vec<SlotRange> {
        let infos = self.shared.slots.read(BTreeMap::clone);
        let ranges: Vec<GfnRange> = ranges.collect();
        self.shared.tracker(|tracker| {
            let mut out = Vec::new();
            for &range in &ranges {
                for s in tracker.memslots() {
                    if s.range().start >= range.end {
                        break;
                    }
                    if let (Some(r), Some(info)) = (s.range().intersect(&range), infos.get(&s.id()))
                    {
                        out.push(SlotRange {
                            slot: s.id(),
                            range: r,
                            hva: info.hva + (r.start.0 - s.base_gfn().0) * PAGE_SIZE,
                        });
                    }
                }
            }
            out
        })
    }

    fn set_kvm_attributes(
        &self,
        memory: &BTreeMap<u32, SlotMemory>,
        range: GfnRange,
        attributes: u64,
    ) -> Result<()> {
        crate::attributes::set(
            self.attributes,
            self.vm.as_deref(),
            memory,
            range,
            attributes,
        )
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

fn discard(memory: &BTreeMap<u32, SlotMemory>, ranges: &[SlotRange], to: Kind) -> Result<u64> {
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

#[cfg(all(test, feature = "mmu-model"))]
mod mmu_tests;
#[cfg(test)]
mod tests;

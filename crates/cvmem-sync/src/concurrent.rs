//! [`ConcurrentTracker`]: the core [`Tracker`] with its VM attributes in one shared copy, its
//! memslots and files behind left-right publication, and KVM's invalidation protocol.

use std::alloc::{handle_alloc_error, Layout};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;

use cvmem::{
    Access, AttrBackend, AttrCheck, AttrMode, AttrRequest, AttrRun, AttrStore, FaultCode, Gfn,
    GfnRange, GmemFlags, GmemId, GmemOffset, Gpa, Level, MapGpaRange, MaxLevel, MemoryRegion,
    Result, SlotChange, Tracker, GFN_END,
};

use core::ops::ControlFlow;

use crate::fault::{FaultAnswer, FaultTicket};
use crate::fault_view::FaultView;
use crate::front_seq::FrontSeq;
use crate::invalidate::InvalidateSeq;
use crate::left_right::{Apply, LeftRight, Writer};
use crate::one_copy::{OneCopyWriter, SharedAttrs};
use crate::sync::{retry_hint, wait_hint};

/// The tracker of a [`ConcurrentTracker`]: the core's, with its VM attributes in the front's
/// one shared store.
pub type SharedTracker = Tracker<SharedAttrs>;

/// What left-right publishes: the tracker (memslots, files, large-page info; its VM attributes
/// are shared, not copied) and how many of its changes were published.
#[derive(Clone, Debug)]
struct State {
    tracker: SharedTracker,
    generation: u64,
}

/// One committed state, as a reader sees it.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    tracker: &'a SharedTracker,
    generation: u64,
}

impl Snapshot<'_> {
    /// The tracker in this state.
    pub fn tracker(&self) -> &SharedTracker {
        self.tracker
    }

    /// The number of committed changes (conversions, memslot changes, inhibits, file changes)
    /// before this state; 0 for the state the [`ConcurrentTracker`] was made from.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Reads that found a write in progress this many times go on under the writers' lock, taken
/// whenever it is free between two writes, so that a stream of writes cannot starve them.
const READ_ATTEMPTS: u32 = 64;

/// A [`Tracker`] shared by any number of reading threads and serialised writers.
///
/// The VM's attributes and each guest_memfd's are kept once, each in a
/// [`OneCopyStore`](crate::one_copy::OneCopyStore) every reader reads without a lock (the
/// front's sequence count tells it to retry if a conversion overlapped it); memslots, the
/// files' folios and references and large-page info are published by left-right (two copies,
/// written twice, small and not a guest's to grow), and each memslot's part of the fault rule
/// is kept in atomic words besides, read without a lock. A conversion is stored once, at the
/// store's cost. Readers (`attributes`, `runs`, `max_mapping_level`, [`read`](Self::read),
/// [`fault`](Self::fault)) never wait for writers (the published copy is try-locked, the store
/// and the words read without a lock; a read that changes overlapped 64 times running goes on
/// under the writers' lock when that is free) and always see one committed state. Every change runs
/// inside an invalidation of the gfns it affects, so a fault racing with it is told to retry
/// rather than map across them. See the crate docs for the design.
#[derive(Debug)]
pub struct ConcurrentTracker {
    /// The rest of the tracker, and the stores' writers under the writers' lock.
    state: LeftRight<State, Writes>,
    /// Odd while a conversion is stored; half of it counts the conversions.
    seq: FrontSeq,
    /// The memslots' part of the fault rule, read without a copy's lock.
    view: FaultView,
    /// The VM's attribute store, as the copies hold it: the fault path probes it directly.
    attrs: SharedAttrs,
    invalidate: InvalidateSeq,
}

impl Default for ConcurrentTracker {
    fn default() -> Self {
        Self::new(Tracker::new())
    }
}

impl ConcurrentTracker {
    /// Shares `tracker`: its attribute stores (the VM's, each file's) move into shared
    /// stores, the rest is copied once (the second left-right copy). Aborts, as an allocation
    /// in `std` does, if memory runs out ([`try_new`](Self::try_new) returns the error
    /// instead).
    pub fn new(tracker: Tracker) -> Self {
        Self::try_new(tracker).unwrap_or_else(|_| handle_alloc_error(Layout::new::<Self>()))
    }

    /// [`new`](Self::new), with `NoMemory` returned rather than an abort.
    pub fn try_new(tracker: Tracker) -> Result<Self> {
        let check = tracker.attribute_check();
        // The VM's writer first, then each file's in id order, as the stores are handed over.
        let mut writers = Vec::new();
        let tracker = tracker.map_attribute_store(|_, store: AttrStore| {
            let (writer, shared) = share(&store)?;
            writers.push(writer);
            Ok(shared)
        })?;
        let mut writers = writers.into_iter();
        let Some(writer) = writers.next() else {
            unreachable!("the VM's store is handed over first");
        };
        let view = FaultView::new();
        drop(view.refresh(&tracker, 0));
        let attrs = tracker.attribute_store().clone();
        Ok(ConcurrentTracker {
            state: LeftRight::with_writer_data(
                State {
                    tracker,
                    generation: 0,
                },
                Writes {
                    attrs: writer,
                    files: writers.collect(),
                    check,
                },
            ),
            seq: FrontSeq::default(),
            view,
            attrs,
            invalidate: InvalidateSeq::default(),
        })
    }

    /// Runs `f` on one committed state. Never waits for a writer; a conversion that overlaps
    /// the read makes it run `f` again (so `f` may run more than once, and its answers from an
    /// overlapped run are thrown away), and after a few such overlaps the read runs under the
    /// writers' lock once that is free between two writes. So it may be called holding a lock
    /// that the writers' `zap` callbacks take (KVM's `mmu_lock`). `f` must not change the
    /// tracker through `self`.
    #[inline]
    pub fn read<R>(&self, mut f: impl FnMut(&Snapshot<'_>) -> R) -> R {
        self.retry(|| self.try_read(&mut f))
    }

    /// A read that looks one store up, for this front's own lookups: `checked` with the store
    /// validating that lookup itself, or `unchecked` under the front's count. Where the VM
    /// keeps PRIVATE (every kernel up to 7.3, and what cvmem-kvm and the C API keep) the
    /// store's own count suffices (validated by the front's count too, the query through the
    /// copy cost 1.47-1.53× the bare tracker's, not 1.26-1.30×): the copy read was published
    /// when the read began, a memslot
    /// change that publishes the other copy meanwhile holds the writers' lock until this read
    /// leaves, and a conversion touches no copy — so the lookup sees the store as it was with
    /// this copy published. Where files keep it, a file's conversion changes folios in the
    /// copies too, and only the front's count tells the two states apart.
    #[inline]
    fn read_lookup<R>(
        &self,
        checked: impl FnOnce(&SharedTracker) -> R,
        mut unchecked: impl FnMut(&SharedTracker) -> R,
    ) -> R {
        let per_vm = self.state.read(|s| {
            let t = &s.tracker;
            (t.attr_mode() == AttrMode::PerVm).then(|| checked(t))
        });
        match per_vm {
            Some(r) => r,
            None => self.retry(|| self.try_read_one(|s| unchecked(s.tracker))),
        }
    }

    /// The memslots' words and the store they are read with, for this crate's tests.
    #[cfg(test)]
    pub(crate) fn view(&self) -> (&FaultView, &SharedAttrs) {
        (&self.view, &self.attrs)
    }

    /// `change` applied to both copies and published ([`Writer::apply_publishing`]), the
    /// memslots' words rewritten from the changed copy as it is published, and the writers'
    /// check of attributes read again from the result (if `change` panics, the next writer
    /// reads it again: [`ConcurrentTracker::writer`]).
    fn publish<R>(
        &self,
        writer: &mut StateWriter<'_>,
        change: impl FnMut(&mut State) -> Apply<R>,
    ) -> R {
        let r = writer.apply_publishing(change, |s| self.view.refresh(&s.tracker, s.generation));
        writer.data().check = writer.read(|s| s.tracker.attribute_check());
        r
    }

    /// The writers' lock. If the last change did not return (it panicked after publishing),
    /// the writers' check is read again from the published state it never refreshed.
    #[inline]
    fn writer(&self) -> StateWriter<'_> {
        self.state
            .writer_repairing(|s, w| w.check = s.tracker.attribute_check())
    }

    /// `attempt` until it answers: a few times at once, then under the writers' lock.
    #[inline]
    fn retry<R>(&self, mut attempt: impl FnMut() -> Option<R>) -> R {
        for _ in 0..READ_ATTEMPTS {
            if let Some(r) = attempt() {
                return r;
            }
            retry_hint();
        }
        self.read_waiting(attempt)
    }

    /// A read that conversions kept overlapping: under the writers' lock, taken when it is
    /// free, so that no write overlaps it; else again as before. Never waits for the lock: a
    /// writer holding it may be zapping, waiting for a lock this reader's caller holds (a
    /// fault handler's `mmu_lock`), as the stress storm's readers do.
    #[cold]
    fn read_waiting<R>(&self, mut attempt: impl FnMut() -> Option<R>) -> R {
        let mut polls = 0u32;
        loop {
            if let Some(Some(r)) = self.state.if_writers_idle(&mut attempt) {
                return r;
            }
            if let Some(r) = attempt() {
                return r;
            }
            polls = polls.saturating_add(1);
            wait_hint(polls);
        }
    }

    /// One attempt of [`read`](Self::read): `None` if a conversion was in progress or began.
    fn try_read<R>(&self, mut f: impl FnMut(&Snapshot<'_>) -> R) -> Option<R> {
        let seq = self.seq.read_begin()?;
        // A run that a conversion overlapped may combine answers of two states that no
        // tracker code expects together (and trip an overflow check): its panic is a torn
        // read's, thrown away with its answer. A run nothing overlapped panics as it would.
        let r = catch_unwind(AssertUnwindSafe(|| self.run(seq, &mut f)));
        let valid = self.seq.read_valid(seq);
        match r {
            Ok(r) => valid.then_some(r),
            Err(panic) if valid => resume_unwind(panic),
            Err(_) => None,
        }
    }

    /// [`try_read`](Self::try_read) of a single lookup (no panic guard: one lookup of the
    /// store, validated or not, cannot combine two states that tracker code would trip over —
    /// an unvalidated one gives some answer for any contents).
    #[inline]
    fn try_read_one<R>(&self, mut f: impl FnMut(&Snapshot<'_>) -> R) -> Option<R> {
        let seq = self.seq.read_begin()?;
        let r = self.run(seq, &mut f);
        self.seq.read_valid(seq).then_some(r)
    }

    /// `f` on the published copy, as the state after the writes that `seq` counts.
    #[inline]
    fn run<R>(&self, seq: u64, f: &mut impl FnMut(&Snapshot<'_>) -> R) -> R {
        self.state.read(|s| {
            f(&Snapshot {
                tracker: &s.tracker,
                generation: s.generation + seq / 2,
            })
        })
    }

    /// The number of committed changes so far.
    pub fn generation(&self) -> u64 {
        self.read(|s| s.generation())
    }

    /// A tracker of its own in the current state, with its attribute stores (the VM's, each
    /// file's) in [`AttrStore`]s (O(R)).
    pub fn to_tracker(&self) -> Result<Tracker> {
        self.read(|s| {
            s.tracker.clone().map_attribute_store(|_, shared| {
                let mut store = AttrStore::new();
                copy_runs(&shared, |range, attributes| store.set(range, attributes))?;
                Ok(store)
            })
        })
    }

    /// Heap bytes held: the attribute stores once (the VM's, each file's), the rest of the
    /// tracker twice (its two left-right copies), and the memslots' words. What a guest can
    /// make the front hold is bounded by the stores'.
    pub fn heap_bytes(&self) -> usize {
        self.read(|s| {
            let t = &s.tracker;
            let stores = t.attribute_store().heap_bytes()
                + t.gmems()
                    .map(|(_, g)| g.attrs().heap_bytes())
                    .sum::<usize>();
            stores + 2 * (t.heap_bytes() - stores)
        }) + self.view.heap_bytes()
    }

    /// The attributes of `gfn`.
    pub fn attributes(&self, gfn: Gfn) -> u64 {
        let attributes = |t: &SharedTracker| t.attributes(gfn);
        self.read_lookup(attributes, attributes)
    }

    /// Whether every gfn of `range` has `attributes` under `mask`, in one state.
    pub fn range_has_attributes(&self, range: GfnRange, attributes: u64, mask: u64) -> bool {
        self.read(|s| s.tracker.range_has_attributes(range, attributes, mask))
    }

    /// Visits the attribute runs covering `range`, clipped to it, in address order, until `f`
    /// breaks (its value is returned). Streams: the runs are read [`RUN_BATCH`] at a time, each
    /// batch from one committed state into one buffer reused for the whole walk, and `f` runs
    /// outside the read side — so a walk over millions of runs allocates once, never holds a
    /// copy for long, and `f` may call back into this tracker. Where a change lands between two
    /// batches, the runs on either side come from different states (two adjacent runs may then
    /// have equal attributes).
    pub fn for_each_run<B>(
        &self,
        range: GfnRange,
        mut f: impl FnMut(&AttrRun) -> ControlFlow<B>,
    ) -> Option<B> {
        let mut batch: Vec<AttrRun> = Vec::with_capacity(RUN_BATCH);
        let mut from = range.start;
        while from < range.end {
            self.read(|s| {
                // Again from empty if the read is repeated.
                batch.clear();
                batch.extend(
                    s.tracker
                        .runs(GfnRange::new(from, range.end))
                        .take(RUN_BATCH),
                )
            });
            for run in &batch {
                if let ControlFlow::Break(b) = f(run) {
                    return Some(b);
                }
            }
            from = batch.last().map_or(range.end, |r| r.end);
        }
        None
    }

    /// The attribute runs covering `range`, clipped to it, all from one state; at most `limit`
    /// runs (the first ones), so a reader bounds the time it holds a copy.
    pub fn runs(&self, range: GfnRange, limit: usize) -> Vec<AttrRun> {
        self.read(|s| s.tracker.runs(range).take(limit).collect())
    }

    /// The core's fault-path answer on the current state. Use [`fault`](Self::fault) when a
    /// mapping will be installed from the answer.
    #[inline]
    pub fn max_mapping_level(&self, gpa: Gpa, access: Access) -> MaxLevel {
        let gfn = gpa.gfn();
        match self.try_words(gfn, access) {
            Some(Some(code)) => code.max_level(gfn, access),
            raced_or_copy => self.max_mapping_level_again(gpa, access, raced_or_copy.is_none()),
        }
    }

    /// One attempt of [`max_mapping_level`](Self::max_mapping_level) from the memslots' words
    /// where they are complete (PRIVATE kept per VM), with the store's own validation: the
    /// words hold still while the view's count does, and the store's one lookup is of one
    /// state — together the state at the lookup's instant. `None` if the words changed
    /// meanwhile, `Some(None)` where the copy must answer.
    #[inline]
    fn try_words(&self, gfn: Gfn, access: Access) -> Option<Option<FaultCode>> {
        let view = self.view.read_begin()?;
        let code = self.view.fault_code(gfn, access, || self.attrs.probe(gfn));
        self.view.read_valid(view).then_some(code)
    }

    /// [`max_mapping_level`](Self::max_mapping_level) after its first attempt: again while
    /// the words change (`raced`), else from the copy. Out of line, so that the first
    /// attempt's registers are not spent on it.
    #[cold]
    #[inline(never)]
    fn max_mapping_level_again(&self, gpa: Gpa, access: Access, raced: bool) -> MaxLevel {
        let gfn = gpa.gfn();
        let words = match raced {
            true => self.retry(|| self.try_words(gfn, access)),
            false => None,
        };
        match words {
            Some(code) => code.max_level(gfn, access),
            None => self.read_lookup(
                |t| t.max_mapping_level(gpa, access),
                |t| t.max_mapping_level_unchecked(gpa, access),
            ),
        }
    }

    /// One attempt of the fault path's read, validated once by the front's count (it gives
    /// the generation) and the view's, the store looked up unchecked inside: the answer and
    /// its generation, or `None` if a conversion was being stored or a change published. The
    /// memslots' words answer where they are complete — no copy's lock taken — and the copy
    /// elsewhere.
    #[inline]
    fn try_fault(&self, gpa: Gpa, access: Access) -> Option<(FaultCode, u64)> {
        let seq = self.seq.read_begin()?;
        let view = self.view.read_begin()?;
        let gfn = gpa.gfn();
        let probe = || self.attrs.probe_unchecked(gfn);
        let read = match self.view.fault_code(gfn, access, probe) {
            Some(code) => (code, self.view.generation() + seq / 2),
            None => self.copy_fault(seq, gpa, access),
        };
        (self.view.read_valid(view) && self.seq.read_valid(seq)).then_some(read)
    }

    /// [`try_fault`](Self::try_fault) from the copy, where the memslots' words are not
    /// complete.
    #[inline(never)]
    fn copy_fault(&self, seq: u64, gpa: Gpa, access: Access) -> (FaultCode, u64) {
        self.run(seq, &mut |s| {
            let answer = s.tracker.max_mapping_level_unchecked(gpa, access);
            (FaultCode::from(answer), s.generation)
        })
    }

    /// The fault path with KVM's retry protocol: records the invalidation sequence, reads the
    /// answer from the current state, and answers [`FaultAnswer::Retry`] if a change covering
    /// any gfn the answer would map is in progress, or if any change began or completed
    /// meanwhile. Before
    /// installing a mapping, the caller checks [`is_stale`](Self::is_stale) under the lock
    /// that its zap callbacks take (KVM's `mmu_lock`).
    pub fn fault(&self, gpa: Gpa, access: Access) -> FaultAnswer {
        let seq = self.invalidate.snapshot();
        // A conversion being stored or a change published means an invalidation is in
        // progress: retry at once, as KVM does.
        let Some((code, generation)) = self.try_fault(gpa, access) else {
            return FaultAnswer::Retry;
        };
        let answer = code.max_level(gpa.gfn(), access);
        let ticket = FaultTicket {
            gpa,
            access,
            answer,
            generation,
            seq,
        };
        if self.invalidate.retry(seq, ticket.range()) {
            FaultAnswer::Retry
        } else {
            FaultAnswer::Ready(ticket)
        }
    }

    /// KVM's `mmu_invalidate_retry_gfn()` over the whole range a mapping from `ticket` would
    /// cover: true if any change began or completed since the ticket was issued (as KVM, on any
    /// move of the sequence), or if the change in progress then covers part of the range.
    /// Call it under the lock that serialises installing mappings with the zap callbacks; if it
    /// returns false, a mapping of `ticket.range()` agrees with the current attributes and
    /// memslots, and any later change will zap it.
    pub fn is_stale(&self, ticket: &FaultTicket) -> bool {
        self.invalidate.retry(ticket.seq, ticket.range())
    }

    /// KVM_SET_MEMORY_ATTRIBUTES (see [`Tracker::set_memory_attributes`]).
    pub fn set_memory_attributes(&self, gpa: Gpa, size: u64, attributes: u64) -> Result<bool> {
        self.set_memory_attributes_with(gpa, size, attributes, |_| {})
    }

    /// KVM_SET_MEMORY_ATTRIBUTES in KVM's order: validate; return `Ok(false)` at once if the
    /// range already has the attributes; otherwise begin invalidating the range, call
    /// `zap(range)` (remove the mappings of the range, under the MMU lock), store the new
    /// attributes once, in the shared store (large-page info reads MIXED from it), end the
    /// invalidation.
    pub fn set_memory_attributes_with(
        &self,
        gpa: Gpa,
        size: u64,
        attributes: u64,
        zap: impl FnOnce(GfnRange),
    ) -> Result<bool> {
        let mut writer = self.writer();
        // Validated under the writers' lock: nothing changes it meanwhile.
        let request = writer.data().check.request(gpa, size, attributes)?;
        self.store_range(&mut writer, request.range(), request.attributes(), zap)
    }

    /// A checked attribute change (see [`AttrRequest`]) in KVM's order, as
    /// [`set_memory_attributes_with`](Self::set_memory_attributes_with).
    pub fn convert_with(&self, request: AttrRequest, zap: impl FnOnce(GfnRange)) -> Result<bool> {
        let mut writer = self.writer();
        writer.data().check.attributes(request.attributes())?;
        self.store_range(&mut writer, request.range(), request.attributes(), zap)
    }

    /// The store of a checked conversion, under the writers' lock, in one descent of the store
    /// ([`OneCopyWriter::set_with`]): `Ok(false)` at once if the range has the attributes
    /// already, else (everything allocated) invalidate, zap, store once.
    fn store_range(
        &self,
        writer: &mut StateWriter<'_>,
        range: GfnRange,
        attributes: u64,
        zap: impl FnOnce(GfnRange),
    ) -> Result<bool> {
        let stored = writer.data().attrs.set_with(range, attributes, || {
            let invalidation = self.invalidate.begin(range);
            zap(range);
            // The front's count odd for the store only, after the zap.
            (self.seq.write(), invalidation)
        })?;
        // The count even again, then the invalidation ends: after the store.
        Ok(stored.is_some())
    }

    /// KVM_HC_MAP_GPA_RANGE's attribute change with KVM's semantics (the range anywhere, as
    /// KVM_SET_MEMORY_ATTRIBUTES): for a VMM that checked the request itself. A guest's request
    /// goes through [`guest_map_gpa_range`](Self::guest_map_gpa_range).
    pub fn map_gpa_range(&self, req: &MapGpaRange, zap: impl FnOnce(GfnRange)) -> Result<bool> {
        self.convert_with(req.request()?, zap)
    }

    /// A guest's KVM_HC_MAP_GPA_RANGE, already decoded, converting only inside the memslots
    /// ([`Tracker::guest_scope`]): to private reaching outside them is refused
    /// ([`cvmem::Error::OutsideMemslots`]), to shared leaves the outside alone. Each part is
    /// converted as [`convert_with`](Self::convert_with) does, with `zap` called on it; the
    /// memslots cannot change in between. Returns whether anything changed.
    pub fn guest_map_gpa_range(
        &self,
        req: &MapGpaRange,
        mut zap: impl FnMut(GfnRange),
    ) -> Result<bool> {
        let request = req.request()?;
        let mut writer = self.writer();
        writer.data().check.attributes(request.attributes())?;
        let scope = writer.read(|s| s.tracker.guest_scope(request.range(), request.to()))?;
        let mut changed = false;
        for range in scope.parts {
            changed |= self.store_range(&mut writer, range, request.attributes(), &mut zap)?;
        }
        Ok(changed)
    }

    /// KVM_SET_USER_MEMORY_REGION2 (see [`Tracker::set_user_memory_region`]).
    pub fn set_user_memory_region(&self, r: &MemoryRegion) -> Result<SlotChange> {
        self.set_user_memory_region_with(r, |_| {})
    }

    /// KVM_SET_USER_MEMORY_REGION2, inside an invalidation of the slot's old and new ranges
    /// (their hull), with `zap` called on that range before the change.
    pub fn set_user_memory_region_with(
        &self,
        r: &MemoryRegion,
        zap: impl FnOnce(GfnRange),
    ) -> Result<SlotChange> {
        let mut writer = self.writer();
        let old = writer.read(|s| s.tracker.memslot(r.slot).map(|m| m.range()));
        let range = slot_change_range(old, r);
        let _invalidation = self.invalidate.begin(range);
        zap(range);
        self.publish(&mut writer, |s| match s.tracker.set_user_memory_region(r) {
            Ok(SlotChange::Unchanged) => Apply::Unchanged(Ok(SlotChange::Unchanged)),
            Ok(change) => {
                s.generation += 1;
                Apply::Changed(Ok(change))
            }
            Err(e) => Apply::Unchanged(Err(e)),
        })
    }

    /// A TDX guest accepted `gfn` at `level` (see [`Tracker::set_guest_inhibit`]).
    pub fn set_guest_inhibit(&self, gfn: Gfn, level: Level) -> Result<bool> {
        self.set_guest_inhibit_with(gfn, level, |_| {})
    }

    /// [`set_guest_inhibit`](Self::set_guest_inhibit) inside an invalidation of the 1G page
    /// holding `gfn` (the largest range whose level can drop), with `zap` called on it first
    /// (split or remove the mappings above `level` there).
    pub fn set_guest_inhibit_with(
        &self,
        gfn: Gfn,
        level: Level,
        zap: impl FnOnce(GfnRange),
    ) -> Result<bool> {
        let mut writer = self.writer();
        let range = Level::G1.page_of(Gfn(gfn.0.min(GFN_END - 1)));
        let _invalidation = self.invalidate.begin(range);
        zap(range);
        self.publish(&mut writer, |s| {
            let result = s.tracker.set_guest_inhibit(gfn, level);
            commit(s, result)
        })
    }

    /// `KVM_CREATE_GUEST_MEMFD` in the model (see [`Tracker::create_guest_memfd`]): no gfn's
    /// answer changes until a memslot binds the file.
    pub fn create_guest_memfd(&self, size: u64, flags: GmemFlags) -> Result<GmemId> {
        let mut writer = self.writer();
        let gmem = writer.read(|s| s.tracker.new_gmem(size, flags, s.tracker.merge_policy()))?;
        // The file's attributes move into a store of their own, shared by both copies.
        let mut file = None;
        let gmem = gmem.map_store(|store| {
            let (w, shared) = share(&store)?;
            file = Some(w);
            Ok(shared)
        })?;
        let id = self.publish(&mut writer, |s| match s.tracker.add_gmem(gmem.clone()) {
            Ok(id) => {
                s.generation += 1;
                Apply::Changed(Ok(id))
            }
            Err(e) => Apply::Unchanged(Err(e)),
        })?;
        writer.data().files.extend(file);
        Ok(id)
    }

    /// `KVM_SET_MEMORY_ATTRIBUTES2` on guest_memfd `id` (see
    /// [`Tracker::set_gmem_attributes`]) in KVM's order: check (refusals, `EAGAIN` while a
    /// shared page is referenced, `Ok(false)` when nothing changes); then invalidate the gfns of
    /// every memslot bound to the changing pages (one invalidation of their hull), call `zap`
    /// on each bound gfn range, store, end the invalidation. The store is the core's three
    /// steps ([`cvmem::Gmem::split_for_store`]): the folios the change cuts split on both
    /// copies, the attributes stored once in the file's shared store, split folios merged on
    /// both copies (under [`cvmem::MergePolicy::Eager`]); readers retry across all three (the
    /// front's count is held odd), so none sees folios and attributes of different states.
    pub fn set_gmem_attributes_with(
        &self,
        id: GmemId,
        offset: GmemOffset,
        size: u64,
        attributes: u64,
        zap: impl FnMut(GfnRange),
    ) -> Result<bool> {
        let mut writer = self.writer();
        let check = |s: &State| {
            s.tracker
                .check_gmem_attributes(id, offset, size, attributes, 0)
        };
        let Some(pages) = writer.read(check)? else {
            return Ok(false);
        };
        let _invalidation = self.invalidate_file(&mut writer, id, pages, zap);
        let _conversion = self.seq.write();
        // Both copies split alike: each reads the file's attributes before the store.
        self.publish(&mut writer, |s| {
            Apply::Changed(s.tracker.gmem_split_for_store(id, pages, attributes))
        })?;
        let file = writer
            .data()
            .files
            .get_mut(id.0 as usize)
            .ok_or(cvmem::Error::UnknownGmem { gmem: id.0 })?;
        let changed = file.set(pages, attributes)?;
        // And merge alike: each reads them after. The count, even again, counts the change.
        self.publish(&mut writer, |s| {
            Apply::Changed(s.tracker.gmem_merge_after_store(id, pages))
        })?;
        Ok(changed)
    }

    /// `fallocate(PUNCH_HOLE)` on guest_memfd `id` (see [`Tracker::gmem_punch_hole`]): the
    /// bound gfns are invalidated and zapped (their memory is freed), then split folios of the
    /// range may merge.
    pub fn gmem_punch_hole_with(
        &self,
        id: GmemId,
        offset: GmemOffset,
        size: u64,
        zap: impl FnMut(GfnRange),
    ) -> Result<()> {
        let mut writer = self.writer();
        let pages = writer.read(|s| {
            let gmem = s
                .tracker
                .gmem(id)
                .ok_or(cvmem::Error::UnknownGmem { gmem: id.0 })?;
            gmem.check_range(offset, size)
        })?;
        self.change_file(&mut writer, id, pages, zap, |t| {
            t.gmem_punch_hole(id, offset, size).map(|()| true)
        })
        .map(|_| ())
    }

    /// The host takes (`get`) or drops a reference on a shared page of guest_memfd `id` (see
    /// [`Tracker::gmem_get_page`]): no answer changes, only whether a later change to private
    /// is refused.
    pub fn gmem_reference(&self, id: GmemId, offset: GmemOffset, get: bool) -> Result<()> {
        let mut writer = self.writer();
        self.publish(&mut writer, |s| {
            let result = if get {
                s.tracker.gmem_get_page(id, offset)
            } else {
                s.tracker.gmem_put_page(id, offset)
            };
            match result {
                Ok(()) => {
                    s.generation += 1;
                    Apply::Changed(Ok(()))
                }
                Err(e) => Apply::Unchanged(Err(e)),
            }
        })
    }

    /// A change to file pages `pages` of guest_memfd `id`: the gfns bound to them invalidated
    /// ([`invalidate_file`](Self::invalidate_file)), `change` stored and published.
    fn change_file(
        &self,
        writer: &mut StateWriter<'_>,
        id: GmemId,
        pages: GfnRange,
        zap: impl FnMut(GfnRange),
        mut change: impl FnMut(&mut SharedTracker) -> Result<bool>,
    ) -> Result<bool> {
        let _invalidation = self.invalidate_file(writer, id, pages, zap);
        self.publish(writer, |s| {
            let result = change(&mut s.tracker);
            commit(s, result)
        })
    }

    /// Begins the invalidation of the gfns bound to pages `pages` of guest_memfd `id` (their
    /// hull; nothing bound: no gfn's answer changes, the sequence still moves) and zaps each
    /// bound range.
    fn invalidate_file(
        &self,
        writer: &mut StateWriter<'_>,
        id: GmemId,
        pages: GfnRange,
        mut zap: impl FnMut(GfnRange),
    ) -> crate::invalidate::Invalidation<'_> {
        let bound: Vec<GfnRange> =
            writer.read(|s| s.tracker.gmem_gfns(id, pages).map(|(r, _)| r).collect());
        let hull = bound.iter().fold(None, |h: Option<GfnRange>, r| {
            Some(h.map_or(*r, |h| {
                GfnRange::new(h.start.min(r.start), h.end.max(r.end))
            }))
        });
        let invalidation = self
            .invalidate
            .begin(hull.unwrap_or(GfnRange::new(Gfn(0), Gfn(0))));
        for r in bound {
            zap(r);
        }
        invalidation
    }

    /// The first half of [`update`](Self::update), for a writer with steps of its own between
    /// invalidating and storing (the VMM's host steps of a conversion): takes the writers' lock
    /// and begins the invalidation of `range`. Readers keep answering from the committed state;
    /// faults in `range` retry. [`PendingUpdate::commit_attributes`] stores a conversion,
    /// [`PendingUpdate::commit`] any other change (and publishes it); dropping it without a
    /// commit ends the invalidation with nothing changed.
    pub fn begin_update(&self, range: GfnRange) -> PendingUpdate<'_> {
        let writer = self.writer();
        PendingUpdate {
            invalidation: self.invalidate.begin(range),
            writer,
            front: self,
        }
    }

    /// Any other change to the tracker, for core operations this front does not wrap yet.
    /// `change` must be deterministic (it runs once on each copy) and may only change answers
    /// for gfns inside `range`, which is invalidated (and passed to `zap`) around it. It
    /// returns whether it changed anything, and a value returned to the caller.
    pub fn update<R>(
        &self,
        range: GfnRange,
        zap: impl FnOnce(GfnRange),
        change: impl FnMut(&mut SharedTracker) -> (bool, R),
    ) -> R {
        let pending = self.begin_update(range);
        zap(range);
        pending.commit(change)
    }
}

/// A change begun by [`ConcurrentTracker::begin_update`]: the writers' lock held and the range
/// invalidated until it is committed or dropped.
#[derive(Debug)]
pub struct PendingUpdate<'a> {
    // Dropped first: the invalidation ends before the writers' lock is released.
    invalidation: crate::invalidate::Invalidation<'a>,
    writer: StateWriter<'a>,
    front: &'a ConcurrentTracker,
}

impl PendingUpdate<'_> {
    /// Stores `attributes` on `range` — checked as [`Tracker::set_range_attributes`] checks
    /// them — once, in the front's shared store, then ends the invalidation. Returns whether
    /// anything changed; on an error nothing did.
    pub fn commit_attributes(self, range: GfnRange, attributes: u64) -> Result<bool> {
        let mut this = self;
        let seq = &this.front.seq;
        let writes = this.writer.data();
        writes.check.attributes(attributes)?;
        let stored = writes.attrs.set_with(range, attributes, || seq.write());
        drop(this.invalidation);
        stored.map(|s| s.is_some())
    }

    /// Applies `change` to the tracker and publishes it, then ends the invalidation. `change`
    /// must be deterministic (it runs once on each copy) and may only change answers inside
    /// the invalidated range; it returns whether it changed anything, and a value returned to
    /// the caller.
    pub fn commit<R>(mut self, mut change: impl FnMut(&mut SharedTracker) -> (bool, R)) -> R {
        let r = self
            .front
            .publish(&mut self.writer, |s| match change(&mut s.tracker) {
                (true, r) => {
                    s.generation += 1;
                    Apply::Changed(r)
                }
                (false, r) => Apply::Unchanged(r),
            });
        drop(self.invalidation);
        r
    }
}

/// What only writers use, under the writers' lock: the stores' one writers (the VM's, each
/// file's by id), and the check of KVM_SET_MEMORY_ATTRIBUTES (fixed once the VM exists,
/// refreshed after every published change), so that a conversion is checked without reading a
/// copy.
#[derive(Debug)]
struct Writes {
    attrs: OneCopyWriter,
    files: Vec<OneCopyWriter>,
    check: AttrCheck,
}

/// A store's attributes moved into a one-copy store: its writer, and the view every copy of
/// the tracker holds.
fn share(store: &AttrStore) -> Result<(OneCopyWriter, SharedAttrs)> {
    let mut writer = OneCopyWriter::new()?;
    copy_runs(store, |range, attributes| writer.set(range, attributes))?;
    let shared = SharedAttrs(Arc::clone(writer.store()));
    Ok((writer, shared))
}

/// Stores `from`'s runs of non-zero attributes with `set`, into a store that starts empty.
fn copy_runs(
    from: &impl AttrBackend,
    mut set: impl FnMut(GfnRange, u64) -> Result<bool>,
) -> Result<()> {
    for run in from.runs(GfnRange::new(Gfn(0), Gfn(GFN_END))) {
        if run.attributes != 0 {
            set(run.range(), run.attributes)?;
        }
    }
    Ok(())
}

/// The writers' lock on the front's state.
type StateWriter<'a> = Writer<'a, State, Writes>;

/// Runs [`ConcurrentTracker::for_each_run`] reads from one state at a time.
pub const RUN_BATCH: usize = 256;

/// Turns the core's "changed?" result into a left-right application, counting generations.
fn commit(s: &mut State, result: Result<bool>) -> Apply<Result<bool>> {
    match result {
        Ok(true) => {
            s.generation += 1;
            Apply::Changed(Ok(true))
        }
        other => Apply::Unchanged(other),
    }
}

/// The gfns a memslot request can change: the hull of the slot's current range and the range
/// asked for; the whole gfn space when the request does not describe a range (it will fail).
fn slot_change_range(old: Option<GfnRange>, r: &MemoryRegion) -> GfnRange {
    let new = (r.size != 0 && r.gpa.checked_add(r.size).is_some())
        .then(|| GfnRange::covering(r.gpa, r.size));
    match (old, new) {
        (Some(a), Some(b)) => GfnRange::new(a.start.min(b.start), a.end.max(b.end)),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => GfnRange::new(Gfn(0), Gfn(GFN_END)),
    }
}

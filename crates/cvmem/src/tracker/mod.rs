//! The tracker: attributes of every gfn, memslots, and per-slot large-page info, kept in step.

mod check;
mod fault;
mod gmem;

pub use check::AttrCheck;
pub use fault::{FaultCode, FlatSlot};

use alloc::vec::Vec;
use core::mem::size_of;

use crate::addr::{Gfn, GfnRange, Gpa, Level, GFN_END, PAGE_SIZE};
use crate::attrs::{AttrBackend, AttrRun, AttrStore, Probe};
use crate::error::{Error, Result};
use crate::gmem::{AttrMode, Gmem, GmemId, MergePolicy};
use crate::lpage::LpageInfo;
use crate::memslot::{self, MemoryRegion, Memslot, SlotChange, SlotFlags};
use crate::KVM_MEMORY_ATTRIBUTE_PRIVATE;

/// The kind of a guest access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Access {
    /// A shared (unencrypted) access.
    Shared,
    /// A private (encrypted) access.
    Private,
}

impl Access {
    /// Whether the access is private.
    pub const fn is_private(self) -> bool {
        self.kind().is_private()
    }
    /// The access kind that matches `private`.
    pub const fn from_private(private: bool) -> Self {
        Kind::from_private(private).access()
    }
    /// The kind of access a page with memory attributes `attributes` serves.
    pub const fn from_attributes(attributes: u64) -> Self {
        Kind::from_attributes(attributes).access()
    }
    /// The memory attributes a page must have to serve this access (PRIVATE or none).
    pub const fn attributes(self) -> u64 {
        self.kind().attributes()
    }
    /// `private` or `shared`.
    pub const fn name(self) -> &'static str {
        self.kind().name()
    }
}

/// The kind a conversion makes memory — what KVM_SET_MEMORY_ATTRIBUTES' PRIVATE bit says —
/// as distinct from the kind of an access ([`Access`]), which a fault compares with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Kind {
    /// Shared (unencrypted) memory: no attributes.
    Shared,
    /// Private (encrypted) memory: KVM_MEMORY_ATTRIBUTE_PRIVATE.
    Private,
}

impl Kind {
    /// Whether the kind is private.
    pub const fn is_private(self) -> bool {
        matches!(self, Kind::Private)
    }
    /// The kind that matches `private`.
    pub const fn from_private(private: bool) -> Self {
        if private {
            Kind::Private
        } else {
            Kind::Shared
        }
    }
    /// The kind of a page with memory attributes `attributes`.
    pub const fn from_attributes(attributes: u64) -> Self {
        Self::from_private(attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0)
    }
    /// The memory attributes of a page of this kind (PRIVATE or none).
    pub const fn attributes(self) -> u64 {
        match self {
            Kind::Shared => 0,
            Kind::Private => KVM_MEMORY_ATTRIBUTE_PRIVATE,
        }
    }
    /// The other kind.
    pub const fn opposite(self) -> Self {
        match self {
            Kind::Shared => Kind::Private,
            Kind::Private => Kind::Shared,
        }
    }
    /// The access that this kind of memory serves without a memory fault.
    pub const fn access(self) -> Access {
        match self {
            Kind::Shared => Access::Shared,
            Kind::Private => Access::Private,
        }
    }
    /// `private` or `shared`.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Shared => "shared",
            Kind::Private => "private",
        }
    }
}

impl Access {
    /// The kind of memory this access needs.
    pub const fn kind(self) -> Kind {
        match self {
            Access::Shared => Kind::Shared,
            Access::Private => Kind::Private,
        }
    }
}

/// A checked KVM_SET_MEMORY_ATTRIBUTES request: a non-empty gfn range inside the gfn space and
/// the attributes it is to have. [`Tracker::validate_attributes`] makes one from a (gpa, size)
/// request, [`AttrRequest::new`] from a range already decoded (a hypercall, a memory-fault exit);
/// conversions take it, so a request is checked once, where it enters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttrRequest {
    range: GfnRange,
    attributes: u64,
}

impl AttrRequest {
    /// A request to make `range` of kind `to`; `Err` for an empty range or one reaching past
    /// the gfn space.
    pub fn new(range: GfnRange, to: Kind) -> Result<Self> {
        if range.is_empty() || range.end > Gfn(GFN_END) {
            return Err(Error::Unsupported {
                what: crate::Unsupported::OutsideGfnSpace,
            });
        }
        Ok(AttrRequest {
            range,
            attributes: to.attributes(),
        })
    }
    /// The gfns whose attributes are set.
    pub const fn range(&self) -> GfnRange {
        self.range
    }
    /// The attributes they get.
    pub const fn attributes(&self) -> u64 {
        self.attributes
    }
    /// The kind they get.
    pub const fn to(&self) -> Kind {
        Kind::from_attributes(self.attributes)
    }
}

/// The payload of KVM_EXIT_MEMORY_FAULT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MemoryFault {
    /// Page-aligned guest physical address.
    pub gpa: Gpa,
    /// Size in bytes (one page).
    pub size: u64,
    /// KVM_MEMORY_EXIT_FLAG_PRIVATE: the access was private.
    pub private: bool,
}

/// The fault path's answer for one access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum MaxLevel {
    /// The page may be mapped, at most at this level.
    Level(Level),
    /// No memslot contains the address.
    NoSlot,
    /// KVM would exit to userspace with KVM_EXIT_MEMORY_FAULT.
    MemoryFault(MemoryFault),
}

/// Per-slot summary of large-page eligibility.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlotEligibility {
    /// Bytes that may be mapped with 1G pages.
    pub bytes_1g: u64,
    /// Bytes that may be mapped with 2M pages (and not 1G).
    pub bytes_2m: u64,
    /// Bytes that may only be mapped at 4K.
    pub bytes_4k: u64,
    /// Large pages wholly inside the slot whose pages differ in attributes, per level (2M, 1G).
    pub mixed: [u64; 2],
    /// Large pages with GUEST_INHIBIT, per level (2M, 1G).
    pub inhibited: [u64; 2],
}

/// Room for one more element: exactly one for the first (most VMs have one or two memslots, and
/// `try_reserve`'s first capacity of four would hold ~550 unused bytes), doubling after that.
fn room_for_one<T>(
    v: &mut Vec<T>,
) -> core::result::Result<(), alloc::collections::TryReserveError> {
    if v.len() < v.capacity() {
        return Ok(());
    }
    v.try_reserve_exact(v.len().max(1))
}

/// Whose attribute store [`Tracker::map_attribute_store`] hands over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOwner {
    /// The VM's own (KVM_SET_MEMORY_ATTRIBUTES').
    Vm,
    /// A guest_memfd's (KVM_SET_MEMORY_ATTRIBUTES2', by file page).
    Gmem(GmemId),
}

/// Private/shared state of a VM's memory, with hugepage eligibility per memslot.
///
/// Mirrors KVM's per-VM memory attributes and per-memslot `lpage_info`, with the costs of
/// ranges rather than pages. See the crate docs for an example.
///
/// The VM's own attributes are kept in `A`: the core's [`AttrStore`], or a store shared by
/// the copies of a concurrent front (cvmem-sync's one copy).
#[derive(Clone, Debug)]
pub struct Tracker<A = AttrStore> {
    /// What KVM_SET_MEMORY_ATTRIBUTES accepts: the supported attributes, where PRIVATE is kept.
    check: AttrCheck,
    /// Guest-physical address width: memslots must end at or below 2^bits (64: no limit).
    gpa_bits: u32,
    attrs: A,
    /// Memslots sorted by base gfn (non-overlapping), for O(log S) gfn lookups.
    slots: Vec<Memslot>,
    /// (slot id, base gfn), sorted by id.
    ids: Vec<(u32, u64)>,
    /// When the files' split folios merge.
    merge: MergePolicy,
    /// guest_memfds by id.
    gmems: Vec<Gmem<A>>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// An empty VM: no memslots, every page shared; PRIVATE is the supported attribute.
    pub const fn new() -> Self {
        Self::with_supported_attributes(KVM_MEMORY_ATTRIBUTE_PRIVATE)
    }

    /// An empty VM whose KVM_CAP_MEMORY_ATTRIBUTES is `supported`, as far as cvmem can store
    /// it: KVM defines one attribute, PRIVATE, and only that bit is kept (others are refused).
    pub const fn with_supported_attributes(supported: u64) -> Self {
        let supported = supported & KVM_MEMORY_ATTRIBUTE_PRIVATE;
        Tracker {
            check: AttrCheck::new(supported, AttrMode::PerVm),
            gpa_bits: 64,
            attrs: AttrStore::new(),
            slots: Vec::new(),
            ids: Vec::new(),
            merge: MergePolicy::OnPunchHole,
            gmems: Vec::new(),
        }
    }
}

impl<A: AttrBackend> Tracker<A> {
    /// The same tracker refusing (EINVAL) memslots that end above 2^`bits`, as x86 KVM refuses
    /// slots past the host's MAXPHYADDR (`kvm_mmu_max_gfn()`). Default 64: any slot whose end
    /// fits in 64 bits, as op-log v1. Set it before creating memslots.
    pub const fn with_gpa_bits(mut self, bits: u32) -> Self {
        self.gpa_bits = if bits > 64 { 64 } else { bits };
        self
    }

    /// The guest-physical address width memslots must fit in.
    pub const fn gpa_bits(&self) -> u32 {
        self.gpa_bits
    }

    /// The supported attribute mask.
    pub fn supported_attributes(&self) -> u64 {
        self.check.supported()
    }

    /// Checks a KVM_SET_MEMORY_ATTRIBUTES request and returns its gfn range
    /// ([`AttrCheck::request`]).
    pub fn validate_attributes(&self, gpa: Gpa, size: u64, attributes: u64) -> Result<AttrRequest> {
        self.check.request(gpa, size, attributes)
    }

    /// What KVM_SET_MEMORY_ATTRIBUTES accepts on this VM, as a value a writer can keep: it is
    /// fixed once the VM exists.
    pub const fn attribute_check(&self) -> AttrCheck {
        self.check
    }

    /// KVM_SET_MEMORY_ATTRIBUTES: sets `[gpa, gpa + size)` to `attributes`, whether or not
    /// memslots cover it, and updates the large-page info of every slot it touches.
    /// Returns whether anything changed. On error nothing changed.
    pub fn set_memory_attributes(&mut self, gpa: Gpa, size: u64, attributes: u64) -> Result<bool> {
        let req = self.validate_attributes(gpa, size, attributes)?;
        self.set_range_attributes(req.range, req.attributes)
    }

    /// Sets the attributes of a gfn range already validated by
    /// [`Tracker::validate_attributes`]. Returns whether anything changed.
    ///
    /// Large-page info needs no update: MIXED is read from the attribute store itself.
    pub fn set_range_attributes(&mut self, range: GfnRange, attributes: u64) -> Result<bool> {
        self.check_attributes(attributes)?;
        // The store refuses a range outside the gfn space (one place for that rule).
        self.attrs.set(range, attributes)
    }

    /// The attributes of `gfn`, from wherever PRIVATE is kept ([`Tracker::is_private`]).
    pub fn attributes(&self, gfn: Gfn) -> u64 {
        Kind::from_private(self.is_private(gfn)).attributes()
    }

    /// Whether `gfn` is private: by the VM's attributes, or where each guest_memfd keeps
    /// PRIVATE, by its memslot's file page (a gfn outside memslots or files is shared).
    pub fn is_private(&self, gfn: Gfn) -> bool {
        match self.check.mode() {
            AttrMode::PerVm => self.attrs.is_private(gfn),
            AttrMode::PerGmem => self
                .slot_for_gfn(gfn)
                .is_some_and(|s| self.probe_in(s, gfn).private),
        }
    }

    /// Whether every gfn of `range` has `attributes` under `mask` in the VM's own attributes
    /// (KVM_SET_MEMORY_ATTRIBUTES'); [`Tracker::uniform_kind`] reads the files too.
    pub fn range_has_attributes(&self, range: GfnRange, attributes: u64, mask: u64) -> bool {
        self.attrs.range_has(range, attributes, mask)
    }

    /// The VM's own attribute runs covering `range`, clipped to it, in address order.
    pub fn runs(&self, range: GfnRange) -> A::Runs<'_> {
        self.attrs.runs(range)
    }

    /// The VM's own maximal runs with non-zero attributes over the whole gfn space.
    pub fn nonzero_runs(&self) -> impl Iterator<Item = AttrRun> + '_ {
        self.attrs
            .runs(GfnRange::new(Gfn(0), Gfn(GFN_END)))
            .filter(|r| r.attributes != 0)
    }

    /// The attribute store itself.
    pub fn attribute_store(&self) -> &A {
        &self.attrs
    }

    /// The same tracker with each attribute store — the VM's, then each guest_memfd's in id
    /// order — kept in the store `f` makes of it (`f` is told whose it is; memslots, folios,
    /// references and large-page info move as they are). On an error the error is returned and
    /// this tracker dropped.
    pub fn map_attribute_store<B: AttrBackend>(
        self,
        mut f: impl FnMut(StoreOwner, A) -> Result<B>,
    ) -> Result<Tracker<B>> {
        let attrs = f(StoreOwner::Vm, self.attrs)?;
        let mut gmems = Vec::new();
        gmems
            .try_reserve_exact(self.gmems.len())
            .map_err(|_| Error::NoMemory {
                bytes: self.gmems.len() * size_of::<Gmem<B>>(),
            })?;
        for (i, gmem) in self.gmems.into_iter().enumerate() {
            let owner = StoreOwner::Gmem(GmemId(i as u32));
            gmems.push(gmem.map_store(|s| f(owner, s))?);
        }
        Ok(Tracker {
            check: self.check,
            gpa_bits: self.gpa_bits,
            attrs,
            slots: self.slots,
            ids: self.ids,
            merge: self.merge,
            gmems,
        })
    }

    /// The memslot with this id.
    pub fn memslot(&self, id: u32) -> Option<&Memslot> {
        let i = self.ids.binary_search_by_key(&id, |&(id, _)| id).ok()?;
        self.slot_index(self.ids[i].1).map(|i| &self.slots[i])
    }

    /// All memslots in address order.
    pub fn memslots(&self) -> impl ExactSizeIterator<Item = &Memslot> + '_ {
        self.slots.iter()
    }

    /// The memslot containing `gfn`, in O(log S).
    #[inline]
    pub fn slot_for_gfn(&self, gfn: Gfn) -> Option<&Memslot> {
        let gfn = gfn.0;
        let i = self.slots.partition_point(|s| s.base_gfn <= gfn);
        let slot = self.slots.get(i.checked_sub(1)?)?;
        (gfn - slot.base_gfn < slot.npages).then_some(slot)
    }

    /// Records (or with `None` forgets) the base gfn of slot `id`; capacity was reserved.
    fn set_id(&mut self, id: u32, base_gfn: Option<u64>) {
        match (self.ids.binary_search_by_key(&id, |&(id, _)| id), base_gfn) {
            (Ok(i), Some(base)) => self.ids[i].1 = base,
            (Ok(i), None) => {
                self.ids.remove(i);
            }
            (Err(i), Some(base)) => self.ids.insert(i, (id, base)),
            (Err(_), None) => {}
        }
    }

    fn slot_index(&self, base_gfn: u64) -> Option<usize> {
        self.slots
            .binary_search_by_key(&base_gfn, |s| s.base_gfn)
            .ok()
    }

    /// The slot overlapping `range`, other than `except`.
    fn overlapping(&self, range: GfnRange, except: Option<u32>) -> Option<u32> {
        let first = self
            .slots
            .partition_point(|s| s.base_gfn + s.npages <= range.start.0);
        self.slots[first..]
            .iter()
            .take_while(|s| s.base_gfn < range.end.0)
            .find(|s| Some(s.id) != except)
            .map(|s| s.id)
    }

    /// Large-page info of a new slot: geometry only, no allocation (MIXED comes from the
    /// attribute store, GUEST_INHIBIT is allocated when a guest first accepts).
    fn new_lpage(range: GfnRange) -> [LpageInfo; 2] {
        [
            LpageInfo::new(Level::M2, range),
            LpageInfo::new(Level::G1, range),
        ]
    }

    /// KVM_SET_USER_MEMORY_REGION2 with KVM's rules: create, delete, move, or toggle dirty
    /// logging. A slot costs a fixed few dozen bytes, whatever its size.
    pub fn set_user_memory_region(&mut self, r: &MemoryRegion) -> Result<SlotChange> {
        let change = self.check_user_memory_region(r)?;
        let new_range = GfnRange::covering(r.gpa, r.size);
        let base_gfn = new_range.start.0;
        let idx = self
            .memslot(r.slot)
            .map(|s| self.slot_index(s.base_gfn).expect("ids and slots agree"));
        match (change, idx) {
            (SlotChange::Created, _) => {
                let lpage = Self::new_lpage(new_range);
                let oom = |bytes| Error::NoMemory { bytes };
                room_for_one(&mut self.slots).map_err(|_| oom(size_of::<Memslot>()))?;
                room_for_one(&mut self.ids).map_err(|_| oom(size_of::<(u32, u64)>()))?;
                // The attributes of a new slot are usually all set at once next (start-up):
                // have what that needs ready.
                self.attrs.reserve_span(new_range)?;
                let slot = Memslot {
                    id: r.slot,
                    base_gfn,
                    npages: new_range.len(),
                    flags: r.flags,
                    uaddr: r.new_slot_uaddr(),
                    backing: r.new_slot_backing(),
                    lpage,
                    gmem: r.gmem,
                };
                let at = self.slots.partition_point(|s| s.base_gfn < base_gfn);
                self.slots.insert(at, slot);
                self.set_id(r.slot, Some(base_gfn));
            }
            (SlotChange::Deleted { .. }, Some(idx)) => {
                self.slots.remove(idx);
                self.set_id(r.slot, None);
            }
            (SlotChange::Moved { .. }, Some(idx)) => {
                // A move is a new slot in KVM: fresh large-page info (GUEST_INHIBIT does not
                // follow).
                let lpage = Self::new_lpage(new_range);
                let mut slot = self.slots.remove(idx);
                slot.base_gfn = base_gfn;
                slot.flags.dirty_log = r.flags.dirty_log;
                slot.lpage = lpage;
                let at = self.slots.partition_point(|s| s.base_gfn < base_gfn);
                self.slots.insert(at, slot);
                self.set_id(r.slot, Some(base_gfn));
            }
            (SlotChange::DirtyLog { enabled }, Some(idx)) => {
                self.slots[idx].flags.dirty_log = enabled
            }
            _ => {}
        }
        Ok(change)
    }

    /// What [`Tracker::set_user_memory_region`] would do with `r`, or why KVM would refuse it,
    /// without changing anything: a VMM checks a request with this before it allocates memory or
    /// calls into KVM. Only running out of memory can still make the real call fail.
    pub fn check_user_memory_region(&self, r: &MemoryRegion) -> Result<SlotChange> {
        memslot::validate(r)?;
        // `validate` made sure the end fits in 64 bits.
        let end = r.gpa.0 + r.size;
        if self.gpa_bits < 64 && r.size != 0 && end > 1u64 << self.gpa_bits {
            return Err(Error::SlotBeyondAddressWidth {
                end,
                bits: self.gpa_bits,
            });
        }
        let npages = r.size / PAGE_SIZE;
        let base_gfn = r.gpa.gfn().0;
        let new_range = GfnRange::new(Gfn(base_gfn), Gfn(base_gfn + npages));
        let Some(old) = self.memslot(r.slot) else {
            if npages == 0 {
                return Err(Error::UnknownSlot { slot: r.slot });
            }
            if let Some(other) = self.overlapping(new_range, None) {
                return Err(Error::SlotOverlap {
                    slot: r.slot,
                    other,
                });
            }
            self.check_binding(r)?;
            return Ok(SlotChange::Created);
        };
        if npages == 0 {
            return Ok(SlotChange::Deleted { old: old.range() });
        }
        if old.flags.guest_memfd {
            return Err(Error::SlotImmutable {
                slot: r.slot,
                what: crate::SlotField::GuestMemfdSlot,
            });
        }
        let immutable = [
            (npages != old.npages, crate::SlotField::Size),
            (
                r.flags.readonly != old.flags.readonly,
                crate::SlotField::Readonly,
            ),
            (r.flags.guest_memfd, crate::SlotField::GuestMemfd),
            (
                r.uaddr.is_some_and(|u| u != old.uaddr),
                crate::SlotField::Uaddr,
            ),
            (
                r.backing.is_some_and(|b| b != old.backing),
                crate::SlotField::Backing,
            ),
        ];
        if let Some(&(_, what)) = immutable.iter().find(|(changed, _)| *changed) {
            return Err(Error::SlotImmutable { slot: r.slot, what });
        }
        if base_gfn == old.base_gfn {
            return Ok(if r.flags.dirty_log != old.flags.dirty_log {
                SlotChange::DirtyLog {
                    enabled: r.flags.dirty_log,
                }
            } else {
                SlotChange::Unchanged
            });
        }
        if let Some(other) = self.overlapping(new_range, Some(r.slot)) {
            return Err(Error::SlotOverlap {
                slot: r.slot,
                other,
            });
        }
        Ok(SlotChange::Moved { old: old.range() })
    }

    /// The fault path: the largest level at which the page at `gpa` may be mapped for an
    /// access of kind `access`, or why it cannot be. No allocation; after the O(log S) slot
    /// lookup, one descent of the attribute store gives the gfn's kind and the largest uniform
    /// page around it ([`AttrStore::probe`]), then the slot's geometry and GUEST_INHIBIT.
    #[inline]
    pub fn max_mapping_level(&self, gpa: Gpa, access: Access) -> MaxLevel {
        self.max_level_by(gpa, access, A::probe)
    }

    /// [`max_mapping_level`](Self::max_mapping_level) with the VM's attribute store looked up
    /// by [`AttrBackend::probe_unchecked`]: for a caller that validates its whole read against
    /// the store's writer itself (a concurrent front's fault path), so that the lookup is not
    /// validated twice. If a write overlapped the read the answer may be wrong; the caller
    /// throws it away.
    #[inline]
    pub fn max_mapping_level_unchecked(&self, gpa: Gpa, access: Access) -> MaxLevel {
        self.max_level_by(gpa, access, A::probe_unchecked)
    }

    /// The fault path's rule, with the VM's attribute store looked up by `probe`.
    #[inline(always)]
    fn max_level_by(&self, gpa: Gpa, access: Access, probe: impl Fn(&A, Gfn) -> Probe) -> MaxLevel {
        let gfn = gpa.gfn();
        let Some(slot) = self.slot_for_gfn(gfn) else {
            return MaxLevel::NoSlot;
        };
        fault::fault_level(
            slot,
            gfn.0,
            access,
            || self.probe_in_by(slot, gfn, probe),
            |level| self.file_cap(slot, gfn, level),
        )
        .max_level(gfn, access)
    }

    /// The largest level the tracker allows at `gfn` for a page of its own kind, or `None`
    /// outside memslots.
    pub fn allowed_level(&self, gfn: Gfn) -> Option<Level> {
        self.slot_for_gfn(gfn)
            .map(|s| self.folio_cap(s, gfn, self.probe_in(s, gfn)))
    }

    /// Whether the large page of `level` holding `gfn` is mixed in its memslot (false when it is
    /// not wholly inside one, as KVM never marks those).
    pub fn is_mixed(&self, gfn: Gfn, level: Level) -> bool {
        level != Level::K4
            && self.slot_for_gfn(gfn).is_some_and(|s| {
                s.lpage_inside(level, gfn.0) && self.probe_in(s, gfn).uniform < level
            })
    }

    /// Whether the large page of `level` holding `gfn` carries GUEST_INHIBIT.
    pub fn is_guest_inhibited(&self, gfn: Gfn, level: Level) -> bool {
        level != Level::K4
            && self
                .slot_for_gfn(gfn)
                .is_some_and(|s| s.lpage(level).is_inhibited(gfn.0))
    }

    /// A TDX guest accepted `gfn` at `level`: every large page above `level` that holds it gets
    /// GUEST_INHIBIT (one-way, as in the TDX huge page series). Returns whether any bit was newly
    /// set. Outside memslots nothing happens.
    pub fn set_guest_inhibit(&mut self, gfn: Gfn, level: Level) -> Result<bool> {
        let gfn = gfn.0;
        let i = self.slots.partition_point(|s| s.base_gfn <= gfn);
        let Some(slot) = i.checked_sub(1).and_then(|i| self.slots.get_mut(i)) else {
            return Ok(false);
        };
        if gfn - slot.base_gfn >= slot.npages {
            return Ok(false);
        }
        let above = Level::LARGE.into_iter().filter(|&l| l > level);
        for l in above.clone() {
            if slot.lpage_inside(l, gfn) {
                slot.lpage_mut(l).reserve_inhibit()?;
            }
        }
        let mut changed = false;
        for l in above {
            changed |= slot.lpage_mut(l).set_inhibit(gfn);
        }
        Ok(changed)
    }

    /// Empty GUEST_INHIBIT info for every memslot, in slot order: built aside by
    /// [`Tracker::restore_inhibits`] and swapped in whole.
    pub(crate) fn fresh_inhibits(&self) -> Result<Vec<[LpageInfo; 2]>> {
        let mut fresh = Vec::new();
        fresh
            .try_reserve_exact(self.slots.len())
            .map_err(|_| Error::NoMemory {
                bytes: self.slots.len() * size_of::<[LpageInfo; 2]>(),
            })?;
        fresh.extend(self.slots.iter().map(|s| Self::new_lpage(s.range())));
        Ok(fresh)
    }

    /// Sets GUEST_INHIBIT in `fresh` (from [`Tracker::fresh_inhibits`]) on the large page of
    /// `level` that starts at `gfn`. Returns false where no such page lies wholly inside a
    /// memslot (or it was set already).
    pub(crate) fn add_inhibit(
        &self,
        fresh: &mut [[LpageInfo; 2]],
        gfn: Gfn,
        level: Level,
    ) -> Result<bool> {
        let i = self.slots.partition_point(|s| s.base_gfn <= gfn.0);
        let Some((slot, info)) = i.checked_sub(1).and_then(|i| {
            let info = &mut fresh.get_mut(i)?[level.index() - 1];
            Some((self.slots.get(i)?, info))
        }) else {
            return Ok(false);
        };
        if level.align_gfn(gfn.0) != gfn.0 || !slot.lpage_inside(level, gfn.0) {
            return Ok(false);
        }
        info.reserve_inhibit()?;
        Ok(info.set_inhibit(gfn.0))
    }

    /// Puts `fresh` in place of every memslot's GUEST_INHIBIT info. Returns whether any bit
    /// changed.
    pub(crate) fn swap_inhibits(&mut self, fresh: Vec<[LpageInfo; 2]>) -> bool {
        let mut changed = false;
        for (slot, new) in self.slots.iter_mut().zip(fresh) {
            for (old, new) in slot.lpage.iter_mut().zip(new) {
                changed |= !old.inhibited_gfns().eq(new.inhibited_gfns());
                *old = new;
            }
        }
        changed
    }

    /// Clears GUEST_INHIBIT on the large page of `level` that holds `gfn` (a policy that lifts
    /// the inhibit once the guest has accepted the whole large page). Returns whether it was set.
    pub fn clear_guest_inhibit(&mut self, gfn: Gfn, level: Level) -> bool {
        let gfn = gfn.0;
        let i = self.slots.partition_point(|s| s.base_gfn <= gfn);
        match i.checked_sub(1).and_then(|i| self.slots.get_mut(i)) {
            Some(slot) if level != Level::K4 && gfn - slot.base_gfn < slot.npages => {
                slot.lpage_mut(level).clear_inhibit(gfn)
            }
            _ => false,
        }
    }

    /// Counts of mixed large pages of slot `id` at `level` (0 for 4K or an unknown slot).
    pub fn mixed_count(&self, id: u32, level: Level) -> u64 {
        self.memslot(id).map_or(0, |s| self.mixed_in(s, level))
    }

    /// How much of slot `id` may be mapped at 1G, at 2M, and only at 4K, for an access of the
    /// pages' own kind, private memory no larger than its folio. O(1G pages of the slot) probes
    /// and popcounts, never per 4K page (per 2M page only where a guest has set GUEST_INHIBIT,
    /// and per private 2M page of a slot bound to a guest_memfd).
    pub fn eligibility(&self, id: u32) -> Option<SlotEligibility> {
        let slot = self.memslot(id)?;
        let (m2, g1) = (slot.lpage(Level::M2), slot.lpage(Level::G1));
        let mut e = SlotEligibility {
            mixed: [
                self.mixed_in(slot, Level::M2),
                self.mixed_in(slot, Level::G1),
            ],
            inhibited: [m2.inhibited_count(), g1.inhibited_count()],
            ..Default::default()
        };
        let max = slot.max_level();
        let level_ok = |level: Level| level <= max && !slot.misaligned(level);
        // 2M pages inside both mixed and inhibited, so that each is subtracted once.
        let inhibited_2m = |lo: u64, hi: u64| (lo..hi).filter(|&i| m2.is_inhibited(i << 9));
        // Decided once: `any_inhibited` scans the whole bitmap.
        let any_inhibited_2m = m2.any_inhibited();
        let both = if any_inhibited_2m {
            inhibited_2m(m2.first(), m2.first() + m2.len())
                .filter(|&i| self.probe_in(slot, Gfn(i << 9)).uniform < Level::M2)
                .count() as u64
        } else {
            0
        };
        let (mut pages_1g, mut huge_pages_2m) = (0u64, 0u64);
        if level_ok(Level::M2) {
            huge_pages_2m = m2.len() - (e.mixed[0] + e.inhibited[0] - both);
        }
        if level_ok(Level::G1) {
            for i in g1.first()..g1.first() + g1.len() {
                let gfn = i << 18;
                if self.probe_in(slot, Gfn(gfn)).uniform == Level::G1 && !g1.is_inhibited(gfn) {
                    pages_1g += 1;
                    // Its 2M pages are counted as 1G, not 2M.
                    if level_ok(Level::M2) {
                        let inhibited = if any_inhibited_2m {
                            inhibited_2m(i << 9, (i + 1) << 9).count() as u64
                        } else {
                            0
                        };
                        huge_pages_2m -= 512 - inhibited;
                    }
                }
            }
        }
        e.bytes_1g = pages_1g * Level::G1.size();
        e.bytes_2m = huge_pages_2m * Level::M2.size();
        // No private mapping above its folio: a bound slot's private huge pages whose folio
        // was split count at the folio's size.
        let [down_1g_2m, down_1g_4k, down_2m_4k] = self.folio_demotions(slot, level_ok);
        e.bytes_1g -= (down_1g_2m + down_1g_4k) * Level::M2.size();
        e.bytes_2m = e.bytes_2m + down_1g_2m * Level::M2.size() - down_2m_4k * Level::M2.size();
        e.bytes_4k = slot.size() - e.bytes_1g - e.bytes_2m;
        Some(e)
    }

    /// Heap bytes held by the tracker: the attribute store, the slot table, GUEST_INHIBIT bits.
    pub fn heap_bytes(&self) -> usize {
        let lpage: usize = self
            .slots
            .iter()
            .map(|s| s.lpage.iter().map(LpageInfo::heap_bytes).sum::<usize>())
            .sum();
        let ids = self.ids.capacity() * size_of::<(u32, u64)>();
        let gmems = self.gmems.capacity() * size_of::<Gmem<A>>()
            + self.gmems.iter().map(Gmem::heap_bytes).sum::<usize>();
        self.attrs.heap_bytes() + self.slots.capacity() * size_of::<Memslot>() + ids + lpage + gmems
    }

    /// Slot flags of slot `id`.
    pub fn slot_flags(&self, id: u32) -> Option<SlotFlags> {
        self.memslot(id).map(|s| s.flags)
    }
}

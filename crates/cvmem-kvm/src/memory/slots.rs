//! Memslot changes on a [`CvmMemory`]: create, delete, move and dirty-log toggles, each checked
//! with the core's rules before any memory is allocated, any ioctl is made or any listener hears
//! of it.

use std::collections::BTreeMap;

use cvmem::{Gpa, Kind, Level, MemoryRegion, SlotChange, SlotFlags};

use cvmem_sync::Apply;

use super::{CvmMemory, SlotInfo, SlotSpec};
use crate::backing::{Backing, HostMemory, SlotMemory};
use crate::error::{Error, Result};
use crate::listener::{self, Cause, MemoryEvent};
use crate::sys;

type Slots = BTreeMap<u32, SlotMemory>;

/// The host memory of a slot being created.
#[derive(Debug)]
pub(super) enum NewMemory {
    /// Allocate memory of this kind once the request is known to be valid.
    Allocate(Backing),
    /// The VMM's own memory.
    Attached(HostMemory),
    /// The VMM's own memory in a memslot the VMM created in KVM itself.
    Adopted(HostMemory),
}

impl CvmMemory {
    /// Creates a memslot: checked with KVM's rules (the core's), then host memory, KVM's slot,
    /// the MMU model's slot; its shared memory is announced to listeners. On error nothing is
    /// left behind. An existing id is refused (see [`CvmMemory::set_user_memory_region`] to
    /// move or re-flag a slot).
    pub fn add_slot(&self, spec: &SlotSpec) -> Result<()> {
        let mut memory = self.lock_memory();
        if memory.contains_key(&spec.slot) {
            return Err(Error::SlotExists { slot: spec.slot });
        }
        let region = MemoryRegion {
            gmem: None,
            slot: spec.slot,
            gpa: spec.gpa,
            size: spec.size,
            flags: SlotFlags {
                guest_memfd: spec.backing.has_guest_memfd(),
                ..SlotFlags::default()
            },
            uaddr: None,
            backing: Some(spec.max_level),
        };
        self.apply_locked(&mut memory, &region, NewMemory::Allocate(spec.backing))
            .map(drop)
    }

    /// Creates memslot `slot` at `gpa` on memory the VMM already has (see [`HostMemory`]):
    /// checked with KVM's rules, registered in KVM (with its guest_memfd, if any) and in the
    /// tracker, its shared memory announced to listeners. `max_level` is the largest mapping
    /// the host memory allows (2M for THP or 2M hugetlbfs, 1G for 1G hugetlbfs or a 1G
    /// guest_memfd). Conversions discard and notify as on memory this crate allocated; the
    /// memory is handed back (dropped) when the slot is removed. On error nothing is left
    /// behind.
    ///
    /// Checked first: an existing id is EEXIST ([`Error::SlotExists`]); memory that backs
    /// another slot already is EEXIST ([`Error::AlreadyAttached`]: a conversion of one would
    /// discard the other's bytes); a vm-memory region placed at another guest address than
    /// `gpa`, and an in-place guest_memfd whose file is not what is mapped at the host address,
    /// are EINVAL ([`Error::Attach`]).
    pub fn attach_slot(
        &self,
        slot: u32,
        gpa: Gpa,
        host: HostMemory,
        max_level: Level,
    ) -> Result<()> {
        self.attach_locked(slot, gpa, host, max_level, false)
    }

    /// Adopts memslot `slot` that the VMM's own memory manager has already created in KVM at
    /// `gpa` on `host` (same id, place and memory): cvmem tracks it — conversions, discards,
    /// listeners, queries — exactly as an attached slot, with the same checks, but never issues
    /// KVM_SET_USER_MEMORY_REGION2 for it: creating, moving, re-flagging and deleting it in KVM
    /// stay the VMM's ([`CvmMemory::remove_slot`] then only forgets it). For VMMs whose memory
    /// manager registers slots before cvmem is involved (cloud-hypervisor, crosvm).
    pub fn adopt_slot(
        &self,
        slot: u32,
        gpa: Gpa,
        host: HostMemory,
        max_level: Level,
    ) -> Result<()> {
        self.attach_locked(slot, gpa, host, max_level, true)
    }

    /// [`CvmMemory::attach_slot`] and (`adopted`) [`CvmMemory::adopt_slot`]: the VMM's memory
    /// `host` as slot `slot` at `gpa`, checked first.
    fn attach_locked(
        &self,
        slot: u32,
        gpa: Gpa,
        host: HostMemory,
        max_level: Level,
        adopted: bool,
    ) -> Result<()> {
        let mut memory = self.lock_memory();
        if memory.contains_key(&slot) {
            return Err(Error::SlotExists { slot });
        }
        check_attach(&memory, gpa, &host)?;
        let region = MemoryRegion {
            gmem: None,
            slot,
            gpa,
            size: host.size(),
            flags: SlotFlags {
                guest_memfd: host.backing().has_guest_memfd(),
                ..SlotFlags::default()
            },
            uaddr: Some(host.host_addr()),
            backing: Some(max_level),
        };
        let new = if adopted {
            NewMemory::Adopted(host)
        } else {
            NewMemory::Attached(host)
        };
        self.apply_locked(&mut memory, &region, new).map(drop)
    }

    /// Removes a memslot: listeners hear its shared memory go, then KVM and the MMU model drop
    /// the slot (zapping its mappings), then its host memory is freed.
    pub fn remove_slot(&self, slot: u32) -> Result<()> {
        let mut memory = self.lock_memory();
        if !memory.contains_key(&slot) {
            return Err(cvmem::Error::UnknownSlot { slot }.into());
        }
        self.remove_locked(&mut memory, slot)
    }

    /// Moves memslot `slot` to `gpa`, keeping its host memory and so its contents (KVM moves a
    /// slot in one KVM_SET_USER_MEMORY_REGION2: internally a delete and a re-create at the new
    /// address with the same `userspace_addr`). Attributes stay per gfn: the memory arriving at
    /// `gpa` takes the attributes of those gfns. Listeners hear the slot's shared ranges go from
    /// the old place and appear at the new one; the model zaps the old range. KVM's rules: a
    /// guest_memfd slot cannot move (EINVAL), overlap is EEXIST.
    pub fn move_slot(&self, slot: u32, gpa: Gpa) -> Result<SlotChange> {
        let gpa = gpa.0;
        let mut memory = self.lock_memory();
        let mut region = self.current_region(slot)?;
        region.gpa = Gpa(gpa);
        self.apply_locked(
            &mut memory,
            &region,
            NewMemory::Allocate(Backing::Anonymous),
        )
    }

    /// Turns dirty logging of memslot `slot` on or off (KVM_MEM_LOG_DIRTY_PAGES): on, the model
    /// splits the slot's huge mappings down to 4K; off, they may grow back. Not for guest_memfd
    /// slots (EINVAL, as KVM).
    pub fn set_dirty_log(&self, slot: u32, enabled: bool) -> Result<SlotChange> {
        let mut memory = self.lock_memory();
        let mut region = self.current_region(slot)?;
        region.flags.dirty_log = enabled;
        self.apply_locked(
            &mut memory,
            &region,
            NewMemory::Allocate(Backing::Anonymous),
        )
    }

    /// KVM_SET_USER_MEMORY_REGION2 for the VMM, as the op-log's `memslot` line: size 0 deletes,
    /// a new id creates (host memory of kind `backing`, which must agree with
    /// `region.flags.guest_memfd`), an existing id moves and/or toggles dirty logging (and
    /// `backing` is ignored). The request is checked with the core's rules first, so a request
    /// KVM would refuse (a too-large slot, an overlap, a changed size or uaddr...) fails with
    /// the core's error before anything is allocated or changed.
    ///
    /// `region.uaddr` is what KVM's rules see as the slot's host address: for a new slot, the
    /// mapping is placed congruent to it modulo `region.backing` (or to `gpa` when `None`), and
    /// the model records it (or the mapping's real address when `None`); for an existing slot,
    /// `None` keeps it and anything else must equal it.
    pub fn set_user_memory_region(
        &self,
        region: &MemoryRegion,
        backing: Backing,
    ) -> Result<SlotChange> {
        let mut memory = self.lock_memory();
        self.apply_locked(&mut memory, region, NewMemory::Allocate(backing))
    }

    /// The slot as a request that changes nothing.
    fn current_region(&self, slot: u32) -> Result<MemoryRegion> {
        let s = self
            .shared
            .tracker(|t| t.memslot(slot).cloned())
            .ok_or(cvmem::Error::UnknownSlot { slot })?;
        Ok(MemoryRegion {
            gmem: None,
            slot,
            gpa: s.gpa(),
            size: s.size(),
            flags: s.flags(),
            uaddr: None,
            backing: None,
        })
    }

    fn apply_locked(
        &self,
        memory: &mut Slots,
        region: &MemoryRegion,
        new: NewMemory,
    ) -> Result<SlotChange> {
        let result = self.apply_checked(memory, region, new);
        match &result {
            Ok(SlotChange::Unchanged) => {}
            Ok(change) => {
                self.counters.slot_change();
                tracing::debug!(target: "cvmem_kvm", slot = region.slot, change = ?change, "memslot changed");
            }
            Err(e) => {
                self.counters.failure(e);
                tracing::debug!(target: "cvmem_kvm", slot = region.slot, error = %e, "memslot change failed");
            }
        }
        result
    }

    fn apply_checked(
        &self,
        memory: &mut Slots,
        region: &MemoryRegion,
        new: NewMemory,
    ) -> Result<SlotChange> {
        // The core's rules, without changing anything: what the request would do.
        let (probe, _) = self.timed(|| self.shared.tracker(|t| t.check_user_memory_region(region)));
        let change = probe?;
        match change {
            SlotChange::Created => self.create_locked(memory, region, new),
            SlotChange::Deleted { .. } => self.remove_locked(memory, region.slot).map(|()| change),
            SlotChange::Moved { .. } | SlotChange::DirtyLog { .. } => {
                self.change_locked(memory, region, change)
            }
            SlotChange::Unchanged => Ok(change),
        }
    }

    fn create_locked(
        &self,
        memory: &mut Slots,
        region: &MemoryRegion,
        new: NewMemory,
    ) -> Result<SlotChange> {
        let backing = match &new {
            NewMemory::Allocate(backing) => *backing,
            NewMemory::Attached(host) | NewMemory::Adopted(host) => host.backing(),
        };
        let adopted = matches!(new, NewMemory::Adopted(_));
        if backing.has_guest_memfd() != region.flags.guest_memfd {
            return Err(cvmem::Error::InvalidFlags {
                why: cvmem::FlagsFault::BackingDisagrees,
            }
            .into());
        }
        let slot = region.slot;
        let max_level = region.backing.unwrap_or(Level::G1);
        let host = match new {
            NewMemory::Allocate(backing) => HostMemory::allocate(
                self.vm.as_deref(),
                backing,
                region.size,
                region.new_slot_uaddr(),
                max_level,
            )?,
            NewMemory::Attached(host) | NewMemory::Adopted(host) => host,
        };
        let mut mem = SlotMemory::new(host, region.gpa.0, region.flags);
        mem.adopted = adopted;
        self.kvm_set(slot, &mem)?;
        let hva = mem.shared().addr();
        let model = MemoryRegion {
            uaddr: Some(region.uaddr.unwrap_or(hva)),
            backing: Some(max_level),
            ..*region
        };
        let (r, _) = self.timed(|| self.store_region(&model, Some(SlotInfo { backing, hva })));
        if let Err(e) = r {
            self.kvm_delete(slot, &mem);
            return Err(e.into());
        }
        memory.insert(slot, mem);
        let shared = self.slot_runs(slot, Kind::Shared);
        let event = MemoryEvent {
            to: Kind::Shared,
            cause: Cause::SlotAdded,
            ranges: &shared,
        };
        if let Err(e) = listener::notify_all(&self.listeners(), &event) {
            let mem = memory.remove(&slot);
            self.delete_slot_locked(slot, mem);
            return Err(e);
        }
        Ok(SlotChange::Created)
    }

    fn remove_locked(&self, memory: &mut Slots, slot: u32) -> Result<()> {
        let shared = self.slot_runs(slot, Kind::Shared);
        listener::notify_all(
            &self.listeners(),
            &MemoryEvent {
                to: Kind::Private,
                cause: Cause::SlotRemoved,
                ranges: &shared,
            },
        )?;
        let mem = memory.remove(&slot);
        self.delete_slot_locked(slot, mem);
        Ok(())
    }

    /// Deletes a slot from KVM (before its memory goes) and from the model; cannot fail for
    /// an existing slot.
    pub(super) fn delete_slot_locked(&self, slot: u32, mem: Option<SlotMemory>) {
        if let Some(m) = &mem {
            self.kvm_delete(slot, m);
        }
        self.timed(|| {
            // Deleting an existing slot cannot fail.
            let _ = self.store_region(
                &MemoryRegion {
                    slot,
                    size: 0,
                    ..MemoryRegion::default()
                },
                None,
            );
        });
        drop(mem);
    }

    /// A move and/or dirty-log toggle of an existing slot.
    fn change_locked(
        &self,
        memory: &mut Slots,
        region: &MemoryRegion,
        change: SlotChange,
    ) -> Result<SlotChange> {
        let slot = region.slot;
        let moving = matches!(change, SlotChange::Moved { .. });
        let listeners = self.listeners();
        let old_shared = if moving {
            self.slot_runs(slot, Kind::Shared)
        } else {
            Vec::new()
        };
        let gone = MemoryEvent {
            to: Kind::Private,
            cause: Cause::SlotRemoved,
            ranges: &old_shared,
        };
        listener::notify_all(&listeners, &gone)?;
        let undo_gone = |cause: Error| -> Error {
            match listener::undo(&listeners, &gone) {
                Ok(()) => cause,
                Err(why) => Error::Inconsistent {
                    cause: cause.to_string(),
                    why,
                },
            }
        };
        let Some(mem) = memory.get_mut(&slot) else {
            return Err(undo_gone(cvmem::Error::UnknownSlot { slot }.into()));
        };
        let (old_gpa, old_flags) = (mem.gpa, mem.flags);
        mem.gpa = region.gpa.0;
        mem.flags.dirty_log = region.flags.dirty_log;
        if let Err(e) = self.kvm_set(slot, mem) {
            (mem.gpa, mem.flags) = (old_gpa, old_flags);
            return Err(undo_gone(e));
        }
        // Puts KVM's slot back as it was.
        let undo_kvm = |mem: &mut SlotMemory, cause: Error| -> Error {
            (mem.gpa, mem.flags) = (old_gpa, old_flags);
            match self.kvm_set(slot, mem) {
                Ok(()) => undo_gone(cause),
                Err(e) => Error::Inconsistent {
                    cause: cause.to_string(),
                    why: e.to_string(),
                },
            }
        };
        let (r, _) = self.timed(|| self.store_region(region, None));
        if let Err(e) = r {
            return Err(undo_kvm(mem, e.into()));
        }
        if moving {
            let new_shared = self.slot_runs(slot, Kind::Shared);
            let arrived = MemoryEvent {
                to: Kind::Shared,
                cause: Cause::SlotAdded,
                ranges: &new_shared,
            };
            if let Err(e) = listener::notify_all(&listeners, &arrived) {
                let back = MemoryRegion {
                    gpa: Gpa(old_gpa),
                    flags: old_flags,
                    uaddr: None,
                    backing: None,
                    ..*region
                };
                let (r, _) = self.timed(|| self.store_region(&back, None));
                return Err(match r {
                    Ok(_) => undo_kvm(mem, e),
                    Err(why) => Error::Inconsistent {
                        cause: e.to_string(),
                        why: why.to_string(),
                    },
                });
            }
        }
        Ok(change)
    }

    /// Stores a memslot change in the tracker (both copies, published), the model and, for a
    /// created slot, its host facts (`info`); a deleted slot's facts go.
    fn store_region(
        &self,
        region: &MemoryRegion,
        info: Option<SlotInfo>,
    ) -> cvmem::Result<SlotChange> {
        let change = self.shared.tracker.set_user_memory_region(region)?;
        let slot = region.slot;
        let facts = match change {
            SlotChange::Created => info,
            SlotChange::Deleted { .. } => None,
            _ => return self.model_region(region, change),
        };
        self.shared.slots.writer().apply(|slots| {
            match facts {
                Some(info) => slots.insert(slot, info),
                None => slots.remove(&slot),
            };
            Apply::Changed(())
        });
        self.model_region(region, change)
    }

    /// Mirrors a stored memslot change into the MMU model, if kept.
    fn model_region(&self, region: &MemoryRegion, change: SlotChange) -> cvmem::Result<SlotChange> {
        self.shared.model.set_user_memory_region(region)?;
        Ok(change)
    }

    /// KVM_SET_USER_MEMORY_REGION2 with `mem` as slot `slot` (nothing without a VM).
    fn kvm_set(&self, slot: u32, mem: &SlotMemory) -> Result<()> {
        match &self.vm {
            // An adopted slot is the VMM's to create, move and delete in KVM.
            Some(_) if mem.adopted => Ok(()),
            Some(vm) => sys::set_user_memory_region2(vm, mem.region(slot))
                .map_err(|e| Error::kvm("KVM_SET_USER_MEMORY_REGION2", e)),
            None => Ok(()),
        }
    }

    /// Deletes slot `slot` from KVM; cannot fail for a slot KVM has (the memory is freed after).
    fn kvm_delete(&self, slot: u32, mem: &SlotMemory) {
        if let Some(vm) = self.vm.as_ref().filter(|_| !mem.adopted) {
            let mut region = mem.region(slot);
            region.memory_size = 0;
            let _ = sys::set_user_memory_region2(vm, region);
        }
    }
}

/// The checks of an attach that the core's rules do not make (see
/// [`CvmMemory::attach_slot`]).
fn check_attach(memory: &Slots, gpa: Gpa, host: &HostMemory) -> Result<()> {
    if host.guest_addr().is_some_and(|a| a != gpa.0) {
        return Err(Error::Attach(
            "the vm-memory region is placed at another guest address than the slot's gpa",
        ));
    }
    let (start, end) = (host.host_addr(), host.host_addr() + host.size());
    for (&slot, m) in memory {
        let (s, e) = (m.host.host_addr(), m.host.host_addr() + m.host.size());
        if start < e && s < end {
            return Err(Error::AlreadyAttached { slot });
        }
    }
    host.check_in_place()
}

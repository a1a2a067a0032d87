//! The MMU model inside [`CvmMemory`], on detached memory (anonymous slots, no KVM): guest
//! accesses become faults, conversions zap, slot moves keep contents and zap, dirty logging
//! splits, and memslot requests are checked with the core's rules before memory is allocated.

use std::sync::Mutex;

use cvmem::mmu::FaultOutcome;
use cvmem::{Access, Errno, MemoryRegion, SlotChange, SlotFlags};

use super::*;
use crate::iommu::{IommuListener, RecordingIommu};
use crate::listener::ListenerError;

const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;

fn memory(recovery: Recovery) -> CvmMemory {
    let m = CvmMemory::detached_with_mmu(MmuConfig {
        layout: Layout::SPLIT,
        recovery,
    });
    m.add_slot(&SlotSpec {
        slot: 1,
        gpa: cvmem::Gpa(G1),
        size: 2 * M2,
        backing: Backing::Anonymous,
        max_level: Level::G1,
    })
    .unwrap();
    m
}

fn req(gpa: u64, npages: u64, private: bool) -> ConversionRequest {
    ConversionRequest::from_map_gpa_range(
        RequestSource::PortIo,
        gpa,
        npages,
        if private { 0x10 } else { 0 },
    )
    .unwrap()
}

fn errno(e: &Error) -> Option<Errno> {
    match e {
        Error::Tracker(e) => Some(e.errno()),
        _ => None,
    }
}

#[test]
fn guest_accesses_and_conversions_drive_the_model() {
    let m = memory(Recovery::OnFault);
    let q = m.query();
    let before = m.tracking_time();
    // The guest touches the whole slot: two 2M leaves, the rest spurious.
    let c = m.touch(Gpa(G1), 2 * M2).unwrap();
    assert_eq!((c.mapped.m2, c.mapped.k4, c.spurious), (2, 0, 1022));
    assert!(m.tracking_time() > before);
    // One page becomes private: the shared 2M leaf over it is zapped whole.
    let conv = m.convert(&req(G1 + 0x1000, 1, true)).unwrap();
    assert!(conv.cost.tracking >= conv.cost.invalidate);
    let s = q.mmu_stats().unwrap();
    assert_eq!((s.shared.m2, s.shared.k4, s.zaps), (1, 0, 1));
    assert!(q.leaf(Gpa(G1), Access::Shared).is_none());
    // Touching the first 2M again: each page as its kind. The private page of an anonymous
    // slot is a memory fault (no guest_memfd); the others map at 4K (the 2M page is mixed).
    let c = m.touch(Gpa(G1), M2).unwrap();
    assert_eq!((c.mapped.k4, c.memory_fault), (511, 1));
    // Back to shared: the 2M page is uniform again, and a fault replaces the 511 leaves.
    m.convert(&req(G1 + 0x1000, 1, false)).unwrap();
    assert_eq!(
        m.fault(Gpa(G1 + 0x1000), Access::Shared).unwrap(),
        FaultOutcome::Mapped { level: Level::M2 }
    );
    let s = q.mmu_stats().unwrap();
    assert_eq!((s.shared.m2, s.shared.k4, s.replaced), (2, 0, 511));
    m.query().mmu_stats().unwrap();
    let snap = q.mmu_snapshot().unwrap();
    assert_eq!(snap.coverage.huge_bytes, 2 * M2);
    assert_eq!(snap.touched_all.ratio(), 1.0);
}

/// Refuses every event while `refuse` is set.
#[derive(Default)]
struct Refuser {
    refuse: Mutex<bool>,
    events: Mutex<u64>,
}

impl ConversionListener for Refuser {
    fn name(&self) -> &str {
        "refuser"
    }
    fn notify(&self, _: &MemoryEvent<'_>) -> Result<(), ListenerError> {
        if *self.refuse.lock().unwrap() {
            return Err(ListenerError {
                listener: "refuser".into(),
                message: "no".into(),
            });
        }
        *self.events.lock().unwrap() += 1;
        Ok(())
    }
}

#[test]
fn a_refused_conversion_closes_its_window_and_restores_attributes() {
    let m = memory(Recovery::OnFault);
    let refuser = Arc::new(Refuser::default());
    m.add_listener(refuser.clone()).unwrap();
    m.touch(Gpa(G1), 2 * M2).unwrap();
    *refuser.refuse.lock().unwrap() = true;
    assert!(matches!(
        m.convert(&req(G1, 16, true)),
        Err(Error::Listener(_))
    ));
    let q = m.query();
    assert!(!q.is_private(Gpa(G1)));
    // The invalidation zapped the shared leaf; the window is closed, so the access refaults
    // (a left-open window would answer Retry forever).
    assert_eq!(
        m.fault(Gpa(G1), Access::Shared).unwrap(),
        FaultOutcome::Mapped { level: Level::M2 }
    );
    // The refused to-private conversion reached neither the attributes nor the listeners.
    assert_eq!(q.mmu_stats().unwrap().retries, 0);
    assert_eq!(*refuser.events.lock().unwrap(), 1);
    *refuser.refuse.lock().unwrap() = false;
    m.convert(&req(G1, 16, true)).unwrap();
    assert!(q.is_private(Gpa(G1)));
}

#[test]
fn a_moved_slot_keeps_its_contents_and_its_old_mappings_go() {
    let m = memory(Recovery::OnFault);
    let iommu = Arc::new(IommuListener::new("vfio", RecordingIommu::new()));
    m.add_listener(iommu.clone()).unwrap();
    m.convert(&req(G1 + M2, 1, true)).unwrap();
    m.write_u64(Gpa(G1 + 0x2008), 0xfeed).unwrap();
    m.touch(Gpa(G1), 2 * M2).unwrap();
    let q = m.query();
    assert_eq!(q.mmu_stats().unwrap().shared.total(), 1 + 511);

    // Onto slot-less memory at 3G: the bytes follow, the old range is unmapped and zapped.
    let to = 3 * G1;
    assert_eq!(
        m.move_slot(1, Gpa(to)).unwrap(),
        SlotChange::Moved {
            old: GfnRange::covering(Gpa(G1), 2 * M2)
        }
    );
    assert_eq!(m.read_u64(Gpa(to + 0x2008)).unwrap(), 0xfeed);
    assert!(matches!(
        m.read_u64(Gpa(G1 + 0x2008)),
        Err(Error::NotInSlot { .. })
    ));
    assert_eq!(q.mmu_stats().unwrap().shared.total(), 0);
    // Attributes are per gfn: the private page stayed at G1 + 2M; everything at 3G is shared,
    // and the IOMMU maps exactly the new place.
    assert!(q.is_private(Gpa(G1 + M2)));
    assert_eq!(iommu.with_dma(|d| d.mapped()), vec![(to, to + 2 * M2)]);
    assert!(iommu.with_dma(|d| d.violations().is_empty()));
    assert_eq!(q.snapshot().slots[0].gpa, Gpa(to));

    // Onto another slot: EEXIST, and nothing changes (no listener traffic either).
    m.add_slot(&SlotSpec {
        slot: 2,
        gpa: cvmem::Gpa(5 * G1),
        size: M2,
        backing: Backing::Anonymous,
        max_level: Level::G1,
    })
    .unwrap();
    let maps = iommu.with_dma(|d| d.stats().maps);
    let e = m.move_slot(1, Gpa(5 * G1 - M2)).unwrap_err();
    assert_eq!(errno(&e), Some(Errno::EEXIST), "{e}");
    assert_eq!(iommu.with_dma(|d| d.stats().maps), maps);
    assert_eq!(m.read_u64(Gpa(to + 0x2008)).unwrap(), 0xfeed);
    // Moving to where it is changes nothing.
    assert_eq!(m.move_slot(1, Gpa(to)).unwrap(), SlotChange::Unchanged);
}

#[test]
fn dirty_logging_splits_to_4k_and_eager_recovery_collapses_back() {
    let m = memory(Recovery::Eager);
    let q = m.query();
    m.touch(Gpa(G1), 2 * M2).unwrap();
    assert_eq!(q.mmu_stats().unwrap().shared.m2, 2);
    assert_eq!(
        m.set_dirty_log(1, true).unwrap(),
        SlotChange::DirtyLog { enabled: true }
    );
    let s = q.mmu_stats().unwrap();
    assert_eq!((s.shared.m2, s.shared.k4, s.splits), (0, 1024, 2));
    assert_eq!(
        q.max_level(Gpa(G1), Access::Shared),
        cvmem::MaxLevel::Level(Level::K4)
    );
    assert!(q.snapshot().slots[0].flags.dirty_log);
    m.set_dirty_log(1, false).unwrap();
    let s = q.mmu_stats().unwrap();
    assert_eq!((s.shared.m2, s.shared.k4, s.collapses), (2, 0, 2));
}

#[test]
fn memslot_requests_are_checked_before_memory_is_allocated() {
    let m = memory(Recovery::OnFault);
    let refuser = Arc::new(Refuser::default());
    m.add_listener(refuser.clone()).unwrap();
    let anon = SlotFlags::default();
    let region = |slot, gpa, size, flags| MemoryRegion {
        gmem: None,
        slot,
        gpa,
        size,
        flags,
        uaddr: None,
        backing: None,
    };
    let cases = [
        // 2^50 pages: mmap would fail with ENOMEM; the rules say EINVAL first.
        (region(3, cvmem::Gpa(0), 1 << 62, anon), Errno::EINVAL),
        (region(3, cvmem::Gpa(0), !0xfff, anon), Errno::EINVAL),
        (region(40_000, cvmem::Gpa(0), M2, anon), Errno::EINVAL),
        (region(3, cvmem::Gpa(0x800), M2, anon), Errno::EINVAL),
        (region(3, cvmem::Gpa(G1), M2, anon), Errno::EEXIST),
        (region(9, cvmem::Gpa(0), 0, anon), Errno::EINVAL),
        (
            MemoryRegion {
                uaddr: Some(0x1234),
                ..region(3, cvmem::Gpa(0), M2, anon)
            },
            Errno::EINVAL,
        ),
        // guest-memfd with dirty-log; a changed size; guest-memfd asked of anonymous memory.
        (
            region(
                3,
                cvmem::Gpa(0),
                M2,
                SlotFlags {
                    guest_memfd: true,
                    dirty_log: true,
                    readonly: false,
                },
            ),
            Errno::EINVAL,
        ),
        (region(1, cvmem::Gpa(G1), M2, anon), Errno::EINVAL),
        (
            region(
                3,
                cvmem::Gpa(0),
                M2,
                SlotFlags {
                    guest_memfd: true,
                    ..anon
                },
            ),
            Errno::EINVAL,
        ),
    ];
    for (r, want) in cases {
        let e = m
            .set_user_memory_region(&r, Backing::Anonymous)
            .unwrap_err();
        assert_eq!(errno(&e), Some(want), "{r:?}: {e}");
    }
    assert_eq!(m.query().snapshot().slots.len(), 1);
    assert_eq!(*refuser.events.lock().unwrap(), 1, "only the registration");
}

#[test]
fn a_declared_uaddr_sets_the_congruence_and_must_stay() {
    let m = memory(Recovery::OnFault);
    // uaddr = gpa + 4K: host and guest addresses disagree modulo 2M, so 2M is disallowed.
    let r = MemoryRegion {
        gmem: None,
        slot: 3,
        gpa: cvmem::Gpa(4 * G1),
        size: 2 * M2,
        flags: SlotFlags::default(),
        uaddr: Some(4 * G1 + 0x1000),
        backing: None,
    };
    assert_eq!(
        m.set_user_memory_region(&r, Backing::Anonymous).unwrap(),
        SlotChange::Created
    );
    let q = m.query();
    assert_eq!(q.allowed_level(Gpa(4 * G1)), Some(Level::K4));
    assert_eq!(
        m.fault(Gpa(4 * G1), Access::Shared).unwrap(),
        FaultOutcome::Mapped { level: Level::K4 }
    );
    // A move restating the uaddr is fine; another uaddr is EINVAL (immutable).
    let moved = MemoryRegion {
        gpa: cvmem::Gpa(6 * G1),
        ..r
    };
    assert!(matches!(
        m.set_user_memory_region(&moved, Backing::Anonymous),
        Ok(SlotChange::Moved { .. })
    ));
    let other = MemoryRegion {
        gpa: cvmem::Gpa(8 * G1),
        uaddr: Some(0x4000_0000),
        ..r
    };
    let e = m
        .set_user_memory_region(&other, Backing::Anonymous)
        .unwrap_err();
    assert_eq!(errno(&e), Some(Errno::EINVAL), "{e}");
    assert_eq!(m.mmu_config().unwrap().recovery, Recovery::OnFault);
}

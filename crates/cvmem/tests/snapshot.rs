//! Save/restore: every reachable state round-trips (through serde when enabled), answers every
//! query as before, and states no tracker can reach are refused; a VM mid-conversion cannot be
//! snapshotted.

use cvmem::{
    Access, AttrRequest, Errno, Error, Gfn, GfnRange, Gpa, Kind, Level, MemoryRegion, SlotFlags,
    Tracker, TrackerSnapshot, KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SIZE, SNAPSHOT_VERSION,
};
use proptest::prelude::*;

const P: u64 = KVM_MEMORY_ATTRIBUTE_PRIVATE;
const GIB: u64 = 1 << 30;

fn gmem() -> SlotFlags {
    SlotFlags {
        guest_memfd: true,
        ..SlotFlags::default()
    }
}

fn region(slot: u32, gpa: u64, size: u64) -> MemoryRegion {
    MemoryRegion {
        slot,
        gpa: Gpa(gpa),
        size,
        flags: gmem(),
        ..MemoryRegion::default()
    }
}

/// Every answer a fault path or a VMM could ask for, at `gfns`.
fn answers(t: &Tracker, gfns: &[u64]) -> Vec<String> {
    gfns.iter()
        .map(|&g| {
            format!(
                "{:?} {:?} {:?} {} {}",
                t.max_mapping_level(Gpa(g * PAGE_SIZE), Access::Private),
                t.max_mapping_level(Gpa(g * PAGE_SIZE), Access::Shared),
                t.allowed_level(Gfn(g)),
                t.is_guest_inhibited(Gfn(g), Level::M2),
                t.is_guest_inhibited(Gfn(g), Level::G1),
            )
        })
        .collect()
}

/// Snapshot, through JSON where the `serde` feature is on (it is in a workspace build: the
/// CLI enables it), and restore.
fn round_trip(t: &Tracker) -> Tracker {
    let snapshot = t.snapshot();
    #[cfg(feature = "serde")]
    let snapshot = {
        let json = serde_json::to_string(&snapshot).unwrap();
        let back: TrackerSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snapshot);
        back
    };
    Tracker::restore(&snapshot).unwrap()
}

#[derive(Clone, Debug)]
enum Op {
    Attrs {
        start: u64,
        pages: u64,
        private: bool,
    },
    Inhibit {
        gfn: u64,
        level: Level,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..3 * 262_144, 1u64..4096, any::<bool>()).prop_map(|(start, pages, private)| {
            Op::Attrs {
                start,
                pages,
                private,
            }
        }),
        (
            0u64..3 * 262_144,
            prop_oneof![Just(Level::K4), Just(Level::M2)]
        )
            .prop_map(|(gfn, level)| Op::Inhibit { gfn, level }),
    ]
}

proptest! {
    #[test]
    fn every_reachable_state_round_trips(ops in proptest::collection::vec(op(), 0..60)) {
        let mut t = Tracker::new().with_gpa_bits(46);
        t.set_user_memory_region(&region(0, 0, 2 * GIB)).unwrap();
        t.set_user_memory_region(&MemoryRegion { uaddr: Some(0x7f00_0020_0000), ..region(1, 2 * GIB, GIB) }).unwrap();
        for op in &ops {
            match *op {
                Op::Attrs { start, pages, private } => {
                    let r = GfnRange::new(Gfn(start), Gfn(start + pages));
                    t.set_range_attributes(r, if private { P } else { 0 }).unwrap();
                }
                Op::Inhibit { gfn, level } => { t.set_guest_inhibit(Gfn(gfn), level).unwrap(); }
            }
        }
        let back = round_trip(&t);
        prop_assert_eq!(back.snapshot(), t.snapshot());
        let gfns: Vec<u64> = (0..3 * 262_144u64).step_by(4099).chain([0, 511, 512, 262_143, 262_144]).collect();
        prop_assert_eq!(answers(&back, &gfns), answers(&t, &gfns));
        // The store's shape may depend on its history (hysteresis), not its size bound.
        prop_assert!(back.heap_bytes() as u64 <= 3 * cvmem::WORST_BYTES_PER_GIB as u64 + 16384);
    }
}

#[test]
fn a_boot_like_guest_snapshots_to_a_few_records() {
    let mut t = Tracker::new();
    t.set_user_memory_region(&region(0, 0, 2 * GIB)).unwrap();
    t.set_user_memory_region(&region(1, 4 * GIB, 62 * GIB))
        .unwrap();
    t.set_memory_attributes(Gpa(0), 2 * GIB, P).unwrap();
    t.set_memory_attributes(Gpa(4 * GIB), 62 * GIB, P).unwrap();
    t.set_memory_attributes(Gpa(0x100_0000), 64 << 20, 0)
        .unwrap(); // swiotlb
    let s = t.snapshot();
    assert_eq!(
        (s.memslots.len(), s.runs.len(), s.inhibited.len()),
        (2, 3, 0)
    );
    #[cfg(feature = "serde")]
    assert!(serde_json::to_string(&s).unwrap().len() < 1024);
    assert_eq!(round_trip(&t).snapshot(), s);
}

#[test]
fn states_no_tracker_can_reach_are_refused() {
    let mut t = Tracker::new();
    t.set_user_memory_region(&region(0, 0, GIB)).unwrap();
    t.set_memory_attributes(Gpa(0), 1 << 20, P).unwrap();
    let good = t.snapshot();
    let refused = |s: &TrackerSnapshot| Tracker::restore(s).unwrap_err();

    let mut s = good.clone();
    s.version = SNAPSHOT_VERSION + 1;
    assert!(matches!(refused(&s), Error::BadSnapshot { .. }));
    let mut s = good.clone();
    s.runs.push(s.runs[0]); // the same run twice: not a state
    assert!(matches!(refused(&s), Error::BadSnapshot { .. }));
    let mut s = good.clone();
    s.runs[0].attributes = 1 << 5; // an attribute KVM does not have
    assert_eq!(refused(&s).errno(), Errno::EINVAL);
    let mut s = good.clone();
    s.runs[0].end = s.runs[0].start;
    assert!(matches!(refused(&s), Error::BadSnapshot { .. }));
    let mut s = good.clone();
    s.memslots.push(s.memslots[0]); // the same slot twice
    assert!(Tracker::restore(&s).is_err());
    let mut s = good;
    s.inhibited.push(cvmem::snapshot::InhibitRecord {
        gfn: Gfn(1 << 30),
        level: Level::M2,
    });
    assert!(matches!(refused(&s), Error::BadSnapshot { .. }));
}

#[cfg(feature = "mmu")]
#[test]
fn a_vm_mid_conversion_cannot_be_snapshotted() {
    use cvmem::mmu::{Layout, Recovery, Vm};
    let mut vm = Vm::new(Layout::SPLIT, Recovery::OnFault);
    vm.set_user_memory_region(&region(0, 0, GIB)).unwrap();
    let pending = vm
        .begin_conversion(AttrRequest::new(GfnRange::new(Gfn(0), Gfn(512)), Kind::Private).unwrap())
        .unwrap();
    let e = vm.snapshot().unwrap_err();
    assert_eq!(e, Error::ConversionInProgress { count: 1 });
    assert_eq!(e.errno(), Errno::EBUSY);
    assert!(e.to_string().contains("in progress"), "{e}");
    vm.end_conversion(pending).unwrap();
    let s = vm.snapshot().unwrap();
    assert_eq!(s.runs.len(), 1);
    assert_eq!(Tracker::restore(&s).unwrap().snapshot(), s);
}

/// A snapshot of `slots` memslots of 8 TiB (2^31 - 1 pages), each with one inhibited 2M page
/// (issue 22's denial of service: 64 slots took 6.2 s and 33 MB, 32,764 over 6 GB).
fn huge_slots_one_inhibit_each(slots: u32) -> TrackerSnapshot {
    let mut t = Tracker::new();
    let size = cvmem::MAX_SLOT_PAGES * PAGE_SIZE;
    for i in 0..slots {
        // 8 TiB apart (one page short of it, so that every slot starts 1G-aligned).
        let gpa = u64::from(i) << 43;
        t.set_user_memory_region(&MemoryRegion {
            slot: i,
            gpa: Gpa(gpa),
            size,
            ..MemoryRegion::default()
        })
        .unwrap();
        t.set_guest_inhibit(Gpa(gpa).gfn(), Level::K4).unwrap();
    }
    t.snapshot()
}

#[test]
fn hostile_snapshots_cost_their_own_size() {
    for slots in [1024, 32_764] {
        let s = huge_slots_one_inhibit_each(slots);
        assert_eq!(s.inhibited.len(), 2 * slots as usize); // 2M and 1G each
        let t = Tracker::restore(&s).unwrap();
        // A few dozen bytes per record: no bitmap per 8 TiB slot (512 KiB each).
        let records = s.memslots.len() + s.inhibited.len();
        assert!(
            t.heap_bytes() < 256 * records,
            "{} bytes for {records} records",
            t.heap_bytes()
        );
        assert_eq!(t.snapshot(), s);
    }
}

#[test]
fn many_inhibits_in_one_slot_restore_in_order_or_are_refused() {
    let mut t = Tracker::new();
    t.set_user_memory_region(&region(0, 0, 512 * GIB)).unwrap();
    // Inhibits on every other 2M page from the start: 300 (sparse: 8 bytes each), then 160,000
    // (dense: the 2M bitmap of the 512 GiB slot, 32 KiB).
    for (n, most) in [
        (300u64, 300 * 8 + 8 * 1024),
        (160_000, 32 * 1024 + 8 * 1024),
    ] {
        for i in 0..n {
            t.set_guest_inhibit(Gfn(i * 1024), Level::K4).unwrap();
        }
        let s = t.snapshot();
        let back = Tracker::restore(&s).unwrap();
        assert_eq!(back.snapshot(), s);
        // The store and slot cost under 8 KiB here; the inhibits what their form costs.
        assert!(
            back.heap_bytes() <= most,
            "{n} inhibits: {}",
            back.heap_bytes()
        );
    }
    // Out of order or repeated: refused, whatever the count.
    let mut s = t.snapshot();
    s.inhibited.swap(0, 1);
    assert!(matches!(
        Tracker::restore(&s).unwrap_err(),
        Error::BadSnapshot { .. }
    ));
    let mut s = t.snapshot();
    s.inhibited[1] = s.inhibited[0];
    assert!(matches!(
        Tracker::restore(&s).unwrap_err(),
        Error::BadSnapshot { .. }
    ));
}

#[test]
fn a_snapshot_carries_no_host_address() {
    let mut t = Tracker::new();
    t.set_user_memory_region(&MemoryRegion {
        uaddr: Some(0x7f12_3460_0000),
        ..region(0, 2 * GIB, GIB)
    })
    .unwrap();
    let s = t.snapshot();
    assert_eq!(s.memslots[0].host_offset, 0x7f12_3460_0000 % GIB);
    #[cfg(feature = "serde")]
    {
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains(&0x7f12_3460_0000u64.to_string()), "{json}");
        // Unknown fields are refused, not ignored.
        let extra = json.replacen("\"version\"", "\"uaddr\":1,\"version\"", 1);
        assert!(serde_json::from_str::<TrackerSnapshot>(&extra).is_err());
    }
    // The level the host alignment allows is kept: 2M, not 1G.
    let back = round_trip(&t);
    assert_eq!(
        back.allowed_level(Gfn((2 * GIB) / PAGE_SIZE)),
        t.allowed_level(Gfn((2 * GIB) / PAGE_SIZE))
    );
}

/// A VM whose guest_memfd keeps PRIVATE: one 4 GiB file of 1G folios bound to two memslots,
/// conversions that split folios, a pinned shared page.
fn per_gmem_guest() -> Tracker {
    use cvmem::{AttrMode, GmemBinding, GmemFlags, GmemOffset};
    let mut t = Tracker::new().with_attr_mode(AttrMode::PerGmem);
    let flags = GmemFlags {
        mmap: true,
        init_shared: false,
        folio: Level::G1,
    };
    let file = t.create_guest_memfd(4 * GIB, flags).unwrap();
    for (slot, gpa, offset) in [(0, 0, 0), (1, 8 * GIB, 2 * GIB)] {
        t.set_user_memory_region(&MemoryRegion {
            gmem: Some(GmemBinding {
                gmem: file,
                offset: GmemOffset(offset),
            }),
            ..region(slot, gpa, 2 * GIB)
        })
        .unwrap();
    }
    t.set_gmem_attributes(file, GmemOffset(GIB + 0x20_1000), 0x3000, 0, 0)
        .unwrap();
    t.set_gmem_attributes(file, GmemOffset(3 * GIB), 2 << 20, 0, 0)
        .unwrap();
    t.gmem_get_page(file, GmemOffset(GIB + 0x20_2000)).unwrap();
    t
}

#[test]
fn a_per_gmem_vm_round_trips_with_its_files_folios_and_pins() {
    let t = per_gmem_guest();
    let snap = t.snapshot();
    assert_eq!(snap.version, SNAPSHOT_VERSION);
    let file = &snap.files[0];
    assert_eq!(file.private.len(), 3, "{file:?}");
    assert_eq!(
        (file.split_1g.len(), file.split_2m.len()),
        (2, 1),
        "{file:?}"
    );
    assert_eq!(file.references.len(), 1);
    let back = round_trip(&t);
    assert_eq!(back.snapshot(), snap);
    let gfns: Vec<u64> = [
        0,
        GIB + 0x20_1000,
        GIB + 0x20_0000,
        3 * GIB,
        8 * GIB + GIB + 0x20_2000,
    ]
    .iter()
    .map(|b| b / PAGE_SIZE)
    .collect();
    assert_eq!(answers(&back, &gfns), answers(&t, &gfns));
    // The pin came along: making its page private again is refused as before.
    let file_id = cvmem::GmemId(0);
    let pinned = cvmem::GmemOffset(GIB + 0x20_2000);
    let mut back = back;
    assert_eq!(
        back.set_gmem_attributes(file_id, pinned, 0x1000, P, 0)
            .unwrap_err()
            .errno(),
        Errno::EAGAIN
    );
}

#[test]
fn hostile_file_records_are_refused() {
    use cvmem::{GmemBinding, GmemId, GmemOffset, IndexRun, PageRefs, SnapshotFault};
    let good = per_gmem_guest().snapshot();
    let refused = |f: &dyn Fn(&mut TrackerSnapshot)| {
        let mut s = good.clone();
        f(&mut s);
        match Tracker::restore(&s) {
            Err(Error::BadSnapshot { why }) => why,
            other => panic!("{other:?}"),
        }
    };
    // A reference on a private page; runs out of order; a split 2M folio inside a whole 1G.
    assert_eq!(
        refused(&|s| s.files[0].references[0] = PageRefs { page: 0, count: 1 }),
        SnapshotFault::FileRecord
    );
    assert_eq!(
        refused(&|s| s.files[0].private.reverse()),
        SnapshotFault::FileRecord
    );
    assert_eq!(
        refused(&|s| s.files[0].split_2m.push(IndexRun {
            start: 1500,
            end: 1501
        })),
        SnapshotFault::FileRecord
    );
    assert_eq!(
        refused(&|s| s.files[0].private.push(IndexRun {
            start: 1 << 40,
            end: (1 << 40) + 1
        })),
        SnapshotFault::FileRecord
    );
    // A binding to a file the snapshot lacks.
    assert_eq!(
        refused(&|s| s.memslots[0].gmem = Some(GmemBinding {
            gmem: GmemId(7),
            offset: GmemOffset(0),
        })),
        SnapshotFault::Binding
    );
    // The snapshot as written restores.
    assert!(Tracker::restore(&good).is_ok());
}

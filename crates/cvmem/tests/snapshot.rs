//! Save/restore: every reachable state round-trips (through serde when enabled), answers every
//! query as before, and states no tracker can reach are refused; a VM mid-conversion cannot be
//! snapshotted.

use cvmem::mmu::{Layout, Recovery, Vm};
use cvmem::{
    Access, AttrRequest, Errno, Error, Gfn, GfnRange, Gpa, Level, MemoryRegion, SlotFlags, Tracker,
    TrackerSnapshot, KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SIZE, SNAPSHOT_VERSION,
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
        gpa,
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
                    let r = GfnRange::new(start, start + pages);
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
        gfn: 1 << 30,
        level: Level::M2,
    });
    assert!(matches!(refused(&s), Error::BadSnapshot { .. }));
}

#[test]
fn a_vm_mid_conversion_cannot_be_snapshotted() {
    let mut vm = Vm::new(Layout::SPLIT, Recovery::OnFault);
    vm.set_user_memory_region(&region(0, 0, GIB)).unwrap();
    let pending = vm
        .begin_conversion(AttrRequest::new(GfnRange::new(0, 512), Access::Private).unwrap())
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

//! Live migration of the private/shared state: the source snapshots, the destination creates
//! the same memslots on its own memory and restores; refused when the slots differ or the
//! destination is not fresh.
#![cfg(target_os = "linux")]

use cvmem::{Gpa, Level, KVM_MEMORY_ATTRIBUTE_PRIVATE};
use cvmem_kvm::{Backing, CvmMemory, SlotSpec};

fn vm(slots: &[(u32, u64, u64)]) -> CvmMemory {
    let m = CvmMemory::detached();
    for &(slot, gpa, size) in slots {
        m.add_slot(&SlotSpec {
            slot,
            gpa: Gpa(gpa),
            size,
            backing: Backing::Anonymous,
            max_level: Level::G1,
        })
        .unwrap();
    }
    m
}

const SLOTS: [(u32, u64, u64); 2] = [(0, 0, 64 << 20), (1, 1 << 32, 64 << 20)];

#[test]
fn the_destination_answers_as_the_source() {
    let source = vm(&SLOTS);
    source
        .set_attributes(Gpa(0), 64 << 20, KVM_MEMORY_ATTRIBUTE_PRIVATE)
        .unwrap();
    source.set_attributes(Gpa(0x20_0000), 0x1000, 0).unwrap();
    source
        .set_attributes(
            Gpa((1 << 32) + 0x40_0000),
            0x20_0000,
            KVM_MEMORY_ATTRIBUTE_PRIVATE,
        )
        .unwrap();
    let snapshot = source.snapshot();
    #[cfg(feature = "serde")]
    let snapshot: cvmem::TrackerSnapshot =
        serde_json::from_str(&serde_json::to_string(&snapshot).unwrap()).unwrap();

    let destination = vm(&SLOTS);
    destination.restore(&snapshot).unwrap();
    // Everything but the store's heap bytes, which depend on its history.
    let map = |m: &CvmMemory| {
        let mut map = m.query().snapshot();
        map.tracker_heap_bytes = 0;
        map
    };
    assert_eq!(map(&destination), map(&source));
    let (ours, theirs) = (destination.snapshot(), source.snapshot());
    assert_eq!(
        (&ours.runs, &ours.inhibited),
        (&theirs.runs, &theirs.inhibited)
    );

    // Not fresh any more: a second restore is refused and changes nothing.
    let before = destination.snapshot();
    assert!(destination.restore(&snapshot).is_err());
    assert_eq!(destination.snapshot(), before);
}

#[test]
fn a_destination_with_other_memslots_is_refused() {
    let source = vm(&SLOTS);
    source
        .set_attributes(Gpa(0), 0x1000, KVM_MEMORY_ATTRIBUTE_PRIVATE)
        .unwrap();
    let other = vm(&SLOTS[..1]);
    let e = other.restore(&source.snapshot()).unwrap_err();
    assert!(e.to_string().contains("memslots differ"), "{e}");
    assert!(other.query().snapshot().private.is_empty());
}

//! The recording IOMMU's rules and the adapter's splitting.

use super::*;
use crate::listener::{Cause, SlotRange};
use cvmem::Gfn;
use cvmem::GfnRange;

fn range(start: u64, end: u64) -> SlotRange {
    SlotRange {
        slot: 0,
        range: GfnRange::new(Gfn(start), Gfn(end)),
        hva: 0x7000_0000_0000 + start * 4096,
    }
}

fn event(to: Kind, ranges: &[SlotRange]) -> MemoryEvent<'_> {
    MemoryEvent {
        to,
        cause: Cause::Conversion,
        ranges,
    }
}

#[test]
fn recording_iommu_enforces_vfio_rules() {
    let mut io = RecordingIommu::new();
    io.map(0x1000, 0x3000, 0).unwrap();
    assert!(io.map(0x3000, 0x1000, 0).is_err(), "overlapping map");
    assert!(io.map(0, 0x2000, 0).is_err(), "overlapping map from below");
    assert!(io.map(0x5000, 0, 0).is_err(), "empty map");
    assert!(io.unmap(0x1000, 0x1000).is_err(), "partial unmap");
    assert!(io.unmap(0x2000, 0x1000).is_err(), "unmap inside a mapping");
    assert!(io.unmap(0x8000, 0x1000).is_err(), "unmap of nothing");
    assert_eq!(io.violations().len(), 6);
    io.map(0x4000, 0x1000, 0).unwrap();
    assert_eq!(io.mapped(), vec![(0x1000, 0x5000)]);
    io.unmap(0x1000, 0x3000).unwrap();
    assert_eq!(io.mapped(), vec![(0x4000, 0x5000)]);
    assert_eq!(io.stats().mappings, 1);
    io.fail_map_in(2);
    io.map(0x10000, 0x1000, 0).unwrap();
    assert!(io.map(0x20000, 0x1000, 0).is_err());
    io.map(0x20000, 0x1000, 0).unwrap();
}

#[test]
fn listener_splits_mappings_without_partial_unmaps() {
    let l = IommuListener::new("t", RecordingIommu::new());
    l.notify(&event(Kind::Shared, &[range(0, 512)])).unwrap();
    // One page in the middle, then the first page, then the rest.
    l.notify(&event(Kind::Private, &[range(100, 101)])).unwrap();
    assert_eq!(l.mapped(), vec![(0, 100 * 4096), (101 * 4096, 512 * 4096)]);
    l.notify(&event(Kind::Private, &[range(0, 1), range(200, 300)]))
        .unwrap();
    assert_eq!(
        l.mapped(),
        vec![
            (4096, 100 * 4096),
            (101 * 4096, 200 * 4096),
            (300 * 4096, 512 * 4096)
        ]
    );
    assert_eq!(l.mapped(), l.with_dma(|d| d.mapped()));
    assert!(l.with_dma(|d| d.violations().is_empty()));
    // [0,512) minus page 100: two pieces; minus page 0: one; minus [200,300): two.
    assert_eq!(l.splits(), 5);
    // Back to shared: adjacent pieces are separate mappings, never overlapping.
    l.notify(&event(
        Kind::Shared,
        &[range(0, 1), range(100, 101), range(200, 300)],
    ))
    .unwrap();
    assert_eq!(l.with_dma(|d| d.mapped()), vec![(0, 512 * 4096)]);
    assert!(l.with_dma(|d| d.violations().is_empty()));
}

#[test]
fn listener_rejects_events_that_contradict_its_mappings() {
    let l = IommuListener::new("t", RecordingIommu::new());
    l.notify(&event(Kind::Shared, &[range(0, 16)])).unwrap();
    // Private memory that was never shared.
    assert!(l.notify(&event(Kind::Private, &[range(8, 32)])).is_err());
    // Shared memory that already is.
    assert!(l.notify(&event(Kind::Shared, &[range(4, 5)])).is_err());
    assert_eq!(l.mapped(), vec![(0, 16 * 4096)]);
}

#[test]
fn a_failed_event_leaves_the_listener_as_it_was() {
    let l = IommuListener::new("t", RecordingIommu::new());
    l.notify(&event(Kind::Shared, &[range(0, 16)])).unwrap();
    // The split's second remap fails: the whole event is undone.
    l.with_dma(|d| d.fail_map_in(2));
    let e = l.notify(&event(Kind::Private, &[range(4, 8)])).unwrap_err();
    assert!(e.message.contains("injected"), "{e}");
    assert_eq!(l.mapped(), vec![(0, 16 * 4096)]);
    assert_eq!(l.with_dma(|d| d.mapped()), vec![(0, 16 * 4096)]);
    // A multi-range map whose second range fails.
    l.with_dma(|d| d.fail_map_in(2));
    assert!(l
        .notify(&event(Kind::Shared, &[range(20, 21), range(30, 31)]))
        .is_err());
    assert_eq!(l.with_dma(|d| d.mapped()), vec![(0, 16 * 4096)]);
}

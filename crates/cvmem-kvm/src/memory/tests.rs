//! Conversions on detached memory (anonymous slots, no KVM): exact ranges, discards,
//! listeners, rollback.

use std::sync::Mutex;

use super::*;
use crate::iommu::{IommuListener, RecordingIommu};
use crate::listener::ListenerError;
use crate::request::RequestError;

const P: u64 = KVM_MEMORY_ATTRIBUTE_PRIVATE;

fn memory() -> CvmMemory {
    let m = CvmMemory::detached();
    for (slot, gpa) in [(0, 0), (1, 1 << 30)] {
        m.add_slot(&SlotSpec {
            slot,
            gpa: cvmem::Gpa(gpa),
            size: 4 << 20,
            backing: Backing::Anonymous,
            max_level: Level::G1,
        })
        .unwrap();
    }
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

/// One recorded event: direction, cause, gfn ranges.
type Recorded = (Kind, Cause, Vec<(u64, u64)>);

/// Records every event; fails the events whose number is in `fail`.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Recorded>>,
    fail: Mutex<Vec<usize>>,
}

impl ConversionListener for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn notify(&self, e: &MemoryEvent<'_>) -> Result<(), ListenerError> {
        let mut events = self.events.lock().unwrap();
        if self.fail.lock().unwrap().contains(&events.len()) {
            events.push((e.to, Cause::Rollback, vec![(u64::MAX, u64::MAX)]));
            return Err(ListenerError {
                listener: "recorder".into(),
                message: "refused".into(),
            });
        }
        events.push((
            e.to,
            e.cause,
            e.ranges
                .iter()
                .map(|r| (r.range.start.0, r.range.end.0))
                .collect(),
        ));
        Ok(())
    }
}

#[test]
fn listeners_get_exact_changed_ranges_clipped_to_slots() {
    let m = memory();
    let rec = Arc::new(Recorder::default());
    m.add_listener(rec.clone()).unwrap();
    // Registration replays the shared memory of both slots.
    assert_eq!(
        rec.events.lock().unwrap()[0].2,
        vec![(0, 1024), (0x40000, 0x40400)]
    );
    m.convert(&req(0x1000, 4, true)).unwrap();
    // Overlaps the private pages and runs past the end of slot 0 into no slot (the VMM may
    // convert anywhere; a guest may not: see a_guest_makes_nothing_private_outside_its_memslots).
    let c = m
        .convert(&guest(RequestSource::Vmm, 0, 2048, true))
        .unwrap();
    assert_eq!(c.changed_pages, 2048 - 4);
    let events = rec.events.lock().unwrap().clone();
    assert_eq!(events[1], (Kind::Private, Cause::Conversion, vec![(1, 5)]));
    assert_eq!(
        events[2],
        (Kind::Private, Cause::Conversion, vec![(0, 1), (5, 1024)])
    );
    // Nothing changes: no event.
    assert_eq!(m.convert(&req(0x2000, 1, true)).unwrap().changed_pages, 0);
    assert_eq!(rec.events.lock().unwrap().len(), 3);
    let q = m.query();
    assert_eq!(
        q.range_kind(Gpa(0), 8 << 20).unwrap(),
        crate::RangeKind::Private
    );
    assert_eq!(
        q.range_kind(Gpa(0), 2 << 30).unwrap(),
        crate::RangeKind::Mixed
    );
}

#[test]
fn anonymous_memory_is_dropped_when_it_becomes_private() {
    let m = memory();
    m.write_u64(Gpa(0x3000), 0xabcd).unwrap();
    m.write_u64(Gpa(0x4000), 0x1234).unwrap();
    let c = m.convert(&req(0x3000, 1, true)).unwrap();
    assert_eq!(c.discarded_bytes, 4096);
    assert_eq!(m.read_u64(Gpa(0x3000)).unwrap(), 0);
    assert_eq!(m.read_u64(Gpa(0x4000)).unwrap(), 0x1234);
    // Back to shared keeps (there is no private backing to punch).
    m.write_u64(Gpa(0x3000), 7).unwrap();
    assert_eq!(
        m.convert(&req(0x3000, 1, false)).unwrap().discarded_bytes,
        0
    );
    assert_eq!(m.read_u64(Gpa(0x3000)).unwrap(), 7);
}

#[test]
fn a_refused_conversion_is_rolled_back_everywhere() {
    let m = memory();
    let iommu = Arc::new(IommuListener::new("vfio", RecordingIommu::new()));
    let rec = Arc::new(Recorder::default());
    m.add_listener(iommu.clone()).unwrap();
    m.add_listener(rec.clone()).unwrap();
    m.convert(&req(0, 512, true)).unwrap();
    let before = m.query().runs(Gpa(0), 8 << 20).unwrap();
    let mapped = iommu.with_dma(|d| d.mapped());

    // To shared: the second listener refuses; the IOMMU is rolled back, and the tracker.
    rec.fail.lock().unwrap().push(2);
    let e = m.convert(&req(0x10000, 16, false)).unwrap_err();
    assert!(matches!(e, Error::Listener(_)), "{e}");
    assert_eq!(
        guest_status_of(&Err::<(), _>(e)),
        (libc::EFAULT as u64).wrapping_neg()
    );
    assert_eq!(m.query().runs(Gpa(0), 8 << 20).unwrap(), before);
    assert_eq!(iommu.with_dma(|d| d.mapped()), mapped);

    // To private: the IOMMU refuses (a split's remap fails); nothing changes.
    iommu.with_dma(|d| d.fail_map_in(1));
    assert!(m.convert(&req(0x300000, 1, true)).is_err());
    assert_eq!(m.query().runs(Gpa(0), 8 << 20).unwrap(), before);
    assert_eq!(iommu.with_dma(|d| d.mapped()), mapped);
    assert!(iommu.with_dma(|d| d.violations().is_empty()));
    // The recorder never saw the refused conversion.
    assert_eq!(rec.events.lock().unwrap().len(), 3);

    // And then it works.
    m.convert(&req(0x300000, 1, true)).unwrap();
    assert!(m.query().is_private(Gpa(0x300000)));
}

fn guest_status_of(r: &Result<()>) -> u64 {
    crate::guest_status(r)
}

#[test]
fn slots_come_and_go_through_listeners() {
    let m = memory();
    let iommu = Arc::new(IommuListener::new("vfio", RecordingIommu::new()));
    m.add_listener(iommu.clone()).unwrap();
    m.convert(&req(0x40000000, 16, true)).unwrap();
    m.remove_slot(1).unwrap();
    assert_eq!(iommu.with_dma(|d| d.mapped()), vec![(0, 4 << 20)]);
    assert!(m.remove_slot(1).is_err());
    // The private attributes outlive the slot (KVM's attributes are per VM).
    assert!(m.query().is_private(Gpa(0x40000000)));
    // Overlapping slots are refused by the tracker, and leave nothing behind.
    let overlap = SlotSpec {
        slot: 7,
        gpa: cvmem::Gpa(0x1000),
        size: 4096,
        backing: Backing::Anonymous,
        max_level: Level::K4,
    };
    assert!(matches!(m.add_slot(&overlap), Err(Error::Tracker(_))));
    // Re-adding an existing id is refused and leaves the slot alone.
    let again = SlotSpec {
        slot: 0,
        gpa: cvmem::Gpa(0x4000_0000),
        size: 4096,
        backing: Backing::Anonymous,
        max_level: Level::K4,
    };
    assert!(m.add_slot(&again).is_err());
    assert_eq!(m.query().snapshot().slots[0].size, 4 << 20);
    assert_eq!(m.query().snapshot().slots.len(), 1);
    assert!(iommu.with_dma(|d| d.violations().is_empty()));
}

#[test]
fn vmm_attribute_changes_follow_kvm_rules() {
    let m = memory();
    assert!(matches!(
        m.set_attributes(Gpa(0), 0, P),
        Err(Error::Tracker(_))
    ));
    assert!(matches!(
        m.set_attributes(Gpa(0x800), 4096, P),
        Err(Error::Tracker(_))
    ));
    assert!(matches!(
        m.set_attributes(Gpa(0), 4096, 1),
        Err(Error::Tracker(_))
    ));
    let c = m.set_attributes(Gpa(0), 2 << 20, P).unwrap();
    assert_eq!(c.changed_pages, 512);
    let map = m.query().snapshot();
    assert_eq!(map.private, vec![(Gpa(0), 2 << 20)]);
    assert_eq!(map.slots[0].private_bytes, 2 << 20);
}

#[test]
fn stats_count_conversions_refusals_and_rollbacks() {
    let m = memory();
    let rec = Arc::new(Recorder::default());
    m.add_listener(rec.clone()).unwrap();
    m.convert(&req(0, 4, true)).unwrap();
    m.convert(&req(0, 4, true)).unwrap(); // nothing to change
                                          // Unaligned: refused.
    assert!(m.set_attributes(Gpa(0x1001), 0x1000, P).is_err());
    // The listener refuses the next event: the conversion is rolled back.
    let next = rec.events.lock().unwrap().len();
    rec.fail.lock().unwrap().push(next);
    assert!(m.convert(&req(0x10000, 2, true)).is_err());
    let s = m.stats();
    assert_eq!(
        (
            s.conversions,
            s.unchanged,
            s.changed_pages,
            s.refused,
            s.rolled_back,
            s.inconsistent
        ),
        (2, 1, 4, 1, 1, 0)
    );
    assert_eq!(s.slot_changes, 2); // the two slots of `memory()`
    assert!(!m.query().is_private(Gpa(0x10000)));
}

#[test]
fn host_writes_land_byte_exact_at_any_alignment() {
    let m = memory();
    let bytes: Vec<u8> = (1..=29).collect();
    // Starts 3 bytes into a quadword: a 5-byte head, three whole quadwords, a 0-byte tail.
    m.write_bytes(Gpa(0x1003), &bytes).unwrap();
    let mut seen = Vec::new();
    for q in 0..6 {
        seen.extend(m.read_u64(Gpa(0x1000 + q * 8)).unwrap().to_le_bytes());
    }
    assert_eq!(&seen[..3], &[0, 0, 0]);
    assert_eq!(&seen[3..32], &bytes[..]);
    assert!(seen[32..].iter().all(|&b| b == 0));
    // Past the end of the slot: refused, nothing written.
    assert!(m.write_bytes(Gpa((4 << 20) - 4), &[1; 8]).is_err());
    assert_eq!(m.read_u64(Gpa((4 << 20) - 8)).unwrap(), 0);
}

/// A guest's request from the given transport.
fn guest(source: RequestSource, gpa: u64, npages: u64, private: bool) -> ConversionRequest {
    ConversionRequest {
        source,
        ..req(gpa, npages, private)
    }
}

#[test]
fn a_guest_makes_nothing_private_outside_its_memslots() {
    let m = memory();
    let before = m.query().snapshot();
    // Wholly outside (between the slots) and straddling slot 0's end: refused whole, with
    // -EINVAL for the guest, from every guest transport.
    for source in [
        RequestSource::Hypercall,
        RequestSource::PortIo,
        RequestSource::MemoryFault,
    ] {
        for (gpa, npages) in [(8 << 20, 1), ((4 << 20) - 0x1000, 2)] {
            let e = m.convert(&guest(source, gpa, npages, true)).unwrap_err();
            assert!(
                matches!(e, Error::Request(RequestError::OutsideMemslots(_))),
                "{e}"
            );
            assert_eq!(
                guest_status_of(&Err::<(), _>(e)),
                (libc::EINVAL as u64).wrapping_neg()
            );
        }
    }
    assert_eq!(m.query().snapshot(), before, "nothing changed");
    let s = m.stats();
    assert_eq!((s.refused, s.outside_memslots_refused), (6, 6));
    // The VMM keeps KVM's semantics: attributes anywhere.
    m.set_attributes(Gpa(8 << 20), 0x1000, P).unwrap();
    assert!(m.query().is_private(Gpa(8 << 20)));
}

#[test]
fn a_guest_makes_shared_only_what_is_inside_its_memslots() {
    let m = memory();
    m.set_attributes(Gpa(0), 4 << 20, P).unwrap();
    m.set_attributes(Gpa(1 << 30), 4 << 20, P).unwrap();
    // The VMM made a page outside the slots private; a guest cannot change it.
    m.set_attributes(Gpa(8 << 20), 0x1000, P).unwrap();
    // From the last 2 pages of slot 0 to the first 2 of slot 1: the gap is left alone.
    let gap = ((1 << 30) - (4 << 20)) / PAGE_SIZE;
    let c = m
        .convert(&guest(
            RequestSource::Hypercall,
            (4 << 20) - 0x2000,
            gap + 4,
            false,
        ))
        .unwrap();
    assert_eq!((c.changed_pages, c.outside_pages), (4, gap));
    assert_eq!(
        c.slot_ranges.iter().map(|r| r.slot).collect::<Vec<_>>(),
        [0, 1]
    );
    assert!(!m.query().is_private(Gpa((4 << 20) - 0x1000)));
    assert!(!m.query().is_private(Gpa(1 << 30)));
    assert!(m.query().is_private(Gpa(8 << 20)), "outside: unchanged");
    assert!(m.query().is_private(Gpa((1 << 30) + 0x2000)));
    // Wholly outside: success for the guest, nothing done.
    let c = m
        .convert(&guest(RequestSource::PortIo, 8 << 20, 1, false))
        .unwrap();
    assert_eq!((c.changed_pages, c.outside_pages), (0, 1));
    assert!(m.query().is_private(Gpa(8 << 20)));
    assert_eq!(m.stats().outside_memslots_ignored_pages, gap + 1);
}

#[test]
fn conversions_outside_memslots_grow_no_tracking() {
    // A hostile guest: one private page per 256 GiB outside its memslots, and
    // shared pages among VMM-made private memory outside them.
    let m = memory();
    m.set_attributes(Gpa(1 << 40), 1 << 30, P).unwrap();
    let heap = || m.query().with_tracker(Tracker::heap_bytes);
    let before = heap();
    for i in 1..=10_000u64 {
        let gpa = i << 38;
        assert!(m
            .convert(&guest(RequestSource::Hypercall, gpa, 1, true))
            .is_err());
        m.convert(&guest(
            RequestSource::Hypercall,
            (1 << 40) + (i % 4096) * 0x2000,
            1,
            false,
        ))
        .unwrap();
    }
    assert_eq!(heap(), before);
    assert_eq!(m.stats().outside_memslots_refused, 10_000);
}

/// The memory state a guest or VMM can observe (not the store's spare room).
fn state(m: &CvmMemory) -> (Vec<crate::SlotSnapshot>, Vec<(Gpa, u64)>) {
    let map = m.query().snapshot();
    (map.slots, map.private)
}

#[test]
fn a_refused_restore_leaves_the_destination_unchanged() {
    let source = memory();
    for (gpa, size) in [(0, 0x10000), (0x40000, 0x1000), (1 << 30, 0x3000)] {
        source.set_attributes(Gpa(gpa), size, P).unwrap();
    }
    source.set_attributes(Gpa(1 << 40), 1 << 21, P).unwrap(); // outside every slot
    let snapshot = source.snapshot();
    assert_eq!(snapshot.runs.len(), 4);

    // A listener refuses the third run: the first two are converted back.
    let m = memory();
    let rec = Arc::new(Recorder::default());
    m.add_listener(rec.clone()).unwrap();
    let before = state(&m);
    let registered = rec.events.lock().unwrap().len();
    rec.fail.lock().unwrap().push(registered + 2);
    assert!(matches!(m.restore(&snapshot), Err(Error::Listener(_))));
    assert_eq!(state(&m), before);
    // Then it works, in full.
    rec.fail.lock().unwrap().clear();
    m.restore(&snapshot).unwrap();
    assert_eq!(m.snapshot(), snapshot);

    // A run that ends at the top of the gfn space (the overflow of issue 22) after valid ones:
    // refused or restored whole, never half.
    let mut top = snapshot.clone();
    top.runs.push(cvmem::snapshot::RunRecord {
        start: cvmem::Gfn(cvmem::GFN_END - 1),
        end: cvmem::Gfn(cvmem::GFN_END),
        attributes: P,
    });
    let m = memory();
    let before = state(&m);
    match m.restore(&top) {
        Ok(()) => assert_eq!(m.snapshot(), top),
        Err(e) => assert_eq!(state(&m), before, "{e}"),
    }
}

#[test]
fn reads_of_a_fragmented_guest_stay_bounded() {
    let m = CvmMemory::detached();
    m.add_slot(&SlotSpec {
        slot: 0,
        gpa: cvmem::Gpa(0),
        size: 1 << 30,
        backing: Backing::Anonymous,
        max_level: Level::G1,
    })
    .unwrap();
    for page in (0..(1u64 << 18)).step_by(2) {
        m.set_attributes(Gpa(page * PAGE_SIZE), PAGE_SIZE, P)
            .unwrap();
    }
    let map = m.query().snapshot();
    assert_eq!(map.private_runs, 1 << 17);
    assert_eq!(map.private.len(), crate::MemoryMap::PRIVATE_RUNS_MAX);
    assert!(map.private_truncated());
    assert_eq!(map.slots[0].private_bytes, (1 << 17) * PAGE_SIZE);
    // Streaming visits every run, and stops when told.
    let mut runs = 0u64;
    let all = m.query().for_each_run(Gpa(0), 1 << 30, |_| {
        runs += 1;
        std::ops::ControlFlow::<()>::Continue(())
    });
    assert_eq!((all, runs), (Ok(None), 1 << 18));
    let mut seen = 0;
    let stopped = m.query().for_each_run(Gpa(0), 1 << 30, |r| {
        seen += 1;
        if seen == 1000 {
            std::ops::ControlFlow::Break(r.start)
        } else {
            std::ops::ControlFlow::Continue(())
        }
    });
    assert_eq!(stopped, Ok(Some(cvmem::Gfn(999))));
    // A byte range at any alignment is the pages that hold it; an empty one is refused.
    let mut pages = Vec::new();
    let done = m.query().for_each_run(Gpa(0x1ff0), 0x20, |r| {
        pages.push((r.start.0, r.end.0));
        std::ops::ControlFlow::<()>::Continue(())
    });
    assert_eq!((done, pages), (Ok(None), vec![(1, 2), (2, 3)]));
    assert_eq!(
        m.query().range_kind(Gpa(0x10), 64),
        Ok(crate::RangeKind::Private)
    );
    assert_eq!(
        m.query().range_kind(Gpa(0x1010), 64),
        Ok(crate::RangeKind::Shared)
    );
    assert_eq!(
        m.query().range_kind(Gpa(0x1ff0), 0x20),
        Ok(crate::RangeKind::Mixed)
    );
    assert!(m.query().runs(Gpa(0x10), 0).is_err());
    assert!(m.query().runs(Gpa(u64::MAX - 0xfff), 0x2000).is_err());
}

#[test]
fn requests_that_do_not_decode_are_counted_as_refused() {
    let m = memory();
    let e = ConversionRequest::from_hypercall(13, &[0; 6]).unwrap_err();
    assert_eq!(m.refuse(&e), e.guest_status());
    let e = ConversionRequest::from_map_gpa_range(RequestSource::PortIo, 0x1001, 1, 0).unwrap_err();
    assert_eq!(m.refuse(&e), (libc::EINVAL as u64).wrapping_neg());
    assert_eq!(m.stats().refused, 2);
}

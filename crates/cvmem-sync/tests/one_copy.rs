//! The one-copy store against the core's attribute store (itself checked against the dense
//! oracle) and a brute-force level over a 4 GiB window, under random conversions of every
//! shape: single pages, runs across 2M and 1G boundaries, whole 1G and 512G pages, far gfns,
//! the whole gfn space. And readers racing a writer: every answer is one of a committed state.

use cvmem::{AttrStore, Gfn, GfnRange, Level, GFN_END, KVM_MEMORY_ATTRIBUTE_PRIVATE};
use cvmem_sync::one_copy::OneCopyWriter;
use proptest::prelude::*;

const WINDOW: u64 = 1 << 20;
const P: u64 = KVM_MEMORY_ATTRIBUTE_PRIVATE;

/// A range with edges on 4K, 2M or 1G boundaries, mostly inside the window.
fn range() -> impl Strategy<Value = GfnRange> {
    let edge = prop_oneof![
        4 => 0..WINDOW,
        2 => (0..WINDOW / 512).prop_map(|p| p * 512),
        1 => (0..=WINDOW >> 18).prop_map(|g| g << 18),
    ];
    prop_oneof![
        // Single gfns in a few 2M pages: inline exceptions come and go, pages fill up.
        4 => (0..12u64).prop_map(|g| GfnRange::new(Gfn(g), Gfn(g + 1))),
        4 => (0..2048u64).prop_map(|g| GfnRange::new(Gfn(g), Gfn(g + 1))),
        2 => (0..WINDOW).prop_map(|g| GfnRange::new(Gfn(g), Gfn(g + 1))),
        8 => (edge.clone(), 1..600u64).prop_map(|(s, n)| GfnRange::new(Gfn(s), Gfn((s + n).min(WINDOW + 600)))),
        4 => (edge.clone(), edge).prop_map(|(a, b)| GfnRange::new(Gfn(a.min(b)), Gfn(a.max(b) + 1))),
        1 => (0..4u64).prop_map(|k| GfnRange::new(Gfn(k << 27), Gfn((k + 1) << 27))),
        1 => (1u64..1 << 20).prop_map(|s| GfnRange::new(Gfn(s << 30), Gfn((s << 30) + 513))),
        1 => Just(GfnRange::new(Gfn(0), Gfn(GFN_END))),
        1 => Just(GfnRange::new(Gfn(GFN_END - 700), Gfn(GFN_END))),
    ]
}

/// The largest level whose aligned page around `gfn` has one kind in `core`.
fn level(core: &AttrStore, gfn: u64) -> Level {
    for level in [Level::G1, Level::M2] {
        if core.uniform(level.page_of(Gfn(gfn))).is_some() {
            return level;
        }
    }
    Level::K4
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn agrees_with_the_core_store(
        ops in prop::collection::vec((range(), any::<bool>()), 1..120),
        probes in prop::collection::vec(0..WINDOW + 1024, 64),
        checks in prop::collection::vec(range(), 8),
    ) {
        let mut w = OneCopyWriter::new().unwrap();
        let mut core = AttrStore::new();
        for (r, v) in ops {
            let a = if v { P } else { 0 };
            let changed = w.set(r, a).unwrap();
            prop_assert_eq!(changed, core.set(r, a).unwrap(), "changed? {:?}", r);
        }
        let s = w.store();
        for gfn in probes.into_iter().chain([GFN_END - 1, 1 << 40, 5 << 27]) {
            let (private, lvl) = s.probe(Gfn(gfn));
            prop_assert_eq!(private, core.is_private(Gfn(gfn)), "kind of {:#x}", gfn);
            prop_assert_eq!(lvl, level(&core, gfn), "level of {:#x}", gfn);
            prop_assert_eq!(s.try_probe(Gfn(gfn)), Some((private, lvl)));
        }
        for r in checks {
            prop_assert_eq!(s.uniform(r), core.uniform(r), "uniform {:?}", r);
            for a in [0, P] {
                prop_assert_eq!(s.range_has(r, a, P), core.range_has(r, a, P));
            }
            let want: Vec<_> = core.runs(r).take(100).collect();
            prop_assert_eq!(s.runs(r, 100), want, "runs {:?}", r);
            // (The core's count walks 512G units one by one: whole-space ranges are slow there.)
            for level in [Level::K4, Level::M2, Level::G1].into_iter().filter(|_| r.len() <= 1 << 32) {
                prop_assert_eq!(s.mixed_pages(r, level), core.mixed_pages(r, level), "mixed {:?} {:?}", r, level);
            }
        }
        let whole = GfnRange::new(Gfn(0), Gfn(GFN_END));
        let want: Vec<_> = core.runs(whole).take(1000).collect();
        prop_assert_eq!(s.runs(whole, 1000), want);
    }
}

#[test]
fn refuses_bad_requests_and_changes_nothing() {
    let mut w = OneCopyWriter::new().unwrap();
    w.set(GfnRange::new(Gfn(10), Gfn(20)), P).unwrap();
    assert!(w.set(GfnRange::new(Gfn(0), Gfn(5)), 1 << 4).is_err());
    assert!(w.set(GfnRange::new(Gfn(5), Gfn(5)), P).is_err());
    assert!(w.set(GfnRange::new(Gfn(5), Gfn(GFN_END + 1)), P).is_err());
    let s = w.store();
    let runs = s.runs(GfnRange::new(Gfn(0), Gfn(100)), 10);
    assert_eq!(runs.len(), 3);
    assert_eq!(
        (runs[1].start, runs[1].end, runs[1].attributes),
        (Gfn(10), Gfn(20), P)
    );
    assert!(
        !w.set(GfnRange::new(Gfn(12), Gfn(14)), P).unwrap(),
        "nothing to change"
    );
}

#[test]
fn the_worst_case_costs_about_a_bitmap() {
    // Every other page of 4 GiB private: every 2M page mixed, in a block.
    let mut w = OneCopyWriter::new().unwrap();
    let pages = 1u64 << 20;
    for g in (0..pages).step_by(2) {
        w.set(GfnRange::new(Gfn(g), Gfn(g + 1)), P).unwrap();
    }
    let bitmap = (pages / 8) as usize;
    let bytes = w.heap_bytes();
    println!("alternating pages of 4 GiB: {bytes} bytes, a bitmap {bitmap}");
    // Blocks, words and nodes: 1.07x the bitmap, and a few KiB of directories.
    assert!(bytes <= bitmap * 11 / 10, "{bytes}");
    // Back to one kind, and mixed again: the blocks are reused, the memory kept (type-stable).
    w.set(GfnRange::new(Gfn(0), Gfn(pages)), 0).unwrap();
    assert_eq!(w.heap_bytes(), bytes);
    for g in (1..pages).step_by(2) {
        w.set(GfnRange::new(Gfn(g), Gfn(g + 1)), P).unwrap();
    }
    assert_eq!(w.heap_bytes(), bytes);
    w.set(GfnRange::new(Gfn(0), Gfn(pages)), 0).unwrap();
    assert_eq!(
        w.store().uniform(GfnRange::new(Gfn(0), Gfn(GFN_END))),
        Some(0)
    );
}

#[test]
fn readers_see_only_committed_states() {
    // The writer alternates one range between two patterns; a reader's runs over it must be
    // exactly one of them (or of the committed steps between), whichever moment it reads.
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    const READS: u64 = 20_000;
    let mut w = OneCopyWriter::new().unwrap();
    let s = std::sync::Arc::clone(w.store());
    let range = GfnRange::new(Gfn(1000), Gfn(1000 + (3 << 18)));
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut round = 0u64;
            // Until the reader has read enough (bounded, should the reader die).
            while !done.load(Relaxed) && round < 10_000_000 {
                let a = if round % 2 == 0 { P } else { 0 };
                w.set(range, a).unwrap();
                // A hole, so that each pattern is three runs.
                w.set(GfnRange::new(Gfn(5000), Gfn(5001 + round % 7)), P ^ a)
                    .unwrap();
                w.set(GfnRange::new(Gfn(5000), Gfn(5008)), P ^ a).unwrap();
                round += 1;
            }
        });
        scope.spawn(|| {
            let mut seen = [0u64; 2];
            for _ in 0..READS {
                let runs = s.runs(range, 10);
                let kinds: Vec<u64> = runs.iter().map(|r| r.attributes).collect();
                let ok = match kinds.as_slice() {
                    [a] => runs[0].range() == range && (*a == 0 || *a == P),
                    // The hole is set in two steps: each is a committed state.
                    [a, b, c] => {
                        a == c
                            && a != b
                            && runs[1].start == Gfn(5000)
                            && (5001..=5008).contains(&runs[1].end.0)
                    }
                    _ => false,
                };
                assert!(ok, "a torn state: {runs:?}");
                seen[usize::from(kinds.len() == 3)] += 1;
            }
            done.store(true, Relaxed);
            println!(
                "{READS} reads: {} of one run, {} of three",
                seen[0], seen[1]
            );
        });
    });
}

#[test]
fn the_concurrent_front_holds_one_copy_in_the_worst_case() {
    // Issue 21's worst case: every other page of a 4 GiB guest private, through the front
    // cvmem-kvm and the C API use. Live bytes, both left-right copies included.
    use cvmem::{Gpa, Tracker};
    use cvmem_sync::ConcurrentTracker;
    let vm = ConcurrentTracker::new(Tracker::new());
    let size = 4u64 << 30;
    vm.set_user_memory_region(&gmem_slot(size, None)).unwrap();
    for page in (0..size >> 12).step_by(2) {
        vm.set_memory_attributes(Gpa(page << 12), 4096, P).unwrap();
    }
    let bitmap = (size >> 12) / 8;
    let live = vm.heap_bytes() as u64;
    println!(
        "alternating pages of 4 GiB through the front: {live} bytes live, {:.3}x a bitmap",
        live as f64 / bitmap as f64
    );
    assert!(live * 10 <= bitmap * 11, "{live} bytes");
}

#[test]
fn the_concurrent_front_holds_one_copy_of_a_files_attributes_in_the_worst_case() {
    // The same worst case where each guest_memfd keeps PRIVATE (in-place conversion): every
    // other page of a 4 GiB file private, through the front. The file's attributes are in one
    // store, not in both left-right copies: what the guest grows is one store and its split
    // folios (twice, a bit per 2M folio). The file's own structure, made by the VMM, is fixed.
    use cvmem::{AttrMode, GmemBinding, GmemFlags, GmemOffset};
    use cvmem::{MergePolicy, Tracker};
    use cvmem_sync::ConcurrentTracker;
    let size = 4u64 << 30;
    for merge in [MergePolicy::OnPunchHole, MergePolicy::Eager] {
        let tracker = Tracker::new()
            .with_attr_mode(AttrMode::PerGmem)
            .with_merge_policy(merge);
        let vm = ConcurrentTracker::new(tracker);
        let flags = GmemFlags {
            mmap: true,
            init_shared: true,
            folio: Level::M2,
        };
        let file = vm.create_guest_memfd(size, flags).unwrap();
        let binding = GmemBinding {
            gmem: file,
            offset: GmemOffset(0),
        };
        vm.set_user_memory_region(&gmem_slot(size, Some(binding)))
            .unwrap();
        // What the VMM set up: the file's structure and both copies of it, not the guest's.
        let before = vm.heap_bytes() as u64;
        for page in (0..size >> 12).step_by(2) {
            let changed = vm
                .set_gmem_attributes_with(file, GmemOffset(page << 12), 4096, P, |_| {})
                .unwrap();
            assert!(changed);
        }
        assert!(vm.attributes(Gfn(2)) == P && vm.attributes(Gfn(3)) == 0);
        let bitmap = (size >> 12) / 8;
        let live = vm.heap_bytes() as u64;
        let grown = live - before;
        println!(
            "alternating pages of a 4 GiB file through the front ({merge:?}): {live} bytes \
             live, {before} before the guest's conversions; grown by {:.3}x a bitmap",
            grown as f64 / bitmap as f64
        );
        assert!(grown * 10 <= bitmap * 11, "{live} bytes, {before} before");
    }
}

/// Slot 0 of a guest_memfd VM: `size` bytes at gpa 0, bound to `file` if given.
fn gmem_slot(size: u64, file: Option<cvmem::GmemBinding>) -> cvmem::MemoryRegion {
    cvmem::MemoryRegion {
        slot: 0,
        gpa: cvmem::Gpa(0),
        size,
        flags: cvmem::SlotFlags {
            guest_memfd: true,
            ..Default::default()
        },
        gmem: file,
        ..Default::default()
    }
}

//! PRIVATE kept per guest_memfd (in-place conversion) against the dense oracle: files,
//! memslots bound to them at offsets (congruent or not with the gfns), attribute changes on
//! the files with host references, and after every step the fault path's answer for both
//! access kinds, the allowed level, MIXED and each slot's counts and eligibility — all of it
//! read through the bindings — and the files' huge folios: split where a change cuts them,
//! merged by each policy, capping private mappings.

use cvmem::{
    Access, AttrMode, GmemBinding, GmemFlags, GmemId, GmemOffset, Gpa, Level, MemoryRegion,
    MergePolicy, SlotFlags, Tracker, KVM_MEMORY_ATTRIBUTE_PRIVATE,
};
use cvmem_testkit::DenseModel;
use proptest::prelude::*;

const PAGE: u64 = 4096;
const M2: u64 = 512;
const G1: u64 = 512 * 512;

#[derive(Clone, Debug)]
enum Op {
    File {
        pages: u64,
        init_shared: bool,
        order: Level,
    },
    Punch {
        file: u32,
        page: u64,
        pages: u64,
    },
    Slot {
        id: u32,
        gfn: u64,
        pages: u64,
        file: Option<(u32, u64)>,
    },
    Attr {
        file: u32,
        page: u64,
        pages: u64,
        private: bool,
    },
    Get(u32, u64),
    Put(u32, u64),
    VmAttr {
        gfn: u64,
        pages: u64,
        private: bool,
    },
}

/// Page numbers near 2M (and, with `big`, 1G) boundaries, or anywhere below `limit`.
fn page_in(limit: u64, big: bool) -> impl Strategy<Value = u64> {
    let unit = if big { G1 } else { M2 };
    prop_oneof![
        3 => (0..limit / unit + 1, 0u64..3).prop_map(move |(u, d)| (u * unit).saturating_sub(d)),
        2 => (0..limit / M2 + 1).prop_map(|u| u * M2),
        3 => 0..limit,
    ]
}

fn folio_order(big: bool) -> impl Strategy<Value = Level> {
    if big {
        prop_oneof![Just(Level::K4), Just(Level::M2), Just(Level::G1)].boxed()
    } else {
        prop_oneof![Just(Level::K4), Just(Level::M2)].boxed()
    }
}

fn ops(big: bool) -> impl Strategy<Value = Vec<Op>> {
    // Small: ~4 2M pages per file. Big: a file of 2 1G pages and a little.
    let file_pages = if big { 2 * G1 + 700 } else { 4 * M2 + 90 };
    let space = if big { 3 * G1 } else { 12 * M2 };
    let op = prop_oneof![
        2 => (1..=file_pages, any::<bool>(), folio_order(big))
            .prop_map(|(pages, init_shared, order)| Op::File { pages: pages.div_ceil(order.pages()) * order.pages(), init_shared, order }),
        2 => (0u32..3, page_in(file_pages, big), prop_oneof![1u64..40, (1u64..4).prop_map(|n| n * M2), 1..=file_pages])
            .prop_map(|(file, page, pages)| Op::Punch { file, page, pages }),
        3 => (0u32..4, prop_oneof![1 => (0..3u64).prop_map(move |u| u * if big { G1 } else { M2 }), 2 => page_in(space, big)], prop_oneof![1..=file_pages / 2, (1..5u64).prop_map(|n| n * M2), Just(if big { G1 } else { 2 * M2 })],
              proptest::option::weighted(0.85, (0u32..3, prop_oneof![Just(0u64), page_in(file_pages / 2, big)])))
            .prop_map(|(id, gfn, pages, file)| Op::Slot { id, gfn, pages, file }),
        6 => (0u32..3, page_in(file_pages, big), prop_oneof![1u64..40, 1..=file_pages], any::<bool>())
            .prop_map(|(file, page, pages, private)| Op::Attr { file, page, pages, private }),
        1 => (0u32..3, 0..file_pages).prop_map(|(f, p)| Op::Get(f, p)),
        1 => (0u32..3, 0..file_pages).prop_map(|(f, p)| Op::Put(f, p)),
        1 => (0..space, 1u64..600, any::<bool>()).prop_map(|(gfn, pages, private)| Op::VmAttr { gfn, pages, private }),
    ];
    // Two files first, so that most operations find one.
    let huge = if big { Level::G1 } else { Level::M2 };
    let first = Just(vec![
        Op::File {
            pages: file_pages.div_ceil(huge.pages()) * huge.pages(),
            init_shared: false,
            order: huge,
        },
        Op::File {
            pages: file_pages.div_ceil(M2) * M2,
            init_shared: true,
            order: Level::M2,
        },
    ]);
    (
        first,
        proptest::collection::vec(op, 1..if big { 14 } else { 60 }),
    )
        .prop_map(|(mut a, b)| {
            a.extend(b);
            a
        })
}

fn apply(t: &mut Tracker, o: &mut DenseModel, op: &Op, policy: MergePolicy) {
    match *op {
        Op::File {
            pages,
            init_shared,
            order,
        } => {
            let flags = GmemFlags {
                mmap: true,
                init_shared,
                folio: order,
            };
            let a = t.create_guest_memfd(pages * PAGE, flags).map(|id| id.0);
            let b = o.create_gmem_folios(pages as usize, init_shared, order, policy);
            assert_eq!(a.map_err(|e| e.errno()), b, "{op:?}");
        }
        Op::Punch { file, page, pages } => {
            let a = t.gmem_punch_hole(GmemId(file), GmemOffset(page * PAGE), pages * PAGE);
            let b = match o.gmems.get_mut(file as usize) {
                Some(g) => g.punch_hole(page * PAGE, pages * PAGE),
                None => Err(cvmem::Errno::EBADF),
            };
            assert_eq!(a.map_err(|e| e.errno()), b, "{op:?}");
        }
        Op::Slot {
            id,
            gfn,
            pages,
            file,
        } => {
            // Delete whatever holds the id first: a guest_memfd slot can only be deleted.
            let del = MemoryRegion {
                slot: id,
                gpa: Gpa(0),
                size: 0,
                ..Default::default()
            };
            let a = t.set_user_memory_region(&del).map(|_| ());
            let b = o.set_memslot_bound(id, 0, 0, (false, false, false), None, None, None);
            assert_eq!(a.map_err(|e| e.errno()), b, "delete {id}");
            let region = MemoryRegion {
                slot: id,
                gpa: Gpa(gfn * PAGE),
                size: pages * PAGE,
                flags: SlotFlags {
                    guest_memfd: true,
                    ..Default::default()
                },
                gmem: file.map(|(f, p)| GmemBinding {
                    gmem: GmemId(f),
                    offset: GmemOffset(p * PAGE),
                }),
                ..Default::default()
            };
            let a = t.set_user_memory_region(&region).map(|_| ());
            let b = o.set_memslot_bound(
                id,
                gfn * PAGE,
                pages * PAGE,
                (true, false, false),
                None,
                None,
                file.map(|(f, p)| (f, p * PAGE)),
            );
            assert_eq!(a.map_err(|e| e.errno()), b, "{op:?}");
        }
        Op::Attr {
            file,
            page,
            pages,
            private,
        } => {
            let attrs = if private {
                KVM_MEMORY_ATTRIBUTE_PRIVATE
            } else {
                0
            };
            let a = t.set_gmem_attributes(
                GmemId(file),
                GmemOffset(page * PAGE),
                pages * PAGE,
                attrs,
                0,
            );
            let b = o.set_gmem_attributes(file, page * PAGE, pages * PAGE, attrs);
            let a = a.map_err(|e| {
                let offset = match e {
                    cvmem::Error::PageReferenced { offset } => Some(offset),
                    _ => None,
                };
                (e.errno(), offset)
            });
            assert_eq!(a, b, "{op:?}");
        }
        Op::Get(file, page) => {
            let a = t.gmem_get_page(GmemId(file), GmemOffset(page * PAGE));
            let b = match o.gmems.get_mut(file as usize) {
                Some(g) => g.get_page(page * PAGE),
                None => Err(cvmem::Errno::EBADF),
            };
            assert_eq!(a.map_err(|e| e.errno()), b, "{op:?}");
        }
        Op::Put(file, page) => {
            let a = t.gmem_put_page(GmemId(file), GmemOffset(page * PAGE));
            let b = match o.gmems.get_mut(file as usize) {
                Some(g) => g.put_page(page * PAGE),
                None => Err(cvmem::Errno::EBADF),
            };
            assert_eq!(a.map_err(|e| e.errno()), b, "{op:?}");
        }
        Op::VmAttr {
            gfn,
            pages,
            private,
        } => {
            let attrs = if private {
                KVM_MEMORY_ATTRIBUTE_PRIVATE
            } else {
                0
            };
            let a = t
                .set_memory_attributes(Gpa(gfn * PAGE), pages * PAGE, attrs)
                .map(|_| ());
            let b = o.set_memory_attributes(gfn * PAGE, pages * PAGE, attrs);
            assert_eq!(a.map_err(|e| e.errno()), b, "{op:?}");
        }
    }
}

/// Every answer the fault path and the reports give, at the gfns that matter.
fn check(t: &Tracker, o: &DenseModel, probes: &[u64]) {
    for ((id, g), d) in t.gmems().zip(&o.gmems) {
        let counts = g.folios().counts();
        assert_eq!(
            (counts.splits, counts.merges),
            (d.splits, d.merges),
            "file {id:?} splits, merges"
        );
        // A whole folio has one kind, so a private page's folio size says where it counts.
        let mut by_folio = [0u64; 3];
        for (p, &private) in d.private.iter().enumerate() {
            if private {
                by_folio[d.order[p].index()] += PAGE;
            }
        }
        assert_eq!(
            g.private_by_folio(),
            by_folio,
            "file {id:?} private bytes by folio"
        );
        let pages = d.order.len() as u64;
        let mut at: Vec<u64> = probes.iter().map(|p| p % pages).collect();
        at.extend([0, pages - 1, pages / 2]);
        for page in at {
            assert_eq!(
                g.folios().level_at(page),
                d.order[page as usize],
                "file {id:?} folio at page {page:#x}"
            );
        }
    }
    for slot in &o.slots {
        let end = slot.base + slot.npages;
        let mut gfns = vec![slot.base, end - 1, slot.base + slot.npages / 2];
        gfns.extend(probes.iter().map(|p| slot.base + p % slot.npages));
        for gfn in gfns {
            for access in [Access::Private, Access::Shared] {
                assert_eq!(
                    t.max_mapping_level(Gpa(gfn * PAGE), access),
                    o.max_mapping_level(gfn * PAGE, access),
                    "max level at gfn {gfn:#x} {access:?}, slot {slot:?}"
                );
            }
            assert_eq!(
                t.allowed_level(cvmem::Gfn(gfn)),
                o.allowed_level(gfn),
                "gfn {gfn:#x}"
            );
        }
        for level in [Level::M2, Level::G1] {
            assert_eq!(
                t.mixed_count(slot.id, level),
                o.mixed_count(slot.id, level),
                "slot {} {level:?}",
                slot.id
            );
        }
        let e = t.eligibility(slot.id).unwrap();
        assert_eq!(
            [e.bytes_1g, e.bytes_2m, e.bytes_4k],
            o.eligibility(slot.id).unwrap(),
            "slot {}",
            slot.id
        );
    }
}

fn run(ops: &[Op], probes: &[u64], policy: MergePolicy) {
    let mut t = Tracker::new()
        .with_attr_mode(AttrMode::PerGmem)
        .with_merge_policy(policy);
    let mut o = DenseModel::new(16).per_gmem();
    for op in ops {
        apply(&mut t, &mut o, op, policy);
        check(&t, &o, probes);
        round_trips(&t, &o, probes);
    }
}

/// Every reachable state survives save/restore: the snapshot again, and every fault-path
/// answer at the probes.
fn round_trips(t: &Tracker, o: &DenseModel, probes: &[u64]) {
    let snap = t.snapshot();
    let back = Tracker::restore(&snap).expect("a reachable state restores");
    assert_eq!(back.snapshot(), snap);
    for slot in &o.slots {
        for p in probes.iter().chain(&[0, slot.npages - 1]) {
            let gpa = Gpa((slot.base + p % slot.npages) * PAGE);
            for access in [Access::Private, Access::Shared] {
                assert_eq!(
                    back.max_mapping_level(gpa, access),
                    t.max_mapping_level(gpa, access),
                    "restored answer at {gpa:?} {access:?}"
                );
            }
        }
    }
}

fn policies() -> impl Strategy<Value = MergePolicy> {
    prop_oneof![
        Just(MergePolicy::Never),
        Just(MergePolicy::OnPunchHole),
        Just(MergePolicy::Eager)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn per_gmem_small_files_match_the_dense_oracle(
        ops in ops(false),
        probes in proptest::collection::vec(any::<u64>(), 6),
        policy in policies(),
    ) {
        run(&ops, &probes, policy);
    }
}

proptest! {
    // 1G pages: the oracle looks at every page of each, so few cases and few probes.
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn per_gmem_1g_files_match_the_dense_oracle(
        ops in ops(true),
        probes in proptest::collection::vec(any::<u64>(), 1),
        policy in policies(),
    ) {
        run(&ops, &probes, policy);
    }
}

#[test]
fn the_vm_keeps_private_or_the_files_do_never_both() {
    // Per VM: the files' attributes are refused, INIT_SHARED too (the VM has private memory).
    let mut vm = Tracker::new();
    let flags = GmemFlags {
        folio: cvmem::Level::K4,
        mmap: true,
        init_shared: false,
    };
    let f = vm.create_guest_memfd(4 << 20, flags).unwrap();
    let e = vm
        .set_gmem_attributes(f, GmemOffset(0), 4096, 0, 0)
        .unwrap_err();
    assert!(matches!(e, cvmem::Error::Unsupported { .. }), "{e}");
    let shared = GmemFlags {
        init_shared: true,
        ..flags
    };
    assert!(vm.create_guest_memfd(4 << 20, shared).is_err());
    // A VM without private memory may have INIT_SHARED files (gmem-only memslots).
    let mut plain = Tracker::with_supported_attributes(0);
    assert!(plain.create_guest_memfd(4 << 20, shared).is_ok());

    // Per guest_memfd: the VM refuses PRIVATE; a file's change shows through its memslot.
    // The file is backed by 2M HugeTLB folios (order-0 pages, the default, would cap every
    // private mapping at 4K, as in Linux 7.3).
    let mut vm = Tracker::new().with_attr_mode(AttrMode::PerGmem);
    let huge = GmemFlags {
        folio: Level::M2,
        ..shared
    };
    let f = vm.create_guest_memfd(8 << 20, huge).unwrap();
    let e = vm
        .set_memory_attributes(Gpa(0), 4096, KVM_MEMORY_ATTRIBUTE_PRIVATE)
        .unwrap_err();
    assert!(matches!(e, cvmem::Error::Unsupported { .. }), "{e}");
    let gmem = Some(GmemBinding {
        gmem: f,
        offset: GmemOffset(2 << 20),
    });
    let slot = MemoryRegion {
        slot: 1,
        gpa: Gpa(1 << 30),
        size: 4 << 20,
        flags: SlotFlags {
            guest_memfd: true,
            ..Default::default()
        },
        gmem,
        ..Default::default()
    };
    vm.set_user_memory_region(&slot).unwrap();
    // The same file range again: kvm_gmem_bind refuses the overlap.
    let again = MemoryRegion {
        slot: 2,
        gpa: Gpa(2 << 30),
        ..slot
    };
    assert!(matches!(
        vm.set_user_memory_region(&again),
        Err(cvmem::Error::GmemBindingOverlap { other: 1, .. })
    ));
    // File pages [2M, 4M) back gfns [1G, 1G + 2M): make them private.
    vm.set_gmem_attributes(
        f,
        GmemOffset(2 << 20),
        2 << 20,
        KVM_MEMORY_ATTRIBUTE_PRIVATE,
        0,
    )
    .unwrap();
    assert_eq!(
        vm.max_mapping_level(Gpa(1 << 30), Access::Private),
        cvmem::MaxLevel::Level(Level::M2)
    );
    assert!(matches!(
        vm.max_mapping_level(Gpa((1 << 30) + (2 << 20)), Access::Private),
        cvmem::MaxLevel::MemoryFault(_)
    ));
    assert_eq!(vm.mixed_count(1, Level::M2), 0);

    // The same with order-0 pages: attributes allow 2M, the folio only 4K.
    let mut vm = Tracker::new().with_attr_mode(AttrMode::PerGmem);
    let f = vm.create_guest_memfd(8 << 20, shared).unwrap();
    vm.set_user_memory_region(&MemoryRegion {
        gmem: Some(GmemBinding {
            gmem: f,
            offset: GmemOffset(0),
        }),
        ..slot
    })
    .unwrap();
    vm.set_gmem_attributes(f, GmemOffset(0), 2 << 20, KVM_MEMORY_ATTRIBUTE_PRIVATE, 0)
        .unwrap();
    assert_eq!(
        vm.max_mapping_level(Gpa(1 << 30), Access::Private),
        cvmem::MaxLevel::Level(Level::K4)
    );
    assert_eq!(vm.mixed_count(1, Level::M2), 0);
}

/// A slot all private in one file: mappable at its folio's size wherever the binding is
/// congruent — whole 1G pages at 1G only with 1G folios, nothing above 4K with order-0 pages.
#[test]
fn a_private_slot_is_mappable_no_larger_than_its_folios() {
    let g = 1u64 << 30;
    for (folio, offset, want) in [
        (Level::K4, 0, [0, 0, 2 * g]),
        (Level::M2, 0, [0, 2 * g, 0]),
        (Level::G1, 0, [2 * g, 0, 0]),
        // Congruent modulo 2M only: the 1G folios map at 2M.
        (Level::G1, 2 << 20, [0, 2 * g, 0]),
    ] {
        let mut t = Tracker::new().with_attr_mode(AttrMode::PerGmem);
        let flags = GmemFlags {
            mmap: true,
            init_shared: false,
            folio,
        };
        let file = t.create_guest_memfd(4 * g, flags).unwrap();
        t.set_user_memory_region(&MemoryRegion {
            slot: 0,
            gpa: Gpa(0),
            size: 2 * g,
            flags: SlotFlags {
                guest_memfd: true,
                ..Default::default()
            },
            gmem: Some(GmemBinding {
                gmem: file,
                offset: GmemOffset(offset),
            }),
            ..Default::default()
        })
        .unwrap();
        let e = t.eligibility(0).unwrap();
        assert_eq!(
            [e.bytes_1g, e.bytes_2m, e.bytes_4k],
            want,
            "{folio:?} at {offset:#x}"
        );
    }
}

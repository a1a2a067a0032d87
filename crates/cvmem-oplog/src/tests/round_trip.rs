//! Canonical Display text parses back to the same operation.

use super::*;

#[test]
fn display_is_canonical() {
    let cases: &[(Op, &str)] = &[
        (memslot(0, 0, 2 * G), "memslot 0 0x0 0x80000000"),
        (
            Op::Memslot { gmem: None,
                slot: 32763,
                gpa: Gpa(1 << 32),
                size: 4 * K,
                flags: SlotFlags { guest_memfd: true, dirty_log: true, readonly: true },
                uaddr: Some(0x7f00_0000_0000),
                backing: Some(Level::M2),
            },
            "memslot 32763 0x100000000 0x1000 guest-memfd dirty-log readonly uaddr=0x7f0000000000 backing=2M",
        ),
        (Op::Attrs { gpa: Gpa(0), size: G, attributes: 8 }, "attrs 0x0 0x40000000 private"),
        (Op::Attrs { gpa: Gpa(0x1000), size: 0x1000, attributes: 0 }, "attrs 0x1000 0x1000 shared"),
        (Op::Attrs { gpa: Gpa(0), size: 0x1000, attributes: 9 }, "attrs 0x0 0x1000 0x9"),
        (Op::MapGpa { gpa: 0x1000_0000, npages: 16384, flags: 0x11 }, "map-gpa 0x10000000 0x4000 0x11"),
        (Op::Query { gpa: Gpa(0x7d9d_7000), access: Access::Shared }, "query 0x7d9d7000 shared"),
        (Op::Fault { gpa: Gpa(0x1000), access: Access::Private }, "fault 0x1000 private"),
        (Op::FaultRange { gpa: Gpa(0), size: 4 * M, access: Access::Private }, "fault-range 0x0 0x400000 private"),
        (Op::Mmu { layout: Layout::Unified, recovery: None }, "mmu unified"),
        (Op::Mmu { layout: Layout::Split, recovery: Some(Recovery::OnFault) }, "mmu split recovery=on-fault"),
        (Op::Accept { gpa: Gpa(0x40_0000), level: Level::G1 }, "accept 0x400000 1G"),
        (Op::AttrMode { mode: cvmem::AttrMode::PerGmem }, "attr-mode per-gmem"),
        (Op::AttrMode { mode: cvmem::AttrMode::PerVm }, "attr-mode per-vm"),
        (Op::Gmem { size: 4 * G, flags: cvmem::GmemFlags { folio: Level::G1, mmap: true, init_shared: true }, merge: Some(cvmem::MergePolicy::Eager) }, "gmem 0x100000000 mmap init-shared folio=1G merge=eager"),
        (Op::PunchHole { file: 1, offset: GmemOffset(2 * M), size: 2 * M }, "punch-hole 1 0x200000 0x200000"),
        (Op::Gmem { size: 4 * K, flags: cvmem::GmemFlags::default(), merge: None }, "gmem 0x1000"),
        (Op::GmemAttrs { file: 2, offset: GmemOffset(2 * M), size: 4 * K, attributes: 8 }, "gmem-attrs 2 0x200000 0x1000 private"),
        (Op::GmemPin { file: 0, offset: GmemOffset(0x1000) }, "gmem-pin 0 0x1000"),
        (Op::GmemUnpin { file: 1, offset: GmemOffset(0) }, "gmem-unpin 1 0x0"),
        (
            Op::Memslot { gmem: Some((1, GmemOffset(2 * M))), slot: 3, gpa: Gpa(0), size: 2 * M, flags: SlotFlags { guest_memfd: true, ..SlotFlags::default() }, uaddr: None, backing: None },
            "memslot 3 0x0 0x200000 guest-memfd gmem=1:0x200000",
        ),
    ];
    for (op, text) in cases {
        assert_eq!(op.to_string(), *text);
        assert_eq!(parse_line(text), Ok(Some(*op)), "{text}");
    }
}

fn any_access() -> impl Strategy<Value = Access> {
    prop_oneof![Just(Access::Shared), Just(Access::Private)]
}

fn any_level() -> impl Strategy<Value = Level> {
    prop_oneof![Just(Level::K4), Just(Level::M2), Just(Level::G1)]
}

fn any_op() -> impl Strategy<Value = Op> {
    let flags = (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(guest_memfd, dirty_log, readonly)| SlotFlags {
            guest_memfd,
            dirty_log,
            readonly,
        },
    );
    let recovery = prop_oneof![
        Just(Recovery::Off),
        Just(Recovery::OnFault),
        Just(Recovery::Eager)
    ];
    prop_oneof![
        (
            any_number(),
            any_number(),
            any_number(),
            flags,
            proptest::option::of(any_number()),
            proptest::option::of(any_level()),
            proptest::option::of((any_number(), any_number()))
        )
            .prop_map(
                |(slot, gpa, size, flags, uaddr, backing, gmem)| Op::Memslot {
                    gmem: gmem.map(|(f, o)| (f, GmemOffset(o))),
                    slot,
                    gpa: Gpa(gpa),
                    size,
                    flags,
                    uaddr,
                    backing
                }
            ),
        (
            any_number(),
            any_number(),
            prop_oneof![Just(0u64), Just(8), any_number()]
        )
            .prop_map(|(gpa, size, attributes)| Op::Attrs {
                gpa: cvmem::Gpa(gpa),
                size,
                attributes
            }),
        (any_number(), any_number(), any_number()).prop_map(|(gpa, npages, flags)| Op::MapGpa {
            gpa,
            npages,
            flags
        }),
        (any_number(), any_access()).prop_map(|(gpa, access)| Op::Query {
            gpa: cvmem::Gpa(gpa),
            access
        }),
        (any_number(), any_access()).prop_map(|(gpa, access)| Op::Fault {
            gpa: cvmem::Gpa(gpa),
            access
        }),
        (any_number(), any_number(), any_access()).prop_map(|(gpa, size, access)| Op::FaultRange {
            gpa: cvmem::Gpa(gpa),
            size,
            access
        }),
        (
            prop_oneof![Just(Layout::Split), Just(Layout::Unified)],
            proptest::option::of(recovery)
        )
            .prop_map(|(layout, recovery)| Op::Mmu { layout, recovery }),
        (any_number(), any_level()).prop_map(|(gpa, level)| Op::Accept {
            gpa: cvmem::Gpa(gpa),
            level
        }),
        prop_oneof![Just(cvmem::AttrMode::PerVm), Just(cvmem::AttrMode::PerGmem)]
            .prop_map(|mode| Op::AttrMode { mode }),
        (
            any_number(),
            any::<bool>(),
            any::<bool>(),
            any_level(),
            proptest::option::of(prop_oneof![
                Just(cvmem::MergePolicy::Never),
                Just(cvmem::MergePolicy::OnPunchHole),
                Just(cvmem::MergePolicy::Eager)
            ])
        )
            .prop_map(|(size, mmap, init_shared, folio, merge)| Op::Gmem {
                size,
                flags: cvmem::GmemFlags {
                    folio,
                    mmap,
                    init_shared,
                },
                merge,
            }),
        (any_number(), any_number(), any_number()).prop_map(|(file, offset, size)| Op::PunchHole {
            file,
            offset: cvmem::GmemOffset(offset),
            size
        }),
        (
            any_number(),
            any_number(),
            any_number(),
            prop_oneof![Just(0u64), Just(8), any_number()]
        )
            .prop_map(|(file, offset, size, attributes)| Op::GmemAttrs {
                file,
                offset: cvmem::GmemOffset(offset),
                size,
                attributes
            }),
        (any_number(), any_number()).prop_map(|(file, offset)| Op::GmemPin {
            file,
            offset: cvmem::GmemOffset(offset)
        }),
        (any_number(), any_number()).prop_map(|(file, offset)| Op::GmemUnpin {
            file,
            offset: cvmem::GmemOffset(offset)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn display_then_parse_is_identity(op in any_op(), comment in proptest::option::of("[ -~]{0,20}")) {
        let mut text = op.to_string();
        if let Some(comment) = comment {
            text.push_str(" #");
            text.push_str(&comment);
        }
        prop_assert_eq!(parse_line(&text), Ok(Some(op)));
    }

    #[test]
    fn arbitrary_text_never_panics(line in "[a-z0-9xKMGT=#\\- \t]{0,60}|\\PC{0,60}") {
        // Whatever the line, the parser answers; an accepted line prints back to itself.
        if let Ok(Some(op)) = parse_line(&line) {
            prop_assert_eq!(parse_line(&op.to_string()), Ok(Some(op)));
        }
    }
}

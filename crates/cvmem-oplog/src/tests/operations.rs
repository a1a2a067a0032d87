//! Every operation and flag, and comment and blank-line handling.

use super::*;

#[test]
fn memslot_plain_and_every_flag() {
    assert_eq!(op("memslot 0 0 2G"), memslot(0, 0, 2 * G));
    assert_eq!(
        op("memslot 32763 0x100000000 0"),
        memslot(32763, 1 << 32, 0)
    );
    assert_eq!(
        op("memslot 1 0x1000 4K guest-memfd"),
        Op::Memslot {
            gmem: None,
            slot: 1,
            gpa: Gpa(0x1000),
            size: 4 * K,
            flags: SlotFlags {
                guest_memfd: true,
                dirty_log: false,
                readonly: false
            },
            uaddr: None,
            backing: None,
        }
    );
    let all = Op::Memslot {
        gmem: None,
        slot: 7,
        gpa: Gpa(2 * M),
        size: G,
        flags: SlotFlags {
            guest_memfd: true,
            dirty_log: true,
            readonly: true,
        },
        uaddr: Some(0x7f00_0020_0000),
        backing: Some(Level::M2),
    };
    assert_eq!(
        op("memslot 7 2M 1G guest-memfd dirty-log readonly uaddr=0x7f0000200000 backing=2M"),
        all
    );
    // Flags in any order, separated by any white space.
    assert_eq!(
        op("memslot\t7 0x200000 0x40000000   backing=2M readonly\tuaddr=0x7f0000200000 dirty-log guest-memfd"),
        all
    );
    for (name, flags) in [
        (
            "dirty-log",
            SlotFlags {
                dirty_log: true,
                ..SlotFlags::default()
            },
        ),
        (
            "readonly",
            SlotFlags {
                readonly: true,
                ..SlotFlags::default()
            },
        ),
    ] {
        let Op::Memslot { flags: parsed, .. } = op(&format!("memslot 0 0 4K {name}")) else {
            panic!("not a memslot");
        };
        assert_eq!(parsed, flags, "{name}");
    }
    assert_eq!(
        op("memslot 0 0 4K uaddr=4G"),
        slot_with(memslot(0, 0, 4 * K), NO_FLAGS, Some(4 * G), None)
    );
    for level in Level::ALL {
        assert_eq!(
            op(&format!("memslot 0 0 4K backing={}", level.name())),
            slot_with(memslot(0, 0, 4 * K), NO_FLAGS, None, Some(level))
        );
    }
}

#[test]
fn memslot_keeps_values_that_are_operation_errors() {
    // Out-of-range slot ids, unaligned addresses and forbidden flag pairs are EINVAL for the
    // replay engine, not parse errors.
    assert_eq!(op("memslot 32764 0 4K"), memslot(32764, 0, 4 * K));
    assert_eq!(
        op("memslot 18446744073709551615 0 4K"),
        memslot(u64::MAX, 0, 4 * K)
    );
    assert_eq!(op("memslot 0 0x1001 0x1001"), memslot(0, 0x1001, 0x1001));
    assert_eq!(
        op("memslot 0 0 4K uaddr=0x123"),
        slot_with(memslot(0, 0, 4 * K), NO_FLAGS, Some(0x123), None)
    );
    let Op::Memslot { flags, .. } = op("memslot 0 0 4K guest-memfd dirty-log") else {
        panic!("not a memslot");
    };
    assert!(flags.guest_memfd && flags.dirty_log);
}

#[test]
fn attrs_numbers_and_words() {
    assert_eq!(
        op("attrs 0 2G private"),
        Op::Attrs {
            gpa: Gpa(0),
            size: 2 * G,
            attributes: 8
        }
    );
    assert_eq!(
        op("attrs 0x1000 4K shared"),
        Op::Attrs {
            gpa: Gpa(0x1000),
            size: 4 * K,
            attributes: 0
        }
    );
    assert_eq!(
        op("attrs 0 4K 0x8"),
        Op::Attrs {
            gpa: Gpa(0),
            size: 4 * K,
            attributes: 8
        }
    );
    assert_eq!(
        op("attrs 0 4K 7"),
        Op::Attrs {
            gpa: Gpa(0),
            size: 4 * K,
            attributes: 7
        }
    );
    // Unaligned sizes and unsupported bits are operation errors.
    assert_eq!(
        op("attrs 0x1000 0x1001 0xffffffffffffffff"),
        Op::Attrs {
            gpa: Gpa(0x1000),
            size: 0x1001,
            attributes: u64::MAX
        }
    );
}

#[test]
fn map_gpa_query_fault_fault_range_accept() {
    assert_eq!(
        op("map-gpa 0x10000000 16384 0"),
        Op::MapGpa {
            gpa: 0x1000_0000,
            npages: 16384,
            flags: 0
        }
    );
    assert_eq!(
        op("map-gpa 0x2000 1 0x20"),
        Op::MapGpa {
            gpa: 0x2000,
            npages: 1,
            flags: 0x20
        }
    );
    assert_eq!(
        op("query 0x0 private"),
        Op::Query {
            gpa: Gpa(0),
            access: Access::Private
        }
    );
    assert_eq!(
        op("query 0x80000000 shared"),
        Op::Query {
            gpa: Gpa(0x8000_0000),
            access: Access::Shared
        }
    );
    assert_eq!(
        op("fault 0x1000 private"),
        Op::Fault {
            gpa: Gpa(0x1000),
            access: Access::Private
        }
    );
    assert_eq!(
        op("fault 0x200000 shared"),
        Op::Fault {
            gpa: Gpa(0x20_0000),
            access: Access::Shared
        }
    );
    assert_eq!(
        op("fault-range 0 4M private"),
        Op::FaultRange {
            gpa: Gpa(0),
            size: 4 * M,
            access: Access::Private
        }
    );
    assert_eq!(
        op("fault-range 0x1000 4K shared"),
        Op::FaultRange {
            gpa: Gpa(0x1000),
            size: 4 * K,
            access: Access::Shared
        }
    );
    for level in Level::ALL {
        assert_eq!(
            op(&format!("accept 0x400000 {level}")),
            Op::Accept {
                gpa: Gpa(0x40_0000),
                level
            }
        );
    }
}

#[test]
fn attribute_changes_of_attrs_and_map_gpa() {
    let change = |line: &str| op(line).attribute_change();
    assert_eq!(
        change("attrs 0x1000 0x3000 private"),
        Some(Ok((cvmem::Gpa(0x1000), 0x3000, 8)))
    );
    // map-gpa: npages in 4K pages, the ENCRYPTED flag becomes PRIVATE, the size hint goes.
    assert_eq!(
        change("map-gpa 0x200000 512 0x11"),
        Some(Ok((cvmem::Gpa(0x20_0000), 2 * M, 8)))
    );
    assert_eq!(
        change("map-gpa 0x2000 1 0"),
        Some(Ok((cvmem::Gpa(0x2000), 4 * K, 0)))
    );
    // Reserved flag bits: KVM's error, as the driver gives it.
    assert!(matches!(change("map-gpa 0x2000 1 0x100"), Some(Err(_))));
    assert_eq!(change("query 0x0 private"), None);
    assert_eq!(change("memslot 0 0x0 0x1000"), None);
}

#[test]
fn mmu_layouts_and_policies() {
    assert_eq!(
        op("mmu split"),
        Op::Mmu {
            layout: Layout::Split,
            recovery: None
        }
    );
    assert_eq!(
        op("mmu unified"),
        Op::Mmu {
            layout: Layout::Unified,
            recovery: None
        }
    );
    for (name, policy) in [
        ("off", Recovery::Off),
        ("on-fault", Recovery::OnFault),
        ("eager", Recovery::Eager),
    ] {
        assert_eq!(
            op(&format!("mmu split recovery={name}")),
            Op::Mmu {
                layout: Layout::Split,
                recovery: Some(policy)
            }
        );
        assert_eq!(
            op(&format!("mmu unified recovery={name}")),
            Op::Mmu {
                layout: Layout::Unified,
                recovery: Some(policy)
            }
        );
    }
}

#[test]
fn op_names() {
    let names: Vec<&str> = [
        "memslot 0 0 0",
        "attrs 0 0 0",
        "map-gpa 0 0 0",
        "query 0 shared",
        "fault 0 shared",
        "fault-range 0 0 shared",
        "mmu split",
        "accept 0 4K",
    ]
    .iter()
    .map(|line| op(line).name())
    .collect();
    assert_eq!(
        names,
        [
            "memslot",
            "attrs",
            "map-gpa",
            "query",
            "fault",
            "fault-range",
            "mmu",
            "accept"
        ]
    );
}

#[test]
fn blank_and_comment_lines() {
    for line in [
        "",
        " ",
        "\t \t",
        "#",
        "# memslot 0 0 4K",
        "   # indented comment",
        "#query 0 private",
        "\r",
    ] {
        assert_eq!(parse_line(line), Ok(None), "{line:?}");
    }
    assert_eq!(
        op("query 0 private# glued comment"),
        Op::Query {
            gpa: Gpa(0),
            access: Access::Private
        }
    );
    assert_eq!(
        op("query 0 private #x # y"),
        Op::Query {
            gpa: Gpa(0),
            access: Access::Private
        }
    );
    assert_eq!(
        op("query 0 private\r"),
        Op::Query {
            gpa: Gpa(0),
            access: Access::Private
        }
    );
    // A comment cuts the line: what follows `#` is not an argument.
    assert_eq!(
        err("query 0 #private"),
        ParseErrorKind::MissingArgument {
            op: "query",
            argument: "ACCESS"
        }
    );
    assert_eq!(
        err("attrs 0x1000#0 4K private"),
        ParseErrorKind::MissingArgument {
            op: "attrs",
            argument: "SIZE"
        }
    );
}

//! KVM's rules as the op-log spec states them: every error case leaves the state unchanged, and the
//! layouts of KVM's private_mem_conversions_test give the levels KVM would give.

use cvmem::{
    Access, Errno, Gfn, Gpa, Level, MapGpaRange, MaxLevel, MemoryRegion, SlotFlags, Tracker,
    KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE, PAGE_SIZE,
};
use cvmem_testkit::DenseModel;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;

fn gmem() -> SlotFlags {
    SlotFlags {
        guest_memfd: true,
        ..Default::default()
    }
}

fn region(slot: u32, gpa: u64, size: u64, flags: SlotFlags) -> MemoryRegion {
    MemoryRegion {
        gmem: None,
        slot,
        gpa: Gpa(gpa),
        size,
        flags,
        uaddr: None,
        backing: None,
    }
}

/// A VM with a guest-memfd slot, a plain slot with a host address, some private memory.
fn populated() -> Tracker {
    let mut t = Tracker::new();
    t.set_user_memory_region(&region(0, 0, 2 * G1, gmem()))
        .unwrap();
    let plain = MemoryRegion {
        uaddr: Some(0x7f00_0000_0000),
        backing: Some(Level::M2),
        ..region(1, 4 * G1, G1, SlotFlags::default())
    };
    t.set_user_memory_region(&plain).unwrap();
    t.set_memory_attributes(Gpa(0), G1 + 3 * K4, PRIVATE)
        .unwrap();
    t
}

/// The request must fail with `errno` and leave every bit of state as it was.
fn rejects(t: &mut Tracker, errno: Errno, f: impl FnOnce(&mut Tracker) -> cvmem::Result<()>) {
    let before = format!("{t:?}");
    let err = f(t).expect_err("the request must be rejected");
    assert_eq!(err.errno(), errno, "{err}");
    assert!(!err.to_string().is_empty());
    assert_eq!(
        before,
        format!("{t:?}"),
        "a rejected request changed the state: {err}"
    );
}

#[test]
fn memslot_errors_leave_state_unchanged() {
    let mut t = populated();
    let set = |r: MemoryRegion| move |t: &mut Tracker| t.set_user_memory_region(&r).map(drop);
    use Errno::*;
    rejects(&mut t, EINVAL, set(region(32764, 8 * G1, M2, gmem())));
    rejects(&mut t, EINVAL, set(region(5, 8 * G1 + 1, M2, gmem())));
    rejects(&mut t, EINVAL, set(region(5, 8 * G1, M2 + 1, gmem())));
    rejects(
        &mut t,
        EINVAL,
        set(region(5, u64::MAX - 0xfff, 2 * K4, gmem())),
    );
    rejects(
        &mut t,
        EINVAL,
        set(region(5, 8 * G1, (1 << 31) * K4, SlotFlags::default())),
    );
    rejects(
        &mut t,
        EINVAL,
        set(region(
            5,
            8 * G1,
            M2,
            SlotFlags {
                guest_memfd: true,
                dirty_log: true,
                readonly: false,
            },
        )),
    );
    rejects(
        &mut t,
        EINVAL,
        set(MemoryRegion {
            uaddr: Some(0x1234),
            ..region(5, 8 * G1, M2, gmem())
        }),
    );
    rejects(&mut t, EEXIST, set(region(5, G1, M2, gmem())));
    rejects(&mut t, EEXIST, set(region(5, 2 * G1 - K4, 2 * K4, gmem())));
    rejects(&mut t, EINVAL, set(region(7, 0, 0, gmem())));
    // A guest-memfd slot is immutable: moving it, toggling dirty logging, anything.
    rejects(&mut t, EINVAL, set(region(0, 8 * G1, 2 * G1, gmem())));
    rejects(
        &mut t,
        EINVAL,
        set(region(0, 0, 2 * G1, SlotFlags::default())),
    );
    // Other slots: no resizing, no readonly / guest-memfd / uaddr / backing changes.
    let plain = |f: fn(&mut MemoryRegion)| {
        let mut r = MemoryRegion {
            uaddr: None,
            backing: None,
            ..region(1, 4 * G1, G1, SlotFlags::default())
        };
        f(&mut r);
        set(r)
    };
    rejects(&mut t, EINVAL, plain(|r| r.size = 2 * G1));
    rejects(&mut t, EINVAL, plain(|r| r.flags.readonly = true));
    rejects(&mut t, EINVAL, plain(|r| r.flags.guest_memfd = true));
    rejects(&mut t, EINVAL, plain(|r| r.uaddr = Some(0x7f00_4000_0000)));
    rejects(&mut t, EINVAL, plain(|r| r.backing = Some(Level::G1)));
    rejects(&mut t, EEXIST, plain(|r| r.gpa = Gpa(G1)));
    // And what is allowed: an identical line, a dirty-log toggle, a move.
    assert_eq!(
        t.set_user_memory_region(&region(1, 4 * G1, G1, SlotFlags::default()))
            .unwrap(),
        cvmem::SlotChange::Unchanged
    );
    let dirty = SlotFlags {
        dirty_log: true,
        ..Default::default()
    };
    assert_eq!(
        t.set_user_memory_region(&region(1, 4 * G1, G1, dirty))
            .unwrap(),
        cvmem::SlotChange::DirtyLog { enabled: true }
    );
    assert!(matches!(
        t.set_user_memory_region(&region(1, 6 * G1, G1, dirty))
            .unwrap(),
        cvmem::SlotChange::Moved { .. }
    ));
    assert_eq!(
        t.memslot(1).unwrap().uaddr(),
        0x7f00_0000_0000,
        "uaddr kept across the move"
    );
    assert_eq!(
        t.memslot(1).unwrap().backing(),
        Level::M2,
        "backing kept across the move"
    );
}

#[test]
fn attribute_and_map_gpa_errors_leave_state_unchanged() {
    let mut t = populated();
    use Errno::*;
    let attrs = |gpa: u64, size: u64, a: u64| {
        move |t: &mut Tracker| t.set_memory_attributes(Gpa(gpa), size, a).map(drop)
    };
    rejects(&mut t, EINVAL, attrs(0, 0, PRIVATE));
    rejects(&mut t, EINVAL, attrs(0x800, K4, PRIVATE));
    rejects(&mut t, EINVAL, attrs(0, 0x1001, PRIVATE));
    rejects(&mut t, EINVAL, attrs(u64::MAX - 0xfff, 2 * K4, PRIVATE));
    rejects(&mut t, EINVAL, attrs(0, K4, 0x1));
    rejects(&mut t, EINVAL, attrs(0, K4, PRIVATE | 0x10));
    let map = |gpa: u64, npages: u64, flags: u64| {
        move |t: &mut Tracker| {
            let m = MapGpaRange::decode(gpa, npages, flags)?;
            t.set_memory_attributes(m.gpa, m.size(), m.attributes())
                .map(drop)
        }
    };
    rejects(&mut t, EINVAL, map(0x10, 1, 0x10));
    rejects(&mut t, EINVAL, map(0, 0, 0x10));
    rejects(&mut t, EINVAL, map(u64::MAX - 0xfff, 2, 0x10));
    rejects(&mut t, EINVAL, map(0, u64::MAX, 0x10));
    rejects(&mut t, EINVAL, map(0, 1, 0x20));
    rejects(&mut t, EINVAL, map(0, 1, 1 << 63));
    rejects(&mut t, EINVAL, map(0, 1, 0x13));
    // The hint is only a hint: a 2M hint on a 4K range converts exactly that 4K page.
    map(0x20_0000, 1, 0x01)(&mut t).unwrap();
    assert!(!t.is_private(Gfn(0x200)));
    assert!(t.is_private(Gfn(0x201)));
    // Setting what is already there changes nothing and says so.
    assert!(!t
        .set_memory_attributes(Gpa(0x40_0000), M2, PRIVATE)
        .unwrap());
    // Attributes apply outside memslots too, up to the end of the address space (the last page
    // cannot be named: its end would wrap, which KVM rejects).
    rejects(&mut t, EINVAL, attrs(u64::MAX - 0xfff, K4, PRIVATE));
    t.set_memory_attributes(Gpa(u64::MAX - 0x1fff), K4, PRIVATE)
        .unwrap();
    assert!(t.is_private(Gfn((u64::MAX >> 12) - 1)));
    assert!(!t.is_private(Gfn(u64::MAX >> 12)));
}

/// KVM's private_mem_conversions_test: per-vCPU regions of 2M + 4K at 4 GiB, one or several
/// memslots. The ranges (0,4K) (0,2M) (4K,4K) (4K,2M) (2M,4K) are made private, odd pages back to
/// shared, then everything shared, and the levels are those KVM computes.
fn conversions_layout(nr_memslots: u64) {
    const BASE: u64 = 4 * G1;
    const PER_CPU: u64 = M2 + K4;
    const NR_VCPUS: u64 = 4;
    let total = (PER_CPU * NR_VCPUS).div_ceil(M2 * nr_memslots) * M2 * nr_memslots;
    let slot_size = total / nr_memslots;
    let mut t = Tracker::new();
    let mut o = DenseModel::new((BASE + total) / K4 + 1024);
    for i in 0..nr_memslots {
        t.set_user_memory_region(&region(i as u32, BASE + i * slot_size, slot_size, gmem()))
            .unwrap();
        o.set_memslot(
            i as u32,
            BASE + i * slot_size,
            slot_size,
            true,
            false,
            false,
            None,
            None,
        )
        .unwrap();
    }
    let level = |t: &Tracker, gpa: u64, a: Access| t.max_mapping_level(Gpa(gpa), a);
    let lvl = MaxLevel::Level;
    for (offset, size) in [(0, K4), (0, M2), (K4, K4), (K4, M2), (M2, K4)] {
        for cpu in 0..NR_VCPUS {
            let gpa = BASE + cpu * PER_CPU + offset;
            t.set_memory_attributes(Gpa(gpa), size, PRIVATE).unwrap();
            o.set_memory_attributes(gpa, size, PRIVATE).unwrap();
            let probes = [
                gpa,
                gpa + size - K4,
                gpa.saturating_sub(K4),
                gpa + size,
                BASE,
                BASE + M2,
                BASE + 2 * M2,
            ];
            let check = |t: &Tracker, o: &DenseModel| {
                for p in probes {
                    for a in [Access::Private, Access::Shared] {
                        assert_eq!(
                            level(t, p, a),
                            o.max_mapping_level(p, a),
                            "gpa {p:#x} {a:?}"
                        );
                    }
                }
            };
            check(&t, &o);
            for odd in (gpa + K4..gpa + size).step_by(2 * K4 as usize) {
                t.set_memory_attributes(Gpa(odd), K4, 0).unwrap();
                o.set_memory_attributes(odd, K4, 0).unwrap();
            }
            check(&t, &o);
            t.set_memory_attributes(Gpa(gpa), size, 0).unwrap();
            o.set_memory_attributes(gpa, size, 0).unwrap();
            check(&t, &o);
        }
    }
    // The levels KVM gives, stated outright for vCPU 0 (base 4 GiB, 2M aligned) and range (0, 2M).
    t.set_memory_attributes(Gpa(BASE), M2, PRIVATE).unwrap();
    assert_eq!(
        level(&t, BASE, Access::Private),
        lvl(Level::M2),
        "a whole private 2M page"
    );
    assert_eq!(
        level(&t, BASE, Access::Shared),
        MaxLevel::MemoryFault(cvmem::MemoryFault {
            gpa: Gpa(BASE),
            size: K4,
            private: false
        })
    );
    let second = if slot_size >= 2 * M2 {
        Level::M2
    } else {
        Level::K4
    };
    assert_eq!(
        level(&t, BASE + M2, Access::Shared),
        lvl(second),
        "the next 2M page is shared"
    );
    t.set_memory_attributes(Gpa(BASE + K4), K4, 0).unwrap();
    assert_eq!(
        level(&t, BASE, Access::Private),
        lvl(Level::K4),
        "a hole makes the 2M page mixed"
    );
    assert_eq!(level(&t, BASE + K4, Access::Shared), lvl(Level::K4));
    assert_eq!(t.mixed_count(0, Level::M2), 1);
    t.set_memory_attributes(Gpa(BASE), M2, 0).unwrap();
    assert_eq!(
        level(&t, BASE + K4, Access::Shared),
        lvl(Level::M2),
        "uniform again"
    );
    assert_eq!(t.mixed_count(0, Level::M2), 0);
    // The slots never cover a whole 1G page here, so 1G is never allowed.
    assert!((0..total / K4).all(|p| level(&t, BASE + p * K4, Access::Shared) != lvl(Level::G1)));
}

#[test]
fn private_mem_conversions_one_memslot() {
    conversions_layout(1);
}

#[test]
fn private_mem_conversions_several_memslots() {
    conversions_layout(2);
    conversions_layout(4);
}

#[test]
fn small_slot_whose_head_is_its_tail() {
    // The 2024 fix: a slot smaller than a large page, where head == tail.
    let mut t = Tracker::new();
    t.set_user_memory_region(&region(0, M2 + 8 * K4, 16 * K4, gmem()))
        .unwrap();
    t.set_memory_attributes(Gpa(M2), M2, PRIVATE).unwrap();
    t.set_memory_attributes(Gpa(M2 + 9 * K4), K4, 0).unwrap();
    assert_eq!(
        t.mixed_count(0, Level::M2),
        0,
        "a large page not wholly inside is never MIXED"
    );
    assert_eq!(
        t.max_mapping_level(Gpa(M2 + 8 * K4), Access::Private),
        MaxLevel::Level(Level::K4)
    );
}

#[test]
fn misaligned_host_address_disallows_the_level() {
    let mut t = Tracker::new();
    let r = MemoryRegion {
        uaddr: Some(0x7f00_0020_0000),
        ..region(0, 0, 2 * G1, SlotFlags::default())
    };
    t.set_user_memory_region(&r).unwrap();
    // uaddr is 2M aligned but not 1G aligned relative to the GPA: 2M allowed, 1G never.
    assert_eq!(
        t.max_mapping_level(Gpa(0), Access::Shared),
        MaxLevel::Level(Level::M2)
    );
    let r = MemoryRegion {
        uaddr: Some(0x7f00_0000_1000),
        ..region(1, 4 * G1, 2 * G1, SlotFlags::default())
    };
    t.set_user_memory_region(&r).unwrap();
    assert_eq!(
        t.max_mapping_level(Gpa(4 * G1), Access::Shared),
        MaxLevel::Level(Level::K4)
    );
}

#[test]
fn backing_and_dirty_log_cap_the_level() {
    let mut t = Tracker::new();
    let r = MemoryRegion {
        backing: Some(Level::M2),
        ..region(0, 0, 2 * G1, SlotFlags::default())
    };
    t.set_user_memory_region(&r).unwrap();
    assert_eq!(
        t.max_mapping_level(Gpa(0), Access::Shared),
        MaxLevel::Level(Level::M2)
    );
    let dirty = SlotFlags {
        dirty_log: true,
        ..Default::default()
    };
    t.set_user_memory_region(&MemoryRegion { flags: dirty, ..r })
        .unwrap();
    assert_eq!(
        t.max_mapping_level(Gpa(0), Access::Shared),
        MaxLevel::Level(Level::K4)
    );
    assert_eq!(t.eligibility(0).unwrap().bytes_4k, 2 * G1);
}

#[test]
fn guest_inhibit_is_one_way_and_dropped_by_a_move() {
    let mut t = Tracker::new();
    t.set_user_memory_region(&region(0, 0, 2 * G1, SlotFlags::default()))
        .unwrap();
    assert!(t.set_guest_inhibit(Gfn(0x400), Level::K4).unwrap());
    assert!(
        !t.set_guest_inhibit(Gfn(0x401), Level::K4).unwrap(),
        "already inhibited"
    );
    assert_eq!(
        t.max_mapping_level(Gpa(0x40_0000), Access::Shared),
        MaxLevel::Level(Level::K4)
    );
    assert_eq!(
        t.max_mapping_level(Gpa(0x60_0000), Access::Shared),
        MaxLevel::Level(Level::M2),
        "1G inhibited too"
    );
    t.set_memory_attributes(Gpa(0), G1, 0).unwrap();
    assert_eq!(
        t.max_mapping_level(Gpa(0x40_0000), Access::Shared),
        MaxLevel::Level(Level::K4),
        "conversions keep it"
    );
    t.set_user_memory_region(&region(0, 4 * G1, 2 * G1, SlotFlags::default()))
        .unwrap();
    assert_eq!(
        t.max_mapping_level(Gpa(4 * G1 + 0x40_0000), Access::Shared),
        MaxLevel::Level(Level::G1)
    );
    assert_eq!(t.eligibility(0).unwrap().bytes_1g, 2 * G1);
    let _ = PAGE_SIZE;
}

#[test]
fn memslots_cost_no_memory_per_page_so_no_limit_is_needed() {
    // What a hostile scenario file could once ask for: thousands of 8 TiB slots. Large-page
    // info is now geometry plus the attribute store, so each slot costs a fixed few bytes.
    let mut t = Tracker::new();
    let huge = |slot: u32| region(slot, u64::from(slot) << 43, ((1 << 31) - 1) * K4, gmem());
    for slot in 0..2000 {
        t.set_user_memory_region(&huge(slot)).unwrap();
    }
    assert!(t.heap_bytes() < 2000 * 256, "{} bytes", t.heap_bytes());
    // Making all of it private costs one run of 512G units plus the two partial edges.
    t.set_memory_attributes(Gpa(0), 2000 << 43, PRIVATE)
        .unwrap();
    let e = t.eligibility(7).unwrap();
    assert_eq!(e.bytes_1g, 8191 * G1);
    assert!(
        t.heap_bytes() < 2000 * 256 + 4096,
        "{} bytes",
        t.heap_bytes()
    );
}

#[test]
fn the_address_width_limits_memslots_as_maxphyaddr_limits_kvm() {
    let flags = SlotFlags {
        guest_memfd: true,
        ..Default::default()
    };
    let slot = |gpa: u64, size: u64| MemoryRegion {
        slot: 0,
        gpa: Gpa(gpa),
        size,
        flags,
        ..Default::default()
    };
    // Default: any slot whose end fits in 64 bits (op-log v1).
    let mut open = Tracker::new();
    assert!(open
        .set_user_memory_region(&slot(0xffff_ffff_ffff_e000, 0x1000))
        .is_ok());
    // 40 bits: a slot may end exactly at 2^40, not one page later.
    let mut t = Tracker::new().with_gpa_bits(40);
    assert_eq!(t.gpa_bits(), 40);
    let err = t
        .set_user_memory_region(&slot((1 << 40) - 0x1000, 0x2000))
        .unwrap_err();
    assert_eq!(err.errno(), cvmem::Errno::EINVAL);
    assert!(matches!(
        err,
        cvmem::Error::SlotBeyondAddressWidth { bits: 40, .. }
    ));
    assert_eq!(t.memslots().len(), 0, "nothing changed");
    assert!(t
        .set_user_memory_region(&slot((1 << 40) - 0x1000, 0x1000))
        .is_ok());
}

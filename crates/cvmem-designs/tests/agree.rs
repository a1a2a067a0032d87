//! Every design answers every query like every other, and like the dense per-page oracle, on
//! small random workloads (memslots with odd bases, sizes, host addresses and flags; attribute
//! ranges around 4K/2M/1G boundaries; map-gpa; queries of both kinds).

use cvmem::{Access, Gpa, Level, SlotFlags};
use cvmem_designs::dense::Dense;
use cvmem_designs::{make_design, Vm, DESIGNS};
use cvmem_oplog::{Op, Outcome};
use proptest::prelude::*;

const G: u64 = 1 << 30;
const M: u64 = 1 << 20;
const K4: u64 = 4096;
/// 4 GiB of gfns in the dense oracle.
const WINDOW: u64 = 1 << 20;

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        (0u64..8).prop_map(|i| i * 2 * M),
        (0u64..4).prop_map(|i| i * G),
        (0u64..4, -3i64..4).prop_map(|(i, d)| (i * G).saturating_add_signed(d * 4096)),
        (0u64..64, -2i64..3).prop_map(|(i, d)| (i * 2 * M + G).saturating_add_signed(d * 4096)),
        (0u64..(3 * G / K4)).prop_map(|p| p * K4),
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(K4),
        Just(2 * M),
        Just(2 * M + K4),
        Just(2 * M - K4),
        Just(G),
        Just(G + 2 * M),
        Just(G / 2 + 3 * K4),
        (1u64..1024).prop_map(|p| p * K4),
        (1u64..600).prop_map(|p| p * 2 * M),
    ]
}

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![Just(Access::Private), Just(Access::Shared)]
}

fn op() -> impl Strategy<Value = Op> {
    let memslot = (
        0u64..4,
        addr(),
        prop_oneof![3 => size(), 1 => Just(0u64)],
        any::<(bool, bool)>(),
        prop_oneof![
            Just(None),
            (0u64..4).prop_map(|k| Some(k * 0x1000)),
            Just(Some(2 * M))
        ],
        prop_oneof![
            Just(None),
            Just(Some(Level::K4)),
            Just(Some(Level::M2)),
            Just(Some(Level::G1))
        ],
    )
        .prop_map(|(slot, gpa, size, (memfd, dirty), uoff, backing)| {
            let gpa = gpa.min(4 * G - size.max(K4));
            Op::Memslot {
                gmem: None,
                slot,
                gpa: cvmem::Gpa(gpa),
                size,
                flags: SlotFlags {
                    guest_memfd: memfd,
                    dirty_log: dirty && !memfd,
                    readonly: false,
                },
                uaddr: uoff.map(|o| gpa + o),
                backing,
            }
        });
    let attrs = (
        addr(),
        size(),
        prop_oneof![4 => Just(8u64), 4 => Just(0u64), 1 => Just(1u64)],
    )
        .prop_map(|(gpa, size, attributes)| Op::Attrs {
            gpa: cvmem::Gpa(gpa),
            size,
            attributes,
        });
    let map_gpa = (
        addr(),
        size(),
        prop_oneof![Just(0x10u64), Just(0x0), Just(0x11), Just(0x3)],
    )
        .prop_map(|(gpa, size, flags)| Op::MapGpa {
            gpa,
            npages: size / K4,
            flags,
        });
    let query = ((0..WINDOW), access()).prop_map(|(gfn, access)| Op::Query {
        gpa: Gpa(gfn * K4),
        access,
    });
    let edge_query = (addr(), -2i64..3, access()).prop_map(|(gpa, d, access)| Op::Query {
        gpa: Gpa(gpa.saturating_add_signed(d * 4096).min(4 * G - K4)),
        access,
    });
    prop_oneof![
        2 => memslot,
        3 => attrs,
        1 => map_gpa,
        3 => query,
        3 => edge_query,
    ]
}

/// Queries every 2M page of the window at one pseudo-random gfn, both kinds, on every design
/// but the (slow) oracle, and compares them with the first.
fn sweep(vms: &mut [Vm], after: usize) -> Result<(), TestCaseError> {
    let fast = vms.len() - 1;
    for page in 0..WINDOW / 512 {
        let gfn = page * 512 + (page * 2654435761 + after as u64 * 97) % 512;
        for access in [Access::Private, Access::Shared] {
            let q = Op::Query {
                gpa: Gpa(gfn * K4),
                access,
            };
            let want = vms[0].apply(&q);
            for vm in &mut vms[1..fast] {
                let got = vm.apply(&q);
                prop_assert_eq!(
                    &got,
                    &want,
                    "after op {}: `{}`: {} disagrees with {}",
                    after,
                    q,
                    vm.design().name(),
                    vms[0].design().name()
                );
            }
        }
    }
    Ok(())
}

fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut vms: Vec<Vm> = DESIGNS
        .iter()
        .map(|n| Vm::new(make_design(n).unwrap()))
        .collect();
    vms.push(Vm::new(Box::new(Dense::new(WINDOW))));
    for (i, op) in ops.iter().enumerate() {
        if i % 8 == 7 {
            sweep(&mut vms, i)?;
        }
        let results: Vec<_> = vms
            .iter_mut()
            .map(|vm| match vm.apply(op) {
                Outcome::Error(e) => Err(e.errno),
                done => Ok(done),
            })
            .collect();
        let oracle = results.last().unwrap();
        for (vm, r) in vms.iter().zip(&results) {
            prop_assert_eq!(
                r,
                oracle,
                "op {} `{}`: {} disagrees with the dense oracle",
                i,
                op,
                vm.design().name()
            );
        }
    }
    sweep(&mut vms, ops.len())
}

/// A start most guests have: one guest-memfd slot over [0, 2G + 6M), all private, or none.
fn prefix() -> impl Strategy<Value = Vec<Op>> {
    let f = SlotFlags {
        guest_memfd: true,
        ..Default::default()
    };
    prop_oneof![
        Just(vec![]),
        Just(vec![
            Op::Memslot {
                gmem: None,
                slot: 9,
                gpa: Gpa(0),
                size: 2 * G + 6 * M,
                flags: f,
                uaddr: None,
                backing: None
            },
            Op::Attrs {
                gpa: Gpa(0),
                size: 4 * G,
                attributes: 8
            },
        ]),
    ]
}

/// Small conversions inside the first 2 GiB, where the prefix put memory.
fn small_conversion() -> impl Strategy<Value = Op> {
    ((0u64..(2 * G / K4)), 1u64..1100, any::<bool>()).prop_map(|(p, n, private)| Op::Attrs {
        gpa: Gpa(p * K4),
        size: n * K4,
        attributes: if private { 8 } else { 0 },
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn designs_agree_with_the_dense_oracle(
        start in prefix(),
        ops in proptest::collection::vec(prop_oneof![3 => op(), 1 => small_conversion()], 1..60),
    ) {
        check(&[start, ops].concat())?;
    }
}

#[test]
fn misaligned_uaddr_and_partial_pages() {
    let f = SlotFlags {
        guest_memfd: true,
        ..Default::default()
    };
    let mut ops = vec![
        Op::Memslot {
            gmem: None,
            slot: 0,
            gpa: Gpa(2 * M - K4),
            size: G + 4 * M,
            flags: f,
            uaddr: None,
            backing: None,
        },
        Op::Memslot {
            gmem: None,
            slot: 1,
            gpa: Gpa(2 * G),
            size: G,
            flags: f,
            uaddr: Some(2 * G + 2 * M),
            backing: None,
        },
        Op::Attrs {
            gpa: Gpa(0),
            size: 4 * G,
            attributes: 8,
        },
        Op::Attrs {
            gpa: Gpa(G + 2 * M + K4),
            size: K4,
            attributes: 0,
        },
    ];
    for gpa in [
        0,
        2 * M - K4,
        2 * M,
        G,
        G + 2 * M,
        G + 2 * M + K4,
        2 * G,
        2 * G + 4 * M,
    ] {
        for access in [Access::Private, Access::Shared] {
            ops.push(Op::Query {
                gpa: cvmem::Gpa(gpa),
                access,
            });
        }
    }
    check(&ops).unwrap();
}

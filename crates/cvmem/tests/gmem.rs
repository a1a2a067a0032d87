//! The per-guest_memfd attributes (`cvmem::Gmem`) against the dense oracle, operation by
//! operation: `KVM_SET_MEMORY_ATTRIBUTES2`'s answer (changed, unchanged, the errno and the
//! `-EAGAIN` error_offset), the host's references, and every page's kind after every step.

use cvmem::{Gmem, GmemFlags, GmemOffset, Kind};
use cvmem_testkit::DenseGmem;
use proptest::prelude::*;

const PAGE: u64 = 4096;
/// The file: 1,100 pages, so that ranges cross 2M pages and the file's end.
const PAGES: u64 = 1100;

#[derive(Clone, Debug)]
enum Op {
    Set {
        offset: u64,
        size: u64,
        private: bool,
        flags: u64,
    },
    Get(u64),
    Put(u64),
}

/// Offsets mostly page aligned and inside the file, sometimes not.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => (0..PAGES + 8).prop_map(|p| p * PAGE),
        1 => any::<u64>(),
        1 => 0..PAGES * PAGE,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![
        6 => (1u64..40).prop_map(|p| p * PAGE),
        2 => (1u64..PAGES + 4).prop_map(|p| p * PAGE),
        1 => Just(0u64),
        1 => any::<u64>(),
    ];
    let flags = prop_oneof![9 => Just(0u64), 1 => any::<u64>()];
    prop_oneof![
        6 => (offset(), size, any::<bool>(), flags)
            .prop_map(|(offset, size, private, flags)| Op::Set { offset, size, private, flags }),
        2 => offset().prop_map(Op::Get),
        2 => offset().prop_map(Op::Put),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn gmem_matches_the_dense_oracle(
        init_shared in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let flags = GmemFlags { folio: cvmem::Level::K4, mmap: true, init_shared };
        let mut g = Gmem::new(PAGES * PAGE, flags).unwrap();
        let mut o = DenseGmem::new(PAGES as usize, init_shared);
        for op in &ops {
            match *op {
                Op::Set { offset, size, private, flags } => {
                    let attributes = if private { 1 << 3 } else { 0 };
                    let got = g
                        .set_memory_attributes2(GmemOffset(offset), size, attributes, flags)
                        .map_err(|e| {
                            let at = match e {
                                cvmem::Error::PageReferenced { offset } => Some(offset),
                                _ => None,
                            };
                            (e.errno(), at)
                        });
                    prop_assert_eq!(got, o.set_memory_attributes2(offset, size, attributes, flags), "{:?}", op);
                }
                Op::Get(offset) => {
                    prop_assert_eq!(g.get_page(GmemOffset(offset)).map_err(|e| e.errno()), o.get_page(offset), "{:?}", op);
                }
                Op::Put(offset) => {
                    prop_assert_eq!(g.put_page(GmemOffset(offset)).map_err(|e| e.errno()), o.put_page(offset), "{:?}", op);
                }
            }
        }
        for (i, &private) in o.private.iter().enumerate() {
            let at = GmemOffset(i as u64 * PAGE);
            prop_assert_eq!(g.kind(at), Kind::from_private(private), "page {}", i);
            prop_assert_eq!(g.references(at), o.refs[i], "references of page {}", i);
        }
        // Uniformity over windows, as the fault path would ask of a 2M page.
        for start in (0..PAGES).step_by(512) {
            let end = (start + 512).min(PAGES);
            let want = {
                let s = &o.private[start as usize..end as usize];
                s.iter().all(|&p| p == s[0]).then(|| Kind::from_private(s[0]))
            };
            prop_assert_eq!(g.uniform(GmemOffset(start * PAGE), (end - start) * PAGE), want);
        }
    }
}

/// The contract's edges by hand: EAGAIN names the first referenced page, private → shared
/// ignores references, and a refused call changes nothing.
#[test]
fn shared_to_private_waits_for_references_private_to_shared_does_not() {
    let mut g = Gmem::new(
        16 * PAGE,
        GmemFlags {
            folio: cvmem::Level::K4,
            mmap: true,
            init_shared: true,
        },
    )
    .unwrap();
    g.get_page(GmemOffset(5 * PAGE)).unwrap();
    g.get_page(GmemOffset(9 * PAGE + 7)).unwrap();
    let e = g
        .set_memory_attributes2(GmemOffset(2 * PAGE), 12 * PAGE, 1 << 3, 0)
        .unwrap_err();
    assert_eq!(e, cvmem::Error::PageReferenced { offset: 5 * PAGE });
    assert_eq!(e.errno(), cvmem::Errno::EAGAIN);
    assert_eq!(
        g.uniform(GmemOffset(0), 16 * PAGE),
        Some(Kind::Shared),
        "nothing changed"
    );
    // Around the references it converts.
    assert_eq!(
        g.set_memory_attributes2(GmemOffset(0), 5 * PAGE, 1 << 3, 0),
        Ok(true)
    );
    assert_eq!(
        g.set_memory_attributes2(GmemOffset(0), 5 * PAGE, 1 << 3, 0),
        Ok(false)
    );
    g.put_page(GmemOffset(5 * PAGE)).unwrap();
    assert_eq!(
        g.set_memory_attributes2(GmemOffset(0), 12 * PAGE, 1 << 3, 0),
        Err(cvmem::Error::PageReferenced { offset: 9 * PAGE })
    );
    // Private pages take no references; private → shared needs none dropped.
    assert!(g.get_page(GmemOffset(0)).is_err());
    assert_eq!(
        g.set_memory_attributes2(GmemOffset(0), 16 * PAGE, 0, 0),
        Ok(true)
    );
    assert_eq!(g.references(GmemOffset(9 * PAGE)), 1);
}

/// A file of many TiB all private costs what one run costs.
#[test]
fn a_huge_uniform_file_costs_almost_nothing() {
    let g = Gmem::new(64 << 40, GmemFlags::default()).unwrap();
    assert_eq!(g.uniform(GmemOffset(0), 64 << 40), Some(Kind::Private));
    assert!(g.heap_bytes() < 4096, "{} bytes", g.heap_bytes());
}

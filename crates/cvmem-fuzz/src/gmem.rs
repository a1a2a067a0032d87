//! `gmem_oracle`: operation sequences on one guest_memfd's attributes (`cvmem::Gmem`) and the
//! dense oracle (`cvmem_testkit::DenseGmem`), every answer compared — including the `-EAGAIN`
//! error_offset — with wild offsets and sizes, so that no request panics or changes state when
//! refused; with 4K or 2M folios under every merge policy, punch-holes, and the folios, their
//! splits and merges compared at the end.

use cvmem::{Error, Gmem, GmemFlags, GmemOffset, Kind, Level, MergePolicy};
use cvmem_testkit::DenseGmem;

use crate::input::Input;

const PAGE: u64 = 4096;

/// The body of the `gmem_oracle` target.
pub fn gmem_oracle(data: &[u8]) {
    let mut input = Input::new(data);
    let pages = 1 + u64::from(input.u16() % 1200);
    let init_shared = input.flag();
    let folio = if input.flag() { Level::M2 } else { Level::K4 };
    let merge = [
        MergePolicy::Never,
        MergePolicy::OnPunchHole,
        MergePolicy::Eager,
    ][input.below(3) as usize];
    let pages = pages.div_ceil(folio.pages()) * folio.pages();
    let mut g = Gmem::new(
        pages * PAGE,
        GmemFlags {
            folio,
            mmap: true,
            init_shared,
        },
    )
    .expect("a non-empty size, a multiple of the folio")
    .with_merge_policy(merge);
    let mut o = DenseGmem::with_folios(pages as usize, init_shared, folio, merge);
    let offset = |input: &mut Input<'_>| match input.below(8) {
        0 => input.wild_u64(),
        1 => u64::from(input.u16()),
        _ => u64::from(input.u16()) % (pages + 4) * PAGE,
    };
    while !input.is_empty() {
        match input.below(5) {
            0 | 1 => {
                let at = offset(&mut input);
                let size = match input.below(6) {
                    0 => input.wild_u64(),
                    1 => 0,
                    _ => u64::from(input.u16() % 600 + 1) * PAGE,
                };
                let attributes = match input.below(8) {
                    0 => input.wild_u64(),
                    n => u64::from(n & 1) << 3,
                };
                let flags = if input.below(16) == 0 {
                    input.wild_u64()
                } else {
                    0
                };
                let got = g
                    .set_memory_attributes2(GmemOffset(at), size, attributes, flags)
                    .map_err(|e| {
                        let error_offset = match e {
                            Error::PageReferenced { offset } => Some(offset),
                            _ => None,
                        };
                        (e.errno(), error_offset)
                    });
                let want = o.set_memory_attributes2(at, size, attributes, flags);
                assert_eq!(
                    got, want,
                    "set-attributes2 {at:#x} {size:#x} {attributes:#x} {flags:#x}"
                );
            }
            2 => {
                let at = offset(&mut input);
                let got = g.get_page(GmemOffset(at)).map_err(|e| e.errno());
                assert_eq!(got, o.get_page(at), "get-page {at:#x}");
            }
            3 => {
                let at = offset(&mut input);
                let size = match input.below(4) {
                    0 => input.wild_u64(),
                    _ => u64::from(input.u16() % 1100 + 1) * PAGE,
                };
                let got = g.punch_hole(GmemOffset(at), size).map_err(|e| e.errno());
                assert_eq!(got, o.punch_hole(at, size), "punch-hole {at:#x} {size:#x}");
            }
            _ => {
                let at = offset(&mut input);
                let got = g.put_page(GmemOffset(at)).map_err(|e| e.errno());
                assert_eq!(got, o.put_page(at), "put-page {at:#x}");
            }
        }
    }
    for (i, &private) in o.private.iter().enumerate() {
        let at = GmemOffset(i as u64 * PAGE);
        assert_eq!(g.kind(at), Kind::from_private(private), "page {i}");
        assert_eq!(g.references(at), o.refs[i], "references of page {i}");
        assert_eq!(
            g.folios().level_at(i as u64),
            o.order[i],
            "folio of page {i}"
        );
    }
    let counts = g.folios().counts();
    assert_eq!(
        (counts.splits, counts.merges),
        (o.splits, o.merges),
        "splits, merges"
    );
}

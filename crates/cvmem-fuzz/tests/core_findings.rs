//! Panics found by probing the core's public API with hostile values outside the fuzz targets'
//! reach. Each test pins one fix. (An open finding would be an `#[ignore]`d test naming the fix
//! it needs, run with `--include-ignored`.)

use cvmem::{Gfn, GfnRange, Level, MapGpaRange};

/// `GfnRange::len` subtracted without a check: a reversed range panicked (overflow) in debug
/// builds and wrapped to a huge length in release. Fixed in `addr.rs` (`saturating_sub`).
#[test]
fn a_reversed_gfn_range_is_empty_and_has_no_length() {
    let reversed = GfnRange::new(Gfn(u64::MAX), Gfn(0));
    assert!(reversed.is_empty());
    assert_eq!(reversed.len(), 0);
    assert_eq!(reversed.bytes(), 0);
}

/// `MapGpaRange` has public fields, so a value can bypass `decode`; `size()` overflowed
/// (`npages * PAGE_SIZE`) and `range()` too (`(gpa >> 12) + npages`). Fixed in `hypercall.rs`
/// (saturating, the range clipped to the gfn space).
#[test]
fn a_hand_built_map_gpa_range_does_not_panic() {
    let forged = MapGpaRange {
        gpa: cvmem::Gpa(0xffff_ffff_ffff_f000),
        npages: u64::MAX,
        private: true,
        hint: Level::K4,
    };
    assert_eq!(forged.size(), u64::MAX);
    let range = forged.range();
    assert!(range.start <= range.end && range.end <= Gfn(cvmem::GFN_END));
}

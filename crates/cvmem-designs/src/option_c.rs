//! `option-c`: a SHARED bit in leaf SPTEs of one tree (SNP-like), plus a 512-bit "mixed" bitmap
//! per page table (one bit per entry: the range under it holds both kinds) and one at the root
//! for 1G. Every page must stay mapped: its memory is the page tables it forces (see
//! [`crate::mapped`]) plus 64 bytes of bitmap per table page (counted for every table, an upper
//! bound: leaf tables need none).

use cvmem::mmu::Layout;

use crate::mapped::{OnTables, SpteScheme};

/// Option C.
pub type OptionC = OnTables<SharedBit>;

/// The SPTE scheme of Option C.
#[derive(Clone, Copy, Debug, Default)]
pub struct SharedBit;

impl SpteScheme for SharedBit {
    const NAME: &'static str = "option-c";
    const LAYOUT: Layout = Layout::Unified;
    fn side_bytes(table_pages: u64) -> usize {
        (table_pages * 64) as usize
    }
}

//! `option-b`: a spare SPTE bit MIXED. Two trees (TDX-like: private and shared); a page is
//! private when the private tree maps it; a non-leaf SPTE whose range holds both kinds carries
//! MIXED, in both trees. Eligibility is "the leaf of the access's kind is this large". The
//! design needs mappings in both trees at all times: its memory is the page tables it forces
//! (see [`crate::mapped`]); it keeps nothing else (the bit is spare).

use cvmem::mmu::Layout;

use crate::mapped::{OnTables, SpteScheme};

/// Option B.
pub type OptionB = OnTables<MixedBit>;

/// The SPTE scheme of Option B.
#[derive(Clone, Copy, Debug, Default)]
pub struct MixedBit;

impl SpteScheme for MixedBit {
    const NAME: &'static str = "option-b";
    const LAYOUT: Layout = Layout::SPLIT;
    fn side_bytes(table_pages: u64) -> usize {
        let _ = table_pages;
        0
    }
}

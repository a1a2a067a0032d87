//! Instruments for testing cvmem, kept out of the embeddable core so that no build of `cvmem`
//! carries them: the dense per-page oracle ([`DenseModel`]) that property tests, the fuzzers and
//! the designs evaluator check every tracking structure against, and the dense guest_memfd
//! ([`DenseGmem`]) that checks the per-guest_memfd attributes.

mod dense;
mod gmem;

pub use dense::{DenseModel, DenseSlot};
pub use gmem::{Answer, DenseGmem};

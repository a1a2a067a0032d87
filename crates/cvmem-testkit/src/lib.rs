//! Instruments for testing cvmem, kept out of the embeddable core so that no build of `cvmem`
//! carries them: the dense per-page oracle ([`DenseModel`]) that property tests, the fuzzers and
//! the designs evaluator check every tracking structure against.

mod dense;

pub use dense::{DenseModel, DenseSlot};

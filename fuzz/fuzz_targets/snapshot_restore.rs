//! libFuzzer entry point of `cvmem_fuzz::snapshot_restore` (the body lives in crates/cvmem-fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cvmem_fuzz::snapshot_restore(data));

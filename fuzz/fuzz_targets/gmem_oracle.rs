//! libFuzzer entry point of `cvmem_fuzz::gmem_oracle` (the body lives in crates/cvmem-fuzz).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cvmem_fuzz::gmem_oracle(data));

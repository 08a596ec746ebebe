//! Fuzz target: extent-list tree blobs. The logic lives in `imgarc_fuzz::extent_list` (fuzz/src/lib.rs),
//! which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::extent_list(data));

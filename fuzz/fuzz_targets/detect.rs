//! Fuzz target: image format detection. The logic lives in `imgarc_fuzz::format_detection` (fuzz/src/lib.rs),
//! which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::format_detection(data));

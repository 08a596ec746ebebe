//! Fuzz target: one sealed blob, opened with the full key. The logic lives in
//! `imgarc_fuzz::sealed_blob` (fuzz/src/lib.rs), which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::sealed_blob(data));

//! Fuzz target: snapshot objects read through the repository. The logic lives in `imgarc_fuzz::snapshot` (fuzz/src/lib.rs),
//! which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::snapshot(data));

//! Fuzz target: the repository config. The logic lives in `imgarc_fuzz::config` (fuzz/src/lib.rs),
//! which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::config(data));

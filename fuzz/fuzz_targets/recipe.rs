//! Fuzz target: the recipe decoder and rebuild. The logic lives in `imgarc_fuzz::recipe` (fuzz/src/lib.rs),
//! which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::recipe(data));

//! Fuzz target: index objects (raw, and as zstd-compressed JSON). The logic lives in `imgarc_fuzz::index_object` (fuzz/src/lib.rs),
//! which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::index_object(data));

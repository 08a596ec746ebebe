//! Fuzz target: encrypted packs (sealed trailers and blobs). The logic lives in
//! `imgarc_fuzz::sealed_pack` (fuzz/src/lib.rs), which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::sealed_pack(data));

//! Fuzz target: pack trailers and blob decoding. The logic lives in `imgarc_fuzz::pack_trailer_and_blobs` (fuzz/src/lib.rs),
//! which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::pack_trailer_and_blobs(data));

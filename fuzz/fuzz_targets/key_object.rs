//! Fuzz target: key objects and the KeySet bytes they wrap. The logic lives in
//! `imgarc_fuzz::key_object` (fuzz/src/lib.rs), which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::key_object(data));

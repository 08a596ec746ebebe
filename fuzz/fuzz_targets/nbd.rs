//! Fuzz target: the NBD server's handshake, option and request parsing over an in-memory client. The logic lives in
//! `imgarc_fuzz::nbd` (fuzz/src/lib.rs), which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::nbd(data));

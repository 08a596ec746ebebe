//! Fuzz target: the streaming VMDK decomposer (and rebuild of what it accepts). The logic lives in `imgarc_fuzz::vmdk` (fuzz/src/lib.rs),
//! which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::vmdk(data));

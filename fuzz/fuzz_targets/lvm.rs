//! Fuzz target: guest disk LVM2 metadata text, PV label and metadata area. The logic lives in `imgarc_fuzz::lvm` (fuzz/src/lib.rs),
//! which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::lvm(data));

//! Fuzz target: QCOW2 header and extension parsing. The logic lives in `imgarc_fuzz::qcow2_header` (fuzz/src/lib.rs),
//! which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::qcow2_header(data));

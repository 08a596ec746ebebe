//! Fuzz target: the XFS reader (open, walk, stat, read). The logic lives in `imgarc_fuzz::xfs` (fuzz/src/lib.rs),
//! which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::xfs(data));

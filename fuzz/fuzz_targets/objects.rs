//! Fuzz target: lock, prune-mark and deleted-upstream objects. The logic lives in `imgarc_fuzz::lock_mark_upstream` (fuzz/src/lib.rs),
//! which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::lock_mark_upstream(data));

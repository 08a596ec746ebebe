//! Fuzz target: the streaming VDI decomposer (rebuild of what it accepts, and the writer on small accepted disks).
//! The logic lives in `imgarc_fuzz::vdi` (fuzz/src/lib.rs), which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::vdi(data));

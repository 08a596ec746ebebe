//! Fuzz target: the FAT12/16/32 reader (open, walk, read). The logic lives in `imgarc_fuzz::fat` (fuzz/src/lib.rs),
//! which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::fat(data));

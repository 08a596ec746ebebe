//! Fuzz target: ext2/3/4 opened and walked over the input as a volume. The logic lives in `imgarc_fuzz::ext4` (fuzz/src/lib.rs),
//! which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::ext4(data));

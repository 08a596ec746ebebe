//! Fuzz target: guest disk partition tables (GPT, MBR with logical partitions) and LVM2 volumes. The logic lives in `imgarc_fuzz::partition` (fuzz/src/lib.rs),
//! which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::partition(data));

//! Fuzz target: the boot drill's serial-console watcher over what a guest prints. The logic lives in `imgarc_fuzz::console`
//! (fuzz/src/lib.rs), which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::console(data));

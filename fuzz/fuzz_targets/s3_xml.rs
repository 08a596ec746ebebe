//! Fuzz target: the S3 XML answers (retention, lock configuration, version pages, errors).
//! The logic lives in `imgarc_fuzz::s3_xml` (fuzz/src/lib.rs), which the stable replay test runs too.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| imgarc_fuzz::s3_xml(data));

//! Fuzz target: the recipe decoder and rebuild on arbitrary recipe bytes. Must never panic
//! and never allocate proportionally to claimed (rather than real) sizes.
#![no_main]
use imgarc::format::qcow2::{self, RebuildSource};
use libfuzzer_sys::fuzz_target;

struct Zeros;
impl RebuildSource for Zeros {
    fn read_guest(&mut self, _: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn read_literal(&mut self, _: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0x5a);
        Ok(())
    }
}
/// Output capped at 16 MiB so a recipe claiming a huge file cannot run forever.
struct Capped(u64);
impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if b.len() as u64 > self.0 {
            return Err(std::io::Error::other("cap"));
        }
        self.0 -= b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = qcow2::decode_recipe(data) {
        let total: u64 = r.segments.iter().map(|s| s.len()).sum();
        assert_eq!(total, r.file_len);
    }
    let _ = qcow2::rebuild(data, &mut Zeros, &mut Capped(16 << 20));
});

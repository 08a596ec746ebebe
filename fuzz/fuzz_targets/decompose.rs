//! Fuzz target: the streaming decomposer on arbitrary bytes (with and without a declared
//! length). Must never panic; whatever it accepts must rebuild byte-exactly.
#![no_main]
use imgarc::format::qcow2::{self, DecomposeSink, Policy, RebuildSource};
use libfuzzer_sys::fuzz_target;

#[derive(Default)]
struct Mem {
    guest: std::collections::BTreeMap<u64, Vec<u8>>,
    lit: Vec<u8>,
}
impl DecomposeSink for Mem {
    fn guest(&mut self, off: u64, d: &[u8]) -> std::io::Result<()> {
        self.guest.insert(off, d.to_vec());
        Ok(())
    }
    fn literal(&mut self, d: &[u8]) -> std::io::Result<()> {
        self.lit.extend_from_slice(d);
        Ok(())
    }
}
impl RebuildSource for Mem {
    fn read_guest(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        let end = off + buf.len() as u64;
        for (&o, d) in self.guest.range(..end) {
            let de = o + d.len() as u64;
            if de <= off {
                continue;
            }
            let (a, b) = (o.max(off), de.min(end));
            buf[(a - off) as usize..(b - off) as usize].copy_from_slice(&d[(a - o) as usize..(b - o) as usize]);
        }
        Ok(())
    }
    fn read_literal(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let s = self.lit.get(off as usize..off as usize + buf.len()).ok_or_else(|| std::io::Error::other("range"))?;
        buf.copy_from_slice(s);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let policy = Policy { max_pending_ram: 1 << 20, max_virtual_size: 1 << 40, ..Policy::default() };
    for with_len in [true, false] {
        let mut m = Mem::default();
        if let Ok(d) = qcow2::decompose(data, with_len.then_some(data.len() as u64), &policy, &mut m) {
            let mut out = Vec::new();
            qcow2::rebuild(&d.recipe, &mut m, &mut out).expect("rebuild of an accepted image");
            assert!(out == data, "rebuild not byte-exact");
        }
    }
});

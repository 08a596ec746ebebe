//! Shared helpers for the qcow2 integration tests: image generation with real qemu-img,
//! in-memory sink/source, and the oracles (qemu-img convert -O raw, qcow2-rs).
use imgarc::format::qcow2::{self, DecomposeSink, Decomposed, Policy, RebuildSource};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Run a command, panic with its stderr on failure; returns stdout.
pub fn run(prog: &str, args: &[&str]) -> String {
    let o = Command::new(prog).args(args).output().unwrap_or_else(|e| panic!("{prog}: {e}"));
    assert!(o.status.success(), "{prog} {args:?} failed: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn qemu_img(args: &[&str]) -> String {
    run("qemu-img", args)
}

/// `qemu-img convert -f raw -O qcow2 OPTS raw dir/name`; returns the new image's path.
pub fn convert(dir: &Path, raw: &Path, name: &str, opts: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut a = vec!["convert", "-f", "raw", "-O", "qcow2"];
    a.extend_from_slice(opts);
    a.push(raw.to_str().unwrap());
    a.push(out.to_str().unwrap());
    qemu_img(&a);
    out
}

/// xorshift64* — deterministic test data without a rand dependency in tests.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A raw disk of `size` bytes with recognisable content per 64 KiB block: holes, compressible
/// text naming the block, and incompressible noise (so `-c` images also get uncompressed
/// clusters), plus a partial block at the end when `size` is not a block multiple.
pub fn make_raw(path: &Path, size: u64, seed: u64) {
    let mut v = vec![0u8; size as usize];
    let mut r = Rng(seed | 1);
    for (i, blk) in v.chunks_mut(65536).enumerate() {
        match i % 5 {
            0 | 3 => {}
            4 => blk.iter_mut().for_each(|b| *b = r.next() as u8),
            _ => {
                let line = format!("imgarc block {i} seed {seed} lorem ipsum dolor sit amet {}\n", r.next() % 1000);
                for (j, b) in blk.iter_mut().enumerate() {
                    *b = line.as_bytes()[j % line.len()];
                }
            }
        }
    }
    // Last sector non-zero so sizes that are not a cluster multiple matter.
    let n = v.len();
    if n >= 512 {
        v[n - 512..].iter_mut().enumerate().for_each(|(j, b)| *b = (j % 251) as u8 + 1);
    }
    std::fs::write(path, v).unwrap();
}

pub fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Sink that assembles guest pieces into a sparse buffer, checking they never overlap.
pub struct MemSink {
    pub guest: Vec<u8>,
    pub covered: Vec<(u64, u64)>,
    pub literal: Vec<u8>,
    pub pieces: usize,
    pub out_of_order: usize,
    last_end: u64,
}
impl MemSink {
    pub fn new(vsize: u64) -> Self {
        MemSink { guest: vec![0; vsize as usize], covered: Vec::new(), literal: Vec::new(), pieces: 0, out_of_order: 0, last_end: 0 }
    }
    /// Allocated guest extents (offset, len), merged.
    pub fn extents(&self) -> Vec<(u64, u64)> {
        let mut c = self.covered.clone();
        c.sort();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (o, l) in c {
            match out.last_mut() {
                Some(last) if last.0 + last.1 == o => last.1 += l,
                _ => out.push((o, l)),
            }
        }
        out
    }
}
impl DecomposeSink for MemSink {
    fn guest(&mut self, off: u64, data: &[u8]) -> std::io::Result<()> {
        let end = off + data.len() as u64;
        assert!(end <= self.guest.len() as u64, "guest piece {off}+{} beyond virtual size {}", data.len(), self.guest.len());
        assert!(!data.is_empty());
        if off < self.last_end {
            self.out_of_order += 1;
            if std::env::var("QCOW2_DEBUG").is_ok() {
                eprintln!("out of order: piece at {off:#x} after end {:#x}", self.last_end);
            }
        }
        self.last_end = end;
        self.guest[off as usize..end as usize].copy_from_slice(data);
        self.covered.push((off, data.len() as u64));
        self.pieces += 1;
        Ok(())
    }
    fn literal(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.literal.extend_from_slice(data);
        Ok(())
    }
}
impl RebuildSource for MemSink {
    fn read_guest(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let s = self.guest.get(off as usize..off as usize + buf.len()).ok_or_else(|| std::io::Error::other("guest read out of range"))?;
        buf.copy_from_slice(s);
        Ok(())
    }
    fn read_literal(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let s =
            self.literal.get(off as usize..off as usize + buf.len()).ok_or_else(|| std::io::Error::other("literal read out of range"))?;
        buf.copy_from_slice(s);
        Ok(())
    }
}

pub fn vsize_of(img: &[u8]) -> u64 {
    u64::from_be_bytes(img[24..32].try_into().unwrap())
}

/// Decompose `path` from a plain sequential reader; check no overlap of guest pieces.
pub fn decompose_file(path: &Path, policy: &Policy, pass_len: bool) -> (Vec<u8>, Result<(Decomposed, MemSink), qcow2::Qcow2Error>) {
    let img = std::fs::read(path).unwrap();
    let vs = if img.len() >= 32 { vsize_of(&img).min(1 << 30) } else { 0 };
    let mut sink = MemSink::new(vs);
    let r = qcow2::decompose(&img[..], pass_len.then_some(img.len() as u64), policy, &mut sink);
    if r.is_ok() {
        let mut c = sink.covered.clone();
        c.sort();
        for w in c.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "guest pieces overlap: {w:?}");
        }
    }
    (img, r.map(|d| (d, sink)))
}

/// Rebuild and assert byte-exactness.
pub fn assert_rebuild(img: &[u8], d: &Decomposed, sink: &mut MemSink) {
    let mut out = Vec::new();
    let n = qcow2::rebuild(&d.recipe, sink, &mut out).expect("rebuild");
    assert_eq!(n as usize, out.len());
    assert_eq!(out.len(), img.len(), "rebuilt length differs");
    assert!(sha256(&out) == sha256(img), "rebuild is not byte-exact");
}

/// Guest view according to qemu-img.
pub fn qemu_raw(path: &Path) -> Vec<u8> {
    let raw = path.with_extension("oracle.raw");
    qemu_img(&["convert", "-O", "raw", path.to_str().unwrap(), raw.to_str().unwrap()]);
    let v = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    v
}

/// Full check of one qemu-made image: decompose (with and without a known length), rebuild
/// byte-exact, guest view == qemu-img convert -O raw. Returns the decomposition.
pub fn check_image(path: &Path, policy: &Policy) -> (Decomposed, MemSink) {
    let (img, r) = decompose_file(path, policy, true);
    let (d, mut sink) = r.unwrap_or_else(|e| panic!("{}: decompose failed: {e}", path.display()));
    assert_rebuild(&img, &d, &mut sink);
    assert!(qcow2::decode_recipe(&d.recipe).is_ok());
    if d.opaque.is_none() {
        let want = qemu_raw(path);
        assert_eq!(want.len(), sink.guest.len(), "virtual size differs from qemu-img's");
        assert!(want == sink.guest, "{}: guest view differs from qemu-img convert -O raw", path.display());
    }
    // Unknown length: same result.
    let (_, r2) = decompose_file(path, policy, false);
    let (d2, mut sink2) = r2.expect("decompose without length");
    assert_rebuild(&img, &d2, &mut sink2);
    assert_eq!(d.recipe, d2.recipe, "recipe depends on whether the length was known");
    (d, sink)
}

/// write_qcow2 from the sink's guest view; qemu-img check must find no errors and
/// qemu-img compare must call it identical to the source.
pub fn check_writer(src: &Path, sink: &mut MemSink, compress: bool) -> PathBuf {
    let out = src.with_extension(if compress { "w.c.qcow2" } else { "w.qcow2" });
    let mut f = std::io::BufWriter::new(std::fs::File::create(&out).unwrap());
    let ext = sink.extents();
    let n = qcow2::write_qcow2(sink.guest.len() as u64, &ext, sink, compress, &mut f).expect("write_qcow2");
    drop(f);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), n);
    let chk = Command::new("qemu-img").args(["check", "-f", "qcow2", out.to_str().unwrap()]).output().unwrap();
    let txt = String::from_utf8_lossy(&chk.stdout).into_owned() + &String::from_utf8_lossy(&chk.stderr);
    assert!(chk.status.success() && txt.contains("No errors"), "qemu-img check: {txt}");
    assert!(!txt.contains("leaked"), "qemu-img check reports leaks: {txt}");
    let cmp = Command::new("qemu-img").args(["compare", src.to_str().unwrap(), out.to_str().unwrap()]).output().unwrap();
    assert!(cmp.status.success(), "qemu-img compare: {}", String::from_utf8_lossy(&cmp.stdout));
    out
}

/// qcow2-rs as an independent reader (never opens the backing file: qcow2_alloc_dev).
pub fn qcow2rs_guest(img: &[u8]) -> Option<Vec<u8>> {
    use qcow2_rs::dev::Qcow2DevParams;
    use qcow2_rs::error::Qcow2Result;
    use qcow2_rs::helpers::Qcow2IoBuf;
    use qcow2_rs::ops::Qcow2IoOps;
    struct MemIo(Vec<u8>);
    impl Qcow2IoOps for MemIo {
        async fn read_to(&self, off: u64, buf: &mut [u8]) -> Qcow2Result<usize> {
            buf.fill(0);
            let o = (off as usize).min(self.0.len());
            let n = buf.len().min(self.0.len() - o);
            buf[..n].copy_from_slice(&self.0[o..o + n]);
            Ok(buf.len())
        }
        async fn write_from(&self, _: u64, _: &[u8]) -> Qcow2Result<()> {
            Err(std::io::Error::other("read-only").into())
        }
        async fn fallocate(&self, _: u64, _: usize, _: u32) -> Qcow2Result<()> {
            Err(std::io::Error::other("read-only").into())
        }
        async fn fsync(&self, _: u64, _: usize, _: u32) -> Qcow2Result<()> {
            Ok(())
        }
    }
    let vs = vsize_of(img);
    futures::executor::block_on(async {
        let params = Qcow2DevParams::new(9, None, None, true, false);
        let (dev, backing) = qcow2_rs::utils::qcow2_alloc_dev(Path::new("mem"), MemIo(img.to_vec()), &params).await.ok()?;
        assert!(backing.is_none());
        dev.qcow2_prep_io().await.ok()?;
        let mut out = vec![0u8; vs as usize];
        let step = 1 << 20;
        let mut buf = Qcow2IoBuf::<u8>::new(step);
        let mut off = 0u64;
        while off < vs {
            let n = (vs - off).min(step as u64) as usize;
            dev.read_at(&mut buf[..n], off).await.ok()?;
            out[off as usize..off as usize + n].copy_from_slice(&buf[..n]);
            off += n as u64;
        }
        Some(out)
    })
}

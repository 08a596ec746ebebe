//! Throughput measurement (ignored by default; run with
//! `cargo test --test integration qcow2_perf:: -- --ignored --nocapture`, add `--release` for release
//! numbers). Prints MB/s of file bytes for decompose and rebuild, plain and compressed.
use crate::support::qcow2_util as util;
use imgarc::format::qcow2::{self, Policy};
use std::time::Instant;

/// Process CPU time (user + system, all threads) in seconds.
fn cpu() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}
use util::*;

#[test]
#[ignore]
fn throughput() {
    let t = tmp();
    let mb: u64 = std::env::var("QCOW2_PERF_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(128);
    let r = t.path().join("p.raw");
    // Realistic content: executables and libraries from the host (compress ~2-3x), with a
    // quarter of the 64 KiB blocks left as holes.
    let mut v = vec![0u8; (mb << 20) as usize];
    let mut files: Vec<_> =
        std::fs::read_dir("/usr/lib/x86_64-linux-gnu").unwrap().filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    let mut pos = 0usize;
    'fill: for f in files {
        let Ok(b) = std::fs::read(&f) else { continue };
        for c in b.chunks(65536) {
            if pos >= v.len() {
                break 'fill;
            }
            if (pos / 65536) % 4 != 3 {
                let n = c.len().min(v.len() - pos);
                v[pos..pos + n].copy_from_slice(&c[..n]);
            }
            pos += 65536;
        }
    }
    std::fs::write(&r, &v).unwrap();
    drop(v);
    for (name, opts) in [("plain", &[][..]), ("zlib", &["-c"][..]), ("zstd", &["-c", "-o", "compression_type=zstd"][..])] {
        let p = convert(t.path(), &r, &format!("{name}.qcow2"), opts);
        let img = std::fs::read(&p).unwrap();
        let mut sink = MemSink::new(mb << 20);
        let c0 = cpu();
        let t0 = Instant::now();
        let d = qcow2::decompose(&img[..], Some(img.len() as u64), &Policy::default(), &mut sink).unwrap();
        let dt = t0.elapsed().as_secs_f64();
        let dc = cpu() - c0;
        let mut out = Vec::with_capacity(img.len());
        let c1 = cpu();
        let t1 = Instant::now();
        qcow2::rebuild(&d.recipe, &mut sink, &mut out).unwrap();
        let rt = t1.elapsed().as_secs_f64();
        let rc = cpu() - c1;
        assert!(out == img);
        let ext = sink.extents();
        let t2 = Instant::now();
        let mut w = Vec::new();
        qcow2::write_qcow2(mb << 20, &ext, &mut sink, name != "plain", &mut w).unwrap();
        let wt = t2.elapsed().as_secs_f64();
        let fmb = img.len() as f64 / 1e6;
        let gmb = (mb << 20) as f64 / 1e6;
        println!(
            "{name}: file {:.1} MB, virtual {:.1} MB; decompose {:.2}s wall / {:.2}s CPU ({:.0} MB/s file, {:.0} MB/s virtual per CPU-s); rebuild {:.2}s wall / {:.2}s CPU ({:.0} MB/s file per CPU-s); write_qcow2 {:.2}s wall; recipe {} B; literal {} B; compressed {} reproduced {}",
            fmb, gmb, dt, dc, fmb / dc, gmb / dc, rt, rc, fmb / rc, wt, d.recipe.len(), d.info.literal_stream_bytes, d.info.compressed_clusters, d.info.reproducible_clusters
        );
    }
}

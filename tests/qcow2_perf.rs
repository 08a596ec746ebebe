//! Throughput measurement (ignored by default; run with
//! `cargo test --test qcow2_perf -- --ignored --nocapture`, add `--release` for release
//! numbers). Prints MB/s of file bytes for decompose and rebuild, plain and compressed.
#[path = "support/qcow2_util.rs"]
mod util;
use imgarc::format::qcow2::{self, Policy};
use std::time::Instant;
use util::*;

#[test]
#[ignore]
fn throughput() {
    let t = tmp();
    let mb: u64 = std::env::var("QCOW2_PERF_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(128);
    let r = t.path().join("p.raw");
    make_raw(&r, mb << 20, 1234);
    for (name, opts) in [("plain", &[][..]), ("zlib", &["-c"][..]), ("zstd", &["-c", "-o", "compression_type=zstd"][..])] {
        let p = t.path().join(format!("{name}.qcow2"));
        let mut a = vec!["convert", "-f", "raw", "-O", "qcow2"];
        a.extend_from_slice(opts);
        a.extend_from_slice(&[r.to_str().unwrap(), p.to_str().unwrap()]);
        qemu_img(&a);
        let img = std::fs::read(&p).unwrap();
        let mut sink = MemSink::new(mb << 20);
        let t0 = Instant::now();
        let d = qcow2::decompose(&img[..], Some(img.len() as u64), &Policy::default(), &mut sink).unwrap();
        let dt = t0.elapsed().as_secs_f64();
        let mut out = Vec::with_capacity(img.len());
        let t1 = Instant::now();
        qcow2::rebuild(&d.recipe, &mut sink, &mut out).unwrap();
        let rt = t1.elapsed().as_secs_f64();
        assert!(out == img);
        let ext = sink.extents();
        let t2 = Instant::now();
        let mut w = Vec::new();
        qcow2::write_qcow2(mb << 20, &ext, &mut sink, name != "plain", &mut w).unwrap();
        let wt = t2.elapsed().as_secs_f64();
        let fmb = img.len() as f64 / 1e6;
        let gmb = (mb << 20) as f64 / 1e6;
        println!(
            "{name}: file {:.1} MB, virtual {:.1} MB; decompose {:.2}s ({:.0} MB/s file, {:.0} MB/s virtual); rebuild {:.2}s ({:.0} MB/s file); write_qcow2 {:.2}s; recipe {} B; literal {} B; compressed {} reproduced {}",
            fmb, gmb, dt, fmb / dt, gmb / dt, rt, fmb / rt, wt, d.recipe.len(), d.info.literal_stream_bytes, d.info.compressed_clusters, d.info.reproducible_clusters
        );
    }
}

//! A QCOW2 whose clusters lie in another order in the file than on the guest
//! disk (as in an image a VM wrote over months; `qemu-img convert` writes close
//! to guest order). Archived, it deduplicates against its own raw disk (guest
//! data far out of order is spilled and chunked in guest order); restored, it is
//! byte-exact with chunks fetched about once each (the chunk reader follows
//! the order the rebuild reads in and evicts by next use; reading ahead in
//! stream order it refetched a window per cluster, and a 1.4 GB image took minutes).
use crate::support::qcow2_util::{convert, decompose_file, qemu_img, tmp, MemSink, Rng};
use crate::support::{s, u, Env};
use imgarc::format::qcow2::Policy;
use imgarc::format::{rebuild, RebuildSource};
use serde_json::Value;
use std::path::Path;

/// A random `mib` MiB disk, its qemu-img qcow2 with the clusters shuffled
/// (`benches/shuffle-qcow2`, checked by qemu-img), and the disk's bytes.
fn shuffled_qcow2(env: &Env, mib: usize) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let raw = env.path("disk.raw");
    let mut rng = Rng(0x5eed);
    let disk: Vec<u8> = (0..mib << 20).map(|_| rng.next() as u8).collect();
    std::fs::write(&raw, &disk).unwrap();
    let img = convert(env.dir.path(), &raw, "disk.qcow2", &[]);
    let shuffle =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/shuffle-qcow2")).arg(&img).arg("7").output().unwrap();
    assert!(shuffle.status.success(), "shuffle-qcow2: {}", String::from_utf8_lossy(&shuffle.stderr));
    let moved: usize = String::from_utf8_lossy(&shuffle.stdout).trim().parse().unwrap();
    let clusters = mib * 16;
    assert!(moved * 10 > clusters * 9, "the shuffle moved only {moved} of {clusters} clusters");
    // Still a valid image of the same disk.
    qemu_img(&["check", img.to_str().unwrap()]);
    qemu_img(&["compare", "-f", "raw", "-F", "qcow2", raw.to_str().unwrap(), img.to_str().unwrap()]);
    (raw, img, disk)
}

/// Restores `id` to `out` with the read-ahead window `window_mib` (`None`: the default).
fn restore(env: &Env, id: &str, out: &Path, window_mib: Option<&str>, extra: &[&str]) -> Value {
    let mut c = env.cmd(&["--json", "restore", id, "-o", out.to_str().unwrap()]);
    c.args(extra);
    if let Some(w) = window_mib {
        c.env("IMGARC_RESTORE_WINDOW_MIB", w);
    }
    let o = c.stdin(std::process::Stdio::null()).output().unwrap();
    assert!(o.status.success(), "restore failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn shuffled_qcow2_restores_exactly_fetching_chunks_about_once() {
    let env = Env::init("64K");
    // 24 MiB of incompressible data: every cluster allocated, every chunk distinct.
    let (_, img, disk) = shuffled_qcow2(&env, 24);
    let original = std::fs::read(&img).unwrap();

    let a = env.archive(&img, "shuffled");
    let id = a["snapshot"].as_str().unwrap().to_string();
    let chunks = u(&a, "chunks");
    // Each chunk overlaps about two clusters, read at random times: a cache
    // of a fraction of the disk (a 1 MiB window, 2 MiB cache, 24 MiB disk)
    // refetches at most about once per use; reading ahead in stream order it
    // fetched a whole window per cluster (~20× the chunks).
    for (window, most) in [(Some("1"), 25), (None, 15)] {
        let out = env.path("restored.qcow2");
        let r = restore(&env, &id, &out, window, &[]);
        assert!(std::fs::read(&out).unwrap() == original, "window {window:?}: the restored image differs from the archived one");
        let fetched = u(&r, "chunks_fetched");
        assert!(fetched >= chunks, "window {window:?}: restore fetched {fetched} chunks, fewer than the image's {chunks}");
        assert!(
            fetched * 10 <= chunks * most,
            "window {window:?}: restore fetched {fetched} chunks for an image of {chunks}: the reader thrashes"
        );
    }

    // The guest disk is read in stream order (no plan): each chunk once, exact.
    let out = env.path("restored.raw");
    let r = restore(&env, &id, &out, Some("1"), &["--disk-format", "raw"]);
    assert!(std::fs::read(&out).unwrap() == disk, "the guest disk differs");
    assert!(u(&r, "chunks_fetched") <= chunks, "a stream-order restore fetched {} of {chunks} chunks", u(&r, "chunks_fetched"));
}

/// Records the guest reads a rebuild makes.
struct Recorder<'a> {
    inner: &'a mut MemSink,
    reads: Vec<(u64, u64)>,
}
impl RebuildSource for Recorder<'_> {
    fn read_guest(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.reads.push((off, buf.len() as u64));
        self.inner.read_guest(off, buf)
    }
    fn read_literal(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_literal(off, buf)
    }
}

/// Reads with contiguous neighbours joined (the rebuild reads long segments in pieces).
fn joined(reads: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(o, l) in reads {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == o => last.1 += l,
            _ => out.push((o, l)),
        }
    }
    out
}

/// The order the reader is told (`rebuild::guest_reads`) is the order the
/// rebuild reads in, for compressed images (clusters read a window ahead) and
/// shuffled ones.
#[test]
fn guest_reads_is_the_order_rebuild_reads_in() {
    let t = tmp();
    let raw = t.path().join("d.raw");
    // Every third MiB noise (stored uncompressed), the rest text (compressed
    // by -c), a partial cluster at the end.
    let mut rng = Rng(11);
    let disk: Vec<u8> = (0..(24usize << 20) + 4096)
        .map(|i| if (i >> 20) % 3 == 0 { rng.next() as u8 } else { b"imgarc restore order lorem ipsum "[i % 33] })
        .collect();
    std::fs::write(&raw, disk).unwrap();
    // 1 MiB clusters: 16 compressed clusters make one rebuild window, so this image has two.
    for (name, opts) in [
        ("plain.qcow2", &[][..]),
        ("zlib.qcow2", &["-c"][..]),
        ("zstd.qcow2", &["-c", "-o", "compression_type=zstd"][..]),
        ("zlib-1m.qcow2", &["-c", "-o", "cluster_size=1M"][..]),
    ] {
        let img = convert(t.path(), &raw, name, opts);
        let (bytes, d) = decompose_file(&img, &Policy::default(), true);
        let (d, mut sink) = d.unwrap();
        let mut rec = Recorder { inner: &mut sink, reads: Vec::new() };
        let mut out = Vec::new();
        rebuild::rebuild(&d.recipe, &mut rec, &mut out).unwrap();
        assert!(out == bytes, "{name}: rebuild is not exact");
        assert!(!rec.reads.is_empty(), "{name}: the rebuild read no guest data");
        if name == "zlib-1m.qcow2" {
            assert!(!rec.reads.is_sorted(), "{name}: the reads are in guest order (one window only?)");
        }
        assert_eq!(
            joined(&rebuild::guest_reads(&d.recipe).unwrap()),
            joined(&rec.reads),
            "{name}: guest_reads differs from the rebuild's reads"
        );
    }
}

/// Archived after its raw disk, a shuffled image adds almost nothing: 80 MiB,
/// so that the disorder exceeds the archive's 32 MiB reorder window and the
/// guest data is spilled and chunked in guest order (chunked as it came, ~90 %
/// of it was new). The restore is exact, and nothing is left in the cache directory.
#[test]
fn shuffled_qcow2_dedups_against_its_raw_disk() {
    let env = Env::init("64K");
    let (raw, img, disk) = shuffled_qcow2(&env, 80);
    let r = env.archive(&raw, "raw");
    assert!(u(&r, "new_bytes") >= 80 << 20, "the random disk deduplicated against nothing?");
    let cache_before = cache_files(&env);
    let a = env.archive(&img, "shuffled");
    let new = u(&a, "new_bytes");
    assert!(new * 20 <= 80 << 20, "the shuffled image added {new} new bytes of an 80 MiB disk stored already");
    assert_eq!(cache_files(&env), cache_before, "the spill left a file in the cache directory");
    let out = env.path("restored.qcow2");
    restore(&env, &s(&a, "snapshot"), &out, None, &[]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&img).unwrap(), "the restored image differs");
    let out = env.path("restored.raw");
    restore(&env, &s(&a, "snapshot"), &out, None, &["--disk-format", "raw"]);
    assert!(std::fs::read(&out).unwrap() == disk, "the guest disk of the shuffled image differs");
}

/// The names under the cache directory.
fn cache_files(env: &Env) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    crate::support::walk(&env.cache, &mut v);
    v.sort();
    v
}

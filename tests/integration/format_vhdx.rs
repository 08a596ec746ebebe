//! VHDX through the real binary: images made by `qemu-img convert` from a 64 MiB ext4 disk
//! (dynamic, fixed, 1 MiB blocks) are archived, restored byte-exactly and as raw, dedup
//! against their raw twin; the writer's output (from raw and QCOW2 snapshots) passes
//! `qemu-img check` / `qemu-img compare` and archives again exactly; hostile files are refused
//! with a clear error, never a panic.
use crate::support::qcow2_util::{qemu_img, tmp};
use crate::support::{bytes, s, skip_or_fail_in_ci, u, Env};
use std::path::{Path, PathBuf};

const MIB: usize = 1 << 20;

fn have(tool: &str, arg: &str) -> bool {
    std::process::Command::new(tool).arg(arg).output().is_ok()
}

/// A 64 MiB raw disk with an ext4 file system holding text, noise and a sparse tail, or `None`
/// (with a `skipped:` line) when qemu-img or mkfs.ext4 is missing.
fn ext4_disk(dir: &Path) -> Option<PathBuf> {
    if !have("qemu-img", "--version") || !have("mkfs.ext4", "-V") {
        skip_or_fail_in_ci("qemu-img (qemu-utils) or mkfs.ext4 (e2fsprogs) not installed");
        return None;
    }
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::create_dir_all(tree.join("var/lib")).unwrap();
    std::fs::write(tree.join("etc/os-release"), bytes(40_000, 1, true)).unwrap();
    std::fs::write(tree.join("var/lib/noise.bin"), bytes(9 * MIB, 2, false)).unwrap();
    std::fs::write(tree.join("var/lib/log.txt"), bytes(5 * MIB, 3, true)).unwrap();
    std::fs::write(tree.join("var/lib/more.bin"), bytes(3 * MIB, 4, false)).unwrap();
    let img = dir.join("disk.raw");
    let o = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "nodiscard", "-d", tree.to_str().unwrap(), img.to_str().unwrap(), "64M"])
        .output()
        .unwrap();
    assert!(o.status.success(), "mkfs.ext4 failed: {}", String::from_utf8_lossy(&o.stderr));
    Some(img)
}

fn to_vhdx(raw: &Path, out: &Path, opts: &[&str]) {
    let mut a = vec!["convert", "-f", "raw", "-O", "vhdx"];
    a.extend_from_slice(opts);
    a.extend([raw.to_str().unwrap(), out.to_str().unwrap()]);
    qemu_img(&a);
}

fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

/// Archives `img`, checks its byte-exact restore and raw view; returns the archive JSON.
fn archive_exact(env: &Env, img: &Path, name: &str) -> serde_json::Value {
    let a = env.archive(img, name);
    assert_eq!(s(&a, "format"), "vhdx", "{a}");
    assert!(a["opaque"].is_null(), "{name} stored opaque: {a}");
    let snap = s(&a, "snapshot");
    assert!(env.restore_bytes(&snap) == std::fs::read(img).unwrap(), "{name}: restore is not byte-identical");
    let conv = env.path(&format!("{name}.raw-view"));
    env.ok(&["restore", &snap, "-o", p(&conv), "--disk-format", "raw"]);
    let qraw = env.path(&format!("{name}.qemu-raw"));
    qemu_img(&["convert", "-f", "vhdx", "-O", "raw", p(img), p(&qraw)]);
    assert!(std::fs::read(&conv).unwrap() == std::fs::read(&qraw).unwrap(), "{name}: guest view differs from qemu-img convert -O raw");
    a
}

#[test]
fn qemu_images_restore_exactly_and_dedup_with_their_raw_twin() {
    let t = tmp();
    let Some(raw) = ext4_disk(t.path()) else { return };
    for (name, opts) in [
        ("dynamic.vhdx", &[][..]),
        ("fixed.vhdx", &["-o", "subformat=fixed"][..]),
        ("bs1m.vhdx", &["-o", "block_size=1M"][..]),
        ("fixed-S0.vhdx", &["-S", "0", "-o", "subformat=fixed"][..]),
    ] {
        let env = Env::init("64K");
        let twin = env.archive(&raw, "disk.raw");
        assert_eq!(s(&twin, "format"), "raw");
        let img = env.path(name);
        to_vhdx(&raw, &img, opts);
        let a = archive_exact(&env, &img, name);
        let (added, base) = (u(&a, "stored_bytes_added"), u(&twin, "stored_bytes_added"));
        eprintln!("{name}: file {} bytes, raw twin stored {base}, vhdx added {added}", std::fs::metadata(&img).unwrap().len());
        assert!(added < base / 50 + (256 << 10), "{name} added {added} bytes against the raw twin's {base}");
        let i = env.json(&["inspect", &s(&a, "snapshot")]);
        assert_eq!(s(&i, "format"), "vhdx");
        assert_eq!(u(&i, "virtual_size"), 64 << 20);
        assert_eq!(s(&i, "subformat"), if name.starts_with("fixed") { "fixed" } else { "dynamic" });
        assert_eq!(u(&i, "block_size"), if name == "bs1m.vhdx" { 1 << 20 } else { 8 << 20 });
        assert!(u(&i, "allocated_blocks") > 0);
        assert!(s(&i, "creator").starts_with("QEMU"), "{i}");
        assert_eq!(env.json(&["check", "--read-data"])["ok"], true);
    }
}

#[test]
fn writer_output_passes_qemu_img_check_and_compare() {
    let t = tmp();
    let Some(raw) = ext4_disk(t.path()) else { return };
    let env = Env::init("64K");
    let qcow = env.path("disk.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", p(&raw), p(&qcow)]);
    let snaps = [s(&env.archive(&raw, "disk.raw"), "snapshot"), s(&env.archive(&qcow, "disk.qcow2"), "snapshot")];
    for (k, snap) in snaps.iter().enumerate() {
        for sub in [None, Some("dynamic"), Some("fixed")] {
            let out = env.path(&format!("out-{k}-{}.vhdx", sub.unwrap_or("default")));
            let mut args = vec!["restore", snap.as_str(), "-o", p(&out), "--disk-format", "vhdx"];
            if let Some(sub) = sub {
                args.extend(["--subformat", sub]);
            }
            env.ok(&args);
            qemu_img(&["check", "-f", "vhdx", p(&out)]);
            qemu_img(&["compare", "-f", "vhdx", "-F", "raw", p(&out), p(&raw)]);
            let len = std::fs::metadata(&out).unwrap().len();
            if sub == Some("fixed") {
                assert_eq!(len, (17 + 64) << 20, "fixed: every 32 MiB block stored after the metadata at 16 MiB");
            }
            // The written file archives again (decomposed, not opaque) and restores exactly.
            let a = archive_exact(&env, &out, &format!("re-{k}-{}", sub.unwrap_or("default")));
            assert!(u(&a, "stored_bytes_added") < 256 << 10, "re-archive stored too much: {a}");
        }
    }
    // Subformats and options the writer does not have are refused clearly.
    for extra in [&["--subformat", "streamOptimized"][..], &["--compress"][..]] {
        let out = env.path("refused.vhdx");
        let mut args = vec!["restore", snaps[0].as_str(), "-o", p(&out), "--disk-format", "vhdx"];
        args.extend_from_slice(extra);
        let o = env.run(&args);
        assert!(!o.status.success() && o.status.code() != Some(101), "{extra:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("vhdx"), "{extra:?}: {err}");
    }
}

// ---------- hostile inputs ----------

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// (BAT offset, metadata offset) from the first region table.
fn regions(f: &[u8]) -> (usize, usize) {
    let (mut bat, mut meta) = (0, 0);
    for i in 0..le32(f, 0x30008) as usize {
        let e = 0x30010 + 32 * i;
        let off = le64(f, e + 16) as usize;
        match f[e] {
            0x66 => bat = off,
            0x06 => meta = off,
            _ => {}
        }
    }
    (bat, meta)
}

fn reheader(f: &mut [u8], edit: impl Fn(&mut [u8])) {
    for at in [0x10000usize, 0x20000] {
        let h = &mut f[at..at + 4096];
        edit(h);
        h[4..8].fill(0);
        let c = imgarc::crc32c::crc32c(h);
        h[4..8].copy_from_slice(&c.to_le_bytes());
    }
}

/// Archives `bytes` (as `name`) and expects a clear refusal: exit code 1 (never a panic's 101)
/// and `want` in the message.
fn refused(env: &Env, name: &str, data: &[u8], want: &str) {
    let path = env.path(name);
    std::fs::write(&path, data).unwrap();
    let o = env.run(&["archive", p(&path)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{name}: {err}");
    assert!(err.contains(want), "{name}: expected {want:?} in: {err}");
}

#[test]
fn hostile_vhdx_files_are_refused_never_a_panic() {
    if !have("qemu-img", "--version") {
        skip_or_fail_in_ci("qemu-img (qemu-utils) not installed");
        return;
    }
    let env = Env::init("64K");
    let raw = env.path("small.raw");
    let mut disk = vec![0u8; 8 * MIB];
    disk[..3 * MIB].copy_from_slice(&bytes(3 * MIB, 9, false));
    disk[5 * MIB..6 * MIB].copy_from_slice(&bytes(MIB, 10, true));
    std::fs::write(&raw, &disk).unwrap();
    let img = env.path("small.vhdx");
    to_vhdx(&raw, &img, &["-o", "block_size=1M"]);
    let good = std::fs::read(&img).unwrap();
    let (bat, meta) = regions(&good);
    // Sanity: the pristine file decomposes.
    archive_exact(&env, &img, "small.vhdx");

    // Parent references: HasParent, and a parent locator item.
    let fp = meta + le32(&good, meta + 32 + 16) as usize; // qemu writes File Parameters first
    let mut f = good.clone();
    f[fp + 4] |= 2;
    refused(&env, "has-parent.vhdx", &f, "differencing");
    let mut f = good.clone();
    let n = u16::from_le_bytes([f[meta + 10], f[meta + 11]]) as usize;
    let e = meta + 32 + 32 * n;
    f[e..e + 16].copy_from_slice(&[0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c]);
    f[e + 16..e + 20].copy_from_slice(&(0x20000u32).to_le_bytes());
    f[e + 20..e + 24].copy_from_slice(&64u32.to_le_bytes());
    f[e + 24..e + 28].copy_from_slice(&6u32.to_le_bytes());
    f[meta + 10..meta + 12].copy_from_slice(&((n + 1) as u16).to_le_bytes());
    refused(&env, "parent-locator.vhdx", &f, "parent locator");
    // A log to replay.
    let mut f = good.clone();
    reheader(&mut f, |h| h[48..64].fill(0x42));
    refused(&env, "log.vhdx", &f, "qemu-img check -r all");
    // Two guest blocks on one file block; a block past the end of the file.
    let mut f = good.clone();
    let first = le64(&f, bat);
    assert_eq!(first & 7, 6, "block 0 is allocated");
    f[bat + 8..bat + 16].copy_from_slice(&first.to_le_bytes());
    refused(&env, "overlap.vhdx", &f, "overlap");
    let mut f = good.clone();
    f[bat..bat + 8].copy_from_slice(&((1u64 << 40) | 6).to_le_bytes());
    refused(&env, "beyond.vhdx", &f, "beyond the end of the file");
    // A huge virtual size the BAT cannot map; one over the policy limit.
    let vs = meta + le32(&good, meta + 64 + 16) as usize; // Virtual Disk Size is the second item
    let mut f = good.clone();
    f[vs..vs + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    refused(&env, "huge-bat.vhdx", &f, "entries");
    let mut f = good.clone();
    f[vs..vs + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    refused(&env, "huge-size.vhdx", &f, "limit");
    // Truncated at structure boundaries and inside the data.
    for cut in [100usize, 0x20000, 0x48000, 0x180000, good.len() - 4096] {
        refused(&env, &format!("cut-{cut:x}.vhdx"), &good[..cut], "vhdx");
    }
    // Wrong declared formats are refused either way.
    let o = env.run(&["archive", p(&img), "--disk-format", "qcow2"]);
    assert!(!o.status.success() && o.status.code() != Some(101), "{o:?}");
    let o = env.run(&["archive", p(&raw), "--disk-format", "vhdx"]);
    assert!(!o.status.success() && o.status.code() != Some(101), "{o:?}");
}

/// The fuzz target's template is a valid VHDX (so mutations start past the checksums), and its
/// committed seeds reach the refusals they are named after.
#[test]
fn fuzz_template_is_valid_and_seeds_reach_their_refusals() {
    use imgarc::format::{vhdx, DecomposeSink, Policy};
    struct Count(u64);
    impl DecomposeSink for Count {
        fn guest(&mut self, _: u64, d: &[u8]) -> std::io::Result<()> {
            self.0 += d.len() as u64;
            Ok(())
        }
        fn literal(&mut self, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
    }
    let verdict = |seed: &[u8]| {
        let f = crate::fuzz_targets::vhdx_file(seed);
        let mut c = Count(0);
        vhdx::decompose(&mut &f[..], Some(f.len() as u64), &Policy::default(), &mut c).map(|d| (d, c.0))
    };
    let (d, guest) = verdict(&[0]).expect("the template decomposes");
    assert_eq!((d.virtual_size, guest, d.info["allocated_blocks"].as_u64()), (3 << 20, 1 << 20, Some(1)));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/vhdx");
    for (seed, want) in [
        ("log-guid", "log to replay"),
        ("has-parent", "differencing"),
        ("partially-present", "PARTIALLY_PRESENT"),
        ("block-on-metadata", "overlaps"),
        ("bad-crc", "header"),
        ("truncated", "beyond the end"),
        ("vsize-huge", "exceeds the limit"),
        ("bat-too-small", "entries"),
    ] {
        let e = verdict(&std::fs::read(dir.join(seed)).unwrap()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(want), "seed {seed}: expected {want:?}, got {e:?}");
    }
}

/// Past the first chunk (128 blocks of 32 MiB for imgarc, 256 of 16 MiB for qemu at 5 GiB) the BAT
/// interleaves sector-bitmap entries: data beyond it lands where qemu reads it, both directions.
#[test]
fn sparse_5_gib_disk_crosses_a_sector_bitmap_chunk() {
    if !have("qemu-img", "--version") {
        skip_or_fail_in_ci("qemu-img (qemu-utils) not installed");
        return;
    }
    let env = Env::init("64K");
    let raw = env.path("big.raw");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&raw).unwrap();
        f.set_len(5 << 30).unwrap();
        for (at, seed) in [(10u64 << 20, 1u64), (4700 << 20, 2), ((5 << 30) - 4096, 3)] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&bytes(if seed == 2 { 3 * MIB } else { 4096 }, seed, false)).unwrap();
        }
    }
    let snap = s(&env.archive(&raw, "big.raw"), "snapshot");
    let out = env.path("big.vhdx");
    env.ok(&["restore", &snap, "-o", p(&out), "--disk-format", "vhdx"]);
    qemu_img(&["check", "-f", "vhdx", p(&out)]);
    qemu_img(&["compare", "-f", "vhdx", "-F", "raw", p(&out), p(&raw)]);
    let q = env.path("bigq.vhdx");
    to_vhdx(&raw, &q, &[]);
    // Not archive_exact: that reads both 5 GiB raw views into memory; qemu-img compare streams.
    let a = env.archive(&q, "bigq.vhdx");
    assert!(a["opaque"].is_null() && u(&a, "stored_bytes_added") < 256 << 10, "{a}");
    let snap = s(&a, "snapshot");
    assert!(env.restore_bytes(&snap) == std::fs::read(&q).unwrap(), "bigq.vhdx: restore is not byte-identical");
    let view = env.path("bigq.raw-view");
    env.ok(&["restore", &snap, "-o", p(&view), "--disk-format", "raw"]);
    qemu_img(&["compare", "-f", "raw", "-F", "raw", p(&view), p(&raw)]);
    assert_eq!(u(&env.json(&["inspect", &s(&a, "snapshot")]), "bat_entries"), 320 + 1);
}

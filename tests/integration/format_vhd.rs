//! VHD through the real binary: fixed and dynamic images made by `qemu-img convert` from a
//! 64 MiB ext4 disk (creators `qemu` and, with `force_size=on`, `qem2`) archive and restore
//! byte-exactly, read as qemu reads them, dedup against their raw twin; `restore --disk-format
//! vhd` writes files qemu reads as the guest disk (`qemu-img check` does not support vpc:
//! `qemu-img compare` and `qemu-img info` are the oracles); hostile files are refused.
use crate::support::qcow2_util::{qemu_img, run};
use crate::support::{s, skip_or_fail_in_ci, u, Env};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

fn tools() -> bool {
    for (tool, arg) in [("qemu-img", "--version"), ("mkfs.ext4", "-V")] {
        if Command::new(tool).arg(arg).output().is_err() {
            skip_or_fail_in_ci(&format!("{tool} is not installed"));
            return false;
        }
    }
    true
}

/// A 64 MiB raw disk holding an ext4 file system with real files (text and noise).
fn ext4_disk(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    for i in 0..40u64 {
        std::fs::write(src.join("docs").join(format!("f{i}.txt")), crate::support::bytes(100_000 + 7_919 * i as usize, i, true)).unwrap();
        std::fs::write(src.join(format!("n{i}.bin")), crate::support::bytes(50_000 + 3_001 * i as usize, 100 + i, false)).unwrap();
    }
    let disk = dir.join("disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(64 * MIB).unwrap();
    run("mkfs.ext4", &["-q", "-F", "-d", src.to_str().unwrap(), disk.to_str().unwrap()]);
    disk
}

fn vpc(dir: &Path, raw: &Path, name: &str, opts: &str) -> PathBuf {
    let out = dir.join(name);
    qemu_img(&["convert", "-f", "raw", "-O", "vpc", "-o", opts, raw.to_str().unwrap(), out.to_str().unwrap()]);
    out
}

fn qemu_raw(dir: &Path, img: &Path) -> Vec<u8> {
    let out = dir.join(format!("{}.qemu.raw", img.file_name().unwrap().to_str().unwrap()));
    qemu_img(&["convert", "-f", "vpc", "-O", "raw", img.to_str().unwrap(), out.to_str().unwrap()]);
    std::fs::read(out).unwrap()
}

fn archive_vhd(env: &Env, path: &Path, name: &str) -> serde_json::Value {
    env.json(&["archive", path.to_str().unwrap(), "--name", name, "--disk-format", "vhd"])
}

fn restore_to(env: &Env, snap: &str, name: &str, extra: &[&str]) -> PathBuf {
    let out = env.path(name);
    let mut a = vec!["restore", snap, "-o", out.to_str().unwrap()];
    a.extend_from_slice(extra);
    env.ok(&a);
    out
}

fn vsize(img: &Path) -> u64 {
    // `-f vpc`: qemu probes a fixed VHD (no signature at 0) as raw, as Glance does.
    let info: serde_json::Value = serde_json::from_str(&qemu_img(&["info", "-f", "vpc", "--output=json", img.to_str().unwrap()])).unwrap();
    info["virtual-size"].as_u64().unwrap()
}

#[test]
fn qemu_made_fixed_and_dynamic_roundtrip_read_as_qemu_and_dedup() {
    if !tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let raw = ext4_disk(t.path());
    for (name, opts, creator) in [
        ("dyn.vhd", "subformat=dynamic", "qemu"),
        ("fixed.vhd", "subformat=fixed", "qemu"),
        ("dyn-force.vhd", "subformat=dynamic,force_size=on", "qem2"),
        ("fixed-force.vhd", "subformat=fixed,force_size=on", "qem2"),
    ] {
        let env = Env::init("64K");
        let twin = env.archive(&raw, "twin.raw");
        let img = vpc(t.path(), &raw, name, opts);
        let a = archive_vhd(&env, &img, name);
        assert_eq!(s(&a, "format"), "vhd", "{name}: {a}");
        assert!(a["opaque"].is_null(), "{name}: {a}");
        let (added, twin_added) = (u(&a, "stored_bytes_added"), u(&twin, "stored_bytes_added"));
        eprintln!("{name}: {} bytes, stored_bytes_added {added} (raw twin {twin_added})", std::fs::metadata(&img).unwrap().len());
        assert!(added < twin_added / 50 + (256 << 10), "{name}: {added} bytes added over a raw twin of {twin_added}");
        let snap = s(&a, "snapshot");
        let back = restore_to(&env, &snap, &format!("{name}.back"), &[]);
        assert!(std::fs::read(&back).unwrap() == std::fs::read(&img).unwrap(), "{name}: restore is not byte-identical");
        env.ok(&["check", "--read-data"]);
        let guest = restore_to(&env, &snap, &format!("{name}.raw"), &["--disk-format", "raw"]);
        let qemu = qemu_raw(t.path(), &img);
        assert!(std::fs::read(&guest).unwrap() == qemu, "{name}: guest view differs from qemu-img convert -O raw");
        // The snapshot records the decomposer's info (what `inspect SNAPSHOT` shows).
        let i = env.json(&["inspect", &snap]);
        assert_eq!(i["creator_app"], creator, "{name}: inspect shows {i}");
        assert_eq!(i["subformat"], if name.starts_with("dyn") { "dynamic" } else { "fixed" }, "{name}: {i}");
        // qemu-made (creator qemu) files are sized by CHS, rounded up above 64 MiB; qem2 keeps 64 MiB.
        let expect = vsize(&img);
        assert_eq!(qemu.len() as u64, expect);
        assert!((creator == "qem2") == (expect == 64 * MIB), "{name}: virtual size {expect}");
    }
}

#[test]
fn writer_output_reads_as_the_guest_disk_and_archives_again_exactly() {
    if !tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let raw = ext4_disk(t.path());
    let env = Env::init("64K");
    let raw_snap = s(&env.archive(&raw, "d.raw"), "snapshot");
    let q = t.path().join("d.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", raw.to_str().unwrap(), q.to_str().unwrap()]);
    let q_snap = s(&env.archive(&q, "d.qcow2"), "snapshot");
    for (from, snap) in [("raw", &raw_snap), ("qcow2", &q_snap)] {
        for sub in [None, Some("dynamic"), Some("fixed")] {
            let name = format!("{from}-{}.vhd", sub.unwrap_or("default"));
            let mut extra = vec!["--disk-format", "vhd"];
            if let Some(sub) = sub {
                extra.extend(["--subformat", sub]);
            }
            let out = restore_to(&env, snap, &name, &extra);
            qemu_img(&["compare", "-f", "vpc", "-F", "raw", out.to_str().unwrap(), raw.to_str().unwrap()]);
            // The exact size, not a CHS rounding: creator qem2 (qemu 2.6+ reads current_size).
            assert_eq!(vsize(&out), 64 * MIB, "{name}");
            let info = qemu_img(&["info", out.to_str().unwrap()]);
            // Probed without -f: a dynamic VHD is found by its signature, a fixed one reads as raw.
            let probed = if sub == Some("fixed") { "file format: raw" } else { "file format: vpc" };
            assert!(info.contains(probed), "{name}: {info}");
            let len = std::fs::metadata(&out).unwrap().len();
            if sub == Some("fixed") {
                assert_eq!(len, 64 * MIB + 512, "{name}");
            } else {
                // Dynamic: only the allocated 2 MiB blocks are stored.
                assert!(len < 64 * MIB, "{name}: {len} bytes");
            }
            let a = archive_vhd(&env, &out, &name);
            assert!(a["opaque"].is_null() && s(&a, "format") == "vhd", "{name}: {a}");
            assert!(u(&a, "stored_bytes_added") < 256 << 10, "{name}: {a}");
            let back = restore_to(&env, &s(&a, "snapshot"), &format!("{name}.back"), &[]);
            assert!(std::fs::read(&back).unwrap() == std::fs::read(&out).unwrap(), "{name}: re-archive is not exact");
        }
    }
    // Options the VHD writer does not have.
    for bad in [&["--subformat", "streamOptimized"][..], &["--compress"][..]] {
        let out = env.path("bad.vhd");
        let mut a = vec!["restore", raw_snap.as_str(), "-o", out.to_str().unwrap(), "--disk-format", "vhd"];
        a.extend_from_slice(bad);
        let o = env.run(&a);
        assert!(!o.status.success() && o.status.code() != Some(101), "{bad:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("vhd"), "{bad:?}: {err}");
    }
}

fn refix_checksum(b: &mut [u8], at: usize) {
    let sum = b.iter().enumerate().filter(|(i, _)| !(at..at + 4).contains(i)).fold(0u32, |s, (_, &x)| s.wrapping_add(x as u32));
    b[at..at + 4].copy_from_slice(&(!sum).to_be_bytes());
}

fn refused(env: &Env, bytes: &[u8], name: &str, declared: Option<&str>, why: &str) {
    let p = env.path(name);
    std::fs::write(&p, bytes).unwrap();
    let mut a = vec!["archive", p.to_str().unwrap(), "--name", name];
    if let Some(d) = declared {
        a.extend(["--disk-format", d]);
    }
    let o = env.run(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{name} was archived");
    assert_ne!(o.status.code(), Some(101), "{name}: panic: {err}");
    assert!(err.contains(why), "{name}: {err}");
}

#[test]
fn hostile_vhds_are_refused_with_the_reason() {
    if !tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("small.raw");
    let mut disk = crate::support::bytes(8 << 20, 5, true);
    disk[(3 << 20)..(5 << 20)].fill(0);
    std::fs::write(&raw, &disk).unwrap();
    let dynamic = std::fs::read(vpc(t.path(), &raw, "d.vhd", "subformat=dynamic")).unwrap();
    let fixed = std::fs::read(vpc(t.path(), &raw, "f.vhd", "subformat=fixed")).unwrap();
    let env = Env::init("64K");
    // A differencing disk names a parent.
    let mut b = dynamic.clone();
    b[60..64].copy_from_slice(&4u32.to_be_bytes());
    refix_checksum(&mut b[..512], 64);
    refused(&env, &b, "diff.vhd", Some("vhd"), "differencing");
    refused(&env, &b, "diff-undeclared.vhd", None, "differencing");
    // A parent locator in the dynamic header.
    let mut b = dynamic.clone();
    b[512 + 576..512 + 580].copy_from_slice(b"W2ku");
    refix_checksum(&mut b[512..1536], 36);
    refused(&env, &b, "locator.vhd", Some("vhd"), "names a parent");
    // Two BAT entries naming one block; a block past the end; a huge BAT.
    let mut b = dynamic.clone();
    let e0: [u8; 4] = b[1536..1540].try_into().unwrap();
    b[1540..1544].copy_from_slice(&e0);
    refused(&env, &b, "overlap.vhd", Some("vhd"), "overlaps");
    let mut b = dynamic.clone();
    b[1536..1540].copy_from_slice(&0x0800_0000u32.to_be_bytes());
    refused(&env, &b, "past.vhd", Some("vhd"), "past the end");
    let mut b = dynamic.clone();
    b[512 + 28..512 + 32].copy_from_slice(&0xffff_0000u32.to_be_bytes());
    refix_checksum(&mut b[512..1536], 36);
    refused(&env, &b, "huge-bat.vhd", Some("vhd"), "BAT");
    // Truncated files (the file's length is known: the tables are checked against it).
    refused(&env, &dynamic[..dynamic.len() / 2], "cut.vhd", Some("vhd"), "past the end of the file");
    refused(&env, &dynamic[..1000], "cut-header.vhd", Some("vhd"), "past the end of the file");
    // Raw bytes declared vhd; a fixed VHD whose footer was damaged.
    refused(&env, &disk, "raw-as-vhd.vhd", Some("vhd"), "not a VHD");
    let mut b = fixed.clone();
    let n = b.len();
    b[n - 400] ^= 1;
    refused(&env, &b, "bad-sum.vhd", Some("vhd"), "checksum");
    // A dynamic VHD declared qcow2: mismatch.
    refused(&env, &dynamic, "vhd-as-qcow2.vhd", Some("qcow2"), "declared");
    // A fixed VHD with no declared format is raw, as Glance sees it (its bytes are the disk + a footer).
    let p = env.path("fixed-undeclared.vhd");
    std::fs::write(&p, &fixed).unwrap();
    let a = env.archive(&p, "fixed-undeclared");
    assert_eq!(s(&a, "format"), "raw", "{a}");
}

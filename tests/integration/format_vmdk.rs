//! VMDK through the real binary: qemu-img-made monolithicSparse and streamOptimized images of a
//! 64 MiB ext4 disk round-trip byte for byte, their guest view is qemu's, they dedup against
//! the raw twin, the vmdk writer's output passes `qemu-img check` / `compare` and round-trips
//! again, and hostile files (parents, extents naming files, huge or overlapping tables,
//! truncation) are refused with a clear error, never a panic.
use crate::support::qcow2_util::{qemu_img, run};
use crate::support::*;
use std::path::{Path, PathBuf};

const SUBFORMATS: [&str; 2] = ["monolithicSparse", "streamOptimized"];

fn have(tool: &str, arg: &str) -> bool {
    std::process::Command::new(tool).arg(arg).output().is_ok_and(|o| o.status.success() || !o.stderr.is_empty())
}

/// A 64 MiB raw disk holding an ext4 file system with this repository's sources (real,
/// compressible content), or None (skipped) without qemu-img / mkfs.ext4.
fn ext4_disk(env: &Env) -> Option<PathBuf> {
    if !have("qemu-img", "--version") || !have("mkfs.ext4", "-V") {
        skip_or_fail_in_ci("qemu-img (qemu-utils) or mkfs.ext4 (e2fsprogs) not installed");
        return None;
    }
    let src = env.path("content");
    std::fs::create_dir_all(&src).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for d in ["src", "format-spec", "tests"] {
        run("cp", &["-r", root.join(d).to_str().unwrap(), src.to_str().unwrap()]);
    }
    // Incompressible files too (like a guest's .gz and .jpg): their grains are zlib stored blocks.
    std::fs::write(src.join("noise.bin"), bytes(4 << 20, 5, false)).unwrap();
    let raw = env.path("disk.raw");
    std::fs::File::create(&raw).unwrap().set_len(64 << 20).unwrap();
    run("mkfs.ext4", &["-q", "-F", "-E", "root_owner=0:0", "-d", src.to_str().unwrap(), raw.to_str().unwrap()]);
    Some(raw)
}

fn to_vmdk(env: &Env, raw: &Path, sub: &str) -> PathBuf {
    let out = env.path(&format!("disk.{sub}.vmdk"));
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", &format!("subformat={sub}"), raw.to_str().unwrap(), out.to_str().unwrap()]);
    out
}

fn restore_to(env: &Env, snap: &str, name: &str, extra: &[&str]) -> PathBuf {
    let out = env.path(name);
    let mut a = vec!["restore", snap, "-o", out.to_str().unwrap()];
    a.extend_from_slice(extra);
    env.ok(&a);
    out
}

fn check_written(path: &Path, raw: &Path) {
    qemu_img(&["check", "-f", "vmdk", path.to_str().unwrap()]);
    qemu_img(&["compare", "-q", "-f", "vmdk", "-F", "raw", path.to_str().unwrap(), raw.to_str().unwrap()]);
}

#[test]
fn qemu_vmdks_roundtrip_exactly_dedup_with_raw_and_show_the_guest() {
    let env = Env::init("64K");
    let Some(raw) = ext4_disk(&env) else { return };
    let raw_bytes = std::fs::read(&raw).unwrap();
    let twin = env.archive(&raw, "disk.raw");
    let twin_added = u(&twin, "stored_bytes_added");
    for sub in SUBFORMATS {
        let img = to_vmdk(&env, &raw, sub);
        let a = env.archive(&img, sub);
        assert_eq!(s(&a, "format"), "vmdk", "{a}");
        assert!(a["opaque"].is_null(), "{sub}: stored opaque: {a}");
        let added = u(&a, "stored_bytes_added");
        eprintln!("{sub}: file {} bytes, raw twin stored {twin_added}, vmdk added {added}", std::fs::metadata(&img).unwrap().len());
        assert!(added < twin_added / 50 + (256 << 10), "{sub} stored too much after the raw twin: {added} (twin {twin_added})");
        let snap = s(&a, "snapshot");
        assert!(env.restore_bytes(&snap) == std::fs::read(&img).unwrap(), "{sub} differs after restore");
        let conv = restore_to(&env, &snap, &format!("{sub}.raw"), &["--disk-format", "raw"]);
        let qemu_raw = env.path(&format!("{sub}.qemu.raw"));
        qemu_img(&["convert", "-f", "vmdk", "-O", "raw", img.to_str().unwrap(), qemu_raw.to_str().unwrap()]);
        let guest = std::fs::read(&conv).unwrap();
        assert!(guest == std::fs::read(&qemu_raw).unwrap() && guest == raw_bytes, "{sub}: guest view differs from qemu's");
        let i = env.json(&["inspect", &snap]);
        assert_eq!(s(&i, "subformat"), sub, "{i}");
        assert_eq!(u(&i, "virtual_size"), 64 << 20);
        assert!(u(&i, "allocated_grains") > 0, "{i}");
        if sub == "streamOptimized" {
            // Stock zlib reproduces qemu's compress() grains; incompressible ones are stored blocks.
            assert!(u(&i, "stored_grains") >= 60, "{i}");
            assert!(
                u(&i, "compressed_grains") > 0
                    && (u(&i, "reproduced_grains") + u(&i, "stored_grains")) * 100 >= u(&i, "compressed_grains") * 98,
                "{i}"
            );
        }
        let fi = env.json(&["inspect", img.to_str().unwrap()]);
        assert_eq!(s(&fi, "format"), "vmdk", "{fi}");
    }
    env.ok(&["check", "--read-data"]);
}

#[test]
fn vmdk_writer_output_passes_qemu_and_roundtrips() {
    let env = Env::init("64K");
    let Some(raw) = ext4_disk(&env) else { return };
    let qcow = env.path("disk.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", raw.to_str().unwrap(), qcow.to_str().unwrap()]);
    let raw_snap = s(&env.archive(&raw, "raw"), "snapshot");
    let qcow_snap = s(&env.archive(&qcow, "qcow2"), "snapshot");
    for (from, snap) in [("raw", &raw_snap), ("qcow2", &qcow_snap)] {
        for (sub, extra) in [
            ("default", &[][..]),
            ("streamOptimized", &["--subformat", "streamOptimized"][..]),
            ("monolithicSparse", &["--subformat", "monolithicSparse"][..]),
        ] {
            let mut args = vec!["--disk-format", "vmdk"];
            args.extend_from_slice(extra);
            let out = restore_to(&env, snap, &format!("w-{from}-{sub}.vmdk"), &args);
            check_written(&out, &raw);
            let want = if sub == "monolithicSparse" { "monolithicSparse" } else { "streamOptimized" };
            // The written file is itself a decomposable vmdk that restores byte for byte.
            let again = env.archive(&out, &format!("again-{from}-{sub}"));
            assert!(again["opaque"].is_null(), "{again}");
            let info = env.json(&["inspect", &s(&again, "snapshot")]);
            assert_eq!(s(&info, "subformat"), want, "{info}");
            assert!(env.restore_bytes(&s(&again, "snapshot")) == std::fs::read(&out).unwrap(), "{from} {sub}: rewritten vmdk differs");
            if want == "streamOptimized" {
                // imgarc writes what it reads back as exactly reproducible grains.
                assert_eq!(u(&info, "literal_grains"), 0, "{info}");
            }
        }
    }
    for bad in [&["--subformat", "fixed"][..], &["--compress"][..]] {
        let out = env.path("bad.vmdk");
        let mut a = vec!["restore", &raw_snap, "-o", out.to_str().unwrap(), "--disk-format", "vmdk"];
        a.extend_from_slice(bad);
        let o = env.run(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && o.status.code() != Some(101), "{bad:?}: {err}");
        assert!(err.contains("subformat") || err.contains("--compress"), "{bad:?}: {err}");
    }
}

/// Replaces `from` by `to` (same length) in a copy of `img`.
fn patched(env: &Env, img: &[u8], name: &str, from: &[u8], to: &[u8]) -> PathBuf {
    assert_eq!(from.len(), to.len());
    let at = img.windows(from.len()).position(|w| w == from).unwrap_or_else(|| panic!("{name}: pattern not found"));
    let mut v = img.to_vec();
    v[at..at + to.len()].copy_from_slice(to);
    let p = env.path(name);
    std::fs::write(&p, v).unwrap();
    p
}

fn refused(env: &Env, p: &Path, needles: &[&str]) {
    let o = env.run(&["archive", p.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{}: archived: {}", p.display(), String::from_utf8_lossy(&o.stdout));
    assert_ne!(o.status.code(), Some(101), "{}: panic: {err}", p.display());
    assert!(needles.iter().any(|n| err.contains(n)), "{}: {err}", p.display());
}

#[test]
fn hostile_vmdks_are_refused_clearly() {
    let env = Env::init("64K");
    if !have("qemu-img", "--version") {
        return skip_or_fail_in_ci("qemu-img (qemu-utils) not installed");
    }
    let raw = env.path("small.raw");
    std::fs::write(&raw, bytes(4 << 20, 7, true)).unwrap();
    let ms_path = to_vmdk(&env, &raw, "monolithicSparse");
    let so_path = to_vmdk(&env, &raw, "streamOptimized");
    let ms = std::fs::read(&ms_path).unwrap();
    let so = std::fs::read(&so_path).unwrap();

    // The descriptor names a parent, another extent kind, or an unknown key.
    refused(&env, &patched(&env, &ms, "parent.vmdk", b"parentCID=ffffffff", b"parentCID=1234abcd"), &["parent"]);
    refused(&env, &patched(&env, &ms, "flat.vmdk", b" SPARSE ", b" FLAT   "), &["SPARSE"]);
    refused(&env, &patched(&env, &ms, "hint.vmdk", b"ddb.adapterType", b"parentFileNameH"), &["whitelist"]);
    refused(&env, &patched(&env, &so, "type.vmdk", b"streamOptimized", b"monolithicFlat\""), &["createType", "monolithicFlat"]);
    // qemu's own differencing image and a text descriptor naming a flat extent.
    let child = env.path("child.vmdk");
    qemu_img(&["create", "-f", "vmdk", "-b", ms_path.to_str().unwrap(), "-F", "vmdk", child.to_str().unwrap()]);
    refused(&env, &child, &["parent"]);
    let flat = env.path("flat-desc.vmdk");
    qemu_img(&["create", "-f", "vmdk", "-o", "subformat=monolithicFlat", flat.to_str().unwrap(), "1M"]);
    refused(&env, &flat, &["descriptor file", "other files"]);

    // A capacity beyond any limit, a grain size out of range.
    let mut huge = ms.clone();
    huge[12..20].copy_from_slice(&(1u64 << 62).to_le_bytes());
    std::fs::write(env.path("huge.vmdk"), &huge).unwrap();
    refused(&env, &env.path("huge.vmdk"), &["limit", "capacity", "overflow"]);
    let mut grain = ms.clone();
    grain[20..28].copy_from_slice(&3u64.to_le_bytes());
    std::fs::write(env.path("grain.vmdk"), &grain).unwrap();
    refused(&env, &env.path("grain.vmdk"), &["grainSize"]);

    // Two guest grains mapped to one file grain (the second GTE copies the first).
    let gd_offset = u64::from_le_bytes(ms[56..64].try_into().unwrap()) as usize * 512;
    let gt0 = u32::from_le_bytes(ms[gd_offset..gd_offset + 4].try_into().unwrap()) as usize * 512;
    let mut dup = ms.clone();
    let first = dup[gt0..gt0 + 4].to_vec();
    dup[gt0 + 4..gt0 + 8].copy_from_slice(&first);
    std::fs::write(env.path("dup.vmdk"), &dup).unwrap();
    refused(&env, &env.path("dup.vmdk"), &["one file grain"]);
    // A streamOptimized grain marker whose LBA disagrees with the grain table.
    let over = u64::from_le_bytes(so[64..72].try_into().unwrap()) as usize * 512;
    let mut lba = so.clone();
    lba[over..over + 8].copy_from_slice(&(128u64 * 40).to_le_bytes());
    std::fs::write(env.path("lba.vmdk"), &lba).unwrap();
    refused(&env, &env.path("lba.vmdk"), &["grain"]);

    // Truncated inside the header, the descriptor, the grain tables and a compressed grain.
    for (name, img, cut) in
        [("t1", &ms, 300), ("t2", &ms, 2048), ("t3", &ms, 30 * 512 + 100), ("t4", &so, so.len() - 700), ("t5", &so, over + 200)]
    {
        let p = env.path(&format!("{name}.vmdk"));
        std::fs::write(&p, &img[..cut]).unwrap();
        let o = env.run(&["archive", p.to_str().unwrap()]);
        assert_ne!(o.status.code(), Some(101), "{name}: panic: {}", String::from_utf8_lossy(&o.stderr));
        if o.status.success() {
            // Only a cut that leaves a readable image may archive, and then it restores exactly.
            let a: serde_json::Value = serde_json::from_slice(&env.run(&["--json", "archive", p.to_str().unwrap()]).stdout).unwrap();
            assert!(env.restore_bytes(&s(&a, "snapshot")) == img[..cut], "{name}");
        }
    }
    // Declared as vmdk but a qcow2: refused, naming the formats.
    let q = env.path("q.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", raw.to_str().unwrap(), q.to_str().unwrap()]);
    let o = env.run(&["archive", q.to_str().unwrap(), "--disk-format", "vmdk"]);
    assert_ne!(o.status.code(), Some(101));
    assert!(!o.status.success(), "a qcow2 declared vmdk archived");
}

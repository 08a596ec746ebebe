//! VDI through the real binary: images qemu-img makes from a 64 MiB ext4 disk (dynamic and fixed) archive and
//! restore byte-exactly, convert to raw exactly, dedup against their raw twin; `restore --disk-format vdi` output
//! passes `qemu-img check` and `compare` and archives again exactly; hostile images are refused, never a panic.
use crate::support::qcow2_util::{qemu_img, tmp};
use crate::support::{bytes, s, skip_or_fail_in_ci, u, Env};
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

fn have(tool: &str) -> bool {
    std::process::Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Whether qemu-img and mkfs.ext4 are here (a test without them says `skipped:`, and fails in CI).
fn tools() -> bool {
    if !have("qemu-img") {
        skip_or_fail_in_ci("qemu-img (qemu-utils) not installed: no VDI images");
        return false;
    }
    if std::process::Command::new("mkfs.ext4").arg("-V").output().is_err() {
        skip_or_fail_in_ci("mkfs.ext4 (e2fsprogs) not installed: no ext4 guest disk");
        return false;
    }
    true
}

/// A 64 MiB raw disk holding an ext4 file system with text and incompressible files.
fn ext4_disk(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    let mut text = String::new();
    for i in 0..20_000 {
        text.push_str(&format!("vdi guest line {i}: the quick brown fox\n"));
    }
    std::fs::write(tree.join("etc/text.conf"), text).unwrap();
    std::fs::write(tree.join("noise.bin"), bytes(12 << 20, 15, false)).unwrap();
    std::fs::write(tree.join("more.bin"), bytes(5 << 20, 16, false)).unwrap();
    let img = dir.join("disk.raw");
    let o = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d", tree.to_str().unwrap(), img.to_str().unwrap(), "64M"])
        .output()
        .unwrap();
    assert!(o.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&o.stderr));
    img
}

fn to_vdi(raw: &Path, out: &Path, fixed: bool) {
    let mut a = vec!["convert", "-q", "-f", "raw", "-O", "vdi"];
    if fixed {
        a.extend(["-o", "static=on"]);
    }
    a.extend([raw.to_str().unwrap(), out.to_str().unwrap()]);
    qemu_img(&a);
}

fn qemu_to_raw(img: &Path, out: &Path) -> Vec<u8> {
    qemu_img(&["convert", "-q", "-O", "raw", img.to_str().unwrap(), out.to_str().unwrap()]);
    std::fs::read(out).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn qemu_images_round_trip_convert_and_dedup() {
    if !tools() {
        return;
    }
    for (sub, fixed) in [("dynamic", false), ("fixed", true)] {
        let env = Env::init("64K");
        let raw = ext4_disk(env.dir.path());
        let twin = env.archive(&raw, "disk.raw");
        let raw_stored = u(&twin, "stored_bytes_added");
        let vdi = env.path(&format!("disk-{sub}.vdi"));
        to_vdi(&raw, &vdi, fixed);
        let a = env.archive(&vdi, "disk.vdi");
        assert!(a["opaque"].is_null(), "{sub}: {a}");
        assert_eq!(u(&a, "virtual_bytes"), 64 * MIB, "{sub}: {a}");
        let added = u(&a, "stored_bytes_added");
        eprintln!("vdi {sub}: file {} bytes, raw twin stored {raw_stored}, the vdi added {added}", std::fs::metadata(&vdi).unwrap().len());
        assert!(added < raw_stored / 50 + 256 * 1024, "{sub}: the vdi added {added} bytes over a raw twin of {raw_stored}");
        let snap = s(&a, "snapshot");
        assert!(env.restore_bytes(&snap) == std::fs::read(&vdi).unwrap(), "{sub}: restore differs from the archived file");
        let conv = env.path(&format!("{sub}.conv.raw"));
        env.ok(&["restore", &snap, "-o", p(&conv), "--disk-format", "raw"]);
        let want = qemu_to_raw(&vdi, &env.path(&format!("{sub}.qemu.raw")));
        assert!(std::fs::read(&conv).unwrap() == want, "{sub}: guest view differs from qemu-img convert -O raw");
        let c = env.json(&["check", "--read-data"]);
        assert_eq!(c["ok"], true, "{sub}: {c}");
    }
}

/// `restore --disk-format vdi` of a raw and of a qcow2 snapshot, each subformat.
#[test]
fn writer_output_passes_qemu_check_and_compare() {
    if !tools() {
        return;
    }
    let env = Env::init("64K");
    let raw = ext4_disk(env.dir.path());
    let qcow2 = env.path("disk.qcow2");
    qemu_img(&["convert", "-q", "-f", "raw", "-O", "qcow2", p(&raw), p(&qcow2)]);
    let from_raw = s(&env.archive(&raw, "disk.raw"), "snapshot");
    let from_qcow2 = s(&env.archive(&qcow2, "disk.qcow2"), "snapshot");
    let qemu_dynamic = env.path("qemu.vdi");
    to_vdi(&raw, &qemu_dynamic, false);
    let qemu_bytes = std::fs::read(&qemu_dynamic).unwrap();
    for (origin, snap) in [("raw", &from_raw), ("qcow2", &from_qcow2)] {
        for sub in [None, Some("dynamic"), Some("fixed")] {
            let name = format!("{origin}-{}.vdi", sub.unwrap_or("default"));
            let out = env.path(&name);
            let mut args = vec!["restore", snap.as_str(), "-o", p(&out), "--disk-format", "vdi"];
            if let Some(sub) = sub {
                args.extend(["--subformat", sub]);
            }
            env.ok(&args);
            qemu_img(&["check", "-q", "-f", "vdi", p(&out)]);
            qemu_img(&["compare", "-q", "-f", "raw", "-F", "vdi", p(&raw), p(&out)]);
            let ours = std::fs::read(&out).unwrap();
            let fixed = sub == Some("fixed");
            assert_eq!(u32::from_le_bytes(ours[0x4c..0x50].try_into().unwrap()), if fixed { 2 } else { 1 }, "{name}: image type");
            if fixed {
                assert_eq!(ours.len() as u64, 0x400 + 64 * MIB, "{name}: a fixed image holds every block");
            } else {
                // The same layout as qemu-img convert: map at 0x200, data at 0x400, the same blocks allocated.
                assert_eq!(ours.len(), qemu_bytes.len(), "{name}: size differs from qemu-img's");
                assert!(ours[0x154..0x15c] == qemu_bytes[0x154..0x15c], "{name}: map/data offsets differ from qemu-img's");
                assert!(ours[0x170..0x188] == qemu_bytes[0x170..0x188], "{name}: sizes/blocks differ from qemu-img's");
                assert!(ours[0x200..0x400] == qemu_bytes[0x200..0x400], "{name}: block map differs from qemu-img's");
            }
            let again = env.archive(&out, &name);
            assert!(again["opaque"].is_null(), "{name}: {again}");
            assert!(env.restore_bytes(&s(&again, "snapshot")) == ours, "{name}: the written vdi does not round-trip");
        }
    }
    let bad = env.run(&["restore", &from_raw, "-o", p(&env.path("x.vdi")), "--disk-format", "vdi", "--subformat", "streamOptimized"]);
    assert!(!bad.status.success() && bad.status.code() != Some(101));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("streamOptimized"), "{}", String::from_utf8_lossy(&bad.stderr));
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn hostile_images_are_refused_without_a_panic() {
    if !have("qemu-img") {
        skip_or_fail_in_ci("qemu-img (qemu-utils) not installed: no VDI images");
        return;
    }
    let t = tmp();
    let env = Env::init("64K");
    let raw = t.path().join("small.raw");
    let mut disk = vec![0u8; 8 << 20];
    disk[..3 << 20].copy_from_slice(&bytes(3 << 20, 21, false));
    disk[6 << 20..7 << 20].copy_from_slice(&bytes(1 << 20, 22, true));
    std::fs::write(&raw, &disk).unwrap();
    let vdi = t.path().join("small.vdi");
    to_vdi(&raw, &vdi, false);
    let good = std::fs::read(&vdi).unwrap();
    let mut huge = good.clone();
    put32(&mut huge, 0x180, 0x3fff_ffff);
    huge[0x170..0x178].copy_from_slice(&(0x3fff_ffffu64 << 20).to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "differencing",
            {
                let mut b = good.clone();
                put32(&mut b, 0x4c, 4);
                b
            },
            "differencing",
        ),
        (
            "undo",
            {
                let mut b = good.clone();
                put32(&mut b, 0x4c, 3);
                b
            },
            "undo",
        ),
        (
            "parent uuid",
            {
                let mut b = good.clone();
                b[0x1a8] = 0x42;
                b
            },
            "names a parent",
        ),
        (
            "overlapping blocks",
            {
                let mut b = good.clone();
                let e = b[0x200..0x204].to_vec();
                b[0x204..0x208].copy_from_slice(&e);
                b
            },
            "both name data block",
        ),
        (
            "index past the allocation",
            {
                let mut b = good.clone();
                put32(&mut b, 0x200, 9);
                b
            },
            "only 4 are allocated",
        ),
        ("truncated", good[..good.len() - 4096].to_vec(), "past the file end"),
        ("truncated header", good[..0x100].to_vec(), "truncated"),
        ("huge block map", huge, "exceeds the limit"),
        (
            "block extra",
            {
                let mut b = good.clone();
                put32(&mut b, 0x17c, 4096);
                b
            },
            "block extra",
        ),
        (
            "version 0",
            {
                let mut b = good.clone();
                put32(&mut b, 0x44, 0);
                b
            },
            "version 0.0",
        ),
    ];
    for (name, bytes, want) in cases {
        let path = t.path().join(format!("{}.vdi", name.replace(' ', "-")));
        std::fs::write(&path, &bytes).unwrap();
        let o = env.run(&["archive", p(&path), "--name", name]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && o.status.code() != Some(101), "{name}: exit {:?}: {err}", o.status.code());
        assert!(err.contains(want) && err.contains("vdi"), "{name}: {err}");
    }
    // Declared as another format than the bytes are: refused before any decomposition.
    let o = env.run(&["archive", p(&vdi), "--name", "declared", "--disk-format", "qcow2"]);
    assert!(!o.status.success() && o.status.code() != Some(101), "{}", String::from_utf8_lossy(&o.stderr));
    // Declared vdi and it is: decomposed.
    let a = env.json(&["archive", p(&vdi), "--name", "declared-ok", "--disk-format", "vdi"]);
    assert!(a["opaque"].is_null(), "{a}");
}

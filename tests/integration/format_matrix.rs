//! The cross-format matrix: one 64 MiB raw disk with a real ext4 file system (`mkfs.ext4 -d`:
//! files, a sparse file, free space as holes), made into every input format and subformat with
//! `qemu-img convert`, all archived into one repository (the raw twin first). For each input:
//! the archived file rebuilds byte for byte (`cmp`), `restore --disk-format raw` equals
//! `qemu-img convert -O raw` of the input, and every output format × subformat passes
//! `qemu-img check` (where qemu checks that format) and `qemu-img compare` with the raw disk;
//! each output written from the raw twin is archived again and round-trips exactly. The dedup
//! figures (stored bytes each format adds after the raw twin) are printed and each must stay
//! under 2 % of the raw twin's plus 256 KiB.
//!
//! Written to work with whichever formats are implemented: an input whose decomposer is not in
//! this build is still archived and rebuilt exactly (it is stored opaque), and its guest-view
//! checks say `skipped: …`; an output whose writer is not in this build likewise.
use crate::support::qcow2_util::{qemu_img, run, tmp};
use crate::support::*;
use imgarc::format::{self, FormatKind};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest disk's size (the CI size).
pub const DISK_BYTES: u64 = 64 << 20;

/// One input image: how `qemu-img convert` makes it from the raw disk.
pub struct Input {
    /// A name for the test's output (`vhd-fixed`).
    pub name: &'static str,
    /// qemu's format name (`vpc` for VHD).
    pub qemu_format: &'static str,
    /// imgarc's (and Glance's) name of the format.
    pub kind: FormatKind,
    /// `qemu-img convert` options after `-O FORMAT`.
    pub opts: &'static [&'static str],
}

/// Every input format/subformat the issue names.
pub const INPUTS: &[Input] = &[
    Input { name: "raw", qemu_format: "raw", kind: FormatKind::Raw, opts: &[] },
    Input { name: "qcow2", qemu_format: "qcow2", kind: FormatKind::Qcow2, opts: &[] },
    Input { name: "qcow2-compressed", qemu_format: "qcow2", kind: FormatKind::Qcow2, opts: &["-c"] },
    Input { name: "vmdk-monolithicSparse", qemu_format: "vmdk", kind: FormatKind::Vmdk, opts: &["-o", "subformat=monolithicSparse"] },
    Input { name: "vmdk-streamOptimized", qemu_format: "vmdk", kind: FormatKind::Vmdk, opts: &["-o", "subformat=streamOptimized"] },
    Input { name: "vdi-dynamic", qemu_format: "vdi", kind: FormatKind::Vdi, opts: &[] },
    Input { name: "vdi-fixed", qemu_format: "vdi", kind: FormatKind::Vdi, opts: &["-o", "static=on"] },
    Input { name: "vhd-dynamic", qemu_format: "vpc", kind: FormatKind::Vhd, opts: &[] },
    Input { name: "vhd-fixed", qemu_format: "vpc", kind: FormatKind::Vhd, opts: &["-o", "subformat=fixed"] },
    Input { name: "vhd-dynamic-force-size", qemu_format: "vpc", kind: FormatKind::Vhd, opts: &["-o", "subformat=dynamic,force_size=on"] },
    Input { name: "vhd-fixed-force-size", qemu_format: "vpc", kind: FormatKind::Vhd, opts: &["-o", "subformat=fixed,force_size=on"] },
    Input { name: "vhdx-dynamic", qemu_format: "vhdx", kind: FormatKind::Vhdx, opts: &[] },
    Input { name: "vhdx-fixed", qemu_format: "vhdx", kind: FormatKind::Vhdx, opts: &["-o", "subformat=fixed"] },
];

/// One output of `restore --disk-format`: its flags and qemu's name of the format.
pub struct Output {
    pub name: &'static str,
    pub kind: FormatKind,
    pub args: &'static [&'static str],
    pub qemu_format: &'static str,
}

/// Every output format × subformat (the writers' defaults first, then each subformat by name).
pub const OUTPUTS: &[Output] = &[
    Output { name: "raw", kind: FormatKind::Raw, args: &["--disk-format", "raw"], qemu_format: "raw" },
    Output { name: "qcow2", kind: FormatKind::Qcow2, args: &["--disk-format", "qcow2"], qemu_format: "qcow2" },
    Output { name: "qcow2-compressed", kind: FormatKind::Qcow2, args: &["--disk-format", "qcow2", "--compress"], qemu_format: "qcow2" },
    Output { name: "vmdk", kind: FormatKind::Vmdk, args: &["--disk-format", "vmdk"], qemu_format: "vmdk" },
    Output {
        name: "vmdk-monolithicSparse",
        kind: FormatKind::Vmdk,
        args: &["--disk-format", "vmdk", "--subformat", "monolithicSparse"],
        qemu_format: "vmdk",
    },
    Output { name: "vdi", kind: FormatKind::Vdi, args: &["--disk-format", "vdi"], qemu_format: "vdi" },
    Output { name: "vdi-fixed", kind: FormatKind::Vdi, args: &["--disk-format", "vdi", "--subformat", "fixed"], qemu_format: "vdi" },
    Output { name: "vhd", kind: FormatKind::Vhd, args: &["--disk-format", "vhd"], qemu_format: "vpc" },
    Output { name: "vhd-fixed", kind: FormatKind::Vhd, args: &["--disk-format", "vhd", "--subformat", "fixed"], qemu_format: "vpc" },
    Output { name: "vhdx", kind: FormatKind::Vhdx, args: &["--disk-format", "vhdx"], qemu_format: "vhdx" },
    Output { name: "vhdx-fixed", kind: FormatKind::Vhdx, args: &["--disk-format", "vhdx", "--subformat", "fixed"], qemu_format: "vhdx" },
];

/// Whether this build's archive reads `kind`'s guest disk (raw and ISO are their own).
pub fn guest_view(kind: FormatKind) -> bool {
    kind.is_guest_disk() || kind == FormatKind::Qcow2 || format::decomposes(kind)
}

/// Whether this build's restore writes `kind`.
pub fn writable(kind: FormatKind) -> bool {
    matches!(kind, FormatKind::Raw | FormatKind::Qcow2) || format::writes(kind)
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("-V").output().is_ok()
}

/// qemu-img and mkfs.ext4 are at hand (else the test says skipped, and fails in CI).
pub fn tools_present() -> bool {
    for tool in ["qemu-img", "mkfs.ext4"] {
        if !have(tool) {
            skip_or_fail_in_ci(&format!("{tool} is not installed"));
            return false;
        }
    }
    true
}

/// The 64 MiB raw disk: an ext4 file system made by `mkfs.ext4 -d` from a directory of real
/// content — incompressible and compressible files, many small files, a sparse file — with
/// the free space as holes (zeros never written).
pub fn ext4_disk(dir: &Path) -> PathBuf {
    let src = dir.join("content");
    std::fs::create_dir_all(src.join("etc/conf.d")).unwrap();
    std::fs::create_dir_all(src.join("var/lib/data")).unwrap();
    std::fs::write(src.join("var/lib/data/blob.bin"), bytes(8 << 20, 11, false)).unwrap();
    std::fs::write(src.join("var/lib/data/log.txt"), bytes(6 << 20, 12, true)).unwrap();
    for i in 0..150u64 {
        std::fs::write(src.join(format!("etc/conf.d/file-{i:03}.conf")), bytes(1024 + (i as usize * 131) % 20_000, 100 + i, i % 3 != 0))
            .unwrap();
    }
    // A sparse file: data at both ends, a 3 MiB hole between (mkfs.ext4 -d keeps holes).
    let sparse = std::fs::File::create(src.join("var/lib/data/sparse.img")).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(&bytes(256 << 10, 13, false), 0).unwrap();
    sparse.write_all_at(&bytes(256 << 10, 14, true), (3 << 20) + (256 << 10)).unwrap();
    drop(sparse);
    let disk = dir.join("disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(DISK_BYTES).unwrap();
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-L", "imgarc-matrix", "-d"])
        .arg(&src)
        .arg(&disk)
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .output()
        .expect("mkfs.ext4");
    assert!(o.status.success(), "mkfs.ext4 -d failed: {}", String::from_utf8_lossy(&o.stderr));
    disk
}

/// `qemu-img convert -f raw -O FORMAT OPTS disk dir/NAME.FORMAT`.
pub fn make_input(dir: &Path, disk: &Path, input: &Input) -> PathBuf {
    if input.kind == FormatKind::Raw {
        return disk.to_path_buf();
    }
    let out = dir.join(format!("{}.{}", input.name, input.qemu_format));
    let mut a = vec!["convert", "-f", "raw", "-O", input.qemu_format];
    a.extend_from_slice(input.opts);
    a.extend([disk.to_str().unwrap(), out.to_str().unwrap()]);
    qemu_img(&a);
    out
}

/// `qemu-img convert -O raw` of `path` (the guest disk as qemu reads it), read whole.
pub fn qemu_guest(dir: &Path, path: &Path, qemu_format: &str) -> Vec<u8> {
    let out = dir.join("qemu-guest.raw");
    qemu_img(&["convert", "-f", qemu_format, "-O", "raw", path.to_str().unwrap(), out.to_str().unwrap()]);
    let b = std::fs::read(&out).unwrap();
    std::fs::remove_file(out).unwrap();
    b
}

/// `qemu-img check` where qemu checks `qemu_format` (raw and vpc it does not: exit 63).
pub fn qemu_check(path: &Path, qemu_format: &str) {
    let o = Command::new("qemu-img").args(["check", "-f", qemu_format]).arg(path).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let unsupported = matches!(qemu_format, "raw" | "vpc") && err.contains("does not support checks");
    if !(o.status.success() || unsupported) {
        panic!("qemu-img check -f {qemu_format} {}: {}{err}", path.display(), String::from_utf8_lossy(&o.stdout));
    }
}

/// `qemu-img compare` of `path` with the raw disk (formats given, never probed).
pub fn qemu_compare(disk: &Path, path: &Path, qemu_format: &str) {
    run("qemu-img", &["compare", "-f", "raw", "-F", qemu_format, disk.to_str().unwrap(), path.to_str().unwrap()]);
}

fn same_file(a: &Path, b: &Path) -> bool {
    Command::new("cmp").arg("-s").arg(a).arg(b).status().unwrap().success()
}

#[test]
fn every_format_in_and_out_of_one_repository() {
    if !tools_present() {
        return;
    }
    let started = std::time::Instant::now();
    let dir = tmp();
    let disk = ext4_disk(dir.path());
    let env = Env::init("64K");
    let mut figures: Vec<(&str, u64, u64, String)> = Vec::new();
    let mut raw_added = None;
    let mut raw_snapshot = String::new();
    for input in INPUTS {
        let path = make_input(dir.path(), &disk, input);
        let file_len = std::fs::metadata(&path).unwrap().len();
        // Declared as Glance declares it: a fixed VHD (its footer at the end only) is a VHD only
        // when declared one; every other format is detected either way.
        let a = env.json(&["archive", path.to_str().unwrap(), "--name", input.name, "--disk-format", input.kind.name()]);
        let snap = s(&a, "snapshot");
        let added = u(&a, "stored_bytes_added");
        figures.push((input.name, file_len, added, if a["opaque"].is_null() { String::new() } else { a["opaque"].to_string() }));
        if input.kind == FormatKind::Raw {
            raw_added = Some(added);
            raw_snapshot = snap.clone();
        }

        // Byte-exact rebuild of the archived file, decomposed or opaque.
        let back = dir.path().join("rebuilt");
        env.ok(&["restore", &snap, "-o", back.to_str().unwrap()]);
        assert!(same_file(&back, &path), "{}: the rebuilt file differs from the input", input.name);
        std::fs::remove_file(&back).unwrap();

        if !guest_view(input.kind) {
            let i = env.json(&["inspect", path.to_str().unwrap()]);
            if i["format"] == input.kind.name() {
                assert_eq!(i["decomposed"], false, "{}: {i}", input.name);
            }
            eprintln!("skipped: {}: this build does not decompose {} (archived opaque, rebuilt exactly)", input.name, input.kind.name());
            continue;
        }
        assert_eq!(s(&a, "format"), input.kind.name(), "{}: {a}", input.name);
        assert!(a["opaque"].is_null(), "{}: a qemu-img made image must not be stored opaque: {a}", input.name);
        let inspected = env.json(&["inspect", path.to_str().unwrap(), "--disk-format", input.kind.name()]);
        assert_eq!(s(&inspected, "format"), input.kind.name(), "{inspected}");
        if input.kind != FormatKind::Raw {
            assert_eq!(inspected["decomposed"], true, "{inspected}");
        }
        assert_eq!(inspected["subformat"].is_string(), input.kind != FormatKind::Raw, "{}: subformat in {inspected}", input.name);
        let prose = env.ok(&["inspect", path.to_str().unwrap(), "--disk-format", input.kind.name()]);
        let line = |k: &str| prose.lines().find(|l| l.trim_start().starts_with(&format!("{k}: "))).map(|l| l.trim().to_string());
        assert_eq!(line("format"), Some(format!("format: {}", input.kind.name())), "{prose}");
        assert!(line("virtual_size").is_some(), "{prose}");
        let si = env.json(&["inspect", &snap]);
        assert_eq!(s(&si, "format"), input.kind.name(), "{si}");

        // The guest view equals qemu's.
        let guest = dir.path().join("guest.raw");
        env.ok(&["restore", &snap, "-o", guest.to_str().unwrap(), "--disk-format", "raw"]);
        let qemu = qemu_guest(dir.path(), &path, input.qemu_format);
        assert!(std::fs::read(&guest).unwrap() == qemu, "{}: restore --disk-format raw differs from qemu-img convert -O raw", input.name);
        let qemu_size = qemu.len() as u64;
        assert_eq!(u(&a, "virtual_bytes"), qemu_size, "{}: the archive's virtual size is not qemu's: {a}", input.name);
        assert_eq!(u(&inspected, "virtual_size"), qemu_size, "{}: inspect's virtual size is not qemu's: {inspected}", input.name);
        std::fs::remove_file(&guest).unwrap();

        // Every output format × subformat.
        for output in OUTPUTS {
            if !writable(output.kind) {
                eprintln!("skipped: {} → {}: this build does not write {}", input.name, output.name, output.kind.name());
                continue;
            }
            let out = dir.path().join(format!("out-{}.{}", output.name, output.qemu_format));
            let mut args = vec!["restore", snap.as_str(), "-o", out.to_str().unwrap()];
            args.extend_from_slice(output.args);
            env.ok(&args);
            qemu_check(&out, output.qemu_format);
            qemu_compare(&disk, &out, output.qemu_format);
            if input.kind == FormatKind::Raw {
                // What imgarc writes, imgarc archives again and rebuilds exactly.
                let again = env.json(&["archive", out.to_str().unwrap(), "--name", &format!("written-{}", output.name)]);
                let back = dir.path().join("rebuilt");
                env.ok(&["restore", &s(&again, "snapshot"), "-o", back.to_str().unwrap()]);
                assert!(same_file(&back, &out), "{}: the written file does not round-trip", output.name);
                std::fs::remove_file(&back).unwrap();
            }
            std::fs::remove_file(&out).unwrap();
        }
        if input.kind != FormatKind::Raw {
            std::fs::remove_file(&path).unwrap();
        }
    }
    env.ok(&["check", "--read-data"]);

    let raw_added = raw_added.expect("the raw twin is the first input");
    let limit = raw_added / 50 + (256 << 10);
    eprintln!("cross-format dedup, {} MiB ext4 disk, raw twin first (limit {limit} bytes):", DISK_BYTES >> 20);
    eprintln!("{:>24} {:>12} {:>14} {:>8}", "input", "file bytes", "stored added", "% raw");
    for (name, len, added, opaque) in &figures {
        eprintln!("{name:>24} {len:>12} {added:>14} {:>7.2}% {opaque}", *added as f64 * 100.0 / raw_added.max(1) as f64);
    }
    for ((name, _, added, _), input) in figures.iter().zip(INPUTS).skip(1) {
        if guest_view(input.kind) {
            assert!(*added <= limit, "{name} added {added} bytes after the raw twin's {raw_added}: over 2 % + 256 KiB");
        }
    }
    assert!(!raw_snapshot.is_empty());
    eprintln!("format matrix: {:.1} s", started.elapsed().as_secs_f64());
}

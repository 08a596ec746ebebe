//! Volumes of disk images built by the real tools (sfdisk, sgdisk, lvm2,
//! mke2fs), compared with what `sfdisk --json` and `lvm` report.

use super::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tool this machine lacks skips the test, except in CI (as `support::skip_or_fail_in_ci`).
fn have(tool: &str) -> bool {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "{tool}: required in CI (.ci/run installs it)");
        eprintln!("skipped: {tool} not installed");
    }
    found
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(script: &str) -> String {
    run(Command::new("sh").arg("-ec").arg(script))
}

fn tempdir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("imgarc-volume-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn open(p: &Path) -> Arc<dyn ReadAt> {
    Arc::new(std::fs::File::open(p).unwrap())
}

/// `sfdisk --json`'s partitions: (slot number, start sector, sectors, type, name).
fn sfdisk_partitions(img: &Path) -> Vec<(u32, u64, u64, String, String)> {
    let json: serde_json::Value = serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(img))).unwrap();
    let prefix = img.to_string_lossy().into_owned();
    json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let number = node.strip_prefix(&prefix).unwrap().parse().unwrap();
            let name = p["name"].as_str().unwrap_or("").to_string();
            (number, p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap(), p["type"].as_str().unwrap().to_string(), name)
        })
        .collect()
}

#[test]
fn mbr_with_extended_and_two_logicals_matches_sfdisk() {
    if !have("sfdisk") {
        return;
    }
    let d = tempdir();
    let img = image(&d, "m.img", 32 << 20);
    let n = img.display();
    sh(&format!(
        "printf 'label: dos\\nsize=4MiB, type=83\\nsize=2MiB, type=c\\nsize=16MiB, type=5\\n{n}5: size=4MiB, type=83\\n{n}6: size=4MiB, type=82\\n' | sfdisk -q {n}"
    ));
    let layout = layout(open(&img)).unwrap();
    assert_eq!(layout.table, "MBR");
    let expected: Vec<_> = sfdisk_partitions(&img).into_iter().filter(|p| p.3 != "5").collect();
    assert_eq!(expected.len(), 4, "sfdisk lists p1, p2, p5, p6 besides the extended p3");
    let got: Vec<_> = layout.volumes.iter().map(|v| (v.name.clone(), v.disk_offset / 512, v.bytes.size() / 512)).collect();
    let want: Vec<_> = expected.iter().map(|p| (format!("p{}", p.0), p.1, p.2)).collect();
    assert_eq!(got, want);
    for (v, p) in layout.volumes.iter().zip(&expected) {
        assert!(v.description.contains(&format!("0x{:0>2}", p.3)), "{} vs type {}", v.description, p.3);
    }
    assert_eq!(layout.volumes[2].description, "MBR logical 0x83 Linux");
    assert!(layout.notes.iter().any(|n| n.contains("p3: MBR 0x05 extended partition holding p5, p6")), "{:?}", layout.notes);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn mbr_ebr_chain_loop_is_an_error() {
    if !have("sfdisk") {
        return;
    }
    let d = tempdir();
    let img = image(&d, "m.img", 32 << 20);
    let n = img.display();
    sh(&format!("printf 'label: dos\\ntype=5\\n{n}5: size=4MiB\\n{n}6: size=4MiB\\n' | sfdisk -q {n}"));
    assert_eq!(volumes(open(&img)).unwrap().len(), 2);
    // Point the second EBR's link back at the first EBR (relative sector 0).
    let p = sfdisk_partitions(&img);
    let second_ebr = {
        let mut b = std::fs::read(&img).unwrap();
        let first_ebr = p[0].1 as usize * 512;
        let link = u32::from_le_bytes(b[first_ebr + 462 + 8..first_ebr + 462 + 12].try_into().unwrap()) as usize;
        let second = (p[0].1 as usize + link) * 512;
        b[second + 462 + 4] = 0x05;
        b[second + 462 + 8..second + 462 + 12].copy_from_slice(&0u32.to_le_bytes());
        b[second + 462 + 12..second + 462 + 16].copy_from_slice(&1u32.to_le_bytes());
        std::fs::write(&img, &b).unwrap();
        second
    };
    assert!(second_ebr > 0);
    let err = volumes(open(&img)).err().expect("a looping EBR chain is refused").to_string();
    assert!(err.contains("loops back"), "{err}");
    let _ = std::fs::remove_dir_all(d);
}

fn gpt_image(d: &Path) -> PathBuf {
    let img = image(d, "g.img", 32 << 20);
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:+4M", "-t", "1:ef00", "-c", "1:EFI system"])
        .args(["-n", "2:0:+8M", "-t", "2:8300", "-c", "2:root"])
        .args(["-n", "4:0:0", "-t", "4:8e00", "-c", "4:lvm ü"])
        .arg(&img));
    img
}

#[test]
fn gpt_with_three_named_partitions_matches_sfdisk() {
    if !have("sgdisk") || !have("sfdisk") {
        return;
    }
    let d = tempdir();
    let img = gpt_image(&d);
    let layout = layout(open(&img)).unwrap();
    assert_eq!(layout.table, "GPT");
    assert!(layout.notes.is_empty(), "{:?}", layout.notes);
    let expected = sfdisk_partitions(&img);
    assert_eq!(expected.len(), 3);
    let got: Vec<_> = layout.volumes.iter().map(|v| (v.name.clone(), v.disk_offset / 512, v.bytes.size() / 512)).collect();
    let want: Vec<_> = expected.iter().map(|p| (format!("p{}", p.0), p.1, p.2)).collect();
    assert_eq!(got, want, "slot 3 is empty: the third partition is p4");
    let descriptions: Vec<_> = layout.volumes.iter().map(|v| v.description.as_str()).collect();
    assert_eq!(descriptions, ["GPT EFI system \"EFI system\"", "GPT Linux filesystem \"root\"", "GPT Linux LVM \"lvm ü\""]);
    for (v, p) in layout.volumes.iter().zip(&expected) {
        assert!(v.description.ends_with(&format!("\"{}\"", p.4)), "{} vs name {}", v.description, p.4);
    }
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn gpt_bad_primary_header_uses_the_backup() {
    if !have("sgdisk") {
        return;
    }
    let d = tempdir();
    let img = gpt_image(&d);
    let good: Vec<_> =
        volumes(open(&img)).unwrap().iter().map(|v| (v.name.clone(), v.disk_offset, v.bytes.size(), v.description.clone())).collect();
    let mut b = std::fs::read(&img).unwrap();
    b[512 + 40] ^= 0xff; // first usable LBA: the header CRC no longer matches
    std::fs::write(&img, &b).unwrap();
    let layout = layout(open(&img)).unwrap();
    let got: Vec<_> = layout.volumes.iter().map(|v| (v.name.clone(), v.disk_offset, v.bytes.size(), v.description.clone())).collect();
    assert_eq!(got, good);
    assert!(layout.notes.iter().any(|n| n.contains("backup header at LBA 65535") && n.contains("header CRC32")), "{:?}", layout.notes);
    // The primary's entry array damaged instead: also the backup.
    let mut b = std::fs::read(&img).unwrap();
    b[512 + 40] ^= 0xff;
    b[1024 + 56] ^= 0x01;
    std::fs::write(&img, &b).unwrap();
    let layout = super::layout(open(&img)).unwrap();
    assert!(layout.notes.iter().any(|n| n.contains("entry array CRC32")), "{:?}", layout.notes);
    // Both headers bad: an error naming both.
    let last = b.len() - 512;
    b[last + 40] ^= 0xff;
    std::fs::write(&img, &b).unwrap();
    let err = volumes(open(&img)).err().expect("no usable GPT header").to_string();
    assert!(err.contains("primary header") && err.contains("backup header"), "{err}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn partition_past_the_disk_end_is_clipped_with_a_note() {
    if !have("sfdisk") {
        return;
    }
    let d = tempdir();
    let img = image(&d, "m.img", 16 << 20);
    sh(&format!("printf 'label: dos\\nsize=4MiB, type=83\\ntype=83\\n' | sfdisk -q {}", img.display()));
    std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len(12 << 20).unwrap();
    let layout = layout(open(&img)).unwrap();
    assert_eq!(layout.volumes.len(), 2);
    let p2 = &layout.volumes[1];
    assert_eq!(p2.disk_offset + p2.bytes.size(), 12 << 20);
    assert!(p2.description.contains("clipped"), "{}", p2.description);
    assert!(layout.notes.iter().any(|n| n.starts_with("p2: ")), "{:?}", layout.notes);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn bare_filesystem_and_empty_disk_are_one_unnamed_volume() {
    if !have("mke2fs") {
        return;
    }
    let d = tempdir();
    let img = image(&d, "e.img", 8 << 20);
    let v = volumes(open(&img)).unwrap();
    assert_eq!((v.len(), v[0].name.as_str(), v[0].bytes.size()), (1, "", 8 << 20));
    run(Command::new("mke2fs").args(["-q", "-F", "-t", "ext4"]).arg(&img));
    let layout = layout(open(&img)).unwrap();
    assert_eq!((layout.table, layout.volumes.len(), layout.volumes[0].name.as_str()), ("none", 1, ""));
    if have("mkfs.fat") {
        // A FAT boot sector carries 0x55AA too: still no partition table.
        let img = image(&d, "f.img", 8 << 20);
        run(Command::new("mkfs.fat").arg(&img));
        assert_eq!(super::layout(open(&img)).unwrap().table, "none");
    }
    let _ = std::fs::remove_dir_all(d);
}

/// A loop device over part of an image, detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(img: &Path, offset: u64, len: u64) -> Option<Loop> {
        let out = Command::new("losetup")
            .args(["-f", "--show", "-o", &offset.to_string(), "--sizelimit", &len.to_string()])
            .arg(img)
            .output()
            .ok()?;
        out.status.success().then(|| Loop(String::from_utf8_lossy(&out.stdout).trim().to_string()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// lvm with no device-mapper and a filter that sees only our loop devices.
fn lvm(devices: &[&Loop], args: &[&str]) -> String {
    let accept: Vec<String> = devices.iter().map(|l| format!("\"a|^{}$|\"", l.0)).collect();
    let config = format!("devices {{ filter = [ {}, \"r|.*|\" ] }} activation {{ udev_sync = 0 udev_rules = 0 }}", accept.join(", "));
    let mut cmd = Command::new("lvm");
    cmd.arg(args[0]).arg("--config").arg(config).args(&args[1..]).env("LVM_SUPPRESS_FD_WARNINGS", "1");
    run(&mut cmd)
}

/// What `lvm lvs --segments` reports: (lv, segment start extent, extents, stripes, "pv:pe-pe" ranges).
fn lvs_segments(devices: &[&Loop], vg: &str) -> Vec<(String, u64, u64, u64, String)> {
    let out = lvm(
        devices,
        &[
            "lvs",
            "--segments",
            "--reportformat",
            "json",
            "--units",
            "b",
            "-o",
            "lv_name,seg_start_pe,seg_size_pe,stripes,seg_pe_ranges",
            vg,
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["report"][0]["seg"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let n = |k: &str| s[k].as_str().unwrap().trim_end_matches('B').parse::<u64>().unwrap();
            (
                s["lv_name"].as_str().unwrap().to_string(),
                n("seg_start_pe"),
                n("seg_size_pe"),
                n("stripes"),
                s["seg_pe_ranges"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn lvm_logical_volumes_in_gpt_partitions_match_lvm() {
    if !have("sgdisk") || !have("lvm") || !have("losetup") || !have("mke2fs") {
        return;
    }
    let d = tempdir();
    let img = image(&d, "lvm.img", 96 << 20);
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:+8M", "-t", "1:8300", "-n", "2:0:+40M", "-t", "2:8e00", "-n", "3:0:0", "-t", "3:8e00"])
        .arg(&img));
    let parts = layout(open(&img)).unwrap().volumes;
    let (p2, p3) = ((parts[1].disk_offset, parts[1].bytes.size()), (parts[2].disk_offset, parts[2].bytes.size()));
    let (Some(l2), Some(l3)) = (Loop::attach(&img, p2.0, p2.1), Loop::attach(&img, p3.0, p3.1)) else {
        assert!(std::env::var_os("CI").is_none(), "losetup: loop devices required in CI");
        eprintln!("skipped: no loop devices");
        return;
    };
    let vg = format!("imgarcvol{}", std::process::id());
    let devs = [&l2, &l3];
    lvm(&devs, &["pvcreate", "-ff", "-y", &l2.0, &l3.0]);
    lvm(&devs, &["vgcreate", "-s", "1M", &vg, &l2.0, &l3.0]);
    lvm(&devs, &["lvcreate", "--driverloaded", "n", "-an", "-Zn", "-y", "-L", "6M", "-n", "small", &vg, &l2.0]);
    lvm(&devs, &["lvcreate", "--driverloaded", "n", "-an", "-Zn", "-y", "-L", "12M", "-n", "root", &vg, &l2.0]);
    // Grown onto the other PV: two segments.
    lvm(&devs, &["lvextend", "--driverloaded", "n", "-y", "-L", "+5M", &format!("{vg}/small"), &l3.0]);
    lvm(&devs, &["lvcreate", "--driverloaded", "n", "-an", "-Zn", "-y", "-L", "8M", "-i", "2", "-I", "64k", "-n", "striped", &vg]);
    let segments = lvs_segments(&devs, &vg);
    let pe_start = |dev: &Loop| -> u64 {
        let out = lvm(&devs, &["pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pe_start", &dev.0]);
        out.trim().parse().unwrap()
    };
    let (pe2, pe3) = (pe_start(&l2), pe_start(&l3));
    drop((l2, l3));

    // The filesystem in LV "root", written where lvm says its extents are.
    let root = segments.iter().find(|s| s.0 == "root").unwrap();
    let first_pe: u64 = root.4.rsplit(':').next().unwrap().split('-').next().unwrap().parse().unwrap();
    let root_at = p2.0 + pe2 + first_pe * (1 << 20);
    let src = d.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello.txt"), b"hello from an LV\n").unwrap();
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-E", &format!("offset={root_at}"), "-d"])
        .arg(&src)
        .arg(&img)
        .arg("3072"));

    let layout = layout(open(&img)).unwrap();
    let names: Vec<_> = layout.volumes.iter().map(|v| v.name.clone()).collect();
    assert_eq!(
        names,
        ["p1".to_string(), "p2".into(), format!("p2/{vg}/small"), format!("p2/{vg}/root"), format!("p2/{vg}/striped"), "p3".into()]
    );
    assert!(layout.volumes[1].description.ends_with(&format!("LVM2 PV of VG \"{vg}\"")), "{}", layout.volumes[1].description);
    let lv = |n: &str| layout.volumes.iter().find(|v| v.name == format!("p2/{vg}/{n}")).unwrap();
    assert_eq!(lv("small").bytes.size(), 11 << 20);
    assert_eq!(lv("small").description, "LVM2 LV (linear, 2 segments)");
    assert_eq!(lv("root").bytes.size(), 12 << 20);
    assert_eq!(lv("root").disk_offset, root_at);
    assert_eq!(lv("striped").description, "LVM2 LV (striped ×2)");
    assert_eq!(lv("striped").bytes.size(), 8 << 20);
    let mut magic = [0u8; 2];
    lv("root").bytes.read_at(1080, &mut magic).unwrap();
    assert_eq!(magic, [0x53, 0xEF], "ext4 magic at 1080 of the LV");

    // Each segment's first byte is where lvm's pe ranges say: compare byte for byte with the image.
    let raw = std::fs::read(&img).unwrap();
    let stripes: Vec<_> = segments.iter().filter(|s| s.0 == "striped").collect();
    assert_eq!((stripes.len(), stripes[0].3), (1, 2));
    let small: Vec<_> = segments.iter().filter(|s| s.0 == "small").collect();
    assert_eq!(small.len(), 2);
    let second = small.iter().find(|s| s.1 == 6).unwrap();
    assert!(second.4.starts_with("/dev/loop"), "{}", second.4);
    let pe: u64 = second.4.rsplit(':').next().unwrap().split('-').next().unwrap().parse().unwrap();
    let at = (p3.0 + pe3 + pe * (1 << 20)) as usize;
    let mut b = vec![0u8; 4096];
    // Mark the spot so the comparison cannot pass on zeros alone.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"segment two of small", at as u64).unwrap();
    let disk = open(&img);
    let layout2 = super::layout(disk).unwrap();
    let small_v = layout2.volumes.iter().find(|v| v.name == format!("p2/{vg}/small")).unwrap();
    small_v.bytes.read_at(6 << 20, &mut b).unwrap();
    assert_eq!(&b[..20], b"segment two of small");
    assert_eq!(&b[20..], &raw[at + 20..at + 4096]);
    let _ = std::fs::remove_dir_all(d);
}

/// The crafted small PV of the fuzz seeds (a real label and UUID from `pvcreate`, areas and
/// metadata rewritten to fit 64 KiB; extent i is filled with b'A' + i): linear, striped and
/// thin LVs on a bare-disk PV.
#[test]
fn small_pv_linear_striped_and_thin() {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/partition/lvm2-small-pv-crafted");
    let disk = open(&seed);
    let layout = layout(disk).unwrap();
    let names: Vec<_> = layout.volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["", "seedvg/lin", "seedvg/str", "seedvg/thin"]);
    assert_eq!(layout.volumes[0].description, "whole disk, LVM2 PV of VG \"seedvg\"");
    let read = |v: &Volume, at: u64, n: usize| {
        let mut b = vec![0u8; n];
        v.bytes.read_at(at, &mut b).map(|_| b)
    };
    let lin = &layout.volumes[1];
    assert_eq!((lin.bytes.size(), lin.disk_offset), (8192, 32768));
    assert_eq!(read(lin, 4095, 2).unwrap(), b"AF", "extent 0 then extent 5");
    let stripes = &layout.volumes[2];
    assert_eq!(stripes.description, "LVM2 LV (striped ×2)");
    // 1 KiB chunks alternating between the areas at extent 1 (B) and extent 3 (D).
    let got = read(stripes, 0, 8192).unwrap();
    let chunk = |i: usize| got[i * 1024];
    assert_eq!((0..8).map(chunk).collect::<Vec<_>>(), b"BDBDBDBD");
    assert!(read(stripes, 8191, 2).is_err());
    let thin = &layout.volumes[3];
    assert!(thin.description.starts_with("LVM2 LV, unreadable: segment 1 is of type thin"), "{}", thin.description);
    assert_eq!(thin.bytes.size(), 4 * 4096);
    let err = read(thin, 0, 1).unwrap_err().to_string();
    assert!(err.contains("seedvg/thin") && err.contains("thin"), "{err}");
}

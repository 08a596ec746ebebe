//! The guest file verbs (`ls`, `cat`, `extract`, `find`, `diff`) on real
//! images: ext4 made by `mke2fs -d SRCDIR`, archived as raw, qcow2 and
//! compressed qcow2, checked against what `debugfs` says about the same image
//! and against the source tree; the corpus's nights (`IMGARC_CORPUS`,
//! `IMGARC_CORPUS_WEEK`) diffed against `debugfs -R "rdump / DIR"` of both.

use crate::support::{self, Env};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

fn need(tools: &[&str]) -> bool {
    for t in tools {
        if !have(t) {
            support::skip_or_fail_in_ci(&format!("{t} is not installed"));
            return false;
        }
    }
    true
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A source tree with what extract must keep: modes (setuid too), a symlink,
/// a hard link, a sparse file, a fifo, an old mtime, nested directories.
fn source_tree(root: &Path) {
    std::fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    std::fs::create_dir_all(root.join("home/user/.cache")).unwrap();
    std::fs::write(root.join("etc/hostname"), "guest-1\n").unwrap();
    std::fs::write(root.join("etc/conf.d/app.conf"), "key = value\n".repeat(100)).unwrap();
    std::fs::write(root.join("home/user/notes.txt"), support::bytes(300_000, 7, true)).unwrap();
    std::fs::set_permissions(root.join("home/user/notes.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::write(root.join("etc/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    std::fs::set_permissions(root.join("etc/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink("../../etc/hostname", root.join("home/user/hostname-link")).unwrap();
    std::os::unix::fs::symlink("/etc/conf.d/app.conf", root.join("home/user/abs-link")).unwrap();
    std::fs::hard_link(root.join("etc/hostname"), root.join("home/user/hostname-hard")).unwrap();
    // 4 MiB with 8 KiB of data at 1 MiB: sparse.
    let f = std::fs::File::create(root.join("home/user/sparse.img")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xabu8; 8192], 1 << 20).unwrap();
    f.set_len(4 << 20).unwrap();
    drop(f);
    run(Command::new("mkfifo").arg(root.join("home/user/fifo")));
    run(Command::new("touch").args(["-h", "-d", "2021-03-04 05:06:07 UTC"]).arg(root.join("etc/hostname")));
    run(Command::new("touch").args(["-d", "2020-01-01 00:00:00 UTC"]).arg(root.join("etc/conf.d")));
}

/// A bare ext4 image of `src` (64 MiB).
fn ext4_image(dir: &Path, src: &Path) -> PathBuf {
    let img = dir.join("fs.raw");
    std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    run(Command::new("mke2fs").args(["-q", "-t", "ext4", "-b", "4096", "-d"]).arg(src).arg(&img));
    img
}

fn qemu_convert(from: &Path, to: &Path, compressed: bool) {
    let mut c = Command::new("qemu-img");
    c.args(["convert", "-f", "raw", "-O", "qcow2"]);
    if compressed {
        c.arg("-c");
    }
    run(c.arg(from).arg(to));
}

fn debugfs(img: &Path, request: &str) -> Vec<u8> {
    let o = Command::new("debugfs").arg("-R").arg(request).arg(img).output().unwrap();
    assert!(o.status.success(), "debugfs -R {request}: {}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

/// `debugfs -R "ls -l DIR"` as name → (ino, mode, uid, gid, size), without `.` and `..`.
fn debugfs_ls(img: &Path, dir: &str) -> BTreeMap<String, (u64, u32, u32, u32, u64)> {
    let text = String::from_utf8(debugfs(img, &format!("ls -l {dir}"))).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 {
            continue;
        }
        let name = f[8..].join(" ");
        if name == "." || name == ".." {
            continue;
        }
        let mode = u32::from_str_radix(f[1], 8).unwrap();
        out.insert(name, (f[0].parse().unwrap(), mode & 0o7777, f[3].parse().unwrap(), f[4].parse().unwrap(), f[5].parse().unwrap_or(0)));
    }
    out
}

fn snapshot_id(v: &Value) -> String {
    v["snapshot"].as_str().or_else(|| v["id"].as_str()).unwrap().to_string()
}

#[test]
fn ls_and_cat_equal_debugfs_on_raw_qcow2_and_compressed_qcow2() {
    if !need(&["mke2fs", "debugfs", "qemu-img", "mkfifo"]) {
        return;
    }
    let env = Env::init("64K");
    let src = env.path("src");
    source_tree(&src);
    let raw = ext4_image(env.dir.path(), &src);
    let qcow2 = env.path("fs.qcow2");
    let zqcow2 = env.path("fs-c.qcow2");
    qemu_convert(&raw, &qcow2, false);
    qemu_convert(&raw, &zqcow2, true);
    for (img, name) in [(&raw, "raw"), (&qcow2, "qcow2"), (&zqcow2, "zqcow2")] {
        let snap = snapshot_id(&env.archive(img, name));
        for dir in ["/", "/etc", "/home/user", "/etc/conf.d"] {
            let want = debugfs_ls(&raw, dir);
            let got = env.json(&["ls", &snap, dir]);
            let entries = got["entries"].as_array().unwrap();
            let mut have = BTreeMap::new();
            for e in entries {
                let path = e["path"].as_str().unwrap();
                let name = path.rsplit('/').next().unwrap().to_string();
                let size = if e["type"] == "directory" || e["type"] == "fifo" {
                    want.get(&name).map_or(0, |w| w.4)
                } else {
                    support::u(e, "size")
                };
                have.insert(
                    name,
                    (support::u(e, "ino"), support::u(e, "mode") as u32, support::u(e, "uid") as u32, support::u(e, "gid") as u32, size),
                );
            }
            assert_eq!(have, want, "{name}: ls {dir}");
            assert!(got["bytes_read"].as_u64().unwrap() > 0);
        }
        for file in ["/etc/hostname", "/etc/conf.d/app.conf", "/home/user/notes.txt", "/home/user/sparse.img", "/etc/tool"] {
            let out = env.cmd(&["cat", &snap, file]).output().unwrap();
            assert!(out.status.success(), "cat {file}: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.stdout, debugfs(&raw, &format!("cat {file}")), "{name}: cat {file}");
            assert_eq!(out.stdout, std::fs::read(src.join(&file[1..])).unwrap(), "{name}: cat {file} vs the source");
        }
        // A symlink as the path of cat is followed; ls shows it as a link.
        let out = env.cmd(&["cat", &snap, "/home/user/hostname-link"]).output().unwrap();
        assert_eq!(out.stdout, b"guest-1\n");
        let l = env.json(&["ls", &snap, "/home/user/hostname-link"]);
        assert_eq!(l["entries"][0]["type"], "symlink");
        assert_eq!(l["entries"][0]["link_target"], "../../etc/hostname");
        // `cat --json` puts its document on stderr, stdout stays the file.
        let out = env.cmd(&["--json", "cat", &snap, "/etc/hostname"]).output().unwrap();
        assert_eq!(out.stdout, b"guest-1\n");
        let doc: Value = serde_json::from_slice(&out.stderr).expect("cat --json: a JSON document on stderr");
        assert_eq!(doc["size"], 8);
        assert!(doc["bytes_read"].as_u64().unwrap() > 0);
        // Missing paths name the path.
        let bad = env.run(&["cat", &snap, "/etc/nope"]);
        assert!(!bad.status.success());
        assert!(String::from_utf8_lossy(&bad.stderr).contains("nope"), "{}", String::from_utf8_lossy(&bad.stderr));
    }
}

#[test]
fn extract_of_a_tree_equals_the_source_tree() {
    if !need(&["mke2fs", "qemu-img", "mkfifo"]) {
        return;
    }
    let env = Env::init("64K");
    let src = env.path("src");
    source_tree(&src);
    let raw = ext4_image(env.dir.path(), &src);
    let qcow2 = env.path("fs.qcow2");
    qemu_convert(&raw, &qcow2, true);
    let snap = snapshot_id(&env.archive(&qcow2, "vm"));
    let out = env.path("out");
    let r = env.json(&["extract", &snap, "/", "-o", out.to_str().unwrap()]);
    assert!(r["files"].as_u64().unwrap() >= 5, "{r}");
    assert!(r["bytes_read"].as_u64().unwrap() > 0);
    compare_trees(&src, &out);
    // The sparse file is still sparse: 8 KiB of data, not 4 MiB of blocks.
    let m = std::fs::metadata(out.join("home/user/sparse.img")).unwrap();
    assert_eq!(m.len(), 4 << 20);
    assert!(m.blocks() * 512 <= 64 * 1024, "sparse.img takes {} bytes of blocks", m.blocks() * 512);
    // The hard link is a hard link again.
    let a = std::fs::metadata(out.join("etc/hostname")).unwrap();
    let b = std::fs::metadata(out.join("home/user/hostname-hard")).unwrap();
    assert_eq!(a.ino(), b.ino());
    // A second extract of a file into the same directory refuses to overwrite, with --overwrite replaces.
    env.ok(&["extract", &snap, "/etc/hostname", "-o", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(out.join("hostname")).unwrap(), b"guest-1\n");
    let again = env.run(&["extract", &snap, "/etc/hostname", "-o", out.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"), "{}", String::from_utf8_lossy(&again.stderr));
    std::fs::write(out.join("hostname"), "changed").unwrap();
    env.ok(&["extract", &snap, "/etc/hostname", "-o", out.to_str().unwrap(), "--overwrite"]);
    assert_eq!(std::fs::read(out.join("hostname")).unwrap(), b"guest-1\n");
    // A symlink planted in the output directory is never followed.
    let trap = env.path("trap");
    std::fs::create_dir_all(&trap).unwrap();
    let out2 = env.path("out2");
    std::fs::create_dir_all(&out2).unwrap();
    std::os::unix::fs::symlink(&trap, out2.join("etc")).unwrap();
    let r = env.run(&["extract", &snap, "/etc", "-o", out2.to_str().unwrap(), "--overwrite"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read_dir(&trap).unwrap().count(), 0, "extract wrote through a symlink");
    assert!(out2.join("etc").symlink_metadata().unwrap().is_dir());
}

/// Every file of `src` is in `out` with the same type, bytes, permission bits, mtime and link target.
fn compare_trees(src: &Path, out: &Path) {
    let mut n = 0;
    for entry in walk(src) {
        let rel = entry.strip_prefix(src).unwrap();
        let (a, b) =
            (entry.symlink_metadata().unwrap(), out.join(rel).symlink_metadata().unwrap_or_else(|e| panic!("{}: {e}", rel.display())));
        assert_eq!(a.file_type(), b.file_type(), "{}", rel.display());
        if !a.file_type().is_symlink() {
            assert_eq!(a.mode() & 0o7777, b.mode() & 0o7777, "{}: mode", rel.display());
        }
        if !a.is_dir() {
            assert_eq!(a.mtime(), b.mtime(), "{}: mtime", rel.display());
        }
        if a.is_file() {
            assert_eq!(std::fs::read(&entry).unwrap(), std::fs::read(out.join(rel)).unwrap(), "{}: bytes", rel.display());
        }
        if a.file_type().is_symlink() {
            assert_eq!(std::fs::read_link(&entry).unwrap(), std::fs::read_link(out.join(rel)).unwrap(), "{}", rel.display());
        }
        n += 1;
    }
    // Directory mtimes once their contents are in place.
    let conf = out.join("etc/conf.d").metadata().unwrap();
    assert_eq!(conf.mtime(), src.join("etc/conf.d").metadata().unwrap().mtime());
    assert!(n > 10);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if p.symlink_metadata().unwrap().is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

#[test]
fn random_bytes_and_a_damaged_superblock_are_clear_errors() {
    if !need(&["mke2fs"]) {
        return;
    }
    let env = Env::init("64K");
    let noise = env.path("noise.raw");
    std::fs::write(&noise, support::bytes(4 << 20, 99, false)).unwrap();
    let snap = snapshot_id(&env.archive(&noise, "noise"));
    let r = env.run(&["ls", &snap]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("no filesystem imgarc reads") && err.contains("unrecognised bytes"), "{err}");

    let src = env.path("src");
    source_tree(&src);
    let raw = ext4_image(env.dir.path(), &src);
    // Garbage over the primary superblock (bytes 1024..2048), the magic left in place.
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    let mut garbage = support::bytes(1024, 5, false);
    garbage[56] = 0x53;
    garbage[57] = 0xef;
    std::os::unix::fs::FileExt::write_all_at(&f, &garbage, 1024).unwrap();
    drop(f);
    let snap = snapshot_id(&env.archive(&raw, "damaged"));
    let r = env.run(&["ls", &snap, "/"]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("the disk"), "the error names the volume: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// The corpus's two nights of vm-a: `diff` lists exactly the files that differ between
/// `debugfs -R "rdump / DIR"` of both, and `cat` of a small file reads < 1 % of the stored bytes.
#[test]
fn corpus_diff_equals_debugfs_and_cat_reads_little() {
    let Some(corpus) = std::env::var_os("IMGARC_CORPUS").map(PathBuf::from) else {
        support::skip_or_fail_in_ci("IMGARC_CORPUS is not set (.ci/run builds the corpus)");
        return;
    };
    if !need(&["debugfs", "sfdisk"]) {
        return;
    }
    // The default chunk size: what `cat` reads is a handful of chunks of filesystem metadata and data.
    let env = Env::init("64K");
    let night = |n: u32, ext: &str| corpus.join(format!("vm-a/night-{n:02}.{ext}"));
    let a = snapshot_id(&env.archive(&night(0, "qcow2"), "vm-a"));
    let b = snapshot_id(&env.archive(&night(1, "raw"), "vm-a"));
    let tops = env.json(&["ls", &a]);
    let vols = tops["volumes"].as_array().unwrap();
    let fs_vol = vols.iter().find(|v| v["filesystem"] == "ext4").expect("an ext4 partition");
    let vol = fs_vol["name"].as_str().unwrap().to_string();
    let offset = fs_vol["disk_offset"].as_u64().unwrap();

    // The truth: both nights' ext4 dumped by debugfs, then compared.
    let truth = |n: u32| -> PathBuf {
        let img = env.path(&format!("night{n}.ext4"));
        let raw = night(n, "raw");
        let raw = if raw.exists() { raw } else { panic!("{} is needed", raw.display()) };
        run(Command::new("dd").arg(format!("if={}", raw.display())).arg(format!("of={}", img.display())).args([
            "bs=1M",
            &format!("skip={}", offset >> 20),
            "status=none",
        ]));
        let dir = env.path(&format!("rdump{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        debugfs(&img, &format!("rdump / {}", dir.display()));
        dir
    };
    let (da, db) = (truth(0), truth(1));
    let files = |root: &Path| -> BTreeMap<String, (Vec<u8>, u32)> {
        walk(root)
            .into_iter()
            .filter(|p| p.symlink_metadata().unwrap().is_file())
            .map(|p| {
                let m = p.symlink_metadata().unwrap();
                (p.strip_prefix(root).unwrap().display().to_string(), (std::fs::read(&p).unwrap(), m.mode() & 0o7777))
            })
            .collect()
    };
    let (fa, fb) = (files(&da), files(&db));
    let added: BTreeSet<String> = fb.keys().filter(|k| !fa.contains_key(*k)).map(|k| format!("{vol}/{k}")).collect();
    let removed: BTreeSet<String> = fa.keys().filter(|k| !fb.contains_key(*k)).map(|k| format!("{vol}/{k}")).collect();
    let changed: BTreeSet<String> =
        fa.iter().filter(|(k, v)| fb.get(*k).is_some_and(|w| w != *v)).map(|(k, _)| format!("{vol}/{k}")).collect();
    assert!(!added.is_empty() || !changed.is_empty(), "the nights differ");

    let d = env.json(&["diff", &a, &b]);
    let set = |k: &str| -> BTreeSet<String> { d[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect() };
    // Regular files only on the imgarc side (directories and symlinks are compared too).
    let regular = |s: BTreeSet<String>| -> BTreeSet<String> {
        s.into_iter().filter(|p| fa.contains_key(&p[vol.len() + 1..]) || fb.contains_key(&p[vol.len() + 1..])).collect()
    };
    assert_eq!(regular(set("added")), added, "added");
    assert_eq!(regular(set("removed")), removed, "removed");
    // A changed file's bytes or mode differ in debugfs's dump; diff may also see an mtime-only change.
    let got_changed = regular(set("changed"));
    assert!(changed.is_subset(&got_changed), "changed: missing {:?}", changed.difference(&got_changed).collect::<Vec<_>>());
    assert!(d["unchanged_by_chunks"].as_u64().unwrap() > 0, "unchanged files recognised by chunk id: {d}");

    // series.json's counts agree: files added and deleted exactly; upgraded ones are among the changed
    // (appended logs and the database file change too).
    let series: Value = serde_json::from_str(&std::fs::read_to_string(corpus.join("series.json")).unwrap()).unwrap();
    let n = &series["vms"]["vm-a"]["nights"][1];
    assert_eq!(n["added"].as_u64().unwrap() as usize, added.len(), "series.json added");
    assert_eq!(n["deleted"].as_u64().unwrap() as usize, removed.len(), "series.json deleted");
    assert!(changed.len() >= n["upgraded"].as_u64().unwrap() as usize, "series.json upgraded");

    // cat of a small file reads < 1 % of the snapshot's stored bytes.
    let small = fb.iter().find(|(_, (bytes, _))| !bytes.is_empty() && bytes.len() < 64 * 1024).map(|(k, _)| k.clone()).unwrap();
    let out = env.cmd(&["--json", "cat", &b, &format!("{vol}/{small}")]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, fb[&small].0);
    let doc: Value = serde_json::from_slice(&out.stderr).unwrap();
    // The image's chunks: night 0 stored them all (night 1 only its few new ones).
    let stored: u64 = env.json(&["show", &a])["stats"]["stored_bytes_added"].as_u64().unwrap();
    let read = doc["bytes_read"].as_u64().unwrap();
    assert!(read * 100 < stored, "cat read {read} of {stored} stored bytes");
}

#[test]
fn find_lists_the_snapshots_holding_a_path_and_its_versions() {
    if !need(&["mke2fs", "mkfifo"]) {
        return;
    }
    let env = Env::init("64K");
    let src = env.path("src");
    source_tree(&src);
    let one = ext4_image(env.dir.path(), &src);
    let s1 = snapshot_id(&env.archive(&one, "vm"));
    std::fs::write(src.join("etc/hostname"), "guest-2\n").unwrap();
    std::fs::write(src.join("etc/new.conf"), "new\n").unwrap();
    std::fs::remove_file(src.join("home/user/hostname-hard")).unwrap();
    let two = env.path("two.raw");
    std::fs::File::create(&two).unwrap().set_len(64 << 20).unwrap();
    run(Command::new("mke2fs").args(["-q", "-t", "ext4", "-b", "4096", "-d"]).arg(&src).arg(&two));
    let s2 = snapshot_id(&env.archive(&two, "vm"));
    let r = env.json(&["find", "/etc/*"]);
    assert_eq!(r["snapshots_searched"], 2);
    assert_eq!(r["catalogs_built"], 2);
    let by_path: BTreeMap<&str, &Value> = r["matches"].as_array().unwrap().iter().map(|m| (m["path"].as_str().unwrap(), m)).collect();
    let host = by_path["/etc/hostname"];
    assert_eq!(host["snapshots"].as_array().unwrap().len(), 2);
    assert_eq!(host["versions"].as_array().unwrap().len(), 2, "{host}");
    assert_eq!(host["versions"][1]["snapshot"], s2);
    let tool = by_path["/etc/tool"];
    assert_eq!(tool["versions"].as_array().unwrap().len(), 1, "unchanged: one version");
    assert_eq!(tool["versions"][0]["snapshot"], s1);
    assert_eq!(by_path["/etc/new.conf"]["snapshots"].as_array().unwrap().len(), 1);
    // The second run reads the catalogs from the cache.
    let again = env.json(&["find", "hostname*"]);
    assert_eq!(again["catalogs_built"], 0);
    assert_eq!(again["bytes_read"], 0);
    assert!(again["matches"].as_array().unwrap().iter().any(|m| m["path"] == "/home/user/hostname-hard"));

    // diff of the two snapshots says the same.
    let d = env.json(&["diff", &s1, &s2]);
    assert!(d["changed"].as_array().unwrap().iter().any(|p| p == "/etc/hostname"), "{d}");
    assert!(d["added"].as_array().unwrap().iter().any(|p| p == "/etc/new.conf"), "{d}");
    assert!(d["removed"].as_array().unwrap().iter().any(|p| p == "/home/user/hostname-hard"), "{d}");
    assert!(!d["changed"].as_array().unwrap().iter().any(|p| p == "/etc/tool"), "{d}");
    let text = env.ok(&["diff", &s1, &s2]);
    assert!(text.lines().any(|l| l == "M /etc/hostname"), "{text}");
    assert!(text.lines().any(|l| l == "+ /etc/new.conf"), "{text}");
    assert!(text.lines().any(|l| l == "- /home/user/hostname-hard"), "{text}");
}

/// One disk the way a UEFI cloud image is laid out: GPT with an EFI system
/// partition (FAT, made by mkfs.vfat + mtools) and a Linux partition holding XFS
/// (made by `mkfs.xfs -p PROTOFILE`), archived as qcow2. `ls` names both volumes
/// and their filesystems, `cat` reads from each, `extract` of the XFS tree
/// equals the source (bytes, modes, owners from the proto file, the symlink).
#[test]
fn gpt_disk_with_an_esp_and_xfs_reads_through_the_cli() {
    if !need(&["sgdisk", "mkfs.vfat", "mmd", "mcopy", "mkfs.xfs", "qemu-img"]) {
        return;
    }
    let env = Env::init("64K");
    let src = env.path("tree");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), "hello xfs\n").unwrap();
    let big = support::bytes(300_000, 7, false);
    std::fs::write(src.join("sub/big.bin"), &big).unwrap();
    let proto = env.path("proto");
    std::fs::write(
        &proto,
        format!(
            "/dev/null\n0 0\nd--755 0 0\na.txt ---644 0 0 {a}\nsub d--750 1000 1000\nbig.bin ---600 1000 1000 {b}\n$\nlink l--777 0 0 a.txt\n$\n$\n",
            a = src.join("a.txt").display(),
            b = src.join("sub/big.bin").display()
        ),
    )
    .unwrap();
    // mkfs.xfs refuses images under 300 MB unless told it is a test setup.
    let xfs = env.path("xfs.img");
    std::fs::File::create(&xfs).unwrap().set_len(360 << 20).unwrap();
    run(Command::new("mkfs.xfs").args(["-q", "-p"]).arg(&proto).arg(&xfs).envs([
        ("TEST_DEV", "1"),
        ("TEST_DIR", "1"),
        ("QA_CHECK_FS", "1"),
    ]));
    let fat = env.path("fat.img");
    std::fs::File::create(&fat).unwrap().set_len(32 << 20).unwrap();
    run(Command::new("mkfs.vfat").args(["-n", "ESP"]).arg(&fat));
    let efi = env.path("bootx64.efi");
    std::fs::write(&efi, "boot me\n").unwrap();
    run(Command::new("mmd").arg("-i").arg(&fat).arg("::EFI"));
    run(Command::new("mcopy").arg("-i").arg(&fat).arg(&efi).arg("::EFI/"));
    let disk = env.path("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(400 << 20).unwrap();
    run(Command::new("sgdisk").args(["-o", "-n1:2048:+32M", "-t1:ef00", "-n2:0:0", "-t2:8300"]).arg(&disk));
    let info = run(Command::new("sgdisk").args(["-i", "2"]).arg(&disk));
    let p2: u64 = info.lines().find_map(|l| l.strip_prefix("First sector: ")).and_then(|l| l.split(' ').next()).unwrap().parse().unwrap();
    for (img, sector) in [(&fat, 2048u64), (&xfs, p2)] {
        run(Command::new("dd").arg(format!("if={}", img.display())).arg(format!("of={}", disk.display())).args([
            "bs=512",
            &format!("seek={sector}"),
            "conv=sparse,notrunc",
            "status=none",
        ]));
    }
    let qcow2 = env.path("disk.qcow2");
    qemu_convert(&disk, &qcow2, false);
    let snap = snapshot_id(&env.archive(&qcow2, "uefi-vm"));

    let top = env.json(&["ls", &snap]);
    let vols: BTreeMap<&str, &str> =
        top["volumes"].as_array().unwrap().iter().map(|v| (v["name"].as_str().unwrap(), v["filesystem"].as_str().unwrap_or(""))).collect();
    assert_eq!(vols.get("p1"), Some(&"vfat"), "{top}");
    assert_eq!(vols.get("p2"), Some(&"xfs"), "{top}");
    let cat = |path: &str| env.cmd(&["cat", &snap, path]).output().unwrap();
    assert_eq!(cat("p1/EFI/bootx64.efi").stdout, b"boot me\n");
    assert_eq!(cat("p2/a.txt").stdout, b"hello xfs\n");
    assert_eq!(cat("p2/link").stdout, b"hello xfs\n", "cat follows the symlink");
    assert_eq!(cat("p2/sub/big.bin").stdout, big);

    let out = env.path("out");
    env.ok(&["extract", &snap, "p2/", "-o", out.to_str().unwrap()]);
    let root = if out.join("a.txt").exists() { out.clone() } else { out.join("p2") };
    assert_eq!(std::fs::read(root.join("a.txt")).unwrap(), b"hello xfs\n");
    assert_eq!(std::fs::read(root.join("sub/big.bin")).unwrap(), big);
    assert_eq!(std::fs::read_link(root.join("link")).unwrap(), Path::new("a.txt"));
    let m = std::fs::metadata(root.join("sub/big.bin")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o600);
    assert_eq!(std::fs::metadata(root.join("sub")).unwrap().permissions().mode() & 0o7777, 0o750);
    if running_as_root() {
        assert_eq!((m.uid(), m.gid()), (1000, 1000), "owners from the proto file");
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

//! `imgarc drill` on real images: the corpus's raw and QCOW2 nights and a compressed QCOW2
//! made from them by `qemu-img convert -c` pass (rebuilt against their digests, partitions
//! and ext4 walked, file counts as make-series recorded them); a damaged chunk, a damaged
//! filesystem and a swap partition each give the verdict they must; `--sample` favours the
//! images drilled longest ago; the exit codes 0/3/1/2 and the stored records.

use crate::support::{self, Env};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The corpus's night 0 of vm-a (raw and qcow2) and what make-series recorded of it.
fn corpus_night0() -> Option<(PathBuf, PathBuf, u64)> {
    let Some(dir) = std::env::var_os("IMGARC_CORPUS").map(PathBuf::from) else {
        support::skip_or_fail_in_ci("IMGARC_CORPUS is not set (.ci/run builds the corpus)");
        return None;
    };
    let series: Value = serde_json::from_slice(&std::fs::read(dir.join("series.json")).unwrap()).unwrap();
    let files = series["vms"]["vm-a"]["nights"][0]["files"].as_u64().unwrap();
    Some((dir.join("vm-a/night-00.raw"), dir.join("vm-a/night-00.qcow2"), files))
}

fn check<'a>(drill: &'a Value, name: &str) -> &'a Value {
    drill["checks"].as_array().unwrap().iter().find(|c| c["check"] == name).unwrap_or_else(|| panic!("no check {name} in {drill}"))
}

/// Runs `imgarc --json drill ARGS`; returns the exit code and the document.
fn drill(env: &Env, args: &[&str]) -> (i32, Value) {
    let mut a = vec!["--json", "drill"];
    a.extend_from_slice(args);
    let o = env.run(&a);
    let doc = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("drill {args:?}: {e}: {}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)));
    (o.status.code().unwrap(), doc)
}

fn record_count(env: &Env) -> usize {
    std::fs::read_dir(env.repo.join("drills")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn drills_of_raw_qcow2_and_compressed_qcow2_pass() {
    let Some((raw, qcow2, files)) = corpus_night0() else { return };
    let env = Env::init("64K");
    let qcow2c = env.path("night-00.c.qcow2");
    support::qcow2_util::qemu_img(&["convert", "-c", "-O", "qcow2", raw.to_str().unwrap(), qcow2c.to_str().unwrap()]);
    for (path, name) in [(&raw, "raw"), (&qcow2, "qcow2"), (&qcow2c, "qcow2c")] {
        env.ok(&["archive", path.to_str().unwrap(), "--name", name, "--digest", "sha256,md5"]);
    }
    // Default choice: the newest snapshot of each image (three names, three images).
    let (code, doc) = drill(&env, &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["ok"], true);
    let drills = doc["drills"].as_array().unwrap();
    assert_eq!(drills.len(), 3, "{doc}");
    assert_eq!(doc["passed"], 3);
    assert_eq!(doc["records_stored"], 3);
    for d in drills {
        assert_eq!(d["ok"], true, "{d}");
        assert!(d["error"].is_null(), "{d}");
        assert!(d["seconds"].as_f64().unwrap() > 0.0);
        let rebuild = check(d, "rebuild");
        assert_eq!(rebuild["status"], "passed", "{d}");
        assert!(rebuild["detail"].as_str().unwrap().contains("md5, sha256 verified"), "{rebuild}");
        assert_eq!(check(d, "partitions")["status"], "passed");
        assert!(check(d, "partitions")["detail"].as_str().unwrap().starts_with("GPT"), "{d}");
        let fs = check(d, "filesystem p1");
        assert_eq!(fs["status"], "passed", "{d}");
        let detail = fs["detail"].as_str().unwrap();
        assert!(detail.starts_with("ext4"), "{detail}");
        assert!(detail.contains(&format!(" {files} files ")), "make-series wrote {files} files: {detail}");
    }
    assert_eq!(record_count(&env), 3);

    // --deep reads every file: the bytes read are what the files hold.
    let (code, doc) = drill(&env, &["--deep", "--name", "qcow2c"]);
    assert_eq!(code, 0, "{doc}");
    let detail = check(&doc["drills"][0], "filesystem p1")["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("every file read"), "{detail}");
    assert_eq!(record_count(&env), 4, "every drill adds its record");

    // A stored record reads back (the name check and the seal) as the drill reported it.
    let repo = env.open_repo();
    let names = repo.list_drill_records().unwrap();
    assert_eq!(names.len(), 4);
    let records: Vec<_> = names.iter().map(|(n, size)| repo.load_drill_record(n, Some(*size)).unwrap()).collect();
    assert!(records.iter().any(|r| r.name == "qcow2c" && r.checks.iter().any(|c| c.detail.as_deref() == Some(detail.as_str()))));
}

#[test]
fn a_damaged_chunk_fails_the_drill_and_names_the_chunk_and_the_snapshot() {
    let env = Env::init("64K");
    let disk = env.path("disk.raw");
    std::fs::write(&disk, support::bytes(3 << 20, 11, false)).unwrap();
    env.ok(&["archive", disk.to_str().unwrap(), "--name", "victim", "--digest", "sha256"]);
    let packs = env.packs();
    assert_eq!(packs.len(), 1, "one pack holds the 3 MiB disk");
    let mut bytes = std::fs::read(&packs[0]).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&packs[0], bytes).unwrap();
    let (code, doc) = drill(&env, &[]);
    assert_eq!(code, 3, "{doc}");
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["failed"], 1);
    let d = &doc["drills"][0];
    assert_eq!(d["ok"], false);
    assert_eq!(check(d, "rebuild")["status"], "failed");
    let error = d["error"].as_str().unwrap();
    assert!(error.starts_with("rebuild: chunk "), "{error}");
    let chunk = error["rebuild: chunk ".len()..].split(' ').next().unwrap();
    assert_eq!(chunk.len(), 64, "the damaged chunk's id: {error}");
    assert!(error.contains("victim"), "the snapshot is named: {error}");
    assert_eq!(record_count(&env), 1, "a failed drill is recorded too");
    // Prose names the same.
    let o = env.run(&["drill"]);
    assert_eq!(o.status.code(), Some(3));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("FAIL") && out.contains(chunk), "{out}");
}

fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// An MBR disk of 40 MiB: p1 an ext4 of `src` (24 MiB at 1 MiB), p2 Linux swap (the rest).
fn ext4_and_swap_disk(dir: &Path, src: &Path) -> (PathBuf, u64) {
    let fs = dir.join("p1.ext4");
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-b", "4096", "-L", "data", "-d"]).arg(src).arg(&fs).arg("24M"));
    let swap = dir.join("p2.swap");
    std::fs::File::create(&swap).unwrap().set_len(15 << 20).unwrap();
    run(Command::new("mkswap").arg(&swap));
    let disk = dir.join("disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(40 << 20).unwrap();
    let script = "label: dos\nstart=2048, size=49152, type=83\nstart=51200, type=82\n";
    let mut sfdisk = Command::new("sfdisk").arg("-q").arg(&disk).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(sfdisk.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &std::fs::read(&fs).unwrap(), 1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &std::fs::read(&swap).unwrap(), 25 << 20).unwrap();
    (disk, 1 << 20)
}

#[test]
fn swap_is_unchecked_and_a_damaged_filesystem_fails_although_the_bytes_restore() {
    if !["mkfs.ext4", "mkswap", "sfdisk", "debugfs"].iter().all(|t| have(t)) {
        return support::skip_or_fail_in_ci("mkfs.ext4, mkswap, sfdisk or debugfs is not installed (e2fsprogs, util-linux, fdisk)");
    }
    let env = Env::init("64K");
    let src = env.path("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), "drilled\n").unwrap();
    std::fs::write(src.join("data.bin"), support::bytes(2 << 20, 3, false)).unwrap();
    let (disk, p1_offset) = ext4_and_swap_disk(env.dir.path(), &src);
    env.ok(&["archive", disk.to_str().unwrap(), "--name", "good"]);
    let (code, doc) = drill(&env, &["--name", "good"]);
    assert_eq!(code, 0, "{doc}");
    let d = &doc["drills"][0];
    assert_eq!(check(d, "partitions")["detail"], "MBR, 2 volumes");
    assert_eq!(check(d, "filesystem p1")["status"], "passed");
    let p2 = check(d, "filesystem p2");
    assert_eq!(p2["status"], "unchecked", "{d}");
    assert!(p2["detail"].as_str().unwrap().contains("Linux swap"), "{p2}");

    // The root directory's inode (2) damaged in place: its checksum no longer matches. The
    // image restores byte-exactly (the archive holds what it was given) but the drill fails.
    let stat = run(Command::new("debugfs").arg("-R").arg("imap <2>").arg(env.dir.path().join("p1.ext4")));
    // "located at block 1060, offset 0x0100"
    let located = stat.split("located at block ").nth(1).unwrap_or_else(|| panic!("debugfs imap: {stat}"));
    let block: u64 = located.split(',').next().unwrap().trim().parse().unwrap();
    let offset = u64::from_str_radix(located.split("offset 0x").nth(1).unwrap().split_whitespace().next().unwrap(), 16).unwrap();
    let bad = env.path("bad.raw");
    std::fs::copy(&disk, &bad).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&bad).unwrap();
    // i_mode's low byte and a byte of i_size: a checksum mismatch whatever the values.
    let inode = p1_offset + block * 4096 + offset;
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a], inode + 4).unwrap();
    drop(f);
    env.ok(&["archive", bad.to_str().unwrap(), "--name", "bad"]);
    let (code, doc) = drill(&env, &["--name", "bad"]);
    assert_eq!(code, 3, "{doc}");
    let d = &doc["drills"][0];
    assert_eq!(check(d, "rebuild")["status"], "passed", "the bytes restore: {d}");
    let fs = check(d, "filesystem p1");
    assert_eq!(fs["status"], "failed", "{d}");
    assert!(d["error"].as_str().unwrap().starts_with("filesystem p1: "), "{d}");
    assert!(fs["detail"].as_str().unwrap().contains("checksum"), "the damage is named: {fs}");
}

#[test]
fn sample_takes_the_images_never_drilled_first() {
    let env = Env::init("64K");
    let mut ids = Vec::new();
    for (i, name) in ["alpha", "beta", "gamma"].iter().enumerate() {
        let disk = env.path(&format!("{name}.raw"));
        std::fs::write(&disk, support::bytes(256 << 10, 20 + i as u64, false)).unwrap();
        ids.push(support::s(&env.archive(&disk, name), "snapshot"));
    }
    // beta was drilled just now; alpha and gamma never.
    let (code, _) = drill(&env, &[&ids[1]]);
    assert_eq!(code, 0);
    let (code, doc) = drill(&env, &["--sample", "2"]);
    assert_eq!(code, 0, "{doc}");
    let mut names: Vec<&str> = doc["drills"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    names.sort();
    // A never-drilled image weighs at least 60 days against beta's few seconds: beta is
    // drawn with a probability below 1e-5.
    assert_eq!(names, ["alpha", "gamma"], "{doc}");
    // --sample larger than the choice drills all of it.
    let (_, doc) = drill(&env, &["--sample", "9"]);
    assert_eq!(doc["drills"].as_array().unwrap().len(), 3);
}

#[test]
fn exit_codes_usage_errors_and_a_drill_that_cannot_run() {
    let env = Env::init("64K");
    let disk = env.path("disk.raw");
    std::fs::write(&disk, support::bytes(1 << 20, 5, false)).unwrap();
    // Nothing to drill: exit 1 with an error document.
    let (code, doc) = drill(&env, &[]);
    assert_eq!(code, 1, "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("no snapshot to drill"), "{doc}");
    env.archive(&disk, "d");
    for (args, flag) in [(&["--keep"][..], "--keep"), (&["--to-cloud", "dr"][..], "--to-cloud"), (&["--expect", "x"][..], "--expect")] {
        let (code, doc) = drill(&env, args);
        assert_eq!(code, 2, "{args:?}: {doc}");
        assert!(doc["error"].as_str().unwrap().contains(flag), "{doc}");
    }
    // A boot that cannot even be tried (no qemu on PATH): the drill did not run; exit 1.
    let o = env.cmd(&["--json", "drill", "--boot", "--accel", "tcg"]).env("PATH", "/nonexistent").output().unwrap();
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(1), "{doc}");
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["not_run"], 1);
    let d = &doc["drills"][0];
    assert_eq!(check(d, "rebuild")["status"], "passed");
    assert_eq!(check(d, "boot")["status"], "error", "{d}");
    assert!(d["error"].as_str().unwrap().starts_with("boot: "), "{d}");
}

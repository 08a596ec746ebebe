//! `imgarc copy --to REPO2` through the binary: identity kept (time, name, tags), presence
//! (a copied snapshot is not copied again, also when copied back), incremental nights, encrypted
//! ↔ unencrypted and different keys, target passwords (a wrong one exits 12 naming the target),
//! selection, dry run, `--verify`, `--metrics-file`, exit 3 on a partly failed copy, and a copy
//! killed with SIGKILL and re-run. The structural copy into a target made with `init
//! --copy-chunker-params-from` (`rechunked: false`: raw, QCOW2, project scope, write-only target key,
//! incremental reads, killed and re-run), and a plain target still re-chunking. With `remote-tests`:
//! local → RGW (also structurally) and local → Swift, a second night, then the source deleted and
//! the image restored from the copy.

use crate::support::{bytes, s, u, Env};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// `imgarc copy --to TARGET ARGS...` on `src`, as JSON, asserting success.
fn copy(src: &Env, target: &Path, args: &[&str]) -> Value {
    let mut a = vec!["copy", "--to", target.to_str().unwrap()];
    a.extend_from_slice(args);
    src.json(&a)
}

/// An Env on the same cache as `of` whose repository is `repo` (to run verbs on a copy target).
fn at(of: &Env, repo: &Path) -> Env {
    let dir = tempfile::tempdir().unwrap();
    Env { dir, repo: repo.to_path_buf(), cache: of.cache.clone() }
}

/// A 6 MiB image; `night` > 0 changes a few scattered 64 KiB regions of the night before.
fn image(night: u64) -> Vec<u8> {
    let mut data = bytes(6 << 20, 77, false);
    for n in 1..=night {
        let at = ((n * 1_234_567) as usize) % (data.len() - (64 << 10));
        data[at..at + (64 << 10)].copy_from_slice(&bytes(64 << 10, 1000 + n, false));
    }
    data
}

fn rows(v: &Value) -> Vec<(String, String, Vec<String>)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let tags = r["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
            (r["name"].as_str().unwrap().to_string(), r["time"].as_str().unwrap().to_string(), tags)
        })
        .collect()
}

#[test]
fn copy_keeps_identity_is_incremental_and_knows_what_it_copied_both_ways() {
    let src = Env::init("64K");
    let dst = Env::init_unencrypted("64K");
    let p = src.path("vm.raw");
    std::fs::write(&p, image(0)).unwrap();
    src.ok(&["archive", p.to_str().unwrap(), "--name", "web-01", "--tag", "nightly"]);

    let r = copy(&src, &dst.repo, &[]);
    assert_eq!((u(&r, "snapshots_copied"), u(&r, "snapshots_present")), (1, 0), "{r}");
    assert_eq!(r["rechunked"], true);
    assert!(u(&r, "bytes_sent") >= 6 << 20, "the first copy sends the whole image: {r}");
    assert_eq!(u(&r, "chunks_sent"), u(&r["snapshots"][0], "chunks_sent"));
    // Time, name and tags are the source's (retention in the target depends on them).
    let listed = |e: &Env| rows(&e.json(&["list"]));
    let dst_env = at(&src, &dst.repo);
    assert_eq!(listed(&dst_env), listed(&src));
    assert_eq!(dst_env.restore_bytes(&s(&r["snapshots"][0], "target")), image(0));

    // Again: present, nothing sent.
    let again = copy(&src, &dst.repo, &[]);
    assert_eq!((u(&again, "snapshots_copied"), u(&again, "snapshots_present"), u(&again, "bytes_sent")), (0, 1, 0), "{again}");

    // A second night: only that night's new chunks go (the target re-chunks with its own
    // chunker, so the amount is close to, not equal to, what the source added).
    std::fs::write(&p, image(1)).unwrap();
    let night = src.json(&["archive", p.to_str().unwrap(), "--name", "web-01", "--tag", "nightly"]);
    let second = copy(&src, &dst.repo, &[]);
    assert_eq!((u(&second, "snapshots_copied"), u(&second, "snapshots_present")), (1, 1), "{second}");
    let added = u(&night, "stored_bytes_added");
    let sent = u(&second, "bytes_sent");
    assert!(sent < 3 * added + (512 << 10) && sent < 2 << 20, "night 2 sent {sent} bytes, the source added {added}: {second}");
    assert_eq!(second["snapshots"][0]["status"], "present");
    assert_eq!(dst_env.restore_bytes(&s(&second["snapshots"][1], "target")), image(1));

    // Back from the unencrypted copy into the encrypted original: both are present there.
    let back = dst_env.json(&["copy", "--to", src.repo.to_str().unwrap()]);
    assert_eq!((u(&back, "snapshots_copied"), u(&back, "snapshots_present")), (0, 2), "{back}");

    // Into a third repository with another password (--to-password-file): other keys, same bytes.
    let third = Env::new();
    let pw = src.path("third.pw");
    std::fs::write(&pw, "another password\n").unwrap();
    let o = third.cmd(&["init", "--chunk-size", "64K"]).env("IMGARC_PASSWORD", "another password").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r3 = copy(&dst_env, &third.repo, &["--to-password-file", pw.to_str().unwrap(), "--verify", "100%"]);
    assert_eq!(u(&r3, "snapshots_copied"), 2, "{r3}");
    assert_eq!(r3["verified"]["chunks_bad"], 0, "{r3}");
    assert!(u(&r3["verified"], "chunks_checked") > 0 && r3["verified"]["chunks_checked"] == r3["verified"]["chunks_total"], "{r3}");
    let third_env = at(&src, &third.repo);
    let o = third_env.cmd(&["--json", "list"]).env("IMGARC_PASSWORD", "another password").output().unwrap();
    let third_list: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows(&third_list), listed(&src));
    // The copy of a copy is present for the original too (same origin).
    let o =
        src.cmd(&["--json", "copy", "--to", third.repo.to_str().unwrap()]).env("IMGARC_TO_PASSWORD", "another password").output().unwrap();
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((u(&r, "snapshots_copied"), u(&r, "snapshots_present")), (0, 2), "{r}");
}

/// An off-site target written with a write-only key: the copy and its presence check work from
/// the heads alone; `--verify` (a read back) is refused before anything is copied.
#[test]
fn a_write_only_target_key_copies_and_sees_what_it_copied() {
    let src = Env::init("64K");
    let dst = Env::init("64K");
    let pw = src.path("wo.pw");
    std::fs::write(&pw, "write only\n").unwrap();
    dst.ok(&["key", "add", "--write-only", "--new-password-file", pw.to_str().unwrap()]);
    let p = src.path("a.raw");
    std::fs::write(&p, bytes(400_000, 4, false)).unwrap();
    src.archive(&p, "a");
    let pwf = pw.to_str().unwrap();
    let o = src.run(&["copy", "--to", dst.repo.to_str().unwrap(), "--to-password-file", pwf, "--verify", "10%"]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--verify"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(at(&src, &dst.repo).json(&["list"]).as_array().unwrap().is_empty(), "a refused --verify copied something");
    let r = copy(&src, &dst.repo, &["--to-password-file", pwf]);
    assert_eq!(u(&r, "snapshots_copied"), 1, "{r}");
    let again = copy(&src, &dst.repo, &["--to-password-file", pwf]);
    assert_eq!((u(&again, "snapshots_copied"), u(&again, "snapshots_present")), (0, 1), "{again}");
}

/// A QCOW2 image (decomposed layout) copies byte-exactly and stays decomposed in the target.
#[test]
fn a_qcow2_snapshot_copies_byte_exactly_and_decomposed() {
    use crate::support::qcow2_util as q;
    let src = Env::init("64K");
    let dst = Env::init_unencrypted("64K");
    let raw = src.path("disk.raw");
    q::make_raw(&raw, 3 << 20, 5);
    let qcow = q::convert(src.dir.path(), &raw, "disk.qcow2", &[]);
    let a = src.json(&["archive", qcow.to_str().unwrap(), "--name", "q", "--digest", "sha256"]);
    assert_eq!(a["format"], "qcow2", "{a}");
    let r = copy(&src, &dst.repo, &[]);
    let target = s(&r["snapshots"][0], "target");
    let dst_env = at(&src, &dst.repo);
    let shown = dst_env.json(&["show", &target]);
    assert_eq!(shown["layout"]["kind"], "qcow2", "{shown}");
    assert_eq!(shown["digests"], a["digests"], "{shown}");
    assert!(dst_env.restore_bytes(&target) == std::fs::read(&qcow).unwrap());
}

#[test]
fn a_wrong_target_password_exits_12_naming_the_target() {
    let src = Env::init("64K");
    let dst = Env::init("64K");
    let p = src.path("a.raw");
    std::fs::write(&p, bytes(300_000, 3, false)).unwrap();
    src.archive(&p, "a");
    let o = src.cmd(&["copy", "--to", dst.repo.to_str().unwrap()]).env("IMGARC_TO_PASSWORD", "not the password").output().unwrap();
    assert_eq!(o.status.code(), Some(12), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("target repository") && err.contains(dst.repo.to_str().unwrap()), "{err}");
    assert!(!err.contains("not the password"), "the password leaked: {err}");
    assert!(at(&src, &dst.repo).json(&["list"]).as_array().unwrap().is_empty());
}

#[test]
fn selection_and_dry_run_copy_only_what_they_name() {
    let src = Env::init("64K");
    let dst = Env::init("64K");
    let mut ids = Vec::new();
    for (i, name) in ["web-01", "db-01", "web-02"].iter().enumerate() {
        let p = src.path(name);
        std::fs::write(&p, bytes(200_000, 10 + i as u64, false)).unwrap();
        ids.push(s(&src.archive(&p, name), "snapshot"));
    }
    let dry = copy(&src, &dst.repo, &["--dry-run", "--name", "web-*"]);
    let statuses: Vec<&str> = dry["snapshots"].as_array().unwrap().iter().map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["would_copy", "would_copy"], "{dry}");
    assert_eq!(u(&dry, "bytes_sent"), 0);
    let dst_env = at(&src, &dst.repo);
    assert!(dst_env.json(&["list"]).as_array().unwrap().is_empty(), "a dry run wrote a snapshot");
    assert!(dst_env.packs().is_empty(), "a dry run wrote packs");
    // A dry run writes no metrics.
    let o = src.run(&["--metrics-file", src.path("m.prom").to_str().unwrap(), "copy", "--to", dst.repo.to_str().unwrap(), "--dry-run"]);
    assert_eq!(o.status.code(), Some(2));

    let r = copy(&src, &dst.repo, &["--name", "web-*"]);
    let sources: Vec<String> = r["snapshots"].as_array().unwrap().iter().map(|e| s(e, "source")).collect();
    assert_eq!(sources, [ids[0].clone(), ids[2].clone()]);
    let names: Vec<String> = rows(&dst_env.json(&["list"])).into_iter().map(|r| r.0).collect();
    assert_eq!(names, ["web-01", "web-02"]);
    // A positional id; metrics are written.
    let metrics = src.path("copy.prom");
    let o = src.run(&["--json", "--metrics-file", metrics.to_str().unwrap(), "copy", "--to", dst.repo.to_str().unwrap(), &ids[1][..12]]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(text.contains("imgarc_copy_snapshots{outcome=\"copied\"} 1"), "{text}");
    assert!(text.contains("imgarc_copy_bytes_sent"), "{text}");
    assert_eq!(dst_env.json(&["list"]).as_array().unwrap().len(), 3);
}

#[test]
fn a_snapshot_that_cannot_be_read_fails_alone_with_exit_3() {
    let src = Env::init_unencrypted("64K");
    let dst = Env::init("64K");
    let a = src.path("a");
    std::fs::write(&a, bytes(300_000, 1, false)).unwrap();
    let first = s(&src.archive(&a, "good"), "snapshot");
    let before = src.packs();
    let b = src.path("b");
    std::fs::write(&b, bytes(300_000, 2, false)).unwrap();
    src.archive(&b, "bad");
    let new_pack = src.packs().into_iter().find(|p| !before.contains(p)).expect("the second archive wrote a pack");
    let mut data = std::fs::read(&new_pack).unwrap();
    data[100] ^= 0x55;
    std::fs::write(&new_pack, &data).unwrap();
    let o = src.run(&["--json", "copy", "--to", dst.repo.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((u(&r, "snapshots_copied"), u(&r, "snapshots_failed")), (1, 1), "{r}");
    assert_eq!(r["ok"], false);
    assert_eq!(r["snapshots"][0]["source"], first.as_str());
    assert_eq!(r["snapshots"][1]["status"], "failed");
    assert_eq!(at(&src, &dst.repo).json(&["list"]).as_array().unwrap().len(), 1);
}

/// Starts `copy --to target`, SIGKILLs it once two packs have arrived, and asserts that it left
/// packs but no snapshot: the state a re-run must finish from.
fn kill_a_copy_after_two_packs(src: &Env, target: &Path, target_env: &Env) {
    let mut child = src
        .cmd(&["--json", "copy", "--to", target.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..4800 {
        if target_env.packs().len() >= 2 || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let arrived = target_env.packs().len();
    assert!(arrived >= 2, "the killed copy left {arrived} packs; the test needs some to check their reuse");
    assert!(target_env.json(&["list"]).as_array().unwrap().is_empty(), "a killed copy left a snapshot");
}

#[test]
fn a_copy_killed_mid_way_is_finished_by_a_rerun_without_resending() {
    let src = Env::init("64K");
    let dst = Env::init("64K");
    let data = bytes(96 << 20, 31, false);
    let p = src.path("big.raw");
    std::fs::write(&p, &data).unwrap();
    src.archive(&p, "big");
    let dst_env = at(&src, &dst.repo);
    kill_a_copy_after_two_packs(&src, &dst.repo, &dst_env);
    let r = copy(&src, &dst.repo, &[]);
    assert_eq!(u(&r, "snapshots_copied"), 1, "{r}");
    assert!(u(&r, "bytes_sent") < data.len() as u64, "the re-run sent everything again: {r}");
    assert_eq!(dst_env.json(&["check", "--read-data"])["ok"], true);
    assert!(dst_env.restore_bytes(&s(&r["snapshots"][0], "target")) == data);
}

/// A target made with `init --copy-chunker-params-from SRC` (the source's chunker params,
/// chunker key and id key: equal chunking fingerprints).
fn init_copying_params_of(src: &Env) -> Env {
    let dst = Env::new();
    dst.ok(&["init", "--copy-chunker-params-from", src.repo.to_str().unwrap()]);
    dst
}

/// A target made with `init --copy-chunker-params-from` is copied structurally (blobs by id,
/// `rechunked: false`, said in prose): a raw and a QCOW2 snapshot restore byte-exactly, the QCOW2
/// one stays decomposed with the source's digests, and `check --read-data` of the target is clean.
#[test]
fn a_target_sharing_the_chunker_params_is_copied_without_rechunking() {
    use crate::support::qcow2_util as q;
    let src = Env::init("64K");
    let dst = init_copying_params_of(&src);
    let p = src.path("vm.raw");
    std::fs::write(&p, image(0)).unwrap();
    let raw_snap = s(&src.archive(&p, "web-01"), "snapshot");
    let disk = src.path("disk.raw");
    q::make_raw(&disk, 3 << 20, 5);
    let qcow = q::convert(src.dir.path(), &disk, "disk.qcow2", &[]);
    let a = src.json(&["archive", qcow.to_str().unwrap(), "--name", "q", "--digest", "sha256"]);
    assert_eq!(a["format"], "qcow2", "{a}");

    let prose = src.ok(&["copy", "--to", dst.repo.to_str().unwrap()]);
    assert!(prose.contains("not re-chunked") && !prose.contains("images were re-chunked"), "{prose}");
    let dst_env = at(&src, &dst.repo);
    assert_eq!(rows(&dst_env.json(&["list"])), rows(&src.json(&["list"])));
    // Run again as JSON: both present; a third snapshot shows the structural report.
    let again = copy(&src, &dst.repo, &[]);
    assert_eq!((u(&again, "snapshots_copied"), u(&again, "snapshots_present"), u(&again, "bytes_read")), (0, 2, 0), "{again}");
    assert_eq!(again["rechunked"], false, "{again}");
    let copies: Vec<(String, String)> = again["snapshots"].as_array().unwrap().iter().map(|e| (s(e, "source"), s(e, "target"))).collect();
    let target_of = |source: &str| copies.iter().find(|(s, _)| s == source).unwrap().1.clone();
    assert!(dst_env.restore_bytes(&target_of(&raw_snap)) == image(0));
    let q_target = target_of(&s(&a, "snapshot"));
    let shown = dst_env.json(&["show", &q_target]);
    assert_eq!(shown["layout"]["kind"], "qcow2", "{shown}");
    assert_eq!(shown["digests"], a["digests"], "{shown}");
    assert!(dst_env.restore_bytes(&q_target) == std::fs::read(&qcow).unwrap());
    let check = dst_env.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");

    let p3 = src.path("c.raw");
    std::fs::write(&p3, bytes(500_000, 9, false)).unwrap();
    src.archive(&p3, "c");
    let r = copy(&src, &dst.repo, &["--verify", "100%"]);
    assert_eq!((u(&r, "snapshots_copied"), &r["rechunked"]), (1, &Value::Bool(false)), "{r}");
    assert_eq!(r["verified"]["chunks_bad"], 0, "{r}");
    assert!(u(&r["verified"], "chunks_checked") > 0 && r["verified"]["chunks_checked"] == r["verified"]["chunks_total"], "{r}");
    let copied = r["snapshots"].as_array().unwrap().iter().find(|e| e["status"] == "copied").unwrap();
    assert_eq!(copied["rechunked"], false, "{r}");
    assert!(dst_env.restore_bytes(&s(copied, "target")) == bytes(500_000, 9, false));
}

/// The second night of a structural copy reads from the source about that night's new chunks
/// (the report's `bytes_read`, which the library's unit test checks against the source backend's
/// own read counter) and sends exactly the chunks the night added; a plain-init target (other
/// chunker and id keys) still takes the re-archive path, which reads the whole image.
#[test]
fn an_incremental_structural_copy_reads_the_new_chunks_and_a_plain_target_rechunks() {
    let src = Env::init("64K");
    let same = init_copying_params_of(&src);
    let plain = Env::init("64K");
    let p = src.path("vm.raw");
    std::fs::write(&p, image(0)).unwrap();
    src.archive(&p, "web-01");
    let first_same = copy(&src, &same.repo, &[]);
    assert_eq!(first_same["rechunked"], false, "{first_same}");
    let first_plain = copy(&src, &plain.repo, &[]);
    assert_eq!(first_plain["rechunked"], true, "{first_plain}");
    assert_eq!(first_plain["snapshots"][0]["rechunked"], true, "{first_plain}");
    assert_eq!(u(&first_plain, "bytes_read"), 6 << 20, "{first_plain}");

    std::fs::write(&p, image(1)).unwrap();
    let night = src.json(&["archive", p.to_str().unwrap(), "--name", "web-01"]);
    let r = copy(&src, &same.repo, &[]);
    assert_eq!((u(&r, "snapshots_copied"), u(&r, "snapshots_present")), (1, 1), "{r}");
    assert_eq!(u(&r, "chunks_sent"), u(&night, "new_chunks"), "the structural copy sends exactly the night's new chunks: {r} {night}");
    let (read, added) = (u(&r, "bytes_read"), u(&night, "stored_bytes_added"));
    assert!(read > 0 && read < added + (256 << 10) && read < 1 << 20, "night 2 read {read} bytes from the source (it added {added}): {r}");
    let plain_r = copy(&src, &plain.repo, &[]);
    assert_eq!((u(&plain_r, "snapshots_copied"), &plain_r["rechunked"]), (1, &Value::Bool(true)), "{plain_r}");
    assert_eq!(u(&plain_r, "bytes_read"), 6 << 20, "the re-archive path reads the whole image: {plain_r}");
    assert!(read * 6 < u(&plain_r, "bytes_read"), "structural read {read}, re-archive {}", u(&plain_r, "bytes_read"));
    let same_env = at(&src, &same.repo);
    assert!(same_env.restore_bytes(&s(&r["snapshots"][1], "target")) == image(1));
    assert!(at(&src, &plain.repo).restore_bytes(&s(&plain_r["snapshots"][1], "target")) == image(1));
}

/// A project-scoped source (ids keyed per project): the structural copy names each blob in the
/// snapshot's project for the target too, so two projects' copies restore byte-exactly.
#[test]
fn a_project_scoped_source_is_copied_structurally_per_project() {
    let src = Env::new();
    src.ok(&["init", "--chunk-size", "64K", "--dedup-scope", "project"]);
    let dst = init_copying_params_of(&src);
    let p = src.path("vm.raw");
    std::fs::write(&p, image(0)).unwrap();
    for project in ["p1", "p2"] {
        src.ok(&["archive", p.to_str().unwrap(), "--name", project, "--project", project]);
    }
    let r = copy(&src, &dst.repo, &[]);
    assert_eq!((u(&r, "snapshots_copied"), &r["rechunked"]), (2, &Value::Bool(false)), "{r}");
    // The same image in two projects is stored twice (no cross-project dedup) in the target too.
    assert!(u(&r, "bytes_sent") >= 2 * (6 << 20), "{r}");
    let dst_env = at(&src, &dst.repo);
    for e in r["snapshots"].as_array().unwrap() {
        assert!(dst_env.restore_bytes(&s(e, "target")) == image(0));
    }
    assert_eq!(dst_env.json(&["check", "--read-data"])["ok"], true);
}

/// A structural copy written with a write-only key of the target (the off-site host): blobs are
/// sealed to the target's public key, the snapshot is readable by the target's full key.
#[test]
fn a_structural_copy_with_a_write_only_target_key() {
    let src = Env::init("64K");
    let dst = init_copying_params_of(&src);
    let pw = src.path("wo.pw");
    std::fs::write(&pw, "write only\n").unwrap();
    dst.ok(&["key", "add", "--write-only", "--new-password-file", pw.to_str().unwrap()]);
    let p = src.path("a.raw");
    std::fs::write(&p, bytes(700_000, 4, false)).unwrap();
    src.archive(&p, "a");
    let r = copy(&src, &dst.repo, &["--to-password-file", pw.to_str().unwrap()]);
    assert_eq!((u(&r, "snapshots_copied"), &r["rechunked"]), (1, &Value::Bool(false)), "{r}");
    let again = copy(&src, &dst.repo, &["--to-password-file", pw.to_str().unwrap()]);
    assert_eq!(u(&again, "snapshots_present"), 1, "{again}");
    let dst_env = at(&src, &dst.repo);
    assert!(dst_env.restore_bytes(&s(&r["snapshots"][0], "target")) == bytes(700_000, 4, false));
    assert_eq!(dst_env.json(&["check", "--read-data"])["ok"], true);
}

/// A structural copy killed with SIGKILL leaves no snapshot; the re-run sends only what had not
/// arrived, and the target checks clean and restores byte-exactly.
#[test]
fn a_structural_copy_killed_mid_way_is_finished_by_a_rerun() {
    let src = Env::init("64K");
    let dst = init_copying_params_of(&src);
    let data = bytes(96 << 20, 32, false);
    let p = src.path("big.raw");
    std::fs::write(&p, &data).unwrap();
    src.archive(&p, "big");
    let dst_env = at(&src, &dst.repo);
    kill_a_copy_after_two_packs(&src, &dst.repo, &dst_env);
    let r = copy(&src, &dst.repo, &[]);
    assert_eq!((u(&r, "snapshots_copied"), &r["rechunked"]), (1, &Value::Bool(false)), "{r}");
    assert!(u(&r, "bytes_sent") < data.len() as u64, "the re-run sent everything again: {r}");
    assert!(u(&r, "bytes_read") < data.len() as u64, "the re-run read everything again: {r}");
    assert_eq!(dst_env.json(&["check", "--read-data"])["ok"], true);
    assert!(dst_env.restore_bytes(&s(&r["snapshots"][0], "target")) == data);
}

#[cfg(feature = "remote-tests")]
mod remote {
    //! local → RGW and local → Swift with the servers `ci/objectstore.sh` starts (the variables
    //! of `remote_e2e.rs`).
    use super::*;
    use crate::support::{bare_cmd, PASSWORD};
    use std::collections::HashMap;

    fn need(k: &str) -> String {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| panic!("{k} is not set: run `. ci/objectstore.sh` first (see docs/objectstore.md)"))
    }

    fn unique() -> String {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        format!("copy-{:x}-{}", t, std::process::id())
    }

    fn rgw() -> (String, HashMap<&'static str, String>) {
        let vars = HashMap::from([
            ("AWS_ACCESS_KEY_ID", need("IMGARC_RGW_ACCESS_KEY")),
            ("AWS_SECRET_ACCESS_KEY", need("IMGARC_RGW_SECRET_KEY")),
            ("AWS_REGION", "us-east-1".to_string()),
        ]);
        (format!("s3:{}/{}/{}", need("IMGARC_RGW_ENDPOINT"), need("IMGARC_RGW_BUCKET"), unique()), vars)
    }

    fn swift() -> (String, HashMap<&'static str, String>) {
        let vars = HashMap::from([
            ("OS_AUTH_URL", need("IMGARC_SWIFT_AUTH_URL")),
            ("OS_AUTH_TYPE", "v3applicationcredential".to_string()),
            ("OS_APPLICATION_CREDENTIAL_ID", need("IMGARC_SWIFT_APP_CRED_ID")),
            ("OS_APPLICATION_CREDENTIAL_SECRET", need("IMGARC_SWIFT_APP_CRED_SECRET")),
            ("OS_REGION_NAME", need("IMGARC_SWIFT_REGION")),
        ]);
        (format!("swift:{}/{}", need("IMGARC_SWIFT_CONTAINER"), unique()), vars)
    }

    fn run(cache: &Path, vars: &HashMap<&'static str, String>, args: &[&str]) -> Value {
        let mut c = bare_cmd();
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OS_") || k.starts_with("AWS_")) {
            c.env_remove(k);
        }
        let o = c.env("IMGARC_PASSWORD", PASSWORD).env("IMGARC_CACHE_DIR", cache).envs(vars).arg("--json").args(args).output().unwrap();
        assert!(o.status.success(), "imgarc {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// `structural`: the target is made with `init --copy-chunker-params-from` the source.
    fn local_to_remote_then_restore_from_the_copy(target: String, vars: HashMap<&'static str, String>, structural: bool) {
        let src = Env::init("64K");
        let p = src.path("vm.raw");
        let src_repo = src.repo.to_str().unwrap().to_string();
        let cache = src.cache.clone();
        std::fs::write(&p, image(0)).unwrap();
        if structural {
            run(&cache, &vars, &["--repo", &target, "init", "--copy-chunker-params-from", &src_repo]);
        } else {
            run(&cache, &vars, &["--repo", &target, "init", "--chunk-size", "64K"]);
        }
        src.archive(&p, "vm");
        let first = run(&cache, &vars, &["--repo", &src_repo, "copy", "--to", &target]);
        assert_eq!(u(&first, "snapshots_copied"), 1, "{first}");
        assert_eq!(first["rechunked"], !structural, "{first}");
        std::fs::write(&p, image(1)).unwrap();
        let night = src.archive(&p, "vm");
        let second = run(&cache, &vars, &["--repo", &src_repo, "copy", "--to", &target, "--verify", "50%"]);
        assert_eq!((u(&second, "snapshots_copied"), u(&second, "snapshots_present")), (1, 1), "{second}");
        let (sent, added) = (u(&second, "bytes_sent"), u(&night, "stored_bytes_added"));
        assert!(sent < 3 * added + (512 << 10), "night 2 sent {sent} bytes to {target}, the source added {added}");
        assert_eq!(second["verified"]["chunks_bad"], 0, "{second}");
        if structural {
            assert_eq!(u(&second, "chunks_sent"), u(&night, "new_chunks"), "{second} {night}");
            assert!(u(&second, "bytes_read") < 1 << 20, "a structural night 2 read the image again: {second}");
        }
        // The source is gone: the copy alone gives the image back, byte for byte.
        std::fs::remove_dir_all(&src.repo).unwrap();
        let out = src.path("restored");
        let id = s(&second["snapshots"][1], "target");
        run(&cache, &vars, &["--repo", &target, "restore", &id, "-o", out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == image(1));
        assert_eq!(run(&cache, &vars, &["--repo", &target, "check", "--read-data"])["ok"], true);
    }

    #[test]
    fn local_to_rgw_twice_then_restore_from_the_copy() {
        let (target, vars) = rgw();
        local_to_remote_then_restore_from_the_copy(target, vars, false);
    }

    #[test]
    fn local_to_rgw_structurally_twice_then_restore_from_the_copy() {
        let (target, vars) = rgw();
        local_to_remote_then_restore_from_the_copy(target, vars, true);
    }

    #[test]
    fn local_to_swift_twice_then_restore_from_the_copy() {
        let (target, vars) = swift();
        local_to_remote_then_restore_from_the_copy(target, vars, false);
    }
}

/// `sync --copy-to REPO2` against the real noauth Glance: the synced images' snapshots are
/// copied (with the Glance record, so the target's retention sees the same images), and the
/// next night's unchanged images are present, not copied again.
#[cfg(feature = "openstack-tests")]
#[test]
fn sync_copy_to_keeps_the_second_repository_in_step() {
    use crate::support::openstack as os;
    let _serial = os::serial();
    let g = os::noauth();
    let src = Env::init("64K");
    let dst = Env::init_unencrypted("64K");
    let tag = os::unique("copy-sync");
    let (rec, _guard) = os::upload_image(&g, &format!("{tag}-vm"), &bytes(2 << 20, 9, true), serde_json::json!({"tags": [tag]}));
    let run = || {
        let filter = format!("tag={tag}");
        let glance = os::env("GLANCE_URL");
        let args = ["--glance-url", &glance, "--json", "sync", "--filter", &filter, "--copy-to", dst.repo.to_str().unwrap()];
        let o = src.run(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    let first = run();
    assert_eq!(first["archived"].as_array().unwrap().len(), 1, "{first}");
    assert_eq!(u(&first["copy"], "snapshots_copied"), 1, "{first}");
    let second = run();
    assert_eq!(second["unchanged"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!((u(&second["copy"], "snapshots_copied"), u(&second["copy"], "snapshots_present")), (0, 1), "{second}");
    let dst_env = at(&src, &dst.repo);
    let listed = dst_env.json(&["list", "--image", &rec.id]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "the copy lost its Glance source: {listed}");
    let show = dst_env.json(&["show", &s(&listed[0], "id")]);
    assert_eq!(show["metadata"]["id"], rec.id.as_str(), "{show}");
}

//! Faults: a killed archive, damaged and truncated packs, a lost index,
//! concurrent archives, and the CLI's error contract.

use crate::support;
use std::process::Stdio;
use std::time::Duration;
use support::*;

#[test]
fn kill_mid_archive_then_check_and_rearchive() {
    let env = Env::init("64K");
    let data = bytes(120 << 20, 21, false);
    let p = env.path("big.raw");
    std::fs::write(&p, &data).unwrap();
    let mut child = env.cmd(&["--json", "archive", p.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Kill once at least one pack is durable (or the archive is nearly done). Waiting on the
    // packs, not on a fixed time, so that a slow machine still tests a re-run that reuses them.
    for _ in 0..4800 {
        if env.packs().len() >= 2 || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let check = env.json(&["check"]);
    assert_eq!(check["ok"], true, "{check}");
    let packs_before = env.packs().len();
    let a = env.archive(&p, "big");
    assert!(packs_before >= 2, "the killed archive left {packs_before} packs, the test needs 2 to check their reuse");
    assert!(u(&a, "new_bytes") < data.len() as u64, "re-run did not reuse stored chunks: {a}");
    assert!(env.restore_bytes(&s(&a, "snapshot")) == data);
    assert_eq!(env.json(&["check", "--read-data"])["ok"], true);
}

#[test]
fn flipped_byte_is_named_with_its_snapshots_and_healed() {
    let env = Env::init("64K");
    let data = bytes(2 << 20, 5, true);
    let p = env.path("img.raw");
    std::fs::write(&p, &data).unwrap();
    let a = env.archive(&p, "victim");
    let snap = s(&a, "snapshot");
    let pack = env.packs()[0].clone();
    let mut bytes_ = std::fs::read(&pack).unwrap();
    bytes_[100] ^= 0x55; // inside the first blob
    std::fs::write(&pack, &bytes_).unwrap();

    let o = env.run(&["restore", &snap, "-o", env.path("out").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("damaged") && err.contains(&snap[..8]), "restore error should name the chunk and snapshot: {err}");
    assert!(!env.path("out").exists() && !env.path("out.imgarc-partial").exists());

    let o = env.run(&["--json", "check", "--read-data"]);
    assert_eq!(o.status.code(), Some(1));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rep["ok"], false);
    let damaged = rep["damaged_chunks"].as_array().unwrap();
    assert!(!damaged.is_empty());
    assert!(damaged[0]["snapshots"][0].as_str().unwrap().starts_with(&snap), "{rep}");

    // Archiving the same data again stores the lost chunk anew, which heals the old snapshot.
    let again = env.archive(&p, "victim");
    assert!(u(&again, "new_chunks") >= 1);
    assert!(env.restore_bytes(&snap) == data);
}

#[test]
fn truncated_pack_is_reported() {
    let env = Env::init("64K");
    let p = env.path("img.raw");
    std::fs::write(&p, bytes(1 << 20, 8, false)).unwrap();
    env.archive(&p, "t");
    let pack = env.packs()[0].clone();
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&pack).unwrap().set_len(len / 2).unwrap();
    let o = env.run(&["--json", "check"]);
    assert_eq!(o.status.code(), Some(1));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let errors = rep["errors"].to_string();
    assert!(errors.contains("truncated"), "{errors}");
}

#[test]
fn index_rebuild_from_repository_alone() {
    let env = Env::init("64K");
    let data = bytes(3 << 20, 13, true);
    let p = env.path("img.raw");
    std::fs::write(&p, &data).unwrap();
    let a = env.archive(&p, "keep");
    // Lose the whole cache, and the repository's index objects too.
    std::fs::remove_dir_all(&env.cache).unwrap();
    std::fs::remove_dir_all(env.repo.join("index")).unwrap();
    let r = env.json(&["index", "rebuild"]);
    assert!(u(&r, "packs_adopted") >= 1, "{r}");
    assert_eq!(u(&r, "snapshots"), 1);
    assert!(env.restore_bytes(&s(&a, "snapshot")[..10]) == data);
    // A fresh cache catches up from the index object rebuild wrote, without reading packs.
    std::fs::remove_dir_all(&env.cache).unwrap();
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 1);
    let again = env.archive(&p, "keep");
    assert_eq!(u(&again, "new_chunks"), 0);
}

#[test]
fn concurrent_archives_both_succeed() {
    let env = Env::init("64K");
    let (a, b) = (bytes(24 << 20, 31, false), bytes(24 << 20, 32, true));
    let (pa, pb) = (env.path("a.raw"), env.path("b.raw"));
    std::fs::write(&pa, &a).unwrap();
    std::fs::write(&pb, &b).unwrap();
    let ca = env.cmd(&["--json", "archive", pa.to_str().unwrap()]).stdout(Stdio::piped()).spawn().unwrap();
    let cb = env.cmd(&["--json", "archive", pb.to_str().unwrap()]).stdout(Stdio::piped()).spawn().unwrap();
    let (oa, ob) = (ca.wait_with_output().unwrap(), cb.wait_with_output().unwrap());
    assert!(oa.status.success() && ob.status.success());
    let ja: serde_json::Value = serde_json::from_slice(&oa.stdout).unwrap();
    let jb: serde_json::Value = serde_json::from_slice(&ob.stdout).unwrap();
    assert!(env.restore_bytes(&s(&ja, "snapshot")) == a);
    assert!(env.restore_bytes(&s(&jb, "snapshot")) == b);
    assert_eq!(env.json(&["check", "--read-data"])["ok"], true);
}

#[test]
fn usage_and_operation_errors_have_distinct_codes() {
    let env = Env::new();
    assert_eq!(env.run(&["archive"]).status.code(), Some(2));
    assert_eq!(env.run(&["frobnicate"]).status.code(), Some(2));
    let o = env.run(&["list"]);
    assert_eq!(o.status.code(), Some(10), "a missing repository exits 10 (restic's code)");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no imgarc repository"));
    env.ok(&["init"]);
    assert_eq!(env.run(&["init"]).status.code(), Some(1));
    let o = env.run(&["restore", "abc", "-o", "/dev/null"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("8 hex digits"));
    let o = env.run(&["archive", "/nonexistent/file"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/file"));
    let o = env.run(&["archive", "x", "--digest", "crc32"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn stale_lock_blocks_check_until_unlocked() {
    // Plants a plaintext lock: an unencrypted repository (an encrypted one seals its locks).
    let env = Env::init_unencrypted("64K");
    std::fs::create_dir_all(env.repo.join("locks")).unwrap();
    let lock = serde_json::json!({"hostname": "other-host", "pid": 1, "time": "2026-01-01T00:00:00Z",
        "expires": "2999-01-01T00:00:00Z", "exclusive": false, "purpose": "archive"});
    std::fs::write(env.repo.join("locks/abc"), lock.to_string()).unwrap();
    let o = env.run(&["check"]);
    assert_eq!(o.status.code(), Some(11), "a lock held by another process exits 11 (restic's code)");
    assert!(String::from_utf8_lossy(&o.stderr).contains("other-host"));
    env.ok(&["unlock", "--all"]);
    env.ok(&["check"]);
}

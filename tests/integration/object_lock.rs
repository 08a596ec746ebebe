//! S3 Object Lock against the real Ceph RGW (`remote-tests`): a bucket created with
//! Object Lock, `init --object-lock 20s`, a pack the client's own credentials cannot
//! delete by version id before its date, prune extending live packs (read with
//! GetObjectRetention before and after), forget + prune explaining the dates, and a
//! forgotten snapshot's space freed (no versions left) once its retention lapsed.
//! The retention is 20 s so the whole story takes about half a minute.
//! Run: `. /tmp/imgarc-servers.env && cargo nextest run --features remote-tests -E 'test(/^object_lock::/)'`.

use crate::support::backend_common::{need, rgw, s3_config, unique, S3Target};
use crate::support::{bare_cmd, bytes, s, u};
use imgarc::backend::s3::S3Backend;
use imgarc::backend::Backend;
use std::collections::BTreeSet;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

const PERIOD_SECS: u64 = 20;

struct Locked {
    target: S3Target,
    repo: String,
    work: tempfile::TempDir,
    /// The repository's objects (prefix `repo`), with the client's own credentials.
    backend: S3Backend,
}

impl Locked {
    /// A fresh bucket with Object Lock enabled (S3 allows that only at creation).
    fn new() -> Locked {
        let base = rgw();
        let target = S3Target { bucket: unique("lock"), ..base };
        S3Backend::new(s3_config(&target, "", &target.secret)).unwrap().create_bucket(true).expect("create a bucket with object lock");
        let backend = S3Backend::new(s3_config(&target, "repo", &target.secret)).unwrap();
        let repo = format!("s3:{}/{}/repo", target.endpoint, target.bucket);
        Locked { target, repo, work: tempfile::tempdir().unwrap(), backend }
    }

    fn run_at(&self, repo: &str, args: &[&str]) -> Output {
        let mut c = bare_cmd();
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
            c.env_remove(k);
        }
        c.env("AWS_ACCESS_KEY_ID", &self.target.access)
            .env("AWS_SECRET_ACCESS_KEY", &self.target.secret)
            .env("AWS_REGION", "us-east-1")
            .env("IMGARC_CACHE_DIR", self.work.path().join("cache"))
            .arg("--repo")
            .arg(repo)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = self.run_at(&self.repo, &a);
        assert!(o.status.success(), "imgarc {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn pack_keys(&self) -> BTreeSet<String> {
        self.backend.list_versions("data/").unwrap().into_iter().filter(|v| !v.delete_marker).map(|v| v.key).collect()
    }

    fn versions_of(&self, key: &str) -> Vec<imgarc::backend::ObjectVersion> {
        self.backend.list_versions(key).unwrap().into_iter().filter(|v| v.key == key).collect()
    }

    fn until(&self, key: &str) -> chrono::DateTime<chrono::Utc> {
        self.backend.retention(key, None).unwrap().unwrap_or_else(|| panic!("{key} has no retention")).until
    }
}

fn sleep_until(t: Instant) {
    if let Some(d) = t.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

#[test]
fn init_refuses_object_lock_where_it_cannot_be_enforced() {
    let l = Locked::new();
    // The shared CI bucket was created without Object Lock.
    let plain = format!("s3:{}/{}/{}", l.target.endpoint, need("IMGARC_RGW_BUCKET"), unique("nolock"));
    let o = l.run_at(&plain, &["init", "--encryption", "none", "--object-lock", "2m"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("does not have Object Lock enabled"), "{err}");
    let local = l.work.path().join("local");
    let o = l.run_at(local.to_str().unwrap(), &["init", "--encryption", "none", "--object-lock", "2m"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("cannot enforce immutability"), "{err}");
    assert!(!local.join("config").exists(), "a refused init wrote a config");
    // A plain local repository says so in init and check.
    let init = l.run_at(local.to_str().unwrap(), &["--json", "init", "--encryption", "none"]);
    let v: serde_json::Value = serde_json::from_slice(&init.stdout).unwrap();
    assert_eq!(v["immutability"]["enforced"], false, "{v}");
    let check = l.run_at(local.to_str().unwrap(), &["check"]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && out.contains("immutability not enforced"), "{out}");
    // Bad periods are clear errors.
    let o = l.run_at(&l.repo, &["init", "--encryption", "none", "--object-lock", "30"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("object lock period"), "{o:?}");
}

#[test]
fn locked_packs_resist_deletion_live_ones_are_extended_and_lapsed_ones_are_freed() {
    let l = Locked::new();
    let init = l.json(&["init", "--encryption", "none", "--object-lock", &format!("{PERIOD_SECS}s")]);
    assert_eq!(init["immutability"]["enforced"], true, "{init}");
    assert_eq!(init["object_lock"]["mode"], "COMPLIANCE", "{init}");

    let (fa, fb) = (l.work.path().join("a.raw"), l.work.path().join("b.raw"));
    std::fs::write(&fa, bytes(2 << 20, 1, false)).unwrap();
    std::fs::write(&fb, bytes(2 << 20, 2, false)).unwrap();
    let written = Instant::now();
    let a = l.json(&["archive", fa.to_str().unwrap(), "--name", "a"]);
    let a_packs = l.pack_keys();
    let b = l.json(&["archive", fb.to_str().unwrap(), "--name", "b"]);
    let b_packs: Vec<String> = l.pack_keys().difference(&a_packs).cloned().collect();
    assert!(!a_packs.is_empty() && !b_packs.is_empty(), "{a_packs:?} {b_packs:?}");

    // The client's own credentials cannot delete a pack version before its date.
    let a_pack = a_packs.iter().next().unwrap().clone();
    let v = l.versions_of(&a_pack);
    assert_eq!(v.len(), 1, "{v:?}");
    let r = l.backend.retention(&a_pack, Some(&v[0].version_id)).unwrap().expect("a pack is written with retention");
    assert!(r.until > chrono::Utc::now(), "{r:?}");
    let refused = l.backend.delete_version(&a_pack, &v[0].version_id).expect_err("deleting a locked version must be refused");
    assert_eq!(imgarc::backend::retry::http_status(&refused), Some(403), "{refused}");
    assert_eq!(l.versions_of(&a_pack).len(), 1, "the locked version survived");
    // Locks are mutable bookkeeping: written without retention, so unlock works.
    assert!(l.backend.list_versions("locks/").unwrap().iter().filter(|v| !v.delete_marker).all(|v| l
        .backend
        .retention(&v.key, Some(&v.version_id))
        .unwrap()
        .is_none()));

    // forget explains the date; prune reports what cannot go yet.
    let a_id = s(&a, "snapshot");
    let f = l.json(&["forget", &a_id]);
    let until = f["remove"][0]["retained_until"].as_str().unwrap_or_else(|| panic!("forget names no date: {f}")).to_string();
    assert!(imgarc::util::parse_rfc3339(&until).unwrap() > chrono::Utc::now(), "{f}");
    let p1 = l.json(&["prune", "--grace", "0"]);
    assert!(u(&p1, "packs_marked") > 0, "{p1}");
    let ol = &p1["object_lock"];
    let pending: Vec<&str> = ol["not_yet_deletable"].as_array().unwrap().iter().map(|x| x["key"].as_str().unwrap()).collect();
    assert!(pending.contains(&format!("snapshots/{a_id}").as_str()), "{p1}");
    assert_eq!(l.versions_of(&a_pack).len(), 1, "a marked pack keeps its version: {p1}");
    assert_eq!(l.versions_of(&format!("snapshots/{a_id}")).len(), 2, "the forgotten snapshot: its version and a delete marker");
    let prose = String::from_utf8_lossy(&l.run_at(&l.repo, &["prune", "--grace", "23h", "--dry-run"]).stdout).to_string();
    assert!(prose.contains("cannot be deleted yet"), "{prose}");

    // Past half the period, prune extends the live (b) packs and hides a's.
    sleep_until(written + Duration::from_secs(PERIOD_SECS / 2 + 2));
    let b_pack = &b_packs[0];
    let before = l.until(b_pack);
    let p2 = l.json(&["prune", "--grace", "0"]);
    assert!(u(&p2["object_lock"], "retention_extended") > 0, "{p2}");
    let after = l.until(b_pack);
    assert!(after > before + chrono::Duration::seconds(5), "retention of {b_pack}: {before} -> {after}");
    assert!(u(&p2, "packs_deleted") > 0, "{p2}");
    let pending: Vec<&str> =
        p2["object_lock"]["not_yet_deletable"].as_array().unwrap().iter().map(|x| x["key"].as_str().unwrap()).collect();
    assert!(pending.contains(&a_pack.as_str()), "{p2}");
    assert!(!l.versions_of(&a_pack).is_empty(), "a hidden pack keeps its version until its date");

    // Once a's retention lapsed, prune deletes its versions: nothing of it is left.
    sleep_until(written + Duration::from_secs(PERIOD_SECS + 3));
    let p3 = l.json(&["prune", "--grace", "0"]);
    assert!(u(&p3["object_lock"], "versions_deleted") > 0 && u(&p3["object_lock"], "bytes_freed") > 0, "{p3}");
    for k in a_packs.iter().chain([&format!("snapshots/{a_id}")]) {
        assert!(l.versions_of(k).is_empty(), "{k} still has versions: {:?}", l.versions_of(k));
    }
    for k in &b_packs {
        assert_eq!(l.versions_of(k).len(), 1, "a live pack lost its version: {k}");
    }

    // b is intact; check and report say until when its data stays.
    let c = l.json(&["check", "--read-data"]);
    assert_eq!(c["ok"], true, "{c}");
    assert_eq!(c["immutability"]["enforced"], true, "{c}");
    assert_eq!(c["snapshots_retained"].as_array().unwrap().len(), 1, "{c}");
    assert!(c["snapshots_retained"][0]["retained_until"].is_string(), "{c}");
    let rep = l.json(&["report"]);
    assert_eq!(rep["snapshots_retained"][0]["id"], s(&b, "snapshot"), "{rep}");
    let out = l.work.path().join("b.out");
    l.json(&["restore", &s(&b, "snapshot"), "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&fb).unwrap(), "restore of b after the prunes");
}

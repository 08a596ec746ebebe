//! Retention and space reclaim through the binary: `forget` removes exactly
//! what the policy says, `prune` frees space in two phases, rescues what a
//! concurrent archive came to need, and survives being killed at every step.

use crate::support;
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use support::*;

/// Three images: `b` shares its first half with `a`; `c` shares nothing.
struct Fixture {
    env: Env,
    a: Vec<u8>,
    b: Vec<u8>,
    c: Vec<u8>,
    ids: [String; 3],
}

fn fixture() -> Fixture {
    let env = Env::init("64K");
    let a = bytes(6 << 20, 1, false);
    let b = [&a[..3 << 20], &bytes(3 << 20, 2, false)[..]].concat();
    let c = bytes(2 << 20, 3, false);
    let mut ids = Vec::new();
    for (name, data) in [("a", &a), ("b", &b), ("c", &c)] {
        let p = env.path(name);
        std::fs::write(&p, data).unwrap();
        ids.push(s(&env.archive(&p, name), "snapshot"));
    }
    Fixture { env, a, b, c, ids: ids.try_into().unwrap() }
}

fn data_bytes(env: &Env) -> u64 {
    env.packs().iter().map(|p| std::fs::metadata(p).unwrap().len()).sum()
}

fn prune(env: &Env, extra: &[&str]) -> Value {
    let mut args = vec!["prune", "--grace", "0"];
    args.extend_from_slice(extra);
    env.json(&args)
}

fn ids(v: &Value, list: &str) -> Vec<String> {
    let mut out: Vec<String> = v[list].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap().to_string()).collect();
    out.sort();
    out
}

fn assert_restores(f: &Fixture, which: &[(usize, &[u8])]) {
    for (i, data) in which {
        assert!(f.env.restore_bytes(&f.ids[*i]) == *data, "snapshot {i} does not restore byte-exactly");
    }
    let check = f.env.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
}

#[test]
fn forget_keeps_what_the_policy_says_and_dry_run_changes_nothing() {
    let f = fixture();
    let env = &f.env;
    // A second snapshot of `c`, tagged: per name, keep-last 1 keeps the newest of each name.
    let c2 = s(&env.json(&["archive", f.env.path("c").to_str().unwrap(), "--name", "c", "--tag", "golden"]), "snapshot");
    let dry = env.json(&["forget", "--keep-last", "1", "--group-by", "name", "--dry-run"]);
    let mut want_keep = vec![f.ids[0].clone(), f.ids[1].clone(), c2.clone()];
    want_keep.sort();
    assert_eq!(ids(&dry, "keep"), want_keep);
    assert_eq!(ids(&dry, "remove"), vec![f.ids[2].clone()]);
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 4, "dry run removed something");

    // Everything in one group: keep-last 1 keeps the newest only, keep-tag adds nothing new.
    let v = env.json(&["forget", "--keep-last", "1", "--keep-tag", "golden", "--group-by", "none"]);
    assert_eq!(ids(&v, "keep"), vec![c2.clone()]);
    let reasons = &v["keep"][0]["reasons"];
    assert_eq!(reasons, &serde_json::json!(["tagged golden", "last snapshot"]));
    assert_eq!(v["removed"], 3);
    let left: Vec<String> = env.json(&["list"]).as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(left, vec![c2]);
    // A fresh cache (another host) sees the same.
    let other = env.cmd(&["--json", "list"]).env("IMGARC_CACHE_DIR", env.path("cache2")).output().unwrap();
    let other: Value = serde_json::from_slice(&other.stdout).unwrap();
    assert_eq!(other.as_array().unwrap().len(), 1);
}

#[test]
fn forget_without_a_policy_refuses() {
    let f = fixture();
    let o = f.env.run(&["forget"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no policy"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(f.env.json(&["list"]).as_array().unwrap().len(), 3);
}

#[test]
fn prune_marks_then_frees_and_everything_left_restores() {
    let f = fixture();
    let env = &f.env;
    env.json(&["forget", &f.ids[0]]);
    let before = data_bytes(env);

    // Default grace: the first prune marks (a's pack: half of it still used by b, so repacked).
    let first = env.json(&["prune"]);
    assert_eq!(first["packs_deleted"], 0, "{first}");
    assert_eq!(first["packs_marked"], 1, "{first}");
    assert_eq!(first["packs_repacked"], 1, "{first}");
    assert!(u(&first, "bytes_awaiting_grace") > 6 << 20, "{first}");
    // Still within the grace period: nothing is deleted.
    let second = env.json(&["prune"]);
    assert_eq!(second["packs_deleted"], 0, "{second}");
    assert_eq!(second["bytes_awaiting_grace"], first["bytes_awaiting_grace"]);
    let marked = data_bytes(env);
    assert!(marked > before, "repacking adds a copy first");

    let dry = prune(env, &["--dry-run"]);
    assert_eq!(dry["packs_deleted"], 1, "{dry}");
    assert_eq!(data_bytes(env), marked, "dry run deleted something");

    let third = prune(env, &[]);
    assert_eq!(third["packs_deleted"], 1, "{third}");
    assert_eq!(third["packs_rescued"], 0, "{third}");
    assert_eq!(u(&third, "bytes_freed"), marked - data_bytes(env), "reported space freed differs from what left the disk");
    assert_eq!(third["bytes_awaiting_grace"], 0);
    // a's unique 3 MiB are gone (they were incompressible).
    assert!(before - data_bytes(env) >= 3 << 20, "freed too little: {} -> {}", before, data_bytes(env));
    assert_restores(&f, &[(1, &f.b), (2, &f.c)]);
    let again = prune(env, &[]);
    assert_eq!((again["packs_marked"].clone(), again["packs_deleted"].clone()), (0.into(), 0.into()), "{again}");
}

#[test]
fn an_archive_after_the_mark_stores_marked_chunks_again() {
    let f = fixture();
    let env = &f.env;
    env.json(&["forget", &f.ids[0], &f.ids[1]]);
    let mark = prune(env, &["--max-repack-ratio", "0"]);
    assert!(u(&mark, "packs_marked") >= 2, "{mark}");
    // a's chunks now live only in marked packs: archiving a again must store them anew.
    let again = env.archive(&env.path("a"), "a");
    assert_eq!(u(&again, "new_bytes"), f.a.len() as u64, "deduplicated against a pack marked for deletion: {again}");
    let sweep = prune(env, &[]);
    assert_eq!(sweep["packs_rescued"], 0, "{sweep}");
    assert!(u(&sweep, "packs_deleted") >= 2, "{sweep}");
    assert!(env.restore_bytes(&s(&again, "snapshot")) == f.a);
    assert_restores(&f, &[(2, &f.c)]);
}

/// An archive that started before the mark (on a host that has not seen the
/// mark) deduplicates against a marked pack; the sweep must wait for it and
/// then rescue the pack.
#[test]
fn a_concurrent_archive_that_started_before_the_mark_keeps_its_chunks() {
    let f = fixture();
    let env = &f.env;
    env.json(&["forget", &f.ids[0], &f.ids[1]]);
    let other_host = env.path("cache-other-host");
    let mut archive = env
        .cmd(&["--json", "archive", "-", "--name", "a-again"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = archive.stdin.take().unwrap();
    stdin.write_all(&f.a[..3 << 20]).unwrap();
    // The archive holds its lock (and has its index) before the prune marks anything.
    wait_for_lock(&env.repo);
    let prune_elsewhere = |extra: &[&str]| -> Value {
        let mut args = vec!["--json", "prune", "--grace", "0", "--max-repack-ratio", "0"];
        args.extend_from_slice(extra);
        let o = env.cmd(&args).env("IMGARC_CACHE_DIR", &other_host).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let mark = prune_elsewhere(&[]);
    assert!(u(&mark, "packs_marked") >= 2, "{mark}");
    let postponed = prune_elsewhere(&[]);
    assert_eq!(postponed["packs_deleted"], 0, "deleted packs while an older archive was running: {postponed}");
    assert!(postponed["marks_postponed"].as_array().unwrap().iter().any(|m| m.as_str().unwrap().contains("archive")), "{postponed}");

    stdin.write_all(&f.a[3 << 20..]).unwrap();
    drop(stdin);
    let out = archive.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snap: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(u(&snap, "new_bytes") < f.a.len() as u64, "the archive was meant to reuse marked chunks: {snap}");

    let sweep = prune_elsewhere(&[]);
    assert!(u(&sweep, "packs_rescued") >= 1, "{sweep}");
    assert!(env.restore_bytes(&s(&snap, "snapshot")) == f.a, "the concurrent archive lost chunks to prune");
    assert_restores(&f, &[(2, &f.c)]);
}

fn wait_for_lock(repo: &Path) {
    for _ in 0..400 {
        if std::fs::read_dir(repo.join("locks")).is_ok_and(|mut d| d.next().is_some()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("the archive never took its lock");
}

#[test]
fn prune_killed_at_any_step_leaves_a_consistent_repository_and_the_next_prune_finishes() {
    if !cfg!(feature = "test-hooks") {
        eprintln!("skipped: the crash hook needs `--features test-hooks`");
        return;
    }
    for point in ["repacked", "marked", "index-rewritten", "packs-deleted"] {
        let f = fixture();
        let env = &f.env;
        env.json(&["forget", &f.ids[0]]);
        let before = data_bytes(env);
        if matches!(point, "index-rewritten" | "packs-deleted") {
            prune(env, &[]); // mark; the crash is in the sweep
        }
        let crashed = env.cmd(&["prune", "--grace", "0"]).env("IMGARC_TEST_CRASH_AT", point).output().unwrap();
        assert!(!crashed.status.success(), "{point}: the crash hook did not fire");
        // Consistent as it stands, from this cache and from a fresh one.
        assert_eq!(env.json(&["check"])["ok"], true, "{point}");
        let fresh = env.cmd(&["--json", "check"]).env("IMGARC_CACHE_DIR", env.path("fresh-cache")).output().unwrap();
        assert!(fresh.status.success(), "{point}: {}", String::from_utf8_lossy(&fresh.stdout));
        assert!(env.restore_bytes(&f.ids[1]) == f.b, "{point}");
        env.ok(&["unlock"]);
        // Two more prunes finish the job.
        prune(env, &[]);
        prune(env, &[]);
        assert!(before - data_bytes(env) >= 3 << 20, "{point}: space was not reclaimed");
        assert_restores(&f, &[(1, &f.b), (2, &f.c)]);
    }
}

/// Plants a copy of snapshot `id` dated `time`, named by its BLAKE3 as a
/// writer with a wrong clock would have written it; returns its id.
fn plant_dated_copy(env: &Env, id: &str, time: &str) -> String {
    let bytes = std::fs::read(env.repo.join("snapshots").join(id)).unwrap();
    let mut snap: Value = serde_json::from_slice(&bytes).unwrap();
    snap["time"] = time.into();
    let bytes = serde_json::to_vec_pretty(&snap).unwrap();
    let new_id = blake3::hash(&bytes).to_hex().to_string();
    std::fs::write(env.repo.join("snapshots").join(&new_id), bytes).unwrap();
    new_id
}

#[test]
fn a_snapshot_dated_in_the_future_steers_no_policy_and_is_flagged() {
    let env = Env::init_unencrypted("64K");
    let p = env.path("img");
    std::fs::write(&p, bytes(1 << 20, 9, false)).unwrap();
    let real = s(&env.archive(&p, "vm"), "snapshot");
    let future = plant_dated_copy(&env, &real, "2999-01-01T00:00:00Z");

    let list = env.json(&["list"]);
    let flag = |id: &str| list.as_array().unwrap().iter().find(|r| r["id"] == id).unwrap()["future"].clone();
    assert_eq!((flag(&real), flag(&future)), (Value::Bool(false), Value::Bool(true)), "{list}");
    assert!(env.ok(&["list"]).lines().any(|l| l.starts_with(&future[..16]) && l.contains("future")));

    let check = env.json(&["check"]);
    assert_eq!(check["ok"], true, "{check}");
    assert!(check["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains(&future)), "{check}");

    // --keep-within counts back from today, not from the year 2999; keep-last
    // is not used up by the future snapshot, which no policy removes.
    for policy in [&["--keep-within", "1d"][..], &["--keep-last", "1"][..]] {
        let mut args = vec!["forget", "--dry-run"];
        args.extend_from_slice(policy);
        let v = env.json(&args);
        let mut want = vec![real.clone(), future.clone()];
        want.sort();
        assert_eq!(ids(&v, "keep"), want, "{policy:?}: {v}");
        let doc = v["keep"].as_array().unwrap().iter().find(|k| k["id"] == future.as_str()).unwrap();
        assert_eq!(doc["future"], true);
        assert!(doc["reasons"][0].as_str().unwrap().contains("future"), "{doc}");
    }
}

/// What a host whose imgarc predates a layout kind sees (an imgarc before issue 15 meeting a
/// `container` snapshot; this one meeting a kind from the future): the snapshot cannot be
/// decoded, so its chunks look unreferenced. `prune` must refuse rather than delete them, and
/// every snapshot it can read keeps restoring.
#[test]
fn a_snapshot_of_an_unknown_layout_kind_stops_prune_and_loses_nothing() {
    let env = Env::init_unencrypted("64K");
    let data = bytes(3 << 20, 7, false);
    let p = env.path("a.raw");
    std::fs::write(&p, &data).unwrap();
    let a = s(&env.archive(&p, "a"), "snapshot");
    // Its twin from the future: the same streams under a layout kind this imgarc does not know.
    let mut future: Value = serde_json::from_slice(&std::fs::read(env.repo.join("snapshots").join(&a)).unwrap()).unwrap();
    future["name"] = "from-the-future".into();
    future["layout"] = serde_json::json!({"kind": "hologram", "recipe": future["guest"].clone(), "literals": future["guest"].clone()});
    let bytes_of_future = serde_json::to_vec_pretty(&future).unwrap();
    let future_id = imgarc::repository::snapshot::Snapshot::id_of(&bytes_of_future).to_hex();
    std::fs::write(env.repo.join("snapshots").join(&future_id), &bytes_of_future).unwrap();
    // The only readable snapshot goes: to this host the packs now look unused.
    env.ok(&["forget", &a]);
    let packs_before = env.packs();
    let out = env.run(&["prune", "--grace", "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "prune ran past an unreadable snapshot: {stderr}");
    assert!(stderr.contains("prune refuses to run") && stderr.contains(&future_id), "{stderr}");
    assert!(stderr.contains("unknown variant `hologram`"), "the refusal names the unknown layout kind: {stderr}");
    assert_eq!(env.packs(), packs_before, "prune deleted data while a snapshot could not be read");
}

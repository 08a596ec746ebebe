//! A cold host's catch-up, `index compact` and the persisted chunk filter,
//! through the binary: a parallel catch-up builds the cache a sequential one
//! does; a compaction never takes a pack from any host's view, stale caches
//! included, and survives being killed; a torn, corrupt or foreign filter
//! file is rebuilt and deduplication stays exact.

use crate::support;
use serde_json::Value;
use std::path::PathBuf;
use support::*;

/// A repository of `n` small images, one pack (and index object) each; returns their ids and bytes.
fn many_snapshots(env: &Env, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let data = bytes(200 << 10, 100 + i as u64, false);
            let p = env.path(&format!("img{i}"));
            std::fs::write(&p, &data).unwrap();
            (s(&env.archive(&p, &format!("img{i}")), "snapshot"), data)
        })
        .collect()
}

fn index_objects(env: &Env) -> usize {
    let mut v = Vec::new();
    walk(&env.repo.join("index"), &mut v);
    v.len()
}

/// `args` with the cache in `cache` (another host's) and `extra` environment.
fn json_in(env: &Env, cache: &PathBuf, args: &[&str], extra: &[(&str, &str)]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let mut c = env.cmd(&a);
    c.env("IMGARC_CACHE_DIR", cache);
    for (k, v) in extra {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "imgarc {args:?}: {}\n{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn restore_in(env: &Env, cache: &PathBuf, snap: &str) -> Vec<u8> {
    let out = env.path(&format!("restored-{}-{}", &snap[..12], rand_suffix()));
    let o = env.cmd(&["restore", snap, "-o", out.to_str().unwrap()]).env("IMGARC_CACHE_DIR", cache).output().unwrap();
    assert!(o.status.success(), "restore {snap}: {}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).unwrap()
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

#[test]
fn a_parallel_catch_up_builds_the_cache_a_sequential_one_does() {
    let env = Env::init("64K");
    let snaps = many_snapshots(&env, 12);
    assert!(index_objects(&env) >= 12);
    let one = env.path("cache-one");
    let many = env.path("cache-many");
    let seq_list = json_in(&env, &one, &["list"], &[("IMGARC_FETCH_THREADS", "1")]);
    let par_list = json_in(&env, &many, &["list"], &[("IMGARC_FETCH_THREADS", "16")]);
    assert_eq!(seq_list, par_list);
    assert_eq!(par_list.as_array().map(|a| a.len()), Some(snaps.len()), "{par_list}");
    let seq_check = json_in(&env, &one, &["check"], &[("IMGARC_FETCH_THREADS", "1")]);
    let par_check = json_in(&env, &many, &["check"], &[]);
    assert_eq!(seq_check["ok"], true, "{seq_check}");
    assert_eq!(seq_check, par_check);
    let seq_report = json_in(&env, &one, &["report"], &[]);
    let par_report = json_in(&env, &many, &["report"], &[]);
    assert_eq!(seq_report["totals"], par_report["totals"], "reference counts differ");
    assert_eq!(seq_report["snapshots"], par_report["snapshots"]);
    assert!(restore_in(&env, &many, &snaps[5].0) == snaps[5].1);
}

#[test]
fn compaction_keeps_every_pack_in_a_stale_hosts_view() {
    let env = Env::init("64K");
    let snaps = many_snapshots(&env, 10);
    let before = index_objects(&env);
    let stale = env.path("stale-cache");
    json_in(&env, &stale, &["list"], &[]);

    // With the default grace the first run only merges; a second run before the grace adds nothing.
    let first = env.json(&["index", "compact"]);
    assert_eq!((first["objects_written"].as_u64(), first["objects_deleted"].as_u64()), (Some(1), Some(0)), "{first}");
    assert_eq!(first["objects_awaiting_grace"].as_u64(), Some(before as u64), "{first}");
    assert_eq!(index_objects(&env), before + 1);
    let again = env.json(&["index", "compact"]);
    assert_eq!((again["objects_written"].as_u64(), again["objects_deleted"].as_u64()), (Some(0), Some(0)), "{again}");
    assert_eq!(index_objects(&env), before + 1);
    // Once the merged object is old enough, the small ones go.
    let done = env.json(&["index", "compact", "--grace", "0"]);
    assert_eq!((done["objects_written"].as_u64(), done["objects_deleted"].as_u64()), (Some(0), Some(before as u64)), "{done}");
    assert_eq!(index_objects(&env), 1);

    // The stale host, whose cache lists only the deleted objects, still sees every pack.
    for (id, data) in &snaps {
        assert!(restore_in(&env, &stale, id) == *data, "{id} does not restore from the stale cache");
    }
    let check = json_in(&env, &stale, &["check", "--read-data"], &[]);
    assert_eq!(check["ok"], true, "{check}");
    let fresh = env.path("fresh-cache");
    assert_eq!(json_in(&env, &fresh, &["check", "--read-data"], &[])["ok"], true);
    assert_eq!(json_in(&env, &fresh, &["list"], &[]).as_array().map(|a| a.len()), Some(snaps.len()));
    // A later archive's own index object merges with the large one.
    let extra = env.path("extra");
    std::fs::write(&extra, bytes(100 << 10, 7, false)).unwrap();
    env.archive(&extra, "extra");
    let merged = env.json(&["index", "compact", "--grace", "0", "--target-blobs", "1000000"]);
    assert_eq!(merged["objects_written"].as_u64(), Some(1), "{merged}");
    assert_eq!(index_objects(&env), 1, "{merged}");
    assert_eq!(json_in(&env, &stale, &["check", "--read-data"], &[])["ok"], true);
}

#[test]
fn a_compaction_killed_at_any_step_leaves_a_consistent_repository_and_the_next_one_finishes() {
    if !cfg!(feature = "test-hooks") {
        eprintln!("skipped: the crash hook needs `--features test-hooks`");
        return;
    }
    for point in ["compact-written", "compact-deleted-one"] {
        let env = Env::init("64K");
        let snaps = many_snapshots(&env, 6);
        let stale = env.path("stale-cache");
        json_in(&env, &stale, &["list"], &[]);
        let crashed = env.cmd(&["index", "compact", "--grace", "0"]).env("IMGARC_TEST_CRASH_AT", point).output().unwrap();
        assert!(!crashed.status.success(), "{point}: the crash hook did not fire");
        for cache in [&env.cache, &stale, &env.path("fresh-cache")] {
            let check = json_in(&env, cache, &["check"], &[]);
            assert_eq!(check["ok"], true, "{point}: {check}");
        }
        assert!(restore_in(&env, &stale, &snaps[3].0) == snaps[3].1, "{point}");
        env.ok(&["unlock"]);
        let next = env.json(&["index", "compact", "--grace", "0"]);
        assert_eq!(index_objects(&env), 1, "{point}: {next}");
        for (id, data) in &snaps {
            assert!(restore_in(&env, &stale, id) == *data, "{point}: {id}");
        }
        assert_eq!(json_in(&env, &stale, &["check", "--read-data"], &[])["ok"], true, "{point}");
    }
}

fn filter_file(cache: &std::path::Path) -> PathBuf {
    let mut v = Vec::new();
    walk(cache, &mut v);
    v.into_iter().find(|p| p.to_string_lossy().ends_with("index.sqlite.bloom")).expect("an archive saves its chunk filter")
}

#[test]
fn a_torn_corrupt_stale_or_foreign_chunk_filter_is_rebuilt_and_dedup_stays_exact() {
    let env = Env::init("64K");
    let a = env.path("a");
    std::fs::write(&a, bytes(2 << 20, 1, false)).unwrap();
    let first = env.archive(&a, "a");
    assert!(u(&first, "new_chunks") > 0);
    let file = filter_file(&env.cache);
    let good = std::fs::read(&file).unwrap();
    let other = Env::init("64K");
    let b = other.path("b");
    std::fs::write(&b, bytes(1 << 20, 2, false)).unwrap();
    other.archive(&b, "b");
    let foreign = std::fs::read(filter_file(&other.cache)).unwrap();
    let mut flipped = good.clone();
    flipped[100] ^= 0x40;
    let cases: Vec<(&str, Vec<u8>)> =
        vec![("torn", good[..good.len() / 2].to_vec()), ("empty", Vec::new()), ("flipped", flipped), ("foreign", foreign)];
    for (what, planted) in cases {
        std::fs::write(&file, &planted).unwrap();
        let again = env.archive(&a, &format!("a-{what}"));
        assert_eq!(u(&again, "new_chunks"), 0, "{what}: the archive stored chunks it holds: {again}");
        assert_ne!(std::fs::read(&file).unwrap(), planted, "{what}: the filter was not rebuilt");
    }
    // A filter saved before later packs: it takes them in when loaded.
    let c = env.path("c");
    std::fs::write(&c, bytes(1 << 20, 3, false)).unwrap();
    let old = std::fs::read(&file).unwrap();
    assert!(u(&env.archive(&c, "c"), "new_chunks") > 0);
    std::fs::write(&file, old).unwrap();
    assert_eq!(u(&env.archive(&c, "c-again"), "new_chunks"), 0);
    // Removed: rebuilt.
    std::fs::remove_file(&file).unwrap();
    assert_eq!(u(&env.archive(&c, "c-third"), "new_chunks"), 0);
    assert!(file.exists());
    assert_eq!(env.json(&["check", "--read-data"])["ok"], true);
}

//! Drill records (`drills/`, format-spec/drills.md) everywhere but the drill itself: the
//! report's drill section (JSON, table, HTML, Prometheus, `--project`), prune dropping the
//! records of forgotten snapshots, a second host's cache catching up with records deleted and
//! written elsewhere, and forged or damaged records skipped with a warning. Records are made by
//! the real `imgarc drill` where the test needs a real one, and through the library
//! (`Repository::save_drill_record`, under a shared lock as the drill takes) where it needs
//! chosen times, hosts and failures.

use crate::support;
use imgarc::ids::Id;
use imgarc::repository::drill::{CheckStatus, DrillCheck, DrillRecord, DRILL_VERSION};
use serde_json::Value;
use std::path::PathBuf;
use support::*;

/// A record of a drill of `snapshot` (a real snapshot id) with the given outcome.
fn record(snapshot: &str, started: &str, host: &str, ok: bool, seconds: f64) -> DrillRecord {
    let status = if ok { CheckStatus::Passed } else { CheckStatus::Failed };
    let error = (!ok).then(|| format!("rebuild: chunk {} of snapshot {} is damaged", &snapshot[..12], &snapshot[..16]));
    DrillRecord {
        version: DRILL_VERSION,
        snapshot: snapshot.to_string(),
        name: "set by the test".into(),
        image: None,
        project: None,
        started: started.to_string(),
        host: host.to_string(),
        imgarc_version: "test".into(),
        checks: vec![DrillCheck { check: "rebuild".into(), status, detail: error.clone(), seconds }],
        ok,
        seconds,
        boot_seconds: None,
        console_tail: None,
        error,
    }
}

/// Stores records as a drill does (under a shared lock); returns their names.
fn save(env: &Env, records: &[DrillRecord]) -> Vec<String> {
    let repo = env.open_repo();
    let lock = repo.acquire_lock(false, "drill").unwrap();
    repo.hold_lock(&lock);
    records.iter().map(|r| repo.save_drill_record(r).unwrap()).collect()
}

fn epoch(t: &str) -> f64 {
    let t = chrono::DateTime::parse_from_rfc3339(t).unwrap();
    t.timestamp_micros() as f64 / 1e6
}

fn report_json(env: &Env, extra: &[&str]) -> Value {
    let out = env.ok(&[&["report", "--format", "json"][..], extra].concat());
    serde_json::from_str(&out).unwrap()
}

/// The drill entry of the image whose latest snapshot is named `name`.
fn image<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["drills"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no image {name} in {}", r["drills"]))
}

fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v.as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_string()).collect();
    n.sort();
    n
}

/// Gives a snapshot Glance-like metadata (image id, owner) through the library, as sync would
/// record them (the CLI archive of a file sets neither), replacing the snapshot object.
fn as_glance_image(env: &Env, id: &str, image: &str, project: &str) -> String {
    let repo = env.open_repo();
    let mut snap = repo.load_snapshot(&Id::from_hex(id).unwrap()).unwrap();
    snap.metadata.insert("owner".into(), project.into());
    snap.metadata.insert("id".into(), image.into());
    let new = repo.save_snapshot(&snap).unwrap().to_hex();
    std::fs::remove_file(env.repo.join("snapshots").join(id)).unwrap();
    new
}

/// Three images: `web` (two snapshots, project proj-web), `db` (one, proj-db), and the file
/// archive `notes` (no image id). Returns the env and the snapshot ids [web0, web1, db0, notes0].
fn three_images() -> (Env, [String; 4]) {
    let env = Env::init("16K");
    let mut ids = Vec::new();
    for (i, name) in ["web", "web", "db", "notes"].iter().enumerate() {
        let p = env.path(&format!("{i}.raw"));
        std::fs::write(&p, bytes(256 << 10, i as u64 + 1, false)).unwrap();
        ids.push(s(&env.archive(&p, name), "snapshot"));
    }
    for id in &mut ids[..2] {
        *id = as_glance_image(&env, id, "image-web", "proj-web");
    }
    ids[2] = as_glance_image(&env, &ids[2], "image-db", "proj-db");
    (env, ids.try_into().unwrap())
}

/// Several images with chosen drills: the report names the last drill (by time, not by text:
/// `10:00:00Z` sorts after `10:00:00.500Z` as text but is earlier), the last success, the image
/// never drilled and the one whose last drill failed (with its error), in JSON, the table, the
/// HTML page and the Prometheus series (with the labels of the other `imgarc_image_*` series);
/// `--project` keeps another project's drills out of every format.
#[test]
fn report_shows_last_drill_last_success_never_drilled_and_failures() {
    let (env, [web0, web1, db0, _notes]) = three_images();
    let t1 = "2026-11-20T03:00:00Z";
    let t2 = "2026-11-21T10:00:00Z";
    let t3 = "2026-11-21T10:00:00.500Z";
    let mut db = record(&db0, "2026-11-21T09:00:00+00:00", "drill-db", true, 41.5);
    db.boot_seconds = Some(7.25);
    let saved = save(
        &env,
        &[record(&web0, t1, "drill-a", true, 30.0), record(&web1, t3, "drill-c", false, 3.5), record(&web1, t2, "drill-b", true, 32.0), db],
    );
    assert_eq!(saved.len(), 4);

    let r = report_json(&env, &[]);
    let web = image(&r, "web");
    assert_eq!(web["image"], "image-web");
    assert_eq!(web["project"], "proj-web");
    assert_eq!(web["drills"], 3);
    let last = &web["last_drill"];
    assert_eq!((last["started"].as_str(), last["ok"].as_bool(), last["host"].as_str()), (Some(t3), Some(false), Some("drill-c")), "{web}");
    assert_eq!(last["snapshot"], web1.as_str());
    assert_eq!(last["result"], "failed");
    assert_eq!(last["record"], saved[1].as_str());
    assert!(last["error"].as_str().unwrap().contains("is damaged"), "{last}");
    let success = &web["last_success"];
    assert_eq!(
        (success["started"].as_str(), success["host"].as_str(), success["seconds"].as_f64()),
        (Some(t2), Some("drill-b"), Some(32.0))
    );
    let db = image(&r, "db");
    assert_eq!(db["last_drill"]["boot_seconds"], 7.25);
    assert_eq!(db["last_drill"]["seconds"], 41.5);
    assert_eq!(db["last_success"]["record"], saved[3].as_str());
    let notes = image(&r, "notes");
    assert!(notes["image"].is_null() && notes["last_drill"].is_null() && notes["last_success"].is_null(), "{notes}");
    assert_eq!(notes["drills"], 0);
    assert_eq!(names(&r["drills"]["never_drilled"]), ["notes"]);
    let failed = r["drills"]["last_failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!((failed[0]["name"].as_str(), failed[0]["last_drill"]["record"].as_str()), (Some("web"), Some(saved[1].as_str())));

    let table = env.ok(&["report"]);
    assert!(table.contains("Restore drills"), "{table}");
    assert!(table.contains("never drilled: 1 image(s): notes"), "{table}");
    assert!(
        table.contains(&format!("last drill FAILED: web (image-web): snapshot {}", &web1[..16])) && table.contains("is damaged"),
        "{table}"
    );

    let html = env.ok(&["report", "--format", "html"]);
    assert!(html.contains("<h2 id=\"drills\">Restore drills</h2>"), "no drill section in the page");
    assert!(html.contains("<tr class=\"drill-failed\"><td>image-web</td><td>web</td>"), "the failed image is not flagged");
    assert!(html.contains("<tr class=\"drill-never\"><td>-</td><td>notes</td><td>never</td>"), "the never-drilled image is not shown");
    assert!(html.contains("drill-b") || html.contains(t2), "the last success is not shown");

    let prom = env.ok(&["report", "--format", "prometheus"]);
    let x = prom::parse(&prom).unwrap_or_else(|e| panic!("{e}\n{prom}"));
    let web_l = [("image", "image-web"), ("name", "web"), ("project", "proj-web")];
    let db_l = [("image", "image-db"), ("name", "db"), ("project", "proj-db")];
    let notes_l = [("image", ""), ("name", "notes"), ("project", "")];
    let success = "imgarc_image_last_drill_success_timestamp_seconds";
    assert_eq!(x.value(success, &web_l), Some(epoch(t2)), "{prom}");
    assert_eq!(x.value(success, &db_l), Some(epoch("2026-11-21T09:00:00Z")), "{prom}");
    assert_eq!(x.value(success, &notes_l), None, "a never-drilled image has no success time:\n{prom}");
    assert_eq!(x.value("imgarc_image_last_drill_timestamp_seconds", &web_l), Some(epoch(t3)));
    assert_eq!(x.value("imgarc_image_last_drill_ok", &web_l), Some(0.0));
    assert_eq!(x.value("imgarc_image_last_drill_ok", &db_l), Some(1.0));
    assert_eq!(x.value("imgarc_image_recovery_seconds", &db_l), Some(41.5));
    assert_eq!(x.value("imgarc_image_drills", &notes_l), Some(0.0));
    assert_eq!(x.value("imgarc_image_drills", &web_l), Some(3.0));
    assert_eq!(x.value("imgarc_images_never_drilled", &[]), Some(1.0));
    assert_eq!(x.value("imgarc_images_last_drill_failed", &[]), Some(1.0));
    // The drill series name each image exactly as the snapshot series do.
    for labels in [&web_l, &db_l, &notes_l] {
        assert!(x.value("imgarc_image_last_snapshot_timestamp_seconds", labels).is_some(), "{labels:?}:\n{prom}");
    }

    // A project's report: its own image's drills only, in every format.
    let scoped = report_json(&env, &["--project", "proj-web"]);
    assert_eq!(names(&scoped["drills"]["images"]), ["web"]);
    assert!(scoped["drills"]["never_drilled"].as_array().unwrap().is_empty());
    for format in ["json", "table", "html", "prometheus"] {
        let text = env.ok(&["report", "--format", format, "--project", "proj-web"]);
        assert!(
            !text.contains("drill-db") && !text.contains("image-db") && !text.contains(&db0[..16]),
            "{format} shows proj-db's drill:\n{text}"
        );
        if format != "prometheus" {
            assert!(text.contains("drill-c"), "{format} lacks the project's own last drill");
        }
    }
    let scoped_prom = prom::parse(&env.ok(&["report", "--format", "prometheus", "--project", "proj-web"])).unwrap();
    assert_eq!(scoped_prom.value("imgarc_images_never_drilled", &[("project", "proj-web")]), Some(0.0));
    assert_eq!(scoped_prom.value("imgarc_images_last_drill_failed", &[("project", "proj-web")]), Some(1.0));
}

/// The real verb writes the record the report reads: `imgarc drill SNAP` (no boot) of a raw
/// snapshot passes, and its record is the image's last drill and last success, on this host
/// (cached when stored) and on a host that only reads the repository.
#[test]
fn a_record_the_drill_verb_writes_is_in_the_report() {
    let env = Env::init("16K");
    let p = env.path("vm.raw");
    std::fs::write(&p, bytes(512 << 10, 7, false)).unwrap();
    let id = s(&env.archive(&p, "vm"), "snapshot");
    let before = report_json(&env, &[]);
    assert_eq!(names(&before["drills"]["never_drilled"]), ["vm"]);

    let drilled = env.json(&["drill", &id]);
    assert_eq!(drilled["ok"], true, "{drilled}");
    let rec = &drilled["drills"][0];
    let stored: Vec<PathBuf> = std::fs::read_dir(env.repo.join("drills")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(stored.len(), 1, "one record stored: {stored:?}");
    let name = stored[0].file_name().unwrap().to_str().unwrap().to_string();

    let other_cache = env.path("cache-reader");
    for cache in [env.cache.clone(), other_cache] {
        let out = env.cmd(&["report", "--format", "json"]).env("IMGARC_CACHE_DIR", &cache).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        let vm = image(&r, "vm");
        assert_eq!(vm["last_drill"]["record"], name.as_str(), "{vm}");
        assert_eq!(vm["last_drill"]["started"], rec["started"]);
        assert_eq!(vm["last_drill"]["seconds"], rec["seconds"]);
        assert_eq!(vm["last_drill"]["host"], rec["host"]);
        assert_eq!(vm["last_success"]["record"], name.as_str());
        assert!(r["drills"]["never_drilled"].as_array().unwrap().is_empty());
    }
}

/// Prune deletes the records of a forgotten snapshot and keeps the others (a dry run only
/// counts them); the report stops showing them, and a second prune finds nothing.
#[test]
fn prune_drops_the_records_of_forgotten_snapshots_and_keeps_the_others() {
    let env = Env::init("16K");
    let mut ids = Vec::new();
    for night in 0..2 {
        let p = env.path(&format!("n{night}.raw"));
        std::fs::write(&p, bytes(256 << 10, 20 + night, false)).unwrap();
        ids.push(s(&env.archive(&p, "vm"), "snapshot"));
    }
    let names = save(
        &env,
        &[
            record(&ids[0], "2026-11-01T01:00:00Z", "h", true, 1.0),
            record(&ids[0], "2026-11-02T01:00:00Z", "h", false, 1.0),
            record(&ids[1], "2026-11-03T01:00:00Z", "h", true, 2.0),
        ],
    );
    // The verb's own record of the snapshot that stays.
    assert_eq!(env.json(&["drill", &ids[1]])["ok"], true);
    let on_disk = || -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(env.repo.join("drills")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    assert_eq!(on_disk().len(), 4);
    env.json(&["forget", &ids[0]]);

    let dry = env.json(&["prune", "--dry-run"]);
    assert_eq!(u(&dry, "drill_records_deleted"), 2, "{dry}");
    assert_eq!(on_disk().len(), 4, "a dry run deleted a record");

    let pruned = env.json(&["prune"]);
    assert_eq!(u(&pruned, "drill_records_deleted"), 2, "{pruned}");
    let left = on_disk();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&names[0]) && !left.contains(&names[1]), "a record of the forgotten snapshot stayed: {left:?}");
    assert!(left.contains(&names[2]), "a record of the remaining snapshot went: {left:?}");

    let r = report_json(&env, &[]);
    let vm = image(&r, "vm");
    assert_eq!(vm["drills"], 2, "{vm}");
    let again = env.ok(&["prune"]);
    assert!(!again.contains("drill records"), "a second prune deletes more records: {again}");
    assert_eq!(u(&env.json(&["prune", "--dry-run"]), "drill_records_deleted"), 0);
    assert_eq!(on_disk(), left);
}

/// A prune killed right after deleting its first drill record (`kill -9` at that point: the
/// `test-hooks` crash point) leaves the other records of the forgotten snapshot, and every
/// record of the snapshot that stays; the next prune deletes the rest.
#[test]
fn a_prune_killed_among_the_records_leaves_the_rest_to_the_next() {
    let env = Env::init("16K");
    let mut ids = Vec::new();
    for night in 0..2 {
        let p = env.path(&format!("n{night}.raw"));
        std::fs::write(&p, bytes(256 << 10, 30 + night, false)).unwrap();
        ids.push(s(&env.archive(&p, "vm"), "snapshot"));
    }
    let gone: Vec<DrillRecord> = (1..=3).map(|d| record(&ids[0], &format!("2026-11-0{d}T01:00:00Z"), "h", true, 1.0)).collect();
    let doomed = save(&env, &gone);
    let kept = save(&env, &[record(&ids[1], "2026-11-04T01:00:00Z", "h", true, 1.0)]);
    env.json(&["forget", &ids[0]]);
    let count = |names: &[String]| names.iter().filter(|n| env.repo.join("drills").join(n).exists()).count();

    let killed = env.cmd(&["prune"]).env("IMGARC_TEST_CRASH_AT", "drill-record-deleted").output().unwrap();
    assert!(!killed.status.success(), "the crash point did not fire: {}", String::from_utf8_lossy(&killed.stderr));
    assert_eq!(count(&doomed), 2, "the killed prune deleted one record, then died");
    assert_eq!(count(&kept), 1);
    // The killed run's lock stays until it expires; unlock removes it, as an operator would.
    env.ok(&["unlock"]);
    let next = env.json(&["prune"]);
    assert_eq!(u(&next, "drill_records_deleted"), 2, "{next}");
    assert_eq!((count(&doomed), count(&kept)), (0, 1));
}

/// Host `b`'s cache holds the rows of records that host `a`'s prune deleted (b last synced
/// before it), and misses a record `a` wrote since: b's next report and cache agree with the
/// repository, and b's own prune has nothing left to delete.
#[test]
fn a_stale_second_host_drops_deleted_records_and_sees_new_ones() {
    let env = Env::init("16K");
    let cache = |host: &str| env.path(&format!("cache-{host}"));
    let on = |host: &str, args: &[&str]| -> Value {
        let out = env.cmd(&[&["--json"][..], args].concat()).env("IMGARC_CACHE_DIR", cache(host)).output().unwrap();
        assert!(out.status.success(), "host {host}: imgarc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let mut ids = Vec::new();
    for night in 0..2 {
        let p = env.path(&format!("n{night}.raw"));
        std::fs::write(&p, bytes(256 << 10, 40 + night, false)).unwrap();
        ids.push(s(&on("a", &["archive", p.to_str().unwrap(), "--name", "vm"]), "snapshot"));
    }
    let old =
        save(&env, &[record(&ids[0], "2026-11-01T01:00:00Z", "a", true, 1.0), record(&ids[1], "2026-11-02T01:00:00Z", "a", true, 1.0)]);
    assert_eq!(image(&on("b", &["report"]), "vm")["drills"], 2);
    let b_rows = || {
        let repo = env.open_repo();
        let path = cache("b").join(&repo.config().id).join(imgarc::index::cache_file_name(&repo));
        let index = imgarc::index::Index::open_at(&path, &repo.config().id).unwrap();
        let mut names: Vec<String> = index.drill_rows().unwrap().into_iter().map(|r| r.name).collect();
        names.sort();
        names
    };
    let mut both = old.clone();
    both.sort();
    assert_eq!(b_rows(), both, "b cached both records");

    on("a", &["forget", &ids[0]]);
    assert_eq!(u(&on("a", &["prune"]), "drill_records_deleted"), 1);
    let new = save(&env, &[record(&ids[1], "2026-11-05T01:00:00Z", "a", false, 1.0)]);
    assert_eq!(b_rows(), both, "b has not synced since");

    let r = on("b", &["report"]);
    let vm = image(&r, "vm");
    assert_eq!(vm["drills"], 2, "{vm}");
    assert_eq!(vm["last_drill"]["record"], new[0].as_str(), "b misses the record a wrote after b's last sync: {vm}");
    assert_eq!(vm["last_success"]["record"], old[1].as_str());
    let mut want = vec![old[1].clone(), new[0].clone()];
    want.sort();
    assert_eq!(b_rows(), want, "b's cache keeps a row of a record a's prune deleted");
    assert_eq!(u(&on("b", &["prune", "--dry-run"]), "drill_records_deleted"), 0);
}

/// Forged and damaged `drills/` objects: bytes that do not hash to their name, a byte flipped in
/// a real record, a record moved to another name, garbage, a version this imgarc does not read, a
/// start time that is not RFC 3339, one over the size cap. Each is skipped with a warning naming it; the valid record
/// is still reported, nothing panics, and prune leaves what it cannot read alone.
#[test]
fn forged_and_damaged_records_are_skipped_with_a_warning() {
    // Encrypted: forgeries without the keys.
    let env = Env::init("16K");
    let p = env.path("vm.raw");
    std::fs::write(&p, bytes(256 << 10, 60, false)).unwrap();
    let id = s(&env.archive(&p, "vm"), "snapshot");
    let [good, flipped] =
        save(&env, &[record(&id, "2026-11-01T01:00:00Z", "h", true, 1.0), record(&id, "2026-11-02T01:00:00Z", "h", true, 1.0)])
            .try_into()
            .unwrap();
    let dir = env.repo.join("drills");
    // Named by its own hash, so only the seal can refuse it.
    let sealed_garbage = b"{\"version\": 1, \"not\": \"sealed\"}";
    let garbage = hex::encode(blake3::hash(sealed_garbage).as_bytes());
    std::fs::write(dir.join(&garbage), sealed_garbage).unwrap();
    let moved = hex::encode(blake3::hash(b"another name").as_bytes());
    std::fs::copy(dir.join(&good), dir.join(&moved)).unwrap();
    let mut b = std::fs::read(dir.join(&flipped)).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x01;
    std::fs::write(dir.join(&flipped), b).unwrap();
    let forged = [garbage, moved, flipped.clone()];

    // Unencrypted: records whose bytes do hash to their names but do not decode or are not used.
    let plain = Env::init_unencrypted("16K");
    let p = plain.path("vm.raw");
    std::fs::write(&p, bytes(256 << 10, 61, false)).unwrap();
    let pid = s(&plain.archive(&p, "vm"), "snapshot");
    let [pgood] = save(&plain, &[record(&pid, "2026-11-01T01:00:00Z", "h", true, 1.0)]).try_into().unwrap();
    let pdir = plain.repo.join("drills");
    let mut future = serde_json::to_value(record(&pid, "2026-11-03T01:00:00Z", "h", true, 1.0)).unwrap();
    future["version"] = 2.into();
    let mut undated = serde_json::to_value(record(&pid, "2026-11-03T01:00:00Z", "h", true, 1.0)).unwrap();
    undated["started"] = "last tuesday".into();
    let mut planted = Vec::new();
    // A record over the 1 MiB cap (whose bytes hash to its name): refused before it is read.
    let mut huge = serde_json::to_vec(&record(&pid, "2026-11-04T01:00:00Z", "h", true, 1.0)).unwrap();
    huge.resize((1 << 20) + 1, b' ');
    for bytes in [b"\xff\xfe not json at all".to_vec(), serde_json::to_vec(&future).unwrap(), serde_json::to_vec(&undated).unwrap(), huge] {
        let name = hex::encode(blake3::hash(&bytes).as_bytes());
        std::fs::write(pdir.join(&name), bytes).unwrap();
        planted.push(name);
    }

    let forged_why = ["cannot be authenticated", "does not match its name", "does not match its name"];
    let planted_why = ["is malformed", "version 2", "RFC 3339", "more than the 1048576 bytes"];
    for (env, good, bad, why) in [(&env, &good, &forged[..], &forged_why[..]), (&plain, &pgood, &planted[..], &planted_why[..])] {
        let out = env.run(&["report", "--format", "json"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !stderr.contains("panicked"), "{stderr}");
        assert_eq!(bad.len(), why.len());
        for (name, why) in bad.iter().zip(why) {
            let line = stderr
                .lines()
                .find(|l| l.contains(&format!("drill record {name}")))
                .unwrap_or_else(|| panic!("no warning names {name}:\n{stderr}"));
            assert!(line.contains("warning") && line.contains(why), "the warning about {name} does not say {why:?}: {line}");
        }
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        let vm = image(&r, "vm");
        assert_eq!(vm["drills"], 1, "only the valid record counts: {vm}");
        assert_eq!(vm["last_drill"]["record"], good.as_str());
        for format in ["table", "html", "prometheus"] {
            env.ok(&["report", "--format", format]);
        }
        // Prune cannot know whose records they are: it leaves them (and the valid one) alone.
        let pruned = env.json(&["prune"]);
        assert_eq!(u(&pruned, "drill_records_deleted"), 0, "{pruned}");
        for name in bad.iter().chain([good]) {
            assert!(env.repo.join("drills").join(name).exists(), "prune deleted {name}");
        }
    }
}

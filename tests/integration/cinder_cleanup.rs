//! `imgarc cleanup` against the real Cinder and Glance: the scratch resources of a dead run
//! are deleted, a live run's, another cloud's and an unmarked resource are left alone,
//! `--dry-run` deletes nothing, a record whose resource is gone is removed, and a killed
//! `restore --to-cinder` is cleaned up by the next cleanup.
use crate::support::cinder::{self, timed, CinderEnv, WAIT};
use crate::support::Env;
use imgarc::openstack::cinder::NewVolume;
use imgarc::repository::scratch::{ScratchKind, ScratchRecord, SCRATCH_VERSION};
use imgarc::scratch::{ScratchName, ScratchSet};
use serde_json::{json, Value};

fn new_image(c: &CinderEnv, name: &str, tagged: bool) -> String {
    let mut meta = json!({"name": name, "disk_format": "raw", "container_format": "bare", "visibility": "private"});
    if tagged {
        meta["tags"] = json!(ScratchName::glance_tags());
    }
    let rec = c.glance.create(meta.as_object().unwrap()).unwrap();
    c.track_image(&rec.id);
    rec.id
}

fn new_volume(c: &CinderEnv, reserved: &ScratchName) -> String {
    let v = c
        .cinder
        .create_volume(&NewVolume { name: reserved.name.clone(), size: 1, metadata: reserved.cinder_metadata(), ..Default::default() })
        .unwrap();
    c.track_volume(&v.id);
    c.cinder.wait_volume(&v.id, &["available"], WAIT).unwrap();
    v.id
}

fn cleanup(env: &Env, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["--json", "cleanup"];
    args.extend_from_slice(extra);
    let o = env.run(&args);
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    (o.status.code(), v)
}

fn names(v: &Value, list: &str) -> Vec<String> {
    v[list].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn cleanup_deletes_dead_runs_leftovers_only() {
    let Some(c) = cinder::env() else { return };
    let env = Env::init("64K");
    let repo = env.open_repo();
    let writer = repo.acquire_lock(false, "test: writes records").unwrap();
    // A dead run: its lease is held by no lock.
    let mut dead = ScratchSet::new(&repo, &c.glance, Some(&c.cinder), "dead-run-lease-0001".into(), None, "test: dead run");
    let dead_img = dead.reserve(ScratchKind::Image, "upload").unwrap();
    let dead_vol = dead.reserve(ScratchKind::Volume, "clone").unwrap();
    let dead_never = dead.reserve(ScratchKind::Snapshot, "snap").unwrap(); // died before creating it
    let img_id = new_image(&c, &dead_img.name, true);
    let vol_id = new_volume(&c, &dead_vol);
    // A live run: the test holds its lock.
    let live_lock = repo.acquire_lock(false, "test: live run").unwrap();
    let mut live = ScratchSet::new(&repo, &c.glance, Some(&c.cinder), live_lock.lease(), None, "test: live run");
    let live_img = live.reserve(ScratchKind::Image, "upload").unwrap();
    let live_id = new_image(&c, &live_img.name, true);
    // Another cloud's record, and a forged one naming an image that is not marked as scratch.
    let other = ScratchRecord {
        version: SCRATCH_VERSION,
        kind: ScratchKind::Image,
        name: "imgarc-scratch-00000000000000ff-upload".into(),
        purpose: "test: other cloud".into(),
        cloud: None,
        auth_url: None,
        project_id: None,
        endpoint: "http://other-cloud.invalid:9292".into(),
        lease: None,
        host: "elsewhere".into(),
        pid: 1,
        created: imgarc::util::now_rfc3339(),
    };
    repo.save_scratch_record(&other).unwrap();
    let forged_name = format!("imgarc-scratch-{:016x}-user", rand::random::<u64>());
    let user_img = new_image(&c, &forged_name, false);
    let forged =
        // Written (it claims) an hour after the image was made: so the unmarked image is not its run's.
        ScratchRecord {
            name: forged_name.clone(),
            endpoint: c.glance.endpoint().to_string(),
            purpose: "forged".into(),
            created: (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ..other.clone()
        };
    repo.save_scratch_record(&forged).unwrap();
    // A forged record naming a user's image by a name imgarc never gives: unreadable, never acted on.
    let user_name = crate::support::openstack::unique("imgarc-test-user-image");
    let user_img2 = new_image(&c, &user_name, true);
    let bad_key = repo.save_scratch_record(&ScratchRecord { name: user_name.clone(), ..forged.clone() }).unwrap();
    // The records stay behind as a killed run's would (no finish, no drop).
    std::mem::forget(dead);
    drop(writer);

    let (code, dry) = cleanup(&env, &["--dry-run"]);
    assert_eq!(code, Some(3), "the forged record makes even a dry run not ok: {dry}");
    assert_eq!(dry["dry_run"], true);
    let mut would = names(&dry, "deleted");
    would.sort();
    let mut want = vec![dead_img.name.clone(), dead_vol.name.clone(), dead_never.name.clone()];
    want.sort();
    assert_eq!(would, want, "{dry}");
    assert!(c.glance.get(&img_id).is_ok() && c.cinder.get_volume(&vol_id).is_ok(), "--dry-run deleted something");
    assert_eq!(repo.list_scratch_records().unwrap().len(), 7, "--dry-run deleted a record");

    let (code, r) = timed("imgarc cleanup", || cleanup(&env, &[]));
    assert_eq!(code, Some(3), "{r}");
    assert_eq!(names(&r, "in_progress"), vec![live_img.name.clone()], "{r}");
    assert_eq!(names(&r, "other_cloud"), vec![other.name.clone()], "{r}");
    assert_eq!(names(&r, "refused"), vec![forged_name.clone()], "{r}");
    let failed = r["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{r}");
    assert_eq!(failed[0]["record"], bad_key.as_str());
    assert!(failed[0]["reason"].as_str().unwrap().contains("not an imgarc scratch name"), "{r}");
    assert!(c.glance.get(&user_img2).is_ok(), "the image named by a forged non-scratch record was deleted");
    let deleted = &r["deleted"];
    let ids_of = |name: &str| -> Vec<String> {
        let e = deleted.as_array().unwrap().iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("{name} not deleted: {r}"));
        serde_json::from_value(e["ids"].clone()).unwrap()
    };
    assert_eq!(ids_of(&dead_img.name), vec![img_id.clone()]);
    assert_eq!(ids_of(&dead_vol.name), vec![vol_id.clone()]);
    assert!(ids_of(&dead_never.name).is_empty(), "a record whose resource never existed is just removed");
    assert!(c.glance.get(&img_id).is_err(), "the dead run's image is still there");
    assert!(c.cinder.get_volume(&vol_id).is_err(), "the dead run's volume is still there");
    assert!(c.glance.get(&live_id).is_ok(), "the live run's image was deleted");
    assert!(c.glance.get(&user_img).is_ok(), "the unmarked image named by a forged record was deleted");
    // Left: the live run's, the other cloud's and the unreadable records.
    assert_eq!(repo.list_scratch_records().unwrap().len(), 3);

    // The live run ends: its own finish deletes its image and record.
    assert!(live.finish().is_empty());
    repo.delete_scratch_record(&bad_key).unwrap();
    drop(live_lock);
    let (code, r) = cleanup(&env, &[]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(names(&r, "other_cloud"), vec![other.name.clone()]);
    c.glance.delete(&user_img).unwrap();
    c.glance.delete(&user_img2).unwrap();
    c.assert_no_scratch_left();
}

#[test]
fn a_killed_restore_to_cinder_is_cleaned_up_by_the_next_cleanup() {
    let Some(c) = cinder::env() else { return };
    let env = Env::init("64K");
    let data = crate::support::bytes(1 << 20, 31, false);
    let file = env.path("disk.raw");
    std::fs::write(&file, &data).unwrap();
    let snap = env.archive(&file, "killed-restore")["snapshot"].as_str().unwrap().to_string();
    let o = env.cmd(&["restore", &snap, "--to-cinder"]).env("IMGARC_TEST_CRASH_AT", "restore-cinder-volume-created").output().unwrap();
    assert!(!o.status.success(), "the crash point did not crash: {}", String::from_utf8_lossy(&o.stderr));
    let left = c.scratch_left();
    assert!(left.iter().any(|l| l.0 == "image") && left.iter().any(|l| l.0 == "volume"), "the killed run left {left:?}");
    for (kind, id, _, _) in &left {
        match *kind {
            "image" => c.track_image(id),
            "volume" => c.track_volume(id),
            _ => {}
        }
    }
    assert_eq!(env.open_repo().list_scratch_records().unwrap().len(), 2);
    let (code, r) = timed("cleanup after a killed restore", || cleanup(&env, &[]));
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["deleted"].as_array().unwrap().len(), 2, "{r}");
    c.assert_no_scratch_left();
    assert!(env.open_repo().list_scratch_records().unwrap().is_empty());
}

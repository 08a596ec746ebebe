//! `imgarc sync` against the real Cinder of `start-cinder`: a Nova-shaped volume-backed
//! instance snapshot (BDM pointing at a Cinder snapshot) is followed disk by disk
//! (bytes read back with `rbd export`), a second sync leaves it unchanged, a disk whose
//! snapshot does not exist fails alone, and `sync --volumes --filter metadata.K=V`
//! archives only the tagged volume. No scratch resource remains.

use crate::support::cinder::{env, uuid_v4, CinderEnv};
use crate::support::openstack::unique;
use crate::support::{bytes, Env};
use serde_json::{Map, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(180);

/// `imgarc --json sync ARGS`: the report and the exit code.
fn sync(env: &Env, args: &[&str]) -> (Value, i32) {
    let mut a = vec!["--json", "sync"];
    a.extend_from_slice(args);
    let o = env.run(&a);
    let report = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("sync {args:?}: no JSON report ({e}): {}", String::from_utf8_lossy(&o.stderr)));
    (report, o.status.code().unwrap_or(-1))
}

fn restored_raw(env: &Env, snap: &str) -> Vec<u8> {
    let out = env.path(&format!("{snap}.raw"));
    env.ok(&["restore", snap, "--disk-format", "raw", "-o", out.to_str().unwrap()]);
    std::fs::read(&out).unwrap()
}

fn cinder_snapshot(c: &CinderEnv, volume_id: &str) -> String {
    let s = c.cinder.create_snapshot(volume_id, &unique("imgarc-test-snap"), false, &Map::new()).unwrap();
    c.track_snapshot(&s.id);
    c.cinder.wait_snapshot(&s.id, &["available"], T).unwrap();
    s.id
}

#[test]
fn sync_follows_volume_backed_instance_snapshots_disk_by_disk() {
    let Some(c) = env() else { return };
    let prefix = unique("imgarc-bdm");
    let data = bytes(3 << 20, 31, false);
    let vol = c.make_volume(&format!("{prefix}-root"), &data);
    let snap = cinder_snapshot(&c, &vol.id);
    let missing = uuid_v4();
    // An active one (raw, as Nova ≥ 31 makes) with a disk whose snapshot is gone, and a
    // queued one (qcow2: Glance 33 leaves it queued) naming the same snapshot.
    let img = c.make_bdm_image(&format!("{prefix}-vm"), &[(&snap, 1), (&missing, 1)]);
    let queued = c.make_bdm_image_with(&format!("{prefix}-z-queued"), &[(&snap, 1)], "qcow2", Map::new());
    assert_eq!(queued.status, "queued");
    let env = Env::init("64K");
    let filter = format!("name={prefix}-*");

    // A dry run says what it would archive and creates nothing.
    let (dry, _) = sync(&env, &["--dry-run", "--filter", &filter]);
    let would: Vec<&Value> = dry["volume_backed_archived"].as_array().unwrap().iter().collect();
    assert!(would.iter().any(|d| d["volume_snapshot_id"] == snap.as_str() && d["would"].is_string()), "{dry}");
    assert!(env.open_repo().list_snapshot_ids().unwrap().is_empty());
    c.assert_no_scratch_left();

    let (r, code) = sync(&env, &["--filter", &filter]);
    assert_eq!(code, 3, "a failed disk is exit 3: {r}");
    let archived = r["volume_backed_archived"].as_array().unwrap();
    assert_eq!(archived.len(), 1, "{r}");
    let d = &archived[0];
    // Both images name `snap` as /dev/vda: whichever is followed first archives it.
    let ids = [img.id.as_str(), queued.id.as_str()];
    assert!(ids.contains(&d["image_id"].as_str().unwrap()), "{r}");
    assert_eq!(d["volume_snapshot_id"], snap.as_str());
    assert_eq!(d["device_name"], "/dev/vda");
    assert_eq!(d["boot_index"], 0);
    let failed = r["volume_backed_failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{r}");
    assert_eq!(failed[0]["volume_snapshot_id"], missing.as_str());
    assert_eq!(failed[0]["image_id"], img.id.as_str());
    let why = failed[0]["reason"].as_str().unwrap();
    assert!(why.contains(&missing) && why.to_lowercase().contains("not found"), "{why}");
    // The queued image (sorted after) names the snapshot the first one archived: unchanged in the same run.
    let unchanged = r["volume_backed_unchanged"].as_array().unwrap();
    assert_eq!(unchanged.len(), 1, "{r}");
    assert!(ids.contains(&unchanged[0]["image_id"].as_str().unwrap()) && unchanged[0]["image_id"] != d["image_id"], "{r}");
    assert!(r["volume_backed"].as_array().unwrap().is_empty(), "followed images are not unfollowed: {r}");

    // The disk's bytes and its group.
    let snap_id = d["snapshot"].as_str().unwrap().to_string();
    let restored = restored_raw(&env, &snap_id);
    let expected = std::fs::read(c.rbd_export(&vol.id)).unwrap();
    assert_eq!(&expected[..data.len()], &data[..]);
    assert!(restored == expected, "restored disk differs from the volume ({} vs {} bytes)", restored.len(), expected.len());
    let s = env.open_repo().load_snapshot(&imgarc::ids::Id::from_hex(&snap_id).unwrap()).unwrap();
    assert_eq!(s.metadata["instance_snapshot_image"]["id"], d["image_id"]);
    assert_eq!(s.metadata["instance_snapshot_image"]["name"], d["image_name"]);
    assert!(d["image_name"].as_str().unwrap().starts_with(&prefix), "{d}");
    assert_eq!(s.metadata["block_device_mapping"]["device_name"], "/dev/vda");
    assert!(matches!(&s.source, imgarc::repository::snapshot::Source::Cinder { snapshot_id: Some(x), .. } if *x == snap));
    c.assert_no_scratch_left();
    assert!(env.open_repo().list_scratch_records().unwrap().is_empty());

    // Again: the archived disk is unchanged, the missing one fails again.
    let (r2, code2) = sync(&env, &["--filter", &filter]);
    assert_eq!(code2, 3, "{r2}");
    assert!(r2["volume_backed_archived"].as_array().unwrap().is_empty(), "{r2}");
    assert_eq!(r2["volume_backed_unchanged"].as_array().unwrap().len(), 2, "{r2}");
    assert_eq!(r2["volume_backed_unchanged"][0]["snapshot"], snap_id.as_str());
    c.assert_no_scratch_left();
}

#[test]
fn sync_volumes_archives_the_volumes_a_metadata_filter_selects() {
    let Some(c) = env() else { return };
    let prefix = unique("imgarc-volsync");
    let data = bytes(2 << 20, 32, false);
    let mut meta = Map::new();
    meta.insert("backup".into(), "yes".into());
    let tagged = c.make_volume_with(
        imgarc::openstack::cinder::NewVolume { name: format!("{prefix}-db"), size: 1, metadata: meta, ..Default::default() },
        &data,
    );
    let _other = c.make_volume(&format!("{prefix}-tmp"), &bytes(1 << 20, 33, false));
    let env = Env::init("64K");
    let (r, code) = sync(&env, &["--volumes", "--filter", &format!("name={prefix}-*"), "--filter", "metadata.backup=yes"]);
    assert_eq!(code, 0, "{r}");
    let vols = r["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 1, "only the tagged volume: {r}");
    assert_eq!(vols[0]["volume_id"], tagged.id.as_str());
    assert_eq!(vols[0]["result"], "archived");
    let restored = restored_raw(&env, vols[0]["snapshot"].as_str().unwrap());
    let expected = std::fs::read(c.rbd_export(&tagged.id)).unwrap();
    assert!(restored == expected, "restored volume differs");
    c.assert_no_scratch_left();
}

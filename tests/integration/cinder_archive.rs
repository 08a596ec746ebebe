//! `archive cinder:VOLUME` against the real Cinder (RBD on a throw-away Ceph) of
//! `start-cinder`: available and in-use volumes, bytes read back with `rbd export`,
//! the recorded volume metadata, no scratch resource left, a killed run's
//! leftovers deleted by the next run, a volume in a bad state.

use crate::support::openstack::{config_from, os_env, unique, upload_image};
use crate::support::{bytes, skip_or_fail_in_ci, Env};
use imgarc::openstack::cinder::{CinderClient, NewVolume};
use imgarc::openstack::glance::GlanceClient;
use imgarc::openstack::keystone::Session;
use imgarc::scratch::SCRATCH_PREFIX;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(180);

/// The admin clients, or None (skipped) without a Cinder.
fn clients() -> Option<(GlanceClient, CinderClient)> {
    if std::env::var("CINDER_URL").map_or(true, |u| u.is_empty()) {
        skip_or_fail_in_ci("CINDER_URL is not set (start-cinder)");
        return None;
    }
    let session = Session::new(&config_from(os_env()).unwrap()).unwrap();
    Some((GlanceClient::new(&session).unwrap(), CinderClient::new(&session).unwrap()))
}

/// Deletes the volume when dropped (best effort, waits until it is gone).
struct VolumeGuard(CinderClient, String);
impl Drop for VolumeGuard {
    fn drop(&mut self) {
        let _ = self.0.delete_volume(&self.1);
        let _ = self.0.wait_volume_gone(&self.1, T);
    }
}

/// A 1 GiB volume whose first bytes are `data` (made from a raw Glance image).
fn volume_with(g: &GlanceClient, c: &CinderClient, data: &[u8]) -> VolumeGuard {
    let (img, _img_guard) = upload_image(g, &unique("cinder-src"), data, json!({}));
    let v = c
        .create_volume(&NewVolume { name: unique("imgarc-test-vol"), size: 1, image_id: Some(img.id.clone()), ..Default::default() })
        .unwrap();
    let guard = VolumeGuard(c.clone(), v.id.clone());
    c.wait_volume(&v.id, &["available"], T).unwrap();
    guard
}

/// The volume's bytes as Ceph holds them.
fn rbd_export(volume_id: &str, dir: &std::path::Path) -> Vec<u8> {
    let out = dir.join(format!("rbd-{volume_id}.raw"));
    let conf = std::env::var("CINDER_CEPH_CONF").unwrap();
    let pool = std::env::var("CINDER_RBD_POOL").unwrap_or_else(|_| "volumes".into());
    let st = std::process::Command::new("rbd")
        .args(["-c", &conf, "export", "--no-progress", &format!("{pool}/volume-{volume_id}")])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "rbd export failed");
    std::fs::read(&out).unwrap()
}

fn restored_raw(env: &Env, snap: &str) -> Vec<u8> {
    let out = env.path(&format!("{snap}.raw"));
    env.ok(&["restore", snap, "--disk-format", "raw", "-o", out.to_str().unwrap()]);
    std::fs::read(&out).unwrap()
}

/// No image, volume or snapshot named imgarc-scratch-… remains.
fn assert_no_scratch(g: &GlanceClient, c: &CinderClient, report: &Value) {
    for s in report["scratch"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        assert!(name.starts_with(SCRATCH_PREFIX), "{name}");
    }
    let images: Vec<_> = g.list().unwrap().into_iter().filter_map(|r| r.name).filter(|n| n.starts_with(SCRATCH_PREFIX)).collect();
    assert!(images.is_empty(), "scratch images left: {images:?}");
    let vols: Vec<_> = c.list_volumes(&[]).unwrap().into_iter().filter_map(|v| v.name).filter(|n| n.starts_with(SCRATCH_PREFIX)).collect();
    assert!(vols.is_empty(), "scratch volumes left: {vols:?}");
    let snaps: Vec<_> =
        c.list_snapshots(&[]).unwrap().into_iter().filter_map(|s| s.name).filter(|n| n.starts_with(SCRATCH_PREFIX)).collect();
    assert!(snaps.is_empty(), "scratch snapshots left: {snaps:?}");
}

#[test]
fn available_and_in_use_volumes_are_archived_byte_exactly_with_their_metadata() {
    let Some((g, c)) = clients() else { return };
    let _serial = crate::support::openstack::serial();
    let data = bytes(3 << 20, 18, false);
    let vol = volume_with(&g, &c, &data);
    let env = Env::init("64K");

    // Available: one scratch image.
    let r = env.json(&["archive", &format!("cinder:{}", vol.1), "--tag", "vol"]);
    let scratch = r["scratch"].as_array().unwrap();
    assert_eq!(scratch.len(), 1, "{r}");
    assert_eq!(scratch[0]["kind"], "image");
    assert!(
        s_tags(&env, &r).contains(&imgarc::scratch::SCRATCH_TAG.to_string()),
        "the scratch image was not tagged {}",
        imgarc::scratch::SCRATCH_TAG
    );
    assert!(!r["verified_digests"].as_array().unwrap().is_empty(), "the scratch image's digest was not verified: {r}");
    let snap = r["snapshot"].as_str().unwrap().to_string();
    let expected = rbd_export(&vol.1, env.dir.path());
    assert_eq!(&expected[..data.len()], &data[..]);
    let restored = restored_raw(&env, &snap);
    assert!(restored == expected, "restored bytes differ from the volume's ({} vs {} bytes)", restored.len(), expected.len());
    let repo = env.open_repo();
    let s = repo.load_snapshot(&imgarc::ids::Id::from_hex(&snap).unwrap()).unwrap();
    let v = &s.metadata["cinder_volume"];
    assert_eq!(v["id"], vol.1.as_str());
    assert_eq!(v["size"], 1);
    assert!(v.get("volume_type").is_some() && v.get("bootable").is_some() && v.get("availability_zone").is_some(), "{v}");
    assert!(s.metadata["scratch_image"]["id"].is_string());
    assert!(matches!(&s.source, imgarc::repository::snapshot::Source::Cinder { volume_id, snapshot_id: None, .. } if *volume_id == vol.1));
    assert_no_scratch(&g, &c, &r);
    assert!(repo.list_scratch_records().unwrap().is_empty());

    // In-use: snapshot, scratch volume, scratch image.
    // No connector: an attachment without connection info can be deleted without asking Nova (there is none).
    let att = c.create_attachment(&vol.1, &uuid_like(), None).unwrap();
    c.complete_attachment(&att).unwrap();
    c.wait_volume(&vol.1, &["in-use"], T).unwrap();
    let r = env.json(&["archive", &format!("cinder:{}", vol.1)]);
    let kinds: Vec<&str> = r["scratch"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["snapshot", "volume", "image"], "{r}");
    let snap2 = r["snapshot"].as_str().unwrap().to_string();
    assert!(restored_raw(&env, &snap2) == expected, "the in-use volume's restored bytes differ");
    let s2 = env.open_repo().load_snapshot(&imgarc::ids::Id::from_hex(&snap2).unwrap()).unwrap();
    assert_eq!(s2.metadata["cinder_volume"]["status"], "in-use");
    assert!(!s2.metadata["cinder_volume"]["attachments"].as_array().unwrap().is_empty(), "the attachment is not recorded");
    assert_no_scratch(&g, &c, &r);
    c.delete_attachment(&att).unwrap();
    c.wait_volume(&vol.1, &["available"], T).unwrap();
}

#[test]
fn a_killed_archive_leaves_scratch_resources_that_the_next_run_deletes() {
    let Some((g, c)) = clients() else { return };
    let _serial = crate::support::openstack::serial();
    let data = bytes(1 << 20, 19, false);
    let vol = volume_with(&g, &c, &data);
    let env = Env::init("64K");
    let o =
        env.cmd(&["archive", &format!("cinder:{}", vol.1)]).env("IMGARC_TEST_CRASH_AT", "volume-scratch-image-created").output().unwrap();
    assert!(!o.status.success(), "the crash point was not reached");
    let records = env.open_repo().list_scratch_records().unwrap();
    assert_eq!(records.len(), 1, "the killed run left no scratch record");
    let rec = env.open_repo().load_scratch_record(&records[0].0, Some(records[0].1)).unwrap();
    let left = g.list_filtered(&[("name", rec.name.as_str())], 10).unwrap();
    assert_eq!(left.len(), 1, "the killed run's scratch image {} is not in Glance", rec.name);
    // Tagged right after the upload started? The crash point is before the tag: the name alone marks it.
    assert!(rec.name.starts_with(SCRATCH_PREFIX));
    // The crashed run's lease is not live any more: the next run deletes its image, then completes.
    c.wait_volume(&vol.1, &["available"], T).unwrap();
    let r = env.json(&["archive", &format!("cinder:{}", vol.1)]);
    assert_eq!(r["cleanup"]["deleted"].as_array().unwrap().len(), 1, "{r}");
    assert!(env.open_repo().list_scratch_records().unwrap().is_empty());
    assert_no_scratch(&g, &c, &r);
}

#[test]
fn a_volume_in_a_bad_state_gives_a_clear_error() {
    let Some((g, c)) = clients() else { return };
    let _serial = crate::support::openstack::serial();
    let env = Env::init("64K");
    let o = env.run(&["archive", "cinder:no-such-volume-imgarc"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no-such-volume-imgarc"), "{err}");
    // A volume being uploaded elsewhere is neither available nor in-use.
    let data = bytes(1 << 20, 20, false);
    let vol = volume_with(&g, &c, &data);
    let img = c.upload_to_image(&vol.1, &unique("imgarc-test-busy"), "raw", false).unwrap();
    let o = env.run(&["archive", &format!("cinder:{}", vol.1)]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    c.wait_volume(&vol.1, &["available"], T).unwrap();
    let _ = g.wait_active(&img, T);
    let _ = g.delete(&img);
    assert!(!o.status.success(), "archiving an uploading volume succeeded");
    assert!(err.contains(&vol.1) && err.contains("status"), "{err}");
}

fn uuid_like() -> String {
    let h = hex::encode(rand::random::<[u8; 16]>());
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// The tags the archived scratch image had when it was read (its recorded Glance record).
fn s_tags(env: &Env, r: &Value) -> Vec<String> {
    let snap = env.open_repo().load_snapshot(&imgarc::ids::Id::from_hex(r["snapshot"].as_str().unwrap()).unwrap()).unwrap();
    snap.metadata["scratch_image"]["tags"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

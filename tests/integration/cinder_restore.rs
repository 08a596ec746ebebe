//! `imgarc restore SNAPSHOT --to-cinder` against the real Cinder of `ci/openstack.sh`: the new
//! volume's bytes (read back with `rbd export`) equal the archived image's guest bytes, for a
//! raw and a qcow2 archive; bootable flag and type; `--keep-image`; a failing restore deletes
//! what it made; no scratch resource or record is left. Times are printed, never asserted.
use crate::support::cinder::{self, timed};
use crate::support::openstack::unique;
use crate::support::Env;
use serde_json::Value;

/// A repository holding `data` archived as a raw file (or, with `qcow2`, converted to QCOW2
/// first): the env and the snapshot id.
fn archived(data: &[u8], qcow2: bool) -> (Env, String) {
    let env = Env::init("64K");
    let raw = env.path("disk.raw");
    std::fs::write(&raw, data).unwrap();
    let file = if qcow2 {
        let q = env.path("disk.qcow2");
        let o = std::process::Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&q).output().unwrap();
        assert!(o.status.success(), "qemu-img: {}", String::from_utf8_lossy(&o.stderr));
        q
    } else {
        raw
    };
    let r = env.archive(&file, "cinder-restore-src");
    let snap = r["snapshot"].as_str().expect("archive --json names the snapshot").to_string();
    (env, snap)
}

fn assert_no_scratch_records(env: &Env) {
    let left = env.open_repo().list_scratch_records().unwrap();
    assert!(left.is_empty(), "scratch records left in the repository: {left:?}");
}

#[test]
fn restore_to_cinder_raw_and_qcow2_volume_bytes_equal_the_original() {
    let Some(c) = cinder::env() else { return };
    let data = crate::support::bytes(3 << 20, 21, false);
    for qcow2 in [false, true] {
        let (env, snap) = archived(&data, qcow2);
        let name = unique("imgarc-test-restored");
        let r: Value = timed(&format!("restore --to-cinder ({})", if qcow2 { "qcow2" } else { "raw" }), || {
            env.json(&["restore", &snap, "--to-cinder", "--name", &name])
        });
        let vol = r["cinder"]["volume_id"].as_str().expect("cinder.volume_id").to_string();
        c.track_volume(&vol);
        let image = r["cinder"]["image_id"].as_str().unwrap().to_string();
        c.track_image(&image);
        assert_eq!(r["cinder"]["name"], name.as_str());
        assert_eq!(r["cinder"]["image_kept"], false);
        assert_eq!(r["image_id"], image.as_str(), "the --to-glance report of the intermediate image is kept in the JSON");
        let v = c.cinder.get_volume(&vol).unwrap();
        assert_eq!((v.status.as_str(), v.size, v.name.as_deref()), ("available", 1, Some(name.as_str())));
        assert!(v.bootable, "a volume restored from an image is bootable");
        assert!(
            !v.metadata.contains_key(imgarc::scratch::SCRATCH_METADATA_KEY),
            "the restored volume is no scratch volume: {:?}",
            v.metadata
        );
        if let Ok(t) = std::env::var("CINDER_VOLUME_TYPE") {
            assert_eq!(v.volume_type.as_deref(), Some(t.as_str()));
        }
        let verified: Vec<String> = serde_json::from_value(r["cinder"]["verified_with"].clone()).unwrap();
        assert!(verified.iter().any(|s| s == "volume_image_metadata.image_id"), "{verified:?}");
        // qcow2: Cinder converts to raw on the way into the volume: the guest bytes are there.
        c.assert_volume_bytes(&vol, &data);
        assert!(c.glance.get(&image).is_err(), "the intermediate image {image} was not deleted");
        c.assert_no_scratch_left();
        assert_no_scratch_records(&env);
    }
}

#[test]
fn restore_to_cinder_keep_image_and_size() {
    let Some(c) = cinder::env() else { return };
    let data = crate::support::bytes(1 << 20, 22, false);
    let (env, snap) = archived(&data, true);
    let name = unique("imgarc-test-kept");
    let r = env.json(&["restore", &snap, "--to-cinder", "--name", &name, "--keep-image", "--size", "2"]);
    let vol = r["cinder"]["volume_id"].as_str().unwrap().to_string();
    c.track_volume(&vol);
    let image = r["cinder"]["image_id"].as_str().unwrap().to_string();
    c.track_image(&image);
    assert_eq!(r["cinder"]["image_kept"], true);
    assert_eq!(r["cinder"]["size"], 2);
    assert_eq!(c.cinder.get_volume(&vol).unwrap().size, 2);
    let img = c.glance.get(&image).expect("--keep-image keeps the image");
    assert_eq!(img.name.as_deref(), Some(name.as_str()));
    assert!(!img.tags.iter().any(|t| t == imgarc::scratch::SCRATCH_TAG), "the kept image is no scratch image: {:?}", img.tags);
    c.assert_volume_bytes(&vol, &data);
    c.assert_no_scratch_left();
    assert_no_scratch_records(&env);
}

#[test]
fn a_failing_restore_to_cinder_deletes_what_it_made() {
    let Some(c) = cinder::env() else { return };
    let data = crate::support::bytes(1 << 20, 23, false);
    let (env, snap) = archived(&data, false);
    let o = env.run(&["restore", &snap, "--to-cinder", "--volume-type", "imgarc-no-such-type"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("imgarc-no-such-type"), "the error names the volume type: {err}");
    assert!(err.contains("deleted the volume and image this restore made"), "{err}");
    c.assert_no_scratch_left();
    assert_no_scratch_records(&env);
    // --to-cinder's flags without it are refused, not ignored.
    let o = env.run(&["restore", &snap, "-o", env.path("x").to_str().unwrap(), "--keep-image"]);
    assert!(!o.status.success());
}

//! Glance v2 client against the real noauth Glance (`GLANCE_URL`).
//! Run: `source ci/openstack.sh && cargo test --features openstack-tests --test integration openstack_glance::`
use crate::support::openstack as support;

use imgarc::openstack::glance::{restore_metadata, GlanceClient, ImageRecord, UploadMethod};
use imgarc::openstack::Error;
use serde_json::{json, Map};
use std::io::Read;
use std::time::Duration;
use support::*;

#[test]
fn upload_download_roundtrip_matches_glance_hashes() {
    let _serial = serial();
    let g = noauth();
    let data = crate::support::bytes(3 * 1024 * 1024 + 17, 1, false);
    let name = unique("rt");
    let (rec, _c) = upload_image(&g, &name, &data, json!({"hw_disk_bus": "scsi", "os_distro": "cirros", "tags": ["t1"]}));
    assert_eq!(rec.status, "active");
    assert_eq!(rec.size, Some(data.len() as u64));
    assert_eq!(rec.os_hash_algo.as_deref(), Some("sha512"));
    assert_eq!(rec.os_hash_value.as_deref(), Some(sha512_hex(&data).as_str()));
    assert_eq!(rec.checksum.as_deref(), Some(md5_hex(&data).as_str()));
    assert_eq!(rec.properties["hw_disk_bus"], "scsi");
    assert_eq!(rec.tags, vec!["t1"]);
    assert_eq!(rec.owner.as_deref(), Some("test-project"));

    let mut dl = g.download(&rec).unwrap();
    assert_eq!(dl.total(), Some(data.len() as u64));
    let mut got = Vec::new();
    dl.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(sha512_hex(&got), rec.os_hash_value.clone().unwrap());
    assert_eq!(dl.content_md5(), Some(md5_hex(&data).as_str()));
    assert_eq!(dl.resumes(), 0);

    // lookup by name and by id give the same record
    assert_eq!(g.image(&name).unwrap().id, rec.id);
    assert_eq!(g.image(&rec.id).unwrap().name.as_deref(), Some(name.as_str()));
}

#[test]
fn chunked_upload_without_size() {
    let _serial = serial();
    let g = noauth();
    let data = crate::support::bytes(1024 * 1024 + 3, 2, false);
    let rec = g.create(&meta(&unique("chunked"), json!({}))).unwrap();
    let _c = Cleanup(g.clone(), rec.id.clone());
    // a reader that hands out odd-sized pieces, size unknown -> Transfer-Encoding: chunked
    g.upload(&rec.id, std::io::Cursor::new(data.clone()).take(data.len() as u64), None).unwrap();
    let rec = g.wait_active(&rec.id, Duration::from_secs(30)).unwrap();
    assert_eq!(rec.os_hash_value.unwrap(), sha512_hex(&data));
}

#[test]
fn glance_direct_stage_and_import() {
    let _serial = serial();
    let g = noauth();
    assert!(g.import_methods().unwrap().contains(&"glance-direct".to_string()));
    let data = crate::support::bytes(512 * 1024, 3, false);
    let rec = g.create(&meta(&unique("direct"), json!({}))).unwrap();
    let _c = Cleanup(g.clone(), rec.id.clone());
    g.upload_with(&rec.id, std::io::Cursor::new(data.clone()), Some(data.len() as u64), UploadMethod::GlanceDirect).unwrap();
    let rec = g.wait_active(&rec.id, Duration::from_secs(60)).unwrap();
    assert_eq!(rec.os_hash_value.unwrap(), sha512_hex(&data));
}

#[test]
fn list_follows_next_pages() {
    let _serial = serial();
    let g = noauth();
    let tag = unique("page");
    let mut guards = Vec::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = g.create(&meta(&format!("{tag}-{i}"), json!({"tags": [tag]}))).unwrap();
        ids.push(r.id.clone());
        guards.push(Cleanup(g.clone(), r.id));
    }
    // page size 2: 3 pages (2+2+1)
    let found = g.list_filtered(&[("tag", &tag)], 2).unwrap();
    let mut got: Vec<String> = found.iter().map(|r| r.id.clone()).collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    assert!(found.iter().all(|r| r.status == "queued"));
    // the unfiltered list contains them too
    let all = g.list().unwrap();
    assert!(ids.iter().all(|id| all.iter().any(|r| &r.id == id)));
}

#[test]
fn name_lookup_errors() {
    let _serial = serial();
    let g = noauth();
    let name = unique("dup");
    let a = g.create(&meta(&name, json!({}))).unwrap();
    let _ca = Cleanup(g.clone(), a.id.clone());
    let b = g.create(&meta(&name, json!({}))).unwrap();
    let _cb = Cleanup(g.clone(), b.id.clone());
    match g.image(&name) {
        Err(Error::Ambiguous { count, ids, .. }) => {
            assert_eq!(count, 2);
            assert!(ids.contains(&a.id) && ids.contains(&b.id));
        }
        other => panic!("expected Ambiguous, got {other:?}"),
    }
    let e = g.image("no-such-image-name-xyz").unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    assert!(e.to_string().contains("no-such-image-name-xyz"));
    let e = g.image("00000000-0000-4000-8000-000000000000").unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    let e = g.delete("00000000-0000-4000-8000-000000000000").unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
}

#[test]
fn queued_image_is_not_downloadable() {
    let _serial = serial();
    let g = noauth();
    let rec = g.create(&meta(&unique("queued"), json!({}))).unwrap();
    let _c = Cleanup(g.clone(), rec.id.clone());
    let e = g.download(&rec).unwrap_err();
    assert!(matches!(e, Error::NotActive { .. }), "{e:?}");
    assert!(e.to_string().contains("queued"), "{e}");
    // even if a stale record claims it is active, Glance's 204 is caught
    let mut raw = rec.raw.clone();
    raw["status"] = json!("active");
    let fake = ImageRecord::from_json(raw).unwrap();
    let e = g.download(&fake).unwrap_err();
    assert!(e.to_string().contains("no data"), "{e}");
    // wait_active on a queued image times out clearly
    let e = g.wait_active(&rec.id, Duration::from_millis(600)).unwrap_err();
    assert!(e.to_string().contains("still \"queued\""), "{e}");
}

#[test]
fn unreachable_endpoint_fails_clearly() {
    let _serial = serial();
    // a port that was just free: connection refused
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let g =
        GlanceClient::standalone(&format!("http://127.0.0.1:{port}"), Some(secret("tok-SECRET-123"))).unwrap().with_retry(quick_retry());
    let t = std::time::Instant::now();
    let e = g.list().unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, Error::Transport { .. }), "{e:?}");
    assert!(s.contains("cannot connect") && s.contains(&port.to_string()), "{s}");
    assert!(!s.contains("SECRET") && !format!("{e:?}").contains("SECRET"), "{s}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn upload_errors_are_reported() {
    let _serial = serial();
    let g = noauth();
    // qcow2 declared, random bytes sent: Glance's format inspection says 415
    let rec = g.create(&meta(&unique("badfmt"), json!({"disk_format": "qcow2"}))).unwrap();
    let _c = Cleanup(g.clone(), rec.id.clone());
    let e = g.upload(&rec.id, std::io::Cursor::new(crate::support::bytes(65536, 4, false)), Some(65536)).unwrap_err();
    assert_eq!(e.status(), Some(415), "{e}");
    // non-string custom property: 400 with Glance's reason
    let mut m = meta(&unique("badprop"), json!({}));
    m.insert("custom".into(), json!(5));
    let e = g.create(&m).unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
}

#[test]
fn restore_metadata_is_accepted_by_glance() {
    let _serial = serial();
    let g = noauth();
    let data = crate::support::bytes(200_000, 5, false);
    let (rec, _c) = upload_image(
        &g,
        &unique("src"),
        &data,
        json!({"min_disk": 1, "min_ram": 64, "tags": ["x"], "hw_rng_model": "virtio",
               "instance_uuid": "abc", "owner_project_name": "p", "image_type": "snapshot", "protected": false}),
    );
    let mut ov = Map::new();
    ov.insert("name".into(), json!(unique("restored")));
    let m = restore_metadata(&rec, &ov);
    let new = g.create(&m).unwrap();
    let _c2 = Cleanup(g.clone(), new.id.clone());
    g.upload(&new.id, std::io::Cursor::new(data.clone()), Some(data.len() as u64)).unwrap();
    let new = g.wait_active(&new.id, Duration::from_secs(30)).unwrap();
    assert_eq!(new.os_hash_value, rec.os_hash_value);
    assert_eq!(new.min_ram, 64);
    assert_eq!(new.properties["hw_rng_model"], "virtio");
    assert_eq!(new.properties["image_type"], "snapshot");
    assert!(!new.properties.contains_key("instance_uuid"));
    assert_ne!(new.id, rec.id);
}

#[test]
fn tampered_store_file_is_detected() {
    use imgarc::digest::{Algo, HashingReader};
    let _serial = serial();
    let g = noauth();
    let data = crate::support::bytes(1024 * 1024, 21, false);
    let (rec, _c) = upload_image(&g, &unique("tamper"), &data, json!({}));
    // intact: verified, digests equal Glance's
    let mut r = HashingReader::verifying(g.download(&rec).unwrap(), rec.expected(&[]));
    let h = r.handle();
    std::io::copy(&mut r, &mut std::io::sink()).unwrap();
    let d = h.get().unwrap();
    assert!(d.verified);
    assert_eq!(d.get(Algo::Sha512), rec.os_hash_value.as_deref());
    // change one byte in Glance's file store behind its back
    let path = std::path::Path::new(&env("GLANCE_STATE_DIR")).join("images").join(&rec.id);
    let mut stored = std::fs::read(&path).expect("image file in the store");
    assert_eq!(stored, data);
    stored[4242] ^= 0xff;
    std::fs::write(&path, &stored).unwrap();
    let mut r = HashingReader::verifying(g.download(&rec).unwrap(), rec.expected(&[]));
    let e = std::io::copy(&mut r, &mut std::io::sink()).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("does not match the image record") && s.contains("sha512: expected") && s.contains(&rec.id), "{s}");
}

#[test]
fn restore_image_flow() {
    use imgarc::openstack::glance::{restore_image, RestoreOptions};
    let _serial = serial();
    let g = noauth();
    let data = crate::support::bytes(1_500_000, 41, false);
    let (src, _c) = upload_image(&g, &unique("arch"), &data, json!({"hw_disk_bus": "virtio", "instance_uuid": "i-9", "tags": ["nightly"]}));
    // pretend the archived record was protected
    let mut raw = src.raw.clone();
    raw["protected"] = json!(true);
    let archived = ImageRecord::from_json(raw).unwrap();

    // success: new image active, verified, protected again, metadata carried over
    let mut opts = RestoreOptions { size: Some(data.len() as u64), ..Default::default() };
    opts.overrides.insert("name".into(), json!(unique("restored")));
    let out = restore_image(&g, &archived, std::io::Cursor::new(data.clone()), &opts).unwrap();
    let new = &out.record;
    assert_ne!(new.id, src.id);
    assert_eq!(new.status, "active");
    assert!(new.protected);
    assert_eq!(new.os_hash_value, src.os_hash_value);
    assert_eq!(out.verified_with, "os_hash_value (sha512)");
    assert_eq!(new.properties["hw_disk_bus"], "virtio");
    assert!(!new.properties.contains_key("instance_uuid"));
    assert_eq!(new.tags, vec!["nightly"]);
    g.update(&new.id, &[json!({"op": "replace", "path": "/protected", "value": false})]).unwrap();
    g.delete(&new.id).unwrap();

    // glance-direct, chunked (no size)
    let opts = RestoreOptions { method: UploadMethod::GlanceDirect, ..Default::default() };
    let out = restore_image(&g, &src, std::io::Cursor::new(data.clone()), &opts).unwrap();
    assert_eq!(out.record.os_hash_value, src.os_hash_value);
    g.delete(&out.record.id).unwrap();

    // wrong bytes from the repository: fails and deletes the half-created image
    let mut bad = data.clone();
    bad[10] ^= 1;
    let e = restore_image(&g, &src, std::io::Cursor::new(bad.clone()), &RestoreOptions::default()).unwrap_err();
    let Error::Restore { id: Some(id), message } = &e else { panic!("{e:?}") };
    assert!(message.contains("the archived image had") && message.contains("deleted the half-created image"), "{message}");
    assert!(matches!(g.get(id), Err(Error::NotFound(_))), "image {id} should be gone");

    // Glance rejects the upload (qcow2 declared, raw bytes): deleted; with keep_failed: kept
    let mut opts = RestoreOptions::default();
    opts.overrides.insert("disk_format".into(), json!("qcow2"));
    let e = restore_image(&g, &src, std::io::Cursor::new(data.clone()), &opts).unwrap_err();
    assert!(e.to_string().contains("415") && e.to_string().contains("deleted the half-created image"), "{e}");
    opts.keep_failed = true;
    let e = restore_image(&g, &src, std::io::Cursor::new(data.clone()), &opts).unwrap_err();
    let Error::Restore { id: Some(id), message } = &e else { panic!("{e:?}") };
    assert!(message.contains("kept the failed image"), "{message}");
    let _k = Cleanup(g.clone(), id.clone());
    assert!(g.get(id).is_ok());
}

//! End to end through the `imgarc` binary against a real Glance:
//! archive `glance:IMAGE` (digests checked against the record), restore
//! `--to-glance` (os_hash_value checked), dedup of the round trip, and the
//! failure cases. Run: `source ci/openstack.sh && cargo nextest run --features openstack-tests`.
use crate::support;
use crate::support::openstack as os;

use serde_json::json;
use support::*;

fn glance_env() -> Vec<String> {
    vec!["--glance-url".into(), os::env("GLANCE_URL")]
}

fn run_json(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut a: Vec<String> = glance_env();
    a.push("--json".into());
    a.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    serde_json::from_str(&env.ok(&refs)).unwrap()
}

fn qcow2_image(env: &Env) -> Vec<u8> {
    let raw = env.path("g.raw");
    imgarc::synthetic::SyntheticDisk::new(16 << 20, 5).write_night(&raw, 0).unwrap();
    let q = env.path("g.qcow2");
    let st = std::process::Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(&q).status().unwrap();
    assert!(st.success());
    std::fs::read(q).unwrap()
}

#[test]
fn archive_from_glance_restore_into_glance_and_dedup() {
    let _serial = os::serial();
    let g = os::noauth();
    let env = Env::init("64K");
    let data = qcow2_image(&env);
    let name = os::unique("e2e");
    let (rec, _c) = os::upload_image(&g, &name, &data, json!({"disk_format": "qcow2", "hw_disk_bus": "scsi", "instance_uuid": "abc"}));

    let a = run_json(&env, &["archive", &format!("glance:{name}")]);
    assert_eq!(s(&a, "format"), "qcow2");
    assert_eq!(u(&a, "logical_bytes"), data.len() as u64);
    // The record's strongest digest only (md5 beside it would cost a core and prove nothing more).
    assert_eq!(a["verified_digests"], json!(["sha512"]), "{a}");
    let snap = s(&a, "snapshot");
    let shown = run_json(&env, &["show", &snap]);
    assert_eq!(shown["source"]["image_id"], rec.id);
    assert_eq!(shown["metadata"]["hw_disk_bus"], "scsi");

    let new_name = os::unique("restored");
    let r = run_json(&env, &["restore", &snap, "--to-glance", "--name", &new_name, "--property", "restored_by=imgarc"]);
    let new = g.get(r["image_id"].as_str().unwrap()).unwrap();
    let _c2 = os::Cleanup(g.clone(), new.id.clone());
    assert_eq!(new.status, "active");
    assert_eq!(new.os_hash_value, rec.os_hash_value);
    assert_eq!(new.disk_format.as_deref(), Some("qcow2"));
    assert_eq!(new.properties["hw_disk_bus"], "scsi");
    assert_eq!(new.properties["restored_by"], "imgarc");
    assert!(new.properties.get("instance_uuid").is_none(), "instance_uuid must not cross clouds");

    // Archiving the restored image stores nothing new.
    let again = run_json(&env, &["archive", &format!("glance:{}", new.id)]);
    assert_eq!(u(&again, "new_chunks"), 0, "{again}");
    let list = run_json(&env, &["glance", "list"]);
    let row = list.as_array().unwrap().iter().find(|r| r["id"] == rec.id.as_str()).unwrap().clone();
    assert_eq!(row["archived"], true);
}

#[test]
fn tampered_missing_and_inactive_images_fail_clearly() {
    let _serial = os::serial();
    let g = os::noauth();
    let env = Env::init("64K");
    let o = env.run(&["--glance-url", &os::env("GLANCE_URL"), "archive", "glance:no-such-image-xyz"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no-such-image-xyz"));

    let queued = g.create(&os::meta(&os::unique("queued"), json!({}))).unwrap();
    let _c = os::Cleanup(g.clone(), queued.id.clone());
    let o = env.run(&["--glance-url", &os::env("GLANCE_URL"), "archive", &format!("glance:{}", queued.id)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("queued"), "{}", String::from_utf8_lossy(&o.stderr));

    // Change the bytes behind Glance's back: the archive must fail and store no snapshot.
    let data = bytes(2 << 20, 3, true);
    let (rec, _c2) = os::upload_image(&g, &os::unique("tamper"), &data, json!({}));
    let path = std::path::Path::new(&os::env("GLANCE_STATE_DIR")).join("images").join(&rec.id);
    let mut stored = std::fs::read(&path).expect("image file in Glance's store");
    stored[4242] ^= 0xff;
    std::fs::write(&path, &stored).unwrap();
    let o = env.run(&["--glance-url", &os::env("GLANCE_URL"), "archive", &format!("glance:{}", rec.id)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no snapshot stored") || err.contains("mismatch"), "{err}");
    assert!(env.json(&["list"]).as_array().unwrap().is_empty());

    let o = env.run(&["--glance-url", "http://127.0.0.1:9", "archive", "glance:x"]);
    assert_eq!(o.status.code(), Some(1));
}

/// Sets a column of an image's row in the noauth Glance's database: the record then vouches for
/// other bytes than its store holds (Glance's API never lets a client change a digest).
fn set_record_field(id: &str, column: &str, value: &str) {
    let db = std::path::Path::new(&os::env("GLANCE_STATE_DIR")).join("glance.sqlite");
    let c = rusqlite::Connection::open(&db).unwrap_or_else(|e| panic!("{}: {e}", db.display()));
    c.busy_timeout(std::time::Duration::from_secs(20)).unwrap();
    let n = c.execute(&format!("UPDATE images SET {column} = ?1 WHERE id = ?2"), (value, id)).unwrap();
    assert_eq!(n, 1, "no image {id} in {}", db.display());
}

#[test]
fn archive_checks_the_records_strongest_digest_and_md5_when_asked() {
    let _serial = os::serial();
    let g = os::noauth();
    let env = Env::init("64K");
    let data = bytes(3 << 20, 23, false);
    let (rec, _c) = os::upload_image(&g, &os::unique("strongest"), &data, json!({}));
    assert_eq!((rec.os_hash_algo.as_deref(), rec.checksum.as_deref()), (Some("sha512"), Some(os::md5_hex(&data).as_str())));
    let source = format!("glance:{}", rec.id);

    // Multihash and md5 in the record: the multihash is checked and recorded, md5 is not computed.
    let a = run_json(&env, &["archive", &source]);
    assert_eq!(a["verified_digests"], json!(["sha512"]), "{a}");
    assert_eq!(a["digests"], json!({"sha512": os::sha512_hex(&data)}), "{a}");
    // restore and drill verify what is recorded (drill also what the archived record vouches for).
    let out = env.path("restored.raw");
    let r = run_json(&env, &["restore", &s(&a, "snapshot"), "-o", out.to_str().unwrap()]);
    assert_eq!(r["digests"], json!({"sha512": os::sha512_hex(&data)}), "{r}");
    assert_eq!(std::fs::read(&out).unwrap(), data);
    // --digest md5: checked against `checksum` too, and recorded.
    let a = run_json(&env, &["archive", &source, "--digest", "md5"]);
    assert_eq!(a["verified_digests"], json!(["md5", "sha512"]), "{a}");
    assert_eq!(a["digests"]["md5"], os::md5_hex(&data).as_str(), "{a}");
    let held = env.json(&["list"]).as_array().unwrap().len();

    // The record's multihash no longer matches the (untouched) bytes: the archive fails, naming it.
    let other = bytes(3 << 20, 24, false);
    set_record_field(&rec.id, "os_hash_value", &os::sha512_hex(&other));
    let o = env.run(&["--glance-url", &os::env("GLANCE_URL"), "archive", &source]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("sha512 of the bytes read is") && err.contains(&os::sha512_hex(&other)), "{err}");
    assert!(err.contains("no snapshot stored"), "{err}");
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), held, "a failed archive stored a snapshot");

    // A wrong md5 beside a good multihash: not checked unless asked for, then it fails the archive.
    set_record_field(&rec.id, "os_hash_value", &os::sha512_hex(&data));
    set_record_field(&rec.id, "checksum", &os::md5_hex(&other));
    let a = run_json(&env, &["archive", &source]);
    assert_eq!(a["verified_digests"], json!(["sha512"]), "{a}");
    let o = env.run(&["--glance-url", &os::env("GLANCE_URL"), "archive", &source, "--digest", "md5"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("md5 of the bytes read is") && err.contains(&os::md5_hex(&other)), "{err}");

    // No multihash (an older Glance): md5 is the strongest, and it is checked.
    set_record_field(&rec.id, "os_hash_algo", "");
    set_record_field(&rec.id, "os_hash_value", "");
    let o = env.run(&["--glance-url", &os::env("GLANCE_URL"), "archive", &source]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("md5 of the bytes read is"), "{err}");
    set_record_field(&rec.id, "checksum", &os::md5_hex(&data));
    let a = run_json(&env, &["archive", &source]);
    assert_eq!(a["verified_digests"], json!(["md5"]), "{a}");
    assert_eq!(a["digests"], json!({"md5": os::md5_hex(&data)}), "{a}");
}

fn images_named(g: &imgarc::openstack::glance::GlanceClient, name: &str) -> Vec<imgarc::openstack::glance::ImageRecord> {
    g.list_filtered(&[("name", name)], 100).unwrap()
}

#[test]
fn converted_restore_into_glance_is_checked_against_the_bytes_uploaded() {
    let _serial = os::serial();
    let g = os::noauth();
    let env = Env::init("64K");
    let data = qcow2_image(&env);
    let guest = std::fs::read(env.path("g.raw")).unwrap();
    let name = os::unique("conv");
    let (rec, _c) = os::upload_image(&g, &name, &data, json!({"disk_format": "qcow2"}));
    let a = run_json(&env, &["archive", &format!("glance:{name}")]);
    let snap = s(&a, "snapshot");

    let new_name = os::unique("conv-raw");
    let r = run_json(&env, &["restore", &snap, "--to-glance", "--disk-format", "raw", "--name", &new_name]);
    let new = g.get(r["image_id"].as_str().unwrap()).unwrap();
    let _c2 = os::Cleanup(g.clone(), new.id.clone());
    assert_eq!(new.status, "active");
    assert_eq!(new.disk_format.as_deref(), Some("raw"));
    assert_ne!(new.os_hash_value, rec.os_hash_value, "a conversion uploads other bytes than the archived qcow2");
    assert_eq!(new.os_hash_value.as_deref(), Some(os::sha512_hex(&guest).as_str()), "Glance must hold the guest disk");
    assert_eq!(new.size, Some(guest.len() as u64));
}

#[test]
fn restore_failing_mid_stream_leaves_no_active_image() {
    let _serial = os::serial();
    let g = os::noauth();
    let env = Env::init("64K");
    // More than one restore batch (32 MiB), so the upload is under way when the damage is met.
    let data = bytes(40 << 20, 17, false);
    let p = env.path("big.raw");
    std::fs::write(&p, &data).unwrap();
    let snap = s(&env.json(&["archive", p.to_str().unwrap()]), "snapshot");
    // Damage the end of the last pack: the last chunks of the image no longer verify.
    let last =
        env.packs().into_iter().filter(|p| p.to_string_lossy().contains("/data/")).max_by_key(|p| std::fs::metadata(p).unwrap().len());
    let last = last.expect("a pack");
    let mut pack = std::fs::read(&last).unwrap();
    let n = pack.len();
    for b in &mut pack[n - (4 << 20)..n - 4096] {
        *b ^= 0x5a;
    }
    std::fs::write(&last, &pack).unwrap();

    for (keep, conversion) in [(false, false), (false, true), (true, true)] {
        let name = os::unique("midfail");
        let mut args = vec!["--glance-url".to_string(), os::env("GLANCE_URL"), "restore".into(), snap.clone(), "--to-glance".into()];
        args.extend(["--name".to_string(), name.clone()]);
        if conversion {
            args.extend(["--disk-format".to_string(), "raw".into()]);
        }
        if keep {
            args.push("--keep-failed".into());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = env.run(&refs);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(1), "keep={keep} conversion={conversion}: {err}");
        assert!(err.contains("damaged") || err.contains("chunk"), "the error names the damage: {err}");
        let left = images_named(&g, &name);
        let _guards: Vec<os::Cleanup> = left.iter().map(|r| os::Cleanup(g.clone(), r.id.clone())).collect();
        assert!(left.iter().all(|r| r.status != "active"), "keep={keep} conversion={conversion}: an image is active: {left:?}");
        if keep {
            assert_eq!(left.len(), 1, "--keep-failed keeps the image: {err}");
        } else {
            assert!(left.is_empty(), "conversion={conversion}: the half-made image was not deleted: {left:?}");
        }
    }
}

//! Unit tests of the Glance client: record parsing, restore metadata rules,
//! helpers, token confinement to the endpoint's origin, and verification of
//! downloaded data against a record's digests.

mod rules {
    use super::super::client::normalize_base;
    use super::super::download::parse_content_range;
    use super::super::*;
    use crate::openstack::api::is_uuid;
    use crate::secret::Secret;
    use serde_json::{json, Map, Value};
    use std::time::Duration;

    fn rec() -> ImageRecord {
        ImageRecord::from_json(json!({
            "id": "6f0a3c7e-0000-4000-8000-000000000001", "name": "web", "status": "active",
            "disk_format": "qcow2", "container_format": "bare", "size": 1024, "virtual_size": 4096,
            "checksum": "abc", "os_hash_algo": "sha512", "os_hash_value": "def", "owner": "p1",
            "visibility": "private", "protected": true, "min_disk": 2, "min_ram": 512,
            "tags": ["a", "b"], "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-02T00:00:00Z",
            "self": "/v2/images/x", "file": "/v2/images/x/file", "schema": "/v2/schemas/image",
            "stores": "local", "os_hidden": false, "direct_url": "file:///x", "locations": [],
            "hw_disk_bus": "scsi", "hw_qemu_guest_agent": "yes", "os_distro": "ubuntu",
            "image_type": "snapshot", "instance_uuid": "i-1", "owner_project_name": "proj",
            "user_id": "u1", "base_image_ref": "b-1", "os_glance_import_task": "t1",
            "os_glance_failed_import": "", "kernel_id": null, "custom_num": 5, "custom_bool": true,
            "block_device_mapping": "[]", "description": null
        }))
        .unwrap()
    }

    #[test]
    fn record_fields() {
        let r = rec();
        assert_eq!(r.size, Some(1024));
        assert_eq!(r.min_ram, 512);
        assert!(r.protected);
        assert_eq!(r.tags, vec!["a", "b"]);
        assert_eq!(r.properties["hw_disk_bus"], "scsi");
        assert!(!r.properties.contains_key("name"));
        assert!(r.properties.contains_key("instance_uuid"));
        assert_eq!(r.raw["os_distro"], "ubuntu");
        assert_eq!(r.not_downloadable_reason(), None);
    }

    #[test]
    fn restore_rules() {
        let r = rec();
        let mut ov = Map::new();
        ov.insert("name".into(), json!("web-restored"));
        ov.insert("visibility".into(), json!("shared"));
        ov.insert("os_distro".into(), Value::Null);
        let m = restore_metadata(&r, &ov);
        for k in [
            "id",
            "status",
            "checksum",
            "os_hash_algo",
            "os_hash_value",
            "size",
            "virtual_size",
            "owner",
            "created_at",
            "updated_at",
            "self",
            "file",
            "schema",
            "stores",
            "direct_url",
            "locations",
            "instance_uuid",
            "owner_project_name",
            "user_id",
            "base_image_ref",
            "os_glance_import_task",
            "os_glance_failed_import",
            "kernel_id",
            "protected",
            "block_device_mapping",
            "description",
            "os_hidden",
            "os_distro",
        ] {
            assert!(!m.contains_key(k), "{k} should be dropped: {m:?}");
        }
        assert_eq!(m["name"], "web-restored");
        assert_eq!(m["visibility"], "shared");
        assert_eq!(m["disk_format"], "qcow2");
        assert_eq!(m["min_disk"], 2);
        assert_eq!(m["min_ram"], 512);
        assert_eq!(m["tags"], json!(["a", "b"]));
        assert_eq!(m["hw_disk_bus"], "scsi");
        assert_eq!(m["image_type"], "snapshot");
        assert_eq!(m["custom_num"], "5");
        assert_eq!(m["custom_bool"], "true");
    }

    #[test]
    fn not_downloadable() {
        let mut v = rec().raw;
        v["status"] = json!("queued");
        let r = ImageRecord::from_json(v).unwrap();
        assert!(r.not_downloadable_reason().unwrap().contains("queued"));
    }

    #[test]
    fn thread_safety() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<ImageDownload>();
        send_sync::<GlanceClient>();
        send_sync::<crate::openstack::keystone::Session>();
        send_sync::<ImageRecord>();
    }

    #[test]
    fn helpers() {
        assert!(is_uuid("6f0a3c7e-0000-4000-8000-000000000001"));
        assert!(!is_uuid("cirros-0.6"));
        assert_eq!(parse_content_range("bytes 100-199/1000"), Some((100, Some(1000))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(normalize_base("http://h:9292/v2/").unwrap(), "http://h:9292");
        assert_eq!(normalize_base("https://h/image").unwrap(), "https://h/image");
        assert!(normalize_base("http://u:pw@h/").unwrap_err().to_string().find("pw").is_none());
        let c = GlanceClient::standalone("http://h:1/image/", None).unwrap();
        assert_eq!(c.api.url(&["images", "a b", "file"]), "http://h:1/image/v2/images/a%20b/file");
        assert_eq!(c.api.join_link("/v2/images?marker=x").unwrap(), "http://h:1/image/v2/images?marker=x");
        assert_eq!(c.api.join_link("http://h:1/image/v2/images?marker=y").unwrap(), "http://h:1/image/v2/images?marker=y");
        let e = c.api.join_link("http://h:2/v2/images?marker=y").unwrap_err().to_string();
        assert!(e.contains("another host (http://h:2)"), "{e}");
        assert!(c.api.join_link("https://h:1/v2/images").is_err(), "another scheme is another origin");
        let p = RetryPolicy::default();
        assert!(p.delay(20, None) <= p.max_delay);
        assert_eq!(p.delay(1, Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert!(p.delay(1, None) <= Duration::from_millis(500));
    }

    /// A one-thread HTTP server: answers each request with `respond(path)` and records the requests' heads.
    struct Recorder {
        url: String,
        heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    fn recorder(respond: impl Fn(&str, &str) -> String + Send + 'static) -> Recorder {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (seen, me) = (heads.clone(), url.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                seen.lock().unwrap().push(head);
                let _ = conn.write_all(respond(&me, &path).as_bytes());
            }
        });
        Recorder { url, heads }
    }

    fn reply(status: &str, extra: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn carries_token(r: &Recorder) -> bool {
        r.heads.lock().unwrap().iter().any(|h| h.to_ascii_lowercase().contains("x-auth-token"))
    }

    #[test]
    fn next_link_to_another_host_never_gets_the_token() {
        let elsewhere = recorder(|_, _| reply("200 OK", "", r#"{"images": []}"#));
        let next = format!("{}/v2/images?marker=a", elsewhere.url);
        let glance =
            recorder(move |_, _| reply("200 OK", "", &format!(r#"{{"images": [{{"id": "a", "status": "active"}}], "next": "{next}"}}"#)));
        let c = GlanceClient::standalone(&glance.url, Some(Secret::new("tok-secret-123"))).unwrap();
        let e = c.list().unwrap_err().to_string();
        assert!(e.contains("another host"), "{e}");
        assert!(carries_token(&glance), "the endpoint itself gets the token");
        assert!(!carries_token(&elsewhere), "{:?}", elsewhere.heads.lock().unwrap());
    }

    #[test]
    fn redirects_to_another_host_never_get_the_token() {
        let elsewhere = recorder(|_, _| reply("200 OK", "", r#"{"id": "x", "status": "active"}"#));
        let target = elsewhere.url.clone();
        let glance = recorder(move |me, path| {
            if path.starts_with("/v2/images/same") {
                // a same-origin redirect is still followed
                reply("302 Found", &format!("Location: {me}/v2/images/x\r\n"), "")
            } else if path.starts_with("/v2/images/x") {
                reply("200 OK", "", r#"{"id": "x", "status": "active"}"#)
            } else {
                reply("302 Found", &format!("Location: {target}/v2/images/x\r\n"), "")
            }
        });
        let c = GlanceClient::standalone(&glance.url, Some(Secret::new("tok-secret-123")))
            .unwrap()
            .with_retry(RetryPolicy { max_retries: 0, ..Default::default() });
        assert_eq!(c.get("same").unwrap().id, "x");
        let e = c.get("away").unwrap_err().to_string();
        assert!(e.contains("another host"), "{e}");
        assert!(!e.contains("tok-secret-123"), "{e}");
        assert!(!carries_token(&elsewhere), "{:?}", elsewhere.heads.lock().unwrap());
    }
}

/// Verification of downloaded data against the image record's digests.
mod verify {
    use super::super::*;
    use crate::digest::{Algo, HashingReader};
    use md5::Digest as _;
    use serde_json::json;
    use std::io;

    fn record_of(data: &[u8]) -> ImageRecord {
        ImageRecord::from_json(json!({
            "id": "i1", "status": "active", "size": data.len(),
            "checksum": hex::encode(md5::Md5::digest(data)),
            "os_hash_algo": "sha512", "os_hash_value": hex::encode(sha2::Sha512::digest(data)),
        }))
        .unwrap()
    }

    #[test]
    fn verifies_and_detects_tampering() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let r = record_of(&data);
        let mut h = HashingReader::verifying(&data[..], r.expected(&[]));
        let d = h.handle();
        io::copy(&mut h, &mut io::sink()).unwrap();
        let d = d.get().unwrap();
        assert!(d.verified);
        assert_eq!(d.bytes, data.len() as u64);
        assert_eq!(d.get(Algo::Sha512), r.os_hash_value.as_deref());
        assert_eq!(d.get(Algo::Md5), None, "md5 is not computed beside the multihash");

        let mut bad = data.clone();
        bad[1234] ^= 1;
        let e = io::copy(&mut HashingReader::verifying(&bad[..], r.expected(&[])), &mut io::sink()).unwrap_err();
        let s = e.to_string();
        assert!(!s.contains("md5: expected") && s.contains("sha512: expected"), "{s}");
        let e = io::copy(&mut HashingReader::verifying(&bad[..], r.expected(&[Algo::Md5])), &mut io::sink()).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("md5: expected") && s.contains("sha512: expected"), "{s}");

        let e = io::copy(&mut HashingReader::verifying(&data[..1000], r.expected(&[])), &mut io::sink()).unwrap_err();
        assert!(e.to_string().contains("size: expected 300000 bytes, got 1000"), "{e}");
    }

    #[test]
    fn sha384_records_are_verified() {
        let data = vec![9u8; 70_000];
        let good = ImageRecord::from_json(json!({
            "id": "fips", "status": "active", "size": data.len(),
            "os_hash_algo": "sha384", "os_hash_value": hex::encode(sha2::Sha384::digest(&data)),
        }))
        .unwrap();
        let mut h = HashingReader::verifying(&data[..], good.expected(&[]));
        let d = h.handle();
        io::copy(&mut h, &mut io::sink()).unwrap();
        assert!(d.get().unwrap().verified);
        let mut bad = data.clone();
        bad[7] ^= 1;
        let e = io::copy(&mut HashingReader::verifying(&bad[..], good.expected(&[])), &mut io::sink()).unwrap_err();
        assert!(e.to_string().contains("sha384: expected"), "{e}");
    }

    #[test]
    fn unverifiable_record_computes_only() {
        let r = ImageRecord::from_json(json!({"id": "old", "status": "active"})).unwrap();
        let mut h = HashingReader::verifying(&b"abc"[..], r.expected(&[]));
        let d = h.handle();
        io::copy(&mut h, &mut io::sink()).unwrap();
        let d = d.get().unwrap();
        assert!(!d.verified);
        assert_eq!(d.get(Algo::Md5), Some("900150983cd24fb0d6963f7d28e17f72"));
        assert!(d.get(Algo::Sha512).unwrap().starts_with("ddaf35a193617aba"));
    }

    /// The digests `expected` checks: the strongest the record vouches for, plus those asked for.
    #[test]
    fn only_the_strongest_digest_is_checked_unless_more_are_asked_for() {
        let checked = |rec: serde_json::Value, requested: &[Algo]| -> Vec<(Algo, String)> {
            let mut rec = rec;
            rec["id"] = "i".into();
            rec["status"] = "active".into();
            ImageRecord::from_json(rec).unwrap().expected(requested).digests
        };
        let both = json!({"checksum": "AA", "os_hash_algo": "sha512", "os_hash_value": "BB"});
        // Multihash and md5: the multihash only, md5 when asked for (and in any case lowercase).
        assert_eq!(checked(both.clone(), &[]), [(Algo::Sha512, "bb".to_string())]);
        assert_eq!(checked(both.clone(), &[Algo::Sha256]), [(Algo::Sha512, "bb".to_string())]);
        assert_eq!(checked(both.clone(), &[Algo::Md5]), [(Algo::Md5, "aa".to_string()), (Algo::Sha512, "bb".to_string())]);
        // Multihash only.
        assert_eq!(checked(json!({"os_hash_algo": "sha256", "os_hash_value": "cc"}), &[Algo::Md5]), [(Algo::Sha256, "cc".to_string())]);
        // md5 only, or a multihash imgarc cannot compute, or one Glance left empty: md5.
        assert_eq!(checked(json!({"checksum": "aa"}), &[]), [(Algo::Md5, "aa".to_string())]);
        assert_eq!(
            checked(json!({"checksum": "aa", "os_hash_algo": "sha3_512", "os_hash_value": "dd"}), &[]),
            [(Algo::Md5, "aa".to_string())]
        );
        assert_eq!(checked(json!({"checksum": "aa", "os_hash_algo": "sha512", "os_hash_value": ""}), &[]), [(Algo::Md5, "aa".to_string())]);
        // Nothing vouched for: nothing to check, whatever is asked.
        assert!(checked(json!({"checksum": ""}), &[Algo::Md5]).is_empty());
    }
}

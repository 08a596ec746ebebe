//! Conformance suite of the remote backends against REAL servers: Ceph RGW
//! (S3), Swift with Keystone (native API, application credential and
//! password), and Swift's s3api.
//!
//! Gated behind the `remote-tests` feature; with the feature on, a missing
//! server environment FAILS the test with a message naming ci/objectstore.sh:
//!
//!     . ci/objectstore.sh
//!     cargo test --features remote-tests --test integration backend_conformance::
use crate::support::backend_common;

use backend_common::*;
use imgarc::backend::retry::{http_status, is_transient};
use imgarc::backend::swift::{SwiftAuth, SwiftSession};
use imgarc::backend::{Backend, BackendError};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The generic suite. `make(prefix, page_size)` opens the store under a key prefix.
fn conformance(name: &str, make: &dyn Fn(&str, usize) -> Box<dyn Backend>) {
    let root = unique(name);
    let t0 = std::time::Instant::now();
    let phase = |what: &str| eprintln!("{name}: {what} done at {:.1}s", t0.elapsed().as_secs_f64());
    let b = make(&root, 3); // tiny listing pages: paging is exercised with a dozen keys
    eprintln!("{name}: {}", b.location());
    assert!(b.location().contains(&root), "location {} lacks the prefix", b.location());

    // --- put / get, overwrite with the same bytes
    let small = b"{\"version\":1}".to_vec();
    b.put("config", &small).unwrap();
    assert_eq!(b.get("config").unwrap(), small);
    b.put("config", &small).unwrap();
    assert_eq!(b.get("config").unwrap(), small);
    let big = crate::support::bytes(5 * 1024 * 1024 + 17, 1, false);
    let pack = format!("data/ab/ab{}", "0".repeat(62));
    b.put(&pack, &big).unwrap();
    assert_eq!(b.get(&pack).unwrap(), big);
    let empty_key = "index/empty";
    b.put(empty_key, b"").unwrap();
    assert_eq!(b.get(empty_key).unwrap(), Vec::<u8>::new());
    assert_eq!(b.size(empty_key).unwrap(), 0);

    phase("put/get");
    // --- size, ranges
    assert_eq!(b.size(&pack).unwrap(), big.len() as u64);
    assert_eq!(b.get_range(&pack, 0, 10).unwrap(), big[..10]);
    assert_eq!(b.get_range(&pack, 4_000_000, 1_000_000).unwrap(), big[4_000_000..5_000_000]);
    let n = big.len() as u64;
    assert_eq!(b.get_range(&pack, n - 1, 1).unwrap(), big[big.len() - 1..]);
    assert_eq!(b.get_range(&pack, n, 0).unwrap(), Vec::<u8>::new());
    for (off, len) in [(n - 5, 10), (n, 1), (n + 100, 5)] {
        let e = b.get_range(&pack, off, len).unwrap_err();
        assert!(!e.is_not_found(), "range {off}+{len} past the end must not be NotFound: {e}");
        assert!(!is_transient(&e), "range past the end must not be retried: {e}");
    }

    phase("ranges");
    // --- NotFound mapping
    for e in
        [b.get("data/ff/missing").unwrap_err(), b.get_range("data/ff/missing", 0, 1).unwrap_err(), b.size("data/ff/missing").unwrap_err()]
    {
        assert!(matches!(e, BackendError::NotFound(ref k) if k == "data/ff/missing"), "{e:?}");
    }

    phase("notfound");
    // --- list: string prefixes, sizes, paging (page size 3), prefix isolation
    let mut expect: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..10u64 {
        let k = format!("data/ab/{:064x}", i);
        let v = crate::support::bytes(i as usize * 7, 100 + i, false);
        b.put(&k, &v).unwrap();
        expect.insert(k, v.len() as u64);
    }
    for k in ["data/ac/01", "data/ac/02", "snapshots/s1", "locks/l1"] {
        b.put(k, k.as_bytes()).unwrap();
        expect.insert(k.to_string(), k.len() as u64);
    }
    expect.insert(pack.clone(), big.len() as u64);
    expect.insert("config".into(), small.len() as u64);
    expect.insert(empty_key.into(), 0);
    let listed = |p: &str| -> BTreeMap<String, u64> { b.list(p).unwrap().into_iter().map(|o| (o.key, o.size)).collect() };
    let sub =
        |p: &str| -> BTreeMap<String, u64> { expect.iter().filter(|(k, _)| k.starts_with(p)).map(|(k, v)| (k.clone(), *v)).collect() };
    assert_eq!(listed(""), expect);
    assert_eq!(listed("data/"), sub("data/"));
    assert_eq!(listed("data/ab/"), sub("data/ab/"));
    assert_eq!(listed("data/a").len(), 13, "string (not path-segment) prefix");
    assert_eq!(
        listed("data/ab/000000000000000000000000000000000000000000000000000000000000000"),
        sub("data/ab/000000000000000000000000000000000000000000000000000000000000000")
    );
    assert!(listed("nothing/").is_empty());
    assert!(b.list("").unwrap().len() == expect.len(), "no duplicates across pages");
    let other = make(&format!("{root}-sibling"), 1000);
    other.put("config", b"other").unwrap();
    assert_eq!(listed(""), expect, "a sibling prefix ({root}-sibling) leaked into the listing");
    assert_eq!(other.list("").unwrap().len(), 1);

    phase("list");
    // --- concurrent use from several threads
    std::thread::scope(|s| {
        for t in 0..6u64 {
            let b = &b;
            s.spawn(move || {
                for i in 0..4u64 {
                    let k = format!("index/par-{t}-{i}");
                    let v = crate::support::bytes(64 * 1024 + i as usize, t * 100 + i, false);
                    b.put(&k, &v).unwrap();
                    assert_eq!(b.get(&k).unwrap(), v);
                }
            });
        }
    });
    assert_eq!(b.list("index/par-").unwrap().len(), 24);

    phase("concurrent");
    // --- delete: existing, then missing (Ok), then really gone
    b.delete("locks/l1").unwrap();
    assert!(b.get("locks/l1").unwrap_err().is_not_found());
    b.delete("locks/l1").unwrap();
    b.delete("locks/never-existed").unwrap();
    assert!(b.list("locks/").unwrap().is_empty());

    phase("delete");
    // --- cleanup (also exercises delete of every key)
    for o in b.list("").unwrap().into_iter().chain([]) {
        b.delete(&o.key).unwrap();
    }
    other.delete("config").unwrap();
    assert!(b.list("").unwrap().is_empty());
}

/// Wrong credentials: an error that is not NotFound, not retried, says what
/// is wrong, and does not contain the secret.
fn assert_auth_error(e: &BackendError, secret: &str) {
    let msg = format!("{e} / {e:?}");
    assert!(!e.is_not_found(), "{msg}");
    assert!(!is_transient(e), "an auth failure must not be retried: {msg}");
    assert!(!msg.contains(secret), "error leaks the secret: {msg}");
}

#[test]
fn rgw_conformance() {
    let t = rgw();
    conformance("rgw", &|p, ps| s3_backend(&t, p, ps));
}

#[test]
fn rgw_wrong_credentials() {
    let t = rgw();
    let bad = "WrongSecretKey-do-not-print-0123456789";
    let b = s3_wrong_secret(&t, &unique("rgwbad"), bad);
    let e = b.put("config", b"x").unwrap_err();
    assert_auth_error(&e, bad);
    assert_eq!(http_status(&e), Some(403), "{e}");
    assert!(e.to_string().contains("access denied"), "{e}");
    assert!(!format!("{b:?}").contains(bad));
    let e = b.get("config").unwrap_err();
    assert_auth_error(&e, bad);
}

#[test]
fn swift_s3api_conformance() {
    let t = swift_s3();
    conformance("swifts3", &|p, ps| s3_backend(&t, p, ps));
}

#[test]
fn swift_s3api_wrong_credentials() {
    let t = swift_s3();
    let bad = "WrongSecretKey-do-not-print-9876543210";
    let b = s3_wrong_secret(&t, &unique("swifts3bad"), bad);
    let e = b.put("config", b"x").unwrap_err();
    assert_auth_error(&e, bad);
}

#[test]
fn swift_native_conformance_app_credential() {
    conformance("swift", &|p, ps| swift_backend(p, ps));
}

#[test]
fn swift_native_password_auth() {
    let b = swift_backend_with(Arc::new(keystone(false)), &unique("swiftpw"), 1000);
    b.connect().unwrap();
    b.put("config", b"pw").unwrap();
    assert_eq!(b.get("config").unwrap(), b"pw");
    b.delete("config").unwrap();
}

#[test]
fn swift_native_wrong_credentials() {
    let mut cfg = keystone_config(true);
    let bad = "WrongAppCredSecret-do-not-print-42";
    cfg.auth.application_credential_secret = Some(imgarc::secret::Secret::new(bad));
    let ks = imgarc::openstack::keystone::Session::new_deferred(&cfg).unwrap();
    let b = swift_backend_with(Arc::new(ks), &unique("swiftbad"), 1000);
    let e = b.connect().unwrap_err();
    assert_auth_error(&e, bad);
    assert!(e.to_string().contains("authentication failed"), "{e}");
    let e = b.put("config", b"x").unwrap_err();
    assert_auth_error(&e, bad);
    assert!(!format!("{b:?}").contains(bad));
}

/// A token that Swift rejects (expired/revoked) is renewed once on 401.
#[derive(Debug)]
struct StaleFirst {
    inner: imgarc::openstack::keystone::Session,
    calls: AtomicUsize,
}

impl SwiftAuth for StaleFirst {
    fn authenticate(&self, renew: bool) -> anyhow::Result<SwiftSession> {
        let mut s = self.inner.authenticate(renew)?;
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            s.token = imgarc::secret::Secret::new("gAAAAA-expired-token");
        }
        Ok(s)
    }
    fn describe(&self) -> String {
        "stale-first".into()
    }
}

#[test]
fn swift_native_renews_token_on_401() {
    let auth = Arc::new(StaleFirst { inner: keystone(true), calls: AtomicUsize::new(0) });
    let b = swift_backend_with(auth.clone(), &unique("swift401"), 1000);
    b.put("config", b"renewed").unwrap();
    assert_eq!(auth.calls.load(Ordering::SeqCst), 2, "expected one re-authentication");
    assert_eq!(b.get("config").unwrap(), b"renewed");
    assert_eq!(auth.calls.load(Ordering::SeqCst), 2, "token must be cached after renewal");
    b.delete("config").unwrap();

    // several threads hitting 401 with the same stale token renew it once
    let auth = Arc::new(StaleFirst { inner: keystone(true), calls: AtomicUsize::new(0) });
    let b = swift_backend_with(auth.clone(), &unique("swift401par"), 1000);
    std::thread::scope(|s| {
        for t in 0..4 {
            let b = &b;
            s.spawn(move || b.put(&format!("locks/{t}"), b"l").unwrap());
        }
    });
    assert_eq!(auth.calls.load(Ordering::SeqCst), 2, "concurrent 401s must renew once");
    for t in 0..4 {
        b.delete(&format!("locks/{t}")).unwrap();
    }
}

/// A token that Keystone says expires within the renewal margin is renewed
/// before the next request, without waiting for a 401.
#[derive(Debug)]
struct ShortLived {
    inner: imgarc::openstack::keystone::Session,
    calls: AtomicUsize,
}

impl SwiftAuth for ShortLived {
    fn authenticate(&self, renew: bool) -> anyhow::Result<SwiftSession> {
        let mut s = self.inner.authenticate(renew)?;
        assert!(s.expires_at.is_some(), "Keystone's expires_at was not parsed");
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            s.expires_at = Some(std::time::SystemTime::now() + std::time::Duration::from_secs(60));
        }
        Ok(s)
    }
    fn describe(&self) -> String {
        "short-lived".into()
    }
}

#[test]
fn swift_native_renews_expiring_token_ahead() {
    let auth = Arc::new(ShortLived { inner: keystone(true), calls: AtomicUsize::new(0) });
    let b = swift_backend_with(auth.clone(), &unique("swiftexp"), 1000);
    b.connect().unwrap();
    assert_eq!(auth.calls.load(Ordering::SeqCst), 1);
    b.put("config", b"x").unwrap(); // token expires in 60 s < margin: renewed first
    assert_eq!(auth.calls.load(Ordering::SeqCst), 2);
    b.get("config").unwrap();
    b.delete("config").unwrap();
    assert_eq!(auth.calls.load(Ordering::SeqCst), 2, "a fresh token must be reused");
}

/// open_remote from the URL + an environment, the way the CLI opens a
/// repository: the whole stack (S3 or Swift → retry → rate limit).
#[test]
fn open_remote_urls() {
    use imgarc::backend::url::{open_remote, RemoteOptions};
    let t = rgw();
    let (ak, sk) = (t.access.clone(), t.secret.clone());
    let opts = RemoteOptions {
        env: Some(Arc::new(move |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some(ak.clone()),
            "AWS_SECRET_ACCESS_KEY" => Some(sk.clone()),
            _ => None,
        })),
        limit_upload: Some(64 << 20),
        ..Default::default()
    };
    let url = format!("s3:{}/{}/{}", t.endpoint, t.bucket, unique("url"));
    let b = open_remote(&url, &opts).unwrap();
    assert_eq!(b.location(), url);
    b.put("config", b"u").unwrap();
    assert_eq!(b.get("config").unwrap(), b"u");
    b.delete("config").unwrap();

    let vars: Vec<(String, String)> = [
        ("OS_AUTH_URL", "IMGARC_SWIFT_AUTH_URL"),
        ("OS_REGION_NAME", "IMGARC_SWIFT_REGION"),
        ("OS_APPLICATION_CREDENTIAL_ID", "IMGARC_SWIFT_APP_CRED_ID"),
        ("OS_APPLICATION_CREDENTIAL_SECRET", "IMGARC_SWIFT_APP_CRED_SECRET"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), need(v)))
    .collect();
    let env = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let session = imgarc::openstack::keystone::Session::new(&imgarc::openstack::config::CloudConfig::from_env(&env).unwrap()).unwrap();
    let opts = RemoteOptions { swift_auth: Some(Arc::new(session)), ..Default::default() };
    let url = format!("swift:{}/{}", need("IMGARC_SWIFT_CONTAINER"), unique("url"));
    let b = open_remote(&url, &opts).unwrap();
    assert_eq!(b.location(), url);
    b.put("config", b"s").unwrap();
    assert_eq!(b.get("config").unwrap(), b"s");
    b.delete("config").unwrap();
}

/// One HTTP/1.1 request with `path` sent byte for byte: every URL library
/// removes dot segments, which is exactly what a hostile writer avoids.
/// Returns the status code.
fn raw_http(url_base: &str, method: &str, path: &str, token: &str, body: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let host = url_base.strip_prefix("http://").expect("test servers speak plain HTTP").split('/').next().unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nX-Auth-Token: {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let status = String::from_utf8_lossy(&answer).split_whitespace().nth(1).unwrap_or("0").to_string();
    status.parse().unwrap()
}

/// A `locks/` object whose name climbs out of the container, planted with the
/// raw API: a repository's listing skips it (with a warning on stderr), and
/// neither `unlock`'s path nor the bare backend can delete what it points at.
#[test]
fn swift_native_dot_dot_keys_never_leave_the_container() {
    use imgarc::repository::{config::Config, Repository};
    let ks = keystone(true);
    let session = ks.authenticate(false).unwrap();
    let token = session.token.expose().to_string();
    let account = format!("/{}", session.storage_url.strip_prefix("http://").unwrap().split_once('/').unwrap().1);
    let container = need("IMGARC_SWIFT_CONTAINER");
    let prefix = unique("swiftdots");
    let victim = format!("{prefix}-victim");
    /// Removes what the test planted even when an assertion fails (imgarc itself
    /// refuses to name these objects), so a failed run leaves no container behind.
    struct Cleanup<'a>(&'a str, &'a str, Vec<String>);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            for path in &self.2 {
                raw_http(self.0, "DELETE", path, self.1, b"");
            }
        }
    }
    let raw_path = format!("{account}/{container}/{prefix}/locks/%2E%2E/%2E%2E/%2E%2E/{victim}/obj");
    let _cleanup = Cleanup(
        &session.storage_url,
        &token,
        vec![
            raw_path.clone(),
            format!("{account}/{container}/{prefix}/config"),
            format!("{account}/{victim}/obj"),
            format!("{account}/{victim}"),
        ],
    );
    assert!((200..300).contains(&raw_http(&session.storage_url, "PUT", &format!("{account}/{victim}"), &token, b"")));
    assert_eq!(raw_http(&session.storage_url, "PUT", &format!("{account}/{victim}/obj"), &token, b"precious"), 201);

    let repo = Repository::init(Arc::from(swift_backend(&prefix, 1000)), Config::new(64 << 10, 3).unwrap()).unwrap();
    // `{prefix}/locks/../../../{victim}/obj` resolves to object `obj` of container `victim`.
    let planted = format!("locks/../../../{victim}/obj");
    let stale_lock =
        br#"{"hostname":"x","pid":1,"time":"2000-01-01T00:00:00Z","expires":"2000-01-01T00:00:00Z","exclusive":false,"purpose":"archive"}"#;
    assert_eq!(raw_http(&session.storage_url, "PUT", &raw_path, &token, stale_lock), 201);
    let bare = swift_backend(&prefix, 1000);
    assert!(bare.list("locks/").unwrap().iter().any(|o| o.key == planted), "the planted name should be listed by the store");

    // What `imgarc unlock --all` does: list the locks, delete each.
    let locks = repo.list_locks().unwrap();
    assert!(locks.iter().all(|(k, _)| *k != planted), "a key outside the grammar was listed: {locks:?}");
    for (key, _) in &locks {
        repo.delete_lock(key).unwrap();
    }
    assert!(repo.delete_lock(&planted).is_err(), "the repository deleted a key outside the grammar");
    assert!(bare.delete(&planted).is_err(), "the bare backend sent a dot-segment key");
    assert!(bare.get(&planted).is_err());
    assert_eq!(raw_http(&session.storage_url, "HEAD", &format!("{account}/{victim}/obj"), &token, b""), 200, "the victim is gone");
}

/// On RGW: a planted name outside the grammar is skipped by the repository's
/// listing and cannot be requested; dot-segment keys never become requests.
#[test]
fn rgw_keys_outside_the_grammar_are_skipped_and_refused() {
    use imgarc::repository::{config::Config, Repository};
    let t = rgw();
    let prefix = unique("rgwkeys");
    let bare = s3_backend(&t, &prefix, 1000);
    let repo = Repository::init(Arc::from(s3_backend(&t, &prefix, 1000)), Config::new(64 << 10, 3).unwrap()).unwrap();
    let planted = "locks/not a lock, a planted name";
    bare.put(planted, b"{}").unwrap();
    assert!(repo.list_locks().unwrap().is_empty(), "a key outside the grammar was listed");
    assert!(repo.delete_lock(planted).is_err());
    assert!(bare.get(planted).is_ok(), "a refused delete reached the store");
    for key in ["locks/../../victim/obj", "locks/./x", "locks//x"] {
        assert!(bare.put(key, b"x").is_err(), "{key}");
        assert!(bare.delete(key).is_err(), "{key}");
    }
    bare.delete(planted).unwrap();
    bare.delete("config").unwrap();
}

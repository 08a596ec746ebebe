//! The retry decorator against a scripted fake backend (a test double of the
//! trait): what is retried, how often, and with what backoff.

use imgarc::backend::retry::{is_transient, remote_error, RetryBackend, RetryPolicy};
use imgarc::backend::{Backend, BackendError, BackendResult, ObjectInfo};
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Fails with the scripted errors in order, then succeeds.
#[derive(Debug, Default)]
struct Scripted {
    errors: Mutex<VecDeque<BackendError>>,
    calls: AtomicUsize,
}

impl Scripted {
    fn new(errors: Vec<BackendError>) -> Self {
        Scripted { errors: Mutex::new(errors.into()), calls: AtomicUsize::new(0) }
    }
    fn step(&self) -> BackendResult<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.errors.lock().unwrap().pop_front() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Backend for Scripted {
    fn location(&self) -> String {
        "fake:".into()
    }
    fn put(&self, _: &str, _: &[u8]) -> BackendResult<()> {
        self.step()
    }
    fn get(&self, _: &str) -> BackendResult<Vec<u8>> {
        self.step().map(|_| b"ok".to_vec())
    }
    fn get_range(&self, _: &str, _: u64, l: u64) -> BackendResult<Vec<u8>> {
        self.step().map(|_| vec![0; l as usize])
    }
    fn size(&self, _: &str) -> BackendResult<u64> {
        self.step().map(|_| 2)
    }
    fn list(&self, _: &str) -> BackendResult<Vec<ObjectInfo>> {
        self.step().map(|_| vec![])
    }
    fn delete(&self, _: &str) -> BackendResult<()> {
        self.step()
    }
}

fn fast() -> RetryPolicy {
    RetryPolicy { max_retries: 4, base_delay: Duration::from_millis(2), max_delay: Duration::from_millis(10) }
}

fn http(s: u16) -> BackendError {
    remote_error("put", "k", Some(s), format!("status {s}"))
}

fn wrap(errors: Vec<BackendError>) -> (RetryBackend, &'static Scripted) {
    // leak: the fake must outlive the decorator and stay inspectable
    let fake: &'static Scripted = Box::leak(Box::new(Scripted::new(errors)));
    #[derive(Debug)]
    struct Ref(&'static Scripted);
    impl Backend for Ref {
        fn location(&self) -> String {
            self.0.location()
        }
        fn put(&self, k: &str, d: &[u8]) -> BackendResult<()> {
            self.0.put(k, d)
        }
        fn get(&self, k: &str) -> BackendResult<Vec<u8>> {
            self.0.get(k)
        }
        fn get_range(&self, k: &str, o: u64, l: u64) -> BackendResult<Vec<u8>> {
            self.0.get_range(k, o, l)
        }
        fn size(&self, k: &str) -> BackendResult<u64> {
            self.0.size(k)
        }
        fn list(&self, p: &str) -> BackendResult<Vec<ObjectInfo>> {
            self.0.list(p)
        }
        fn delete(&self, k: &str) -> BackendResult<()> {
            self.0.delete(k)
        }
    }
    (RetryBackend::new(Box::new(Ref(fake)), fast()), fake)
}

#[test]
fn retries_5xx_429_and_resets_then_succeeds() {
    let reset = BackendError::Io { op: "get", key: "k".into(), source: io::Error::from(io::ErrorKind::ConnectionReset) };
    let (b, fake) = wrap(vec![http(503), http(500), http(429), reset]);
    assert_eq!(b.get("k").unwrap(), b"ok");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 5);
    let (b, fake) = wrap(vec![remote_error("get", "k", None, "connection refused"), http(502)]);
    assert_eq!(b.size("k").unwrap(), 2);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
}

#[test]
fn gives_up_after_max_retries_with_the_last_error() {
    let (b, fake) = wrap((0..10).map(|_| http(503)).collect());
    let e = b.put("k", b"x").unwrap_err();
    assert_eq!(fake.calls.load(Ordering::SeqCst), 5, "1 attempt + 4 retries");
    assert!(e.to_string().contains("503"), "{e}");
}

#[test]
fn does_not_retry_501_4xx_notfound_or_other() {
    for e in [
        http(501),
        http(400),
        http(401),
        http(403),
        http(412),
        http(416),
        BackendError::NotFound("k".into()),
        BackendError::Other { op: "put", key: "k".into(), message: "bad config".into() },
        BackendError::Io { op: "put", key: "k".into(), source: io::Error::from(io::ErrorKind::PermissionDenied) },
    ] {
        let shown = e.to_string();
        assert!(!is_transient(&e), "{shown} classified transient");
        let (b, fake) = wrap(vec![e]);
        assert!(b.delete("k").is_err(), "{shown}");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1, "{shown} was retried");
    }
}

#[test]
fn not_found_passes_through_unchanged() {
    let (b, _) = wrap(vec![BackendError::NotFound("data/ab/x".into())]);
    assert!(matches!(b.get("data/ab/x"), Err(BackendError::NotFound(k)) if k == "data/ab/x"));
}

#[test]
fn backoff_is_jittered_capped_and_growing() {
    let p = RetryPolicy { max_retries: 10, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(2) };
    for attempt in 1..=10 {
        let cap = Duration::from_millis(100 * (1u64 << (attempt - 1))).min(Duration::from_secs(2));
        for _ in 0..50 {
            let d = p.delay(attempt, None);
            assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d:?} outside [{:?}, {cap:?}]", cap / 2);
        }
    }
    let ds: std::collections::HashSet<_> = (0..20).map(|_| p.delay(3, None)).collect();
    assert!(ds.len() > 1, "no jitter");
    // the whole retry loop respects the policy's delays
    let (b, _) = wrap(vec![http(503), http(503), http(503)]);
    let t = Instant::now();
    b.list("").unwrap();
    assert!(t.elapsed() >= Duration::from_millis(1 + 2 + 4), "{:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

/// Real clients against a closed port: connection failures are transient
/// (so the decorator retries them), and no secret shows in the error.
#[test]
fn real_clients_report_connection_failures_as_transient() {
    use imgarc::backend::s3::{S3Backend, S3Config};
    use imgarc::backend::swift::{SwiftBackend, SwiftConfig};
    use imgarc::openstack::{config::CloudConfig, keystone::Session};
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let secret = "closed-port-secret-do-not-print";
    let env = |k: &str| match k {
        "AWS_ACCESS_KEY_ID" => Some("AK".to_string()),
        "AWS_SECRET_ACCESS_KEY" => Some(secret.to_string()),
        "OS_AUTH_URL" => Some(format!("http://127.0.0.1:{port}/v3")),
        "OS_APPLICATION_CREDENTIAL_ID" => Some("id".to_string()),
        "OS_APPLICATION_CREDENTIAL_SECRET" => Some(secret.to_string()),
        _ => None,
    };
    let s3 = S3Backend::new(S3Config::from_lookup(&format!("http://127.0.0.1:{port}"), "bucket", "p", &env).unwrap()).unwrap();
    let e = s3.put("config", b"x").unwrap_err();
    assert!(is_transient(&e), "{e:?}");
    assert!(!format!("{e} {e:?}").contains(secret));

    // through the decorator: 1 + 2 retries, then the error
    let policy = RetryPolicy { max_retries: 2, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(2) };
    let r = RetryBackend::new(Box::new(s3), policy);
    assert!(is_transient(&r.get("config").unwrap_err()));

    let sw = SwiftBackend::new(
        SwiftConfig::new("c", ""),
        std::sync::Arc::new(Session::new_deferred(&CloudConfig::from_env(&env).unwrap()).unwrap()),
    )
    .unwrap();
    let e = sw.put("config", b"x").unwrap_err();
    assert!(!format!("{e} {e:?}").contains(secret), "{e:?}");
    assert!(e.to_string().contains("Keystone"), "{e}");
    assert!(is_transient(&e), "an unreachable Keystone is transient: {e:?}");
}

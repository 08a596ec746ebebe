//! Shared helpers of the OpenStack integration tests (`tests/openstack_*.rs`).
//! They need the servers started by `ci/openstack.sh` (see docs/openstack.md)
//! and FAIL, with instructions, when its variables are missing.

use imgarc::openstack::config::{CloudConfig, Lookup};
use imgarc::openstack::glance::{GlanceClient, RetryPolicy};
use imgarc::openstack::Secret;
use serde_json::{json, Map, Value};
use sha2::Digest;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A required environment variable, or a panic that says how to get it.
pub fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: the OpenStack integration tests need a real Glance/Keystone. \
             Run `source ci/openstack.sh` (starts them and exports GLANCE_URL, OS_* ...) and then \
             `cargo test --features openstack-tests --test integration openstack_`; see docs/openstack.md"
        ),
    }
}

/// Short retries so failure tests stay fast.
pub fn quick_retry() -> RetryPolicy {
    RetryPolicy { max_retries: 2, base_delay: Duration::from_millis(100), max_delay: Duration::from_millis(300) }
}

/// Client for the noauth Glance.
pub fn noauth() -> GlanceClient {
    GlanceClient::standalone(&env("GLANCE_URL"), None).unwrap().with_retry(quick_retry())
}

/// The admin cloud of `ci/openstack.sh` as an OS_* map (process env).
pub fn os_env() -> HashMap<String, String> {
    for v in ["OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD", "OS_PROJECT_NAME"] {
        env(v);
    }
    std::env::vars().filter(|(k, _)| k.starts_with("OS_")).collect()
}

/// Build a CloudConfig from a map of OS_* variables (no process env mutation).
pub fn config_from(m: HashMap<String, String>) -> imgarc::openstack::Result<CloudConfig> {
    let f = move |k: &str| m.get(k).cloned();
    CloudConfig::resolve_with(None, &Lookup { env: &f, dirs: vec![] })
}

pub fn sha512_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha512::digest(b))
}

pub fn md5_hex(b: &[u8]) -> String {
    use md5::Digest as _;
    hex::encode(md5::Md5::digest(b))
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// Metadata for a raw test image.
pub fn meta(name: &str, extra: Value) -> Map<String, Value> {
    let mut m = json!({"name": name, "disk_format": "raw", "container_format": "bare"});
    if let (Some(o), Some(e)) = (m.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    m.as_object().unwrap().clone()
}

/// Deletes the image when dropped (best effort).
pub struct Cleanup(pub GlanceClient, pub String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.0.delete(&self.1);
    }
}

/// Create + upload + wait active; returns the record and a cleanup guard.
pub fn upload_image(g: &GlanceClient, name: &str, data: &[u8], extra: Value) -> (imgarc::openstack::glance::ImageRecord, Cleanup) {
    let rec = g.create(&meta(name, extra)).expect("create");
    let guard = Cleanup(g.clone(), rec.id.clone());
    g.upload(&rec.id, std::io::Cursor::new(data.to_vec()), Some(data.len() as u64)).expect("upload");
    let rec = g.wait_active(&rec.id, Duration::from_secs(60)).expect("active");
    (rec, guard)
}

pub fn secret(s: &str) -> Secret {
    Secret::new(s)
}

/// How a [`Proxy`] misbehaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ProxyMode {
    /// Cut the first `/file` download after this many response bytes.
    CutFirstDownloadAfter(usize),
    /// Same, and remove `Range` headers from every request (a server without Range support).
    CutAndStripRange(usize),
    /// Answer the first N requests with this status and `Retry-After: <secs>`, then pass through.
    FailFirst { count: usize, status: u16, retry_after: u64 },
}

/// A loopback TCP proxy in front of a Glance, to break a download at a
/// known byte and see what the client does next.
pub struct Proxy {
    pub url: String,
    pub heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream_url: &str, mode: ProxyMode) -> Proxy {
        let up = url::Url::parse(upstream_url).unwrap();
        let upstream = format!("{}:{}", up.host_str().unwrap(), up.port_or_known_default().unwrap());
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let cut_done = Arc::new(AtomicUsize::new(0));
        let (h2, s2) = (heads.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if s2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let (heads, cut_done, upstream) = (h2.clone(), cut_done.clone(), upstream.clone());
                std::thread::spawn(move || proxy_conn(client, &upstream, mode, heads, cut_done));
            }
        });
        Proxy { url, heads, stop }
    }

    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

fn strip_range(s: &str) -> String {
    s.split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("range:")).collect::<Vec<_>>().join("\r\n")
}

fn proxy_conn(mut client: TcpStream, upstream: &str, mode: ProxyMode, heads: Arc<Mutex<Vec<String>>>, cut_done: Arc<AtomicUsize>) {
    if let ProxyMode::FailFirst { count, status, retry_after } = mode {
        if cut_done.fetch_add(1, Ordering::SeqCst) < count {
            let mut buf = [0u8; 8192];
            if let Ok(n) = client.read(&mut buf) {
                heads.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).split("\r\n\r\n").next().unwrap_or("").to_string());
            }
            let _ = client.write_all(
                format!("HTTP/1.1 {status} Busy\r\nRetry-After: {retry_after}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    }
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    let limit = match mode {
        ProxyMode::CutFirstDownloadAfter(n) | ProxyMode::CutAndStripRange(n) => n,
        ProxyMode::FailFirst { .. } => usize::MAX,
    };
    let strip = matches!(mode, ProxyMode::CutAndStripRange(_));
    let cut_this = Arc::new(AtomicBool::new(false));
    let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let ct = cut_this.clone();
    // client -> server: record request heads, maybe strip Range, decide whether to cut
    let up = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match c2.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            let text = String::from_utf8_lossy(chunk).to_string();
            let is_head = text.starts_with("GET ")
                || text.starts_with("PUT ")
                || text.starts_with("POST ")
                || text.starts_with("DELETE ")
                || text.starts_with("PATCH ");
            let out: Vec<u8> = if is_head {
                let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
                heads.lock().unwrap().push(head.clone());
                if head.starts_with("GET ") && head.contains("/file ") && cut_done.fetch_add(1, Ordering::SeqCst) == 0 {
                    ct.store(true, Ordering::SeqCst);
                }
                if strip {
                    strip_range(&text).into_bytes()
                } else {
                    chunk.to_vec()
                }
            } else {
                chunk.to_vec()
            };
            if s2.write_all(&out).is_err() {
                break;
            }
        }
        let _ = s2.shutdown(Shutdown::Write);
    });
    // server -> client, cut after `limit` bytes if this is the chosen download
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0usize;
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut n = n;
        let cutting = cut_this.load(Ordering::SeqCst);
        if cutting && sent + n >= limit {
            n = limit - sent;
        }
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        if cutting {
            sent += n; // bytes of the chosen download only (earlier keep-alive answers not counted)
        }
        if cutting && sent >= limit {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    let _ = up.join();
}

/// Glance on sqlite answers 500 "database is locked" to concurrent writes,
/// so the OpenStack tests run one at a time: an exclusive `flock` on a file
/// in the temp dir serializes them across threads (`cargo test`) and across
/// processes (`cargo nextest`, several test binaries).
/// Holds the lock while alive (released when the file closes).
pub struct Serial {
    _lock: std::fs::File,
}

pub fn serial() -> Serial {
    use std::os::unix::io::AsRawFd;
    let path = std::env::temp_dir().join("imgarc-openstack-tests.lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).expect("open test lock file");
    // SAFETY: flock on a file descriptor we own; released when the file is closed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}: {}", path.display(), std::io::Error::last_os_error());
    Serial { _lock: f }
}

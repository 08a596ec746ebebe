//! Native OpenStack Swift (v1 API) backend.
//!
//! * Auth sits behind [`SwiftAuth`]: the crate's one Keystone session
//!   (`openstack::keystone::Session`, from clouds.yaml / `--repo-cloud` or
//!   the `OS_*` variables) implements it, and so does [`PreAuthenticated`]
//!   (a pre-issued `OS_STORAGE_URL` + `OS_AUTH_TOKEN`, no renewal). This
//!   layer never imports `openstack`; it only knows the trait.
//! * The HTTP client trusts what the auth says ([`SwiftAuth::http_options`]:
//!   the cloud's `cacert` / `verify`), built by `net::http_client`.
//! * A 401 from Swift drops the cached token, re-authenticates once and
//!   repeats the request (Keystone tokens expire).
//! * PUT sends `ETag: md5(body)`, so Swift verifies what it stored.
//! * Listing pages with `marker` until an empty page (a short page is not
//!   taken as the end), `limit` = page size.
//! * Delete of a missing object (404) is success.

use super::retry::remote_error;
use super::{Backend, BackendError, BackendResult, ObjectInfo};
use crate::net::HttpOptions;
use crate::secret::Secret;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

/// A token and the Swift account URL it is valid for.
#[derive(Clone)]
pub struct SwiftSession {
    pub token: Secret,
    pub storage_url: String,
    /// When Keystone says the token expires; it is renewed ahead of that.
    pub expires_at: Option<std::time::SystemTime>,
}

pub use crate::net::TOKEN_RENEW_MARGIN;

impl fmt::Debug for SwiftSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwiftSession").field("storage_url", &self.storage_url).finish_non_exhaustive()
    }
}

/// What gives the backend a token and its storage URL. Called at first use,
/// when the cached token is about to expire, and after a 401 (`renew`: Swift
/// refused the token it was given, so a new one must be issued).
pub trait SwiftAuth: Send + Sync + fmt::Debug {
    fn authenticate(&self, renew: bool) -> anyhow::Result<SwiftSession>;
    /// Where credentials come from, for messages (no secrets).
    fn describe(&self) -> String;
    /// The TLS settings the storage requests use (the cloud's `cacert` / `verify`).
    fn http_options(&self) -> HttpOptions {
        HttpOptions::default()
    }
}

/// An authentication failure with its HTTP status (None: no answer), so the
/// backend can tell a rejected credential (not retried) from an unreachable
/// or overloaded Keystone (retried). Return it from [`SwiftAuth::authenticate`].
#[derive(Debug)]
pub struct AuthFailure {
    pub status: Option<u16>,
    pub message: String,
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AuthFailure {}

/// A fixed token + storage URL (`OS_AUTH_TOKEN` + `OS_STORAGE_URL`); cannot renew.
#[derive(Debug, Clone)]
pub struct PreAuthenticated(pub SwiftSession);

impl SwiftAuth for PreAuthenticated {
    fn describe(&self) -> String {
        format!("pre-issued token for {}", self.0.storage_url)
    }
    fn authenticate(&self, _renew: bool) -> anyhow::Result<SwiftSession> {
        Ok(self.0.clone())
    }
}

/// Container, prefix and tuning.
#[derive(Debug, Clone)]
pub struct SwiftConfig {
    pub container: String,
    /// Object-name prefix without leading/trailing slashes ("" = none).
    pub prefix: String,
    /// Names per listing page (Swift's maximum is usually 10000).
    pub page_size: usize,
    pub timeout: Duration,
    /// Send `ETag: md5(body)` on PUT so Swift verifies the stored bytes
    /// (costs one MD5 pass over each object on the client).
    pub put_etag: bool,
}

impl SwiftConfig {
    pub fn new(container: &str, prefix: &str) -> Self {
        SwiftConfig {
            container: container.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            page_size: 10000,
            timeout: Duration::from_secs(300),
            put_etag: true,
        }
    }
}

/// One Swift container (+ prefix) as a [`Backend`].
pub struct SwiftBackend {
    client: reqwest::blocking::Client,
    auth: std::sync::Arc<dyn SwiftAuth>,
    session: Mutex<Option<SwiftSession>>,
    cfg: SwiftConfig,
    prefix: String,
}

impl fmt::Debug for SwiftBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwiftBackend").field("location", &self.location()).field("auth", &self.auth.describe()).finish_non_exhaustive()
    }
}

/// Percent-encode an object name for a URL path (keep `/`).
fn encode_name(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

enum Req<'a> {
    Put(&'a [u8]),
    Get(Option<(u64, u64)>),
    Head,
    Delete,
    List { prefix: &'a str, marker: &'a str },
}

struct Resp {
    status: u16,
    len: Option<u64>,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl SwiftBackend {
    pub fn new(cfg: SwiftConfig, auth: std::sync::Arc<dyn SwiftAuth>) -> anyhow::Result<Self> {
        let client = crate::net::http_client(&auth.http_options()).map_err(|e| anyhow::anyhow!("swift: {e}"))?;
        let prefix = if cfg.prefix.is_empty() { String::new() } else { format!("{}/", cfg.prefix) };
        Ok(SwiftBackend { client, auth, session: Mutex::new(None), cfg, prefix })
    }

    /// Switch the PUT ETag (MD5) verification on or off.
    pub fn set_put_etag(&mut self, on: bool) {
        self.cfg.put_etag = on;
    }

    /// Authenticate now (instead of at first use); errors name the cause.
    pub fn connect(&self) -> BackendResult<()> {
        self.session(None).map(|_| ())
    }

    /// The cached session, or a new one if there is none, if it is about to
    /// expire, or if `rejected` (a token Swift answered 401 to) is still the
    /// cached one. Threads that hit 401 together renew only once.
    fn session(&self, rejected: Option<&Secret>) -> BackendResult<SwiftSession> {
        let mut g = self.session.lock().unwrap();
        if let Some(s) = g.as_ref() {
            let stale = rejected.is_some_and(|t| *t == s.token);
            let expiring = s.expires_at.is_some_and(|e| e <= std::time::SystemTime::now() + TOKEN_RENEW_MARGIN);
            if !stale && !expiring {
                return Ok(s.clone());
            }
        }
        let s = self.auth.authenticate(rejected.is_some()).map_err(|e| match e.downcast_ref::<AuthFailure>() {
            // an unreachable / overloaded Keystone is transient (the retry decorator
            // retries it); 401/403 are not
            Some(f) => remote_error("authenticate", "", f.status, format!("{e:#}")),
            _ => BackendError::Other { op: "authenticate", key: String::new(), message: format!("{e:#}") },
        })?;
        *g = Some(s.clone());
        Ok(s)
    }

    fn object_url(&self, storage_url: &str, key: &str) -> String {
        format!(
            "{}/{}/{}",
            storage_url.trim_end_matches('/'),
            encode_name(&self.cfg.container),
            encode_name(&format!("{}{}", self.prefix, key))
        )
    }

    fn send_once(&self, s: &SwiftSession, key: &str, req: &Req) -> Result<Resp, reqwest::Error> {
        let c = &self.client;
        let rb = match req {
            Req::Put(data) => {
                let mut rb = c.put(self.object_url(&s.storage_url, key));
                if self.cfg.put_etag {
                    rb = rb.header("ETag", crate::digest::md5_hex(data));
                }
                rb.header("Content-Type", "application/octet-stream")
                    // Swift answers 411 to a PUT without it (reqwest omits it for empty bodies)
                    .header("Content-Length", data.len())
                    .body(data.to_vec())
            }
            Req::Get(None) => c.get(self.object_url(&s.storage_url, key)),
            Req::Get(Some((off, len))) => {
                c.get(self.object_url(&s.storage_url, key)).header("Range", format!("bytes={}-{}", off, off + len - 1))
            }
            Req::Head => c.head(self.object_url(&s.storage_url, key)),
            Req::Delete => c.delete(self.object_url(&s.storage_url, key)),
            Req::List { prefix, marker } => c
                .get(format!("{}/{}", s.storage_url.trim_end_matches('/'), encode_name(&self.cfg.container)))
                .query(&[("format", "json"), ("prefix", prefix), ("marker", marker), ("limit", &self.cfg.page_size.to_string())]),
        };
        let r = rb.header("X-Auth-Token", s.token.expose()).timeout(self.cfg.timeout).send()?;
        let status = r.status().as_u16();
        let len = r.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let retry_after = crate::net::retry::retry_after(r.headers());
        let body = if matches!(req, Req::Head) { Vec::new() } else { r.bytes()?.to_vec() };
        Ok(Resp { status, len, retry_after, body })
    }

    /// Send with the cached session; on 401 renew the token once and resend.
    fn send(&self, op: &'static str, key: &str, req: Req) -> BackendResult<Resp> {
        if !matches!(req, Req::List { .. }) {
            super::check_key_segments(op, key)?;
        }
        let mut renewed = false;
        let mut s = self.session(None)?;
        loop {
            let r = self
                .send_once(&s, key, &req)
                .map_err(|e| remote_error(op, key, None, format!("{}: {}", self.location(), crate::net::describe_reqwest(&e))))?;
            if r.status == 401 && !renewed {
                renewed = true;
                s = self.session(Some(&s.token))?;
                continue;
            }
            return Ok(r);
        }
    }

    fn fail(&self, op: &'static str, key: &str, r: &Resp) -> BackendError {
        let msg = String::from_utf8_lossy(&r.body).chars().take(300).collect::<String>();
        let hint = match r.status {
            401 => format!(" (token rejected after renewal; {})", self.auth.describe()),
            403 => format!(" (access denied; {})", self.auth.describe()),
            _ => String::new(),
        };
        super::retry::remote_error_after(op, key, Some(r.status), r.retry_after, format!("{}{hint}: {}", self.location(), msg.trim()))
    }
}

impl Backend for SwiftBackend {
    fn request_parallelism(&self) -> usize {
        crate::util::fetch_threads()
    }
    fn location(&self) -> String {
        if self.cfg.prefix.is_empty() {
            format!("swift:{}", self.cfg.container)
        } else {
            format!("swift:{}/{}", self.cfg.container, self.cfg.prefix)
        }
    }

    fn put(&self, key: &str, data: &[u8]) -> BackendResult<()> {
        let r = self.send("put", key, Req::Put(data))?;
        match r.status {
            200..=299 => Ok(()),
            422 => Err(BackendError::Other {
                op: "put",
                key: key.into(),
                message: format!("{}: Swift reports an ETag mismatch (body corrupted in transit)", self.location()),
            }),
            _ => Err(self.fail("put", key, &r)),
        }
    }

    fn get(&self, key: &str) -> BackendResult<Vec<u8>> {
        let r = self.send("get", key, Req::Get(None))?;
        match r.status {
            200 => Ok(r.body),
            404 => Err(BackendError::NotFound(key.into())),
            _ => Err(self.fail("get", key, &r)),
        }
    }

    fn get_range(&self, key: &str, offset: u64, length: u64) -> BackendResult<Vec<u8>> {
        let past_end = |got: String| BackendError::Other {
            op: "get_range",
            key: key.into(),
            message: format!("range {offset}+{length} past the end of the object ({got})"),
        };
        if length == 0 {
            let size = self.size(key)?;
            return if offset > size { Err(past_end(format!("{size} bytes"))) } else { Ok(Vec::new()) };
        }
        offset.checked_add(length).ok_or_else(|| past_end("overflow".into()))?;
        let r = self.send("get_range", key, Req::Get(Some((offset, length))))?;
        let data = match r.status {
            206 => r.body,
            // a server that ignores Range sends the whole object
            200 => {
                let end = (offset + length) as usize;
                if r.body.len() < end {
                    return Err(past_end(format!("{} bytes", r.body.len())));
                }
                r.body[offset as usize..end].to_vec()
            }
            404 => return Err(BackendError::NotFound(key.into())),
            416 => return Err(past_end("416".into())),
            _ => return Err(self.fail("get_range", key, &r)),
        };
        if data.len() as u64 != length {
            return Err(past_end(format!("got {} bytes", data.len())));
        }
        Ok(data)
    }

    fn size(&self, key: &str) -> BackendResult<u64> {
        let r = self.send("size", key, Req::Head)?;
        match r.status {
            200..=299 => {
                r.len.ok_or_else(|| BackendError::Other { op: "size", key: key.into(), message: "no Content-Length in HEAD answer".into() })
            }
            404 => Err(BackendError::NotFound(key.into())),
            _ => Err(self.fail("size", key, &r)),
        }
    }

    fn list(&self, prefix: &str) -> BackendResult<Vec<ObjectInfo>> {
        #[derive(serde::Deserialize)]
        struct Entry {
            name: Option<String>,
            bytes: Option<u64>,
        }
        let full = format!("{}{}", self.prefix, prefix);
        let mut out = Vec::new();
        let mut marker = String::new();
        loop {
            let r = self.send("list", prefix, Req::List { prefix: &full, marker: &marker })?;
            let entries: Vec<Entry> = match r.status {
                200 => serde_json::from_slice(&r.body).map_err(|e| BackendError::Other {
                    op: "list",
                    key: prefix.into(),
                    message: format!("{}: invalid listing JSON: {e}", self.location()),
                })?,
                204 => Vec::new(),
                404 => {
                    return Err(BackendError::Other {
                        op: "list",
                        key: prefix.into(),
                        message: format!("{}: container {} does not exist", self.location(), self.cfg.container),
                    })
                }
                _ => return Err(self.fail("list", prefix, &r)),
            };
            let Some(last) = entries.iter().rev().find_map(|e| e.name.clone()) else { break };
            for e in entries {
                if let (Some(n), Some(b)) = (e.name, e.bytes) {
                    if let Some(rel) = n.strip_prefix(&self.prefix) {
                        out.push(ObjectInfo { key: rel.to_string(), size: b });
                    }
                }
            }
            if last <= marker {
                break; // defensive: a server that ignores marker would loop forever
            }
            marker = last;
        }
        Ok(out)
    }

    fn delete(&self, key: &str) -> BackendResult<()> {
        let r = self.send("delete", key, Req::Delete)?;
        match r.status {
            200..=299 | 404 => Ok(()),
            _ => Err(self.fail("delete", key, &r)),
        }
    }
}

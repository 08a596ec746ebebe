//! Native OpenStack Swift (v1 API) backend with a minimal Keystone v3 client.
//!
//! * Auth: Keystone v3 application credential (preferred), password, or
//!   token, from `OS_*` variables ([`KeystoneConfig::from_env`]); the storage
//!   URL comes from the token's catalog (`object-store`, `OS_REGION_NAME`,
//!   `OS_INTERFACE`). A pre-issued `OS_STORAGE_URL` + `OS_AUTH_TOKEN` pair
//!   also works (no renewal possible).
//! * Authentication sits behind [`SwiftAuth`], so the clouds.yaml module can
//!   supply its own implementation later.
//! * A 401 from Swift drops the cached token, re-authenticates once and
//!   repeats the request (Keystone tokens expire).
//! * PUT sends `ETag: md5(body)`, so Swift verifies what it stored.
//! * Listing pages with `marker` until an empty page (a short page is not
//!   taken as the end), `limit` = page size.
//! * Delete of a missing object (404) is success.

use super::retry::remote_error;
use super::s3::Secret;
use super::{Backend, BackendError, BackendResult, ObjectInfo};
use md5::{Digest, Md5};
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

/// Renew a token this long before Keystone's `expires_at`, so a long upload
/// does not start with a token about to expire.
pub const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(300);

impl fmt::Debug for SwiftSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwiftSession").field("storage_url", &self.storage_url).finish_non_exhaustive()
    }
}

/// Something that can produce a (new) Swift session. Called at first use and
/// again after a 401.
pub trait SwiftAuth: Send + Sync + fmt::Debug {
    fn authenticate(&self, client: &reqwest::Client, rt: &tokio::runtime::Runtime) -> anyhow::Result<SwiftSession>;
    /// Where credentials come from, for messages (no secrets).
    fn describe(&self) -> String;
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

/// Keystone v3 credentials.
#[derive(Clone, Debug)]
pub enum KeystoneCredential {
    ApplicationCredential {
        id: Option<String>,
        /// by name: needs the user (name + domain, or id)
        name: Option<String>,
        user: Option<UserRef>,
        secret: Secret,
    },
    Password {
        user: UserRef,
        password: Secret,
        project: ProjectRef,
    },
    Token {
        token: Secret,
        project: ProjectRef,
    },
}

#[derive(Clone, Debug, Default)]
pub struct UserRef {
    pub id: Option<String>,
    pub name: Option<String>,
    pub domain_id: Option<String>,
    pub domain_name: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ProjectRef {
    pub id: Option<String>,
    pub name: Option<String>,
    pub domain_id: Option<String>,
    pub domain_name: Option<String>,
}

/// Keystone v3 endpoint, credentials and catalog selection.
#[derive(Clone, Debug)]
pub struct KeystoneConfig {
    /// e.g. `https://keystone:5000/v3` (a missing `/v3` is added).
    pub auth_url: String,
    pub credential: KeystoneCredential,
    pub region: Option<String>,
    /// public | internal | admin
    pub interface: String,
}

fn domain_json(id: &Option<String>, name: &Option<String>) -> serde_json::Value {
    match (id, name) {
        (Some(i), _) => serde_json::json!({ "id": i }),
        (None, Some(n)) => serde_json::json!({ "name": n }),
        (None, None) => serde_json::json!({ "id": "default" }),
    }
}

fn user_json(u: &UserRef) -> serde_json::Value {
    match (&u.id, &u.name) {
        (Some(i), _) => serde_json::json!({ "id": i }),
        (None, n) => serde_json::json!({ "name": n, "domain": domain_json(&u.domain_id, &u.domain_name) }),
    }
}

fn project_json(p: &ProjectRef) -> serde_json::Value {
    match (&p.id, &p.name) {
        (Some(i), _) => serde_json::json!({ "project": { "id": i } }),
        (None, n) => serde_json::json!({ "project": { "name": n, "domain": domain_json(&p.domain_id, &p.domain_name) } }),
    }
}

impl KeystoneConfig {
    /// From the process environment (`OS_*`), see [`KeystoneConfig::from_lookup`].
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(&|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// `OS_AUTH_URL`; `OS_AUTH_TYPE` (v3applicationcredential | password |
    /// v3password | token | v3token; default: application credential if
    /// `OS_APPLICATION_CREDENTIAL_SECRET` is set, else password if
    /// `OS_PASSWORD` is set, else token); `OS_APPLICATION_CREDENTIAL_ID` /
    /// `_NAME` / `_SECRET`; `OS_USERNAME` / `OS_USER_ID` / `OS_USER_DOMAIN_NAME`
    /// / `OS_USER_DOMAIN_ID` / `OS_PASSWORD`; `OS_PROJECT_NAME` (or
    /// `OS_TENANT_NAME`) / `OS_PROJECT_ID` / `OS_PROJECT_DOMAIN_NAME` /
    /// `OS_PROJECT_DOMAIN_ID`; `OS_TOKEN`; `OS_REGION_NAME`; `OS_INTERFACE`.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let auth_url = lookup("OS_AUTH_URL").ok_or_else(|| anyhow::anyhow!("swift: OS_AUTH_URL is not set (Keystone v3 URL)"))?;
        let user = UserRef {
            id: lookup("OS_USER_ID"),
            name: lookup("OS_USERNAME"),
            domain_id: lookup("OS_USER_DOMAIN_ID"),
            domain_name: lookup("OS_USER_DOMAIN_NAME"),
        };
        let project = ProjectRef {
            id: lookup("OS_PROJECT_ID").or_else(|| lookup("OS_TENANT_ID")),
            name: lookup("OS_PROJECT_NAME").or_else(|| lookup("OS_TENANT_NAME")),
            domain_id: lookup("OS_PROJECT_DOMAIN_ID"),
            domain_name: lookup("OS_PROJECT_DOMAIN_NAME"),
        };
        let kind = lookup("OS_AUTH_TYPE").map(|s| s.to_ascii_lowercase()).unwrap_or_else(|| {
            if lookup("OS_APPLICATION_CREDENTIAL_SECRET").is_some() {
                "v3applicationcredential".into()
            } else if lookup("OS_PASSWORD").is_some() {
                "password".into()
            } else {
                "token".into()
            }
        });
        let need = |k: &str| lookup(k).ok_or_else(|| anyhow::anyhow!("swift: {k} is not set (OS_AUTH_TYPE {kind})"));
        let credential = match kind.as_str() {
            "v3applicationcredential" | "applicationcredential" | "application_credential" => {
                let id = lookup("OS_APPLICATION_CREDENTIAL_ID");
                let name = lookup("OS_APPLICATION_CREDENTIAL_NAME");
                if id.is_none() && (name.is_none() || (user.id.is_none() && user.name.is_none())) {
                    anyhow::bail!("swift: set OS_APPLICATION_CREDENTIAL_ID (or _NAME with OS_USERNAME)");
                }
                KeystoneCredential::ApplicationCredential {
                    id,
                    name,
                    user: Some(user),
                    secret: Secret::new(need("OS_APPLICATION_CREDENTIAL_SECRET")?),
                }
            }
            "password" | "v3password" => {
                if user.id.is_none() && user.name.is_none() {
                    anyhow::bail!("swift: set OS_USERNAME or OS_USER_ID");
                }
                if project.id.is_none() && project.name.is_none() {
                    anyhow::bail!("swift: set OS_PROJECT_NAME or OS_PROJECT_ID");
                }
                KeystoneCredential::Password { user, password: Secret::new(need("OS_PASSWORD")?), project }
            }
            "token" | "v3token" => KeystoneCredential::Token { token: Secret::new(need("OS_TOKEN")?), project },
            other => anyhow::bail!("swift: unsupported OS_AUTH_TYPE {other:?}"),
        };
        let interface = lookup("OS_INTERFACE")
            .or_else(|| lookup("OS_ENDPOINT_TYPE"))
            .unwrap_or_else(|| "public".into())
            .trim_end_matches("URL")
            .to_ascii_lowercase();
        Ok(KeystoneConfig { auth_url, credential, region: lookup("OS_REGION_NAME"), interface })
    }

    fn tokens_url(&self) -> String {
        let base = self.auth_url.trim_end_matches('/');
        if base.ends_with("/v3") {
            format!("{base}/auth/tokens")
        } else {
            format!("{base}/v3/auth/tokens")
        }
    }

    fn request_body(&self) -> serde_json::Value {
        use serde_json::json;
        match &self.credential {
            KeystoneCredential::ApplicationCredential { id, name, user, secret } => {
                let mut ac = json!({ "secret": secret.expose() });
                if let Some(i) = id {
                    ac["id"] = json!(i);
                } else {
                    ac["name"] = json!(name);
                    ac["user"] = user_json(user.as_ref().unwrap());
                }
                json!({ "auth": { "identity": { "methods": ["application_credential"], "application_credential": ac } } })
            }
            KeystoneCredential::Password { user, password, project } => {
                let mut u = user_json(user);
                u["password"] = json!(password.expose());
                json!({ "auth": { "identity": { "methods": ["password"], "password": { "user": u } },
                                  "scope": project_json(project) } })
            }
            KeystoneCredential::Token { token, project } => json!({ "auth": {
                "identity": { "methods": ["token"], "token": { "id": token.expose() } },
                "scope": project_json(project) } }),
        }
    }

    fn method_name(&self) -> &'static str {
        match self.credential {
            KeystoneCredential::ApplicationCredential { .. } => "application credential",
            KeystoneCredential::Password { .. } => "password",
            KeystoneCredential::Token { .. } => "token",
        }
    }
}

impl SwiftAuth for KeystoneConfig {
    fn describe(&self) -> String {
        format!("Keystone {} ({})", self.auth_url, self.method_name())
    }

    fn authenticate(&self, client: &reqwest::Client, rt: &tokio::runtime::Runtime) -> anyhow::Result<SwiftSession> {
        let url = self.tokens_url();
        let body = self.request_body();
        let (status, token, json) = rt
            .block_on(async {
                let r = client.post(&url).json(&body).send().await?;
                let status = r.status().as_u16();
                let token = r.headers().get("x-subject-token").and_then(|v| v.to_str().ok()).map(str::to_string);
                let text = r.text().await?;
                Ok::<_, reqwest::Error>((status, token, text))
            })
            .map_err(|e| AuthFailure { status: None, message: format!("{}: {}", self.describe(), without_url_secrets(&e)) })?;
        if status == 401 || status == 403 {
            return Err(AuthFailure {
                status: Some(status),
                message: format!("{}: authentication failed (HTTP {status}); check the OS_* credentials", self.describe()),
            }
            .into());
        }
        if !(200..300).contains(&status) {
            let snippet: String = json.chars().take(300).collect();
            return Err(AuthFailure { status: Some(status), message: format!("{}: HTTP {status}: {snippet}", self.describe()) }.into());
        }
        let token = token.ok_or_else(|| anyhow::anyhow!("{}: no X-Subject-Token in the answer", self.describe()))?;
        let v: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| anyhow::anyhow!("{}: invalid token JSON: {e}", self.describe()))?;
        let storage_url = catalog_url(&v, "object-store", self.region.as_deref(), &self.interface).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no object-store endpoint (interface {}, region {}) in the catalog",
                self.describe(),
                self.interface,
                self.region.as_deref().unwrap_or("any")
            )
        })?;
        let expires_at = v
            .pointer("/token/expires_at")
            .and_then(|e| e.as_str())
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
            .map(std::time::SystemTime::from);
        Ok(SwiftSession { token: Secret::new(token), storage_url, expires_at })
    }
}

fn without_url_secrets(e: &reqwest::Error) -> String {
    // reqwest errors carry the URL; ours never contain credentials
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The endpoint URL of service `stype` in a Keystone v3 token body.
pub fn catalog_url(token: &serde_json::Value, stype: &str, region: Option<&str>, interface: &str) -> Option<String> {
    let cat = token.get("token")?.get("catalog")?.as_array()?;
    for svc in cat.iter().filter(|s| s.get("type").and_then(|t| t.as_str()) == Some(stype)) {
        for ep in svc.get("endpoints")?.as_array()? {
            let iface = ep.get("interface").and_then(|v| v.as_str()).unwrap_or("");
            let reg = ep.get("region_id").and_then(|v| v.as_str()).or_else(|| ep.get("region").and_then(|v| v.as_str()));
            if iface == interface && region.is_none_or(|r| reg == Some(r)) {
                return ep.get("url").and_then(|v| v.as_str()).map(|s| s.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

/// A fixed token + storage URL (`OS_AUTH_TOKEN` + `OS_STORAGE_URL`); cannot renew.
#[derive(Debug, Clone)]
pub struct PreAuthenticated(pub SwiftSession);

impl SwiftAuth for PreAuthenticated {
    fn describe(&self) -> String {
        format!("pre-issued token for {}", self.0.storage_url)
    }
    fn authenticate(&self, _: &reqwest::Client, _: &tokio::runtime::Runtime) -> anyhow::Result<SwiftSession> {
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
    /// Extra CA bundle (`OS_CACERT`).
    pub cacert: Option<std::path::PathBuf>,
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
            cacert: std::env::var_os("OS_CACERT").map(Into::into),
            put_etag: true,
        }
    }
}

/// One Swift container (+ prefix) as a [`Backend`].
pub struct SwiftBackend {
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
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
    body: Vec<u8>,
}

impl SwiftBackend {
    pub fn new(cfg: SwiftConfig, auth: std::sync::Arc<dyn SwiftAuth>) -> anyhow::Result<Self> {
        let mut b = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(20))
            .pool_idle_timeout(Duration::from_secs(15))
            // Every request carries X-Auth-Token, which reqwest does not strip on a
            // redirect to another host; neither Keystone nor Swift redirects, so a
            // 3xx is an answer (an error), never followed.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(p) = &cfg.cacert {
            let pem = std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read OS_CACERT {}: {e}", p.display()))?;
            for c in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| anyhow::anyhow!("invalid OS_CACERT {}: {e}", p.display()))? {
                b = b.add_root_certificate(c);
            }
        }
        let client = b.build().map_err(|e| anyhow::anyhow!("HTTP client: {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| anyhow::anyhow!("tokio runtime: {e}"))?;
        let prefix = if cfg.prefix.is_empty() { String::new() } else { format!("{}/", cfg.prefix) };
        Ok(SwiftBackend { client, rt, auth, session: Mutex::new(None), cfg, prefix })
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
        let s = self.auth.authenticate(&self.client, &self.rt).map_err(|e| match e.downcast_ref::<AuthFailure>() {
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
                    rb = rb.header("ETag", hex::encode(Md5::digest(data)));
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
        let rb = rb.header("X-Auth-Token", s.token.expose());
        let is_head = matches!(req, Req::Head);
        self.rt.block_on(async move {
            let r = rb.send().await?;
            let status = r.status().as_u16();
            let len = r.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
            let body = if is_head { Vec::new() } else { r.bytes().await?.to_vec() };
            Ok(Resp { status, len, body })
        })
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
                .map_err(|e| remote_error(op, key, None, format!("{}: {}", self.location(), without_url_secrets(&e.without_url()))))?;
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
        remote_error(op, key, Some(r.status), format!("{}{hint}: {}", self.location(), msg.trim()))
    }
}

impl Backend for SwiftBackend {
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

//! S3 backend (AWS S3, Ceph RGW, Swift s3api, MinIO, ...) over the
//! `object_store` crate.
//!
//! * The backend owns a current-thread tokio runtime and `block_on`s each
//!   request inside the synchronous trait methods; it may be called from
//!   many threads at once.
//! * Path-style requests for every non-AWS endpoint; virtual-hosted style for
//!   `*.amazonaws.com`.
//! * `object_store`'s own retries are switched off: the [`super::retry`]
//!   decorator does retries for every backend alike (and does not retry 501).
//! * No conditional requests are used (RGW and Swift s3api break `If-Match`
//!   in different ways); objects are written with a single PUT, which S3
//!   makes visible atomically.
//! * Listing uses ListObjectsV2 with an explicit page size and string
//!   (not path-segment) prefixes, following continuation tokens.
//! * Object Lock (retention on writes, versions, delete by version id) goes
//!   through [`super::s3_lock`]'s signed requests, which object_store cannot
//!   make; once [`Backend::set_object_lock`] is called, `put` of every key
//!   [`ObjectLock::retains`] carries a retain-until date and Content-MD5.

use super::retry::remote_error;
use super::s3_lock::LockClient;
use super::{Backend, BackendError, BackendResult, DeletePermission, ObjectInfo, ObjectLock, ObjectVersion, Retention};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStoreExt, PutPayload, RetryConfig};
use std::fmt;
use std::time::Duration;

/// Credentials print as `***` (one secret type for the whole crate).
pub use crate::secret::Secret;

/// Everything needed to talk to one bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// `https://host[:port]` (no path). For AWS, `https://s3.amazonaws.com`
    /// or `https://s3.REGION.amazonaws.com`.
    pub endpoint: String,
    pub bucket: String,
    /// Key prefix inside the bucket, without leading/trailing slashes ("" = none).
    pub prefix: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    /// Path-style (`host/bucket/key`) rather than virtual-hosted style.
    pub path_style: bool,
    /// PEM bundle of extra trusted CAs (`AWS_CA_BUNDLE`).
    pub ca_bundle: Option<std::path::PathBuf>,
    /// Keys per ListObjectsV2 page (1..=1000).
    pub page_size: usize,
    /// Per-request timeout.
    pub timeout: Duration,
}

fn is_aws_host(host: &str) -> bool {
    host == "amazonaws.com" || host.ends_with(".amazonaws.com")
}

impl S3Config {
    /// Config for `endpoint`/`bucket`/`prefix` with credentials from the
    /// process environment (see [`S3Config::from_lookup`]).
    pub fn from_env(endpoint: &str, bucket: &str, prefix: &str) -> anyhow::Result<Self> {
        Self::from_lookup(endpoint, bucket, prefix, &|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Credentials and options from `lookup` (an environment):
    /// `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`), or
    /// else the profile `AWS_PROFILE` (default `default`) in
    /// `AWS_SHARED_CREDENTIALS_FILE` (default `~/.aws/credentials`); region from
    /// `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile in `~/.aws/config`, the
    /// AWS host name, else `us-east-1`; `AWS_CA_BUNDLE`.
    pub fn from_lookup(endpoint: &str, bucket: &str, prefix: &str, lookup: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let url = url::Url::parse(endpoint).map_err(|e| anyhow::anyhow!("invalid S3 endpoint {endpoint:?}: {e}"))?;
        let host = url.host_str().unwrap_or("").to_string();
        if !matches!(url.scheme(), "http" | "https") || host.is_empty() {
            anyhow::bail!("invalid S3 endpoint {endpoint:?}: expected http(s)://HOST[:PORT]");
        }
        if url.scheme() == "http" && !crate::util::is_loopback_url(&url) {
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            crate::util::warn_once(&format!(
                "the S3 repository at http://{host}{port} is reached over plain http: image data and request signatures cross the network unencrypted"
            ));
        }
        let aws = is_aws_host(&host);
        let profile_name = lookup("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let home = lookup("HOME").map(std::path::PathBuf::from);
        let cred_file = lookup("AWS_SHARED_CREDENTIALS_FILE").map(Into::into).or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
        let config_file = lookup("AWS_CONFIG_FILE").map(Into::into).or_else(|| home.as_ref().map(|h| h.join(".aws/config")));

        let (access_key_id, secret, token) = match (lookup("AWS_ACCESS_KEY_ID"), lookup("AWS_SECRET_ACCESS_KEY")) {
            (Some(a), Some(s)) => (a, s, lookup("AWS_SESSION_TOKEN")),
            _ => {
                let sect = cred_file.as_deref().and_then(|p| ini_section(p, &profile_name)).unwrap_or_default();
                let get = |k: &str| sect.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                match (get("aws_access_key_id"), get("aws_secret_access_key")) {
                    (Some(a), Some(s)) => (a, s, get("aws_session_token")),
                    _ => anyhow::bail!(
                        "no S3 credentials for {endpoint}: set AWS_ACCESS_KEY_ID and \
                             AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a profile in ~/.aws/credentials"
                    ),
                }
            }
        };
        let region_from_host = if aws {
            // s3.REGION.amazonaws.com / s3-REGION.amazonaws.com
            host.strip_suffix(".amazonaws.com")
                .and_then(|h| h.strip_prefix("s3.").or_else(|| h.strip_prefix("s3-")))
                .filter(|r| !r.is_empty() && !r.contains('.'))
                .map(str::to_string)
        } else {
            None
        };
        let region = lookup("AWS_REGION")
            .or_else(|| lookup("AWS_DEFAULT_REGION"))
            .or(region_from_host)
            .or_else(|| {
                let sect_name = if profile_name == "default" { "default".to_string() } else { format!("profile {profile_name}") };
                config_file
                    .as_deref()
                    .and_then(|p| ini_section(p, &sect_name))
                    .and_then(|s| s.into_iter().find(|(k, _)| k == "region").map(|(_, v)| v))
            })
            .unwrap_or_else(|| "us-east-1".into());
        let mut ep = format!("{}://{}", url.scheme(), host);
        if let Some(p) = url.port() {
            ep.push_str(&format!(":{p}"));
        }
        Ok(S3Config {
            endpoint: ep,
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            region,
            access_key_id,
            secret_access_key: Secret::new(secret),
            session_token: token.map(Secret::new),
            path_style: !aws,
            ca_bundle: lookup("AWS_CA_BUNDLE").map(Into::into),
            page_size: 1000,
            timeout: Duration::from_secs(300),
        })
    }
}

/// `key = value` pairs of section `[name]` of an INI file (AWS config format).
fn ini_section(path: &std::path::Path, name: &str) -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut in_sect = false;
    let mut out = Vec::new();
    let mut found = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') && l.ends_with(']') {
            in_sect = l[1..l.len() - 1].trim() == name;
            found |= in_sect;
        } else if in_sect {
            if let Some((k, v)) = l.split_once('=') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    found.then_some(out)
}

/// One S3 bucket (+ prefix) as a [`Backend`].
pub struct S3Backend {
    store: AmazonS3,
    rt: tokio::runtime::Runtime,
    prefix: String,
    page_size: usize,
    location: String,
    access_key_id: String,
    /// What the signed Object Lock requests need; their client is built on first use.
    cfg: S3Config,
    lock_client: std::sync::OnceLock<LockClient>,
    /// Set from the repository config (`set_object_lock`).
    object_lock: std::sync::RwLock<Option<ObjectLock>>,
}

impl fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Backend").field("location", &self.location).finish_non_exhaustive()
    }
}

impl S3Backend {
    pub fn new(cfg: S3Config) -> anyhow::Result<Self> {
        let mut opts = ClientOptions::new()
            .with_allow_http(true)
            .with_timeout(cfg.timeout)
            .with_connect_timeout(Duration::from_secs(20))
            // below the idle timeouts of common servers, so a pooled connection is
            // not reused just as the server closes it ("connection closed before
            // message completed", seen with Swift s3api)
            .with_pool_idle_timeout(Duration::from_secs(15));
        if let Some(p) = &cfg.ca_bundle {
            let pem = std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read AWS_CA_BUNDLE {}: {e}", p.display()))?;
            for c in object_store::Certificate::from_pem_bundle(&pem)
                .map_err(|e| anyhow::anyhow!("invalid AWS_CA_BUNDLE {}: {e}", p.display()))?
            {
                opts = opts.with_root_certificate(c);
            }
        }
        let aws = url::Url::parse(&cfg.endpoint).ok().and_then(|u| u.host_str().map(is_aws_host)).unwrap_or(false);
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(&cfg.access_key_id)
            .with_secret_access_key(cfg.secret_access_key.expose())
            .with_virtual_hosted_style_request(!cfg.path_style)
            .with_allow_http(true)
            .with_client_options(opts)
            .with_retry(RetryConfig { max_retries: 0, ..Default::default() })
            // delete(key) is one key: a plain DELETE (every S3 server has it; the
            // bulk POST ?delete costs ~1 s per call on Swift s3api here)
            .with_disable_bulk_delete(true);
        if !aws || cfg.path_style {
            // AWS virtual-hosted: let object_store derive https://BUCKET.s3.REGION.amazonaws.com
            b = b.with_endpoint(&cfg.endpoint);
        }
        if let Some(t) = &cfg.session_token {
            b = b.with_token(t.expose());
        }
        let store = b.build().map_err(|e| anyhow::anyhow!("S3 client for {}: {e}", cfg.endpoint))?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| anyhow::anyhow!("tokio runtime: {e}"))?;
        let location = if cfg.prefix.is_empty() {
            format!("s3:{}/{}", cfg.endpoint, cfg.bucket)
        } else {
            format!("s3:{}/{}/{}", cfg.endpoint, cfg.bucket, cfg.prefix)
        };
        Ok(S3Backend {
            store,
            rt,
            prefix: if cfg.prefix.is_empty() { String::new() } else { format!("{}/", cfg.prefix) },
            page_size: cfg.page_size.clamp(1, 1000),
            location,
            access_key_id: cfg.access_key_id.clone(),
            cfg,
            lock_client: std::sync::OnceLock::new(),
            object_lock: std::sync::RwLock::new(None),
        })
    }

    fn lock_client(&self, op: &'static str) -> BackendResult<&LockClient> {
        if let Some(c) = self.lock_client.get() {
            return Ok(c);
        }
        let c = LockClient::new(&self.cfg, self.location.clone()).map_err(|e| BackendError::Other {
            op,
            key: self.location.clone(),
            message: format!("{e:#}"),
        })?;
        Ok(self.lock_client.get_or_init(|| c))
    }

    /// Creates the bucket (tests and first-time setup): with `object_lock`, Object Lock
    /// is enabled on it (and versioning with it), which S3 allows only at creation.
    pub fn create_bucket(&self, object_lock: bool) -> BackendResult<()> {
        self.lock_client("create_bucket")?.create_bucket(object_lock)
    }

    fn path(&self, op: &'static str, key: &str) -> BackendResult<Path> {
        super::check_key_segments(op, key)?;
        Ok(Path::from(format!("{}{}", self.prefix, key)))
    }

    fn map_err(&self, op: &'static str, key: &str, e: object_store::Error) -> BackendError {
        use object_store::Error as E;
        match &e {
            E::NotFound { .. } => return BackendError::NotFound(key.to_string()),
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                let status = if matches!(e, E::Unauthenticated { .. }) { 401 } else { 403 };
                return remote_error(
                    op,
                    key,
                    Some(status),
                    format!(
                        "access denied by {} for access key {} (check AWS_ACCESS_KEY_ID / \
                         AWS_SECRET_ACCESS_KEY and the bucket policy): {}",
                        self.location,
                        self.access_key_id,
                        first_line(&e)
                    ),
                );
            }
            _ => {}
        }
        let (status, network) = classify(&e);
        if status.is_none() && !network {
            // not an HTTP or network failure: configuration / decoding problem
            return BackendError::Other { op, key: key.to_string(), message: chain(&e) };
        }
        remote_error(op, key, status, format!("{}: {}", self.location, chain(&e)))
    }
}

fn first_line(e: &dyn std::error::Error) -> String {
    let s = chain(e);
    s.lines().next().unwrap_or("").chars().take(400).collect()
}

/// Display of an error and its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// (HTTP status, is-a-network-failure) of an object_store error.
///
/// object_store 0.14 keeps its `RetryError` type private; the status code is
/// only reachable through its message "... status code: 503 Service Unavailable"
/// (or "error response" for a 200 with an `<Error>` body). Network failures
/// are `HttpError`s of kind Connect/Request/Timeout/Interrupted.
fn classify(e: &object_store::Error) -> (Option<u16>, bool) {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut network = false;
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<HttpError>() {
            network |=
                matches!(h.kind(), HttpErrorKind::Connect | HttpErrorKind::Request | HttpErrorKind::Timeout | HttpErrorKind::Interrupted);
        }
        if c.downcast_ref::<std::io::Error>().is_some() {
            network = true;
        }
        let msg = c.to_string();
        for marker in ["status code: ", "Status code: "] {
            if let Some(i) = msg.find(marker) {
                let digits: String = msg[i + marker.len()..].chars().take_while(|c| c.is_ascii_digit()).collect();
                if let Ok(s) = digits.parse::<u16>() {
                    return (Some(s), network);
                }
            }
        }
        cur = c.source();
    }
    (None, network)
}

impl Backend for S3Backend {
    fn request_parallelism(&self) -> usize {
        crate::util::fetch_threads()
    }
    fn location(&self) -> String {
        self.location.clone()
    }

    fn put(&self, key: &str, data: &[u8]) -> BackendResult<()> {
        let lock = *self.object_lock.read().unwrap_or_else(|e| e.into_inner());
        if let Some(lock) = lock.filter(|_| ObjectLock::retains(key)) {
            super::check_key_segments("put", key)?;
            return self.lock_client("put")?.put_retained(key, data, lock.from_now());
        }
        let path = self.path("put", key)?;
        let payload = PutPayload::from(bytes::Bytes::copy_from_slice(data));
        self.rt.block_on(self.store.put(&path, payload)).map(|_| ()).map_err(|e| self.map_err("put", key, e))
    }

    fn get(&self, key: &str) -> BackendResult<Vec<u8>> {
        let path = self.path("get", key)?;
        self.rt
            .block_on(async {
                let r = self.store.get(&path).await?;
                r.bytes().await
            })
            .map(|b| b.to_vec())
            .map_err(|e| self.map_err("get", key, e))
    }

    fn get_range(&self, key: &str, offset: u64, length: u64) -> BackendResult<Vec<u8>> {
        if length == 0 {
            let size = self.size(key)?;
            if offset > size {
                return Err(BackendError::Other {
                    op: "get_range",
                    key: key.into(),
                    message: format!("range {offset}+0 past the end ({size} bytes)"),
                });
            }
            return Ok(Vec::new());
        }
        let end = offset.checked_add(length).ok_or_else(|| BackendError::Other {
            op: "get_range",
            key: key.into(),
            message: "range overflows".into(),
        })?;
        let path = self.path("get_range", key)?;
        let b = self.rt.block_on(self.store.get_range(&path, offset..end)).map_err(|e| match self.map_err("get_range", key, e) {
            e @ BackendError::Io { .. } if super::retry::http_status(&e) == Some(416) => BackendError::Other {
                op: "get_range",
                key: key.into(),
                message: format!("range {offset}+{length} past the end of the object"),
            },
            e => e,
        })?;
        if b.len() as u64 != length {
            return Err(BackendError::Other {
                op: "get_range",
                key: key.into(),
                message: format!("range {offset}+{length} past the end (got {} bytes)", b.len()),
            });
        }
        Ok(b.to_vec())
    }

    fn size(&self, key: &str) -> BackendResult<u64> {
        self.rt.block_on(self.store.head(&self.path("size", key)?)).map(|m| m.size).map_err(|e| self.map_err("size", key, e))
    }

    fn list(&self, prefix: &str) -> BackendResult<Vec<ObjectInfo>> {
        let full = format!("{}{}", self.prefix, prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let opts = PaginatedListOptions { max_keys: Some(self.page_size), page_token: token.take(), ..Default::default() };
            let page = self.rt.block_on(self.store.list_paginated(Some(&full), opts)).map_err(|e| self.map_err("list", prefix, e))?;
            for m in page.result.objects {
                let k = m.location.as_ref();
                if let Some(rel) = k.strip_prefix(&self.prefix) {
                    if rel.starts_with(prefix) {
                        out.push(ObjectInfo { key: rel.to_string(), size: m.size });
                    }
                }
            }
            match page.page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    fn delete(&self, key: &str) -> BackendResult<()> {
        match self.rt.block_on(self.store.delete(&self.path("delete", key)?)) {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err("delete", key, e)),
        }
    }

    /// A DELETE of a key that does not exist: 204 when allowed; a policy that denies
    /// `s3:DeleteObject` answers 403 AccessDenied before looking for the object.
    fn can_delete(&self) -> BackendResult<DeletePermission> {
        let key = super::DELETE_PROBE_KEY;
        match self.rt.block_on(self.store.delete(&self.path("delete", key)?)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(DeletePermission::Allowed),
            Err(object_store::Error::PermissionDenied { .. }) => {
                Ok(DeletePermission::Denied(format!("s3:DeleteObject is denied to access key {} at {}", self.access_key_id, self.location)))
            }
            Err(e) => Err(self.map_err("delete", key, e)),
        }
    }

    fn object_lock_enabled(&self) -> BackendResult<()> {
        self.lock_client("object_lock_enabled")?.object_lock_enabled()
    }

    fn set_object_lock(&self, lock: Option<ObjectLock>) -> BackendResult<()> {
        *self.object_lock.write().unwrap_or_else(|e| e.into_inner()) = lock;
        Ok(())
    }

    fn retention(&self, key: &str, version: Option<&str>) -> BackendResult<Option<Retention>> {
        super::check_key_segments("retention", key)?;
        self.lock_client("retention")?.retention(key, version)
    }

    fn extend_retention(&self, key: &str, version: Option<&str>, r: Retention) -> BackendResult<()> {
        super::check_key_segments("extend_retention", key)?;
        self.lock_client("extend_retention")?.put_retention(key, version, r)
    }

    fn list_versions(&self, prefix: &str) -> BackendResult<Vec<ObjectVersion>> {
        self.lock_client("list_versions")?.list_versions(prefix, self.page_size)
    }

    fn delete_version(&self, key: &str, version: &str) -> BackendResult<()> {
        super::check_key_segments("delete_version", key)?;
        self.lock_client("delete_version")?.delete_version(key, version)
    }
}

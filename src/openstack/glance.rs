//! Glance v2 image API client: lookup, list, streaming download with Range
//! resume and retries, create / upload / stage + import, wait, delete, and
//! the metadata rules for restoring an archived image into another cloud.

use super::keystone::{http_client, HttpOptions, Session};
use super::{describe_reqwest, short_body, Error, Result, Secret};
use reqwest::blocking::{Body, Client, RequestBuilder, Response};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use std::io::{self, Read};
use std::time::{Duration, Instant};

/// The crate's one retry policy; a Glance client starts with
/// [`RetryPolicy::openstack_api`].
pub use crate::net::retry::RetryPolicy;
use crate::net::retry::{is_transient_status, retry_after};

#[derive(Clone)]
enum Auth {
    Session(Session),
    Static(Option<Secret>),
}

/// A Glance v2 client. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct GlanceClient {
    http: Client,
    /// Endpoint root without a trailing `/` or `/v2`.
    base: String,
    auth: Auth,
    retry: RetryPolicy,
}

impl std::fmt::Debug for GlanceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlanceClient").field("endpoint", &self.base).finish()
    }
}

/// An image record (`GET /v2/images/{id}`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ImageRecord {
    pub id: String,
    pub name: Option<String>,
    pub status: String,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub size: Option<u64>,
    pub virtual_size: Option<u64>,
    /// md5 hex.
    pub checksum: Option<String>,
    /// Normally "sha512".
    pub os_hash_algo: Option<String>,
    pub os_hash_value: Option<String>,
    pub owner: Option<String>,
    pub visibility: Option<String>,
    pub protected: bool,
    pub min_disk: u64,
    pub min_ram: u64,
    pub tags: Vec<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    /// Every other field of the record (hw_*, os_*, custom properties, and
    /// Glance's own extras such as `self`, `file`, `schema`, `stores`, `os_hidden`).
    pub properties: Map<String, Value>,
    /// The whole record as Glance returned it.
    pub raw: Value,
}

const TYPED_FIELDS: &[&str] = &[
    "id",
    "name",
    "status",
    "disk_format",
    "container_format",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "owner",
    "visibility",
    "protected",
    "min_disk",
    "min_ram",
    "tags",
    "created_at",
    "updated_at",
];

impl ImageRecord {
    /// Parse a Glance image JSON object.
    pub fn from_json(raw: Value) -> Result<ImageRecord> {
        let obj = raw.as_object().ok_or_else(|| Error::Config("image record is not a JSON object".into()))?;
        let s = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let u = |k: &str| obj.get(k).and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())));
        let id = s("id").ok_or_else(|| Error::Config("image record has no id".into()))?;
        let properties = obj.iter().filter(|(k, _)| !TYPED_FIELDS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
        Ok(ImageRecord {
            id,
            name: s("name"),
            status: s("status").unwrap_or_default(),
            disk_format: s("disk_format"),
            container_format: s("container_format"),
            size: u("size"),
            virtual_size: u("virtual_size"),
            checksum: s("checksum"),
            os_hash_algo: s("os_hash_algo"),
            os_hash_value: s("os_hash_value"),
            owner: s("owner"),
            visibility: s("visibility"),
            protected: obj.get("protected").and_then(|v| v.as_bool()).unwrap_or(false),
            min_disk: u("min_disk").unwrap_or(0),
            min_ram: u("min_ram").unwrap_or(0),
            tags: obj
                .get("tags")
                .and_then(|t| t.as_array())
                .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            created_at: s("created_at"),
            updated_at: s("updated_at"),
            properties,
            raw,
        })
    }

    /// Why this image cannot be archived, if it cannot (`None` = active with data).
    /// What the image data must hash to: `checksum` (md5),
    /// `os_hash_algo`/`os_hash_value` (an algorithm outside
    /// [`crate::digest::Algo`] is skipped) and `size`, for
    /// [`crate::digest::HashingReader::verifying`].
    pub fn expected(&self) -> crate::digest::Expected {
        use crate::digest::Algo;
        let mut digests = Vec::new();
        if let Some(c) = self.checksum.as_deref().filter(|c| !c.is_empty()) {
            digests.push((Algo::Md5, c.to_ascii_lowercase()));
        }
        if let (Some(a), Some(v)) = (self.os_hash_algo.as_deref().and_then(Algo::parse), self.os_hash_value.as_deref()) {
            if !digests.iter().any(|(x, _)| *x == a) {
                digests.push((a, v.to_ascii_lowercase()));
            }
        }
        crate::digest::Expected {
            digests,
            size: self.size,
            what: format!("download of image {}", self.id),
            against: "the image record".into(),
        }
    }

    pub fn not_downloadable_reason(&self) -> Option<String> {
        if self.status != "active" {
            return Some(format!("status is {:?}, not \"active\"", self.status));
        }
        if self.size == Some(0) {
            return Some("it has no data (size 0)".into());
        }
        None
    }
}

/// How [`GlanceClient::upload_with`] sends the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMethod {
    /// `PUT /v2/images/{id}/file`.
    Put,
    /// `PUT /v2/images/{id}/stage` then `POST /v2/images/{id}/import` (glance-direct).
    GlanceDirect,
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36 && b.iter().enumerate().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

/// Upload requests are bounded by the per-read socket timeouts, not by a
/// total deadline (reqwest's blocking timeout covers the body send).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
const API_TIMEOUT: Duration = Duration::from_secs(120);

impl GlanceClient {
    /// Client for the image endpoint of an authenticated session.
    pub fn new(session: &Session) -> Result<GlanceClient> {
        let url = session.image_endpoint()?;
        Ok(GlanceClient {
            http: session.http().clone(),
            base: normalize_base(&url)?,
            auth: Auth::Session(session.clone()),
            retry: RetryPolicy::openstack_api(),
        })
    }

    /// Client for an explicit Glance URL (`--glance-url`), with an optional
    /// fixed token (sent as `X-Auth-Token`); for noauth Glance pass `None`.
    pub fn standalone(url: &str, token: Option<Secret>) -> Result<GlanceClient> {
        Self::standalone_with(url, token, &HttpOptions::default())
    }

    /// [`GlanceClient::standalone`] with TLS options.
    pub fn standalone_with(url: &str, token: Option<Secret>, opts: &HttpOptions) -> Result<GlanceClient> {
        Ok(GlanceClient {
            http: http_client(opts)?,
            base: normalize_base(url)?,
            auth: Auth::Static(token),
            retry: RetryPolicy::openstack_api(),
        })
    }

    /// Replace the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The Keystone session behind this client (`None` for `--glance-url`).
    pub fn session(&self) -> Option<&Session> {
        match &self.auth {
            Auth::Session(s) => Some(s),
            Auth::Static(_) => None,
        }
    }

    /// Endpoint root (no `/v2`).
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// `{base}/v2/<segments...>` with each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> String {
        let mut u = url::Url::parse(&self.base).expect("validated base");
        u.path_segments_mut().expect("http base").pop_if_empty().push("v2").extend(segments);
        u.to_string()
    }

    fn token(&self) -> Result<(Option<Secret>, u64)> {
        match &self.auth {
            Auth::Static(t) => Ok((t.clone(), 0)),
            Auth::Session(s) => Ok(match s.token()? {
                Some((t, g)) => (Some(t), g),
                None => (None, 0),
            }),
        }
    }

    fn scrub(&self, mut msg: String) -> String {
        let mut secrets: Vec<Secret> = Vec::new();
        match &self.auth {
            Auth::Static(Some(t)) => secrets.push(t.clone()),
            Auth::Session(s) => {
                secrets.extend(s.config().secrets());
                if let Ok(Some((t, _))) = s.token() {
                    secrets.push(t);
                }
            }
            _ => {}
        }
        for s in secrets.iter().filter(|s| s.expose().len() >= 4) {
            msg = msg.replace(s.expose(), "***");
        }
        msg
    }

    fn http_error(&self, method: &Method, url: &str, resp: Response) -> Error {
        let status = resp.status().as_u16();
        let body = resp.text().unwrap_or_default();
        let mut message = self.scrub(short_body(&body));
        if message.is_empty() {
            message = StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("").into();
        }
        if status == 404 {
            return Error::NotFound(format!("{method} {url}: {message}"));
        }
        Error::Http { method: method.to_string(), url: url.to_string(), status, message }
    }

    /// Send a request built by `build` (called again for each attempt), with
    /// auth, one re-authentication after a 401, and retries of transient
    /// failures when `idempotent`. Returns the response if its status is a
    /// success (2xx) or in `accept`; else an error.
    fn send(
        &self,
        method: Method,
        url: &str,
        idempotent: bool,
        accept: &[u16],
        build: &dyn Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response> {
        let mut attempt = 0u32;
        let mut renewed = false;
        loop {
            attempt += 1;
            let (token, generation) = self.token()?;
            let mut rb = self.http.request(method.clone(), url).timeout(API_TIMEOUT);
            if let Some(t) = &token {
                rb = rb.header("X-Auth-Token", t.expose());
            }
            let rb = build(rb);
            let (why, ra) = match rb.send() {
                Ok(resp) => {
                    let st = resp.status();
                    if st.is_success() || accept.contains(&st.as_u16()) {
                        return Ok(resp);
                    }
                    if st == StatusCode::UNAUTHORIZED && !renewed {
                        if let Auth::Session(s) = &self.auth {
                            renewed = true;
                            tracing::info!("glance: {method} {url}: HTTP 401; renewing the token and retrying once");
                            s.renew_after_401(generation)?;
                            attempt -= 1;
                            continue;
                        }
                    }
                    if !(idempotent && is_transient_status(Some(st.as_u16()))) || attempt > self.retry.max_retries {
                        return Err(self.http_error(&method, url, resp));
                    }
                    (format!("HTTP {}", st.as_u16()), retry_after(resp.headers()))
                }
                Err(e) => {
                    // a refused connection never reached the server: safe to retry any method
                    let safe = idempotent || e.is_connect();
                    if !safe || attempt > self.retry.max_retries || !(e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()) {
                        return Err(Error::Transport {
                            method: method.to_string(),
                            url: url.to_string(),
                            message: self.scrub(describe_reqwest(&e)),
                        });
                    }
                    (self.scrub(describe_reqwest(&e)), None)
                }
            };
            let d = self.retry.delay(attempt, ra);
            tracing::info!("glance: {method} {url}: {why}; retry {attempt}/{} in {:.1}s", self.retry.max_retries, d.as_secs_f64());
            std::thread::sleep(d);
        }
    }

    fn get_json(&self, url: &str) -> Result<Value> {
        let resp = self.send(Method::GET, url, true, &[], &|rb| rb.header("Accept", "application/json"))?;
        resp.json::<Value>().map_err(|e| Error::Transport {
            method: "GET".into(),
            url: url.into(),
            message: format!("bad JSON: {}", describe_reqwest(&e)),
        })
    }

    /// `GET /v2/images/{id}`.
    pub fn get(&self, id: &str) -> Result<ImageRecord> {
        let url = self.url(&["images", id]);
        match self.get_json(&url) {
            Err(Error::NotFound(_)) => Err(Error::NotFound(format!("image {id:?} at {}", self.base))),
            r => ImageRecord::from_json(r?),
        }
    }

    /// Find an image by id, or else by exact, unique name.
    pub fn image(&self, id_or_name: &str) -> Result<ImageRecord> {
        if is_uuid(id_or_name) {
            match self.get(id_or_name) {
                Err(Error::NotFound(_)) => {} // could still be a name that looks like a uuid
                r => return r,
            }
        }
        let found = self.list_filtered(&[("name", id_or_name)], 100)?;
        match found.len() {
            0 => Err(Error::NotFound(format!("image {id_or_name:?} (no image has this id or name) at {}", self.base))),
            1 => Ok(found.into_iter().next().unwrap()),
            n => Err(Error::Ambiguous {
                name: id_or_name.into(),
                count: n,
                ids: found.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// All images visible to the caller (follows `next` links).
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        self.list_filtered(&[], 200)
    }

    /// Images matching Glance filters (`name`, `status`, `visibility`,
    /// `sort`...), fetched `page_size` at a time (max 1000).
    pub fn list_filtered(&self, filters: &[(&str, &str)], page_size: u32) -> Result<Vec<ImageRecord>> {
        let mut u = url::Url::parse(&self.url(&["images"])).expect("valid url");
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in filters {
                q.append_pair(k, v);
            }
            q.append_pair("limit", &page_size.clamp(1, 1000).to_string());
        }
        let mut next = Some(u.to_string());
        let mut out = Vec::new();
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > 100_000 {
                return Err(Error::Config("image list does not end (more than 100000 pages)".into()));
            }
            let v = self.get_json(&url)?;
            for img in v["images"].as_array().into_iter().flatten() {
                out.push(ImageRecord::from_json(img.clone())?);
            }
            next = v["next"].as_str().map(|n| self.join_link(n)).transpose()?;
            if v["images"].as_array().is_none_or(|a| a.is_empty()) {
                break;
            }
        }
        Ok(out)
    }

    /// Glance's `next` is a path like `/v2/images?marker=..` (no host). An
    /// absolute link is followed only on the endpoint's own origin: the next
    /// request carries the token, which no other host may see.
    fn join_link(&self, link: &str) -> Result<String> {
        if !(link.starts_with("http://") || link.starts_with("https://")) {
            return Ok(format!("{}/{}", self.base, link.trim_start_matches('/')));
        }
        let base = url::Url::parse(&self.base).expect("validated base");
        match url::Url::parse(link) {
            Ok(u) if super::keystone::same_origin(&base, &u) => Ok(link.to_string()),
            Ok(u) => Err(Error::Config(format!(
                "the image list's next link points to another host ({}) than the Glance endpoint {}; not followed",
                u.origin().ascii_serialization(),
                self.base
            ))),
            Err(e) => Err(Error::Config(format!("the image list's next link {link:?} is not a URL: {e}"))),
        }
    }

    /// Start streaming the image data. Fails now (clearly) for an image
    /// that is not active, has no data or does not exist. The returned
    /// reader retries and resumes (HTTP Range) on its own.
    pub fn download(&self, rec: &ImageRecord) -> Result<ImageDownload> {
        if let Some(r) = rec.not_downloadable_reason() {
            return Err(Error::NotActive { id: rec.id.clone(), status: rec.status.clone(), reason: r });
        }
        let mut d = ImageDownload {
            client: self.clone(),
            id: rec.id.clone(),
            url: self.url(&["images", &rec.id, "file"]),
            expected: rec.size,
            total: None,
            pos: 0,
            resp: None,
            accept_ranges: None,
            content_md5: None,
            failures: 0,
            resumes: 0,
            done: false,
        };
        d.open()?;
        Ok(d)
    }

    /// `POST /v2/images`: create an image record (status `queued`).
    pub fn create(&self, meta: &Map<String, Value>) -> Result<ImageRecord> {
        let url = self.url(&["images"]);
        let body = Value::Object(meta.clone());
        let resp = self.send(Method::POST, &url, false, &[], &|rb| rb.json(&body))?;
        let v: Value = resp.json().map_err(|e| Error::Transport {
            method: "POST".into(),
            url: url.clone(),
            message: format!("bad JSON: {}", describe_reqwest(&e)),
        })?;
        ImageRecord::from_json(v)
    }

    /// `PATCH /v2/images/{id}` with JSON-patch `ops`
    /// (e.g. `[{"op":"replace","path":"/protected","value":true}]`).
    pub fn update(&self, id: &str, ops: &[Value]) -> Result<ImageRecord> {
        let url = self.url(&["images", id]);
        let body = serde_json::to_vec(ops).expect("json");
        let resp = self.send(Method::PATCH, &url, false, &[], &|rb| {
            rb.header("Content-Type", "application/openstack-images-v2.1-json-patch").body(body.clone())
        })?;
        ImageRecord::from_json(resp.json().map_err(|e| Error::Transport {
            method: "PATCH".into(),
            url: url.clone(),
            message: describe_reqwest(&e),
        })?)
    }

    fn put_stream(&self, id: &str, what: &str, reader: Box<dyn Read + Send>, size: Option<u64>) -> Result<()> {
        let url = self.url(&["images", id, what]);
        let (token, _) = self.token()?; // fresh (renewed if near expiry): a streamed body cannot be replayed
        let body = match size {
            Some(n) => Body::sized(reader, n),
            None => Body::new(reader), // chunked
        };
        let mut rb = self.http.put(&url).timeout(UPLOAD_TIMEOUT).header("Content-Type", "application/octet-stream").body(body);
        if let Some(t) = &token {
            rb = rb.header("X-Auth-Token", t.expose());
        }
        let resp = rb.send().map_err(|e| Error::Transport {
            method: "PUT".into(),
            url: url.clone(),
            message: self.scrub(describe_reqwest(&e)),
        })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.http_error(&Method::PUT, &url, resp))
        }
    }

    /// `PUT /v2/images/{id}/file`: stream the data (chunked when `size` is
    /// `None`). Not retried: the reader cannot be replayed. After a failure
    /// Glance may leave the image unusable: delete it and start over.
    pub fn upload(&self, id: &str, reader: impl Read + Send + 'static, size: Option<u64>) -> Result<()> {
        self.put_stream(id, "file", Box::new(reader), size)
    }

    /// `PUT /v2/images/{id}/stage` (first half of glance-direct).
    pub fn stage(&self, id: &str, reader: impl Read + Send + 'static, size: Option<u64>) -> Result<()> {
        self.put_stream(id, "stage", Box::new(reader), size)
    }

    /// `POST /v2/images/{id}/import` with `method` (e.g. "glance-direct").
    pub fn import(&self, id: &str, method: &str) -> Result<()> {
        let url = self.url(&["images", id, "import"]);
        let body = json!({ "method": { "name": method } });
        self.send(Method::POST, &url, false, &[], &|rb| rb.json(&body))?;
        Ok(())
    }

    /// Import methods the cloud enables (`GET /v2/info/import`).
    pub fn import_methods(&self) -> Result<Vec<String>> {
        let v = self.get_json(&self.url(&["info", "import"]))?;
        Ok(v.pointer("/import-methods/value")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_string)).collect())
            .unwrap_or_default())
    }

    /// Upload with the given method; glance-direct fails clearly if the
    /// cloud does not enable it. Call [`GlanceClient::wait_active`] after.
    pub fn upload_with(&self, id: &str, reader: impl Read + Send + 'static, size: Option<u64>, method: UploadMethod) -> Result<()> {
        match method {
            UploadMethod::Put => self.upload(id, reader, size),
            UploadMethod::GlanceDirect => {
                let m = self.import_methods()?;
                if !m.iter().any(|m| m == "glance-direct") {
                    return Err(Error::Config(format!(
                        "the cloud at {} does not enable glance-direct import (methods: {})",
                        self.base,
                        if m.is_empty() { "none".into() } else { m.join(", ") }
                    )));
                }
                self.stage(id, reader, size)?;
                self.import(id, "glance-direct")
            }
        }
    }

    /// Poll until the image is `active`; fails on `killed`/`deleted`/
    /// `deactivated`, on a failed import (with the task's message) or after
    /// `timeout`.
    pub fn wait_active(&self, id: &str, timeout: Duration) -> Result<ImageRecord> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            let rec = self.get(id)?;
            match rec.status.as_str() {
                "active" => return Ok(rec),
                "killed" | "deleted" | "pending_delete" | "deactivated" => {
                    return Err(Error::Wait { id: id.into(), message: format!("went to status {:?}", rec.status) })
                }
                _ => {}
            }
            let failed = rec.properties.get("os_glance_failed_import").and_then(|v| v.as_str()).unwrap_or("");
            if !failed.is_empty() {
                let detail = self.task_message(id).unwrap_or_default();
                return Err(Error::Wait {
                    id: id.into(),
                    message: format!("import failed for store(s) {failed:?} (status {:?}){detail}", rec.status),
                });
            }
            if start.elapsed() >= timeout {
                return Err(Error::Wait { id: id.into(), message: format!("still {:?} after {:.0}s", rec.status, timeout.as_secs_f64()) });
            }
            std::thread::sleep(delay.min(timeout.saturating_sub(start.elapsed())));
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    fn task_message(&self, id: &str) -> Option<String> {
        let v = self.get_json(&self.url(&["images", id, "tasks"])).ok()?;
        let t = v["tasks"].as_array()?.iter().find(|t| t["status"] == "failure")?;
        Some(format!(": task {}: {}", t["id"].as_str().unwrap_or("?"), t["message"].as_str().unwrap_or("")))
    }

    /// `DELETE /v2/images/{id}`.
    pub fn delete(&self, id: &str) -> Result<()> {
        let url = self.url(&["images", id]);
        match self.send(Method::DELETE, &url, true, &[], &|rb| rb) {
            Err(Error::NotFound(_)) => Err(Error::NotFound(format!("image {id:?} at {}", self.base))),
            r => r.map(|_| ()),
        }
    }
}

fn normalize_base(url: &str) -> Result<String> {
    let u = url::Url::parse(url.trim()).map_err(|e| Error::Config(format!("bad Glance URL {url:?}: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(Error::Config(format!("bad Glance URL {url:?}: not http(s)")));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(Error::Config("Glance URL must not contain credentials".into()));
    }
    let mut s = u.to_string();
    while s.ends_with('/') {
        s.pop();
    }
    for suffix in ["/v2", "/v2.0", "/v1"] {
        if let Some(b) = s.strip_suffix(suffix) {
            s = b.to_string();
        }
    }
    Ok(s)
}

/// Streaming image data (`impl Read + Send`). Transient failures before or
/// during the transfer are retried; after bytes were delivered it resumes
/// with `Range: bytes=<pos>-` and fails clearly if the server answers 200
/// instead of 206. A stream that ends before `Content-Length` (or the
/// record's `size`) counts as an interruption. Errors are `io::Error`s
/// wrapping [`Error`] (`err.get_ref()` + `downcast_ref::<Error>()`).
pub struct ImageDownload {
    client: GlanceClient,
    id: String,
    url: String,
    expected: Option<u64>,
    total: Option<u64>,
    pos: u64,
    resp: Option<Response>,
    accept_ranges: Option<bool>,
    content_md5: Option<String>,
    failures: u32,
    resumes: u32,
    done: bool,
}

impl std::fmt::Debug for ImageDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageDownload").field("id", &self.id).field("pos", &self.pos).field("total", &self.total).finish()
    }
}

impl ImageDownload {
    /// Total size (from `Content-Length` / `Content-Range`).
    pub fn total(&self) -> Option<u64> {
        self.total
    }
    /// Bytes delivered so far.
    pub fn position(&self) -> u64 {
        self.pos
    }
    /// `Content-MD5` of the first response (Glance sends the md5 hex of the whole image).
    pub fn content_md5(&self) -> Option<&str> {
        self.content_md5.as_deref()
    }
    /// How many times the transfer was resumed with Range after an interruption.
    pub fn resumes(&self) -> u32 {
        self.resumes
    }

    fn err(&self, message: String) -> Error {
        Error::Download { id: self.id.clone(), message }
    }

    /// (Re)open at `self.pos`, retrying transient failures.
    fn open(&mut self) -> Result<()> {
        let pos = self.pos;
        let range = if pos > 0 { Some(format!("bytes={pos}-")) } else { None };
        let accept: &[u16] = &[204, 416];
        let resp = self.client.send(Method::GET, &self.url, true, accept, &|rb| match &range {
            Some(r) => rb.header("Range", r),
            None => rb,
        })?;
        let st = resp.status().as_u16();
        let h = resp.headers();
        let hs = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        match st {
            204 => {
                return Err(Error::NotActive {
                    id: self.id.clone(),
                    status: "unknown".into(),
                    reason: "Glance has no data for it (HTTP 204)".into(),
                })
            }
            416 if Some(pos) == self.total => {
                self.done = true;
                return Ok(());
            }
            416 => return Err(self.err(format!("server refused the range starting at byte {pos} (HTTP 416)"))),
            206 => {
                let cr = hs("content-range").unwrap_or_default();
                let (start, total) = parse_content_range(&cr)
                    .ok_or_else(|| self.err(format!("bad Content-Range {cr:?} in the resumed download")))?;
                if start != pos {
                    return Err(self.err(format!("asked to resume at byte {pos}, server sent from {start}")));
                }
                if let (Some(t), Some(old)) = (total, self.total) {
                    if t != old {
                        return Err(self.err(format!("image size changed during download: {old} then {t} bytes")));
                    }
                }
                self.accept_ranges = Some(true);
            }
            _ if pos > 0 => {
                return Err(self.err(format!(
                    "interrupted at byte {pos} of {} and the server does not support Range (answered HTTP {st} instead of 206), so it cannot resume; retry the whole download",
                    self.total.map(|t| t.to_string()).unwrap_or_else(|| "?".into())
                )))
            }
            _ => {
                let len = resp.content_length();
                if let (Some(l), Some(e)) = (len, self.expected) {
                    if l != e {
                        return Err(self.err(format!("server sends {l} bytes but the image record says size {e}")));
                    }
                }
                self.total = len.or(self.expected);
                self.accept_ranges = Some(hs("accept-ranges").is_some_and(|v| v.contains("bytes")));
                if self.content_md5.is_none() {
                    self.content_md5 = hs("content-md5");
                }
            }
        }
        self.resp = Some(resp);
        Ok(())
    }

    fn interrupted(&mut self, why: String) -> io::Result<()> {
        self.resp = None;
        let p = self.client.retry.clone();
        let of = self.total.map(|t| format!(" of {t}")).unwrap_or_default();
        let mut why = why;
        loop {
            self.failures += 1;
            if self.failures > p.max_retries {
                return Err(io::Error::other(
                    self.err(format!("interrupted at byte {}{of}: {why}; gave up after {} retries", self.pos, p.max_retries)),
                ));
            }
            let d = p.delay(self.failures, None);
            tracing::info!(
                "glance: download of image {}: {why} at byte {}{of}; {} in {:.1}s (retry {}/{})",
                self.id,
                self.pos,
                if self.pos > 0 { "resuming with Range" } else { "restarting" },
                d.as_secs_f64(),
                self.failures,
                p.max_retries
            );
            std::thread::sleep(d);
            // one attempt per failure here: this loop owns the retry budget
            match self.open_once() {
                Ok(()) => {
                    if self.pos > 0 {
                        self.resumes += 1;
                    }
                    return Ok(());
                }
                Err(e @ (Error::Transport { .. } | Error::Auth { .. })) => why = e.to_string(),
                Err(Error::Http { status, message, .. }) if status >= 500 || status == 429 || status == 408 => {
                    why = format!("HTTP {status}: {message}")
                }
                Err(e @ Error::Download { .. }) => return Err(io::Error::other(e)),
                Err(e) => return Err(io::Error::other(self.err(format!("interrupted at byte {}{of} ({why}), then: {e}", self.pos)))),
            }
        }
    }

    fn open_once(&mut self) -> Result<()> {
        let saved = self.client.retry.clone();
        self.client.retry.max_retries = 0;
        let r = self.open();
        self.client.retry = saved;
        r
    }
}

/// `bytes 100-199/1000` → (100, Some(1000)); `/*` → None total.
fn parse_content_range(s: &str) -> Option<(u64, Option<u64>)> {
    let r = s.trim().strip_prefix("bytes")?.trim();
    let (range, total) = r.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

impl Read for ImageDownload {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.done {
                return Ok(0);
            }
            let Some(resp) = self.resp.as_mut() else {
                // a previous reopen failed and was reported; try once more
                self.interrupted("no open connection".into())?;
                continue;
            };
            match resp.read(buf) {
                Ok(0) => match self.total {
                    Some(t) if self.pos < t => {
                        let why = format!("connection closed early ({} bytes short)", t - self.pos);
                        self.interrupted(why)?;
                    }
                    _ => {
                        self.done = true;
                        self.resp = None;
                        return Ok(0);
                    }
                },
                Ok(n) => {
                    self.pos += n as u64;
                    self.failures = 0;
                    if let Some(t) = self.total {
                        if self.pos > t {
                            return Err(io::Error::other(self.err(format!("server sent more than the {t} bytes announced"))));
                        }
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let why = self.client.scrub(io_reason(&e));
                    self.interrupted(why)?;
                }
            }
        }
    }
}

fn io_reason(e: &io::Error) -> String {
    use std::error::Error as _;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    s
}

/// Options of [`restore_image`].
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Applied over the archived metadata (`--name`, `--visibility`, `--property K=V`; `null` removes).
    pub overrides: Map<String, Value>,
    pub method: UploadMethod,
    /// Exact size of the data if known (sent as Content-Length; else chunked).
    pub size: Option<u64>,
    /// How long to wait for `active` after the upload / import.
    pub timeout: Duration,
    /// Keep the image on failure instead of deleting it (`--keep-failed`).
    pub keep_failed: bool,
    /// The data is a conversion, not the archived bytes: it is checked against
    /// what was uploaded only, never against the archived `os_hash_value`.
    pub converted: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            overrides: Map::new(),
            method: UploadMethod::Put,
            size: None,
            timeout: Duration::from_secs(1800),
            keep_failed: false,
            converted: false,
        }
    }
}

/// Result of [`restore_image`].
#[derive(Debug, Clone)]
pub struct RestoreOutcome {
    /// The new image, `active` (and `protected` again if the archive was).
    pub record: ImageRecord,
    /// Digests of the bytes uploaded (md5, sha512 and the archived os_hash_algo).
    pub uploaded: crate::digest::Digests,
    /// What the new image was verified with, e.g. "os_hash_value (sha512)".
    pub verified_with: String,
}

/// The whole `restore --to-glance` flow for one image: create it with
/// [`restore_metadata`], stream `data` (PUT or stage + glance-direct import)
/// while computing md5 + sha512 on their own threads, wait for `active`,
/// check that the new image's `os_hash_value` (sha512; else `checksum`)
/// and `size` equal those of the bytes uploaded, then re-apply
/// `protected`. On any failure the half-created image is deleted (unless
/// `keep_failed`), and the error says so.
pub fn restore_image(
    glance: &GlanceClient,
    archived: &ImageRecord,
    data: impl Read + Send + 'static,
    opts: &RestoreOptions,
) -> Result<RestoreOutcome> {
    use crate::digest::{Algo, HashingReader};
    let mut meta = restore_metadata(archived, &opts.overrides);
    // created unprotected so that a failure can delete it; protected is applied at the end
    let protect = match meta.remove("protected") {
        Some(Value::Bool(b)) => b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => archived.protected,
    };
    let created = glance.create(&meta).map_err(|e| Error::Restore { id: None, message: format!("creating the image failed: {e}") })?;
    let id = created.id.clone();
    let fail = |what: String| -> Error {
        let fate = if opts.keep_failed {
            format!("kept the failed image {id} (keep-failed)")
        } else {
            match glance.delete(&id) {
                Ok(()) => format!("deleted the half-created image {id}"),
                Err(e) => format!("could not delete the half-created image {id}: {e}"),
            }
        };
        Error::Restore { id: Some(id.clone()), message: format!("{what}; {fate}") }
    };
    // md5 and sha512 (Glance's default), plus the archived record's os_hash_algo: a
    // target configured like the source (sha384 on FIPS clouds, with no md5) is then verifiable.
    let mut algos = vec![Algo::Md5, Algo::Sha512];
    if let Some(a) = archived.os_hash_algo.as_deref().and_then(Algo::parse).filter(|a| !algos.contains(a)) {
        algos.push(a);
    }
    let mut reader = HashingReader::new(data, &algos);
    if let Some(n) = opts.size {
        reader = reader.with_size(n);
    }
    let digests = reader.handle();
    if let Err(e) = glance.upload_with(&id, reader, opts.size, opts.method) {
        return Err(fail(format!("uploading the data of image {id} failed: {e}")));
    }
    let Some(up) = digests.get() else {
        return Err(fail("the upload ended before the data did".into()));
    };
    // unconverted, the repository must have given back the archived bytes
    if let (false, Some(a), Some(v)) =
        (opts.converted, archived.os_hash_algo.as_deref().and_then(Algo::parse), archived.os_hash_value.as_deref())
    {
        if let Some(got) = up.get(a).filter(|got| !got.eq_ignore_ascii_case(v)) {
            return Err(fail(format!("the data uploaded has {} {got}, the archived image had {v}", a.name())));
        }
    }
    let rec = match glance.wait_active(&id, opts.timeout) {
        Ok(r) => r,
        Err(e) => return Err(fail(e.to_string())),
    };
    if rec.size.is_some_and(|s| s != up.bytes) {
        return Err(fail(format!("Glance stored {} bytes, imgarc uploaded {}", rec.size.unwrap_or(0), up.bytes)));
    }
    let verified_with = match (rec.os_hash_algo.as_deref().and_then(Algo::parse), rec.os_hash_value.as_deref()) {
        (Some(a), Some(v)) if up.get(a).is_some() => {
            if up.get(a) != Some(v) {
                return Err(fail(format!(
                    "the new image's os_hash_value ({}) {v} differs from the uploaded data's {}",
                    a.name(),
                    up.get(a).unwrap_or("")
                )));
            }
            format!("os_hash_value ({})", a.name())
        }
        _ => match rec.checksum.as_deref() {
            Some(c) if Some(c) == up.get(Algo::Md5) => "checksum (md5; the target's os_hash_algo was not computed)".to_string(),
            Some(c) => {
                return Err(fail(format!(
                    "the new image's checksum {c} differs from the uploaded data's {}",
                    up.get(Algo::Md5).unwrap_or("")
                )))
            }
            None => return Err(fail("the new image has neither os_hash_value nor checksum to verify".into())),
        },
    };
    let record = if protect {
        match glance.update(&id, &[json!({"op": "replace", "path": "/protected", "value": true})]) {
            Ok(r) => r,
            Err(e) => return Err(fail(format!("setting protected=true failed: {e}"))),
        }
    } else {
        rec
    };
    Ok(RestoreOutcome { record, uploaded: up, verified_with })
}

/// Top-level fields Glance owns or forbids on create (dropped on restore).
pub const GLANCE_OWNED: &[&str] = &[
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
    "file",
    "schema",
    "self",
    "direct_url",
    "locations",
    "stores",
    "os_hidden",
];

/// Fields of an image record that say where and how a store holds the data:
/// `direct_url` and `locations` can carry store credentials (a Swift or S3
/// URL with its key, an RBD path with its cluster). They are dropped when a
/// record is archived, and redacted from snapshots archived before that.
pub const STORE_LOCATION_FIELDS: &[&str] = &["direct_url", "locations", "stores"];

/// Removes [`STORE_LOCATION_FIELDS`] from an image record (or the metadata of
/// a snapshot); returns how many were there. The one place this is decided:
/// archive, `show`, `report` and `restore --to-glance` all call it.
pub fn redact_store_locations(record: &mut Map<String, Value>) -> usize {
    STORE_LOCATION_FIELDS.iter().filter(|k| record.remove(**k).is_some()).count()
}

/// Custom properties that only make sense in the source cloud (dropped on restore).
pub const SOURCE_CLOUD_ONLY: &[&str] = &[
    "instance_uuid",
    "owner_id",
    "owner_project_name",
    "owner_user_name",
    "user_id",
    "image_location",
    "image_state",
    "base_image_ref",
    "boot_roles",
    "kernel_id",
    "ramdisk_id",
    "block_device_mapping",
    "bdm_v2",
    "os_glance_import_task",
    "os_glance_importing_to_stores",
    "os_glance_failed_import",
    "os_glance_stage_host",
    "os_glance_hash_op_compute",
];

/// Schema attributes whose JSON type is not string (kept as they are);
/// every other property is sent as a string, as Glance requires.
const TYPED_SCHEMA: &[&str] = &["min_disk", "min_ram", "protected", "tags", "os_hidden"];

/// Metadata for re-creating an archived image in a (possibly different)
/// cloud. Starts from `record.raw`, drops [`GLANCE_OWNED`] fields, every
/// `os_glance_*` key (a namespace Glance reserves), [`SOURCE_CLOUD_ONLY`]
/// properties and `null` values; drops `protected` (so a failed restore can
/// still delete the image: set it afterwards with
/// [`GlanceClient::update`]); turns non-string custom property values into
/// strings; then applies `overrides` (a `null` override removes the key).
pub fn restore_metadata(record: &ImageRecord, overrides: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    let src = record.raw.as_object().cloned().unwrap_or_default();
    for (k, v) in src {
        if v.is_null()
            || GLANCE_OWNED.contains(&k.as_str())
            || SOURCE_CLOUD_ONLY.contains(&k.as_str())
            || k.starts_with("os_glance_")
            || k == "protected"
        {
            continue;
        }
        let v = match (&v, is_core(&k) || TYPED_SCHEMA.contains(&k.as_str())) {
            (_, true) | (Value::String(_), _) => v,
            (Value::Bool(b), false) => Value::String(b.to_string()),
            (Value::Number(n), false) => Value::String(n.to_string()),
            (other, false) => Value::String(other.to_string()),
        };
        out.insert(k, v);
    }
    for (k, v) in overrides {
        if v.is_null() {
            out.remove(k);
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

fn is_core(k: &str) -> bool {
    matches!(k, "name" | "disk_format" | "container_format" | "visibility")
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.url(&["images", "a b", "file"]), "http://h:1/image/v2/images/a%20b/file");
        assert_eq!(c.join_link("/v2/images?marker=x").unwrap(), "http://h:1/image/v2/images?marker=x");
        assert_eq!(c.join_link("http://h:1/image/v2/images?marker=y").unwrap(), "http://h:1/image/v2/images?marker=y");
        let e = c.join_link("http://h:2/v2/images?marker=y").unwrap_err().to_string();
        assert!(e.contains("another host (http://h:2)"), "{e}");
        assert!(c.join_link("https://h:1/v2/images").is_err(), "another scheme is another origin");
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
#[cfg(test)]
mod verify_tests {
    use super::*;
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
        let mut h = HashingReader::verifying(&data[..], r.expected());
        let d = h.handle();
        io::copy(&mut h, &mut io::sink()).unwrap();
        let d = d.get().unwrap();
        assert!(d.verified);
        assert_eq!(d.bytes, data.len() as u64);
        assert_eq!(d.get(Algo::Sha512), r.os_hash_value.as_deref());

        let mut bad = data.clone();
        bad[1234] ^= 1;
        let e = io::copy(&mut HashingReader::verifying(&bad[..], r.expected()), &mut io::sink()).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("md5: expected") && s.contains("sha512: expected"), "{s}");

        let e = io::copy(&mut HashingReader::verifying(&data[..1000], r.expected()), &mut io::sink()).unwrap_err();
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
        let mut h = HashingReader::verifying(&data[..], good.expected());
        let d = h.handle();
        io::copy(&mut h, &mut io::sink()).unwrap();
        assert!(d.get().unwrap().verified);
        let mut bad = data.clone();
        bad[7] ^= 1;
        let e = io::copy(&mut HashingReader::verifying(&bad[..], good.expected()), &mut io::sink()).unwrap_err();
        assert!(e.to_string().contains("sha384: expected"), "{e}");
    }

    #[test]
    fn unverifiable_record_computes_only() {
        let r = ImageRecord::from_json(json!({"id": "old", "status": "active"})).unwrap();
        let mut h = HashingReader::verifying(&b"abc"[..], r.expected());
        let d = h.handle();
        io::copy(&mut h, &mut io::sink()).unwrap();
        let d = d.get().unwrap();
        assert!(!d.verified);
        assert_eq!(d.get(Algo::Md5), Some("900150983cd24fb0d6963f7d28e17f72"));
        assert!(d.get(Algo::Sha512).unwrap().starts_with("ddaf35a193617aba"));
    }
}

//! The S3 requests `object_store` cannot make — Object Lock and object versions:
//! PUT with `x-amz-object-lock-mode` / `x-amz-object-lock-retain-until-date` and
//! `Content-MD5`, Get/PutObjectRetention (`?retention`), ListObjectVersions
//! (`?versions`), DELETE `?versionId=`, GetObjectLockConfiguration (`?object-lock`)
//! and CreateBucket with object lock enabled.
//!
//! Requests are signed with `object_store`'s own SigV4 signer (`AwsAuthorizer`, so
//! there is one signing implementation in the binary) and sent with the crate's one
//! HTTP client (`net::http_client`). Retries are the [`super::retry`] decorator's:
//! failures come back as [`remote_error`]s with their status. Responses are small
//! fixed-shape XML documents read by [`xml_elements`]/[`xml_text`] (no XML crate:
//! we read four element names and never follow the document's structure further).

use super::retry::remote_error;
use super::{BackendError, BackendResult, LockMode, ObjectVersion, Retention};
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::HttpRequest;

/// Largest response body read (a 1000-entry version listing is ~400 KiB).
const MAX_RESPONSE: usize = 16 << 20;

/// The signer and URL scheme of one bucket (+ key prefix).
pub(crate) struct LockClient {
    http: reqwest::blocking::Client,
    /// `https://host[:port]/bucket` (path style) or `https://bucket.s3.region.amazonaws.com`.
    base: String,
    /// `prefix/` or "".
    key_prefix: String,
    region: String,
    credential: AwsCredential,
    location: String,
    /// Per request (`S3Config::timeout`): a pack PUT may take longer than the client's default.
    timeout: std::time::Duration,
}

impl std::fmt::Debug for LockClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockClient").field("location", &self.location).finish_non_exhaustive()
    }
}

/// S3's URI encoding of one path segment or query value: unreserved characters stay.
fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Standard base64 (with padding) of a short digest, for `Content-MD5`.
fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

fn content_md5(body: &[u8]) -> String {
    use md5::Digest;
    base64(&md5::Md5::digest(body))
}

/// The S3 date form of a retain-until date (whole seconds, `Z`).
pub(crate) fn s3_date(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The bodies of every `<name>…</name>` element, in document order.
fn xml_elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

/// The text of the first `<name>` element, entities decoded; `<name/>` is "".
fn xml_text(xml: &str, name: &str) -> Option<String> {
    if let Some(t) = xml_elements(xml, name).first() {
        return Some(xml_unescape(t));
    }
    xml.contains(&format!("<{name}/>")).then(String::new)
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

/// `Code: Message` of an S3 error document, one short line.
pub fn s3_error(body: &str) -> String {
    let code = xml_text(body, "Code").unwrap_or_default();
    let message = xml_text(body, "Message").unwrap_or_default();
    let s = match (code.is_empty(), message.is_empty()) {
        (true, true) => crate::net::short_body(body),
        (false, true) => code,
        (true, false) => message,
        (false, false) => format!("{code}: {message}"),
    };
    s.chars().filter(|c| !c.is_control()).take(300).collect()
}

/// The retention of a 200 GetObjectRetention answer; Err: the message of an unreadable one.
pub fn parse_retention(body: &str) -> Result<Retention, String> {
    let mode = xml_text(body, "Mode").and_then(|m| LockMode::from_s3(&m));
    let until = xml_text(body, "RetainUntilDate").and_then(|d| crate::util::parse_rfc3339(&d));
    match (mode, until) {
        (Some(mode), Some(until)) => Ok(Retention { mode, until }),
        _ => Err(format!("unreadable retention document: {}", crate::net::short_body(body))),
    }
}

/// Whether a 200 GetObjectLockConfiguration answer says Object Lock is enabled.
pub fn parse_lock_configuration(body: &str) -> bool {
    xml_text(body, "ObjectLockEnabled").as_deref() == Some("Enabled")
}

/// One page of a ListObjectVersions answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VersionPage {
    /// Versions, then delete markers, of keys under `key_prefix` + `prefix`, keys relative
    /// to `key_prefix`; entries without a key or version id, or outside the prefix, are skipped.
    pub versions: Vec<ObjectVersion>,
    /// `IsTruncated` is `true`: another page follows.
    pub truncated: bool,
    /// `NextKeyMarker` ("" when absent).
    pub next_key_marker: String,
    /// `NextVersionIdMarker` ("" when absent).
    pub next_version_marker: String,
}

/// Reads one ListObjectVersions page asked for with `prefix=key_prefix+prefix`.
pub fn parse_version_page(body: &str, key_prefix: &str, prefix: &str) -> VersionPage {
    let mut versions = Vec::new();
    for (tag, delete_marker) in [("Version", false), ("DeleteMarker", true)] {
        for e in xml_elements(body, tag) {
            let (Some(key), Some(version_id)) = (xml_text(e, "Key"), xml_text(e, "VersionId")) else { continue };
            let Some(rel) = key.strip_prefix(key_prefix) else { continue };
            if !rel.starts_with(prefix) {
                continue;
            }
            versions.push(ObjectVersion {
                key: rel.to_string(),
                version_id,
                is_latest: xml_text(e, "IsLatest").as_deref() == Some("true"),
                delete_marker,
                size: xml_text(e, "Size").and_then(|s| s.parse().ok()).unwrap_or(0),
            });
        }
    }
    let truncated = xml_text(body, "IsTruncated").as_deref() == Some("true");
    let (next_key_marker, next_version_marker) = if truncated {
        (xml_text(body, "NextKeyMarker").unwrap_or_default(), xml_text(body, "NextVersionIdMarker").unwrap_or_default())
    } else {
        (String::new(), String::new())
    };
    VersionPage { versions, truncated, next_key_marker, next_version_marker }
}

/// One answered request: status and body.
struct Answer {
    status: u16,
    body: String,
}

impl LockClient {
    pub(crate) fn new(cfg: &super::s3::S3Config, location: String) -> anyhow::Result<LockClient> {
        let http = crate::net::http_client(&crate::net::HttpOptions { cacert: cfg.ca_bundle.clone(), insecure: false })
            .map_err(|e| anyhow::anyhow!("S3 client for {}: {e}", cfg.endpoint))?;
        let base = if cfg.path_style {
            format!("{}/{}", cfg.endpoint.trim_end_matches('/'), uri_encode(&cfg.bucket))
        } else {
            format!("https://{}.s3.{}.amazonaws.com", cfg.bucket, cfg.region)
        };
        Ok(LockClient {
            http,
            base,
            key_prefix: if cfg.prefix.is_empty() { String::new() } else { format!("{}/", cfg.prefix) },
            region: cfg.region.clone(),
            credential: AwsCredential {
                key_id: cfg.access_key_id.clone(),
                secret_key: cfg.secret_access_key.expose().to_string(),
                token: cfg.session_token.as_ref().map(|t| t.expose().to_string()),
            },
            location,
            timeout: cfg.timeout,
        })
    }

    /// The URL of `key` (None: the bucket) with `query` pairs (`""` value: a bare flag).
    fn url(&self, key: Option<&str>, query: &[(&str, &str)]) -> String {
        let mut u = self.base.clone();
        u.push('/');
        if let Some(k) = key {
            let full = format!("{}{k}", self.key_prefix);
            u.push_str(&full.split('/').map(uri_encode).collect::<Vec<_>>().join("/"));
        }
        let q: Vec<String> =
            query.iter().map(|(k, v)| if v.is_empty() { uri_encode(k) } else { format!("{}={}", uri_encode(k), uri_encode(v)) }).collect();
        if !q.is_empty() {
            u.push('?');
            u.push_str(&q.join("&"));
        }
        u
    }

    /// Signs and sends one request. Network failures and 5xx come back as retryable
    /// [`remote_error`]s; every answered request (any status) as an [`Answer`].
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        op: &'static str,
        err_key: &str,
        method: reqwest::Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> BackendResult<Answer> {
        let url = self.url(key, query);
        let bad = |e: String| BackendError::Other { op, key: err_key.into(), message: format!("cannot build the request: {e}") };
        let body = bytes::Bytes::from(body);
        let mut req = HttpRequest::new(object_store::client::HttpRequestBody::from(body.clone()));
        *req.method_mut() = method.clone();
        *req.uri_mut() = url.parse().map_err(|e| bad(format!("{e}")))?;
        for (n, v) in headers {
            req.headers_mut().insert(*n, v.parse().map_err(|e| bad(format!("header {n}: {e}")))?);
        }
        AwsAuthorizer::new(&self.credential, "s3", &self.region).try_authorize(&mut req, None).map_err(|e| BackendError::Other {
            op,
            key: err_key.into(),
            message: format!("cannot sign the request: {e}"),
        })?;
        let resp = self
            .http
            .request(method, &url)
            .headers(req.headers().clone())
            .timeout(self.timeout)
            .body(body)
            .send()
            .map_err(|e| remote_error(op, err_key, None, format!("{}: {}", self.location, crate::net::describe_reqwest(&e))))?;
        let status = resp.status().as_u16();
        let mut raw = Vec::new();
        use std::io::Read;
        resp.take(MAX_RESPONSE as u64)
            .read_to_end(&mut raw)
            .map_err(|e| remote_error(op, err_key, None, format!("{}: reading the answer: {e}", self.location)))?;
        let body = String::from_utf8_lossy(&raw).into_owned();
        if status >= 500 || status == 429 || status == 408 {
            return Err(remote_error(op, err_key, Some(status), format!("{}: {}", self.location, s3_error(&body))));
        }
        Ok(Answer { status, body })
    }

    /// The error of an answered request that did not succeed.
    fn refused(&self, op: &'static str, key: &str, a: &Answer) -> BackendError {
        if a.status == 404 && !a.body.contains("ObjectLockConfiguration") {
            return BackendError::NotFound(key.to_string());
        }
        let hint = if a.status == 403 { format!(" (access key {})", self.credential.key_id) } else { String::new() };
        remote_error(op, key, Some(a.status), format!("{}{hint}: {}", self.location, s3_error(&a.body)))
    }

    /// GetObjectLockConfiguration: Ok when the bucket has Object Lock enabled.
    pub(crate) fn object_lock_enabled(&self) -> BackendResult<()> {
        let a = self.send("object_lock_enabled", "", reqwest::Method::GET, None, &[("object-lock", "")], &[], Vec::new())?;
        let enabled = a.status == 200 && parse_lock_configuration(&a.body);
        if enabled {
            return Ok(());
        }
        if a.status == 200 || a.status == 404 || a.body.contains("ObjectLockConfigurationNotFound") {
            return Err(BackendError::Other {
                op: "object_lock_enabled",
                key: self.location.clone(),
                message: "cannot enforce immutability: the bucket does not have Object Lock enabled (it can only be enabled when the bucket is created: \
                          aws s3api create-bucket --object-lock-enabled-for-bucket)"
                    .into(),
            });
        }
        Err(self.refused("object_lock_enabled", "", &a))
    }

    /// PutObject with retention and Content-MD5 (S3 requires a checksum on locked writes).
    pub(crate) fn put_retained(&self, key: &str, data: &[u8], r: Retention) -> BackendResult<()> {
        let headers = [
            ("content-md5", content_md5(data)),
            ("x-amz-object-lock-mode", r.mode.as_s3().to_string()),
            ("x-amz-object-lock-retain-until-date", s3_date(r.until)),
        ];
        let a = self.send("put", key, reqwest::Method::PUT, Some(key), &[], &headers, data.to_vec())?;
        if a.status / 100 == 2 {
            return Ok(());
        }
        Err(self.refused("put", key, &a))
    }

    /// GetObjectRetention of one version (None: the current one).
    pub(crate) fn retention(&self, key: &str, version: Option<&str>) -> BackendResult<Option<Retention>> {
        let mut q = vec![("retention", "")];
        if let Some(v) = version {
            q.push(("versionId", v));
        }
        let a = self.send("retention", key, reqwest::Method::GET, Some(key), &q, &[], Vec::new())?;
        if a.status == 200 {
            return parse_retention(&a.body).map(Some).map_err(|message| BackendError::Other { op: "retention", key: key.into(), message });
        }
        // An object written without retention: 404 NoSuchObjectLockConfiguration (AWS)
        // or 400 InvalidRequest / ObjectLockConfigurationNotFoundError (RGW).
        if a.body.contains("ObjectLockConfiguration") {
            return Ok(None);
        }
        Err(self.refused("retention", key, &a))
    }

    /// PutObjectRetention. S3 refuses to shorten a COMPLIANCE date; imgarc only lengthens.
    pub(crate) fn put_retention(&self, key: &str, version: Option<&str>, r: Retention) -> BackendResult<()> {
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            r.mode.as_s3(),
            s3_date(r.until)
        )
        .into_bytes();
        let mut q = vec![("retention", "")];
        if let Some(v) = version {
            q.push(("versionId", v));
        }
        let headers = [("content-md5", content_md5(&body)), ("content-type", "application/xml".to_string())];
        let a = self.send("extend_retention", key, reqwest::Method::PUT, Some(key), &q, &headers, body)?;
        if a.status / 100 == 2 {
            return Ok(());
        }
        Err(self.refused("extend_retention", key, &a))
    }

    /// ListObjectVersions of every key under `prefix` (keys relative to the backend's prefix).
    pub(crate) fn list_versions(&self, prefix: &str, page_size: usize) -> BackendResult<Vec<ObjectVersion>> {
        let full = format!("{}{prefix}", self.key_prefix);
        let max = page_size.to_string();
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker) = (String::new(), String::new());
        loop {
            let mut q = vec![("versions", ""), ("prefix", full.as_str()), ("max-keys", max.as_str())];
            if !key_marker.is_empty() {
                q.push(("key-marker", key_marker.as_str()));
            }
            if !version_marker.is_empty() {
                q.push(("version-id-marker", version_marker.as_str()));
            }
            let a = self.send("list_versions", prefix, reqwest::Method::GET, None, &q, &[], Vec::new())?;
            if a.status != 200 {
                return Err(self.refused("list_versions", prefix, &a));
            }
            let page = parse_version_page(&a.body, &self.key_prefix, prefix);
            out.extend(page.versions);
            if !page.truncated {
                break;
            }
            let (next_key, next_version) = (page.next_key_marker, page.next_version_marker);
            if next_key.is_empty() || (next_key == key_marker && next_version == version_marker) {
                return Err(BackendError::Other {
                    op: "list_versions",
                    key: prefix.into(),
                    message: "the version listing is truncated but names no next marker".into(),
                });
            }
            (key_marker, version_marker) = (next_key, next_version);
        }
        Ok(out)
    }

    /// DeleteObject of one version: frees it for good, or is refused while it is retained.
    /// Never sends `x-amz-bypass-governance-retention`.
    pub(crate) fn delete_version(&self, key: &str, version: &str) -> BackendResult<()> {
        let a = self.send("delete_version", key, reqwest::Method::DELETE, Some(key), &[("versionId", version)], &[], Vec::new())?;
        if a.status / 100 == 2 || a.status == 404 {
            return Ok(());
        }
        Err(self.refused("delete_version", key, &a))
    }

    /// CreateBucket with `x-amz-bucket-object-lock-enabled: true` (also turns versioning on).
    pub(crate) fn create_bucket(&self, object_lock: bool) -> BackendResult<()> {
        let headers: Vec<(&'static str, String)> =
            if object_lock { vec![("x-amz-bucket-object-lock-enabled", "true".into())] } else { vec![] };
        let body = if self.region == "us-east-1" {
            Vec::new()
        } else {
            format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.region
            )
            .into_bytes()
        };
        let a = self.send("create_bucket", "", reqwest::Method::PUT, None, &[], &headers, body)?;
        if a.status / 100 == 2 {
            return Ok(());
        }
        Err(self.refused("create_bucket", "", &a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_md5_is_base64_of_the_digest() {
        // RFC 1864 example digest of "" and a known vector of "abc"
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
        assert_eq!(content_md5(b"abc"), "kAFQmDzST7DWlj99KOF/cg==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
    }

    #[test]
    fn version_listings_are_read_with_entities_and_empty_elements() {
        let body = "<ListVersionsResult><IsTruncated>false</IsTruncated><Version><Key>p/data/a&amp;b</Key><VersionId>v1</VersionId>\
                    <IsLatest>true</IsLatest><Size>7</Size></Version><DeleteMarker><Key>p/x</Key><VersionId>v2</VersionId>\
                    <IsLatest>false</IsLatest></DeleteMarker><Owner><DisplayName/></Owner></ListVersionsResult>";
        let v = xml_elements(body, "Version");
        assert_eq!(v.len(), 1);
        assert_eq!(xml_text(v[0], "Key").as_deref(), Some("p/data/a&b"));
        assert_eq!(xml_text(body, "DisplayName").as_deref(), Some(""));
        assert_eq!(xml_elements(body, "DeleteMarker").len(), 1);
        assert_eq!(xml_text(body, "Missing"), None);
    }

    #[test]
    fn version_pages_keep_keys_under_the_prefix_relative_to_the_key_prefix() {
        let body = "<ListVersionsResult><IsTruncated>true</IsTruncated><NextKeyMarker>p/data/b</NextKeyMarker>\
                    <NextVersionIdMarker>v&amp;3</NextVersionIdMarker><Version><Key>p/data/a</Key><VersionId>v1</VersionId>\
                    <IsLatest>true</IsLatest><Size>7</Size></Version><Version><Key>q/data/a</Key><VersionId>v9</VersionId></Version>\
                    <Version><Key>p/index/a</Key><VersionId>v8</VersionId></Version><Version><Key>p/data/nov</Key></Version>\
                    <DeleteMarker><Key>p/data/b</Key><VersionId>v2</VersionId><IsLatest>false</IsLatest></DeleteMarker></ListVersionsResult>";
        let page = parse_version_page(body, "p/", "data/");
        assert_eq!(page.versions.len(), 2);
        assert_eq!(
            page.versions[0],
            ObjectVersion { key: "data/a".into(), version_id: "v1".into(), is_latest: true, delete_marker: false, size: 7 }
        );
        assert_eq!(
            page.versions[1],
            ObjectVersion { key: "data/b".into(), version_id: "v2".into(), is_latest: false, delete_marker: true, size: 0 }
        );
        assert!(page.truncated);
        assert_eq!((page.next_key_marker.as_str(), page.next_version_marker.as_str()), ("p/data/b", "v&3"));
        let last = parse_version_page(&body.replace("<IsTruncated>true", "<IsTruncated>false"), "p/", "");
        assert_eq!((last.versions.len(), last.truncated, last.next_key_marker.as_str()), (3, false, ""));
    }

    #[test]
    fn retention_lock_configuration_and_error_documents_are_read() {
        let r =
            parse_retention("<Retention><Mode>GOVERNANCE</Mode><RetainUntilDate>2030-01-02T03:04:05.000Z</RetainUntilDate></Retention>")
                .unwrap();
        assert_eq!(r.mode, LockMode::Governance);
        assert_eq!(s3_date(r.until), "2030-01-02T03:04:05Z");
        assert!(parse_retention("<Retention><Mode>FOREVER</Mode><RetainUntilDate>2030-01-02T03:04:05Z</RetainUntilDate></Retention>")
            .unwrap_err()
            .starts_with("unreadable retention document"));
        assert!(parse_retention("<Retention><Mode>COMPLIANCE</Mode></Retention>").is_err());
        assert!(parse_lock_configuration(
            "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>"
        ));
        assert!(!parse_lock_configuration("<ObjectLockConfiguration><ObjectLockEnabled/></ObjectLockConfiguration>"));
        assert_eq!(s3_error("<Error><Code>AccessDenied</Code><Message>no &amp; never</Message></Error>"), "AccessDenied: no & never");
        assert_eq!(s3_error("<Error><Code>NoSuchKey</Code></Error>"), "NoSuchKey");
        assert!(s3_error(&format!("<Error><Message>{}\n</Message></Error>", "x".repeat(1000))).len() == 300);
    }

    #[test]
    fn keys_and_query_values_are_uri_encoded() {
        assert_eq!(uri_encode("data/ab"), "data%2Fab");
        assert_eq!(uri_encode("a b+c~"), "a%20b%2Bc~");
        assert_eq!(s3_date(chrono::DateTime::from_timestamp(0, 0).unwrap()), "1970-01-01T00:00:00Z");
    }
}

//! The Glance client itself: endpoint and authentication (a Keystone
//! session or a static token), and the one request path every image call
//! goes through — token on each request, one renewal after a 401, retries of
//! transient failures under the crate's retry policy, errors scrubbed of
//! secrets, and links followed only within the endpoint's origin.

use super::super::keystone::{http_client, HttpOptions, Session};
use super::super::{describe_reqwest, short_body, Error, Result, Secret};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// The crate's one retry policy; a Glance client starts with
/// [`RetryPolicy::openstack_api`].
pub use crate::net::retry::RetryPolicy;
use crate::net::retry::{is_transient_status, retry_after};

#[derive(Clone)]
pub(super) enum Auth {
    Session(Session),
    Static(Option<Secret>),
}

/// A Glance v2 client. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct GlanceClient {
    pub(super) http: Client,
    /// Endpoint root without a trailing `/` or `/v2`.
    pub(super) base: String,
    pub(super) auth: Auth,
    pub(super) retry: RetryPolicy,
}

impl std::fmt::Debug for GlanceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlanceClient").field("endpoint", &self.base).finish()
    }
}

pub(super) fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36 && b.iter().enumerate().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

/// Upload requests are bounded by the per-read socket timeouts, not by a
/// total deadline (reqwest's blocking timeout covers the body send).
pub(super) const UPLOAD_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
pub(super) const API_TIMEOUT: Duration = Duration::from_secs(120);

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
    pub(super) fn url(&self, segments: &[&str]) -> String {
        let mut u = url::Url::parse(&self.base).expect("validated base");
        u.path_segments_mut().expect("http base").pop_if_empty().push("v2").extend(segments);
        u.to_string()
    }

    pub(super) fn token(&self) -> Result<(Option<Secret>, u64)> {
        match &self.auth {
            Auth::Static(t) => Ok((t.clone(), 0)),
            Auth::Session(s) => Ok(match s.token()? {
                Some((t, g)) => (Some(t), g),
                None => (None, 0),
            }),
        }
    }

    pub(super) fn scrub(&self, mut msg: String) -> String {
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

    pub(super) fn http_error(&self, method: &Method, url: &str, resp: Response) -> Error {
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
    pub(super) fn send(
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

    pub(super) fn get_json(&self, url: &str) -> Result<Value> {
        let resp = self.send(Method::GET, url, true, &[], &|rb| rb.header("Accept", "application/json"))?;
        resp.json::<Value>().map_err(|e| Error::Transport {
            method: "GET".into(),
            url: url.into(),
            message: format!("bad JSON: {}", describe_reqwest(&e)),
        })
    }

    /// Glance's `next` is a path like `/v2/images?marker=..` (no host). An
    /// absolute link is followed only on the endpoint's own origin: the next
    /// request carries the token, which no other host may see.
    pub(super) fn join_link(&self, link: &str) -> Result<String> {
        if !(link.starts_with("http://") || link.starts_with("https://")) {
            return Ok(format!("{}/{}", self.base, link.trim_start_matches('/')));
        }
        let base = url::Url::parse(&self.base).expect("validated base");
        match url::Url::parse(link) {
            Ok(u) if crate::net::same_origin(&base, &u) => Ok(link.to_string()),
            Ok(u) => Err(Error::Config(format!(
                "the image list's next link points to another host ({}) than the Glance endpoint {}; not followed",
                u.origin().ascii_serialization(),
                self.base
            ))),
            Err(e) => Err(Error::Config(format!("the image list's next link {link:?} is not a URL: {e}"))),
        }
    }
}

pub(super) fn normalize_base(url: &str) -> Result<String> {
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

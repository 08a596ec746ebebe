//! The one request path of every OpenStack service API imgarc calls (Glance,
//! Cinder): the endpoint root, the token on each request (a Keystone session
//! or a static token), one renewal after a 401, retries of transient failures
//! under the crate's retry policy, error messages scrubbed of secrets, and
//! links followed only within the endpoint's origin. A service client
//! ([`super::glance::GlanceClient`], [`super::cinder::CinderClient`]) wraps an
//! [`ApiClient`] and adds its own resources.

use super::keystone::Session;
use super::{describe_reqwest, short_body, Error, Result, Secret};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

pub use crate::net::retry::RetryPolicy;
use crate::net::retry::{is_transient_status, retry_after};

/// How requests are authenticated.
#[derive(Clone)]
pub(crate) enum Auth {
    Session(Session),
    Static(Option<Secret>),
}

/// Upload requests are bounded by the per-read socket timeouts, not by a
/// total deadline (reqwest's blocking timeout covers the body send).
pub(crate) const UPLOAD_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
pub(crate) const API_TIMEOUT: Duration = Duration::from_secs(120);

/// A service endpoint and how to call it. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub(crate) struct ApiClient {
    pub(crate) http: Client,
    /// Endpoint root without a trailing `/` (Glance: without `/v2`; Cinder: `…/v3/<project>`).
    pub(crate) base: String,
    /// Path segments every resource URL starts with (Glance: `v2`).
    pub(crate) prefix: &'static [&'static str],
    /// The service's name in log lines ("glance", "cinder").
    pub(crate) service: &'static str,
    /// Headers sent with every request (Cinder's microversion).
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) auth: Auth,
    pub(crate) retry: RetryPolicy,
}

/// True for a canonical UUID (8-4-4-4-12 hex): the ids of images, volumes, snapshots.
pub(crate) fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36 && b.iter().enumerate().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

/// The one lookup by id or name: a UUID is fetched with `get` first (a 404 lets it still be a
/// name that looks like an id), else `named` lists the records with exactly that name, and
/// exactly one must match. `what` names the resource in errors ("image", "volume").
pub(crate) fn by_id_or_unique_name<T>(
    id_or_name: &str,
    what: &'static str,
    at: &str,
    get: impl Fn(&str) -> Result<T>,
    named: impl Fn(&str) -> Result<Vec<T>>,
    id_of: impl Fn(&T) -> &str,
) -> Result<T> {
    if is_uuid(id_or_name) {
        match get(id_or_name) {
            Err(Error::NotFound(_)) => {}
            r => return r,
        }
    }
    let mut found = named(id_or_name)?;
    match found.len() {
        0 => Err(Error::NotFound(format!("{what} {id_or_name:?} (no {what} has this id or name) at {at}"))),
        1 => Ok(found.remove(0)),
        n => Err(Error::Ambiguous { what, name: id_or_name.into(), count: n, ids: found.iter().map(id_of).collect::<Vec<_>>().join(", ") }),
    }
}

impl ApiClient {
    /// The Keystone session behind this client (`None` for a static token).
    pub(crate) fn session(&self) -> Option<&Session> {
        match &self.auth {
            Auth::Session(s) => Some(s),
            Auth::Static(_) => None,
        }
    }

    /// `{base}/<prefix...>/<segments...>` with each segment percent-encoded.
    pub(crate) fn url(&self, segments: &[&str]) -> String {
        let mut u = url::Url::parse(&self.base).expect("validated base");
        u.path_segments_mut().expect("http base").pop_if_empty().extend(self.prefix).extend(segments);
        u.to_string()
    }

    pub(crate) fn token(&self) -> Result<(Option<Secret>, u64)> {
        match &self.auth {
            Auth::Static(t) => Ok((t.clone(), 0)),
            Auth::Session(s) => Ok(match s.token()? {
                Some((t, g)) => (Some(t), g),
                None => (None, 0),
            }),
        }
    }

    pub(crate) fn scrub(&self, mut msg: String) -> String {
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

    pub(crate) fn http_error(&self, method: &Method, url: &str, resp: Response) -> Error {
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
    pub(crate) fn send(
        &self,
        method: Method,
        url: &str,
        idempotent: bool,
        accept: &[u16],
        build: &dyn Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response> {
        let service = self.service;
        let mut attempt = 0u32;
        let mut renewed = false;
        loop {
            attempt += 1;
            let (token, generation) = self.token()?;
            let mut rb = self.http.request(method.clone(), url).timeout(API_TIMEOUT);
            if let Some(t) = &token {
                rb = rb.header("X-Auth-Token", t.expose());
            }
            for (k, v) in &self.headers {
                rb = rb.header(*k, v);
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
                            tracing::info!("{service}: {method} {url}: HTTP 401; renewing the token and retrying once");
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
            tracing::info!("{service}: {method} {url}: {why}; retry {attempt}/{} in {:.1}s", self.retry.max_retries, d.as_secs_f64());
            std::thread::sleep(d);
        }
    }

    /// The JSON body of a response, or a transport error naming `method url`.
    pub(crate) fn json_of(&self, method: &str, url: &str, resp: Response) -> Result<Value> {
        resp.json::<Value>().map_err(|e| Error::Transport {
            method: method.into(),
            url: url.into(),
            message: format!("bad JSON: {}", describe_reqwest(&e)),
        })
    }

    pub(crate) fn get_json(&self, url: &str) -> Result<Value> {
        let resp = self.send(Method::GET, url, true, &[], &|rb| rb.header("Accept", "application/json"))?;
        self.json_of("GET", url, resp)
    }

    /// A list's `next` link: a path like `/v2/images?marker=..` (no host) is
    /// joined to the endpoint's origin; an absolute link is followed only on
    /// the endpoint's own origin: the next request carries the token, which
    /// no other host may see.
    pub(crate) fn join_link(&self, link: &str) -> Result<String> {
        let base = url::Url::parse(&self.base).expect("validated base");
        if !(link.starts_with("http://") || link.starts_with("https://")) {
            if self.prefix.is_empty() {
                // Cinder-style: a relative link is relative to the origin, never to the path.
                return base.join(link).map(|u| u.to_string()).map_err(|e| Error::Config(format!("bad next link {link:?}: {e}")));
            }
            return Ok(format!("{}/{}", self.base, link.trim_start_matches('/')));
        }
        match url::Url::parse(link) {
            Ok(u) if crate::net::same_origin(&base, &u) => Ok(link.to_string()),
            Ok(u) => Err(Error::Config(format!(
                "the {} list's next link points to another host ({}) than the endpoint {}; not followed",
                self.service,
                u.origin().ascii_serialization(),
                self.base
            ))),
            Err(e) => Err(Error::Config(format!("the {} list's next link {link:?} is not a URL: {e}", self.service))),
        }
    }
}

/// An endpoint URL checked and trimmed: http(s), no credentials, no trailing `/`,
/// and without any of `strip_suffixes` (Glance: `/v2`, `/v2.0`, `/v1`).
pub(crate) fn normalize_base(url: &str, service: &str, strip_suffixes: &[&str]) -> Result<String> {
    let u = url::Url::parse(url.trim()).map_err(|e| Error::Config(format!("bad {service} URL {url:?}: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(Error::Config(format!("bad {service} URL {url:?}: not http(s)")));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(Error::Config(format!("{service} URL must not contain credentials")));
    }
    let mut s = u.to_string();
    while s.ends_with('/') {
        s.pop();
    }
    for suffix in strip_suffixes {
        if let Some(b) = s.strip_suffix(suffix) {
            s = b.to_string();
        }
    }
    Ok(s)
}

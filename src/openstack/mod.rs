//! OpenStack client: configuration (clouds.yaml / openrc), Keystone v3
//! authentication and the Glance v2 image API, plus rate limiting for
//! `--limit-download` / `--limit-upload`.
//!
//! Everything is blocking (`reqwest::blocking`), so it fits the engine's
//! threads + rayon model. Secrets (passwords, application-credential
//! secrets, tokens) are held in [`Secret`], whose `Debug`/`Display` print
//! `***`; no error message, log line or `Debug` output contains one.
//!
//! Typical use:
//! ```no_run
//! use imgarc::openstack::{config::CloudConfig, keystone::Session, glance::GlanceClient};
//! let cfg = CloudConfig::resolve(None)?;           // OS_CLOUD / clouds.yaml, else OS_*
//! let session = Session::new(&cfg)?;                // Keystone v3 token + catalog
//! let glance = GlanceClient::new(&session)?;        // image endpoint from the catalog
//! let rec = glance.image("cirros")?;                // id or unique name
//! let mut data = glance.download(&rec)?;            // impl Read, resumes with Range
//! std::io::copy(&mut data, &mut std::io::sink())?;
//! # Ok::<(), imgarc::openstack::Error>(())
//! ```
//! See `docs/openstack.md`.

pub mod config;
pub mod glance;
pub mod keystone;
pub mod ratelimit;
pub mod verify;

use std::fmt;

/// A secret string (password, token, application-credential secret).
/// `Debug` and `Display` print `***`; use [`Secret::expose`] to get the value
/// when it must go on the wire.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret value. Only for building a request; never print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

/// Errors of the OpenStack client. Messages never contain secrets: request
/// bodies are not echoed, tokens travel in headers only, and server error
/// bodies are shortened and scrubbed of known secret values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad or missing configuration (clouds.yaml, OS_* variables).
    #[error("OpenStack configuration: {0}")]
    Config(String),
    /// Keystone refused the credentials (401/403) or answered unexpectedly.
    #[error("Keystone authentication failed at {url}: HTTP {status}: {message}")]
    Auth { url: String, status: u16, message: String },
    /// The service catalog has no matching endpoint.
    #[error("no {service_type} endpoint in the service catalog for region {region:?}, interface {interface}; available: {available}")]
    NoEndpoint { service_type: String, region: Option<String>, interface: String, available: String },
    /// A lookup found nothing (HTTP 404 or no image of that name).
    #[error("{0} not found")]
    NotFound(String),
    /// An image name matched more than one image.
    #[error("image name {name:?} is ambiguous: {count} images have it ({ids}); use the id")]
    Ambiguous { name: String, count: usize, ids: String },
    /// The image exists but is not `active` or has no data.
    #[error("image {id} is not downloadable: {reason}")]
    NotActive { id: String, status: String, reason: String },
    /// The server answered with an error status.
    #[error("{method} {url}: HTTP {status}: {message}")]
    Http { method: String, url: String, status: u16, message: String },
    /// Network failure (connection refused, reset, timeout, TLS ...).
    #[error("{method} {url}: {message}")]
    Transport { method: String, url: String, message: String },
    /// The image data stream failed (short read, interrupted without resume).
    #[error("download of image {id}: {message}")]
    Download { id: String, message: String },
    /// `wait_active` ran out of time or the image went to a failed state.
    #[error("image {id}: {message}")]
    Wait { id: String, message: String },
    /// `glance::restore_image` failed; `message` says what happened to the half-created image.
    #[error("restore into Glance: {message}")]
    Restore { id: Option<String>, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// HTTP status if this is an HTTP or auth error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Http { status, .. } | Error::Auth { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Describe a reqwest error without its URL (we add our own, secret-free)
/// and with its source chain (e.g. "connection refused").
pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut msg = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_body() || e.is_decode() {
        "error reading the response body".to_string()
    } else if e.is_request() {
        "request failed".to_string()
    } else {
        "HTTP error".to_string()
    };
    let mut src = e.source();
    let mut last = String::new();
    while let Some(s) = src {
        let t = s.to_string();
        if !t.is_empty() && t != last && !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
            last = t;
        }
        src = s.source();
    }
    msg
}

/// Shorten a server error body to something printable; drops HTML tags.
pub(crate) fn short_body(body: &str) -> String {
    let mut t = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                t.push(' ');
            }
            _ if !in_tag => t.push(c),
            _ => {}
        }
    }
    let t = t.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        // Keystone: {"error":{"message":..}}; Glance sometimes returns JSON too
        if let Some(m) = v.pointer("/error/message").and_then(|m| m.as_str()) {
            return truncate(m, 300);
        }
    }
    truncate(&t, 300)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut o: String = s.chars().take(n).collect();
        o.push('…');
        o
    }
}

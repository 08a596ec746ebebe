//! OpenStack client: configuration (clouds.yaml / openrc), the one Keystone
//! v3 session (which Glance and the Swift repository backend share) and the
//! Glance v2 image API. HTTP client, retry policy and rate limiter are the
//! crate's shared ones in `net`.
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

pub(crate) mod api;
pub mod cinder;
pub mod config;
pub mod glance;
pub mod keystone;

pub use crate::secret::Secret;

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
    #[error("{what} name {name:?} is ambiguous: {count} {what}s have it ({ids}); use the id")]
    Ambiguous { what: &'static str, name: String, count: usize, ids: String },
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
    /// Waiting for a Cinder volume or snapshot (`what`) failed: an error state, or out of time.
    #[error("{what}: {message}")]
    WaitFor { what: String, message: String },
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

pub(crate) use crate::net::{describe_reqwest, short_body};

/// How a `swift:` repository at `location` authenticates: a Keystone
/// [`keystone::Session`] for the cloud `repo_cloud` names (`--repo-cloud`),
/// else for the `OS_*` variables of an openrc (`OS_CLOUD` names Glance's
/// cloud, not the repository's). The same session type Glance uses, so both
/// read one configuration the same way (domains, token auth, `cacert`,
/// `verify`). `None` for other locations and for a pre-issued
/// `OS_STORAGE_URL` + `OS_AUTH_TOKEN`, which the backend uses as it is.
pub fn repository_auth(location: &str, repo_cloud: Option<&str>) -> Result<Option<std::sync::Arc<dyn crate::backend::swift::SwiftAuth>>> {
    if !location.starts_with("swift:") {
        return Ok(None);
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let config = match repo_cloud {
        Some(cloud) => config::CloudConfig::resolve(Some(cloud))?,
        None if env("OS_AUTH_URL").is_none() && env("OS_STORAGE_URL").is_some() && env("OS_AUTH_TOKEN").is_some() => return Ok(None),
        None => config::CloudConfig::from_env(&env)?,
    };
    Ok(Some(std::sync::Arc::new(keystone::Session::new(&config)?)))
}

//! The Glance client itself: the image endpoint and its authentication (a
//! Keystone session or a static token) over the shared request path
//! ([`crate::openstack::api::ApiClient`]: token on each request, one renewal
//! after a 401, retries, errors scrubbed of secrets, links kept on the
//! endpoint's origin).

use super::super::api::{ApiClient, Auth};
use super::super::keystone::{http_client, HttpOptions, Session};
use super::super::{Result, Secret};

pub(super) use super::super::api::UPLOAD_TIMEOUT;
/// The crate's one retry policy; a Glance client starts with
/// [`RetryPolicy::openstack_api`].
pub use crate::net::retry::RetryPolicy;

/// A Glance v2 client. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct GlanceClient {
    pub(super) api: ApiClient,
}

impl std::fmt::Debug for GlanceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlanceClient").field("endpoint", &self.api.base).finish()
    }
}

fn glance_api(http: reqwest::blocking::Client, url: &str, auth: Auth) -> Result<ApiClient> {
    Ok(ApiClient {
        http,
        base: normalize_base(url)?,
        prefix: &["v2"],
        service: "glance",
        headers: Vec::new(),
        auth,
        retry: RetryPolicy::openstack_api(),
    })
}

impl GlanceClient {
    /// Client for the image endpoint of an authenticated session.
    pub fn new(session: &Session) -> Result<GlanceClient> {
        let url = session.image_endpoint()?;
        Ok(GlanceClient { api: glance_api(session.http().clone(), &url, Auth::Session(session.clone()))? })
    }

    /// Client for an explicit Glance URL (`--glance-url`), with an optional
    /// fixed token (sent as `X-Auth-Token`); for noauth Glance pass `None`.
    pub fn standalone(url: &str, token: Option<Secret>) -> Result<GlanceClient> {
        Self::standalone_with(url, token, &HttpOptions::default())
    }

    /// [`GlanceClient::standalone`] with TLS options.
    pub fn standalone_with(url: &str, token: Option<Secret>, opts: &HttpOptions) -> Result<GlanceClient> {
        Ok(GlanceClient { api: glance_api(http_client(opts)?, url, Auth::Static(token))? })
    }

    /// Replace the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.api.retry = retry;
        self
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.api.retry
    }

    /// The Keystone session behind this client (`None` for `--glance-url`).
    pub fn session(&self) -> Option<&Session> {
        self.api.session()
    }

    /// Endpoint root (no `/v2`).
    pub fn endpoint(&self) -> &str {
        &self.api.base
    }
}

pub(super) fn normalize_base(url: &str) -> Result<String> {
    super::super::api::normalize_base(url, "Glance", &["/v2", "/v2.0", "/v1"])
}

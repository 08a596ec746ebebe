//! What every verb shares: `Ctx` opens the repository, its index cache and
//! Glance from the global options, and prints either prose or one JSON
//! document (`--json`) on standard output.

use super::GlobalArgs;
use crate::cli::progress::Output;
use anyhow::{Context, Result};
use imgarc::backend::{self, Backend};
use imgarc::index::Index;
use imgarc::openstack::config::CloudConfig;
use imgarc::openstack::glance::GlanceClient;
use imgarc::openstack::keystone::Session;
use imgarc::openstack::ratelimit::{parse_rate, RateLimiter};
use imgarc::openstack::Secret;
use imgarc::repository::Repository;
use std::sync::Arc;

pub struct Ctx {
    pub location: String,
    pub out: Output,
    pub global: GlobalArgs,
}

impl Ctx {
    pub fn backend(&self) -> Result<Arc<dyn Backend>> {
        let rate = |r: &Option<String>| -> Result<Option<u64>> {
            r.as_deref().map(|r| parse_rate(r).map_err(|e| anyhow::anyhow!("rate {r:?}: {e}"))).transpose()
        };
        let mut opts = backend::url::RemoteOptions {
            limit_upload: rate(&self.global.limit_upload)?,
            limit_download: rate(&self.global.limit_download)?,
            ..Default::default()
        };
        if let Some(cloud) = &self.global.repo_cloud {
            // The repository's cloud replaces the OS_* variables for the Swift backend only.
            let vars = os_vars(&CloudConfig::resolve(Some(cloud))?);
            opts.env =
                Some(Arc::new(
                    move |k: &str| {
                        if k.starts_with("OS_") {
                            vars.get(k).cloned()
                        } else {
                            std::env::var(k).ok().filter(|v| !v.is_empty())
                        }
                    },
                ));
        }
        backend::open(&self.location, &opts)
    }

    pub fn open_repo(&self) -> Result<Repository> {
        Repository::open(self.backend()?)
    }

    /// Opens the repository and its index cache, caught up with the repository.
    pub fn open(&self) -> Result<(Repository, Index)> {
        let repo = self.open_repo()?;
        let index = Index::open(&repo).context("cannot bring the local index up to date")?;
        Ok((repo, index))
    }

    /// A Glance client for `cloud` (else `--os-cloud`/`OS_CLOUD`, else `--glance-url`, else `OS_*`).
    pub fn glance(&self, cloud: Option<&str>) -> Result<GlanceClient> {
        let cloud = cloud.or(self.global.os_cloud.as_deref());
        if let (None, Some(url)) = (cloud, &self.global.glance_url) {
            let token = std::env::var("OS_TOKEN").ok().filter(|t| !t.is_empty()).map(Secret::new);
            return Ok(GlanceClient::standalone(url, token)?);
        }
        let config = CloudConfig::resolve(cloud)?;
        let session = Session::new(&config)?;
        Ok(GlanceClient::new(&session)?)
    }

    pub fn limiter(rate: &Option<String>) -> Result<Option<RateLimiter>> {
        rate.as_deref().map(|r| parse_rate(r).map(RateLimiter::new).map_err(|e| anyhow::anyhow!("rate {r:?}: {e}"))).transpose()
    }

    /// Prints the JSON document, or the prose, to stdout.
    pub fn emit(&self, json: &serde_json::Value, prose: impl FnOnce() -> String) {
        if self.out.json {
            println!("{}", serde_json::to_string_pretty(json).expect("JSON serializes"));
        } else if !self.out.quiet {
            print!("{}", prose());
        }
    }
}

/// A resolved cloud as the `OS_*` variables an openrc file would set.
fn os_vars(c: &CloudConfig) -> std::collections::HashMap<String, String> {
    use imgarc::openstack::config::AuthType;
    let a = &c.auth;
    let mut m = std::collections::HashMap::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    put("OS_AUTH_URL", a.auth_url.clone());
    put("OS_USERNAME", a.username.clone());
    put("OS_USER_ID", a.user_id.clone());
    put("OS_PASSWORD", a.password.as_ref().map(|s| s.expose().to_string()));
    put("OS_PROJECT_NAME", a.project_name.clone());
    put("OS_PROJECT_ID", a.project_id.clone());
    put("OS_USER_DOMAIN_NAME", a.user_domain_name.clone().or(a.domain_name.clone()));
    put("OS_USER_DOMAIN_ID", a.user_domain_id.clone().or(a.domain_id.clone()));
    put("OS_PROJECT_DOMAIN_NAME", a.project_domain_name.clone().or(a.domain_name.clone()));
    put("OS_PROJECT_DOMAIN_ID", a.project_domain_id.clone().or(a.domain_id.clone()));
    put("OS_APPLICATION_CREDENTIAL_ID", a.application_credential_id.clone());
    put("OS_APPLICATION_CREDENTIAL_NAME", a.application_credential_name.clone());
    put("OS_APPLICATION_CREDENTIAL_SECRET", a.application_credential_secret.as_ref().map(|s| s.expose().to_string()));
    put("OS_REGION_NAME", c.region_name.clone());
    put("OS_INTERFACE", Some(c.interface.clone()));
    let auth_type = match c.auth_type {
        AuthType::ApplicationCredential => "v3applicationcredential",
        AuthType::Token => "token",
        _ => "password",
    };
    put("OS_AUTH_TYPE", Some(auth_type.to_string()));
    m
}

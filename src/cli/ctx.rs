//! One file per user verb. Each command opens what it needs through `Ctx`,
//! does its work through the library modules, and prints either prose or one
//! JSON document (`--json`).

pub mod archive;
pub mod check;
pub mod demo;
pub mod forget;
pub mod glance;
pub mod index;
pub mod init;
pub mod inspect;
pub mod list;
pub mod prune;
pub mod report;
pub mod restore;
pub mod show;
pub mod sync;
pub mod unlock;

use crate::backend::{self, Backend};
use crate::cli::{Command, GlobalArgs};
use crate::index::Index;
use crate::openstack::config::CloudConfig;
use crate::openstack::glance::GlanceClient;
use crate::openstack::keystone::Session;
use crate::openstack::ratelimit::{parse_rate, RateLimiter};
use crate::openstack::Secret;
use crate::progress::Output;
use crate::repository::Repository;
use anyhow::{Context, Result};
use std::sync::Arc;

/// A failure whose details the command already printed (its JSON document
/// says `ok: false`); the exit code is still 1, but no second document follows.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AlreadyReported(pub String);

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
    use crate::openstack::config::AuthType;
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

pub fn default_repo() -> String {
    dirs::data_dir().map(|d| d.join("imgarc").join("repo").display().to_string()).unwrap_or_else(|| ".imgarc-repo".to_string())
}

pub fn dispatch(global: &GlobalArgs, command: Command) -> Result<()> {
    let ctx = Ctx { location: global.repo.clone().unwrap_or_else(default_repo), out: global.output(), global: global.clone() };
    match command {
        Command::Init(a) => init::run(&ctx, a),
        Command::Archive(a) => archive::run(&ctx, a),
        Command::List(a) => list::run(&ctx, a),
        Command::Show(a) => show::run(&ctx, a),
        Command::Restore(a) => restore::run(&ctx, a),
        Command::Inspect(a) => inspect::run(&ctx, a),
        Command::Check(a) => check::run(&ctx, a),
        Command::Index(a) => index::run(&ctx, a),
        Command::Unlock(a) => unlock::run(&ctx, a),
        Command::Glance(a) => glance::run(&ctx, a),
        Command::Demo(a) => demo::run(&ctx, a),
        Command::Sync(a) => sync::run(&ctx, a),
        Command::Forget(a) => forget::run(&ctx, a),
        Command::Prune(a) => prune::run(&ctx, a),
        Command::Report(a) => report::run(&ctx, a),
    }
}

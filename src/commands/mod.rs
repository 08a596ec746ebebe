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
use crate::openstack::Secret;
use crate::progress::Output;
use crate::repository::Repository;
use crate::{net::ratelimit::RateLimiter, util::parse_rate};
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
        opts.swift_auth = crate::openstack::repository_auth(&self.location, self.global.repo_cloud.as_deref())?;
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

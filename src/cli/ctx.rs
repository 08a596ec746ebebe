//! What every verb shares: `Ctx` opens the repository, its index cache and
//! Glance from the global options (asking the password only of an encrypted
//! repository), and prints either prose or one JSON
//! document (`--json`) on standard output.

use super::password::CliPasswords;
use super::GlobalArgs;
use crate::cli::progress::Output;
use anyhow::{Context, Result};
use imgarc::backend::{self, Backend};
use imgarc::crypto::keyfile::PasswordSource;
use imgarc::index::Index;
use imgarc::net::ratelimit::RateLimiter;
use imgarc::openstack::cinder::CinderClient;
use imgarc::openstack::config::{CloudConfig, CloudOverrides};
use imgarc::openstack::glance::GlanceClient;
use imgarc::openstack::keystone::{HttpOptions, Session};
use imgarc::openstack::Secret;
use imgarc::repository::Repository;
use imgarc::util::parse_rate;
use std::sync::Arc;

pub struct Ctx {
    pub location: String,
    pub out: Output,
    pub global: GlobalArgs,
    /// Asked only if the repository is encrypted, at most once.
    pub passwords: CliPasswords,
}

impl Ctx {
    pub fn connect(&self) -> Result<Arc<dyn Backend>> {
        self.connect_other(&self.location, self.global.repo_cloud.as_deref())
    }

    /// The backend of another repository than `--repo` (a source or a target
    /// of two-repository verbs), with the same rate limits; `repo_cloud` names
    /// the clouds.yaml entry of a `swift:` location.
    pub fn connect_other(&self, location: &str, repo_cloud: Option<&str>) -> Result<Arc<dyn Backend>> {
        let mut opts = backend::url::RemoteOptions {
            limit_upload: optional_rate(&self.global.limit_upload)?,
            limit_download: optional_rate(&self.global.limit_download)?,
            ..Default::default()
        };
        opts.swift_auth = imgarc::openstack::repository_auth(location, repo_cloud)?;
        backend::open(location, &opts)
    }

    /// A second repository (`copy --to`, `sync --copy-to`): at `location`, a `swift:` one in
    /// clouds.yaml's `cloud` (`--to-repo-cloud`), opened with `passwords`. Every error names it
    /// as the target, so a wrong password (exit 12) says which repository refused it.
    pub fn open_target(&self, location: &str, cloud: Option<&str>, passwords: &dyn PasswordSource) -> Result<Repository> {
        let opened = self.connect_other(location, cloud).and_then(|b| Repository::open_with(b, passwords));
        opened.with_context(|| format!("the target repository {location}"))
    }

    pub fn open_repo(&self) -> Result<Repository> {
        Repository::open_with(self.connect()?, &self.passwords)
    }

    /// Opens the repository and its index cache, caught up with the repository.
    pub fn open(&self) -> Result<(Repository, Index)> {
        let repo = self.open_repo()?;
        let index = Index::open(&repo).context("cannot bring the local index up to date")?;
        Ok((repo, index))
    }

    /// `open` for a command that needs no reference counts
    /// ([`Index::open_without_references`]): a cold host's first `list` or
    /// `restore` reads no snapshot's extent lists but the ones it restores.
    pub fn open_without_references(&self) -> Result<(Repository, Index)> {
        let repo = self.open_repo()?;
        let index = Index::open_without_references(&repo).context("cannot bring the local index up to date")?;
        Ok((repo, index))
    }

    /// A Glance client for `cloud` (else `--os-cloud`/`OS_CLOUD`, else `--glance-url`, else `OS_*`),
    /// with `--os-region-name`, `--os-interface`, `--os-cacert`, `--insecure` (else their `OS_*`) over the cloud's files.
    pub fn glance(&self, cloud: Option<&str>) -> Result<GlanceClient> {
        let cloud = cloud.or(self.global.os_cloud.as_deref());
        if let (None, Some(url)) = (cloud, &self.global.glance_url) {
            let token = std::env::var("OS_TOKEN").ok().filter(|t| !t.is_empty()).map(Secret::new);
            // No cloud, but the same TLS conventions: --os-cacert/--insecure, else OS_CACERT/OS_INSECURE.
            let tls = self.cloud_flags().over(CloudOverrides::from_env(&|k| std::env::var(k).ok())?);
            let http = HttpOptions { cacert: tls.cacert, insecure: tls.insecure.unwrap_or(false) };
            return Ok(GlanceClient::standalone_with(url, token, &http)?);
        }
        let config = CloudConfig::resolve_for_client(cloud, &self.cloud_flags())?;
        tracing::debug!("openstack: {}", config.describe());
        let session = Session::new(&config)?;
        Ok(GlanceClient::new(&session)?)
    }

    /// The Cinder client of the cloud `glance` talks to: the same Keystone session, its
    /// `block-storage` (else `volumev3`) endpoint. Glance reached with `--glance-url` and no
    /// Keystone has no catalog, so no Cinder.
    pub fn cinder_for(&self, glance: &GlanceClient) -> Result<CinderClient> {
        let session = glance.session().context(
            "Cinder needs Keystone credentials (--os-cloud, OS_CLOUD or OS_AUTH_URL and the other OS_* variables); --glance-url gives none",
        )?;
        Ok(CinderClient::new(session)?)
    }

    /// The OpenStack flags of the command line, each marked as coming from its flag.
    fn cloud_flags(&self) -> CloudOverrides {
        let g = &self.global;
        let mut origin = Vec::new();
        for (field, flag, given) in [
            ("region_name", "--os-region-name", g.os_region_name.is_some()),
            ("interface", "--os-interface", g.os_interface.is_some()),
            ("cacert", "--os-cacert", g.os_cacert.is_some()),
            ("insecure", "--insecure", g.insecure),
        ] {
            if given {
                origin.push((field, flag.to_string()));
            }
        }
        CloudOverrides {
            region_name: g.os_region_name.clone(),
            interface: g.os_interface.clone(),
            cacert: g.os_cacert.clone(),
            insecure: g.insecure.then_some(true),
            origin,
        }
    }

    pub fn limiter(rate: &Option<String>) -> Result<Option<RateLimiter>> {
        Ok(optional_rate(rate)?.map(RateLimiter::new))
    }

    /// Prints the JSON document, or the prose, to stdout.
    pub fn emit(&self, json: &serde_json::Value, prose: impl FnOnce() -> String) {
        let text = if self.out.json {
            serde_json::to_string_pretty(json).expect("JSON serializes") + "\n"
        } else if !self.out.quiet {
            prose()
        } else {
            return;
        };
        // A reader that stopped early (`| head`) is not a failure of the command (println! would
        // panic on the broken pipe): the rest of the document is simply not wanted.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }
}

/// A `--limit-upload`/`--limit-download` value in bytes per second, if given.
fn optional_rate(rate: &Option<String>) -> Result<Option<u64>> {
    rate.as_deref().map(|r| parse_rate(r).map_err(|e| anyhow::anyhow!("rate {r:?}: {e}"))).transpose()
}

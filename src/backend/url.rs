//! Repository URLs for remote stores and opening them.
//!
//! * `s3:https://HOST[:PORT]/BUCKET[/PREFIX]` (also `s3:http://…` for test
//!   servers). Credentials: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
//!   (+`AWS_SESSION_TOKEN`) or `AWS_PROFILE`; `AWS_REGION`; `AWS_CA_BUNDLE`.
//!   Path-style for every non-AWS host.
//! * `swift:CONTAINER[/PREFIX]`, authenticated by the [`RemoteOptions::swift_auth`]
//!   the caller supplies (the Keystone session of `--repo-cloud` or the
//!   `OS_*` variables: `openstack::repository_session`), or by a pre-issued
//!   `OS_STORAGE_URL` + `OS_AUTH_TOKEN` pair.
//!
//! [`open_remote`] stacks: store → retry → rate limit.

use super::ratelimit::RateLimitBackend;
use super::retry::{RetryBackend, RetryPolicy};
use super::s3::{S3Backend, S3Config};
use super::swift::{PreAuthenticated, SwiftAuth, SwiftBackend, SwiftConfig, SwiftSession};
use super::Backend;
use std::sync::Arc;

/// A parsed remote repository URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteUrl {
    S3 { endpoint: String, bucket: String, prefix: String },
    Swift { container: String, prefix: String },
}

/// Whether `s` names a remote repository (rather than a local path).
pub fn is_remote_url(s: &str) -> bool {
    s.starts_with("s3:") || s.starts_with("swift:")
}

fn clean_prefix(p: &str) -> anyhow::Result<String> {
    let p = p.trim_matches('/');
    if p.split('/').any(|s| s.is_empty() || s == "." || s == "..") && !p.is_empty() {
        anyhow::bail!("invalid prefix {p:?}: empty, '.' or '..' path segment");
    }
    Ok(p.to_string())
}

pub fn parse_remote_url(url: &str) -> anyhow::Result<RemoteUrl> {
    if let Some(rest) = url.strip_prefix("s3:") {
        let (scheme, after) = rest
            .split_once("://")
            .ok_or_else(|| anyhow::anyhow!("invalid repository {url:?}: expected s3:https://HOST[:PORT]/BUCKET[/PREFIX]"))?;
        if scheme != "https" && scheme != "http" {
            anyhow::bail!("invalid repository {url:?}: scheme must be https (or http)");
        }
        let (host, path) = after.split_once('/').unwrap_or((after, ""));
        if host.is_empty() || host.contains('@') {
            anyhow::bail!("invalid repository {url:?}: missing host (credentials never go into the URL)");
        }
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            anyhow::bail!("invalid repository {url:?}: missing bucket (s3:https://HOST/BUCKET[/PREFIX])");
        }
        // DNS-style names, plus the legacy upper-case/underscore names some stores allow
        if bucket.len() > 255 || !bucket.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
            anyhow::bail!("invalid bucket name {bucket:?} in {url:?}");
        }
        url::Url::parse(&format!("{scheme}://{host}/")).map_err(|e| anyhow::anyhow!("invalid repository {url:?}: {e}"))?;
        return Ok(RemoteUrl::S3 { endpoint: format!("{scheme}://{host}"), bucket: bucket.to_string(), prefix: clean_prefix(prefix)? });
    }
    if let Some(rest) = url.strip_prefix("swift:") {
        let rest = rest.trim_start_matches('/');
        let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if container.is_empty() || container.len() > 256 || container == "." || container == ".." {
            anyhow::bail!("invalid repository {url:?}: expected swift:CONTAINER[/PREFIX]");
        }
        return Ok(RemoteUrl::Swift { container: container.to_string(), prefix: clean_prefix(prefix)? });
    }
    anyhow::bail!("not a remote repository URL: {url:?} (s3:https://HOST/BUCKET[/PREFIX] or swift:CONTAINER[/PREFIX])")
}

/// An environment: variable name → value (None = unset).
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Options for [`open_remote`].
#[derive(Default, Clone)]
pub struct RemoteOptions {
    /// Bytes per second for puts / gets; None = unlimited.
    pub limit_upload: Option<u64>,
    pub limit_download: Option<u64>,
    /// None = [`RetryPolicy::default`].
    pub retry: Option<RetryPolicy>,
    /// How a Swift repository authenticates: the Keystone session (clouds.yaml
    /// / `--repo-cloud` / `OS_*`). Required for `swift:` unless the
    /// environment holds a pre-issued `OS_STORAGE_URL` + `OS_AUTH_TOKEN`.
    pub swift_auth: Option<Arc<dyn SwiftAuth>>,
    /// Read AWS_* / OS_* from here instead of the process environment.
    pub env: Option<EnvLookup>,
}

impl std::fmt::Debug for RemoteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteOptions")
            .field("limit_upload", &self.limit_upload)
            .field("limit_download", &self.limit_download)
            .field("retry", &self.retry)
            .field("swift_auth", &self.swift_auth)
            .field("env", &self.env.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// Open a remote repository URL as a backend (store → retry → rate limit).
/// Authentication problems surface at the first request, except for Swift,
/// which authenticates here so that a wrong credential fails early.
pub fn open_remote(url: &str, opts: &RemoteOptions) -> anyhow::Result<Box<dyn Backend>> {
    let process_env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let env: &dyn Fn(&str) -> Option<String> = match &opts.env {
        Some(f) => f.as_ref(),
        None => &process_env,
    };
    let store: Box<dyn Backend> = match parse_remote_url(url)? {
        RemoteUrl::S3 { endpoint, bucket, prefix } => Box::new(S3Backend::new(S3Config::from_lookup(&endpoint, &bucket, &prefix, env)?)?),
        RemoteUrl::Swift { container, prefix } => {
            let auth: Arc<dyn SwiftAuth> = match &opts.swift_auth {
                Some(a) => a.clone(),
                None => match (env("OS_STORAGE_URL"), env("OS_AUTH_TOKEN")) {
                    (Some(u), Some(t)) if env("OS_AUTH_URL").is_none() => {
                        Arc::new(PreAuthenticated(SwiftSession { token: crate::secret::Secret::new(t), storage_url: u, expires_at: None }))
                    }
                    _ => anyhow::bail!(
                        "{url}: a Swift repository needs Keystone credentials (OS_AUTH_URL and the OS_* variables, or --repo-cloud)"
                    ),
                },
            };
            let b = SwiftBackend::new(SwiftConfig::new(&container, &prefix), auth)?;
            // authenticate now, so a wrong credential fails before any work;
            // an unreachable Keystone is retried like any transient failure
            let policy = opts.retry.clone().unwrap_or_default();
            let mut attempt = 0;
            loop {
                match b.connect() {
                    Ok(()) => break,
                    Err(e) if attempt < policy.max_retries && super::retry::is_transient(&e) => {
                        attempt += 1;
                        std::thread::sleep(policy.delay(attempt, super::retry::retry_after(&e)));
                    }
                    Err(e) => return Err(anyhow::anyhow!("{url}: {e}")),
                }
            }
            Box::new(b)
        }
    };
    let retried: Box<dyn Backend> = Box::new(RetryBackend::new(store, opts.retry.clone().unwrap_or_default()));
    Ok(if opts.limit_upload.is_some() || opts.limit_download.is_some() {
        Box::new(RateLimitBackend::new(retried, opts.limit_upload, opts.limit_download))
    } else {
        retried
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3() {
        assert_eq!(
            parse_remote_url("s3:https://rgw.example.org:8443/backups/site-a/imgarc").unwrap(),
            RemoteUrl::S3 { endpoint: "https://rgw.example.org:8443".into(), bucket: "backups".into(), prefix: "site-a/imgarc".into() }
        );
        assert_eq!(
            parse_remote_url("s3:http://127.0.0.1:9000/chunks").unwrap(),
            RemoteUrl::S3 { endpoint: "http://127.0.0.1:9000".into(), bucket: "chunks".into(), prefix: "".into() }
        );
        assert_eq!(
            parse_remote_url("s3:https://s3.amazonaws.com/bkt/").unwrap(),
            RemoteUrl::S3 { endpoint: "https://s3.amazonaws.com".into(), bucket: "bkt".into(), prefix: "".into() }
        );
        for bad in [
            "s3:rgw.example.org/b",
            "s3:ftp://h/bucket",
            "s3:https://h",
            "s3:https://h/",
            "s3:https://key:secret@h/bucket",
            "s3:https://h/b!d",
            "s3:https://h/bucket/a//b",
            "s3:https://h/bucket/../x",
        ] {
            assert!(parse_remote_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn parses_swift() {
        assert_eq!(parse_remote_url("swift:backups").unwrap(), RemoteUrl::Swift { container: "backups".into(), prefix: "".into() });
        assert_eq!(
            parse_remote_url("swift:backups/host1/repo").unwrap(),
            RemoteUrl::Swift { container: "backups".into(), prefix: "host1/repo".into() }
        );
        assert!(parse_remote_url("swift:").is_err());
        assert!(parse_remote_url("/srv/repo").is_err());
        assert!(is_remote_url("swift:x") && is_remote_url("s3:https://h/b") && !is_remote_url("/srv/s3:x"));
    }

    #[test]
    fn s3_config_from_lookup() {
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AK".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("very-secret".to_string()),
            _ => None,
        };
        let c = S3Config::from_lookup("https://rgw.example.org:8443", "b", "/p/", &env).unwrap();
        assert!(c.path_style);
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.prefix, "p");
        assert!(!format!("{c:?}").contains("very-secret"));
        let c = S3Config::from_lookup("https://s3.eu-west-3.amazonaws.com", "b", "", &env).unwrap();
        assert!(!c.path_style);
        assert_eq!(c.region, "eu-west-3");
        // profile file
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("creds"),
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n[ci]\naws_access_key_id = C\naws_secret_access_key = CS\n",
        )
        .unwrap();
        let f = dir.path().join("creds").to_string_lossy().to_string();
        let env2 = |k: &str| match k {
            "AWS_SHARED_CREDENTIALS_FILE" => Some(f.clone()),
            "AWS_PROFILE" => Some("ci".to_string()),
            _ => None,
        };
        let c = S3Config::from_lookup("http://h:1", "b", "", &env2).unwrap();
        assert_eq!(c.access_key_id, "C");
        assert_eq!(c.secret_access_key.expose(), "CS");
        let none = |_: &str| None;
        let e = S3Config::from_lookup("http://h:1", "b", "", &none).unwrap_err().to_string();
        assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
    }
}

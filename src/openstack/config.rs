//! Cloud configuration, resolved the way openstacksdk / the `openstack` CLI
//! do it:
//!
//! * With a cloud name (`--os-cloud NAME`, else `OS_CLOUD`): the first file
//!   that exists of `$OS_CLIENT_CONFIG_FILE`, `./clouds.{yaml,yml,json}`,
//!   `~/.config/openstack/clouds.{yaml,yml,json}`,
//!   `/etc/openstack/clouds.{yaml,yml,json}`, deep-merged with the first
//!   existing `secure.{yaml,yml,json}` (same directories,
//!   `$OS_CLIENT_SECURE_FILE` first); secure.yaml wins on conflicts.
//!   A cloud with `profile: NAME` (or the older `cloud: NAME`) lies over the
//!   `public-clouds.NAME` entry of the first `clouds-public.{yaml,yml,json}`
//!   (same directories): the cloud's own keys win. A `regions:` list (names,
//!   or `{name, values}` maps) says which regions the cloud has: the region
//!   chosen must be one of them (the first when none is chosen), and its
//!   `values` override the cloud's settings.
//! * Without a name: the `OS_*` variables of an openrc file.
//!
//! [`CloudOverrides`] are what the client's command line says over the
//! files, as the `openstack` CLI does with its argparse defaults: region,
//! interface, CA bundle and TLS verification, from the flags
//! (`--os-region-name`, `--os-interface`, `--os-cacert`, `--insecure`), else
//! `OS_REGION_NAME`, `OS_INTERFACE`, `OS_CACERT`, `OS_INSECURE`. Precedence:
//! flag > `OS_*` > clouds.yaml (+ secure.yaml; a region's `values`) >
//! profile. The auth variables (`OS_USERNAME`, `OS_PASSWORD`, …) never
//! override a named cloud (openstacksdk's rule): a name means its files.
//!
//! Secrets end up in [`Secret`], so `{:?}` of a [`CloudConfig`] is safe to log.

use super::{Error, Result, Secret};
use std::path::{Path, PathBuf};
use yaml_serde::Value;

/// How to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    /// Keystone v3 password (`password`, `v3password`).
    Password,
    /// Keystone v3 application credential (`v3applicationcredential`, `applicationcredential`).
    ApplicationCredential,
    /// An existing token (`token`, `v3token`); rescoped to the project if one is given.
    Token,
    /// No Keystone: the image endpoint must be given (`none`, `noauth`).
    None,
}

impl AuthType {
    /// Parse an `OS_AUTH_TYPE` / `auth_type` value.
    pub fn parse(s: &str) -> Result<AuthType> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "password" | "v3password" => Ok(AuthType::Password),
            "v3applicationcredential" | "applicationcredential" | "application_credential" | "v3_application_credential" => {
                Ok(AuthType::ApplicationCredential)
            }
            "token" | "v3token" => Ok(AuthType::Token),
            "none" | "noauth" | "admin_token" => Ok(AuthType::None),
            other => Err(Error::Config(format!(
                "unsupported auth type {other:?} (supported: password, v3password, \
                 v3applicationcredential, token, v3token, none)"
            ))),
        }
    }
}

/// The `auth:` section of a cloud. Secrets are [`Secret`]s.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthConfig {
    pub auth_url: Option<String>,
    pub username: Option<String>,
    pub user_id: Option<String>,
    pub password: Option<Secret>,
    pub project_name: Option<String>,
    pub project_id: Option<String>,
    pub user_domain_name: Option<String>,
    pub user_domain_id: Option<String>,
    pub project_domain_name: Option<String>,
    pub project_domain_id: Option<String>,
    /// `domain_name`/`domain_id`: default for user and project domains.
    pub domain_name: Option<String>,
    pub domain_id: Option<String>,
    pub application_credential_id: Option<String>,
    pub application_credential_name: Option<String>,
    pub application_credential_secret: Option<Secret>,
    pub token: Option<Secret>,
    /// `endpoint` (auth_type none): the service endpoint to use.
    pub endpoint: Option<String>,
}

/// A resolved cloud: everything needed to build a [`super::keystone::Session`].
#[derive(Debug, Clone, PartialEq)]
pub struct CloudConfig {
    /// The cloud name from clouds.yaml, or `None` for OS_* variables.
    pub name: Option<String>,
    /// Where it came from (file path or "environment"), for messages.
    pub source: String,
    pub auth_type: AuthType,
    pub auth: AuthConfig,
    pub region_name: Option<String>,
    /// `public` (default), `internal` or `admin` (`publicURL` etc. accepted).
    pub interface: String,
    /// CA bundle (PEM) to trust in addition to the platform roots (Glance, Keystone and a Swift repository).
    pub cacert: Option<PathBuf>,
    /// Skip TLS verification (`OS_INSECURE=true`, `verify: false`).
    pub insecure: bool,
    /// `image_endpoint_override` / `OS_IMAGE_URL`: use this Glance URL instead of the catalog.
    pub image_endpoint_override: Option<String>,
    /// Which settings an override replaced and where it came from
    /// (`region_name from --os-region-name`), for messages.
    pub overridden: Vec<String>,
}

/// What the command line and the `OS_*` variables say over a named cloud's
/// files (see the module doc for the precedence). `None`: not said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudOverrides {
    pub region_name: Option<String>,
    pub interface: Option<String>,
    pub cacert: Option<PathBuf>,
    pub insecure: Option<bool>,
    /// Where each value came from (`--os-region-name`, `OS_REGION_NAME`), by field name.
    pub origin: Vec<(&'static str, String)>,
}

impl CloudOverrides {
    /// The `OS_REGION_NAME`, `OS_INTERFACE` (or `OS_ENDPOINT_TYPE`),
    /// `OS_CACERT` and `OS_INSECURE` variables; a non-boolean `OS_INSECURE`
    /// is an error.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<CloudOverrides> {
        let e = |k: &str| env(k).filter(|v| !v.is_empty());
        let mut o = CloudOverrides::default();
        if let Some(r) = e("OS_REGION_NAME") {
            o.region_name = Some(r);
            o.origin.push(("region_name", "OS_REGION_NAME".into()));
        }
        if let Some((var, i)) =
            e("OS_INTERFACE").map(|i| ("OS_INTERFACE", i)).or_else(|| e("OS_ENDPOINT_TYPE").map(|i| ("OS_ENDPOINT_TYPE", i)))
        {
            o.interface = Some(i);
            o.origin.push(("interface", var.into()));
        }
        if let Some(c) = e("OS_CACERT") {
            o.cacert = Some(PathBuf::from(c));
            o.origin.push(("cacert", "OS_CACERT".into()));
        }
        if let Some(v) = e("OS_INSECURE") {
            o.insecure = Some(truthy(&v).ok_or_else(|| Error::Config(format!("OS_INSECURE={v:?} is not a boolean (true/false)")))?);
            o.origin.push(("insecure", "OS_INSECURE".into()));
        }
        Ok(o)
    }

    /// Field by field, `self` where it says something, else `under`.
    pub fn over(self, under: CloudOverrides) -> CloudOverrides {
        let pick = |field: &'static str, mine: bool, a: &CloudOverrides, b: &CloudOverrides| {
            let from = if mine { a } else { b };
            from.origin.iter().filter(|(f, _)| *f == field).cloned().collect::<Vec<_>>()
        };
        let mut origin = Vec::new();
        origin.extend(pick("region_name", self.region_name.is_some(), &self, &under));
        origin.extend(pick("interface", self.interface.is_some(), &self, &under));
        origin.extend(pick("cacert", self.cacert.is_some(), &self, &under));
        origin.extend(pick("insecure", self.insecure.is_some(), &self, &under));
        CloudOverrides {
            region_name: self.region_name.or(under.region_name),
            interface: self.interface.or(under.interface),
            cacert: self.cacert.or(under.cacert),
            insecure: self.insecure.or(under.insecure),
            origin,
        }
    }

    fn origin_of(&self, field: &str) -> String {
        self.origin.iter().find(|(f, _)| *f == field).map(|(_, o)| o.clone()).unwrap_or_else(|| "an override".into())
    }

    /// Sets what this says on `cfg` (interface, CA bundle, verification; the
    /// region is chosen before, against the cloud's `regions:`).
    fn apply(&self, cfg: &mut CloudConfig) -> Result<()> {
        if let Some(i) = &self.interface {
            cfg.interface = normalize_interface(Some(i)).map_err(|e| Error::Config(format!("{} ({})", e, self.origin_of("interface"))))?;
            cfg.overridden.push(format!("interface from {}", self.origin_of("interface")));
        }
        if let Some(c) = &self.cacert {
            cfg.cacert = Some(c.clone());
            cfg.overridden.push(format!("cacert from {}", self.origin_of("cacert")));
        }
        if let Some(i) = self.insecure {
            cfg.insecure = i;
            cfg.overridden.push(format!("insecure from {}", self.origin_of("insecure")));
        }
        Ok(())
    }
}

/// Where to look for clouds.yaml and how to read the environment. `resolve`
/// uses the process environment and the standard directories; tests pass
/// their own.
pub struct Lookup<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Directories searched in order (openstacksdk: cwd, ~/.config/openstack, /etc/openstack).
    pub dirs: Vec<PathBuf>,
}

impl Lookup<'static> {
    /// The process environment and openstacksdk's search path.
    pub fn standard() -> Lookup<'static> {
        let mut dirs = Vec::new();
        if let Ok(cwd) = std::env::current_dir() {
            dirs.push(cwd);
        }
        // openstacksdk uses appdirs: $XDG_CONFIG_HOME/openstack or ~/.config/openstack
        if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
            dirs.push(PathBuf::from(x).join("openstack"));
        } else if let Some(h) = dirs::home_dir() {
            dirs.push(h.join(".config").join("openstack"));
        }
        dirs.push(PathBuf::from("/etc/openstack"));
        Lookup { env: &env_var, dirs }
    }
}

fn env_var(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

const SUFFIXES: [&str; 3] = ["yaml", "yml", "json"];

impl CloudConfig {
    /// Resolve the cloud: `os_cloud` (else `OS_CLOUD`) from clouds.yaml +
    /// secure.yaml, or else the `OS_*` variables.
    pub fn resolve(os_cloud: Option<&str>) -> Result<CloudConfig> {
        Self::resolve_with(os_cloud, &Lookup::standard())
    }

    /// [`CloudConfig::resolve`] with an explicit environment and search path.
    pub fn resolve_with(os_cloud: Option<&str>, lk: &Lookup<'_>) -> Result<CloudConfig> {
        let env = |k: &str| (lk.env)(k).filter(|v| !v.is_empty());
        let name = os_cloud.map(str::to_string).or_else(|| env("OS_CLOUD"));
        match name {
            Some(name) => Self::from_clouds_yaml(&name, lk),
            None => Self::from_env(lk.env),
        }
    }

    /// The cloud the client works with: [`CloudConfig::resolve`], then the
    /// command line's `flags` over the `OS_*` overrides over the files (see
    /// the module doc). A repository's own cloud (`--repo-cloud`) is resolved
    /// without these: the client's flags are about the images' cloud.
    pub fn resolve_for_client(os_cloud: Option<&str>, flags: &CloudOverrides) -> Result<CloudConfig> {
        Self::resolve_for_client_with(os_cloud, flags, &Lookup::standard())
    }

    /// [`CloudConfig::resolve_for_client`] with an explicit environment and search path.
    pub fn resolve_for_client_with(os_cloud: Option<&str>, flags: &CloudOverrides, lk: &Lookup<'_>) -> Result<CloudConfig> {
        let env = |k: &str| (lk.env)(k).filter(|v| !v.is_empty());
        let over = flags.clone().over(CloudOverrides::from_env(lk.env)?);
        match os_cloud.map(str::to_string).or_else(|| env("OS_CLOUD")) {
            Some(name) => Self::from_clouds_yaml_with(&name, &over, lk),
            None => {
                // The OS_* variables are the configuration itself here: only the flags lie over them.
                let mut cfg = Self::from_env(lk.env)?;
                if let Some(r) = &flags.region_name {
                    cfg.region_name = Some(r.clone());
                    cfg.overridden.push(format!("region_name from {}", flags.origin_of("region_name")));
                }
                let flags_only = CloudOverrides { region_name: None, ..flags.clone() };
                flags_only.apply(&mut cfg)?;
                cfg.validate()?;
                Ok(cfg)
            }
        }
    }

    /// Candidate files: `override_var` first, then `<dir>/<stem>.<suffix>`.
    fn candidates(stem: &str, override_var: &str, lk: &Lookup<'_>) -> Vec<PathBuf> {
        let mut v = Vec::new();
        if let Some(f) = Some(override_var).filter(|v| !v.is_empty()).and_then(|v| (lk.env)(v)).filter(|f| !f.is_empty()) {
            v.push(PathBuf::from(f));
        }
        for d in &lk.dirs {
            for s in SUFFIXES {
                v.push(d.join(format!("{stem}.{s}")));
            }
        }
        v
    }

    /// Load cloud `name` from the first clouds.yaml found (+ secure.yaml, its profile, its region).
    pub fn from_clouds_yaml(name: &str, lk: &Lookup<'_>) -> Result<CloudConfig> {
        Self::from_clouds_yaml_with(name, &CloudOverrides::default(), lk)
    }

    /// [`CloudConfig::from_clouds_yaml`] with `over` lying over the files.
    pub fn from_clouds_yaml_with(name: &str, over: &CloudOverrides, lk: &Lookup<'_>) -> Result<CloudConfig> {
        let cands = Self::candidates("clouds", "OS_CLIENT_CONFIG_FILE", lk);
        let Some(path) = cands.iter().find(|p| p.is_file()) else {
            return Err(Error::Config(format!(
                "cloud {name:?} requested but no clouds.yaml found (looked in: {})",
                cands.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            )));
        };
        let doc = read_yaml(path)?;
        let mut cloud = doc.get("clouds").and_then(|c| c.get(name)).cloned().ok_or_else(|| {
            let names: Vec<String> = doc
                .get("clouds")
                .and_then(|c| c.as_mapping())
                .map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            Error::Config(format!(
                "cloud {name:?} not found in {} (clouds there: {})",
                path.display(),
                if names.is_empty() { "none".into() } else { names.join(", ") }
            ))
        })?;
        let mut source = path.display().to_string();
        let secure = Self::candidates("secure", "OS_CLIENT_SECURE_FILE", lk);
        if let Some(sp) = secure.iter().find(|p| p.is_file()) {
            let sdoc = read_yaml(sp)?;
            if let Some(s) = sdoc.get("clouds").and_then(|c| c.get(name)) {
                merge(&mut cloud, s);
                source.push_str(&format!(" + {}", sp.display()));
            }
        }
        let mut cloud = normalize_keys(&cloud);
        if let Some(profile) = cloud.get("profile").or_else(|| cloud.get("cloud")).and_then(scalar_string) {
            let (base, from) = Self::profile(name, &profile, lk)?;
            let mut merged = normalize_keys(&base);
            merge(&mut merged, &cloud);
            cloud = merged;
            source.push_str(&format!(" + profile {profile} of {}", from.display()));
        }
        let mut overridden = Vec::new();
        let region = select_region(name, &source, &mut cloud, over)?;
        if over.region_name.is_some() {
            overridden.push(format!("region_name from {}", over.origin_of("region_name")));
        }
        if let (Some(r), Value::Mapping(m)) = (region, &mut cloud) {
            m.insert(Value::String("region_name".into()), Value::String(r));
        }
        let mut cfg = Self::from_yaml_cloud(&cloud).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("cloud {name:?} ({source}): {m}")),
            e => e,
        })?;
        cfg.name = Some(name.to_string());
        cfg.source = source;
        cfg.overridden = overridden;
        over.apply(&mut cfg)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The `public-clouds.<profile>` entry of the first clouds-public.yaml
    /// found, and that file. Profiles built into openstacksdk are not known
    /// here: one must be in such a file.
    fn profile(cloud: &str, profile: &str, lk: &Lookup<'_>) -> Result<(Value, PathBuf)> {
        let cands = Self::candidates("clouds-public", "", lk);
        let Some(path) = cands.iter().find(|p| p.is_file()) else {
            return Err(Error::Config(format!(
                "cloud {cloud:?} uses profile {profile:?} but no clouds-public.yaml was found (looked in: {})",
                cands.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            )));
        };
        let doc = read_yaml(path)?;
        let profiles = doc.get("public-clouds").or_else(|| doc.get("public_clouds"));
        match profiles.and_then(|p| p.get(profile)) {
            Some(p) => Ok((p.clone(), path.clone())),
            None => {
                let names: Vec<String> = profiles
                    .and_then(|c| c.as_mapping())
                    .map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                Err(Error::Config(format!(
                    "cloud {cloud:?}: profile {profile:?} not found in {} (profiles there: {})",
                    path.display(),
                    if names.is_empty() { "none".into() } else { names.join(", ") }
                )))
            }
        }
    }

    /// Build from one `clouds.<name>` mapping (already merged with secure.yaml).
    pub fn from_yaml_cloud(cloud: &Value) -> Result<CloudConfig> {
        let cloud = normalize_keys(cloud);
        let s = |v: Option<&Value>| v.and_then(scalar_string);
        let auth_v = cloud.get("auth").cloned().unwrap_or(Value::Null);
        let a = |k: &str| s(auth_v.get(k));
        let auth = AuthConfig {
            auth_url: a("auth_url"),
            username: a("username"),
            user_id: a("user_id"),
            password: a("password").map(Secret::new),
            project_name: a("project_name").or_else(|| a("tenant_name")),
            project_id: a("project_id").or_else(|| a("tenant_id")),
            user_domain_name: a("user_domain_name"),
            user_domain_id: a("user_domain_id"),
            project_domain_name: a("project_domain_name"),
            project_domain_id: a("project_domain_id"),
            domain_name: a("domain_name"),
            domain_id: a("domain_id"),
            application_credential_id: a("application_credential_id"),
            application_credential_name: a("application_credential_name"),
            application_credential_secret: a("application_credential_secret").map(Secret::new),
            token: a("token").map(Secret::new),
            endpoint: a("endpoint"),
        };
        let region = s(cloud.get("region_name")).or_else(|| {
            // `regions: [a, b]` or `regions: [{name: a}]`: openstacksdk takes the first
            cloud
                .get("regions")
                .and_then(|r| r.as_sequence())
                .and_then(|r| r.first())
                .and_then(|r| scalar_string(r).or_else(|| r.get("name").and_then(scalar_string)))
        });
        let insecure = match cloud.get("verify") {
            Some(v) => !truthy_value(v).unwrap_or(true),
            None => cloud.get("insecure").and_then(truthy_value).unwrap_or(false),
        };
        let auth_type = match s(cloud.get("auth_type")) {
            Some(t) => AuthType::parse(&t)?,
            None => infer_auth_type(&auth),
        };
        let cfg = CloudConfig {
            name: None,
            source: String::new(),
            auth_type,
            auth,
            region_name: region,
            interface: normalize_interface(s(cloud.get("interface")).or_else(|| s(cloud.get("endpoint_type"))).as_deref())?,
            cacert: s(cloud.get("cacert")).map(PathBuf::from),
            insecure,
            image_endpoint_override: s(cloud.get("image_endpoint_override")),
            overridden: Vec::new(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// What this configuration is, for error messages: cloud, file(s),
    /// auth_url, region, interface, project and user (ids or names), and
    /// what an override set. Never a secret.
    pub fn describe(&self) -> String {
        let a = &self.auth;
        let mut s = match &self.name {
            Some(n) => format!("cloud {n} ({})", self.source),
            None => self.source.clone(),
        };
        let mut field = |k: &str, v: Option<&str>| {
            if let Some(v) = v {
                s.push_str(&format!(", {k} {v}"));
            }
        };
        // An auth_url could carry user:password@ (never needed for Keystone): shown without it.
        let auth_url = a.auth_url.as_deref().map(|u| match url::Url::parse(u) {
            Ok(mut p) if !p.username().is_empty() || p.password().is_some() => {
                let _ = p.set_username("");
                let _ = p.set_password(None);
                p.to_string()
            }
            _ => u.to_string(),
        });
        field("auth_url", auth_url.as_deref());
        field("region", Some(self.region_name.as_deref().unwrap_or("(any)")));
        field("interface", Some(&self.interface));
        field("project", a.project_name.as_deref().or(a.project_id.as_deref()));
        field("project domain", a.project_domain_name.as_deref().or(a.project_domain_id.as_deref()));
        field("user", a.username.as_deref().or(a.user_id.as_deref()));
        field("user domain", a.user_domain_name.as_deref().or(a.user_domain_id.as_deref()));
        field("application credential", a.application_credential_id.as_deref().or(a.application_credential_name.as_deref()));
        if !self.overridden.is_empty() {
            s.push_str(&format!(" ({})", self.overridden.join(", ")));
        }
        s
    }

    /// Build from openrc-style `OS_*` variables.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<CloudConfig> {
        let e = |k: &str| env(k).filter(|v| !v.is_empty());
        let auth = AuthConfig {
            auth_url: e("OS_AUTH_URL"),
            username: e("OS_USERNAME"),
            user_id: e("OS_USER_ID"),
            password: e("OS_PASSWORD").map(Secret::new),
            project_name: e("OS_PROJECT_NAME").or_else(|| e("OS_TENANT_NAME")),
            project_id: e("OS_PROJECT_ID").or_else(|| e("OS_TENANT_ID")),
            user_domain_name: e("OS_USER_DOMAIN_NAME"),
            user_domain_id: e("OS_USER_DOMAIN_ID"),
            project_domain_name: e("OS_PROJECT_DOMAIN_NAME"),
            project_domain_id: e("OS_PROJECT_DOMAIN_ID"),
            domain_name: e("OS_DOMAIN_NAME"),
            domain_id: e("OS_DOMAIN_ID"),
            application_credential_id: e("OS_APPLICATION_CREDENTIAL_ID"),
            application_credential_name: e("OS_APPLICATION_CREDENTIAL_NAME"),
            application_credential_secret: e("OS_APPLICATION_CREDENTIAL_SECRET").map(Secret::new),
            token: e("OS_TOKEN").map(Secret::new),
            endpoint: e("OS_ENDPOINT"),
        };
        if auth.auth_url.is_none() && e("OS_AUTH_TYPE").is_none() {
            return Err(Error::Config(
                "no cloud configured: pass --os-cloud NAME (or set OS_CLOUD) for clouds.yaml, \
                 or source an openrc file that sets OS_AUTH_URL"
                    .into(),
            ));
        }
        let auth_type = match e("OS_AUTH_TYPE") {
            Some(t) => AuthType::parse(&t)?,
            None => infer_auth_type(&auth),
        };
        let insecure = match e("OS_INSECURE") {
            Some(v) => truthy(&v).ok_or_else(|| Error::Config(format!("OS_INSECURE={v:?} is not a boolean (true/false)")))?,
            None => false,
        };
        let cfg = CloudConfig {
            name: None,
            source: "environment (OS_*)".into(),
            auth_type,
            auth,
            region_name: e("OS_REGION_NAME"),
            interface: normalize_interface(e("OS_INTERFACE").or_else(|| e("OS_ENDPOINT_TYPE")).as_deref())?,
            cacert: e("OS_CACERT").map(PathBuf::from),
            insecure,
            image_endpoint_override: e("OS_IMAGE_URL").or_else(|| e("OS_IMAGE_ENDPOINT")),
            overridden: Vec::new(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check that the chosen auth type has what it needs; errors name the
    /// missing setting, never a value.
    pub fn validate(&self) -> Result<()> {
        let a = &self.auth;
        let miss = |what: &str| {
            Err(Error::Config(format!(
                "auth type {:?} needs {what} ({})",
                self.auth_type,
                if self.source.is_empty() { "clouds.yaml" } else { &self.source }
            )))
        };
        if self.auth_type != AuthType::None && a.auth_url.is_none() {
            return miss("auth_url (OS_AUTH_URL)");
        }
        match self.auth_type {
            AuthType::Password => {
                if a.username.is_none() && a.user_id.is_none() {
                    return miss("username or user_id (OS_USERNAME / OS_USER_ID)");
                }
                if a.password.is_none() {
                    return miss("password (OS_PASSWORD)");
                }
            }
            AuthType::ApplicationCredential => {
                if a.application_credential_secret.is_none() {
                    return miss("application_credential_secret (OS_APPLICATION_CREDENTIAL_SECRET)");
                }
                if a.application_credential_id.is_none()
                    && (a.application_credential_name.is_none() || (a.username.is_none() && a.user_id.is_none()))
                {
                    return miss("application_credential_id, or application_credential_name with username/user_id");
                }
            }
            AuthType::Token => {
                if a.token.is_none() {
                    return miss("token (OS_TOKEN)");
                }
            }
            AuthType::None => {
                if a.endpoint.is_none() && self.image_endpoint_override.is_none() {
                    return miss("endpoint or image_endpoint_override (OS_ENDPOINT / OS_IMAGE_URL)");
                }
            }
        }
        Ok(())
    }

    /// Every secret value of this config (for scrubbing server messages).
    pub fn secrets(&self) -> Vec<Secret> {
        [&self.auth.password, &self.auth.application_credential_secret, &self.auth.token]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect()
    }
}

/// The region of a named cloud: the override's, else `region_name`, else the
/// first of `regions:`. With a `regions:` list it must be one of them, and
/// its `values` are merged over the cloud (openstacksdk's rule).
fn select_region(name: &str, source: &str, cloud: &mut Value, over: &CloudOverrides) -> Result<Option<String>> {
    let listed: Vec<(String, Option<Value>)> = cloud
        .get("regions")
        .and_then(|r| r.as_sequence())
        .into_iter()
        .flatten()
        .map(|r| match scalar_string(r) {
            Some(n) => Ok((n, None)),
            None => r
                .get("name")
                .and_then(scalar_string)
                .map(|n| (n, r.get("values").cloned()))
                .ok_or_else(|| Error::Config(format!("cloud {name:?} ({source}): an entry of regions: has no name"))),
        })
        .collect::<Result<_>>()?;
    let chosen = over
        .region_name
        .clone()
        .or_else(|| cloud.get("region_name").and_then(scalar_string))
        .or_else(|| listed.first().map(|r| r.0.clone()));
    let Some(region) = chosen else { return Ok(None) };
    if listed.is_empty() {
        return Ok(Some(region));
    }
    let Some((_, values)) = listed.iter().find(|r| r.0 == region) else {
        let from = if over.region_name.is_some() { format!(" (from {})", over.origin_of("region_name")) } else { String::new() };
        return Err(Error::Config(format!(
            "cloud {name:?} ({source}): region {region:?}{from} is not one of its regions: {}",
            listed.iter().map(|r| r.0.as_str()).collect::<Vec<_>>().join(", ")
        )));
    };
    if let Some(v) = values {
        merge(cloud, &normalize_keys(v));
    }
    Ok(Some(region))
}

/// openstacksdk's default when no auth type is given is `password`; an
/// application credential or a lone token implies those types.
fn infer_auth_type(a: &AuthConfig) -> AuthType {
    if a.application_credential_secret.is_some() && (a.application_credential_id.is_some() || a.application_credential_name.is_some()) {
        AuthType::ApplicationCredential
    } else if a.token.is_some() && a.password.is_none() {
        AuthType::Token
    } else {
        AuthType::Password
    }
}

/// `public`/`publicURL` → `public`, etc.
pub fn normalize_interface(s: Option<&str>) -> Result<String> {
    let s = s.unwrap_or("public").trim().to_ascii_lowercase();
    let s = s.strip_suffix("url").unwrap_or(&s).to_string();
    match s.as_str() {
        "public" | "internal" | "admin" => Ok(s),
        _ => Err(Error::Config(format!("interface {s:?} is not public, internal or admin"))),
    }
}

/// Parse a boolean the way oslo / openstacksdk accept them.
pub fn truthy(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" | "t" => Some(true),
        "0" | "false" | "no" | "off" | "n" | "f" => Some(false),
        _ => None,
    }
}

fn truthy_value(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => truthy(s),
        Value::Number(n) => n.as_i64().map(|n| n != 0),
        _ => None,
    }
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn read_yaml(p: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(p).map_err(|e| Error::Config(format!("cannot read {}: {e}", p.display())))?;
    // YAML is a superset of JSON, so clouds.json parses too. The parser's
    // message gives a position, not the content, so no secret leaks.
    let mut doc: Value = yaml_serde::from_str(&text).map_err(|e| Error::Config(format!("cannot parse {}: {e}", p.display())))?;
    // openstacksdk (PyYAML) honours merge keys, so clouds.yaml files share
    // settings with `<<: *anchor`; the parser only expands the aliases.
    doc.apply_merge().map_err(|e| Error::Config(format!("cannot apply the merge keys (<<) of {}: {e}", p.display())))?;
    Ok(doc)
}

/// Deep merge `over` into `base` (mappings merge, everything else replaces).
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(bv) => merge(bv, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// openstacksdk accepts `auth-url` as well as `auth_url`.
fn normalize_keys(v: &Value) -> Value {
    match v {
        Value::Mapping(m) => Value::Mapping(
            m.iter()
                .map(|(k, v)| {
                    let k = match k {
                        Value::String(s) => Value::String(s.replace('-', "_")),
                        k => k.clone(),
                    };
                    (k, normalize_keys(v))
                })
                .collect(),
        ),
        v => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup<'a>(env: &'a dyn Fn(&str) -> Option<String>, dirs: &[&Path]) -> Lookup<'a> {
        Lookup { env, dirs: dirs.iter().map(|d| d.to_path_buf()).collect() }
    }

    fn envmap(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const CLOUDS: &str = r#"
clouds:
  prod:
    auth:
      auth_url: https://keystone.example:5000/v3
      username: alice
      project_name: web
      user_domain_name: Default
      project_domain_id: default
    region_name: RegionTwo
    interface: internal
    cacert: /etc/ssl/prod.pem
  appcred:
    auth_type: v3applicationcredential
    auth:
      auth-url: https://k2:5000
      application_credential_id: ac123
      application_credential_secret: s3cr3t-appcred
    regions: [R9, R10]
    verify: false
"#;
    const SECURE: &str = r#"
clouds:
  prod:
    auth:
      password: hunter2-very-secret
"#;

    #[test]
    fn clouds_yaml_merged_with_secure_yaml() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("clouds.yaml"), CLOUDS).unwrap();
        std::fs::write(d.path().join("secure.yaml"), SECURE).unwrap();
        let env = |_: &str| None;
        let c = CloudConfig::resolve_with(Some("prod"), &lookup(&env, &[d.path()])).unwrap();
        assert_eq!(c.name.as_deref(), Some("prod"));
        assert_eq!(c.auth_type, AuthType::Password);
        assert_eq!(c.auth.password.as_ref().unwrap().expose(), "hunter2-very-secret");
        assert_eq!(c.auth.username.as_deref(), Some("alice"));
        assert_eq!(c.region_name.as_deref(), Some("RegionTwo"));
        assert_eq!(c.interface, "internal");
        assert_eq!(c.cacert.as_deref(), Some(Path::new("/etc/ssl/prod.pem")));
        assert!(!c.insecure);
        assert!(c.source.contains("secure.yaml"), "{}", c.source);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("***"));

        let a = CloudConfig::resolve_with(Some("appcred"), &lookup(&env, &[d.path()])).unwrap();
        assert_eq!(a.auth_type, AuthType::ApplicationCredential);
        assert_eq!(a.auth.auth_url.as_deref(), Some("https://k2:5000"));
        assert_eq!(a.region_name.as_deref(), Some("R9"));
        assert!(a.insecure);
        assert!(!format!("{a:?}").contains("s3cr3t"));
    }

    #[test]
    fn yaml_merge_keys_are_honoured() {
        // The shape openstacksdk users write: shared settings behind an anchor,
        // clouds that merge them in and override or extend some keys.
        const ANCHORED: &str = r#"
defaults: &defaults
  auth_type: password
  region_name: RegionOne
  interface: internal
common_auth: &common_auth
  auth_url: https://keystone.example:5000/v3
  username: alice
  password: merged-secret
  user_domain_name: Default
clouds:
  prod:
    <<: *defaults
    auth:
      <<: *common_auth
      project_name: web
  staging:
    <<: *defaults
    region_name: RegionTwo
    auth:
      <<: *common_auth
      username: bob
      project_name: staging
"#;
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("clouds.yaml"), ANCHORED).unwrap();
        let env = |_: &str| None;
        let p = CloudConfig::resolve_with(Some("prod"), &lookup(&env, &[d.path()])).unwrap();
        assert_eq!(p.auth_type, AuthType::Password);
        assert_eq!(p.region_name.as_deref(), Some("RegionOne"));
        assert_eq!(p.interface, "internal");
        assert_eq!(p.auth.auth_url.as_deref(), Some("https://keystone.example:5000/v3"));
        assert_eq!(p.auth.username.as_deref(), Some("alice"));
        assert_eq!(p.auth.password.as_ref().unwrap().expose(), "merged-secret");
        assert_eq!(p.auth.user_domain_name.as_deref(), Some("Default"));
        assert_eq!(p.auth.project_name.as_deref(), Some("web"));
        // the cloud's own keys win over the merged ones
        let s = CloudConfig::resolve_with(Some("staging"), &lookup(&env, &[d.path()])).unwrap();
        assert_eq!(s.region_name.as_deref(), Some("RegionTwo"));
        assert_eq!(s.auth.username.as_deref(), Some("bob"));
        assert_eq!(s.auth.project_name.as_deref(), Some("staging"));
        assert_eq!(s.auth.auth_url.as_deref(), Some("https://keystone.example:5000/v3"));
    }

    #[test]
    fn search_order_and_os_client_config_file() {
        let cwd = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let etc = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let mk = |dir: &Path, file: &str, region: &str| {
            std::fs::write(
                dir.join(file),
                format!("clouds:\n  c:\n    auth: {{auth_url: 'http://k', username: u, password: p}}\n    region_name: {region}\n"),
            )
            .unwrap();
        };
        mk(home.path(), "clouds.yaml", "home");
        mk(etc.path(), "clouds.yaml", "etc");
        let env = |_: &str| None;
        let dirs = [cwd.path(), home.path(), etc.path()];
        let region =
            |env: &dyn Fn(&str) -> Option<String>| CloudConfig::resolve_with(Some("c"), &lookup(env, &dirs)).unwrap().region_name.unwrap();
        assert_eq!(region(&env), "home");
        // .yml in an earlier directory wins over .yaml in a later one
        mk(cwd.path(), "clouds.yml", "cwd");
        assert_eq!(region(&env), "cwd");
        // OS_CLIENT_CONFIG_FILE comes first of all
        let f = other.path().join("mine.yaml");
        mk(other.path(), "mine.yaml", "override");
        let fp = f.display().to_string();
        let env2 = move |k: &str| (k == "OS_CLIENT_CONFIG_FILE").then(|| fp.clone());
        assert_eq!(region(&env2), "override");
        // OS_CLOUD is used when no name is passed
        let env3 = |k: &str| (k == "OS_CLOUD").then(|| "c".to_string());
        let c = CloudConfig::resolve_with(None, &lookup(&env3, &dirs)).unwrap();
        assert_eq!(c.region_name.as_deref(), Some("cwd"));
        // unknown cloud: error lists the clouds there
        let e = CloudConfig::resolve_with(Some("nope"), &lookup(&env, &dirs)).unwrap_err().to_string();
        assert!(e.contains("\"nope\"") && e.contains("clouds there: c"), "{e}");
        // no file at all
        let empty = tempfile::tempdir().unwrap();
        let e = CloudConfig::resolve_with(Some("c"), &lookup(&env, &[empty.path()])).unwrap_err().to_string();
        assert!(e.contains("no clouds.yaml"), "{e}");
    }

    #[test]
    fn openrc_env() {
        let m = envmap(&[
            ("OS_AUTH_URL", "http://127.0.0.1:5000/v3"),
            ("OS_USERNAME", "admin"),
            ("OS_PASSWORD", "pa55-w0rd-xyz"),
            ("OS_PROJECT_NAME", "admin"),
            ("OS_USER_DOMAIN_ID", "default"),
            ("OS_PROJECT_DOMAIN_ID", "default"),
            ("OS_REGION_NAME", "RegionOne"),
            ("OS_INTERFACE", "publicURL"),
            ("OS_CACERT", "/tmp/ca.pem"),
            ("OS_INSECURE", "true"),
        ]);
        let env = |k: &str| m.get(k).cloned();
        let c = CloudConfig::resolve_with(None, &lookup(&env, &[])).unwrap();
        assert_eq!(c.auth_type, AuthType::Password);
        assert_eq!(c.auth.project_name.as_deref(), Some("admin"));
        assert_eq!(c.auth.user_domain_id.as_deref(), Some("default"));
        assert_eq!(c.region_name.as_deref(), Some("RegionOne"));
        assert_eq!(c.interface, "public");
        assert!(c.insecure);
        assert_eq!(c.cacert, Some(PathBuf::from("/tmp/ca.pem")));
        assert!(!format!("{c:?}").contains("pa55"));
        assert_eq!(c.secrets().len(), 1);
    }

    #[test]
    fn auth_type_selection() {
        let base = [("OS_AUTH_URL", "http://k/v3")];
        let cfg = |extra: &[(&str, &str)]| {
            let mut m = envmap(&base);
            m.extend(envmap(extra));
            CloudConfig::from_env(&move |k: &str| m.get(k).cloned())
        };
        let ac = cfg(&[("OS_APPLICATION_CREDENTIAL_ID", "i"), ("OS_APPLICATION_CREDENTIAL_SECRET", "s")]).unwrap();
        assert_eq!(ac.auth_type, AuthType::ApplicationCredential);
        let tok = cfg(&[("OS_TOKEN", "gAAAA")]).unwrap();
        assert_eq!(tok.auth_type, AuthType::Token);
        let pw = cfg(&[("OS_USERNAME", "u"), ("OS_PASSWORD", "p")]).unwrap();
        assert_eq!(pw.auth_type, AuthType::Password);
        let v3 = cfg(&[("OS_AUTH_TYPE", "v3token"), ("OS_TOKEN", "t"), ("OS_PASSWORD", "p")]).unwrap();
        assert_eq!(v3.auth_type, AuthType::Token);
        let none = cfg(&[("OS_AUTH_TYPE", "none"), ("OS_ENDPOINT", "http://glance:9292")]).unwrap();
        assert_eq!(none.auth_type, AuthType::None);
        let e = cfg(&[("OS_AUTH_TYPE", "v3oidc")]).unwrap_err().to_string();
        assert!(e.contains("unsupported auth type"), "{e}");
        let e = cfg(&[("OS_USERNAME", "u")]).unwrap_err().to_string();
        assert!(e.contains("needs password"), "{e}");
        let e = cfg(&[("OS_AUTH_TYPE", "v3applicationcredential"), ("OS_APPLICATION_CREDENTIAL_SECRET", "zzzz-secret")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("application_credential_id") && !e.contains("zzzz"), "{e}");
        let e = cfg(&[("OS_INSECURE", "maybe"), ("OS_TOKEN", "t")]).unwrap_err().to_string();
        assert!(e.contains("OS_INSECURE"), "{e}");
        let e = CloudConfig::from_env(&|_| None).unwrap_err().to_string();
        assert!(e.contains("OS_AUTH_URL") && e.contains("--os-cloud"), "{e}");
    }

    fn flags(region: Option<&str>, interface: Option<&str>, cacert: Option<&str>, insecure: bool) -> CloudOverrides {
        let mut origin = Vec::new();
        for (f, name, given) in [
            ("region_name", "--os-region-name", region.is_some()),
            ("interface", "--os-interface", interface.is_some()),
            ("cacert", "--os-cacert", cacert.is_some()),
            ("insecure", "--insecure", insecure),
        ] {
            if given {
                origin.push((f, name.to_string()));
            }
        }
        CloudOverrides {
            region_name: region.map(str::to_string),
            interface: interface.map(str::to_string),
            cacert: cacert.map(PathBuf::from),
            insecure: insecure.then_some(true),
            origin,
        }
    }

    #[test]
    fn os_variables_override_a_named_cloud_but_not_its_auth() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("clouds.yaml"), CLOUDS).unwrap();
        std::fs::write(d.path().join("secure.yaml"), SECURE).unwrap();
        let m = envmap(&[
            ("OS_REGION_NAME", "RegionEnv"),
            ("OS_INTERFACE", "adminURL"),
            ("OS_CACERT", "/env/ca.pem"),
            ("OS_INSECURE", "yes"),
            ("OS_USERNAME", "mallory"),
            ("OS_PASSWORD", "env-password-not-used"),
            ("OS_AUTH_URL", "http://evil.example/v3"),
        ]);
        let env = |k: &str| m.get(k).cloned();
        let none = CloudOverrides::default();
        let c = CloudConfig::resolve_for_client_with(Some("prod"), &none, &lookup(&env, &[d.path()])).unwrap();
        assert_eq!(c.region_name.as_deref(), Some("RegionEnv"));
        assert_eq!(c.interface, "admin");
        assert_eq!(c.cacert.as_deref(), Some(Path::new("/env/ca.pem")));
        assert!(c.insecure);
        // A named cloud's credentials come from its files only.
        assert_eq!(c.auth.username.as_deref(), Some("alice"));
        assert_eq!(c.auth.password.as_ref().unwrap().expose(), "hunter2-very-secret");
        assert_eq!(c.auth.auth_url.as_deref(), Some("https://keystone.example:5000/v3"));
        assert!(c.overridden.iter().any(|o| o == "region_name from OS_REGION_NAME"), "{:?}", c.overridden);
        // The flags win over the variables.
        let f = flags(Some("RegionFlag"), Some("public"), Some("/flag/ca.pem"), false);
        let c = CloudConfig::resolve_for_client_with(Some("prod"), &f, &lookup(&env, &[d.path()])).unwrap();
        assert_eq!(c.region_name.as_deref(), Some("RegionFlag"));
        assert_eq!(c.interface, "public");
        assert_eq!(c.cacert.as_deref(), Some(Path::new("/flag/ca.pem")));
        assert!(c.insecure, "OS_INSECURE still applies: --insecure was not given");
        assert!(
            c.describe().contains("region RegionFlag") && c.describe().contains("region_name from --os-region-name"),
            "{}",
            c.describe()
        );
        // Without overrides the files say it all (what `resolve` gives a repository's cloud).
        let c = CloudConfig::resolve_with(Some("prod"), &lookup(&env, &[d.path()])).unwrap();
        assert_eq!((c.region_name.as_deref(), c.interface.as_str(), c.insecure), (Some("RegionTwo"), "internal", false));
        // A bad override names where it came from.
        let e = CloudConfig::resolve_for_client_with(Some("prod"), &flags(None, Some("private"), None, false), &lookup(&env, &[d.path()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("private") && e.contains("--os-interface"), "{e}");
        let bad = envmap(&[("OS_INSECURE", "sometimes")]);
        let benv = |k: &str| bad.get(k).cloned();
        let e = CloudConfig::resolve_for_client_with(Some("prod"), &none, &lookup(&benv, &[d.path()])).unwrap_err().to_string();
        assert!(e.contains("OS_INSECURE"), "{e}");
    }

    #[test]
    fn flags_over_an_openrc() {
        let m = envmap(&[
            ("OS_AUTH_URL", "http://k/v3"),
            ("OS_USERNAME", "u"),
            ("OS_PASSWORD", "p-secret-77"),
            ("OS_REGION_NAME", "R1"),
            ("OS_INTERFACE", "internal"),
        ]);
        let env = |k: &str| m.get(k).cloned();
        let c = CloudConfig::resolve_for_client_with(None, &CloudOverrides::default(), &lookup(&env, &[])).unwrap();
        assert_eq!((c.region_name.as_deref(), c.interface.as_str()), (Some("R1"), "internal"));
        let c = CloudConfig::resolve_for_client_with(None, &flags(Some("R2"), Some("admin"), None, true), &lookup(&env, &[])).unwrap();
        assert_eq!((c.region_name.as_deref(), c.interface.as_str(), c.insecure), (Some("R2"), "admin", true));
        assert!(!c.describe().contains("p-secret-77"));
    }

    #[test]
    fn profiles_from_clouds_public_yaml() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("clouds-public.yaml"),
            r#"
public-clouds:
  acme:
    auth:
      auth_url: https://identity.acme.example/v3
      user_domain_name: AcmeUsers
    regions: [north, south]
    interface: internal
    image_endpoint_override: https://glance.acme.example
"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("clouds.yaml"),
            r#"
clouds:
  mine:
    profile: acme
    auth: {username: bob, password: bob-secret-1, project_name: p}
    interface: public
  older:
    cloud: acme
    region_name: south
    auth: {username: carol, password: carol-secret-2, project_name: q}
  missing:
    profile: nowhere
    auth: {username: u, password: p}
"#,
        )
        .unwrap();
        let env = |_: &str| None;
        let lk = lookup(&env, &[d.path()]);
        let c = CloudConfig::resolve_with(Some("mine"), &lk).unwrap();
        assert_eq!(c.auth.auth_url.as_deref(), Some("https://identity.acme.example/v3"), "from the profile");
        assert_eq!(c.auth.user_domain_name.as_deref(), Some("AcmeUsers"), "auth sections merge");
        assert_eq!(c.auth.username.as_deref(), Some("bob"));
        assert_eq!(c.interface, "public", "the cloud's own key wins over the profile's");
        assert_eq!(c.region_name.as_deref(), Some("north"), "the first of the profile's regions");
        assert_eq!(c.image_endpoint_override.as_deref(), Some("https://glance.acme.example"));
        assert!(c.source.contains("profile acme") && c.source.contains("clouds-public.yaml"), "{}", c.source);
        let o = CloudConfig::resolve_with(Some("older"), &lk).unwrap();
        assert_eq!(o.region_name.as_deref(), Some("south"));
        assert_eq!(o.interface, "internal");
        let e = CloudConfig::resolve_with(Some("missing"), &lk).unwrap_err().to_string();
        assert!(e.contains("\"nowhere\"") && e.contains("profiles there: acme"), "{e}");
        // A profile and no clouds-public.yaml anywhere: the error says where it looked.
        let e2 = tempfile::tempdir().unwrap();
        std::fs::copy(d.path().join("clouds.yaml"), e2.path().join("clouds.yaml")).unwrap();
        let e = CloudConfig::resolve_with(Some("mine"), &lookup(&env, &[e2.path()])).unwrap_err().to_string();
        assert!(e.contains("no clouds-public.yaml") && e.contains("clouds-public.yml"), "{e}");
    }

    #[test]
    fn regions_lists_bound_the_region_and_their_values_override() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("clouds.yaml"),
            r#"
clouds:
  multi:
    auth: {auth_url: "http://k/v3", username: u, password: pw-secret-3}
    interface: public
    regions:
      - east
      - name: west
        values:
          interface: internal
          image_endpoint_override: http://glance-west:9292
  pinned:
    auth: {auth_url: "http://k/v3", username: u, password: pw}
    region_name: central
    regions: [east, west]
"#,
        )
        .unwrap();
        let env = |_: &str| None;
        let lk = lookup(&env, &[d.path()]);
        let none = CloudOverrides::default();
        let c = CloudConfig::resolve_for_client_with(Some("multi"), &none, &lk).unwrap();
        assert_eq!((c.region_name.as_deref(), c.interface.as_str()), (Some("east"), "public"));
        assert!(c.image_endpoint_override.is_none());
        let w = CloudConfig::resolve_for_client_with(Some("multi"), &flags(Some("west"), None, None, false), &lk).unwrap();
        assert_eq!((w.region_name.as_deref(), w.interface.as_str()), (Some("west"), "internal"));
        assert_eq!(w.image_endpoint_override.as_deref(), Some("http://glance-west:9292"));
        // A flag still beats the region's values.
        let w = CloudConfig::resolve_for_client_with(Some("multi"), &flags(Some("west"), Some("admin"), None, false), &lk).unwrap();
        assert_eq!(w.interface, "admin");
        let e = CloudConfig::resolve_for_client_with(Some("multi"), &flags(Some("south"), None, None, false), &lk).unwrap_err().to_string();
        assert!(e.contains("\"south\"") && e.contains("--os-region-name") && e.contains("east, west") && e.contains("clouds.yaml"), "{e}");
        let e = CloudConfig::resolve_with(Some("pinned"), &lk).unwrap_err().to_string();
        assert!(e.contains("\"central\"") && e.contains("east, west"), "{e}");
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn describe_names_what_was_used_and_no_secret() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("clouds.yaml"), CLOUDS).unwrap();
        std::fs::write(d.path().join("secure.yaml"), SECURE).unwrap();
        let env = |_: &str| None;
        let c = CloudConfig::resolve_with(Some("prod"), &lookup(&env, &[d.path()])).unwrap();
        let s = c.describe();
        for want in [
            "cloud prod",
            "clouds.yaml",
            "secure.yaml",
            "auth_url https://keystone.example:5000/v3",
            "region RegionTwo",
            "interface internal",
            "project web",
            "user alice",
        ] {
            assert!(s.contains(want), "{want:?} missing in {s}");
        }
        assert!(!s.contains("hunter2"), "{s}");
        let a = CloudConfig::resolve_with(Some("appcred"), &lookup(&env, &[d.path()])).unwrap().describe();
        assert!(a.contains("application credential ac123") && !a.contains("s3cr3t"), "{a}");
        let mut odd = c.clone();
        odd.auth.auth_url = Some("https://bob:url-secret-9@keystone.example/v3".into());
        let d = odd.describe();
        assert!(d.contains("keystone.example/v3") && !d.contains("url-secret-9") && !d.contains("bob"), "{d}");
    }

    #[test]
    fn secret_redaction() {
        let s = Secret::new("topsecret");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "topsecret");
        let a = AuthConfig { password: Some("topsecret".into()), token: Some("tok-123".into()), ..Default::default() };
        let d = format!("{a:?} {a:#?}");
        assert!(!d.contains("topsecret") && !d.contains("tok-123"), "{d}");
    }
}

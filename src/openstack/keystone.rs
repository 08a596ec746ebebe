//! The one Keystone v3 session of the crate: authenticates (password,
//! application credential, token), keeps the service catalog, renews the
//! token before it expires (or once after a 401), and owns the configured
//! HTTP client (the cloud's `cacert` / `verify`). Glance uses it directly;
//! the Swift repository backend gets it as a [`SwiftAuth`], so one cloud's
//! configuration means the same credentials, domain, TLS settings and
//! token for both.

use super::config::{AuthType, CloudConfig};
use super::{describe_reqwest, short_body, Error, Result, Secret};
use crate::backend::swift::{AuthFailure, SwiftAuth, SwiftSession};
use crate::net::retry::{is_transient_status, retry_after, RetryPolicy};
use reqwest::blocking::Client;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Renew a token this long before its `expires_at` (the backends' margin too).
pub const RENEW_MARGIN: Duration = crate::net::TOKEN_RENEW_MARGIN;

pub use crate::net::{same_origin, HttpOptions};

/// The HTTP client of every OpenStack call ([`crate::net::http_client`]),
/// with its error as an [`Error::Config`].
pub fn http_client(opts: &HttpOptions) -> Result<Client> {
    crate::net::http_client(opts).map_err(Error::Config)
}

/// One endpoint of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub service_type: String,
    pub service_name: Option<String>,
    pub interface: String,
    pub region: Option<String>,
    pub url: String,
}

#[derive(Debug)]
struct TokenState {
    token: Secret,
    expires_at: Option<SystemTime>,
    catalog: Vec<Endpoint>,
    project_id: Option<String>,
    user_id: Option<String>,
    /// Bumped at every authentication, so concurrent 401s renew only once.
    generation: u64,
}

struct Inner {
    config: CloudConfig,
    http: Client,
    auth_url: String,
    state: Mutex<Option<TokenState>>,
}

/// An authenticated Keystone session. Cheap to clone and shareable across
/// threads. `Debug` shows no token.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("cloud", &self.inner.config.name)
            .field("auth_url", &self.inner.auth_url)
            .field("auth_type", &self.inner.config.auth_type)
            .finish()
    }
}

impl Session {
    /// Build the HTTP client and authenticate now (so bad credentials fail
    /// early). For `auth_type: none` there is no Keystone call and no token.
    pub fn new(config: &CloudConfig) -> Result<Session> {
        config.validate()?;
        let http = http_client(&HttpOptions { cacert: config.cacert.clone(), insecure: config.insecure })?;
        let auth_url = config.auth.auth_url.clone().unwrap_or_default();
        let auth_url = normalize_auth_url(&auth_url);
        let s = Session { inner: Arc::new(Inner { config: config.clone(), http, auth_url, state: Mutex::new(None) }) };
        if config.auth_type != AuthType::None {
            s.authenticate(None).map_err(|e| s.explain(e))?;
        }
        Ok(s)
    }

    /// A Keystone failure (refused, unreachable, no such endpoint) with what
    /// was used appended: cloud, file, auth_url, region, interface, project,
    /// user ([`CloudConfig::describe`]; never a secret). Other errors as they are.
    pub fn explain(&self, e: Error) -> Error {
        let used = format!("used: {}", self.inner.config.describe());
        match e {
            Error::Auth { url, status, message } => Error::Auth { url, status, message: format!("{message}; {used}") },
            Error::Transport { method, url, message } if url.starts_with(&self.inner.auth_url) => {
                Error::Transport { method, url, message: format!("{message}; {used}") }
            }
            Error::NoEndpoint { service_type, region, interface, available } => {
                Error::NoEndpoint { service_type, region, interface, available: format!("{available}; {used}") }
            }
            e => e,
        }
    }

    /// Like [`Session::new`] but authenticates at the first [`Session::token`]
    /// instead of now (a backend that reports its own connection errors).
    pub fn new_deferred(config: &CloudConfig) -> Result<Session> {
        config.validate()?;
        let http = http_client(&HttpOptions { cacert: config.cacert.clone(), insecure: config.insecure })?;
        let auth_url = normalize_auth_url(config.auth.auth_url.as_deref().unwrap_or_default());
        Ok(Session { inner: Arc::new(Inner { config: config.clone(), http, auth_url, state: Mutex::new(None) }) })
    }

    /// The TLS settings of the session's client, for a client that needs
    /// different timeouts but must trust the same servers.
    pub fn http_options(&self) -> HttpOptions {
        HttpOptions { cacert: self.inner.config.cacert.clone(), insecure: self.inner.config.insecure }
    }

    pub fn config(&self) -> &CloudConfig {
        &self.inner.config
    }

    /// The configured HTTP client (shared pool).
    pub fn http(&self) -> &Client {
        &self.inner.http
    }

    /// The Keystone v3 base URL in use (ends in `/v3`).
    pub fn auth_url(&self) -> &str {
        &self.inner.auth_url
    }

    /// Project the token is scoped to.
    pub fn project_id(&self) -> Option<String> {
        self.inner.state.lock().unwrap().as_ref().and_then(|s| s.project_id.clone())
    }

    pub fn user_id(&self) -> Option<String> {
        self.inner.state.lock().unwrap().as_ref().and_then(|s| s.user_id.clone())
    }

    /// When the current token expires, if known.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.inner.state.lock().unwrap().as_ref().and_then(|s| s.expires_at)
    }

    /// A valid token (renewed first if it expires within [`RENEW_MARGIN`]),
    /// with its generation, or `None` for `auth_type: none`.
    pub fn token(&self) -> Result<Option<(Secret, u64)>> {
        if self.inner.config.auth_type == AuthType::None {
            return Ok(None);
        }
        {
            let st = self.inner.state.lock().unwrap();
            if let Some(s) = st.as_ref() {
                let fresh = match s.expires_at {
                    Some(exp) => exp > SystemTime::now() + RENEW_MARGIN,
                    None => true,
                };
                if fresh {
                    return Ok(Some((s.token.clone(), s.generation)));
                }
            }
        }
        self.authenticate(None).map_err(|e| self.explain(e))?;
        let st = self.inner.state.lock().unwrap();
        Ok(st.as_ref().map(|s| (s.token.clone(), s.generation)))
    }

    /// Called after a 401 with the token generation that was refused:
    /// re-authenticates unless another thread already did.
    pub fn renew_after_401(&self, refused_generation: u64) -> Result<()> {
        if self.inner.config.auth_type == AuthType::None {
            return Ok(());
        }
        self.authenticate(Some(refused_generation)).map_err(|e| self.explain(e))
    }

    /// Mark the current token as expired (tests; forces a renewal on next use).
    pub fn expire_token_now(&self) {
        if let Some(s) = self.inner.state.lock().unwrap().as_mut() {
            s.expires_at = Some(SystemTime::now());
        }
    }

    /// Current token generation (increments at every authentication).
    pub fn generation(&self) -> u64 {
        self.inner.state.lock().unwrap().as_ref().map(|s| s.generation).unwrap_or(0)
    }

    /// Endpoint URL of `service_type` (e.g. "image") for `region` (None: any)
    /// and `interface` ("public"/"internal"/"admin").
    pub fn endpoint_for(&self, service_type: &str, region: Option<&str>, interface: &str) -> Result<String> {
        let st = self.inner.state.lock().unwrap();
        let catalog = st.as_ref().map(|s| s.catalog.as_slice()).unwrap_or(&[]);
        find_endpoint(catalog, service_type, region, interface)
    }

    /// The Glance endpoint: `image_endpoint_override`/`OS_IMAGE_URL`, else
    /// `auth.endpoint` for auth type none, else the catalog (region and
    /// interface from the config).
    pub fn image_endpoint(&self) -> Result<String> {
        let c = &self.inner.config;
        if let Some(u) = &c.image_endpoint_override {
            return Ok(u.clone());
        }
        if c.auth_type == AuthType::None {
            return c.auth.endpoint.clone().ok_or_else(|| Error::Config("no image endpoint".into()));
        }
        self.endpoint_for("image", c.region_name.as_deref(), &c.interface).map_err(|e| self.explain(e))
    }

    /// The id of the project named `name` (`GET /v3/projects?name=`): the
    /// session's own project without a call, else a lookup that needs a role
    /// allowed to list projects (admin). None found or several: an error.
    pub fn project_id_by_name(&self, name: &str) -> Result<String> {
        if self.inner.config.auth.project_name.as_deref() == Some(name) {
            if let Some(id) = self.project_id() {
                return Ok(id);
            }
        }
        let mut url = url::Url::parse(&format!("{}/projects", self.inner.auth_url))
            .map_err(|e| Error::Config(format!("auth URL {}: {e}", self.inner.auth_url)))?;
        url.query_pairs_mut().append_pair("name", name);
        let url = url.to_string();
        let mut rb = self.inner.http.get(&url).timeout(Duration::from_secs(60)).header("Accept", "application/json");
        if let Some((token, _)) = self.token()? {
            rb = rb.header("X-Auth-Token", token.expose());
        }
        let resp = rb.send().map_err(|e| Error::Transport { method: "GET".into(), url: url.clone(), message: describe_reqwest(&e) })?;
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(Error::Http { method: "GET".into(), url, status, message: short_body(&text) });
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::Transport {
            method: "GET".into(),
            url: url.clone(),
            message: format!("bad JSON: {e}"),
        })?;
        let ids: Vec<String> =
            v["projects"].as_array().into_iter().flatten().filter_map(|p| p["id"].as_str().map(str::to_string)).collect();
        match ids.len() {
            0 => Err(Error::NotFound(format!("project {name:?} (no project of this name is visible to these credentials)"))),
            1 => Ok(ids.into_iter().next().expect("one id")),
            n => Err(Error::Config(format!("project name {name:?} is ambiguous: {n} projects have it ({}); use the id", ids.join(", ")))),
        }
    }

    /// Whole catalog (for diagnostics; holds no secrets).
    pub fn catalog(&self) -> Vec<Endpoint> {
        self.inner.state.lock().unwrap().as_ref().map(|s| s.catalog.clone()).unwrap_or_default()
    }

    fn auth_body(&self) -> Value {
        let c = &self.inner.config;
        let a = &c.auth;
        let domain = |name: &Option<String>, id: &Option<String>| -> Option<Value> {
            if let Some(id) = id.as_ref().or(a.domain_id.as_ref()) {
                Some(json!({ "id": id }))
            } else {
                name.as_ref().or(a.domain_name.as_ref()).map(|n| json!({ "name": n }))
            }
        };
        let user = || {
            let mut u = serde_json::Map::new();
            if let Some(id) = &a.user_id {
                u.insert("id".into(), json!(id));
            } else if let Some(n) = &a.username {
                u.insert("name".into(), json!(n));
                u.insert("domain".into(), domain(&a.user_domain_name, &a.user_domain_id).unwrap_or(json!({"id": "default"})));
            }
            u
        };
        let scope = || -> Option<Value> {
            if let Some(id) = &a.project_id {
                Some(json!({ "project": { "id": id } }))
            } else if let Some(n) = &a.project_name {
                let d = domain(&a.project_domain_name, &a.project_domain_id).unwrap_or(json!({"id": "default"}));
                Some(json!({ "project": { "name": n, "domain": d } }))
            } else if a.domain_id.is_some() || a.domain_name.is_some() {
                domain(&None, &None).map(|d| json!({ "domain": d }))
            } else {
                None
            }
        };
        let (identity, scope) = match c.auth_type {
            AuthType::Password => {
                let mut u = user();
                u.insert("password".into(), json!(a.password.as_ref().map(|p| p.expose()).unwrap_or("")));
                (json!({ "methods": ["password"], "password": { "user": u } }), scope())
            }
            AuthType::ApplicationCredential => {
                let mut ac = serde_json::Map::new();
                if let Some(id) = &a.application_credential_id {
                    ac.insert("id".into(), json!(id));
                } else {
                    ac.insert("name".into(), json!(a.application_credential_name));
                    ac.insert("user".into(), Value::Object(user()));
                }
                ac.insert("secret".into(), json!(a.application_credential_secret.as_ref().map(|s| s.expose()).unwrap_or("")));
                // an application credential is always scoped to its own project
                (json!({ "methods": ["application_credential"], "application_credential": ac }), None)
            }
            AuthType::Token => {
                (json!({ "methods": ["token"], "token": { "id": a.token.as_ref().map(|t| t.expose()).unwrap_or("") } }), scope())
            }
            AuthType::None => unreachable!(),
        };
        let mut auth = json!({ "identity": identity });
        if let Some(s) = scope {
            auth["scope"] = s;
        }
        json!({ "auth": auth })
    }

    fn authenticate(&self, only_if_generation: Option<u64>) -> Result<()> {
        let mut st = self.inner.state.lock().unwrap();
        if let (Some(g), Some(s)) = (only_if_generation, st.as_ref()) {
            if s.generation != g {
                return Ok(()); // someone renewed already
            }
        }
        let url = format!("{}/auth/tokens", self.inner.auth_url);
        let body = self.auth_body();
        // Keystone behind a load balancer sheds load with 5xx / 429; the
        // crate's one policy decides what is transient and how long to wait.
        // Two retries only: a Keystone that stays down is the caller's to
        // retry (the storage backends' decorator does), not ours to wait out.
        let policy = RetryPolicy { max_retries: 2, ..RetryPolicy::openstack_api() };
        let mut attempt = 0;
        let resp = loop {
            attempt += 1;
            let (why, wait) = match self.inner.http.post(&url).timeout(Duration::from_secs(60)).json(&body).send() {
                Ok(r) if is_transient_status(Some(r.status().as_u16())) && attempt <= policy.max_retries => {
                    (format!("HTTP {}", r.status().as_u16()), retry_after(r.headers()))
                }
                Ok(r) => break r,
                Err(e) if (e.is_connect() || e.is_timeout()) && attempt <= policy.max_retries => (describe_reqwest(&e), None),
                Err(e) => return Err(Error::Transport { method: "POST".into(), url, message: describe_reqwest(&e) }),
            };
            let d = policy.delay(attempt, wait);
            tracing::info!("keystone: POST {url}: {why}; retry {attempt}/{} in {:.1}s", policy.max_retries, d.as_secs_f64());
            std::thread::sleep(d);
        };
        let status = resp.status();
        let token = resp.headers().get("x-subject-token").and_then(|v| v.to_str().ok()).map(str::to_string);
        let text = resp.text().unwrap_or_default();
        if !status.is_success() {
            let mut message = short_body(&text);
            for s in self.inner.config.secrets() {
                message = message.replace(s.expose(), "***");
            }
            if status.as_u16() == 401 {
                message = format!(
                    "{message} (check the {} credentials of {})",
                    match self.inner.config.auth_type {
                        AuthType::Password => "user/password/project/domain",
                        AuthType::ApplicationCredential => "application credential",
                        _ => "token",
                    },
                    self.inner.config.name.as_deref().unwrap_or("the OS_* environment")
                );
            }
            return Err(Error::Auth { url, status: status.as_u16(), message });
        }
        let Some(token) = token else {
            return Err(Error::Auth { url, status: status.as_u16(), message: "no X-Subject-Token in the answer".into() });
        };
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::Auth {
            url: url.clone(),
            status: status.as_u16(),
            message: format!("bad token JSON: {e}"),
        })?;
        let t = &v["token"];
        let expires_at = t["expires_at"].as_str().and_then(parse_rfc3339);
        let catalog = parse_catalog(&t["catalog"]);
        let generation = st.as_ref().map(|s| s.generation + 1).unwrap_or(1);
        *st = Some(TokenState {
            token: Secret::new(token),
            expires_at,
            catalog,
            project_id: t["project"]["id"].as_str().map(str::to_string),
            user_id: t["user"]["id"].as_str().map(str::to_string),
            generation,
        });
        Ok(())
    }
}

/// The Swift repository backend authenticates through the session: the same
/// credentials, domain rules, token renewal and TLS settings as Glance. The
/// storage URL is the catalog's `object-store` endpoint for the cloud's
/// region and interface.
impl SwiftAuth for Session {
    fn authenticate(&self, renew: bool) -> anyhow::Result<SwiftSession> {
        let failure = |e: Error| -> anyhow::Error {
            let message = format!("{}: {e}", self.describe());
            match e {
                // an unreachable or overloaded Keystone is retried; a refusal is not
                Error::Auth { status, .. } | Error::Http { status, .. } => AuthFailure { status: Some(status), message }.into(),
                Error::Transport { .. } => AuthFailure { status: None, message }.into(),
                _ => anyhow::anyhow!(message),
            }
        };
        if renew {
            self.renew_after_401(self.generation()).map_err(failure)?;
        }
        let (token, _) = self
            .token()
            .map_err(failure)?
            .ok_or_else(|| anyhow::anyhow!("a Swift repository needs Keystone credentials (auth_type none has no token)"))?;
        let c = &self.inner.config;
        let storage_url = self
            .endpoint_for("object-store", c.region_name.as_deref(), &c.interface)
            .map_err(|e| failure(self.explain(e)))?
            .trim_end_matches('/')
            .to_string();
        Ok(SwiftSession { token, storage_url, expires_at: self.expires_at() })
    }

    fn describe(&self) -> String {
        let how = match self.inner.config.auth_type {
            AuthType::Password => "password",
            AuthType::ApplicationCredential => "application credential",
            AuthType::Token => "token",
            AuthType::None => "no auth",
        };
        format!("Keystone {} ({how})", self.inner.auth_url)
    }

    fn http_options(&self) -> HttpOptions {
        Session::http_options(self)
    }
}

/// `http://host:5000` / `.../v3/` → `http://host:5000/v3`.
pub fn normalize_auth_url(u: &str) -> String {
    let u = u.trim_end_matches('/');
    if u.ends_with("/v3") {
        u.to_string()
    } else if let Some(base) = u.strip_suffix("/v2.0") {
        format!("{base}/v3")
    } else {
        format!("{u}/v3")
    }
}

/// Parse a Keystone v3 `catalog` array.
pub fn parse_catalog(v: &Value) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for svc in v.as_array().into_iter().flatten() {
        let st = svc["type"].as_str().unwrap_or_default().to_string();
        let name = svc["name"].as_str().map(str::to_string);
        for ep in svc["endpoints"].as_array().into_iter().flatten() {
            out.push(Endpoint {
                service_type: st.clone(),
                service_name: name.clone(),
                interface: ep["interface"].as_str().unwrap_or_default().to_string(),
                region: ep["region_id"].as_str().or(ep["region"].as_str()).map(str::to_string),
                url: ep["url"].as_str().unwrap_or_default().to_string(),
            });
        }
    }
    out
}

/// Pick an endpoint; a region of `None` accepts any region (first wins).
pub fn find_endpoint(catalog: &[Endpoint], service_type: &str, region: Option<&str>, interface: &str) -> Result<String> {
    let interface = super::config::normalize_interface(Some(interface))?;
    catalog
        .iter()
        .find(|e| e.service_type == service_type && e.interface == interface && region.is_none_or(|r| e.region.as_deref() == Some(r)))
        .map(|e| e.url.clone())
        .ok_or_else(|| Error::NoEndpoint {
            service_type: service_type.into(),
            region: region.map(str::to_string),
            interface,
            available: {
                let v: Vec<String> = catalog
                    .iter()
                    .filter(|e| e.service_type == service_type)
                    .map(|e| format!("{}/{}", e.region.as_deref().unwrap_or("-"), e.interface))
                    .collect();
                if v.is_empty() {
                    "none".into()
                } else {
                    v.join(", ")
                }
            },
        })
}

/// Keystone's `expires_at` (`2026-11-27T13:45:00.000000Z`, or with an
/// offset) as a time, through the crate's one RFC 3339 parser.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    crate::util::parse_rfc3339(s.trim()).map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn rfc3339() {
        let t = parse_rfc3339("2026-11-27T13:45:00.500000Z").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_millis(), 1_795_787_100_500);
        let t2 = parse_rfc3339("2026-11-27T14:45:00+01:00").unwrap();
        assert_eq!(t2.duration_since(UNIX_EPOCH).unwrap().as_secs(), 1_795_787_100);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert!(parse_rfc3339("garbage").is_none());
    }

    #[test]
    fn cacert_errors_are_config_errors() {
        let e = http_client(&HttpOptions { cacert: Some("/nonexistent/ca.pem".into()), insecure: false }).unwrap_err();
        assert!(matches!(e, Error::Config(_)) && e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn auth_url_normalized() {
        assert_eq!(normalize_auth_url("http://k:5000"), "http://k:5000/v3");
        assert_eq!(normalize_auth_url("http://k:5000/v3/"), "http://k:5000/v3");
        assert_eq!(normalize_auth_url("http://k/identity/v2.0"), "http://k/identity/v3");
    }

    #[test]
    fn catalog_lookup() {
        let cat = parse_catalog(&json!([
            {"type":"image","name":"glance","endpoints":[
                {"interface":"public","region_id":"R1","url":"http://pub1"},
                {"interface":"internal","region_id":"R1","url":"http://int1"},
                {"interface":"public","region_id":"R2","url":"http://pub2"}]},
            {"type":"identity","endpoints":[{"interface":"public","region_id":"R1","url":"http://ks"}]}
        ]));
        assert_eq!(find_endpoint(&cat, "image", Some("R2"), "public").unwrap(), "http://pub2");
        assert_eq!(find_endpoint(&cat, "image", Some("R1"), "internalURL").unwrap(), "http://int1");
        assert_eq!(find_endpoint(&cat, "image", None, "public").unwrap(), "http://pub1");
        let e = find_endpoint(&cat, "image", Some("R3"), "public").unwrap_err().to_string();
        assert!(e.contains("R1/public") && e.contains("R3"), "{e}");
        assert!(find_endpoint(&cat, "object-store", None, "public").is_err());
    }
}

//! Shared helpers of the remote-backend integration tests: endpoints from the
//! environment exported by `ci/objectstore.sh`, and backend constructors.

use imgarc::backend::s3::{S3Backend, S3Config, Secret};
use imgarc::backend::swift::{SwiftAuth, SwiftBackend, SwiftConfig};
use imgarc::backend::Backend;
use imgarc::openstack::{config::CloudConfig, keystone::Session};
use std::sync::Arc;
use std::time::Duration;

/// Value of an env var the servers script exports; panics (test FAILS) with
/// instructions when it is missing.
pub fn need(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is not set: the remote-backend tests need real servers. Run \
             `. ci/objectstore.sh` (starts Ceph RGW, Keystone and Swift and exports IMGARC_*) \
             in this shell first, then `cargo test --features remote-tests --test integration backend_conformance::`."
        ),
    }
}

/// A fresh, unique key prefix per test run (so reruns never collide).
pub fn unique(tag: &str) -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    format!("t-{tag}-{}-{}", t.as_millis(), std::process::id())
}

pub struct S3Target {
    pub endpoint: String,
    pub bucket: String,
    pub access: String,
    pub secret: String,
}

pub fn rgw() -> S3Target {
    S3Target {
        endpoint: need("IMGARC_RGW_ENDPOINT"),
        bucket: need("IMGARC_RGW_BUCKET"),
        access: need("IMGARC_RGW_ACCESS_KEY"),
        secret: need("IMGARC_RGW_SECRET_KEY"),
    }
}

pub fn swift_s3() -> S3Target {
    S3Target {
        endpoint: need("IMGARC_SWIFTS3_ENDPOINT"),
        bucket: need("IMGARC_SWIFTS3_BUCKET"),
        access: need("IMGARC_SWIFTS3_ACCESS_KEY"),
        secret: need("IMGARC_SWIFTS3_SECRET_KEY"),
    }
}

pub fn s3_config(t: &S3Target, prefix: &str, secret: &str) -> S3Config {
    let (ak, sk) = (t.access.clone(), secret.to_string());
    let env = move |k: &str| match k {
        "AWS_ACCESS_KEY_ID" => Some(ak.clone()),
        "AWS_SECRET_ACCESS_KEY" => Some(sk.clone()),
        _ => None,
    };
    let mut c = S3Config::from_lookup(&t.endpoint, &t.bucket, prefix, &env).unwrap();
    c.timeout = Duration::from_secs(120);
    c
}

pub fn s3_backend(t: &S3Target, prefix: &str, page_size: usize) -> Box<dyn Backend> {
    let mut c = s3_config(t, prefix, &t.secret);
    c.page_size = page_size;
    Box::new(S3Backend::new(c).unwrap())
}

pub fn s3_wrong_secret(t: &S3Target, prefix: &str, secret: &str) -> S3Backend {
    let mut c = s3_config(t, prefix, secret);
    c.secret_access_key = Secret::new(secret);
    S3Backend::new(c).unwrap()
}

/// The Keystone session of the demo user, configured the way a user would
/// set OS_* — `app` = application credential, else password. It
/// authenticates at first use.
pub fn keystone(app: bool) -> Session {
    Session::new_deferred(&keystone_config(app)).unwrap()
}

/// The cloud configuration behind [`keystone`].
pub fn keystone_config(app: bool) -> CloudConfig {
    let auth = need("IMGARC_SWIFT_AUTH_URL");
    let region = need("IMGARC_SWIFT_REGION");
    let (id, sec) = (need("IMGARC_SWIFT_APP_CRED_ID"), need("IMGARC_SWIFT_APP_CRED_SECRET"));
    let (u, pw, p) = (need("IMGARC_SWIFT_USERNAME"), need("IMGARC_SWIFT_PASSWORD"), need("IMGARC_SWIFT_PROJECT"));
    let env = move |k: &str| {
        let v = match k {
            "OS_AUTH_URL" => auth.clone(),
            "OS_REGION_NAME" => region.clone(),
            "OS_APPLICATION_CREDENTIAL_ID" if app => id.clone(),
            "OS_APPLICATION_CREDENTIAL_SECRET" if app => sec.clone(),
            "OS_USERNAME" if !app => u.clone(),
            "OS_PASSWORD" if !app => pw.clone(),
            "OS_PROJECT_NAME" if !app => p.clone(),
            "OS_USER_DOMAIN_NAME" | "OS_PROJECT_DOMAIN_NAME" if !app => "Default".into(),
            _ => return None,
        };
        Some(v)
    };
    CloudConfig::from_env(&env).unwrap()
}

pub fn swift_backend_with(auth: Arc<dyn SwiftAuth>, prefix: &str, page_size: usize) -> SwiftBackend {
    let mut c = SwiftConfig::new(&need("IMGARC_SWIFT_CONTAINER"), prefix);
    c.page_size = page_size;
    SwiftBackend::new(c, auth).unwrap()
}

pub fn swift_backend(prefix: &str, page_size: usize) -> Box<dyn Backend> {
    Box::new(swift_backend_with(Arc::new(keystone(true)), prefix, page_size))
}

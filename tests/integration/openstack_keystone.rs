//! Keystone v3 auth + Glance through the service catalog (`OS_*`,
//! `KEYSTONE_*`, `GLANCE_KEYSTONE_URL` from `ci/openstack.sh`).
use crate::support::openstack as support;

use imgarc::openstack::config::{AuthType, CloudConfig, Lookup};
use imgarc::openstack::glance::GlanceClient;
use imgarc::openstack::keystone::Session;
use imgarc::openstack::Error;
use serde_json::json;
use std::collections::HashMap;
use std::io::Read;
use support::*;

fn roundtrip(g: &GlanceClient, label: &str) {
    let data = crate::support::bytes(700_000, label.len() as u64, false);
    let (rec, _c) = upload_image(g, &unique(label), &data, json!({}));
    let mut got = Vec::new();
    g.download(&rec).unwrap().read_to_end(&mut got).unwrap();
    assert_eq!(sha512_hex(&got), rec.os_hash_value.unwrap());
}

#[test]
fn password_auth_catalog_and_roundtrip() {
    let _serial = serial();
    let cfg = config_from(os_env()).unwrap();
    assert_eq!(cfg.auth_type, AuthType::Password);
    let s = Session::new(&cfg).unwrap();
    assert!(s.project_id().is_some());
    let glance_url = env("GLANCE_KEYSTONE_URL");
    assert_eq!(s.image_endpoint().unwrap().trim_end_matches('/'), glance_url.trim_end_matches('/'));
    assert_eq!(s.endpoint_for("image", Some("RegionOne"), "internal").unwrap().trim_end_matches('/'), glance_url);
    let e = s.endpoint_for("image", Some("NoSuchRegion"), "public").unwrap_err();
    assert!(matches!(e, Error::NoEndpoint { .. }) && e.to_string().contains("RegionOne/public"), "{e}");
    assert!(!format!("{s:?}").contains(&env("OS_PASSWORD")));
    let g = GlanceClient::new(&s).unwrap().with_retry(quick_retry());
    roundtrip(&g, "pw");
}

#[test]
fn wrong_password_is_a_clear_error_without_the_secret() {
    let _serial = serial();
    let mut m = os_env();
    let bad = "Wr0ng-Pa55word-Zq9";
    m.insert("OS_PASSWORD".into(), bad.into());
    let e = Session::new(&config_from(m).unwrap()).unwrap_err();
    let (s, d) = (e.to_string(), format!("{e:?}"));
    assert_eq!(e.status(), Some(401), "{s}");
    assert!(s.contains("authentication failed") && s.contains("password"), "{s}");
    assert!(!s.contains(bad) && !d.contains(bad), "{s} / {d}");
}

#[test]
fn application_credentials() {
    let _serial = serial();
    for (id, secret_var) in
        [("KEYSTONE_APP_CRED_ID", "KEYSTONE_APP_CRED_SECRET"), ("KEYSTONE_DEMO_APP_CRED_ID", "KEYSTONE_DEMO_APP_CRED_SECRET")]
    {
        let m: HashMap<String, String> = [
            ("OS_AUTH_URL", env("OS_AUTH_URL")),
            ("OS_AUTH_TYPE", "v3applicationcredential".into()),
            ("OS_APPLICATION_CREDENTIAL_ID", env(id)),
            ("OS_APPLICATION_CREDENTIAL_SECRET", env(secret_var)),
            ("OS_REGION_NAME", "RegionOne".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let cfg = config_from(m).unwrap();
        let s = Session::new(&cfg).unwrap();
        if id == "KEYSTONE_DEMO_APP_CRED_ID" {
            assert_eq!(s.project_id().unwrap(), env("KEYSTONE_DEMO_PROJECT_ID"));
        }
        let g = GlanceClient::new(&s).unwrap().with_retry(quick_retry());
        roundtrip(&g, "appcred");
    }
    // wrong secret
    let m: HashMap<String, String> = [
        ("OS_AUTH_URL".to_string(), env("OS_AUTH_URL")),
        ("OS_APPLICATION_CREDENTIAL_ID".to_string(), env("KEYSTONE_APP_CRED_ID")),
        ("OS_APPLICATION_CREDENTIAL_SECRET".to_string(), "nope-not-it-777".to_string()),
    ]
    .into_iter()
    .collect();
    let e = Session::new(&config_from(m).unwrap()).unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(!e.to_string().contains("nope-not-it-777"));
}

#[test]
fn token_auth_and_renewal() {
    let _serial = serial();
    let s = Session::new(&config_from(os_env()).unwrap()).unwrap();
    let (tok, gen1) = s.token().unwrap().unwrap();
    // OS_TOKEN auth with that token (rescoped to the project)
    let m: HashMap<String, String> = [
        ("OS_AUTH_URL".to_string(), env("OS_AUTH_URL")),
        ("OS_AUTH_TYPE".to_string(), "v3token".to_string()),
        ("OS_TOKEN".to_string(), tok.expose().to_string()),
        ("OS_PROJECT_NAME".to_string(), env("OS_PROJECT_NAME")),
        ("OS_PROJECT_DOMAIN_ID".to_string(), "default".to_string()),
    ]
    .into_iter()
    .collect();
    let ts = Session::new(&config_from(m).unwrap()).unwrap();
    assert_eq!(ts.project_id(), s.project_id());
    let g = GlanceClient::new(&ts).unwrap();
    g.list().unwrap();
    // a standalone client with a fixed token works too
    let sg = GlanceClient::standalone(&env("GLANCE_KEYSTONE_URL"), Some(tok.clone())).unwrap();
    sg.list().unwrap();
    // without a token: 401, reported as such
    let e = GlanceClient::standalone(&env("GLANCE_KEYSTONE_URL"), None).unwrap().with_retry(quick_retry()).list().unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    // a token about to expire is renewed before use
    s.expire_token_now();
    let (tok2, gen2) = s.token().unwrap().unwrap();
    assert!(gen2 > gen1);
    assert_ne!(tok2.expose(), tok.expose());
    assert!(s.expires_at().unwrap() > std::time::SystemTime::now() + std::time::Duration::from_secs(3600));
    // a 401 renews once (only if nobody renewed in between)
    s.renew_after_401(gen2).unwrap();
    assert_eq!(s.generation(), gen2 + 1);
    s.renew_after_401(gen2).unwrap();
    assert_eq!(s.generation(), gen2 + 1);
}

#[test]
fn clouds_yaml_with_secure_yaml_against_keystone() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("clouds.yaml"),
        format!(
            "clouds:\n  test:\n    auth:\n      auth_url: {}\n      username: {}\n      project_name: {}\n      user_domain_id: default\n      project_domain_id: default\n    region_name: RegionOne\n    interface: internal\n",
            env("OS_AUTH_URL"),
            env("OS_USERNAME"),
            env("OS_PROJECT_NAME")
        ),
    )
    .unwrap();
    std::fs::write(d.path().join("secure.yaml"), format!("clouds:\n  test:\n    auth:\n      password: '{}'\n", env("OS_PASSWORD")))
        .unwrap();
    let cfg = CloudConfig::resolve_with(Some("test"), &Lookup { env: &|_| None, dirs: vec![d.path().to_path_buf()] }).unwrap();
    let s = Session::new(&cfg).unwrap();
    assert_eq!(s.image_endpoint().unwrap().trim_end_matches('/'), env("GLANCE_KEYSTONE_URL"));
    GlanceClient::new(&s).unwrap().list().unwrap();
}

#[test]
fn unreachable_keystone() {
    let _serial = serial();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut m = os_env();
    m.insert("OS_AUTH_URL".into(), format!("http://127.0.0.1:{port}/v3"));
    let e = Session::new(&config_from(m).unwrap()).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("cannot connect") && s.contains(&port.to_string()), "{s}");
    assert!(!s.contains(&env("OS_PASSWORD")));
}

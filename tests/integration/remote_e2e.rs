//! The same commands on remote repositories: Ceph RGW (S3) and Swift with
//! Keystone (native API), started by `ci/objectstore.sh`.
//! Run: `. ci/objectstore.sh && cargo nextest run --features remote-tests --test integration remote_e2e::`.
use crate::support;
use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use support::*;

fn need(k: &str) -> String {
    std::env::var(k)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("{k} is not set: run `. ci/objectstore.sh` first (see docs/objectstore.md)"))
}

struct Remote {
    repo: String,
    vars: HashMap<String, String>,
    work: tempfile::TempDir,
}

impl Remote {
    fn rgw() -> Remote {
        let prefix = format!("e2e-{}", hex::encode(rand_bytes()));
        let vars = HashMap::from([
            ("AWS_ACCESS_KEY_ID".to_string(), need("IMGARC_RGW_ACCESS_KEY")),
            ("AWS_SECRET_ACCESS_KEY".to_string(), need("IMGARC_RGW_SECRET_KEY")),
            ("AWS_REGION".to_string(), "us-east-1".to_string()),
        ]);
        Remote {
            repo: format!("s3:{}/{}/{prefix}", need("IMGARC_RGW_ENDPOINT"), need("IMGARC_RGW_BUCKET")),
            vars,
            work: tempfile::tempdir().unwrap(),
        }
    }

    fn swift() -> Remote {
        let prefix = format!("e2e-{}", hex::encode(rand_bytes()));
        let vars = HashMap::from([
            ("OS_AUTH_URL".to_string(), need("IMGARC_SWIFT_AUTH_URL")),
            ("OS_AUTH_TYPE".to_string(), "v3applicationcredential".to_string()),
            ("OS_APPLICATION_CREDENTIAL_ID".to_string(), need("IMGARC_SWIFT_APP_CRED_ID")),
            ("OS_APPLICATION_CREDENTIAL_SECRET".to_string(), need("IMGARC_SWIFT_APP_CRED_SECRET")),
            ("OS_REGION_NAME".to_string(), need("IMGARC_SWIFT_REGION")),
        ]);
        Remote { repo: format!("swift:{}/{prefix}", need("IMGARC_SWIFT_CONTAINER")), vars, work: tempfile::tempdir().unwrap() }
    }

    fn cmd(&self, cache: &str, args: &[&str]) -> Command {
        let mut c = bare_cmd();
        c.env("IMGARC_PASSWORD", PASSWORD);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OS_") || k.starts_with("AWS_")) {
            c.env_remove(k);
        }
        c.envs(&self.vars).env("IMGARC_CACHE_DIR", self.work.path().join(cache)).arg("--repo").arg(&self.repo).args(args);
        c
    }

    fn run(&self, cache: &str, args: &[&str]) -> Output {
        self.cmd(cache, args).stdin(Stdio::null()).output().unwrap()
    }

    fn json(&self, cache: &str, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = self.run(cache, &a);
        assert!(o.status.success(), "imgarc {args:?} on {}: {}", self.repo, String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn file(&self, name: &str, data: &[u8]) -> String {
        let p = self.work.path().join(name);
        std::fs::write(&p, data).unwrap();
        p.display().to_string()
    }
}

fn rand_bytes() -> [u8; 6] {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let b = (t ^ std::process::id() as u64).to_le_bytes();
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

fn end_to_end(r: Remote) {
    r.json("c1", &["init"]);
    let disk = imgarc::synthetic::SyntheticDisk::new(12 << 20, 9);
    let mut nights = vec![];
    for n in 0..2 {
        let p = r.work.path().join(format!("n{n}.raw"));
        disk.write_night(&p, n).unwrap();
        let a = r.json("c1", &["archive", p.to_str().unwrap(), "--name", "vm", "--digest", "sha256"]);
        nights.push((p, a));
    }
    assert!(u(&nights[1].1, "new_bytes") < u(&nights[0].1, "new_bytes") / 2, "night 1 must dedup against night 0");
    let (p, a) = &nights[1];
    let out = r.work.path().join("out.raw");
    r.json("c1", &["restore", &s(a, "snapshot"), "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(p).unwrap(), "restore from {} differs", r.repo);
    assert_eq!(r.json("c1", &["check", "--read-data"])["ok"], true);

    // A new host (empty cache) catches up from the repository's index objects; rebuild works too.
    assert_eq!(r.json("c2", &["list"]).as_array().unwrap().len(), 2);
    let rb = r.json("c3", &["index", "rebuild"]);
    assert_eq!(u(&rb, "snapshots"), 2);
    std::fs::remove_file(&out).unwrap();
    r.json("c3", &["restore", &s(a, "snapshot")[..12], "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(p).unwrap());

    // Two processes archive different images into the repository at once.
    let (fa, fb) = (r.file("a.raw", &bytes(6 << 20, 1, false)), r.file("b.raw", &bytes(6 << 20, 2, true)));
    let ca = r.cmd("c1", &["--json", "archive", &fa]).stdout(Stdio::piped()).spawn().unwrap();
    let cb = r.cmd("c2", &["--json", "archive", &fb]).stdout(Stdio::piped()).spawn().unwrap();
    let (oa, ob) = (ca.wait_with_output().unwrap(), cb.wait_with_output().unwrap());
    assert!(oa.status.success() && ob.status.success(), "concurrent archives on {}", r.repo);
    assert_eq!(r.json("c1", &["check"])["ok"], true);

    // Forget night 0 and prune it away from another host; every cache then agrees.
    // (Night 1 still uses most of night 0's pack: --max-repack-ratio 1 repacks it anyway.)
    r.json("c1", &["forget", &s(&nights[0].1, "snapshot")]);
    let marked = r.json("c2", &["prune", "--grace", "0", "--max-repack-ratio", "1"]);
    assert!(u(&marked, "packs_marked") > 0, "{marked}");
    let swept = r.json("c3", &["prune", "--grace", "0"]);
    assert!(u(&swept, "bytes_freed") > 0 && u(&swept, "packs_rescued") == 0, "{marked}\n{swept}");
    assert_eq!(r.json("c1", &["check", "--read-data"])["ok"], true, "a stale cache after prune on {}", r.repo);
    std::fs::remove_file(&out).unwrap();
    r.json("c1", &["restore", &s(a, "snapshot"), "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(p).unwrap(), "restore after prune on {}", r.repo);

    let lookup = r.vars.clone();
    let swift_auth: Option<std::sync::Arc<dyn imgarc::backend::swift::SwiftAuth>> = if r.repo.starts_with("swift:") {
        let cfg = imgarc::openstack::config::CloudConfig::from_env(&|k: &str| lookup.get(k).cloned()).unwrap();
        Some(std::sync::Arc::new(imgarc::openstack::keystone::Session::new(&cfg).unwrap()))
    } else {
        None
    };
    let lookup = r.vars.clone();
    let opts = imgarc::backend::url::RemoteOptions {
        env: Some(std::sync::Arc::new(move |k: &str| lookup.get(k).cloned())),
        swift_auth,
        ..Default::default()
    };
    let backend = imgarc::backend::open(&r.repo, &opts).unwrap();

    // An archive killed (SIGKILL) once its first pack is in the store leaves a consistent
    // repository; the re-run completes and restores byte-exactly.
    let big = bytes(80 << 20, 7, false);
    let fbig = r.file("big.raw", &big);
    let listed_before: Vec<String> = backend.list("data/").unwrap().into_iter().map(|o| o.key).collect();
    let packs_before = listed_before.len();
    let mut child =
        r.cmd("c1", &["--quiet", "archive", &fbig, "--name", "big"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    for _ in 0..600 {
        if backend.list("data/").unwrap().len() > packs_before || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(r.json("c1", &["check"])["ok"], true, "after a killed archive on {}", r.repo);
    let again = r.json("c1", &["archive", &fbig, "--name", "big"]);
    let out_big = r.work.path().join("big.out");
    r.json("c2", &["restore", &s(&again, "snapshot"), "-o", out_big.to_str().unwrap()]);
    assert!(std::fs::read(&out_big).unwrap() == big, "re-archived image after a kill differs on {}", r.repo);

    // A pack deleted behind imgarc's back is named by check, with its snapshots. The victim is a
    // pack from before the killed archive: the killed run's own pack may be an unreferenced extra
    // (its index object never written), whose loss check rightly does not call damage.
    let packs = backend.list("data/").unwrap();
    let victim = &packs.iter().find(|p| listed_before.contains(&p.key)).expect("a pack the earlier snapshots use").key;
    backend.delete(victim).unwrap();
    let o = r.run("c1", &["--json", "check"]);
    assert_eq!(o.status.code(), Some(1));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let errors = rep["errors"].to_string();
    assert!(errors.contains("missing") && errors.contains(victim.rsplit('/').next().unwrap()), "{errors}");
    let named = rep["damaged_chunks"].as_array().unwrap().iter().filter(|d| !d["snapshots"].as_array().unwrap().is_empty()).count();
    assert!(named > 0, "no damaged chunk names its snapshots; errors: {errors}");
}

/// An encrypted repository on the remote: archive, restore, `check --read-data`, a new host's
/// catch-up and `index rebuild`, all through sealed objects; the wrong password is refused.
fn encrypted_end_to_end(r: Remote, cipher: &str) {
    let pw = |mut c: Command| {
        c.env("IMGARC_PASSWORD", "remote test password").stdin(Stdio::null());
        c
    };
    let json = |cache: &str, args: &[&str]| -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = pw(r.cmd(cache, &a)).output().unwrap();
        assert!(o.status.success(), "imgarc {args:?} on {}: {}", r.repo, String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    json("c1", &["init", "--encryption", cipher]);
    let data = bytes(5 << 20, 11, false);
    let p = r.file("enc.raw", &data);
    let a = json("c1", &["archive", &p, "--name", "vm"]);
    let out = r.work.path().join("enc.out");
    json("c1", &["restore", &s(&a, "snapshot"), "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == data, "encrypted restore from {} differs", r.repo);
    assert_eq!(json("c1", &["check", "--read-data"])["ok"], true);
    assert_eq!(json("c2", &["list"]).as_array().unwrap().len(), 1);
    assert_eq!(u(&json("c3", &["index", "rebuild"]), "snapshots"), 1);
    std::fs::remove_file(&out).unwrap();
    json("c3", &["restore", &s(&a, "snapshot"), "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == data);
    let o = r.cmd("c4", &["list"]).env("IMGARC_PASSWORD", "wrong").stdin(Stdio::null()).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("wrong password"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn rgw_encrypted_end_to_end() {
    encrypted_end_to_end(Remote::rgw(), "aes-256-gcm");
}

#[test]
fn swift_encrypted_end_to_end() {
    encrypted_end_to_end(Remote::swift(), "xchacha20-poly1305");
}

#[test]
fn rgw_end_to_end() {
    end_to_end(Remote::rgw());
}

#[test]
fn swift_end_to_end() {
    end_to_end(Remote::swift());
}

#[test]
fn swift_repository_in_another_cloud_via_repo_cloud() {
    // No OS_* variables at all: the repository's cloud comes from clouds.yaml.
    let work = tempfile::tempdir().unwrap();
    let clouds = work.path().join("clouds.yaml");
    std::fs::write(
        &clouds,
        format!(
            "clouds:\n  offsite:\n    auth_type: v3applicationcredential\n    region_name: {}\n    auth:\n      auth_url: {}\n      application_credential_id: {}\n      application_credential_secret: {}\n",
            need("IMGARC_SWIFT_REGION"),
            need("IMGARC_SWIFT_AUTH_URL"),
            need("IMGARC_SWIFT_APP_CRED_ID"),
            need("IMGARC_SWIFT_APP_CRED_SECRET")
        ),
    )
    .unwrap();
    let r = Remote {
        repo: format!("swift:{}/cloud-{}", need("IMGARC_SWIFT_CONTAINER"), hex::encode(rand_bytes())),
        vars: HashMap::from([("OS_CLIENT_CONFIG_FILE".to_string(), clouds.display().to_string())]),
        work,
    };
    r.json("c", &["--repo-cloud", "offsite", "init"]);
    let f = r.file("small.raw", &bytes(300_000, 4, true));
    let a = r.json("c", &["--repo-cloud", "offsite", "archive", &f]);
    assert_eq!(u(&a, "logical_bytes"), 300_000);
    // Without the cloud the same repository cannot be reached, and the error says why.
    let o = r.run("c2", &["list"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains(&need("IMGARC_SWIFT_APP_CRED_SECRET")), "a secret leaked into an error: {err}");
}

// ---------------------------------------------------------------------------
// One Keystone session for Glance and Swift: each test below failed while the
// Swift backend had its own Keystone client and `--repo-cloud` was turned back
// into OS_* strings for it.

/// Keystone's admin API with the admin credentials `ci/objectstore.sh` exports.
struct KeystoneAdmin {
    url: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl KeystoneAdmin {
    fn new() -> KeystoneAdmin {
        let url = need("IMGARC_SWIFT_AUTH_URL").trim_end_matches('/').to_string();
        let http = reqwest::blocking::Client::new();
        let body = serde_json::json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": need("OS_USERNAME"), "domain": {"id": "default"}, "password": need("OS_PASSWORD")}}},
            "scope": {"project": {"name": need("OS_PROJECT_NAME"), "domain": {"id": "default"}}}}});
        let r = http.post(format!("{url}/auth/tokens")).json(&body).send().unwrap();
        assert!(r.status().is_success(), "admin token: HTTP {}", r.status());
        let token = r.headers()["x-subject-token"].to_str().unwrap().to_string();
        KeystoneAdmin { url, token, http }
    }

    /// POST a new entity (or find the existing one by name on 409); its id.
    fn ensure(&self, kind: &str, body: serde_json::Value, find: &str) -> String {
        let one = kind.trim_end_matches('s');
        let r = self.http.post(format!("{}/{kind}", self.url)).header("X-Auth-Token", &self.token).json(&body).send().unwrap();
        if r.status().as_u16() == 409 {
            let v: serde_json::Value =
                self.http.get(format!("{}/{kind}?{find}", self.url)).header("X-Auth-Token", &self.token).send().unwrap().json().unwrap();
            return v[kind][0]["id"].as_str().unwrap().to_string();
        }
        assert!(r.status().is_success(), "create {one}: HTTP {}", r.status());
        let v: serde_json::Value = r.json().unwrap();
        v[one]["id"].as_str().unwrap().to_string()
    }

    fn put(&self, path: &str) {
        let r = self.http.put(format!("{}{path}", self.url)).header("X-Auth-Token", &self.token).send().unwrap();
        assert!(r.status().is_success(), "PUT {path}: HTTP {}", r.status());
    }
}

/// A user and project in a domain other than `default`, with the `member`
/// role, and a container in that project's Swift account. Returns
/// (domain name, user, password, project, container).
fn user_in_another_domain() -> (String, String, String, String, String) {
    let ks = KeystoneAdmin::new();
    let (domain, user, project, container) = ("imgarc-ci-domain", "imgarc-ci-domain-user", "imgarc-ci-domain-project", "imgarc-ci-dom");
    let password = "domain-user-password-do-not-print";
    let d = ks.ensure("domains", serde_json::json!({"domain": {"name": domain, "enabled": true}}), &format!("name={domain}"));
    let p = ks.ensure(
        "projects",
        serde_json::json!({"project": {"name": project, "domain_id": d, "enabled": true}}),
        &format!("name={project}&domain_id={d}"),
    );
    let u = ks.ensure(
        "users",
        serde_json::json!({"user": {"name": user, "domain_id": d, "password": password, "enabled": true}}),
        &format!("name={user}&domain_id={d}"),
    );
    let roles: serde_json::Value =
        ks.http.get(format!("{}/roles?name=member", ks.url)).header("X-Auth-Token", &ks.token).send().unwrap().json().unwrap();
    let role = roles["roles"][0]["id"].as_str().expect("a member role").to_string();
    ks.put(&format!("/projects/{p}/users/{u}/roles/{role}"));
    // the container, created with the user's own token
    let cfg = imgarc::openstack::config::CloudConfig::from_env(&|k: &str| match k {
        "OS_AUTH_URL" => Some(need("IMGARC_SWIFT_AUTH_URL")),
        "OS_USERNAME" => Some(user.to_string()),
        "OS_PASSWORD" => Some(password.to_string()),
        "OS_PROJECT_NAME" => Some(project.to_string()),
        "OS_USER_DOMAIN_NAME" | "OS_PROJECT_DOMAIN_NAME" => Some(domain.to_string()),
        "OS_REGION_NAME" => Some(need("IMGARC_SWIFT_REGION")),
        _ => None,
    })
    .unwrap();
    // Swift's token validation may lag a fresh role assignment for a moment
    let mut status = 0;
    for _ in 0..20 {
        let s = imgarc::openstack::keystone::Session::new(&cfg).unwrap();
        let storage = s.endpoint_for("object-store", Some(&need("IMGARC_SWIFT_REGION")), "public").unwrap();
        let (token, _) = s.token().unwrap().unwrap();
        let r =
            ks.http.put(format!("{}/{container}", storage.trim_end_matches('/'))).header("X-Auth-Token", token.expose()).send().unwrap();
        status = r.status().as_u16();
        if r.status().is_success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!((200..300).contains(&status), "create container: HTTP {status}");
    (domain.to_string(), user.to_string(), password.to_string(), project.to_string(), container.to_string())
}

#[test]
fn swift_repository_with_only_os_domain_name() {
    // openrc style: OS_DOMAIN_NAME stands for the user's and the project's
    // domain. Glance always honoured it; the Swift backend sent domain
    // `default` and Keystone refused the user of another domain.
    let (domain, user, password, project, container) = user_in_another_domain();
    let r = Remote {
        repo: format!("swift:{container}/dom-{}", hex::encode(rand_bytes())),
        vars: HashMap::from([
            ("OS_AUTH_URL".to_string(), need("IMGARC_SWIFT_AUTH_URL")),
            ("OS_USERNAME".to_string(), user),
            ("OS_PASSWORD".to_string(), password.clone()),
            ("OS_PROJECT_NAME".to_string(), project),
            ("OS_DOMAIN_NAME".to_string(), domain),
            ("OS_REGION_NAME".to_string(), need("IMGARC_SWIFT_REGION")),
        ]),
        work: tempfile::tempdir().unwrap(),
    };
    r.json("c", &["init"]);
    let f = r.file("small.raw", &bytes(200_000, 5, true));
    let a = r.json("c", &["archive", &f]);
    assert_eq!(u(&a, "logical_bytes"), 200_000);
    assert_eq!(r.json("c", &["check", "--read-data"])["ok"], true);
}

/// A clouds.yaml with one cloud `name` whose body is `cloud` (YAML lines, indented 4).
fn clouds_yaml(work: &std::path::Path, name: &str, cloud: &str) -> String {
    let p = work.join("clouds.yaml");
    std::fs::write(&p, format!("clouds:\n  {name}:\n{cloud}")).unwrap();
    p.display().to_string()
}

#[test]
fn swift_repository_with_token_auth_via_repo_cloud() {
    // auth_type token: the cloud's token reached the Swift backend as no
    // OS_TOKEN at all ("swift: OS_TOKEN is not set"). The token comes from a
    // password (Keystone refuses to rescope an application credential's).
    let cfg = imgarc::openstack::config::CloudConfig::from_env(&|k: &str| match k {
        "OS_AUTH_URL" => Some(need("IMGARC_SWIFT_AUTH_URL")),
        "OS_USERNAME" => Some(need("IMGARC_SWIFT_USERNAME")),
        "OS_PASSWORD" => Some(need("IMGARC_SWIFT_PASSWORD")),
        "OS_PROJECT_NAME" => Some(need("IMGARC_SWIFT_PROJECT")),
        "OS_USER_DOMAIN_NAME" | "OS_PROJECT_DOMAIN_NAME" => Some("Default".to_string()),
        _ => None,
    })
    .unwrap();
    let issued = imgarc::openstack::keystone::Session::new(&cfg).unwrap();
    let (token, _) = issued.token().unwrap().unwrap();
    let work = tempfile::tempdir().unwrap();
    let clouds = clouds_yaml(
        work.path(),
        "bytoken",
        &format!(
            "    auth_type: v3token\n    region_name: {}\n    auth:\n      auth_url: {}\n      token: {}\n      project_name: {}\n      project_domain_name: Default\n",
            need("IMGARC_SWIFT_REGION"),
            need("IMGARC_SWIFT_AUTH_URL"),
            token.expose(),
            need("IMGARC_SWIFT_PROJECT"),
        ),
    );
    let r = Remote {
        repo: format!("swift:{}/token-{}", need("IMGARC_SWIFT_CONTAINER"), hex::encode(rand_bytes())),
        vars: HashMap::from([("OS_CLIENT_CONFIG_FILE".to_string(), clouds)]),
        work,
    };
    r.json("c", &["--repo-cloud", "bytoken", "init"]);
    let f = r.file("small.raw", &bytes(100_000, 6, true));
    assert_eq!(u(&r.json("c", &["--repo-cloud", "bytoken", "archive", &f]), "logical_bytes"), 100_000);
    // and the same with OS_TOKEN in the environment (openrc style)
    let env = Remote {
        repo: r.repo.clone(),
        vars: HashMap::from([
            ("OS_AUTH_URL".to_string(), need("IMGARC_SWIFT_AUTH_URL")),
            ("OS_AUTH_TYPE".to_string(), "v3token".to_string()),
            ("OS_TOKEN".to_string(), token.expose().to_string()),
            ("OS_PROJECT_NAME".to_string(), need("IMGARC_SWIFT_PROJECT")),
            ("OS_PROJECT_DOMAIN_NAME".to_string(), "Default".to_string()),
            ("OS_REGION_NAME".to_string(), need("IMGARC_SWIFT_REGION")),
        ]),
        work: tempfile::tempdir().unwrap(),
    };
    // (Swift's container listing may lag the archive: only the access is checked)
    assert!(env.json("c", &["list"]).is_array());
}

#[test]
fn swift_repository_honours_the_clouds_cacert() {
    // The cloud's `cacert` was dropped on the way to the Swift backend. The CI
    // Keystone and Swift speak plain HTTP, so what is observable is that the
    // setting arrives: a CA bundle that cannot be read now stops the Swift
    // repository (as it stops Glance), where it used to be ignored.
    let work = tempfile::tempdir().unwrap();
    let missing = work.path().join("no-such-ca.pem");
    let body = |cacert: &str| {
        format!(
            "    auth_type: v3applicationcredential\n    region_name: {}\n{cacert}    auth:\n      auth_url: {}\n      application_credential_id: {}\n      application_credential_secret: {}\n",
            need("IMGARC_SWIFT_REGION"),
            need("IMGARC_SWIFT_AUTH_URL"),
            need("IMGARC_SWIFT_APP_CRED_ID"),
            need("IMGARC_SWIFT_APP_CRED_SECRET")
        )
    };
    let clouds = clouds_yaml(work.path(), "pinned", &body(&format!("    cacert: {}\n", missing.display())));
    let r = Remote {
        repo: format!("swift:{}/ca-{}", need("IMGARC_SWIFT_CONTAINER"), hex::encode(rand_bytes())),
        vars: HashMap::from([("OS_CLIENT_CONFIG_FILE".to_string(), clouds)]),
        work,
    };
    let o = r.run("c", &["--repo-cloud", "pinned", "init"]);
    assert_eq!(o.status.code(), Some(1), "init with an unreadable cacert succeeded");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no-such-ca.pem"), "the error does not name the CA bundle: {err}");
    assert!(!err.contains(&need("IMGARC_SWIFT_APP_CRED_SECRET")), "a secret leaked into an error: {err}");
    // a real bundle (the system's) is accepted and the repository works
    let system = "/etc/ssl/certs/ca-certificates.crt";
    clouds_yaml(r.work.path(), "pinned", &body(&format!("    cacert: {system}\n")));
    r.json("c", &["--repo-cloud", "pinned", "init"]);
}

/// A TLS front for a plain-HTTP server: certificates from a private CA made
/// with openssl, one request per connection, answered with `Connection:
/// close`. Returns (https base URL, path of the CA bundle); the CA files live
/// in `dir`.
fn tls_front(upstream: &str, dir: &std::path::Path) -> (String, std::path::PathBuf) {
    use std::io::{Read, Write};
    let (cfg, ca) = tls::private_ca(dir);
    let upstream = upstream.trim_start_matches("http://").split('/').next().unwrap().to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    fn read_message(r: &mut impl Read) -> Option<Vec<u8>> {
        let mut m = Vec::new();
        let mut b = [0u8; 1];
        while !m.ends_with(b"\r\n\r\n") {
            if r.read(&mut b).ok()? == 0 {
                return None;
            }
            m.push(b[0]);
        }
        let head = String::from_utf8_lossy(&m).to_ascii_lowercase();
        let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse().unwrap()).unwrap_or(0);
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).ok()?;
        m.extend(body);
        Some(m)
    }
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let (cfg, upstream) = (cfg.clone(), upstream.clone());
            std::thread::spawn(move || {
                let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(cfg).unwrap(), tcp);
                let Some(req) = read_message(&mut tls) else { return };
                let mut up = std::net::TcpStream::connect(&upstream).unwrap();
                up.write_all(&req).unwrap();
                let Some(resp) = read_message(&mut up) else { return };
                let text = String::from_utf8_lossy(&resp).replacen("Connection: keep-alive", "Connection: close", 1);
                let _ = tls.write_all(text.as_bytes());
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    (base, ca)
}

#[test]
fn swift_repository_trusts_the_clouds_cacert_over_tls() {
    // Keystone behind TLS with a private CA, the cloud's `cacert` naming it.
    // Glance's session always used it; the Swift backend's own Keystone client
    // did not (its only CA setting was OS_CACERT), so the handshake failed.
    let work = tempfile::tempdir().unwrap();
    let (front, ca) = tls_front(&need("IMGARC_SWIFT_AUTH_URL"), work.path());
    let cloud = |cacert: &str| {
        format!(
            "    auth_type: v3applicationcredential\n    region_name: {}\n{cacert}    auth:\n      auth_url: {front}/v3\n      application_credential_id: {}\n      application_credential_secret: {}\n",
            need("IMGARC_SWIFT_REGION"),
            need("IMGARC_SWIFT_APP_CRED_ID"),
            need("IMGARC_SWIFT_APP_CRED_SECRET")
        )
    };
    let clouds = clouds_yaml(work.path(), "tls", &cloud(&format!("    cacert: {}\n", ca.display())));
    let r = Remote {
        repo: format!("swift:{}/tls-{}", need("IMGARC_SWIFT_CONTAINER"), hex::encode(rand_bytes())),
        vars: HashMap::from([("OS_CLIENT_CONFIG_FILE".to_string(), clouds)]),
        work,
    };
    r.json("c", &["--repo-cloud", "tls", "init"]);
    let f = r.file("small.raw", &bytes(50_000, 8, true));
    assert_eq!(u(&r.json("c", &["--repo-cloud", "tls", "archive", &f]), "logical_bytes"), 50_000);
    // without the CA the same cloud is refused at the TLS handshake
    clouds_yaml(r.work.path(), "tls", &cloud(""));
    let o = r.run("c2", &["--repo-cloud", "tls", "list"]);
    assert_eq!(o.status.code(), Some(1), "a Keystone with an unknown CA was trusted");
}

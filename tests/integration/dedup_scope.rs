//! Dedup scope and what `report --project` may reveal, on encrypted repositories made through
//! the library (the interim CLI has no `init --dedup-scope` yet) and used through the binary:
//! the same image in two projects is stored twice with scope `project` and once with scope
//! `repository`; both restore byte-exactly; a file needs `--project` in a project-scoped
//! repository; and a `--project` report withholds the figures measured against other projects
//! unless no chunk can be shared.

use crate::support::*;
use imgarc::crypto::keyfile::KdfParams;
use imgarc::crypto::Cipher;
use imgarc::repository::config::{Config, DedupScope};
use imgarc::repository::{NewKey, Repository};
use serde_json::Value;
use std::sync::Arc;

const PASSWORD: &str = "dedup scope test password";

/// An encrypted repository with `scope` (Argon2id at its smallest: the tests are about scope).
fn encrypted_env(scope: DedupScope) -> Env {
    let env = Env::new();
    let mut config = Config::new(16 << 10, 3).unwrap().with_encryption(Some(Cipher::Aes256Gcm));
    config.dedup_scope = scope;
    let backend = Arc::new(imgarc::backend::local::LocalBackend::new(&env.repo));
    let password = imgarc::secret::Secret::new(PASSWORD);
    let key = NewKey { password: &password, kdf: KdfParams { m_kib: 8, t: 1, p: 1 }, label: "test" };
    Repository::init_encrypted(backend, config, &key).unwrap();
    env
}

fn run(env: &Env, args: &[&str]) -> std::process::Output {
    env.cmd(args).env("IMGARC_PASSWORD", PASSWORD).stdin(std::process::Stdio::null()).output().unwrap()
}

fn json(env: &Env, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let o = run(env, &all);
    assert!(o.status.success(), "imgarc {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn text(env: &Env, args: &[&str]) -> String {
    let o = run(env, args);
    assert!(o.status.success(), "imgarc {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} is not a number in {v}"))
}

/// Archives one disk as the image of two projects; returns the two archive outcomes.
fn one_image_in_two_projects(env: &Env, disk: &[u8]) -> (Value, Value) {
    let path = env.path("disk.raw");
    std::fs::write(&path, disk).unwrap();
    let p = path.to_str().unwrap();
    let a = json(env, &["archive", p, "--name", "vm-a", "--project", "proj-a"]);
    let b = json(env, &["archive", p, "--name", "vm-b", "--project", "proj-b"]);
    (a, b)
}

fn restored(env: &Env, snap: &str) -> Vec<u8> {
    let out = env.path(&format!("restored-{}", &snap[..12]));
    text(env, &["--quiet", "restore", snap, "-o", out.to_str().unwrap()]);
    std::fs::read(out).unwrap()
}

#[test]
fn the_same_image_in_two_projects_is_stored_twice_with_scope_project_and_once_with_scope_repository() {
    let disk = bytes(4 << 20, 11, false);
    let shared = encrypted_env(DedupScope::Repository);
    let (a, b) = one_image_in_two_projects(&shared, &disk);
    assert!(n(&a, "new_chunks") > 10, "{a}");
    assert_eq!(n(&b, "new_chunks"), 0, "scope repository: the second project's copy dedups against the first: {b}");
    assert!(n(&b, "stored_bytes_added") * 20 < n(&a, "stored_bytes_added"), "{a}\n{b}");

    let scoped = encrypted_env(DedupScope::Project);
    let (c, d) = one_image_in_two_projects(&scoped, &disk);
    // (Each repository has its own chunker key, so its own boundaries: counts differ between repositories.)
    assert!(n(&c, "new_chunks") > 10, "{c}");
    assert_eq!(n(&d, "new_chunks"), n(&c, "new_chunks"), "scope project: the second project stores every chunk again: {d}");
    assert!(n(&d, "stored_bytes_added") * 10 >= n(&c, "stored_bytes_added") * 9, "{c}\n{d}");

    for (env, snaps) in [(&shared, [&a, &b]), (&scoped, [&c, &d])] {
        for s in snaps {
            assert!(restored(env, s["snapshot"].as_str().unwrap()) == disk, "restore of {s} is not byte-exact");
        }
    }
    // The chunk ids differ per project: no blob id of one project's snapshot is in the other's.
    let ids = |env: &Env, snap: &Value| -> std::collections::HashSet<String> {
        let backend = imgarc::backend::open(env.repo.to_str().unwrap(), &Default::default()).unwrap();
        let repo = Repository::open_with(backend, &imgarc::secret::Secret::new(PASSWORD)).unwrap();
        let cache = env.cache.join(&repo.config().id).join("index.sqlite");
        let index = imgarc::index::Index::open_at(&cache, &repo.config().id).unwrap();
        let s = repo.load_snapshot(&imgarc::ids::Id::from_hex(snap["snapshot"].as_str().unwrap()).unwrap()).unwrap();
        imgarc::index::IndexedRepository::new(&repo, &index).referenced_ids(&s).unwrap().iter().map(|i| i.to_hex()).collect()
    };
    assert!(ids(&scoped, &c).is_disjoint(&ids(&scoped, &d)), "two projects share a blob in scope project");
    assert_eq!(ids(&shared, &a), ids(&shared, &b), "scope repository: the two copies use the same blobs");
}

#[test]
fn a_file_needs_a_project_in_a_project_scoped_repository() {
    let env = encrypted_env(DedupScope::Project);
    let path = env.path("disk.raw");
    std::fs::write(&path, bytes(1 << 20, 3, false)).unwrap();
    let o = run(&env, &["archive", path.to_str().unwrap(), "--name", "vm"]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("dedup scope is `project`") && err.contains("--project"), "{err}");
    let stored = std::fs::read_dir(env.repo.join("snapshots")).map_or(0, |d| d.count());
    assert_eq!(stored, 0, "a snapshot was stored");
    // With --project the project is recorded as the snapshot's owner, which report --project selects.
    json(&env, &["archive", path.to_str().unwrap(), "--name", "vm", "--project", "proj-a"]);
    let r = json(&env, &["report", "--project", "proj-a"]);
    assert_eq!(n(&r["totals"], "snapshots"), 1, "{r}");
}

/// The figures of one project's report, and every format's text.
fn project_report(env: &Env) -> (Value, Vec<String>) {
    let r = json(env, &["report", "--project", "proj-a", "--by", "image", "--capacity", "1G"]);
    // Per-snapshot Prometheus series are opt-in: ask for them, so their withholding is checked too.
    let texts = ["table", "csv", "prometheus", "html"]
        .iter()
        .map(|f| {
            let detail: &[&str] = if *f == "prometheus" { &["--metrics-detail", "snapshot"] } else { &[] };
            text(env, &[&["report", "--format", f, "--project", "proj-a"][..], detail].concat())
        })
        .collect();
    (r, texts)
}

const WITHHELD_SNAPSHOT_FIELDS: [&str; 6] =
    ["unique_chunks", "unique_bytes", "unique_raw_bytes", "shared_bytes", "shared_raw_bytes", "stored_bytes_added"];

#[test]
fn a_project_report_withholds_cross_project_figures_unless_the_scope_is_project() {
    // The projects' images share half their chunks: the first half of the disk is the same.
    let base = bytes(4 << 20, 21, false);
    let mut other = base.clone();
    other[2 << 20..].copy_from_slice(&bytes(2 << 20, 22, false));
    for scope in [DedupScope::Repository, DedupScope::Project] {
        let env = encrypted_env(scope);
        let (pa, pb) = (env.path("a.raw"), env.path("b.raw"));
        std::fs::write(&pa, &base).unwrap();
        std::fs::write(&pb, &other).unwrap();
        json(&env, &["archive", pb.to_str().unwrap(), "--name", "vm-b", "--project", "proj-b"]);
        let a = json(&env, &["archive", pa.to_str().unwrap(), "--name", "vm-a", "--project", "proj-a"]);
        let (r, texts) = project_report(&env);
        let s = &r["snapshots"][0];
        assert_eq!(r["snapshots"].as_array().unwrap().len(), 1, "{r}");
        // What is the project's own is always there.
        assert!(n(s, "referenced_bytes") > 0 && n(s, "chunks") > 0 && n(&r["totals"], "stored_bytes") > 0, "{r}");
        let g = &r["groups"][0];
        match scope {
            DedupScope::Repository => {
                for k in WITHHELD_SNAPSHOT_FIELDS {
                    assert!(s.get(k).is_some_and(Value::is_null), "{k} not withheld: {s}");
                }
                for k in ["unique_bytes", "unique_raw_bytes"] {
                    assert!(r["totals"][k].is_null(), "totals {k}: {}", r["totals"]);
                }
                for k in ["unique_bytes", "shared_bytes", "members_unique_bytes", "stored_bytes_added"] {
                    assert!(g.get(k).is_some_and(Value::is_null), "group {k}: {g}");
                }
                assert!(r["growth"]["days"][0]["stored_bytes_added"].is_null() && r["growth"]["days"][0]["cumulative_bytes"].is_null());
                assert!(r["growth"]["projection"]["bytes_per_day"].is_null(), "{}", r["growth"]);
                let reason = r["reason"].as_str().expect("a reason");
                assert!(reason.contains("dedup scope is `repository`"), "{reason}");
                assert!(r["withheld"].as_array().unwrap().iter().any(|f| f == "unique_bytes"), "{r}");
                // No format shows the shared or unique figure: the half shared with proj-b.
                assert!(!texts[2].contains("imgarc_snapshot_unique_bytes{"), "prometheus has a unique sample: {}", texts[2]);
                assert!(!texts[2].contains("imgarc_snapshot_stored_bytes_added{"), "{}", texts[2]);
                assert!(texts[0].contains("withheld"), "{}", texts[0]);
                assert!(texts[3].contains("Withheld"), "html does not say what it withholds");
                let csv_row = texts[1].lines().find(|l| l.contains("vm-a")).unwrap();
                assert!(csv_row.ends_with(",,,,,,"), "csv shows withheld figures: {csv_row}");
            }
            DedupScope::Project => {
                // No chunk is shared across projects: the project's figures are exact and its own.
                assert!(r.get("reason").is_none() && r.get("withheld").is_none(), "{r}");
                assert_eq!(n(s, "unique_bytes"), n(s, "referenced_bytes"), "{s}");
                assert_eq!(n(s, "shared_bytes"), 0, "{s}");
                assert_eq!(n(s, "stored_bytes_added"), n(&a, "stored_bytes_added"));
                assert_eq!(n(&r["totals"], "unique_bytes"), n(s, "unique_bytes"));
                assert_eq!(n(g, "unique_bytes"), n(s, "unique_bytes"));
                assert!(texts[2].contains("imgarc_snapshot_unique_bytes{"), "{}", texts[2]);
            }
        }
    }
}

/// Sync passes each Glance image's `owner` as its project: the same bytes uploaded as two
/// images of two projects are stored twice with scope `project`, once with scope `repository`.
#[cfg(feature = "openstack-tests")]
#[test]
fn sync_keys_each_image_by_its_glance_owner() {
    use crate::support::openstack as os;
    let _serial = os::serial();
    let session = imgarc::openstack::keystone::Session::new(&os::config_from(os::os_env()).unwrap()).unwrap();
    let g = imgarc::openstack::glance::GlanceClient::new(&session).unwrap().with_retry(os::quick_retry());
    let tag = os::unique("dedup-scope");
    let data = bytes(2 << 20, 31, false);
    let (own, _c1) = os::upload_image(&g, &format!("{tag}-own"), &data, serde_json::json!({"tags": [tag]}));
    let demo_project = os::env("KEYSTONE_DEMO_PROJECT_ID");
    let (other, _c2) = os::upload_image(&g, &format!("{tag}-demo"), &data, serde_json::json!({"tags": [tag], "owner": demo_project}));
    assert_ne!(own.owner, other.owner);
    for scope in [DedupScope::Repository, DedupScope::Project] {
        let env = encrypted_env(scope);
        let filter = format!("tag={tag}");
        let doc = json(&env, &["sync", "--filter", &filter, "--all-projects"]);
        let archived = doc["archived"].as_array().unwrap_or_else(|| panic!("{doc}"));
        assert_eq!(archived.len(), 2, "{doc}");
        let stored: Vec<u64> = archived.iter().map(|e| n(e, "bytes_stored")).collect();
        let (small, large) = (*stored.iter().min().unwrap(), *stored.iter().max().unwrap());
        match scope {
            DedupScope::Repository => assert!(small * 20 < large, "scope repository stored the second copy again: {doc}"),
            DedupScope::Project => assert!(small * 10 >= large * 9, "scope project dedup'ed across projects: {doc}"),
        }
        for e in archived {
            assert!(restored(&env, e["snapshot"].as_str().unwrap()) == data, "restore of {e} is not byte-exact");
        }
        let projects: std::collections::HashSet<String> = json(&env, &["report"])["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["project"].as_str().map(str::to_string))
            .collect();
        assert_eq!(projects.len(), 2, "each snapshot records its image's owner");
    }
}

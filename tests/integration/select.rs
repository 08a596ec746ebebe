//! The snapshot selector through the binary (`list`/`snapshots`, `forget`: `--name` globs, `--tag`,
//! `--image`, `--latest`, `-r`), and, with `openstack-tests`, the OpenStack conventions against the
//! real Keystone and Glance (`--os-region-name`, `--os-interface`, `--os-cacert`, `OS_*` over a
//! named cloud, errors that say what was used).

use crate::support::{bytes, s, Env};
use serde_json::Value;

fn ids(v: &Value) -> Vec<String> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

fn want(ids: &[&String]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn names(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_string()).collect()
}

/// Five snapshots, oldest first: web-01 [nightly], web-02 [nightly,golden], db1, web-01 [nightly], vm[1].
struct Fixture {
    env: Env,
    ids: Vec<String>,
}

fn fixture() -> Fixture {
    let env = Env::init("64K");
    let mut ids = Vec::new();
    for (i, (name, tags)) in
        [("web-01", &["nightly"][..]), ("web-02", &["nightly", "golden"]), ("db1", &[]), ("web-01", &["nightly"]), ("vm[1]", &[])]
            .iter()
            .enumerate()
    {
        let f = env.path(&format!("img{i}"));
        std::fs::write(&f, bytes(70_000, i as u64 + 1, false)).unwrap();
        let mut args = vec!["archive", f.to_str().unwrap(), "--name", name];
        for t in *tags {
            args.extend(["--tag", t]);
        }
        ids.push(s(&env.json(&args), "snapshot"));
    }
    Fixture { env, ids }
}

#[test]
fn list_selects_by_glob_tag_and_latest() {
    let f = fixture();
    let e = &f.env;
    let all = e.json(&["list"]);
    assert_eq!(ids(&all), f.ids, "no selector: everything, oldest first");
    // The JSON fields of list are unchanged.
    let mut keys: Vec<&String> = all[0].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["future", "id", "logical_bytes", "name", "stored_bytes_added", "tags", "time"]);

    assert_eq!(ids(&e.json(&["list", "--name", "web-*"])), want(&[&f.ids[0], &f.ids[1], &f.ids[3]]));
    assert_eq!(ids(&e.json(&["list", "--name", "web-0[2-9]"])), want(&[&f.ids[1]]));
    assert_eq!(ids(&e.json(&["list", "--name", "db?"])), want(&[&f.ids[2]]));
    // A plain name is exact, even one that holds glob characters.
    assert_eq!(ids(&e.json(&["list", "--name", "web-01"])), want(&[&f.ids[0], &f.ids[3]]));
    assert_eq!(ids(&e.json(&["list", "--name", "web"])), Vec::<String>::new());
    assert_eq!(ids(&e.json(&["list", "--name", "vm[1]"])), want(&[&f.ids[4]]));

    // --tag a,b: both; repeated: either; '': untagged.
    assert_eq!(ids(&e.json(&["list", "--tag", "nightly,golden"])), want(&[&f.ids[1]]));
    assert_eq!(ids(&e.json(&["list", "--tag", "golden", "--tag", ""])), want(&[&f.ids[1], &f.ids[2], &f.ids[4]]));
    assert_eq!(ids(&e.json(&["list", "--tag", "nightly"])).len(), 3);

    // --latest N: the newest N of each group (no Glance source here: per name), after the other criteria.
    assert_eq!(ids(&e.json(&["list", "--latest", "1"])), want(&[&f.ids[1], &f.ids[2], &f.ids[3], &f.ids[4]]));
    assert_eq!(ids(&e.json(&["list", "--latest", "2", "--name", "web-01"])), want(&[&f.ids[0], &f.ids[3]]));
    assert_eq!(ids(&e.json(&["list", "--latest", "1", "--name", "web-*", "--tag", "nightly"])), want(&[&f.ids[1], &f.ids[3]]));
    // Files have no Glance image: --image selects none of them.
    assert_eq!(ids(&e.json(&["list", "--image", "0f3e9c1a-0000-4000-8000-000000000000"])), Vec::<String>::new());

    // Positional ids (or prefixes) narrow too, and combine with the rest.
    assert_eq!(ids(&e.json(&["snapshots", &f.ids[3][..10], &f.ids[2]])), want(&[&f.ids[2], &f.ids[3]]));
    assert_eq!(ids(&e.json(&["list", &f.ids[3][..10], &f.ids[2], "--tag", "nightly"])), want(&[&f.ids[3]]));
    let o = e.run(&["list", "deadbeefdeadbeef"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no snapshot deadbeefdeadbeef"), "{}", String::from_utf8_lossy(&o.stderr));

    // Prose lists the same rows.
    let prose = e.ok(&["list", "--name", "web-0[2]"]);
    assert!(prose.contains(&f.ids[1][..16]) && !prose.contains(&f.ids[0][..16]), "{prose}");
}

#[test]
fn snapshots_is_list_and_r_is_repo() {
    let f = fixture();
    let e = &f.env;
    assert_eq!(e.json(&["snapshots", "--tag", "golden"]), e.json(&["list", "--tag", "golden"]));
    // -r instead of --repo (the harness's --repo is left out here).
    let run = |args: &[&str]| {
        let o = crate::support::bare_cmd()
            .args(args)
            .env("IMGARC_CACHE_DIR", &e.cache)
            .env_remove("IMGARC_REPO")
            .env("IMGARC_PASSWORD", crate::support::PASSWORD)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o
    };
    let o = run(&["-r", e.repo.to_str().unwrap(), "--json", "snapshots"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ids(&v), f.ids);
    // -r after the verb too (a global option), and no verb uses -r for anything else.
    let o = run(&["--json", "list", "-r", e.repo.to_str().unwrap(), "--name", "db1"]);
    assert_eq!(ids(&serde_json::from_slice(&o.stdout).unwrap()), want(&[&f.ids[2]]));
}

#[test]
fn every_verb_parses_its_help() {
    // clap checks a command's arguments (unique ids, …) only when it is built: a clash panics at run time.
    for verb in [
        "init",
        "key",
        "archive",
        "list",
        "snapshots",
        "show",
        "restore",
        "inspect",
        "check",
        "index",
        "unlock",
        "glance",
        "demo",
        "sync",
        "forget",
        "prune",
        "report",
    ] {
        let o = crate::support::bare_cmd().args([verb, "--help"]).output().unwrap();
        assert!(o.status.success(), "imgarc {verb} --help: {}", String::from_utf8_lossy(&o.stderr));
    }
    for nested in [["key", "add"], ["key", "remove"], ["key", "passwd"], ["key", "list"], ["index", "rebuild"], ["glance", "list"]] {
        let o = crate::support::bare_cmd().args(nested).arg("--help").output().unwrap();
        assert!(o.status.success(), "imgarc {nested:?} --help: {}", String::from_utf8_lossy(&o.stderr));
    }
    let help = String::from_utf8(crate::support::bare_cmd().args(["forget", "--help"]).output().unwrap().stdout).unwrap();
    assert!(help.contains("--name <GLOB>") && help.contains("--tag") && help.contains("--image") && !help.contains("--latest"), "{help}");
    let top = String::from_utf8(crate::support::bare_cmd().arg("--help").output().unwrap().stdout).unwrap();
    assert!(top.contains("-r, --repo") && top.contains("--os-region-name") && top.contains("--insecure"), "{top}");
}

#[test]
fn forget_takes_the_selector() {
    let f = fixture();
    let e = &f.env;
    // --name glob narrows what the policy sees: keep-last 1 per name among web-*.
    let dry = e.json(&["forget", "--name", "web-*", "--keep-last", "1", "--group-by", "name", "--dry-run"]);
    assert_eq!(ids(&dry["remove"]), want(&[&f.ids[0]]));
    let mut kept = ids(&dry["keep"]);
    kept.sort();
    let mut expected = want(&[&f.ids[1], &f.ids[3]]);
    expected.sort();
    assert_eq!(kept, expected, "db1 and vm[1] are outside the selection: neither kept nor removed");
    // --tag narrows too; named ids are removed whatever the selector says.
    let v = e.json(&["forget", "--tag", "golden", "--keep-last", "1", "--dry-run", &f.ids[2]]);
    assert_eq!(ids(&v["keep"]), want(&[&f.ids[1]]));
    assert_eq!(ids(&v["remove"]), want(&[&f.ids[2]]));
    // An existing exact name keeps working as before.
    let v = e.json(&["forget", "--name", "web-01", "--keep-last", "1"]);
    assert_eq!(v["removed"], 1);
    assert_eq!(names(&e.json(&["list"])), ["web-02", "db1", "web-01", "vm[1]"]);
    // --latest means nothing to forget: a usage error (exit 2) that says what to use instead.
    let o = e.run(&["forget", "--latest", "1", "--keep-last", "1"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--latest") && err.contains("--keep-last"), "{err}");
    // Bad selector values are clear errors, nothing removed.
    let o = e.run(&["list", "--latest", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let o = e.run(&["forget", "--name", "", "--keep-last", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--name"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(e.json(&["list"]).as_array().unwrap().len(), 4);
}

#[cfg(feature = "openstack-tests")]
mod openstack {
    use super::{ids, want};
    use crate::support::openstack::{env, noauth, serial, unique, upload_image};
    use crate::support::{bytes, s, Env};
    use serde_json::json;
    use std::path::Path;
    use std::process::{Command, Output};

    /// Two images in the noauth Glance, archived twice and once (`archive glance:ID --glance-url`):
    /// `--image` (id or unique prefix) and `--latest` per image.
    #[test]
    fn image_selects_by_glance_id_and_latest_counts_per_image() {
        let _serial = serial();
        let g = noauth();
        let (a, _ca) = upload_image(&g, &unique("sel-a"), &bytes(90_000, 11, false), json!({}));
        let (b, _cb) = upload_image(&g, &unique("sel-b"), &bytes(90_000, 12, false), json!({}));
        let e = Env::init("64K");
        let url = env("GLANCE_URL");
        let archive = |id: &str| s(&e.json(&["--glance-url", &url, "archive", &format!("glance:{id}"), "--name", "same-name"]), "snapshot");
        let (a1, b1, a2) = (archive(&a.id), archive(&b.id), archive(&a.id));
        assert_eq!(ids(&e.json(&["list", "--image", &a.id])), want(&[&a1, &a2]));
        assert_eq!(ids(&e.json(&["list", "--image", &b.id[..13]])), want(&[&b1]), "a unique prefix");
        // --latest 1 counts per image, not per name (all three share one name).
        assert_eq!(ids(&e.json(&["list", "--latest", "1"])), want(&[&b1, &a2]));
        assert_eq!(ids(&e.json(&["list", "--latest", "1", "--image", &a.id])), want(&[&a2]));
        // --glance-url (no cloud) takes the same TLS flags: a missing CA bundle is refused naming it.
        let missing = e.path("no-such-ca.pem");
        let o = e.run(&["--glance-url", &url, "--os-cacert", missing.to_str().unwrap(), "glance", "list"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&o.stderr).contains("no-such-ca.pem"), "{}", String::from_utf8_lossy(&o.stderr));
        e.ok(&["--glance-url", &url, "--insecure", "glance", "list"]);
        // forget --image narrows the policy to that image.
        let v = e.json(&["forget", "--image", &a.id, "--keep-last", "1", "--dry-run"]);
        assert_eq!(ids(&v["remove"]), want(&[&a1]));
        assert_eq!(ids(&v["keep"]), want(&[&a2]));
    }

    /// A clouds.yaml (+ secure.yaml) for the admin of `ci/openstack.sh`, with `extra` cloud lines.
    fn clouds(dir: &Path, extra: &str) {
        std::fs::write(
            dir.join("clouds.yaml"),
            format!(
                "clouds:\n  test:\n    auth:\n      auth_url: {}\n      username: {}\n      project_name: {}\n      user_domain_id: default\n      project_domain_id: default\n{extra}",
                env("OS_AUTH_URL"),
                env("OS_USERNAME"),
                env("OS_PROJECT_NAME")
            ),
        )
        .unwrap();
        std::fs::write(dir.join("secure.yaml"), format!("clouds:\n  test:\n    auth:\n      password: '{}'\n", env("OS_PASSWORD")))
            .unwrap();
    }

    /// `imgarc --os-cloud test ARGS… glance list` with no OS_* of the caller but `vars`.
    fn run(dir: &Path, vars: &[(&str, &str)], args: &[&str]) -> Output {
        let mut c: Command = crate::support::bare_cmd();
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OS_") || k.starts_with("IMGARC_")) {
            c.env_remove(k);
        }
        c.current_dir(dir).env("OS_CLIENT_CONFIG_FILE", dir.join("clouds.yaml")).env("OS_CLIENT_SECURE_FILE", dir.join("secure.yaml"));
        c.env("IMGARC_CACHE_DIR", dir.join("cache")).env("IMGARC_TEST_KDF", "fast");
        c.envs(vars.iter().copied());
        c.args(["--repo", dir.join("no-repo").to_str().unwrap(), "--json", "--os-cloud", "test"]).args(args).args(["glance", "list"]);
        c.output().unwrap()
    }

    fn stderr(o: &Output) -> String {
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    #[test]
    fn region_interface_and_cacert_flags_reach_keystone_and_glance() {
        let _serial = serial();
        let d = tempfile::tempdir().unwrap();
        clouds(d.path(), "    region_name: RegionOne\n");
        let password = env("OS_PASSWORD");
        let ok = run(d.path(), &[], &[]);
        assert!(ok.status.success(), "{}", stderr(&ok));

        // A region the catalog lacks: the error names it, the regions the catalog has, and what was used.
        let o = run(d.path(), &[], &["--os-region-name", "NoSuchRegion"]);
        assert_eq!(o.status.code(), Some(1));
        let e = stderr(&o);
        for want in
            ["NoSuchRegion", "RegionOne/public", "cloud test", "clouds.yaml", "secure.yaml", &env("OS_AUTH_URL"), "interface public"]
        {
            assert!(e.contains(want), "{want:?} missing: {e}");
        }
        assert!(e.contains(&format!("project {}", env("OS_PROJECT_NAME"))) && e.contains(&format!("user {}", env("OS_USERNAME"))), "{e}");
        assert!(e.contains("region_name from --os-region-name"), "{e}");
        assert!(!e.contains(&password), "the password leaked: {e}");
        // OS_REGION_NAME now overrides the named cloud the same way; the flag wins over it.
        let o = run(d.path(), &[("OS_REGION_NAME", "EnvRegion")], &[]);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("EnvRegion") && stderr(&o).contains("region_name from OS_REGION_NAME"), "{}", stderr(&o));
        let o = run(d.path(), &[("OS_REGION_NAME", "EnvRegion")], &["--os-region-name", "RegionOne"]);
        assert!(o.status.success(), "{}", stderr(&o));

        // --os-interface picks the catalog's endpoint of that interface: what the test catalog has works,
        // what it lacks is an error naming the interface and what there is.
        let cfg = imgarc::openstack::config::CloudConfig::resolve_with(
            Some("test"),
            &imgarc::openstack::config::Lookup { env: &|_| None, dirs: vec![d.path().to_path_buf()] },
        )
        .unwrap();
        let catalog = imgarc::openstack::keystone::Session::new(&cfg).unwrap().catalog();
        let has =
            |i: &str| catalog.iter().any(|ep| ep.service_type == "image" && ep.interface == i && ep.region.as_deref() == Some("RegionOne"));
        assert!(has("public") && has("internal"), "the test catalog: {catalog:?}");
        let o = run(d.path(), &[], &["--os-interface", "internal"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = run(d.path(), &[], &["--os-interface", "admin"]);
        if has("admin") {
            assert!(o.status.success(), "{}", stderr(&o));
        } else {
            assert_eq!(o.status.code(), Some(1));
            let e = stderr(&o);
            assert!(
                e.contains("interface admin") && e.contains("RegionOne/internal") && e.contains("interface from --os-interface"),
                "{e}"
            );
        }
        let o = run(d.path(), &[], &["--os-interface", "private"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("private") && stderr(&o).contains("--os-interface"), "{}", stderr(&o));

        // --os-cacert (and OS_CACERT) reach the HTTP client: a missing bundle fails before any call,
        // a real one (the system bundle) works against the plain-HTTP Keystone.
        let missing = d.path().join("no-such-ca.pem");
        let o = run(d.path(), &[], &["--os-cacert", missing.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("no-such-ca.pem"), "{}", stderr(&o));
        let o = run(d.path(), &[("OS_CACERT", missing.to_str().unwrap())], &[]);
        assert!(stderr(&o).contains("no-such-ca.pem"), "{}", stderr(&o));
        let system =
            ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"].into_iter().find(|p| Path::new(p).is_file());
        match system {
            Some(bundle) => {
                let o = run(d.path(), &[("OS_CACERT", missing.to_str().unwrap())], &["--os-cacert", bundle]);
                assert!(o.status.success(), "the flag wins over OS_CACERT: {}", stderr(&o));
            }
            None => crate::support::skip_or_fail_in_ci("no system CA bundle for the --os-cacert success case"),
        }
        let o = run(d.path(), &[], &["--insecure"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }

    #[test]
    fn keystone_refusal_and_unreachable_say_what_was_used() {
        let _serial = serial();
        let d = tempfile::tempdir().unwrap();
        clouds(d.path(), "");
        let bad = "Wr0ng-Sel3ctor-Pa55";
        std::fs::write(d.path().join("secure.yaml"), format!("clouds:\n  test:\n    auth:\n      password: '{bad}'\n")).unwrap();
        let o = run(d.path(), &[], &[]);
        assert_eq!(o.status.code(), Some(1));
        let e = stderr(&o);
        assert!(e.contains("401") && e.contains("cloud test") && e.contains(&format!("user {}", env("OS_USERNAME"))), "{e}");
        assert!(!e.contains(bad), "the password leaked: {e}");
        // The auth variables do not override a named cloud: a right OS_PASSWORD does not rescue it.
        let o = run(d.path(), &[("OS_PASSWORD", &env("OS_PASSWORD"))], &[]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));

        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let gone = format!("http://127.0.0.1:{port}/v3");
        std::fs::write(
            d.path().join("clouds.yaml"),
            format!("clouds:\n  test:\n    auth:\n      auth_url: {gone}\n      username: someone\n      project_name: p\n    regions: [RegionOne, RegionTwo]\n"),
        )
        .unwrap();
        let o = run(d.path(), &[], &["--os-region-name", "RegionTwo"]);
        assert_eq!(o.status.code(), Some(1));
        let e = stderr(&o);
        assert!(
            e.contains(&port.to_string()) && e.contains("cloud test") && e.contains("region RegionTwo") && e.contains("user someone"),
            "{e}"
        );
        assert!(!e.contains(bad), "{e}");
        // A region outside the cloud's regions: list is refused before any call.
        let o = run(d.path(), &[], &["--os-region-name", "RegionNine"]);
        let e = stderr(&o);
        assert!(e.contains("RegionNine") && e.contains("RegionOne, RegionTwo"), "{e}");
    }
}

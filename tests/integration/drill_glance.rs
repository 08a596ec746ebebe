//! `imgarc drill --to-glance` against real Glances (ci/openstack.sh): an image archived from
//! the noauth Glance is restored into the same Glance and, with `--to-cloud dr` (a clouds.yaml
//! entry for the Keystone-backed Glance), into another cloud; Glance's os_hash_value of the new
//! image is checked against the archive, the image is deleted (kept with `--keep`), the record
//! reaches `report --format json` and the Prometheus output, and no password is printed.

use crate::support::openstack as os;
use crate::support::{self, Env};
use serde_json::{json, Value};

fn qcow2_image(env: &Env) -> Vec<u8> {
    let raw = env.path("g.raw");
    imgarc::synthetic::SyntheticDisk::new(16 << 20, 9).write_night(&raw, 0).unwrap();
    let q = env.path("g.qcow2");
    support::qcow2_util::qemu_img(&["convert", "-O", "qcow2", raw.to_str().unwrap(), q.to_str().unwrap()]);
    std::fs::read(q).unwrap()
}

/// `imgarc --glance-url GLANCE --json ARGS`, with a clouds.yaml naming the Keystone cloud `dr`.
fn run(env: &Env, args: &[&str]) -> (i32, Value, String) {
    let clouds = env.path("clouds.yaml");
    std::fs::write(
        &clouds,
        format!(
            "clouds:\n  dr:\n    auth:\n      auth_url: {}\n      username: {}\n      password: '{}'\n      project_name: {}\n      user_domain_id: default\n      project_domain_id: default\n    region_name: RegionOne\n    interface: internal\n",
            os::env("OS_AUTH_URL"),
            os::env("OS_USERNAME"),
            os::env("OS_PASSWORD"),
            os::env("OS_PROJECT_NAME")
        ),
    )
    .unwrap();
    let mut a = vec!["--glance-url", os::env("GLANCE_URL").leak(), "--json"];
    a.extend_from_slice(args);
    let mut cmd = env.cmd(&a);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OS_")) {
        cmd.env_remove(k);
    }
    let o = cmd.env("OS_CLIENT_CONFIG_FILE", &clouds).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned());
    let password = os::env("OS_PASSWORD");
    assert!(!stdout.contains(&password) && !stderr.contains(&password), "the password was printed");
    let doc = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}\n{stderr}"));
    (o.status.code().unwrap(), doc, stderr)
}

fn glance_check(drill: &Value) -> &Value {
    drill["checks"].as_array().unwrap().iter().find(|c| c["check"] == "glance").unwrap_or_else(|| panic!("no glance check: {drill}"))
}

fn drill_images(g: &imgarc::openstack::glance::GlanceClient, snapshot: &str) -> Vec<imgarc::openstack::glance::ImageRecord> {
    g.list().unwrap().into_iter().filter(|r| r.properties.get("imgarc_drill_of").and_then(|v| v.as_str()) == Some(snapshot)).collect()
}

#[test]
fn drill_into_glance_verifies_and_cleans_up_and_is_reported() {
    let _serial = os::serial();
    let g = os::noauth();
    let env = Env::init("64K");
    let data = qcow2_image(&env);
    let name = os::unique("drill");
    let (rec, _c) = os::upload_image(&g, &name, &data, json!({"disk_format": "qcow2"}));
    let (code, a, err) = run(&env, &["archive", &format!("glance:{}", rec.id)]);
    assert_eq!(code, 0, "{err}");
    let snap = a["snapshot"].as_str().unwrap().to_string();

    // Into the same Glance: verified, then deleted.
    let (code, doc, err) = run(&env, &["drill", "--to-glance", &snap]);
    assert_eq!(code, 0, "{doc} {err}");
    let d = &doc["drills"][0];
    assert_eq!(d["image"], rec.id.as_str());
    let check = glance_check(d);
    assert_eq!(check["status"], "passed", "{d}");
    let detail = check["detail"].as_str().unwrap();
    assert!(detail.contains("os_hash_value matches the archived sha512") && detail.contains("deleted"), "{detail}");
    let rebuild = &d["checks"][0];
    assert!(rebuild["detail"].as_str().unwrap().contains("sha512"), "Glance's os_hash_value is among the digests: {rebuild}");
    let left: Vec<_> = drill_images(&g, &snap).into_iter().filter(|r| r.status != "deleted").collect();
    assert!(left.is_empty(), "the drill's image is gone: {left:?}");

    // Into the DR cloud (Keystone), kept: it is there, active, with the archived bytes' hash.
    let (code, doc, err) = run(&env, &["drill", "--to-glance", "--to-cloud", "dr", "--keep", &snap]);
    assert_eq!(code, 0, "{doc} {err}");
    let check = glance_check(&doc["drills"][0]).clone();
    assert_eq!(check["status"], "passed", "{doc}");
    let detail = check["detail"].as_str().unwrap();
    assert!(detail.contains(os::env("GLANCE_KEYSTONE_URL").trim_end_matches('/')), "restored into the DR Glance: {detail}");
    let kept_id = detail.split("kept as image ").nth(1).expect("the kept image is named").trim().to_string();
    // The DR Glance needs a token: read the kept image through a Keystone session of the same user.
    let cfg = os::config_from(os::os_env()).unwrap();
    let session = imgarc::openstack::keystone::Session::new(&cfg).unwrap();
    let drg = imgarc::openstack::glance::GlanceClient::new(&session).unwrap();
    let kept = drg.get(&kept_id).unwrap();
    let _c2 = os::Cleanup(drg.clone(), kept.id.clone());
    assert_eq!(kept.status, "active");
    assert_eq!(kept.os_hash_value, rec.os_hash_value);

    // Every record reaches the report and its Prometheus output.
    let (code, report, err) = run(&env, &["report", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let text = report.to_string();
    assert!(text.contains(&snap[..16]) || text.contains(&snap), "the drilled snapshot is in the report's drills: {report}");
    let o = env.cmd(&["report", "--format", "prometheus"]).output().unwrap();
    let prom = support::prom::parse(&String::from_utf8_lossy(&o.stdout)).unwrap();
    let t = prom
        .value(
            "imgarc_image_last_drill_success_timestamp_seconds",
            &[("image", &rec.id), ("name", &name), ("project", rec.owner.as_deref().unwrap_or(""))],
        )
        .expect("the image's last drill success");
    let started = doc["drills"][0]["started"].as_str().unwrap();
    let started = chrono::DateTime::parse_from_rfc3339(started).unwrap().timestamp() as f64;
    assert!((t - started).abs() < 2.0, "the last success is the DR drill's start ({t} vs {started})");
}

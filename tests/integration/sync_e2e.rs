//! `imgarc sync` end to end against the real noauth Glance of `ci/openstack.sh`:
//! a week of nights for two VMs (the make-series corpus in `IMGARC_CORPUS_WEEK`,
//! else a synthetic series), re-runs that read nothing, metadata-only changes,
//! the nightly "Upload to Image" rotation (new image, same name, old one
//! deleted), failures that do not stop the rest, the singleton lock, and a
//! run killed with SIGKILL and started again.
//! Every test tags its images with a unique tag and syncs `--filter tag=<it>`,
//! so tests sharing the Glance never see each other's images.
use crate::support;
use crate::support::openstack as os;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// Runs `imgarc --glance-url … --json sync --filter tag=<tag> ARGS`: (exit code, the JSON document, stderr).
fn sync(env: &Env, tag: &str, args: &[&str]) -> (i32, Value, String) {
    let o = env.run(&sync_args(tag, true, args).iter().map(String::as_str).collect::<Vec<_>>());
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    let doc: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("sync printed no single JSON document ({e}):\n{stdout}\n{stderr}"));
    (o.status.code().unwrap_or(-1), doc, stderr)
}

fn sync_args(tag: &str, json: bool, args: &[&str]) -> Vec<String> {
    let mut a = vec!["--glance-url".to_string(), os::env("GLANCE_URL")];
    if json {
        a.push("--json".into());
    }
    a.extend(["sync".to_string(), "--filter".into(), format!("tag={tag}")]);
    a.extend(args.iter().map(|s| s.to_string()));
    a
}

fn spawn_sync(env: &Env, tag: &str, args: &[&str]) -> Child {
    env.cmd(&sync_args(tag, true, args).iter().map(String::as_str).collect::<Vec<_>>())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The ids listed under `key` of a sync report.
fn ids(doc: &Value, key: &str) -> Vec<String> {
    let mut v: Vec<String> = doc[key].as_array().unwrap_or_else(|| panic!("{key} missing in {doc}")).iter().map(|e| s(e, "id")).collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn entry<'a>(doc: &'a Value, key: &str, id: &str) -> &'a Value {
    doc[key].as_array().unwrap().iter().find(|e| e["id"] == id).unwrap_or_else(|| panic!("{id} not in {key}: {doc}"))
}

/// One night of one VM: the image file and its sha256.
struct Night {
    vm: String,
    night: u32,
    path: PathBuf,
    sha256: String,
    disk_format: &'static str,
}

/// A week of nights for VMs a and b: the make-series corpus when CI built it
/// (`IMGARC_CORPUS_WEEK`, qcow2), else a small synthetic raw series.
fn week(env: &Env) -> Vec<Night> {
    if let Ok(dir) = std::env::var("IMGARC_CORPUS_WEEK") {
        let manifest = std::fs::read_to_string(Path::new(&dir).join("manifest.tsv")).unwrap();
        let nights: Vec<Night> = manifest
            .lines()
            .skip(1)
            .map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                Night {
                    vm: f[0].to_string(),
                    night: f[1].parse().unwrap(),
                    path: Path::new(&dir).join(f[3]),
                    sha256: f[5].to_string(),
                    disk_format: if f[2] == "raw" { "raw" } else { "qcow2" },
                }
            })
            .collect();
        assert!(nights.len() >= 14, "IMGARC_CORPUS_WEEK should hold 7 nights of 2 VMs");
        return nights;
    }
    eprintln!("IMGARC_CORPUS_WEEK not set: syncing a synthetic series (the .ci/run script builds the make-series week)");
    let mut out = Vec::new();
    for (vm, seed) in [("vm-a", 11), ("vm-b", 12)] {
        let disk = imgarc::synthetic::SyntheticDisk::new(8 << 20, seed);
        for night in 0..7 {
            let path = env.path(&format!("{vm}-{night}.raw"));
            disk.write_night(&path, night).unwrap();
            let sha256 = sha256(&std::fs::read(&path).unwrap());
            out.push(Night { vm: vm.into(), night, path, sha256, disk_format: "raw" });
        }
    }
    out
}

fn upload(g: &imgarc::openstack::glance::GlanceClient, name: &str, path: &Path, disk_format: &str, tag: &str) -> (String, os::Cleanup) {
    let data = std::fs::read(path).unwrap();
    let (rec, guard) = os::upload_image(g, name, &data, json!({"disk_format": disk_format, "tags": [tag]}));
    (rec.id, guard)
}

#[test]
fn a_week_of_nights_syncs_once_then_only_what_changed() {
    let _serial = os::serial();
    let g = os::noauth();
    let env = Env::init("64K");
    let tag = os::unique("sync-week");
    let nights = week(&env);
    let last = nights.iter().map(|n| n.night).max().unwrap();
    // Every night but vm-a's last is in Glance: one image per VM and night.
    let mut images = Vec::new(); // (id, night index, guard)
    let t0 = Instant::now();
    for (i, n) in nights.iter().enumerate().filter(|(_, n)| !(n.vm == "vm-a" && n.night == last)) {
        let (id, guard) = upload(&g, &format!("{tag}-{}-n{}", n.vm, n.night), &n.path, n.disk_format, &tag);
        images.push((id, i, guard));
    }
    eprintln!("uploaded {} images in {:.1}s", images.len(), t0.elapsed().as_secs_f64());
    let all_ids = sorted(images.iter().map(|x| x.0.clone()).collect());

    // 1. The first run archives them all; later nights dedup against earlier ones.
    let (code, first, err) = sync(&env, &tag, &["--jobs", "2"]);
    assert_eq!(code, 0, "{err}\n{first}");
    assert_eq!(first["ok"], true);
    assert_eq!(ids(&first, "archived"), all_ids);
    assert!(ids(&first, "unchanged").is_empty() && ids(&first, "failed").is_empty() && ids(&first, "deleted_upstream").is_empty());
    let total: u64 =
        nights.iter().filter(|n| !(n.vm == "vm-a" && n.night == last)).map(|n| std::fs::metadata(&n.path).unwrap().len()).sum();
    assert_eq!(u(&first, "bytes_read"), total);
    assert!(u(&first, "bytes_stored") < total / 2, "a week of nights should dedup: {first}");
    // One log line per image, each starting with an RFC 3339 time.
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(" archived ")).collect();
    assert_eq!(lines.len(), images.len(), "{err}");
    assert!(lines.iter().all(|l| imgarc::util::parse_rfc3339(l.split(' ').next().unwrap()).is_some()), "{err}");

    // 2. A re-run reads nothing: one listing, every image unchanged.
    let (code, again, err) = sync(&env, &tag, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ids(&again, "unchanged"), all_ids);
    assert!(ids(&again, "archived").is_empty() && ids(&again, "metadata_updated").is_empty());
    assert_eq!(u(&again, "bytes_read"), 0);
    assert_eq!(u(&again, "bytes_stored"), 0);

    // Filters: same key ORs, different keys AND, --exclude removes; nothing outside is judged deleted.
    let (_, vm_b, _) = sync(&env, &tag, &["--filter", &format!("name={tag}-vm-b-*")]);
    let b_count = nights.iter().filter(|n| n.vm == "vm-b").count();
    assert_eq!(ids(&vm_b, "unchanged").len(), b_count);
    assert!(ids(&vm_b, "deleted_upstream").is_empty());
    let (_, two, _) = sync(&env, &tag, &["--filter", &format!("name={tag}-vm-b-n0"), "--filter", &format!("name={tag}-vm-a-n?")]);
    assert_eq!(ids(&two, "unchanged").len(), 1 + last as usize);
    let (_, ex, _) = sync(&env, &tag, &["--exclude", "name=*-vm-b-*"]);
    assert_eq!(ids(&ex, "unchanged").len(), images.len() - b_count);

    // 3. Properties changed, bytes not: a new snapshot with the new record, nothing downloaded.
    let (changed_id, changed_night, _) = &images[0];
    g.update(changed_id, &[json!({"op": "add", "path": "/backup_note", "value": "tuesday"})]).unwrap();
    let (code, meta, err) = sync(&env, &tag, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ids(&meta, "metadata_updated"), vec![changed_id.clone()]);
    assert_eq!(ids(&meta, "unchanged").len(), images.len() - 1);
    assert_eq!(u(&meta, "bytes_read"), 0);
    let updated = entry(&meta, "metadata_updated", changed_id);
    let shown = env.json(&["show", &s(updated, "snapshot")]);
    let previous = env.json(&["show", &s(updated, "previous")]);
    assert_eq!(shown["metadata"]["backup_note"], "tuesday");
    assert_eq!(shown["guest"], previous["guest"]);
    assert_eq!(shown["layout"], previous["layout"]);
    assert_eq!(shown["source"]["image_id"], changed_id.as_str());
    assert_eq!(u(&shown["stats"], "stored_bytes_added"), 0);
    assert_eq!(env.restore_bytes(&s(updated, "snapshot")).len() as u64, std::fs::metadata(&nights[*changed_night].path).unwrap().len());

    // 4. The nightly rotation: tonight's vm-a upload takes yesterday's name and yesterday's image is deleted.
    let tonight = nights.iter().find(|n| n.vm == "vm-a" && n.night == last).unwrap();
    let yesterday = images.iter().position(|(_, i, _)| nights[*i].vm == "vm-a" && nights[*i].night == last - 1).unwrap();
    let (old_id, _, old_guard) = images.remove(yesterday);
    let (new_id, _new_guard) = upload(&g, &format!("{tag}-vm-a-n{}", last - 1), &tonight.path, tonight.disk_format, &tag);
    g.delete(&old_id).unwrap();
    drop(old_guard);
    let (code, rot, err) = sync(&env, &tag, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ids(&rot, "archived"), vec![new_id.clone()]);
    assert_eq!(ids(&rot, "deleted_upstream"), vec![old_id.clone()]);
    assert!(env.repo.join("upstream/deleted").join(&old_id).is_file());
    let key = format!("upstream/deleted/{old_id}");
    let record = serde_json::to_value(env.open_repo().load::<imgarc::repository::upstream::DeletedUpstream>(&key, None).unwrap()).unwrap();
    assert_eq!(record["image_id"], old_id.as_str());
    let new_entry = entry(&rot, "archived", &new_id);
    assert!(u(new_entry, "bytes_stored") < u(new_entry, "bytes_read") / 4, "tonight dedups against last night: {new_entry}");
    assert!(err.contains("deleted upstream"), "{err}");
    // Restored from the repository, tonight's image is the uploaded file, byte for byte.
    let restored = env.restore_bytes(&s(new_entry, "snapshot"));
    assert_eq!(sha256(&restored), tonight.sha256);

    // A deletion is reported once; an image recorded as deleted that is listed again is withdrawn.
    let (_, quiet, _) = sync(&env, &tag, &[]);
    assert!(ids(&quiet, "deleted_upstream").is_empty() && ids(&quiet, "archived").is_empty());
    let (back_id, _, _) = &images[1];
    let back = env.repo.join("upstream/deleted").join(back_id);
    // Records are sealed in an encrypted repository: written through the library.
    let record = imgarc::repository::upstream::DeletedUpstream {
        image_id: back_id.clone(),
        name: "x".into(),
        cloud: None,
        detected: "2026-01-01T00:00:00Z".into(),
    };
    env.open_repo().save(&record).unwrap();
    assert!(back.is_file());
    let (code, re, _) = sync(&env, &tag, &[]);
    assert_eq!(code, 0);
    assert_eq!(ids(&re, "reappeared"), vec![back_id.clone()]);
    assert!(!back.exists());
    assert!(env.repo.join("upstream/deleted").join(&old_id).is_file());

    // Retention keeps the last snapshot of the image deleted upstream, unless told otherwise.
    let policy = ["forget", "--keep-tag", "no-such-tag", "--group-by", "image", "--dry-run"];
    let kept = env.json(&policy);
    let group = format!("image {old_id}");
    let keep = kept["keep"].as_array().unwrap();
    assert_eq!(keep.len(), 1, "{kept}");
    assert_eq!(keep[0]["group"], group.as_str());
    assert_eq!(keep[0]["reasons"], json!(["last snapshot of an image deleted upstream"]));
    let mut all = policy.to_vec();
    all.push("--include-deleted");
    let none = env.json(&all);
    assert!(none["keep"].as_array().unwrap().is_empty(), "{none}");
    assert!(none["remove"].as_array().unwrap().iter().any(|r| r["group"] == group.as_str()));
}

/// A qcow2 overlay whose backing file is `base` (qemu-img), and the same
/// bytes with the backing file reference cleared (a plain qcow2 Glance accepts).
fn qcow2_with_backing_file(env: &Env) -> (Vec<u8>, Vec<u8>) {
    let base = env.path("base.raw");
    std::fs::write(&base, bytes(1 << 20, 5, true)).unwrap();
    let over = env.path("over.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&over)
        .status()
        .unwrap();
    assert!(st.success());
    let overlay = std::fs::read(over).unwrap();
    let mut plain = overlay.clone();
    plain[8..20].fill(0); // backing_file_offset, backing_file_size
    (overlay, plain)
}

#[test]
fn failing_and_inactive_images_do_not_stop_the_others() {
    let _serial = os::serial();
    let g = os::noauth();
    let env = Env::init("64K");
    let tag = os::unique("sync-fail");
    let mut guards = Vec::new();
    let mut up = |name: &str, data: &[u8], fmt: &str| {
        let (rec, guard) = os::upload_image(&g, &format!("{tag}-{name}"), data, json!({"disk_format": fmt, "tags": [tag]}));
        guards.push(guard);
        rec.id
    };
    let good_a = up("a-good", &bytes(3 << 20, 1, true), "raw");
    let tampered = up("b-tampered", &bytes(2 << 20, 2, true), "raw");
    // Glance 33 refuses to store a qcow2 with a backing file; older ones (and other stores) do not.
    let (overlay, plain) = qcow2_with_backing_file(&env);
    let backing = up("c-backing", &plain, "qcow2");
    let deactivated = up("d-deactivated", &bytes(1 << 20, 4, true), "raw");
    let good_z = up("z-good", &bytes(3 << 20, 6, true), "raw");
    let queued = g.create(&os::meta(&format!("{tag}-e-queued"), json!({"tags": [tag]}))).unwrap().id;
    guards.push(os::Cleanup(g.clone(), queued.clone()));
    // Change the bytes behind Glance's back: its checksum no longer matches.
    let stored = Path::new(&os::env("GLANCE_STATE_DIR")).join("images").join(&tampered);
    let mut data = std::fs::read(&stored).expect("image file in Glance's store");
    data[12345] ^= 0xff;
    std::fs::write(&stored, &data).unwrap();
    std::fs::write(Path::new(&os::env("GLANCE_STATE_DIR")).join("images").join(&backing), &overlay).unwrap();
    let url = format!("{}/v2/images/{deactivated}/actions/deactivate", os::env("GLANCE_URL"));
    let resp = reqwest::blocking::Client::new().post(&url).send().unwrap();
    assert!(resp.status().is_success(), "deactivate: {}", resp.status());

    let (code, doc, err) = sync(&env, &tag, &["--jobs", "1"]);
    assert_eq!(code, 3, "a sync with a failed image exits 3: {err}");
    assert_eq!(doc["ok"], false);
    assert_eq!(ids(&doc, "archived"), sorted(vec![good_a.clone(), good_z.clone()]));
    assert_eq!(ids(&doc, "failed"), sorted(vec![tampered.clone(), backing.clone()]));
    assert_eq!(ids(&doc, "skipped"), sorted(vec![deactivated.clone(), queued.clone()]));
    let reason = |key: &str, id: &str| s(entry(&doc, key, id), "reason");
    assert!(reason("failed", &tampered).contains("no snapshot stored"), "{doc}");
    assert!(reason("failed", &backing).contains("backing"), "{doc}");
    assert!(reason("skipped", &deactivated).contains("deactivated"), "{doc}");
    assert!(reason("skipped", &queued).contains("queued"), "{doc}");
    assert_eq!(u(entry(&doc, "failed", &tampered), "bytes_read"), 2 << 20);
    assert!(err.lines().any(|l| l.contains(" failed ") && l.contains(&tampered)), "{err}");
    assert_eq!(env.json(&["list"]).as_array().unwrap().len(), 2);

    // Without --json: the summary on stdout names each failure; still exit 3.
    let o = env.run(&sync_args(&tag, false, &[]).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(3));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("2 unchanged") && out.contains("2 failed") && out.contains(&format!("FAILED {tag}-c-backing")), "{out}");
}

/// Waits until `cond` holds (polling), or panics after `secs`.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn killed_sync_resumes_and_a_second_sync_is_refused() {
    let _serial = os::serial();
    let g = os::noauth();
    let env = Env::init("64K");
    let tag = os::unique("sync-kill");
    let mut guards = Vec::new();
    let mut all = Vec::new();
    for i in 0..4 {
        let data = bytes(6 << 20, 100 + i, false);
        let (rec, guard) = os::upload_image(&g, &format!("{tag}-{i}"), &data, json!({"tags": [tag]}));
        guards.push(guard);
        all.push(rec.id);
    }
    let all = sorted(all);
    // 4 MB/s: about 1.5 s per image, so there is time to act between images.
    let slow = ["--jobs", "1", "--limit-download", "4M"];

    // SIGKILL right after the first image's snapshot is written.
    let mut victim = spawn_sync(&env, &tag, &slow);
    let snapshots = env.repo.join("snapshots");
    wait_for(60, "the first snapshot", || count_files(&snapshots) >= 1);
    victim.kill().unwrap();
    victim.wait().unwrap();
    let done_before_kill = count_files(&snapshots);
    assert!(done_before_kill < all.len(), "the sync finished before it could be killed");

    // Started again, it finishes the rest; meanwhile a second sync is refused, naming the holder.
    let rerun = spawn_sync(&env, &tag, &slow);
    let pid = rerun.id();
    // Locks are sealed in an encrypted repository: read through the library.
    let repo = env.open_repo();
    wait_for(30, "the rerun's lock", || {
        repo.list_locks().unwrap_or_default().iter().any(|(_, lock)| lock.purpose == "sync" && lock.pid == pid)
    });
    let (code, refused, err) = sync(&env, &tag, &[]);
    assert_eq!(code, 11, "a held lock exits 11 (restic's code)");
    assert_eq!(refused["ok"], false);
    assert!(err.contains("locked by sync") && err.contains(&format!("pid {pid}")), "{err}");
    let out = rerun.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&doc, "unchanged").len(), done_before_kill);
    assert_eq!(ids(&doc, "archived").len(), all.len() - done_before_kill);
    let mut both = ids(&doc, "unchanged");
    both.extend(ids(&doc, "archived"));
    assert_eq!(sorted(both), all);
    assert_eq!(env.json(&["check", "--read-data"])["ok"], true);
    let (code, last, _) = sync(&env, &tag, &[]);
    assert_eq!(code, 0);
    assert_eq!(ids(&last, "unchanged"), all);
}

/// With Keystone credentials (the OS_* admin of `ci/openstack.sh`), a sync
/// covers the credentials' own project by default; `--project NAME` another
/// one; `--all-projects` both. An image held from another project is not
/// judged deleted by a run that does not cover that project.
#[test]
fn scope_defaults_to_the_credentials_project() {
    let _serial = os::serial();
    let session = imgarc::openstack::keystone::Session::new(&os::config_from(os::os_env()).unwrap()).unwrap();
    let g = imgarc::openstack::glance::GlanceClient::new(&session).unwrap().with_retry(os::quick_retry());
    let env = Env::init("64K");
    let tag = os::unique("sync-scope");
    let (own, _c1) = os::upload_image(&g, &format!("{tag}-own"), &bytes(1 << 20, 7, true), json!({"tags": [tag]}));
    let demo_project = os::env("KEYSTONE_DEMO_PROJECT_ID");
    let (other, _c2) =
        os::upload_image(&g, &format!("{tag}-demo"), &bytes(1 << 20, 8, true), json!({"tags": [tag], "owner": demo_project}));
    assert_eq!(other.owner.as_deref(), Some(demo_project.as_str()));
    let keystone_sync = |args: &[&str]| {
        let mut a = vec!["--json", "sync", "--filter"];
        let filter = format!("tag={tag}");
        a.push(&filter);
        a.extend_from_slice(args);
        let o = env.run(&a);
        let doc: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
        (o.status.code().unwrap(), doc)
    };
    let (code, mine) = keystone_sync(&[]);
    assert_eq!(code, 0, "{mine}");
    assert_eq!(ids(&mine, "archived"), vec![own.id.clone()]);
    assert_eq!(mine["scope"]["project"], own.owner.clone().unwrap().as_str());
    let (code, demo) = keystone_sync(&["--project", &os::env("KEYSTONE_DEMO_PROJECT")]);
    assert_eq!(code, 0, "{demo}");
    assert_eq!(ids(&demo, "archived"), vec![other.id.clone()]);
    assert_eq!(demo["scope"]["project"], demo_project.as_str());
    let (_, all) = keystone_sync(&["--all-projects"]);
    assert_eq!(ids(&all, "unchanged"), sorted(vec![own.id.clone(), other.id.clone()]));
    let (_, again) = keystone_sync(&[]);
    assert_eq!(ids(&again, "unchanged"), vec![own.id.clone()]);
    assert!(ids(&again, "deleted_upstream").is_empty(), "{again}");
    let (code, bad) = keystone_sync(&["--project", "no-such-project-xyz"]);
    assert_eq!(code, 1);
    assert!(bad["error"].as_str().unwrap().contains("no-such-project-xyz"), "{bad}");
}

/// `GET /v2/images/<id>/file` requests for `id` in the Glance access log (the
/// noauth Glance of `ci/openstack.sh` logs every request to `GLANCE_LOG`):
/// what Glance itself saw, not imgarc's own byte counters.
fn file_gets(id: &str) -> usize {
    let log = std::fs::read_to_string(os::env("GLANCE_LOG")).expect("the Glance log");
    let needle = format!("GET /v2/images/{id}/file ");
    log.lines().filter(|l| l.contains(&needle)).count()
}

/// Every file of the repository with its length: what a dry run must leave as it is.
fn repository_files(env: &Env) -> Vec<(PathBuf, u64)> {
    fn walk(d: &Path, out: &mut Vec<(PathBuf, u64)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push((p.clone(), std::fs::metadata(&p).unwrap().len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(&env.repo, &mut out);
    out.sort();
    out
}

/// A boot-from-volume instance snapshot as Nova makes it: the record with
/// `bdm_v2` and a `block_device_mapping` JSON string naming a Cinder volume
/// snapshot, then an empty upload (Nova's `force_activate`), so it is active with size 0 (raw: this
/// Glance inspects uploads and refuses empty data declared qcow2).
fn volume_backed_image(g: &imgarc::openstack::glance::GlanceClient, name: &str, tag: &str, volume_snapshot: &str) -> (String, os::Cleanup) {
    let bdm = json!([{
        "boot_index": 0, "device_name": "/dev/vda", "source_type": "snapshot", "destination_type": "volume",
        "snapshot_id": volume_snapshot, "volume_id": null, "image_id": null, "volume_size": 10,
        "delete_on_termination": false, "disk_bus": "virtio", "device_type": "disk", "tag": null, "no_device": null
    }]);
    let extra = json!({
        "disk_format": "raw", "tags": [tag], "bdm_v2": "True", "root_device_name": "/dev/vda",
        "block_device_mapping": bdm.to_string(), "instance_uuid": "0b8e3c4e-50a1-4f0e-9b7e-6c1e2b5d9a01"
    });
    let rec = g.create(&os::meta(name, extra)).expect("create");
    let guard = os::Cleanup(g.clone(), rec.id.clone());
    g.upload(&rec.id, std::io::Cursor::new(Vec::new()), Some(0)).expect("empty upload");
    let rec = g.wait_active(&rec.id, Duration::from_secs(60)).expect("active");
    assert_eq!(rec.size, Some(0), "{rec:?}");
    (rec.id, guard)
}

/// `sync --dry-run` says what a run would do — archive a new image, record new
/// metadata, skip an unfinished upload, report a volume-backed snapshot, find a
/// deletion — while Glance serves no image data (its access log) and the
/// repository stays byte for byte the same; it takes no lock (it runs while a
/// sync holds it). The real run then does what the dry run said.
#[test]
fn dry_run_downloads_and_writes_nothing_and_the_run_does_what_it_said() {
    let _serial = os::serial();
    let g = os::noauth();
    let env = Env::init("64K");
    let tag = os::unique("sync-dry");
    let data = |seed: u64| bytes(1 << 20, seed, false);
    let (kept, _g1) = os::upload_image(&g, &format!("{tag}-kept"), &data(1), json!({"tags": [tag]}));
    let (relabelled, _g2) = os::upload_image(&g, &format!("{tag}-relabelled"), &data(2), json!({"tags": [tag]}));
    let (gone, gone_guard) = os::upload_image(&g, &format!("{tag}-gone"), &data(3), json!({"tags": [tag]}));
    let (code, first, err) = sync(&env, &tag, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ids(&first, "archived").len(), 3, "{first}");
    assert_eq!(first["dry_run"], false);

    let (fresh, _g4) = os::upload_image(&g, &format!("{tag}-fresh"), &data(4), json!({"tags": [tag]}));
    g.update(&relabelled.id, &[json!({"op": "add", "path": "/backup_note", "value": "dry"})]).unwrap();
    g.delete(&gone.id).unwrap();
    drop(gone_guard);
    let (bfv, _g5) = volume_backed_image(&g, &format!("{tag}-bfv"), &tag, "7d0a1e2f-3b4c-4d5e-8f60-718293a4b5c6");
    let queued = g.create(&os::meta(&format!("{tag}-queued"), json!({"tags": [tag]}))).unwrap();
    let _g6 = os::Cleanup(g.clone(), queued.id.clone());

    let before = repository_files(&env);
    let gets_before: Vec<usize> = [&kept.id, &relabelled.id, &fresh.id, &bfv].iter().map(|id| file_gets(id)).collect();
    // A running sync holds the lock: the dry run neither waits for it nor fails.
    let repo = env.open_repo();
    let lock = repo.acquire_singleton_lock("sync").unwrap();
    let (code, dry, err) = sync(&env, &tag, &["--dry-run"]);
    drop(lock);
    assert_eq!(code, 0, "{err}\n{dry}");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(u(&dry, "bytes_read"), 0);
    assert_eq!(u(&dry, "bytes_stored"), 0);
    assert_eq!(ids(&dry, "archived"), vec![fresh.id.clone()]);
    let would = entry(&dry, "archived", &fresh.id);
    assert_eq!(s(would, "would"), "archive: new image");
    assert_eq!(u(would, "logical_bytes"), 1 << 20);
    assert!(would.get("snapshot").is_none(), "a dry run wrote a snapshot? {would}");
    assert_eq!(ids(&dry, "metadata_updated"), vec![relabelled.id.clone()]);
    assert!(s(entry(&dry, "metadata_updated", &relabelled.id), "would").contains("new metadata"), "{dry}");
    assert_eq!(ids(&dry, "unchanged"), vec![kept.id.clone()]);
    assert_eq!(ids(&dry, "skipped"), vec![queued.id.clone()]);
    assert!(s(entry(&dry, "skipped", &queued.id), "reason").contains("queued"), "{dry}");
    assert_eq!(ids(&dry, "volume_backed"), vec![bfv.clone()]);
    assert!(s(entry(&dry, "volume_backed", &bfv), "reason").contains("7d0a1e2f-3b4c-4d5e-8f60-718293a4b5c6"), "{dry}");
    assert_eq!(ids(&dry, "deleted_upstream"), vec![gone.id.clone()]);
    assert!(s(&dry["deleted_upstream"][0], "would").contains("deleted upstream"), "{dry}");
    // What Glance saw: not one data request. What the repository holds: the same files, the same sizes.
    let gets_after: Vec<usize> = [&kept.id, &relabelled.id, &fresh.id, &bfv].iter().map(|id| file_gets(id)).collect();
    assert_eq!(gets_after, gets_before, "the dry run downloaded image data");
    assert_eq!(repository_files(&env), before, "the dry run changed the repository");
    assert!(!env.repo.join("upstream/deleted").join(&gone.id).exists());
    assert!(err.contains(&format!(" would-archived {tag}-fresh ({}): new image, 1.00 MiB", fresh.id)), "{err}");
    assert!(err.contains(&format!(" volume-backed {tag}-bfv ({bfv}): ")), "{err}");

    // The prose: "would archive …" and the volume-backed count.
    let o = env.run(&sync_args(&tag, false, &["--dry-run"]).iter().map(String::as_str).collect::<Vec<_>>());
    let prose = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{prose}");
    assert!(prose.starts_with("sync --dry-run: 5 images: 1 would be archived"), "{prose}");
    assert!(
        prose.contains("1 volume-backed") && prose.contains(&format!("would archive {tag}-fresh ({}) (1.00 MiB): new image\n", fresh.id)),
        "{prose}"
    );
    assert!(prose.contains(&format!("  volume-backed {tag}-bfv ({bfv}): ")), "{prose}");

    // The real run does what the dry run said, and Glance served the new image's data.
    let (code, real, err) = sync(&env, &tag, &[]);
    assert_eq!(code, 0, "{err}");
    for key in ["archived", "metadata_updated", "unchanged", "skipped", "volume_backed", "deleted_upstream"] {
        assert_eq!(ids(&real, key), ids(&dry, key), "{key}: {real}");
    }
    assert!(file_gets(&fresh.id) > gets_before[2], "the access log does not show downloads: this test would prove nothing");
    assert!(file_gets(&bfv) == gets_before[3], "a volume-backed image was downloaded");
    assert!(env.repo.join("upstream/deleted").join(&gone.id).is_file());
    assert!(entry(&real, "archived", &fresh.id).get("would").is_none());
    assert_eq!(entry(&real, "archived", &fresh.id)["verified_digests"], json!(["sha512"]), "{real}");

    // restore --to-glance --dry-run: the record it would create, and nothing is created.
    let snapshot = s(entry(&real, "archived", &fresh.id), "snapshot");
    let target = format!("{tag}-restored");
    let restore_args = |dry: bool| {
        let mut a = vec!["--glance-url".to_string(), os::env("GLANCE_URL"), "restore".into(), snapshot.clone()];
        a.extend(["--to-glance", "--name", &target, "--property", "restored_by=imgarc", "--visibility", "shared"].map(String::from));
        if dry {
            a.push("--dry-run".into());
        }
        a
    };
    let plan = env.json(&restore_args(true).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["image"]["name"], target.as_str());
    assert_eq!(plan["image"]["visibility"], "shared");
    assert_eq!(plan["image"]["restored_by"], "imgarc");
    assert_eq!(plan["image"]["disk_format"], "raw");
    assert_eq!(plan["image"]["container_format"], "bare");
    assert!(plan["image"].get("id").is_none() && plan["image"].get("os_hash_value").is_none(), "{plan}");
    assert_eq!(u(&plan, "size"), 1 << 20);
    assert_eq!(plan["expected_digests"]["sha512"], os::sha512_hex(&data(4)).as_str());
    // The snapshot recorded the record's strongest digest only: md5 was not computed.
    assert!(plan["expected_digests"].get("md5").is_none(), "{plan}");
    assert!(s(&plan, "glance_url").starts_with(&os::env("GLANCE_URL")), "{plan}");
    assert!(g.list_filtered(&[("name", &target)], 10).unwrap().is_empty(), "the dry run created an image");
    let o = env.run(&restore_args(true).iter().map(String::as_str).collect::<Vec<_>>());
    let prose = String::from_utf8_lossy(&o.stdout);
    assert!(
        prose.contains("would create in") && prose.contains(&format!("name: {target}")) && prose.contains("restored_by=imgarc"),
        "{prose}"
    );
    assert!(g.list_filtered(&[("name", &target)], 10).unwrap().is_empty(), "the dry run created an image");

    // Without --to-glance, --dry-run (and every --to-glance flag) is refused, not ignored: no file is written.
    let file = env.path("not-written.raw");
    let o = env.run(&["restore", &snapshot, "-o", file.to_str().unwrap(), "--dry-run"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--dry-run applies to --to-glance only"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!file.exists(), "a dry run without --to-glance restored the file");
    let o = env.run(&["restore", &snapshot, "-o", file.to_str().unwrap(), "--name", "x"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--name applies to --to-glance only") && !file.exists());

    // The restore creates exactly that record.
    let done = env.json(&restore_args(false).iter().map(String::as_str).collect::<Vec<_>>());
    let _g7 = os::Cleanup(g.clone(), s(&done, "image_id"));
    let created = g.get(&s(&done, "image_id")).unwrap();
    for (k, v) in plan["image"].as_object().unwrap() {
        assert_eq!(&created.raw[k], v, "{k}: planned {v}, created {}", created.raw[k]);
    }
    assert_eq!(created.size, Some(1 << 20));
    assert_eq!(created.os_hash_value.as_deref(), plan["expected_digests"]["sha512"].as_str());
}

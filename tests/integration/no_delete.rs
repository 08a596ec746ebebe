//! Backup hosts whose S3 credentials may not delete (issue 12): on the real Ceph RGW of
//! `ci/objectstore.sh`, a second user whose bucket policy denies `s3:DeleteObject` archives
//! and syncs, twice, without being blocked by its own undeletable locks; `prune` and `forget`
//! with it refuse, naming the permission and the access key id; with the bucket owner's
//! credentials they work and tidy up the release records and withdrawn upstream records.
//!
//! The restricted user and its bucket are made at test time (idempotent): `radosgw-admin`
//! against the cluster in `IMGARC_RGW_STATE`, then a bucket and its policy with SigV4-signed
//! `curl` requests (as `tests/servers/objectstore-start-ceph-rgw` creates its bucket).
//! Run: `. ci/objectstore.sh && cargo nextest run --features remote-tests -E 'test(/^no_delete::/)'`.
use crate::support;
use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use support::*;

const USER: &str = "imgarc-nodelete";
const ACCESS: &str = "IMGARCNODELETE000001";
const SECRET: &str = "imgarcnodeletesecret00000000000000000001";
const BUCKET: &str = "imgarc-nodelete";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn need(k: &str) -> String {
    std::env::var(k).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| panic!("{k} is not set: run `. ci/objectstore.sh` first"))
}

/// A SigV4-signed request with curl as `access`; returns the HTTP status.
fn curl(access: &str, secret: &str, method: &str, url: &str, body: &[u8]) -> u16 {
    use sha2::Digest;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body).unwrap();
    let sha = if body.is_empty() { EMPTY_SHA256.to_string() } else { hex::encode(sha2::Sha256::digest(body)) };
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, "--aws-sigv4", "aws:amz:us-east-1:s3"]).args([
        "--user",
        &format!("{access}:{secret}"),
        "-H",
        &format!("x-amz-content-sha256: {sha}"),
    ]);
    if !body.is_empty() {
        c.args(["-H", "Content-Type: application/json", "--data-binary"]).arg(format!("@{}", file.path().display()));
    }
    let o = c.arg(url).output().expect("curl");
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0)
}

fn radosgw_admin(args: &[&str]) -> Output {
    let conf = format!("{}/ceph.conf", need("IMGARC_RGW_STATE"));
    Command::new("radosgw-admin").arg("-c").arg(conf).args(args).output().expect("radosgw-admin")
}

/// The bucket `BUCKET`, owned by the full user, whose policy lets `USER` get, put and list
/// but denies it `s3:DeleteObject`. None (the test is skipped) without radosgw-admin.
fn restricted_bucket() -> Option<()> {
    if Command::new("radosgw-admin").arg("--version").output().is_err() {
        skip_or_fail_in_ci("radosgw-admin is not installed (the restricted RGW user is made with it)");
        return None;
    }
    let (endpoint, full, full_secret) = (need("IMGARC_RGW_ENDPOINT"), need("IMGARC_RGW_ACCESS_KEY"), need("IMGARC_RGW_SECRET_KEY"));
    let owner = radosgw_admin(&["user", "info", &format!("--access-key={full}")]);
    assert!(owner.status.success(), "radosgw-admin user info: {}", String::from_utf8_lossy(&owner.stderr));
    let owner: serde_json::Value = serde_json::from_slice(&owner.stdout).unwrap();
    let owner = owner["user_id"].as_str().unwrap().to_string();
    // Another test process may create it at the same moment: then it exists.
    let made = radosgw_admin(&[
        "user",
        "create",
        &format!("--uid={USER}"),
        "--display-name=no delete",
        "--access-key",
        ACCESS,
        "--secret-key",
        SECRET,
    ]);
    if !made.status.success() {
        // It exists (perhaps with other keys): give it ours.
        let key =
            radosgw_admin(&["key", "create", &format!("--uid={USER}"), "--key-type=s3", "--access-key", ACCESS, "--secret-key", SECRET]);
        assert!(key.status.success(), "cannot create the restricted user: {}", String::from_utf8_lossy(&made.stderr));
    }
    let bucket_url = format!("{endpoint}/{BUCKET}");
    let code = curl(&full, &full_secret, "PUT", &bucket_url, b"");
    assert!(code == 200 || code == 409, "create bucket {BUCKET}: HTTP {code}");
    // The owner needs the policy's grant too: objects the restricted user writes are that user's.
    let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": [format!("arn:aws:iam:::user/{owner}")]}, "Action": ["s3:*"],
         "Resource": [format!("arn:aws:s3:::{BUCKET}"), format!("arn:aws:s3:::{BUCKET}/*")]},
        {"Effect": "Allow", "Principal": {"AWS": [format!("arn:aws:iam:::user/{USER}")]},
         "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket"],
         "Resource": [format!("arn:aws:s3:::{BUCKET}"), format!("arn:aws:s3:::{BUCKET}/*")]},
        {"Effect": "Deny", "Principal": {"AWS": [format!("arn:aws:iam:::user/{USER}")]}, "Action": ["s3:DeleteObject"],
         "Resource": [format!("arn:aws:s3:::{BUCKET}/*")]}]});
    let code = curl(&full, &full_secret, "PUT", &format!("{bucket_url}?policy="), policy.to_string().as_bytes());
    assert!(code == 200 || code == 204, "put the bucket policy: HTTP {code}");
    Some(())
}

/// One repository in the restricted bucket, reached with either user's credentials.
struct Repo {
    url: String,
    work: tempfile::TempDir,
}

impl Repo {
    fn new() -> Option<Repo> {
        restricted_bucket()?;
        let prefix = format!("nodelete-{:016x}", rand::random::<u64>());
        Some(Repo { url: format!("s3:{}/{BUCKET}/{prefix}", need("IMGARC_RGW_ENDPOINT")), work: tempfile::tempdir().unwrap() })
    }

    fn vars(full: bool) -> HashMap<&'static str, String> {
        let (a, s) = if full { (need("IMGARC_RGW_ACCESS_KEY"), need("IMGARC_RGW_SECRET_KEY")) } else { (ACCESS.into(), SECRET.into()) };
        HashMap::from([("AWS_ACCESS_KEY_ID", a), ("AWS_SECRET_ACCESS_KEY", s), ("AWS_REGION", "us-east-1".to_string())])
    }

    /// `imgarc --repo URL ARGS` with the full (bucket owner's) or the restricted credentials;
    /// each host has its own cache.
    fn cmd(&self, full: bool, args: &[&str]) -> Command {
        let mut c = bare_cmd();
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OS_") || k.starts_with("AWS_")) {
            c.env_remove(k);
        }
        let cache = self.work.path().join(if full { "cache-full" } else { "cache-restricted" });
        c.env("IMGARC_PASSWORD", PASSWORD).envs(Self::vars(full)).env("IMGARC_CACHE_DIR", cache).arg("--repo").arg(&self.url).args(args);
        c
    }

    fn run(&self, full: bool, args: &[&str]) -> Output {
        self.cmd(full, args).stdin(Stdio::null()).output().unwrap()
    }

    fn json(&self, full: bool, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = self.run(full, &a);
        let who = if full { "full" } else { "restricted" };
        assert!(o.status.success(), "imgarc {args:?} ({who} credentials): {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// The repository opened in-process with either credentials.
    fn open(&self, full: bool) -> imgarc::repository::Repository {
        let vars = Self::vars(full);
        let opts = imgarc::backend::url::RemoteOptions {
            env: Some(std::sync::Arc::new(move |k: &str| vars.get(k).cloned())),
            ..Default::default()
        };
        let backend = imgarc::backend::open(&self.url, &opts).unwrap();
        imgarc::repository::Repository::open_with(backend, &imgarc::secret::Secret::new(PASSWORD)).unwrap()
    }

    /// The bucket's raw keys under `prefix` of this repository (what a listing of the store shows).
    fn raw(&self, prefix: &str) -> Vec<String> {
        let vars = Self::vars(true);
        let opts = imgarc::backend::url::RemoteOptions {
            env: Some(std::sync::Arc::new(move |k: &str| vars.get(k).cloned())),
            ..Default::default()
        };
        imgarc::backend::open(&self.url, &opts).unwrap().list(prefix).unwrap().into_iter().map(|o| o.key).collect()
    }
}

/// A refused run: exit 1, naming the permission and the access key id, never the secret.
fn assert_refused(o: &Output, verb: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{verb} with credentials that may not delete: {err}");
    assert!(err.contains(&format!("{verb} needs to delete objects")) && err.contains("s3:DeleteObject") && err.contains(ACCESS), "{err}");
    assert!(!err.contains(SECRET), "the secret key in a message: {err}");
}

#[test]
fn archive_without_delete_then_prune_and_forget_need_it() {
    let Some(r) = Repo::new() else { return };
    r.json(true, &["init"]);
    // The restricted host really may not delete (else this test proves nothing).
    let restricted = r.open(false);
    assert!(restricted.require_delete_permission("prune").is_err());

    let disk = imgarc::synthetic::SyntheticDisk::new(6 << 20, 21);
    let mut snaps = Vec::new();
    for night in 0..2 {
        let p = r.work.path().join(format!("n{night}.raw"));
        disk.write_night(&p, night).unwrap();
        // The second night is not blocked by the first night's lock, which could not be deleted.
        let a = r.json(false, &["archive", p.to_str().unwrap(), "--name", "vm"]);
        snaps.push(s(&a, "snapshot"));
    }
    // Lock objects stayed (DELETE was refused), yet no host counts one: released, not expired —
    // so a host whose clock is behind sees no live lock either.
    let raw_locks = r.raw("locks/");
    assert!(raw_locks.len() >= 4, "two archives leave their lock and its release record each: {raw_locks:?}");
    let all: Vec<imgarc::repository::lock::LockInfo> =
        raw_locks.iter().map(|k| restricted.load::<imgarc::repository::lock::LockInfo>(k, None).unwrap()).collect();
    let unexpired = |l: &imgarc::repository::lock::LockInfo| imgarc::util::parse_rfc3339(&l.expires).unwrap() > chrono::Utc::now();
    assert!(all.iter().any(|l| l.releases.is_none() && unexpired(l)), "no unexpired lock object was left: {raw_locks:?}");
    assert!(restricted.list_locks().unwrap().is_empty(), "a released lock is still counted");
    assert!(r.open(true).list_locks().unwrap().is_empty());
    // An exclusive lock (check) is not blocked either, on either host.
    assert_eq!(r.json(false, &["check"])["ok"], true);
    assert_eq!(r.json(true, &["check"])["ok"], true);

    // prune and forget refuse at once, with nothing to delete too, and write no lock.
    let before = r.raw("locks/").len();
    assert_refused(&r.run(false, &["prune"]), "prune");
    assert_refused(&r.run(false, &["prune", "--dry-run"]), "prune");
    assert_refused(&r.run(false, &["forget", &snaps[0]]), "forget");
    assert_refused(&r.run(false, &["forget", "--keep-last", "5", "--dry-run"]), "forget");
    let o = r.run(false, &["--json", "prune"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    assert!(doc["error"].as_str().unwrap().contains("s3:DeleteObject"), "{doc}");
    assert_eq!(r.raw("locks/").len(), before, "a refused run wrote a lock");
    // `unlock` with the restricted credentials can only release: there is nothing stale to release.
    let u = r.json(false, &["unlock", "--all"]);
    assert_eq!(u["tidied"], 0, "{u}");

    // With the owner's credentials they work, and the superseded records go.
    r.json(true, &["forget", &snaps[0]]);
    assert!(r.raw("locks/").is_empty(), "forget left lock objects: {:?}", r.raw("locks/"));
    r.json(true, &["prune", "--grace", "0", "--max-repack-ratio", "1"]);
    r.json(true, &["prune", "--grace", "0"]);
    assert!(r.raw("locks/").is_empty(), "prune left lock objects: {:?}", r.raw("locks/"));
    let out = r.work.path().join("restored");
    r.json(false, &["restore", &snaps[1], "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(r.work.path().join("n1.raw")).unwrap());
}

#[cfg(feature = "openstack-tests")]
#[test]
fn sync_without_delete_twice_and_a_reappeared_image_is_withdrawn() {
    use crate::support::openstack as os;
    use imgarc::repository::upstream::DeletedUpstream;
    let Some(r) = Repo::new() else { return };
    let _serial = os::serial();
    let g = os::noauth();
    let tag = os::unique("nodelete");
    r.json(true, &["init"]);
    let (image, _guard) = os::upload_image(&g, &format!("{tag}-vm"), &bytes(3 << 20, 5, false), serde_json::json!({"tags": [tag]}));
    let sync = |full: bool| r.json(full, &["--glance-url", &os::env("GLANCE_URL"), "sync", "--filter", &format!("tag={tag}")]);
    let ids = |doc: &serde_json::Value, key: &str| -> Vec<String> {
        doc[key].as_array().unwrap_or_else(|| panic!("{key} missing in {doc}")).iter().map(|e| s(e, "id")).collect()
    };
    assert_eq!(ids(&sync(false), "archived"), vec![image.id.clone()]);
    // The second run is not blocked by the first one's undeletable sync lock.
    let again = sync(false);
    assert!(ids(&again, "archived").is_empty(), "{again}");
    assert!(r.open(false).list_locks().unwrap().is_empty());

    // The image was recorded as deleted (by an earlier run), and is listed again.
    let record = DeletedUpstream { image_id: image.id.clone(), name: "vm".into(), cloud: None, detected: "2026-01-01T00:00:00Z".into() };
    r.open(true).record_deleted_upstream(&record).unwrap();
    let back = sync(false);
    assert_eq!(ids(&back, "reappeared"), vec![image.id.clone()], "{back}");
    let record_key = format!("upstream/deleted/{}", image.id);
    assert!(r.raw("upstream/deleted/").contains(&record_key), "DELETE was refused, so the record is still stored");
    assert_eq!(r.raw("upstream/reappeared/"), vec![format!("upstream/reappeared/{}", image.id)]);
    assert!(r.open(false).deleted_upstream().unwrap().is_empty(), "the withdrawn record still counts");
    let quiet = sync(false);
    assert!(ids(&quiet, "reappeared").is_empty() && ids(&quiet, "deleted_upstream").is_empty(), "{quiet}");
    // Retention does not keep the image's last snapshot as that of an image deleted upstream.
    let kept = r.json(true, &["forget", "--keep-tag", "no-such-tag", "--group-by", "image", "--dry-run"]);
    assert!(!kept.to_string().contains("deleted upstream"), "{kept}");

    // The owner's prune removes the withdrawn record, its withdrawal and the released locks.
    r.json(true, &["prune", "--grace", "0"]);
    assert!(r.raw("upstream/").is_empty(), "{:?}", r.raw("upstream/"));
    assert!(r.raw("locks/").is_empty(), "{:?}", r.raw("locks/"));
}

/// The probe on every remote backend with credentials that may delete: allowed, and it leaves nothing.
#[test]
fn the_probe_allows_credentials_that_may_delete() {
    use imgarc::backend::DeletePermission;
    let prefix = backend_common::unique("probe");
    for (what, b) in [
        ("rgw", backend_common::s3_backend(&backend_common::rgw(), &prefix, 1000)),
        ("swift s3api", backend_common::s3_backend(&backend_common::swift_s3(), &prefix, 1000)),
        ("swift", backend_common::swift_backend(&prefix, 1000)),
    ] {
        assert_eq!(b.can_delete().unwrap(), DeletePermission::Allowed, "{what}");
        assert!(b.list("").unwrap().is_empty(), "{what}: the probe wrote something");
    }
}

/// A local repository the user may read but not write: `prune` refuses at once, naming the
/// directory, before it writes a lock. (As root a mode refuses nothing: the run drops to nobody.)
#[test]
fn prune_refuses_a_directory_it_may_not_write() {
    use std::os::unix::fs::PermissionsExt;
    if Command::new("setpriv").arg("--version").output().is_err() {
        skip_or_fail_in_ci("setpriv (util-linux) is not installed");
        return;
    }
    let env = Env::init("64K");
    // SAFETY: getuid(2) cannot fail and touches no memory of ours.
    let nobody = unsafe { libc::getuid() } == 0;
    let chmod = |p: &std::path::Path, mode: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    let mut dirs = vec![env.dir.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        chmod(&d, 0o755);
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            } else {
                chmod(&e.path(), 0o644);
            }
        }
    }
    let cache = env.path("nobody-cache");
    std::fs::create_dir(&cache).unwrap();
    chmod(&cache, 0o777);
    if !nobody {
        // Not root: this user's own read-only directory.
        chmod(&env.repo, 0o555);
    }
    let mut c = Command::new("setpriv");
    if nobody {
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    }
    let o = c
        .arg(env!("CARGO_BIN_EXE_imgarc"))
        .args(["--repo", env.repo.to_str().unwrap(), "prune"])
        .env("IMGARC_PASSWORD", PASSWORD)
        .env("IMGARC_CACHE_DIR", &cache)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    chmod(&env.repo, 0o755);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let named = format!("the directory {} is not writable", env.repo.display());
    assert!(err.contains("prune needs to delete objects") && err.contains(&named), "{err}");
    assert!(!env.repo.join("locks").exists() || std::fs::read_dir(env.repo.join("locks")).unwrap().next().is_none(), "a lock was written");
}

//! `init --copy-chunker-params-from`: a target whose chunk ids and boundaries equal the source's
//! for the same bytes (both encrypted: shared chunker key and id key; both unencrypted: the same
//! parameters), unlike a plain `init`; `Repository::chunking_fingerprint` equal exactly then; the
//! source's password asked once, or from `--from-password-file`; a wrong one exits 12; no key
//! material in the target's config or any output; the target's own id and key objects.

use crate::support::*;
use imgarc::ids::Id;
use imgarc::repository::pack::BlobKind;
use imgarc::repository::Repository;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

fn open(dir: &Path, password: &str) -> Repository {
    let backend = imgarc::backend::open(dir.to_str().unwrap(), &Default::default()).unwrap();
    Repository::open_with(backend, &imgarc::secret::Secret::new(password)).unwrap()
}

/// Every data chunk of the repository: its id and its length (so the boundaries too).
fn data_chunks(repo: &Repository) -> BTreeSet<(Id, u32)> {
    let mut out = BTreeSet::new();
    for (key, size) in repo.list_index_objects().unwrap() {
        for pack in repo.read_index_object(&key, Some(size)).unwrap().packs {
            out.extend(pack.blobs.iter().filter(|b| b.1 == BlobKind::Data).map(|b| (b.0, b.5)));
        }
    }
    out
}

/// A disk with enough distinct content for a few hundred 16 KiB chunks.
fn disk(env: &Env) -> std::path::PathBuf {
    let path = env.path("disk.raw");
    let mut data = bytes(3 << 20, 7, false);
    data.extend(bytes(1 << 20, 8, true));
    std::fs::write(&path, data).unwrap();
    path
}

fn init_copying(target: &Env, source: &Env, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--json", "init", "--copy-chunker-params-from", source.repo.to_str().unwrap()];
    args.extend_from_slice(extra);
    target.run(&args)
}

fn ok_json(o: &std::process::Output) -> Value {
    assert!(o.status.success(), "failed: {}\n{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Every file under `root` with its bytes.
fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut paths = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                paths.push(e.path());
            }
        }
    }
    paths.into_iter().map(|p| (p.display().to_string(), std::fs::read(&p).unwrap())).collect()
}

#[test]
fn an_encrypted_target_gets_the_sources_chunk_ids_and_a_plain_init_does_not() {
    let source = Env::init("16K");
    let disk = disk(&source);
    source.archive(&disk, "vm");
    let target = Env::new();
    let o = init_copying(&target, &source, &["-vv"]);
    let report = ok_json(&o);
    let from = &report["chunker_params_from"];
    assert_eq!(from["chunk_ids_match"], true, "{report}");
    assert_eq!(from["shared_keys"], serde_json::json!(["id-key", "chunker-key"]), "{report}");
    assert_eq!(report["chunk_size"], 16384, "the source's chunk size: {report}");
    assert_eq!(report["encryption"], "aes-256-gcm", "{report}");
    assert_eq!(report["key"]["kind"], "full", "{report}");

    let (src, tgt) = (source.open_repo(), target.open_repo());
    assert_eq!(from["id"], src.config().id.as_str());
    assert_ne!(tgt.config().id, src.config().id, "the target has its own repository id");
    assert_eq!(tgt.config().chunker, src.config().chunker);
    assert_eq!(tgt.config().hole_block_size, src.config().hole_block_size);
    assert_eq!(tgt.chunking_fingerprint(), src.chunking_fingerprint());

    target.archive(&disk, "vm");
    let (a, b) = (data_chunks(&src), data_chunks(&open(&target.repo, PASSWORD)));
    assert!(a.len() > 100, "{} chunks", a.len());
    assert_eq!(a, b, "the same bytes: the same chunk ids and lengths in both");

    // A plain init with the same chunk size: its own keys, so other ids (and boundaries).
    let plain = Env::init("16K");
    plain.archive(&disk, "vm");
    let c = data_chunks(&plain.open_repo());
    assert!(a.is_disjoint(&c), "a plain init shares no chunk id with the source");
    assert_ne!(plain.open_repo().chunking_fingerprint(), src.chunking_fingerprint());

    // No key material anywhere: not in the target's files (its key object wraps the keys), not in
    // init's output at -vv. The fingerprint is no key either, and is not printed.
    // (to_bytes: kind, cipher, id key, chunker key, meta key, data public key, data secret key.)
    let (keys, own) = (src.keys().unwrap().to_bytes(), tgt.keys().unwrap().to_bytes());
    let secrets: Vec<&[u8]> = vec![&keys[2..34], &keys[34..66], &keys[66..98], &keys[130..162], &own[66..98], &own[130..162]];
    let output = [o.stdout.clone(), o.stderr.clone()].concat();
    let fingerprint = src.chunking_fingerprint();
    for (name, bytes) in files(&target.repo).into_iter().chain([("init's output".to_string(), output)]) {
        let text = String::from_utf8_lossy(&bytes).to_lowercase();
        for s in secrets.iter().copied().chain([&fingerprint[..]]) {
            assert!(!bytes.windows(32).any(|w| w == s) && !text.contains(&hex::encode(s)), "key material in {name}");
        }
        assert!(!text.contains(&PASSWORD.to_lowercase()), "the password in {name}");
    }
    let config = std::fs::read_to_string(target.repo.join("config")).unwrap();
    assert!(!config.contains(&src.config().id), "the target's config does not name the source: {config}");
}

#[test]
fn the_target_has_its_own_key_objects() {
    let source = Env::init("16K");
    let target = Env::new();
    ok_json(&init_copying(&target, &source, &[]));
    // The source's key object planted as the target's only key: the same password opens it,
    // but it is bound to the source's repository id and config, so the target refuses it.
    let tkeys = target.repo.join("keys");
    for e in std::fs::read_dir(&tkeys).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for e in std::fs::read_dir(source.repo.join("keys")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tkeys.join(e.file_name())).unwrap();
    }
    let o = target.run(&["snapshots"]);
    assert!(!o.status.success(), "the source's key object opened the target");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("another repository"), "{err}");
}

#[test]
fn the_sources_password_is_asked_once_and_a_different_one_comes_from_from_password_file() {
    let source = Env::init("16K");
    // One password for both: a password command runs once.
    let target = Env::new();
    let counter = target.path("count");
    let cmd = format!("echo run >> {}; printf '%s' '{PASSWORD}'", counter.display());
    let o = target
        .cmd(&["--json", "--password-command", &cmd, "init", "--copy-chunker-params-from", source.repo.to_str().unwrap()])
        .env_remove("IMGARC_PASSWORD")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(ok_json(&o)["chunker_params_from"]["chunk_ids_match"], true);
    assert_eq!(std::fs::read_to_string(&counter).unwrap().lines().count(), 1, "the password was asked more than once");
    open(&target.repo, PASSWORD);

    // A different target password; the source's from --from-password-file.
    let other = Env::new();
    let file = other.path("source-password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let o = other
        .cmd(&[
            "--json",
            "init",
            "--copy-chunker-params-from",
            source.repo.to_str().unwrap(),
            "--from-password-file",
            file.to_str().unwrap(),
        ])
        .env("IMGARC_PASSWORD", "the target's own password")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(ok_json(&o)["chunker_params_from"]["chunk_ids_match"], true);
    assert_eq!(open(&other.repo, "the target's own password").chunking_fingerprint(), source.open_repo().chunking_fingerprint());
    let backend = imgarc::backend::open(other.repo.to_str().unwrap(), &Default::default()).unwrap();
    assert!(Repository::open_with(backend, &imgarc::secret::Secret::new(PASSWORD)).is_err(), "the source's password opens the target");

    // A wrong source password: exit 12, nothing created.
    let wrong = Env::new();
    let file = wrong.path("wrong");
    std::fs::write(&file, "not the password").unwrap();
    let o = init_copying(&wrong, &source, &["--from-password-file", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(12), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--copy-chunker-params-from"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!wrong.repo.join("config").exists() && !wrong.repo.join("keys").exists(), "a target was created");
    // --chunk-size contradicts the copy: a usage error.
    let o = init_copying(&wrong, &source, &["--chunk-size", "64K"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_write_only_key_of_the_source_seeds_a_target_with_the_same_ids() {
    let source = Env::init("16K");
    let disk = disk(&source);
    source.archive(&disk, "vm");
    let wo = source.path("write-only-password");
    std::fs::write(&wo, "write only password").unwrap();
    source.ok(&["key", "add", "--write-only", "--new-password-file", wo.to_str().unwrap()]);
    let target = Env::new();
    let report = ok_json(&init_copying(&target, &source, &["--from-password-file", wo.to_str().unwrap()]));
    assert_eq!(report["chunker_params_from"]["chunk_ids_match"], true, "{report}");
    assert_eq!(report["key"]["kind"], "full", "the target's first key is full: {report}");
    target.archive(&disk, "vm");
    assert_eq!(data_chunks(&source.open_repo()), data_chunks(&target.open_repo()));
}

#[test]
fn unencrypted_pairs_share_ids_and_mixed_pairs_say_they_cannot() {
    let source = Env::init_unencrypted("32K");
    let disk = disk(&source);
    source.archive(&disk, "vm");
    let target = Env::new();
    let report = ok_json(&init_copying(&target, &source, &[]));
    assert_eq!(report["encryption"], "none", "the source's encryption by default: {report}");
    assert_eq!(report["chunk_size"], 32768, "{report}");
    assert_eq!(report["chunker_params_from"]["chunk_ids_match"], true, "{report}");
    assert_eq!(report["chunker_params_from"]["shared_keys"], serde_json::json!([]), "{report}");
    target.archive(&disk, "vm");
    let src = source.open_repo();
    assert_eq!(data_chunks(&src), data_chunks(&target.open_repo()));
    assert_eq!(src.chunking_fingerprint(), target.open_repo().chunking_fingerprint());

    // Unencrypted source, encrypted target: only the parameters; ids differ, and init says so.
    let mixed = Env::new();
    let o = mixed.run(&["init", "--copy-chunker-params-from", source.repo.to_str().unwrap(), "--encryption", "aes-256-gcm"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let prose = String::from_utf8_lossy(&o.stdout);
    assert!(prose.contains("will NOT match") && prose.contains("not encrypted"), "{prose}");
    let m = mixed.open_repo();
    assert_eq!(m.config().chunker, src.config().chunker);
    assert_ne!(m.chunking_fingerprint(), src.chunking_fingerprint());
    mixed.archive(&disk, "vm");
    assert!(data_chunks(&src).is_disjoint(&data_chunks(&mixed.open_repo())));

    // Encrypted source, unencrypted target: the same, the other way.
    let enc = Env::init("16K");
    let plain = Env::new();
    let report = ok_json(&init_copying(&plain, &enc, &["--encryption", "none"]));
    let from = &report["chunker_params_from"];
    assert_eq!(from["chunk_ids_match"], false, "{report}");
    assert!(from["reason"].as_str().unwrap().contains("the source is encrypted"), "{report}");
    assert_eq!(from["shared_keys"], serde_json::json!([]), "{report}");
    // Explicit compression wins over the source's; it does not change ids.
    let z = Env::new();
    let report = ok_json(&init_copying(&z, &enc, &["--compression", "zstd:9"]));
    assert_eq!(report["compression"], "zstd:9");
    assert_eq!(report["chunker_params_from"]["chunk_ids_match"], true, "{report}");
}

#[test]
fn a_project_scoped_source_passes_on_its_scope_unless_told_otherwise() {
    let source = Env::new();
    source.ok(&["init", "--chunk-size", "16K", "--dedup-scope", "project"]);
    let same = Env::new();
    let report = ok_json(&init_copying(&same, &source, &[]));
    assert_eq!(report["dedup_scope"], "project", "{report}");
    assert_eq!(report["chunker_params_from"]["chunk_ids_match"], true, "{report}");
    let other = Env::new();
    let report = ok_json(&init_copying(&other, &source, &["--dedup-scope", "repository"]));
    assert_eq!(report["chunker_params_from"]["chunk_ids_match"], false, "{report}");
    assert!(report["chunker_params_from"]["reason"].as_str().unwrap().contains("dedup scopes differ"), "{report}");
}

/// A remote source (RGW; Swift through a clouds.yaml entry named by `--from-repo-cloud`) seeds a
/// local target: the source opens with the target's own connection options for its location.
#[cfg(feature = "remote-tests")]
mod remote {
    use super::*;
    use crate::support::backend_common::{need, rgw, s3_backend, swift_backend, unique};
    use std::sync::Arc;

    /// Runs imgarc with `vars` and no OS_*/AWS_* of the caller; `--repo` first.
    fn run(repo: &str, cache: &Path, vars: &[(&str, String)], args: &[&str]) -> std::process::Output {
        let mut c = bare_cmd();
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OS_") || k.starts_with("AWS_")) {
            c.env_remove(k);
        }
        c.env("IMGARC_PASSWORD", PASSWORD).env("IMGARC_CACHE_DIR", cache).env_remove("IMGARC_REPO");
        c.envs(vars.iter().map(|(k, v)| (*k, v.as_str()))).arg("--repo").arg(repo).args(args);
        c.stdin(std::process::Stdio::null()).output().unwrap()
    }

    fn ids_match(source: &Repository, target: &Env, disk: &Path) {
        target.archive(disk, "vm");
        let (a, b) = (data_chunks(source), data_chunks(&target.open_repo()));
        assert!(a.len() > 100, "{} chunks", a.len());
        assert_eq!(a, b, "the same bytes: the same chunk ids and lengths in the remote source and the local target");
        assert_eq!(source.chunking_fingerprint(), target.open_repo().chunking_fingerprint());
    }

    #[test]
    fn an_rgw_source_seeds_a_local_target() {
        let t = rgw();
        let prefix = unique("copy-params");
        let repo = format!("s3:{}/{}/{prefix}", t.endpoint, t.bucket);
        let vars =
            [("AWS_ACCESS_KEY_ID", t.access.clone()), ("AWS_SECRET_ACCESS_KEY", t.secret.clone()), ("AWS_REGION", "us-east-1".into())];
        let target = Env::new();
        let disk = disk(&target);
        let cache = target.path("remote-cache");
        for args in [&["init", "--chunk-size", "16K"][..], &["archive", disk.to_str().unwrap(), "--name", "vm"]] {
            let o = run(&repo, &cache, &vars, args);
            assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        let o = target
            .cmd(&["--json", "init", "--copy-chunker-params-from", &repo])
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert_eq!(ok_json(&o)["chunker_params_from"]["repository"].as_str().map(|r| r.contains(&prefix)), Some(true));
        let source = Repository::open_with(Arc::from(s3_backend(&t, &prefix, 1000)), &imgarc::secret::Secret::new(PASSWORD)).unwrap();
        ids_match(&source, &target, &disk);
    }

    #[test]
    fn a_swift_source_in_another_cloud_opens_with_from_repo_cloud() {
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
        let prefix = unique("copy-params");
        let repo = format!("swift:{}/{prefix}", need("IMGARC_SWIFT_CONTAINER"));
        let vars = [("OS_CLIENT_CONFIG_FILE", clouds.display().to_string())];
        let target = Env::new();
        let disk = disk(&target);
        let cache = work.path().join("cache");
        for args in [
            &["--repo-cloud", "offsite", "init", "--chunk-size", "16K"][..],
            &["--repo-cloud", "offsite", "archive", disk.to_str().unwrap()],
        ] {
            let o = run(&repo, &cache, &vars, args);
            assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        let init = |extra: &[&str]| {
            let mut args = vec!["--json", "init", "--copy-chunker-params-from", &repo];
            args.extend_from_slice(extra);
            let mut c = target.cmd(&args);
            for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OS_")) {
                c.env_remove(k);
            }
            c.envs(vars.iter().map(|(k, v)| (*k, v.as_str()))).stdin(std::process::Stdio::null()).output().unwrap()
        };
        // Without the cloud the source cannot be reached: an error, nothing created.
        let o = init(&[]);
        assert!(!o.status.success(), "the swift source opened without its cloud");
        assert!(!target.repo.join("config").exists());
        assert!(!String::from_utf8_lossy(&o.stderr).contains(&need("IMGARC_SWIFT_APP_CRED_SECRET")), "a secret in an error");
        assert_eq!(ok_json(&init(&["--from-repo-cloud", "offsite"]))["chunker_params_from"]["chunk_ids_match"], true);
        let source = Repository::open_with(Arc::from(swift_backend(&prefix, 1000)), &imgarc::secret::Secret::new(PASSWORD)).unwrap();
        ids_match(&source, &target, &disk);
    }
}

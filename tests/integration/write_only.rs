//! Write-only keys (issue 11): a backup host that archives and dedups but can
//! read nothing it or anyone else archived. Through the binary: archive, two
//! nights, the refusals (exit 1, the key type named), plain `check`; the full
//! key then restores byte-exactly and prunes with its own cache. Through the
//! library: the write-only key object is unwrapped and every secret it holds
//! fails on a stored data blob, a tree blob and a snapshot body.

use crate::support;
use imgarc::crypto::keyfile::{KdfParams, KeyFile};
use imgarc::crypto::{AeadKey, CryptoError, KeyKind, KeySet};
use imgarc::repository::pack::BlobKind;
use imgarc::repository::Repository;
use imgarc::secret::Secret;
use serde_json::Value;
use std::process::Output;
use std::sync::Arc;
use support::*;

const FULL: &str = "the full key's password";
const WRITE_ONLY: &str = "wo";
/// Small Argon2id parameters for the write-only key the test adds (the
/// repository's own key keeps the defaults `init` gives it).
const FAST: KdfParams = KdfParams { m_kib: 64, t: 1, p: 1 };

fn run(env: &Env, password: &str, args: &[&str]) -> Output {
    env.cmd(args).env("IMGARC_PASSWORD", password).stdin(std::process::Stdio::null()).output().unwrap()
}

fn json(env: &Env, password: &str, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = run(env, password, &a);
    assert!(o.status.success(), "imgarc {args:?} failed: {}\n{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn backend(env: &Env) -> Arc<dyn imgarc::backend::Backend> {
    Arc::new(imgarc::backend::local::LocalBackend::new(&env.repo))
}

/// An encrypted repository with a full key (`FULL`) and a write-only key
/// (`WRITE_ONLY`) made through the library, as `key add --write-only` will.
fn encrypted_env() -> Env {
    let env = Env::new();
    let o = run(&env, FULL, &["init", "--encryption", "aes-256-gcm", "--chunk-size", "64K"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let repo = Repository::open_with(backend(&env), &Secret::new(FULL)).unwrap();
    let keys = repo.keys().unwrap();
    let file =
        KeyFile::create(keys, KeyKind::WriteOnly, &Secret::new(WRITE_ONLY), FAST, "sync host", &repo.config().id, repo.config_bytes())
            .unwrap();
    repo.save(&file).unwrap();
    let wo = Repository::open_with(backend(&env), &Secret::new(WRITE_ONLY)).unwrap();
    assert_eq!(wo.key_kind(), Some(KeyKind::WriteOnly));
    env
}

/// Asserts a refusal: exit 1, nothing on stdout, and stderr naming the key type and the operation.
fn assert_refused(env: &Env, args: &[&str], operation: &str) {
    let o = run(env, WRITE_ONLY, args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "imgarc {args:?} with a write-only key: {stderr}");
    assert!(o.stdout.is_empty() || args.contains(&"--json"), "imgarc {args:?} printed: {}", String::from_utf8_lossy(&o.stdout));
    assert!(stderr.contains("write-only key") && stderr.contains(operation), "imgarc {args:?}: {stderr}");
}

#[test]
fn a_write_only_host_archives_and_dedups_is_refused_reads_and_the_full_key_restores_and_prunes() {
    let env = encrypted_env();
    let disk = imgarc::synthetic::SyntheticDisk::new(32 << 20, 5);
    // The full key archives first; the write-only host then dedups against it.
    let base = env.path("base.raw");
    disk.write_night(&base, 0).unwrap();
    let base_snap = json(&env, FULL, &["archive", base.to_str().unwrap(), "--name", "base"]);
    let mut nights = Vec::new();
    for n in 1..3 {
        let p = env.path(&format!("night-{n}.raw"));
        disk.write_night(&p, n).unwrap();
        let a = json(&env, WRITE_ONLY, &["archive", p.to_str().unwrap(), "--name", "vm"]);
        nights.push((p, a));
    }
    let (n1, n2) = (&nights[0].1, &nights[1].1);
    eprintln!(
        "new bytes: base (full key) {}, night 1 {}, night 2 (write-only) {}",
        u(&base_snap, "new_bytes"),
        u(n1, "new_bytes"),
        u(n2, "new_bytes")
    );
    // A night changes about a tenth of the disk (roundtrip::synthetic_nights_dedup).
    assert!(u(n1, "new_bytes") * 100 < u(&base_snap, "new_bytes") * 35, "night 1 stored too much: {n1} vs {base_snap}");
    assert!(u(n2, "new_bytes") * 100 < u(&base_snap, "new_bytes") * 35, "night 2 stored too much: {n2} vs {base_snap}");
    // The same image again: nothing new.
    let again = json(&env, WRITE_ONLY, &["archive", nights[1].0.to_str().unwrap(), "--name", "vm"]);
    assert_eq!(u(&again, "new_chunks"), 0, "{again}");
    // The write-only host lists every snapshot (from the heads), its own and the full key's.
    let list = json(&env, WRITE_ONLY, &["list"]);
    assert_eq!(list.as_array().unwrap().len(), 4, "{list}");
    assert!(env.cache.read_dir().unwrap().flatten().any(|d| d.path().join("index-write-only.sqlite").exists()));
    // Its cache is derivable with its own key: trailers, index objects and heads.
    let rebuilt = json(&env, WRITE_ONLY, &["index", "rebuild"]);
    assert_eq!(u(&rebuilt, "snapshots"), 4, "{rebuilt}");
    assert!(rebuilt["snapshots_unreadable"].as_array().is_some_and(|a| a.is_empty()), "{rebuilt}");
    let list = json(&env, WRITE_ONLY, &["list"]);
    assert_eq!(list.as_array().unwrap().len(), 4, "{list}");
    let again = json(&env, WRITE_ONLY, &["archive", nights[1].0.to_str().unwrap(), "--name", "vm"]);
    assert_eq!(u(&again, "new_chunks"), 0, "after a rebuild: {again}");

    let snap = s(n2, "snapshot");
    let out = env.path("refused.raw");
    assert_refused(&env, &["restore", &snap, "-o", out.to_str().unwrap()], "restore");
    assert!(!out.exists(), "a refused restore created its output");
    assert_refused(&env, &["restore", &snap, "-o", "-"], "restore");
    assert_refused(&env, &["restore", &s(&base_snap, "snapshot"), "-o", "-"], "restore");
    assert_refused(&env, &["show", &snap], "show");
    assert_refused(&env, &["inspect", &snap], "inspect");
    assert_refused(&env, &["check", "--read-data"], "check --read-data");
    assert_refused(&env, &["prune", "--grace", "0"], "prune");
    assert_refused(&env, &["forget", "--keep-last", "1"], "forget");
    assert_refused(&env, &["--json", "prune", "--grace", "0"], "prune");
    // Plain check: what a write-only key can read, and it says what it left out.
    let check = json(&env, WRITE_ONLY, &["check"]);
    assert_eq!(check["ok"], true, "{check}");
    assert!(check["warnings"].to_string().contains("write-only key"), "{check}");

    // The full key (same cache directory, its own cache file) restores what the write-only host archived.
    for (p, a) in &nights {
        let restored = env.path("restored.raw");
        let o = run(&env, FULL, &["restore", &s(a, "snapshot"), "-o", restored.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(std::fs::read(&restored).unwrap() == std::fs::read(p).unwrap(), "{} differs after restore", p.display());
        std::fs::remove_file(&restored).unwrap();
    }
    let check = json(&env, FULL, &["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");

    // A full-key prune after the write-only host's cache holds rows without
    // references: it must not take those rows' (unknown) references for "unused".
    let forgot = json(&env, FULL, &["forget", &s(&base_snap, "snapshot")]);
    assert!(forgot.to_string().contains(&s(&base_snap, "snapshot")), "{forgot}");
    let mut unused = 0;
    for _ in 0..2 {
        // Twice: the first marks what only the base used, the second deletes it.
        let p = json(&env, FULL, &["prune", "--grace", "0"]);
        assert!(p["warnings"].as_array().is_none_or(|w| w.is_empty()), "{p}");
        eprintln!("prune: {p}");
        unused += u(&p, "bytes_marked") + u(&p, "unreferenced_bytes_kept") + u(&p, "bytes_freed");
    }
    // It found what only the forgotten base used (so it did count references), and freed nothing the nights need (below).
    assert!(unused > 0, "the prune found nothing unused after the base was forgotten");
    // The write-only host catches up (a forgotten snapshot leaves its cache) and archives again.
    let list = json(&env, WRITE_ONLY, &["list"]);
    assert_eq!(list.as_array().unwrap().len(), 4, "four nights of vm, the base gone: {list}");
    assert!(!list.to_string().contains(&s(&base_snap, "snapshot")), "{list}");
    let night3 = env.path("night-3.raw");
    disk.write_night(&night3, 3).unwrap();
    let n3 = json(&env, WRITE_ONLY, &["archive", night3.to_str().unwrap(), "--name", "vm"]);
    for (p, snap) in nights.iter().map(|(p, a)| (p.clone(), s(a, "snapshot"))).chain([(night3.clone(), s(&n3, "snapshot"))]) {
        let restored = env.path("restored.raw");
        let o = run(&env, FULL, &["restore", &snap, "-o", restored.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(std::fs::read(&restored).unwrap() == std::fs::read(&p).unwrap(), "{} differs after the prune", p.display());
        std::fs::remove_file(&restored).unwrap();
    }
    let check = json(&env, FULL, &["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
}

/// The X25519 agreement and key derivation of format-spec/encryption.md (blob
/// sealing), with an arbitrary 32-byte value standing in for the data secret:
/// what someone holding the write-only key's secrets could try.
fn blob_key_from(cipher: imgarc::crypto::Cipher, secret: &[u8; 32], eph_public: &[u8; 32], data_public: &[u8; 32]) -> Option<AeadKey> {
    use aws_lc_rs::agreement::{agree, PrivateKey, UnparsedPublicKey, X25519};
    let sk = PrivateKey::from_private_key(&X25519, secret).ok()?;
    let key = agree(&sk, UnparsedPublicKey::new(&X25519, eph_public), (), |shared| {
        let mut h = blake3::Hasher::new_derive_key("imgarc 2026-12-01 blob sealing key");
        h.update(shared);
        h.update(eph_public);
        h.update(data_public);
        Ok(*h.finalize().as_bytes())
    })
    .ok()?;
    Some(AeadKey::new(cipher, &key))
}

/// Every secret a write-only key object holds, tried on `stored` (a sealed blob
/// or snapshot body: `eph_public ‖ nonce ‖ ct ‖ tag`) with its right
/// associated data, as an AEAD key and as the X25519 data secret.
fn assert_no_secret_opens(keys: &KeySet, aad: &[u8], stored: &[u8], what: &str) {
    let bytes = keys.to_bytes();
    let part = |i: usize| -> [u8; 32] { bytes[2 + 32 * i..2 + 32 * (i + 1)].try_into().unwrap() };
    let names = ["id key", "chunker key", "meta key", "data public key", "data secret slot"];
    let (eph_public, sealed): (&[u8], &[u8]) = stored.split_at(32);
    let eph_public: [u8; 32] = eph_public.try_into().unwrap();
    assert!(part(4).iter().all(|&b| b == 0), "a write-only key object holds a data secret");
    for (i, name) in names.iter().enumerate() {
        let k = part(i);
        let as_aead = AeadKey::new(keys.cipher(), &k);
        assert_eq!(as_aead.open(aad, sealed), Err(CryptoError::Unauthentic), "the {name} opens {what}");
        assert_eq!(as_aead.open(aad, stored), Err(CryptoError::Unauthentic), "the {name} opens {what} (whole)");
        if let Some(agreed) = blob_key_from(keys.cipher(), &k, &eph_public, &part(3)) {
            assert_eq!(agreed.open(aad, sealed), Err(CryptoError::Unauthentic), "the {name} as data secret opens {what}");
        }
    }
    assert_eq!(keys.open_blob(aad, stored), Err(CryptoError::WriteOnlyKey), "{what}");
}

#[test]
fn the_write_only_key_objects_secrets_open_no_stored_blob_and_no_snapshot_body() {
    let env = encrypted_env();
    let data = [b"THE-DISTINCTIVE-GUEST-STRING ".repeat(20_000), bytes(2 << 20, 8, false)].concat();
    let p = env.path("guest.raw");
    std::fs::write(&p, &data).unwrap();
    // Archived by the write-only host itself: it cannot read back what it wrote either.
    let a = json(&env, WRITE_ONLY, &["archive", p.to_str().unwrap(), "--name", "guest"]);

    // Unwrap the write-only key object with its password, by hand.
    let full = Repository::open_with(backend(&env), &Secret::new(FULL)).unwrap();
    let (config_id, config_bytes) = (full.config().id.clone(), full.config_bytes().to_vec());
    let mut wo_keys = None;
    for (key, size) in full.list::<KeyFile>().unwrap() {
        let file: KeyFile = full.load(&key, Some(size)).unwrap();
        if file.kind == KeyKind::WriteOnly {
            wo_keys = file.open(&Secret::new(WRITE_ONLY), &config_id, &config_bytes).unwrap();
        }
    }
    let wo_keys = wo_keys.expect("the write-only key object opens with its password");
    assert_eq!(wo_keys.kind(), KeyKind::WriteOnly);

    // Every blob of every pack (data chunks and extent lists), as stored.
    let mut kinds = std::collections::HashSet::new();
    for (pack, _) in full.list_packs().unwrap() {
        for entry in full.read_pack_trailer(&pack).unwrap() {
            let stored = full.read_pack_range(&pack, entry.offset, entry.stored_len as u64).unwrap();
            let mut aad = b"imgarc blob\0".to_vec();
            aad.push(entry.kind as u8);
            aad.extend_from_slice(&entry.id.0);
            // The right associated data: the full key opens it.
            assert!(full.keys().unwrap().open_blob(&aad, &stored).is_ok(), "the full key does not open blob {}", entry.id.short());
            assert_no_secret_opens(&wo_keys, &aad, &stored, &format!("blob {} ({:?})", entry.id.short(), entry.kind));
            kinds.insert(entry.kind as u8);
        }
    }
    assert!(kinds.contains(&(BlobKind::Data as u8)) && kinds.contains(&(BlobKind::Tree as u8)), "{kinds:?}");

    // The snapshot object: its head opens with the meta key, its body with no write-only secret.
    let snap_key = format!("snapshots/{}", s(&a, "snapshot"));
    let stored = std::fs::read(env.repo.join(&snap_key)).unwrap();
    assert!(!String::from_utf8_lossy(&stored).contains("guest.raw"), "the snapshot object is not sealed");
    let plain = wo_keys.open_meta(b"imgarc object\0snapshots/", &stored).expect("the meta key opens the envelope");
    let head_len = u32::from_le_bytes(plain[..4].try_into().unwrap()) as usize;
    let head: Value = serde_json::from_slice(&plain[4..4 + head_len]).unwrap();
    assert_eq!(head["name"], "guest", "{head}");
    assert!(head.get("guest").is_none() && head.get("layout").is_none(), "the head holds the streams: {head}");
    let body = &plain[4 + head_len..];
    let mut aad = b"imgarc snapshot body\0".to_vec();
    aad.extend_from_slice(blake3::hash(&plain[4..4 + head_len]).as_bytes());
    let opened = full.keys().unwrap().open_blob(&aad, body).expect("the full key opens the body");
    let snapshot: Value = serde_json::from_slice(&opened).unwrap();
    assert!(snapshot["guest"]["trees"].as_array().is_some_and(|t| !t.is_empty()), "{snapshot}");
    assert_no_secret_opens(&wo_keys, &aad, body, "the snapshot body");

    // And through the repository: the head reads, the body does not.
    let wo = Repository::open_with(backend(&env), &Secret::new(WRITE_ONLY)).unwrap();
    let id = imgarc::ids::Id::from_hex(&s(&a, "snapshot")).unwrap();
    assert_eq!(wo.load_snapshot_head(&id).unwrap().name, "guest");
    let err = format!("{:#}", wo.load_snapshot(&id).unwrap_err());
    assert!(err.contains("write-only key") && err.contains(&snap_key), "{err}");
    assert_eq!(full.load_snapshot(&id).unwrap().name, "guest");
    // No object holds the guest's plaintext.
    let mut files = Vec::new();
    let mut stack = vec![env.repo.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    for f in files {
        assert!(!String::from_utf8_lossy(&std::fs::read(&f).unwrap()).contains("THE-DISTINCTIVE"), "plaintext in {}", f.display());
    }
}

/// `sync` with a write-only key against the real Glance: it archives and
/// dedups, a re-run reads nothing (decided from the heads), a metadata-only
/// change is archived again (the previous snapshot's streams are unreadable)
/// storing nothing new, and the full key agrees and restores.
#[cfg(feature = "openstack-tests")]
#[test]
fn a_write_only_host_syncs_from_glance_deciding_from_the_snapshot_heads() {
    use crate::support::openstack as os;
    let _serial = os::serial();
    let g = os::noauth();
    let env = encrypted_env();
    let tag = os::unique("write-only-sync");
    let disk = imgarc::synthetic::SyntheticDisk::new(8 << 20, 21);
    let mut images = Vec::new();
    for night in 0..2 {
        let p = env.path(&format!("n{night}.raw"));
        disk.write_night(&p, night).unwrap();
        let data = std::fs::read(&p).unwrap();
        let (rec, guard) = os::upload_image(&g, &format!("{tag}-vm-n{night}"), &data, serde_json::json!({"tags": [tag]}));
        images.push((rec.id, data, guard));
    }
    let sync = |password: &str| json(&env, password, &["--glance-url", &os::env("GLANCE_URL"), "sync", "--filter", &format!("tag={tag}")]);
    let ids = |doc: &Value, key: &str| -> Vec<String> {
        let mut v: Vec<String> = doc[key].as_array().unwrap().iter().map(|e| s(e, "id")).collect();
        v.sort();
        v
    };
    let mut all: Vec<String> = images.iter().map(|i| i.0.clone()).collect();
    all.sort();

    let first = sync(WRITE_ONLY);
    assert_eq!(ids(&first, "archived"), all, "{first}");
    assert!(u(&first, "bytes_stored") < u(&first, "bytes_read") * 3 / 4, "the second night dedups: {first}");
    let again = sync(WRITE_ONLY);
    assert_eq!(ids(&again, "unchanged"), all, "{again}");
    assert_eq!(u(&again, "bytes_read"), 0, "{again}");

    let (changed, data, _) = &images[0];
    g.update(changed, &[serde_json::json!({"op": "add", "path": "/backup_note", "value": "tuesday"})]).unwrap();
    let meta = sync(WRITE_ONLY);
    assert_eq!(ids(&meta, "archived"), vec![changed.clone()], "a write-only key archives again: {meta}");
    assert!(ids(&meta, "metadata_updated").is_empty(), "{meta}");
    assert_eq!(u(&meta, "bytes_read"), data.len() as u64, "{meta}");
    assert!(u(&meta, "bytes_stored") < data.len() as u64 / 50, "the same bytes again store (almost) nothing: {meta}");
    let snap = s(&meta["archived"][0], "snapshot");
    assert_eq!(ids(&sync(WRITE_ONLY), "unchanged"), all);
    assert_refused(&env, &["--glance-url", &os::env("GLANCE_URL"), "restore", &snap, "--to-glance"], "restore");

    // The full key sees the same: nothing changed since the write-only host's run.
    assert_eq!(ids(&sync(FULL), "unchanged"), all);
    let shown = json(&env, FULL, &["show", &snap]);
    assert_eq!(shown["metadata"]["backup_note"], "tuesday", "{shown}");
    let restored = env.path("restored.raw");
    let o = run(&env, FULL, &["restore", &snap, "-o", restored.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&restored).unwrap() == *data, "the re-archived image differs after restore");
}

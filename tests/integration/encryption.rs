//! Encrypted repositories through the binary: round trips with both ciphers
//! (raw, QCOW2, the real-image corpus), `index rebuild` and `check
//! --read-data`; no plaintext and no unkeyed chunk id in any stored object;
//! and every kind of object, changed by one byte or planted from elsewhere, is
//! refused with an error that names it (never a panic).

use crate::support;
use imgarc::backend::local::LocalBackend;
use imgarc::crypto::Cipher;
use imgarc::ids::Id;
use imgarc::repository::file::RepoFile;
use imgarc::repository::{self, Repository};
use imgarc::secret::Secret;
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use support::*;

const PASSWORD: &str = "correct horse battery staple";
/// A string no chunker, compressor or cipher produces by chance.
const GUEST_TEXT: &str = "IMGARC-GUEST-PLAINTEXT-7f3a9c-the-quick-brown-fox";

fn run(env: &Env, args: &[&str]) -> Output {
    env.cmd(args).env("IMGARC_PASSWORD", PASSWORD).stdin(std::process::Stdio::null()).output().unwrap()
}

fn ok(env: &Env, args: &[&str]) -> String {
    let o = run(env, args);
    assert!(o.status.success(), "imgarc {args:?} failed: {}\n{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
    String::from_utf8(o.stdout).unwrap()
}

fn json(env: &Env, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(env, &a)).unwrap()
}

fn init(cipher: Cipher) -> Env {
    let env = Env::new();
    ok(&env, &["init", "--chunk-size", "64K", "--encryption", cipher.name()]);
    let config: Value = serde_json::from_slice(&std::fs::read(env.repo.join("config")).unwrap()).unwrap();
    assert_eq!(config["encryption"], cipher.name());
    env
}

fn archive(env: &Env, path: &Path, name: &str) -> String {
    s(&json(env, &["archive", path.to_str().unwrap(), "--name", name]), "snapshot")
}

fn restore(env: &Env, snap: &str) -> Vec<u8> {
    let out = env.path(&format!("restored-{}", &snap[..12]));
    ok(env, &["restore", snap, "-o", out.to_str().unwrap()]);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(out).unwrap();
    bytes
}

/// A raw disk of `len` bytes: incompressible noise with [`GUEST_TEXT`] blocks in it.
fn raw_image(len: usize, seed: u64) -> Vec<u8> {
    let mut img = bytes(len, seed, false);
    let text = GUEST_TEXT.repeat(4096 / GUEST_TEXT.len() + 1);
    for at in (0..len).step_by(1 << 20) {
        let end = (at + 200_000).min(len);
        for (i, b) in img[at + 4096..end].iter_mut().enumerate() {
            *b = text.as_bytes()[i % text.len()];
        }
    }
    img
}

fn qemu_img(args: &[&str]) {
    let o = std::process::Command::new("qemu-img").args(args).output().expect("qemu-img");
    assert!(o.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

fn have(tool: &str) -> bool {
    std::process::Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Every file under `root`, with its bytes.
fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn open(root: &Path) -> Repository {
    Repository::open_with(Arc::new(LocalBackend::new(root)), &Secret::new(PASSWORD)).unwrap()
}

#[test]
fn raw_and_qcow2_round_trip_with_both_ciphers_through_rebuild_and_check() {
    for (n, cipher) in Cipher::ALL.into_iter().enumerate() {
        let env = init(cipher);
        let raw = raw_image(6 << 20, 10 + n as u64);
        let raw_path = env.path("disk.raw");
        std::fs::write(&raw_path, &raw).unwrap();
        let mut images = vec![(archive(&env, &raw_path, "raw"), raw.clone())];
        if have("qemu-img") {
            let q = env.path("disk.qcow2");
            qemu_img(&["convert", "-f", "raw", "-O", "qcow2", raw_path.to_str().unwrap(), q.to_str().unwrap()]);
            // Restore rebuilds the QCOW2 file itself, byte for byte.
            images.push((archive(&env, &q, "qcow2"), std::fs::read(&q).unwrap()));
        } else {
            skip_or_fail_in_ci("qemu-img (qemu-utils) not installed: no encrypted qcow2 round trip");
        }
        for (snap, want) in &images {
            assert!(restore(&env, snap) == *want, "{cipher}: {snap} does not restore byte-exactly");
        }
        let check = json(&env, &["check", "--read-data"]);
        assert_eq!(check["ok"], true, "{cipher}: {check}");

        // The local cache is only a cache: rebuilt from the sealed objects, it lists and restores the same.
        std::fs::remove_dir_all(&env.cache).unwrap();
        ok(&env, &["index", "rebuild"]);
        let listed = json(&env, &["list"]);
        let text = listed.to_string();
        for (snap, want) in &images {
            assert!(text.contains(snap.as_str()), "{cipher}: {snap} not listed after rebuild: {listed}");
            assert!(restore(&env, snap) == *want, "{cipher}: {snap} does not restore after rebuild");
        }
        // Without the password nothing opens.
        let o = env.cmd(&["list"]).env_remove("IMGARC_PASSWORD").output().unwrap();
        assert!(!o.status.success());
        let o = env.cmd(&["list"]).env("IMGARC_PASSWORD", "wrong").output().unwrap();
        assert_refused(&o, "wrong password", "wrong password");
        assert_eq!(o.status.code(), Some(12), "a wrong password exits 12");
    }
}

#[test]
fn real_image_corpus_round_trips_encrypted() {
    let Ok(dir) = std::env::var("IMGARC_CORPUS") else {
        return skip_or_fail_in_ci("IMGARC_CORPUS not set: no real-image encrypted round trip");
    };
    let dir = PathBuf::from(dir);
    let manifest = std::fs::read_to_string(dir.join("manifest.tsv")).unwrap();
    let env = init(Cipher::XChaCha20Poly1305);
    let mut n = 0;
    // Night 0 in both formats: the raw and QCOW2 files of the same ext4 guest.
    for line in manifest.lines().skip(1).filter(|l| l.split('\t').nth(1) == Some("0")) {
        let f: Vec<&str> = line.split('\t').collect();
        let snap = archive(&env, &dir.join(f[3]), f[3]);
        assert_eq!(sha256(&restore(&env, &snap)), f[5], "{}", f[3]);
        n += 1;
    }
    assert!(n >= 2, "corpus had {n} images of night 0");
    assert_eq!(json(&env, &["check", "--read-data"])["ok"], true);
}

/// The blob ids of an unencrypted repository, read from its pack trailers.
fn unkeyed_blob_ids(root: &Path) -> Vec<Id> {
    let repo = Repository::open(Arc::new(LocalBackend::new(root))).unwrap();
    let mut ids = Vec::new();
    for (pack, _) in repo.list_packs().unwrap() {
        ids.extend(repo.read_pack_trailer(&pack).unwrap().into_iter().map(|e| e.id));
    }
    ids
}

/// An ext4 file system holding a file with [`GUEST_TEXT`], or `None` without mkfs.ext4.
fn ext4_image(dir: &Path) -> Option<PathBuf> {
    let tree = dir.join("ext4-tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    let mut text = String::new();
    for i in 0..3000 {
        text.push_str(&format!("{GUEST_TEXT} line {i}\n"));
    }
    std::fs::write(tree.join("etc/secret.conf"), text).unwrap();
    std::fs::write(tree.join("noise.bin"), bytes(2 << 20, 77, false)).unwrap();
    let img = dir.join("ext4.raw");
    let o = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d", tree.to_str().unwrap(), img.to_str().unwrap(), "16M"])
        .output()
        .ok()?;
    o.status.success().then_some(img)
}

#[test]
fn no_object_holds_guest_plaintext_or_an_unkeyed_chunk_id() {
    let env = init(Cipher::Aes256Gcm);
    let twin = Env::init_unencrypted("64K");
    let raw = env.path("disk.raw");
    std::fs::write(&raw, raw_image(4 << 20, 3)).unwrap();
    let mut images = vec![raw];
    match ext4_image(env.dir.path()) {
        Some(img) => images.push(img),
        None => skip_or_fail_in_ci("mkfs.ext4 (e2fsprogs) not installed: no ext4 guest in the plaintext test"),
    }
    for (i, img) in images.iter().enumerate() {
        let name = format!("img{i}");
        archive(&env, img, &name);
        twin.archive(img, &name);
    }
    // The twin really holds the plaintext and the ids we look for, so their absence below means something.
    let twin_files = files(&twin.repo);
    assert!(twin_files.iter().any(|(_, b)| b.windows(GUEST_TEXT.len()).any(|w| w == GUEST_TEXT.as_bytes())));
    let ids = unkeyed_blob_ids(&twin.repo);
    assert!(ids.len() > 20, "only {} blobs", ids.len());
    let raw_ids: HashSet<[u8; 32]> = ids.iter().map(|id| id.0).collect();
    let hex_ids: Vec<String> = ids.iter().map(|id| id.to_hex()).collect();

    let stored = files(&env.repo);
    assert!(stored.iter().any(|(n, _)| n.starts_with("data/")) && stored.iter().any(|(n, _)| n.starts_with("snapshots/")));
    for (name, bytes) in &stored {
        assert!(!bytes.windows(GUEST_TEXT.len()).any(|w| w == GUEST_TEXT.as_bytes()), "guest plaintext in {name}");
        assert!(!bytes.windows(16).any(|w| w == &GUEST_TEXT.as_bytes()[..16]), "a piece of guest plaintext in {name}");
        assert!(!bytes.windows(32).any(|w| raw_ids.contains(w)), "an unkeyed chunk id in {name}");
        let text = String::from_utf8_lossy(bytes).to_lowercase();
        for hex in &hex_ids {
            assert!(!text.contains(hex.as_str()), "unkeyed chunk id {hex} as hex in {name}");
        }
    }
    // The image names are metadata the user chose: they are sealed too.
    for (name, bytes) in &stored {
        assert!(!bytes.windows(8).any(|w| w == b"disk.raw" || w == b"ext4.raw"), "a source path in {name}");
    }
}

/// A repository with two archives (so two packs), read back by the library to find its objects.
struct Fixture {
    env: Env,
    snaps: Vec<String>,
    images: Vec<Vec<u8>>,
}

fn fixture(cipher: Cipher) -> Fixture {
    let env = init(cipher);
    let mut snaps = Vec::new();
    let mut images = Vec::new();
    for i in 0..2u64 {
        let img = raw_image(2 << 20, 40 + i);
        let p = env.path(&format!("img{i}"));
        std::fs::write(&p, &img).unwrap();
        snaps.push(archive(&env, &p, &format!("img{i}")));
        images.push(img);
    }
    Fixture { env, snaps, images }
}

/// A fresh copy of `src`'s repository with an empty cache, for one tampering.
fn copy_of(src: &Env) -> Env {
    let env = Env::new();
    for (name, bytes) in files(&src.repo) {
        let p = env.repo.join(&name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    env
}

fn only(root: &Path, prefix: &str) -> Vec<String> {
    files(root).into_iter().map(|(n, _)| n).filter(|n| n.starts_with(prefix)).collect()
}

fn flip(root: &Path, key: &str, at: usize) {
    let p = root.join(key);
    let mut b = std::fs::read(&p).unwrap();
    let at = at.min(b.len() - 1);
    b[at] ^= 0x20;
    std::fs::write(p, b).unwrap();
}

/// Moves a (changed) content-named object to the name its bytes now hash to,
/// as anyone with write access can: only the seal is left to refuse it.
fn rename_to_content(root: &Path, key: &str) -> String {
    let b = std::fs::read(root.join(key)).unwrap();
    let (prefix, _) = key.rsplit_once('/').unwrap();
    let id = Id::of(&b).to_hex();
    let new = if prefix.starts_with("data") { format!("data/{}/{}", &id[..2], id) } else { format!("{prefix}/{id}") };
    std::fs::create_dir_all(root.join(&new).parent().unwrap()).unwrap();
    std::fs::rename(root.join(key), root.join(&new)).unwrap();
    new
}

/// The read skipped the object with a warning naming it (as `list` does with any
/// damaged object) or failed naming it; either way without a panic. `check` names
/// it too (an index object or snapshot that does not open is one of its errors).
#[track_caller]
fn assert_skipped_by_name(env: &Env, o: &Output, what: &str, case: &str) {
    // Warnings go to stderr; a report (`index rebuild`) lists what it skipped on stdout.
    let err = format!("{}{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
    assert!(!err.contains("panicked"), "{case}: panicked\n{err}");
    assert!(err.contains(what), "{case}: nothing names {what}:\n{err}");
    assert!(!o.status.success() || err.contains("warning"), "{case}: accepted silently\n{err}");
    let check = run(env, &["check"]);
    let told = format!("{}{}", String::from_utf8_lossy(&check.stderr), String::from_utf8_lossy(&check.stdout));
    assert!(!told.contains("panicked") && told.contains(what), "{case}: check does not name {what}:\n{told}");
}

/// The command failed cleanly, with a message that names `what`.
#[track_caller]
fn assert_refused(o: &Output, what: &str, case: &str) {
    // `check` lists what it found on stdout and sums it up on stderr.
    let err = format!("{}{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
    assert!(!o.status.success(), "{case}: accepted\n{err}");
    assert!(!err.contains("panicked"), "{case}: panicked\n{err}");
    assert!(err.contains(what), "{case}: the error does not name {what}:\n{err}");
}

#[test]
fn a_changed_config_or_key_object_is_refused() {
    let f = fixture(Cipher::Aes256Gcm);
    // A semantic change (what an attacker wants) and a flipped byte both break every key object's binding.
    let env = copy_of(&f.env);
    let cfg = env.repo.join("config");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("\"level\": 3"), "{text}");
    std::fs::write(&cfg, text.replace("\"level\": 3", "\"level\": 1")).unwrap();
    let o = run(&env, &["list"]);
    assert_refused(&o, "config was changed", "changed config");
    assert_refused(&o, "keys/", "changed config");
    let env = copy_of(&f.env);
    let len = std::fs::read(env.repo.join("config")).unwrap().len();
    // A byte inside a string value keeps it JSON.
    let at = String::from_utf8(std::fs::read(env.repo.join("config")).unwrap()).unwrap().find("\"id\": \"").unwrap() + 8;
    assert!(at < len);
    flip(&env.repo, "config", at);
    assert_refused(&run(&env, &["list"]), "config", "flipped config byte");

    // A key object with a flipped byte opens with no password (exit 12), and the warning names it.
    let env = copy_of(&f.env);
    let key = only(&env.repo, "keys/").remove(0);
    let text = std::fs::read_to_string(env.repo.join(&key)).unwrap();
    let at = text.find("\"sealed\": \"").unwrap() + 20;
    let mut changed = text.clone().into_bytes();
    changed[at] = if changed[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(env.repo.join(&key), &changed).unwrap();
    let o = run(&env, &["list"]);
    // A changed wrap cannot be told from another password's: the AEAD only says "does not open".
    assert_refused(&o, "wrong password", "changed sealed bytes of a key object");
    assert_eq!(o.status.code(), Some(12));
    // A byte that is no longer hex: an error naming the key object.
    let env = copy_of(&f.env);
    flip(&env.repo, &key, at);
    assert_refused(&run(&env, &["list"]), &key, "flipped key object");
    // A visible field changed (the KDF memory, to make opening cheap or costly) is authenticated too.
    let env = copy_of(&f.env);
    let text = std::fs::read_to_string(env.repo.join(&key)).unwrap();
    let changed = text.replacen("\"t\": ", "\"t\": 1", 1);
    assert_ne!(changed, text);
    std::fs::write(env.repo.join(&key), changed).unwrap();
    let o = run(&env, &["list"]);
    assert!(!o.status.success() && !String::from_utf8_lossy(&o.stderr).contains("panicked"));
    // A key object that is not JSON is skipped by name.
    let env = copy_of(&f.env);
    std::fs::write(env.repo.join(&key), b"{ not json").unwrap();
    let o = run(&env, &["list"]);
    assert!(!o.status.success() && !String::from_utf8_lossy(&o.stderr).contains("panicked"));
}

#[test]
fn changed_index_objects_snapshots_and_packs_are_refused_by_name() {
    let f = fixture(Cipher::XChaCha20Poly1305);
    let index = only(&f.env.repo, "index/");
    let snaps = only(&f.env.repo, "snapshots/");
    let packs = only(&f.env.repo, "data/");
    assert!(index.len() >= 2 && snaps.len() == 2 && packs.len() >= 2, "{index:?} {snaps:?} {packs:?}");

    // Index objects: a flipped byte (name mismatch) and the same under its new content name (the seal).
    for at in [5, 40, usize::MAX] {
        let env = copy_of(&f.env);
        flip(&env.repo, &index[0], at);
        assert_skipped_by_name(&env, &run(&env, &["list"]), &index[0], "flipped index object");
        let env = copy_of(&f.env);
        flip(&env.repo, &index[0], at);
        let renamed = rename_to_content(&env.repo, &index[0]);
        assert_skipped_by_name(&env, &run(&env, &["list"]), &renamed, "re-named flipped index object");
        assert!(!run(&env, &["check"]).status.success(), "check passes over an index object that does not open");
        let o = run(&env, &["index", "rebuild"]);
        assert_skipped_by_name(&env, &o, &renamed, "index rebuild over a flipped index object");
    }

    // Snapshots.
    for at in [3, 30, usize::MAX] {
        let env = copy_of(&f.env);
        flip(&env.repo, &snaps[0], at);
        let renamed = rename_to_content(&env.repo, &snaps[0]);
        let id = renamed.rsplit('/').next().unwrap().to_string();
        let o = run(&env, &["--json", "list"]);
        assert_skipped_by_name(&env, &o, &id, "flipped snapshot");
        assert!(!String::from_utf8_lossy(&o.stdout).contains(&id), "a changed snapshot is listed");
        assert!(!run(&env, &["check"]).status.success(), "check passes over a snapshot that does not open");
    }

    // Pack blobs: restore reads ranges, so the blob's own seal catches it, naming the blob.
    let repo = open(&f.env.repo);
    let snap_packs: Vec<(String, Vec<repository::pack::PackEntry>)> = packs
        .iter()
        .map(|p| {
            let id = Id::from_hex(p.rsplit('/').next().unwrap()).unwrap();
            (p.clone(), repo.read_pack_trailer(&id).unwrap())
        })
        .collect();
    let (pack, entries) = &snap_packs[0];
    let blob = entries.iter().find(|e| e.kind == repository::pack::BlobKind::Data).unwrap();
    let env = copy_of(&f.env);
    flip(&env.repo, pack, blob.offset as usize + 40);
    let pack_id = pack.rsplit('/').next().unwrap();
    let failed: Vec<Output> = f.snaps.iter().map(|s| run(&env, &["restore", s, "-o", env.path("out").to_str().unwrap()])).collect();
    assert!(failed.iter().any(|o| !o.status.success()), "no restore failed over a flipped blob");
    for o in failed.iter().filter(|o| !o.status.success()) {
        assert_refused(o, &blob.id.to_hex(), "flipped blob");
    }
    assert_refused(&run(&env, &["check", "--read-data"]), &pack_id[..8], "check over a flipped blob");

    // The pack trailer, with its checksum recomputed (anyone can): the seal refuses it.
    let env = copy_of(&f.env);
    let bytes = std::fs::read(env.repo.join(pack)).unwrap();
    let footer = bytes.len() - repository::pack::FOOTER_LEN;
    let trailer_start = entries.iter().map(|e| e.offset + e.stored_len as u64).max().unwrap() as usize;
    let mut bad = bytes.clone();
    bad[trailer_start + 30] ^= 1;
    let digest = blake3::hash(&bad[trailer_start..footer]);
    bad[footer + 8..footer + 40].copy_from_slice(digest.as_bytes());
    std::fs::write(env.repo.join(pack), &bad).unwrap();
    let renamed = rename_to_content(&env.repo, pack);
    // The index objects still name the old pack: point one at the new name as a writer would.
    let env2 = copy_of(&env);
    drop(env);
    std::fs::remove_dir_all(env2.repo.join("index")).unwrap();
    let o = run(&env2, &["index", "rebuild"]);
    let new_id = renamed.rsplit('/').next().unwrap();
    // Rebuild salvages what opens: the pack is skipped by name, and its snapshot is unreadable.
    assert_skipped_by_name(&env2, &o, &new_id[..8], "sealed trailer changed");
    assert!(String::from_utf8_lossy(&o.stdout).contains("pack trailer: it cannot be authenticated"), "sealed trailer changed: why");

    // The pack header (encryption byte cleared, a salt byte flipped). No reader trusts it: restore
    // reads blobs by range, `index rebuild` reads trailers by range, and the trailer's seal binds
    // the entry count, not the header (see the notes). What must hold: every blob still opens and
    // verifies, nothing panics, and the rebuilt index still restores byte for byte.
    for (at, value) in [(9, 0u8), (12, 0x5a)] {
        let env = copy_of(&f.env);
        let mut b = std::fs::read(env.repo.join(pack)).unwrap();
        b[at] = value;
        std::fs::write(env.repo.join(pack), &b).unwrap();
        std::fs::remove_dir_all(env.repo.join("index")).unwrap();
        let o = run(&env, &["index", "rebuild"]);
        assert!(o.status.success() && !String::from_utf8_lossy(&o.stderr).contains("panicked"));
        let o = run(&env, &["check", "--read-data"]);
        let told = format!("{}{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
        assert!(!told.contains("panicked"));
        // The encryption byte contradicts the repository: an error; a salt byte: a warning (nothing else changed).
        let said = if at == 9 { "header or trailer is damaged" } else { "no longer match its name" };
        assert!(told.contains(said), "header byte {at}: check does not say the pack changed:\n{told}");
        assert_eq!(o.status.success(), at != 9, "header byte {at}: {told}");
        for (snap, want) in f.snaps.iter().zip(&f.images) {
            assert!(restore(&env, snap) == *want, "header byte {at}: a changed header changes no blob");
        }
    }

    // A damaged trailer of an indexed pack: the blobs still read (through the index objects), but
    // `check --read-data` fails naming the pack, which no longer describes itself.
    let env = copy_of(&f.env);
    let mut b = std::fs::read(env.repo.join(pack)).unwrap();
    let at = b.len() - 48 - 20;
    b[at] ^= 1;
    std::fs::write(env.repo.join(pack), &b).unwrap();
    let o = run(&env, &["check", "--read-data"]);
    assert_refused(&o, "header or trailer is damaged", "damaged trailer of an indexed pack");
    assert_refused(&o, &pack_id[..8], "damaged trailer of an indexed pack");

    // A swapped pack: pack A's bytes under pack B's name.
    let env = copy_of(&f.env);
    std::fs::copy(env.repo.join(&packs[1]), env.repo.join(&packs[0])).unwrap();
    let o = run(&env, &["check", "--read-data"]);
    assert_refused(&o, &pack_id[..8], "swapped pack");
    let restores: Vec<Output> = f.snaps.iter().map(|s| run(&env, &["restore", s, "-o", env.path("out").to_str().unwrap()])).collect();
    assert!(restores.iter().any(|o| !o.status.success()), "a restore read a swapped pack");
    for o in &restores {
        assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
    }
    // Untouched, everything still restores (the cases above changed copies only).
    for (snap, want) in f.snaps.iter().zip(&f.images) {
        assert!(restore(&f.env, snap) == *want);
    }
}

#[test]
fn objects_of_another_repository_are_refused_by_name() {
    let a = fixture(Cipher::Aes256Gcm);
    let b = fixture(Cipher::Aes256Gcm);
    // B's snapshot and index object planted in (a copy of) A, under their own content names.
    for prefix in ["snapshots/", "index/"] {
        let env = copy_of(&a.env);
        let planted = only(&b.env.repo, prefix).remove(0);
        std::fs::copy(b.env.repo.join(&planted), env.repo.join(&planted)).unwrap();
        let name = planted.rsplit('/').next().unwrap();
        let o = run(&env, &["list"]);
        assert_skipped_by_name(&env, &o, name, prefix);
        assert_skipped_by_name(&env, &o, "cannot be authenticated", prefix);
        assert!(!run(&env, &["check"]).status.success(), "{prefix}: check passes over another repository's object");
    }
    // B's key object planted in A does not open A (it is bound to B's repository id and config).
    let env = copy_of(&a.env);
    for k in only(&env.repo, "keys/") {
        std::fs::remove_file(env.repo.join(k)).unwrap();
    }
    let planted = only(&b.env.repo, "keys/").remove(0);
    std::fs::copy(b.env.repo.join(&planted), env.repo.join(&planted)).unwrap();
    assert_refused(&run(&env, &["list"]), "another repository", "planted key object");
}

#[test]
fn changed_marks_upstream_records_and_locks_are_refused_safely() {
    let f = fixture(Cipher::Aes256Gcm);
    let env = copy_of(&f.env);
    let repo = open(&env.repo);
    let pack = repo.list_packs().unwrap()[0];
    let mark = repository::marks::PruneMark {
        version: repository::marks::MARK_VERSION,
        created: "2026-12-01T00:00:00Z".into(),
        hostname: "h".into(),
        packs: vec![],
    };
    let _ = pack;
    let mark_key = repo.write_mark(&mark).unwrap();
    let record = repository::upstream::DeletedUpstream { image_id: "img-1".into(), name: "web".into(), cloud: None, detected: "x".into() };
    repo.record_deleted_upstream(&record).unwrap();
    let record_key = repository::upstream::DeletedUpstream::key("img-1");
    assert!(repo.read_mark(&mark_key).is_ok() && repo.deleted_upstream().unwrap() == vec![record]);

    // A prune mark, changed and re-named to its content: the library names it, and prune (a writer) refuses to go on.
    flip(&env.repo, &mark_key, 20);
    let mark_key = rename_to_content(&env.repo, &mark_key);
    let err = format!("{:#}", repo.read_mark(&mark_key).unwrap_err());
    assert!(err.contains(&mark_key) && err.contains("cannot be authenticated"), "{err}");
    let o = run(&env, &["prune", "--grace", "0"]);
    assert_refused(&o, &mark_key, "changed prune mark");

    // An upstream record: forget reads them; both it and the library name the record.
    flip(&env.repo, &record_key, 20);
    let err = format!("{:#}", repo.deleted_upstream().unwrap_err());
    assert!(err.contains(&record_key) && err.contains("cannot be authenticated"), "{err}");
    let o = run(&env, &["forget", "--keep-last", "1"]);
    assert_refused(&o, &record_key, "changed upstream record");

    // A lock: an unreadable lock must not be taken for a live one that can be ignored
    // silently, nor wedge the repository: it is reported by name and `unlock` removes it.
    let env = copy_of(&f.env);
    let repo = open(&env.repo);
    let lock = repo.acquire_lock(false, "test").unwrap();
    let lock_key = only(&env.repo, "locks/").remove(0);
    let held = std::fs::read(env.repo.join(&lock_key)).unwrap();
    drop(lock);
    let mut bad = held.clone();
    bad[20] ^= 1;
    std::fs::write(env.repo.join(&lock_key), &bad).unwrap();
    let o = run(&env, &["--json", "unlock"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    let unlock_ok = o.status.success();
    let still_there = env.repo.join(&lock_key).exists();
    eprintln!("unlock over a changed lock: success={unlock_ok}, lock still there={still_there}\n{err}");
    assert!(unlock_ok && !still_there, "a changed lock wedges the repository: `unlock` cannot remove it\n{err}");
}

/// A Glance image archived into an encrypted repository restores to the bytes uploaded, and
/// the Glance record's metadata is sealed with the rest (`source /tmp/imgarc-servers.env`).
#[cfg(feature = "openstack-tests")]
#[test]
fn glance_source_round_trips_encrypted() {
    use support::openstack as os;
    let _serial = os::serial();
    let g = os::noauth();
    let env = init(Cipher::XChaCha20Poly1305);
    let raw = env.path("g.raw");
    std::fs::write(&raw, raw_image(6 << 20, 21)).unwrap();
    let q = env.path("g.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", raw.to_str().unwrap(), q.to_str().unwrap()]);
    let data = std::fs::read(&q).unwrap();
    let name = os::unique("enc");
    let (rec, _cleanup) = os::upload_image(&g, &name, &data, serde_json::json!({"disk_format": "qcow2", "hw_disk_bus": "scsi"}));
    let url = os::env("GLANCE_URL");
    let a = json(&env, &["--glance-url", &url, "archive", &format!("glance:{name}")]);
    let snap = s(&a, "snapshot");
    assert_eq!(s(&a, "format"), "qcow2");
    let shown = json(&env, &["--glance-url", &url, "show", &snap]);
    assert_eq!(shown["source"]["image_id"], rec.id);
    let out = env.path("g.out");
    ok(&env, &["restore", &snap, "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == data, "the Glance image, byte for byte");
    for (n, b) in files(&env.repo) {
        assert!(!b.windows(name.len()).any(|w| w == name.as_bytes()), "the Glance image name in {n}");
        assert!(!b.windows(GUEST_TEXT.len()).any(|w| w == GUEST_TEXT.as_bytes()), "guest plaintext in {n}");
    }
}

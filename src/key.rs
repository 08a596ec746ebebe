//! Key management of an encrypted repository (`imgarc key`): list the key
//! objects under `keys/`, add one (full or write-only), remove one, and
//! change the password of the key in use. One options struct per operation,
//! typed reports, no printing; the password itself comes from the caller.
//!
//! Rules (format-spec/encryption.md §2, "Managing keys"):
//! - only a full key adds or removes keys (a write-only key cannot mint a
//!   full one, nor delete the keys that read the data);
//! - a removal must leave at least one *other* full key object: never the last
//!   key, never the last full key. Concurrent removals take a singleton lock
//!   (`key remove`), so two of them cannot each remove one of the last two;
//! - `passwd` writes the new key object first, then deletes the old one: a
//!   crash between leaves two working keys, never none. It needs no lock: it
//!   never lowers the number of keys.

use crate::crypto::keyfile::{KdfParams, KeyFile};
use crate::crypto::KeyKind;
use crate::ids::Id;
use crate::repository::file::RepoFile;
use crate::repository::Repository;
use crate::secret::Secret;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::sync::Arc;

/// The lock purpose that keeps key removals one at a time.
const REMOVE_LOCK_PURPOSE: &str = "key remove";

/// One key object as `key list` shows it: its visible fields, never its secret.
#[derive(Debug, Clone, Serialize)]
pub struct KeyEntry {
    /// The object's name (BLAKE3 of its bytes), 64 hex.
    pub id: String,
    /// The first 8 hex digits of `id`, as prose shows it.
    pub short_id: String,
    pub kind: KeyKind,
    pub label: String,
    pub created: String,
    pub hostname: String,
    pub kdf_params: KdfParams,
    /// Whether this handle was opened with it.
    pub in_use: bool,
}

impl KeyEntry {
    fn new(key: &str, file: &KeyFile, in_use: Option<Id>) -> KeyEntry {
        let id = KeyFile::name_of(key).unwrap_or_default().to_string();
        KeyEntry {
            short_id: id.chars().take(8).collect(),
            in_use: Id::from_hex(&id).is_some() && Id::from_hex(&id) == in_use,
            id,
            kind: file.kind,
            label: file.label.clone(),
            created: file.created.clone(),
            hostname: file.hostname.clone(),
            kdf_params: file.kdf_params,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyListReport {
    pub keys: Vec<KeyEntry>,
    /// Key objects that could not be read (named by key, with why); they open nothing.
    pub unreadable: Vec<String>,
}

/// `key add` options.
#[derive(Debug, Clone)]
pub struct AddKeyOptions {
    pub kind: KeyKind,
    pub label: String,
    pub kdf: KdfParams,
}

/// `key remove` options: the key's id, or a unique prefix of it.
#[derive(Debug, Clone)]
pub struct RemoveKeyOptions {
    pub id: String,
}

/// `key passwd` options.
#[derive(Debug, Clone)]
pub struct PasswdOptions {
    pub kdf: KdfParams,
}

#[derive(Debug, Clone, Serialize)]
pub struct PasswdReport {
    /// The new key object, now in use.
    pub key: KeyEntry,
    /// The id of the key object it replaced (deleted).
    pub replaced: String,
}

fn require_encrypted(repo: &Repository) -> Result<()> {
    if repo.keys().is_none() {
        bail!("the repository at {} is not encrypted: it has no keys", repo.location());
    }
    Ok(())
}

fn require_full(repo: &Repository, what: &str) -> Result<()> {
    require_encrypted(repo)?;
    if repo.key_kind() != Some(KeyKind::Full) {
        bail!("{what} needs a full key: the repository was opened with a write-only key");
    }
    Ok(())
}

/// Key objects by their object key, as read (not unwrapped).
type KeyFiles = Vec<(String, KeyFile)>;

/// Every key object, read (not unwrapped), and what could not be read.
fn load_all(repo: &Repository) -> Result<(KeyFiles, Vec<String>)> {
    let mut keys = Vec::new();
    let mut unreadable = Vec::new();
    for (key, size) in repo.list::<KeyFile>()? {
        match repo.load::<KeyFile>(&key, Some(size)) {
            Ok(f) => keys.push((key, f)),
            Err(e) => unreadable.push(format!("{key}: {e:#}")),
        }
    }
    Ok((keys, unreadable))
}

/// The key objects of the repository, the one in use marked.
pub fn list(repo: &Repository) -> Result<KeyListReport> {
    require_encrypted(repo)?;
    let (files, unreadable) = load_all(repo)?;
    let mut keys: Vec<KeyEntry> = files.iter().map(|(k, f)| KeyEntry::new(k, f, repo.key_id())).collect();
    keys.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
    Ok(KeyListReport { keys, unreadable })
}

/// Wraps the repository's keys (or their write-only part) under `password` in a new key object.
pub fn add(repo: &Repository, opts: &AddKeyOptions, password: &Secret) -> Result<KeyEntry> {
    require_full(repo, "adding a key")?;
    let keys = repo.keys().expect("checked: encrypted");
    write_key(repo, keys, opts.kind, password, opts.kdf, &opts.label)
}

fn write_key(
    repo: &Repository,
    keys: &Arc<crate::crypto::KeySet>,
    kind: KeyKind,
    password: &Secret,
    kdf: KdfParams,
    label: &str,
) -> Result<KeyEntry> {
    let file = KeyFile::create(keys, kind, password, kdf, label, &repo.config().id, repo.config_bytes())?;
    let (key, _) = repo.save(&file)?;
    Ok(KeyEntry::new(&key, &file, repo.key_id()))
}

/// The one key object `id` (full or a unique prefix) names.
fn resolve<'a>(files: &'a [(String, KeyFile)], id: &str) -> Result<&'a (String, KeyFile)> {
    let id = id.to_ascii_lowercase();
    if id.len() < 4 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("key id {id:?}: give at least 4 hex digits of an id `key list` shows");
    }
    let mut found = files.iter().filter(|(k, _)| KeyFile::name_of(k).is_some_and(|n| n.starts_with(&id)));
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => bail!("no key object with id {id}"),
        (Some(_), Some(_)) => bail!("key id {id} is ambiguous: give more digits"),
    }
}

/// Deletes the key object `opts.id` names, if at least one other full key remains.
pub fn remove(repo: &Repository, opts: &RemoveKeyOptions) -> Result<KeyEntry> {
    require_full(repo, "removing a key")?;
    let _lock = repo.acquire_singleton_lock(REMOVE_LOCK_PURPOSE).context("another key removal may be running")?;
    // Listed under the lock: a removal that finished before ours is seen.
    let (files, _) = load_all(repo)?;
    let (key, file) = resolve(&files, &opts.id)?;
    let entry = KeyEntry::new(key, file, repo.key_id());
    let other_full = files.iter().filter(|(k, f)| k != key && f.kind == KeyKind::Full).count();
    if files.len() == 1 {
        bail!("key {} is the repository's last key: removing it would make the repository unreadable", entry.short_id);
    }
    if other_full == 0 {
        bail!("key {} is the repository's last full key: without it no one can read the archived data", entry.short_id);
    }
    repo.delete::<KeyFile>(key)?;
    Ok(entry)
}

/// Rewraps the key in use under `new_password`: the new object is written
/// first, then the old one deleted. Kind and label are kept.
pub fn passwd(repo: &Repository, opts: &PasswdOptions, new_password: &Secret) -> Result<PasswdReport> {
    require_encrypted(repo)?;
    let keys = repo.keys().expect("checked: encrypted");
    let old_id = repo.key_id().ok_or_else(|| anyhow!("this handle was opened without a key object"))?;
    let old_key = KeyFile::id_key(&old_id);
    let old: KeyFile = repo.load(&old_key, None).with_context(|| format!("the key in use ({old_key})"))?;
    let new = write_key(repo, keys, keys.kind(), new_password, opts.kdf, &old.label)?;
    if new.id == old_id.to_hex() {
        bail!("the new key object has the old one's name: refusing to delete it");
    }
    repo.delete::<KeyFile>(&old_key).with_context(|| {
        format!("the new key {} is written, but the old one could not be deleted (both open the repository)", new.short_id)
    })?;
    Ok(PasswdReport { key: KeyEntry { in_use: true, ..new }, replaced: old_id.to_hex() })
}

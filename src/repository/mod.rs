//! The repository: the on-disk (or in-bucket) format over a storage backend.
//!
//! Owns object naming and encoding: `config`, packs under `data/`, index
//! objects under `index/`, snapshots under `snapshots/`, locks under `locks/`,
//! prune marks under `prune/`, upstream records under `upstream/deleted/`.
//! Every small object is a [`file::RepoFile`] saved, loaded, listed and
//! deleted by one generic method each, with one name check; packs are read
//! here too. Nothing outside this module builds a key or reaches the
//! backend, and every byte passes through `storage` (the seal/unseal seam
//! encryption will use). It knows nothing of SQLite (that is `index`) nor of images (that is
//! `archive`/`restore`). Write order that keeps crashes safe: a pack, then its
//! index object, then — once every pack of an archive is indexed — the
//! snapshot. An object is referenced only after it is durable.

pub mod config;
pub mod deletion;
pub mod drill;
pub mod extents;
pub mod file;
pub mod index_object;
pub(crate) mod keys;
pub mod lock;
pub mod marks;
pub mod pack;
pub mod scratch;
pub mod snapshot;
mod storage;
pub mod upstream;

use crate::backend::{Backend, BackendError, BackendResult};
use crate::crypto::keyfile::{KdfParams, KeyFile, NoPassword, PasswordSource, WrongPassword};
use crate::crypto::{KeyKind, KeySet};
use crate::ids::{Id, IdKey};
use crate::secret::Secret;
use anyhow::{anyhow, bail, ensure, Context, Result};
use config::Config;
use file::{Naming, RepoFile};
use index_object::{IndexObject, IndexedPack};
use pack::{PackBuilder, PackEntry};
use snapshot::{Snapshot, SnapshotHead};
use std::sync::Arc;
use storage::Storage;

pub const CONFIG_KEY: &str = "config";

/// Domain separation of [`Repository::chunking_fingerprint`].
const CHUNKING_FINGERPRINT_CONTEXT: &str = "imgarc 2026-12-01 chunking fingerprint";

/// No `config` object at the location: no repository was ever created there
/// (the binary exits 10 on it, restic's code; `init` is the one verb that expects this).
#[derive(Debug, thiserror::Error)]
#[error("no imgarc repository at {location} (create one with `imgarc init`)")]
pub struct RepositoryNotFound {
    pub location: String,
}

#[derive(Debug, Clone)]
pub struct Repository {
    storage: Storage,
    config: Config,
    /// The `config` object exactly as stored: key objects bind to its hash.
    config_bytes: Arc<Vec<u8>>,
    /// The key object that opened an encrypted repository.
    key_id: Option<Id>,
    /// Locks this handle writes under: once one is lost, every write is refused.
    held_locks: Arc<std::sync::Mutex<Vec<lock::LockWatch>>>,
}

/// The first key of a new encrypted repository (`init`).
pub struct NewKey<'a> {
    pub password: &'a Secret,
    pub kdf: KdfParams,
    pub label: &'a str,
}

/// What writing one pack added to the repository.
#[derive(Debug, Clone)]
pub struct WrittenPack {
    pub id: Id,
    pub entries: Vec<PackEntry>,
    pub index_key: String,
    /// Bytes of the pack plus its index object.
    pub stored_bytes: u64,
    pub pack_size: u64,
}

fn pack_key(id: &Id) -> String {
    let h = id.to_hex();
    format!("data/{}/{}", &h[..2], h)
}

fn pack_id_from_key(key: &str) -> Option<Id> {
    let name = key.strip_prefix("data/")?.rsplit('/').next()?;
    Id::from_hex(name)
}

impl Repository {
    /// Creates an unencrypted repository (`config.encryption` must be `none`);
    /// refuses if one (or anything else) is already there.
    pub fn init(backend: Arc<dyn Backend>, config: Config) -> Result<Repository> {
        ensure!(config.cipher().is_none(), "an encrypted repository is created with a first key (Repository::init_encrypted)");
        Repository::create(backend, config, None)
    }

    /// Creates an encrypted repository (`config.encryption` names the AEAD)
    /// with fresh master keys and one full key object wrapped under `key`.
    pub fn init_encrypted(backend: Arc<dyn Backend>, config: Config, key: &NewKey<'_>) -> Result<Repository> {
        ensure!(config.cipher().is_some(), "an unencrypted repository has no keys (Repository::init)");
        Repository::create(backend, config, Some((key, None)))
    }

    /// Creates an encrypted repository whose chunk ids and boundaries are
    /// `source`'s (`init --copy-chunker-params-from`): its master keys share
    /// `source`'s id key and chunker key ([`KeySet::sharing_chunking_with`]);
    /// the rest, its first key object and its repository id are its own.
    pub fn init_encrypted_sharing_chunking(
        backend: Arc<dyn Backend>,
        config: Config,
        source: &KeySet,
        key: &NewKey<'_>,
    ) -> Result<Repository> {
        ensure!(config.cipher().is_some(), "an unencrypted repository has no keys (Repository::init)");
        Repository::create(backend, config, Some((key, Some(source))))
    }

    /// An error unless a repository can be created at `backend`: no config and
    /// no key objects there (init asks for a password only after this).
    pub fn ensure_creatable(backend: &Arc<dyn Backend>) -> Result<()> {
        Repository::ensure_empty(&Storage::new(backend.clone()))
    }

    fn ensure_empty(storage: &Storage) -> Result<()> {
        match storage.size(CONFIG_KEY) {
            Ok(_) => bail!("a repository already exists at {}", storage.location()),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e).context("cannot reach the repository location"),
        }
        if !storage.list(KeyFile::PREFIX)?.is_empty() {
            bail!("{} already holds key objects (keys/) but no config: not an empty location", storage.location());
        }
        Ok(())
    }

    fn create(backend: Arc<dyn Backend>, config: Config, key: Option<(&NewKey<'_>, Option<&KeySet>)>) -> Result<Repository> {
        backend.set_object_lock(config.object_lock).context("cannot create an object-locked repository here")?;
        let storage = Storage::new(backend);
        Repository::ensure_empty(&storage)?;
        let bytes = serde_json::to_vec_pretty(&config)?;
        let mut repo = Repository { storage, config, config_bytes: Arc::new(bytes), key_id: None, held_locks: Default::default() };
        if let (Some((key, chunking_from)), Some(cipher)) = (key, repo.config.cipher()) {
            // The key object first: a crash before the config leaves no repository,
            // and `init` refuses the location until keys/ is emptied.
            let keys = match chunking_from {
                Some(source) => KeySet::sharing_chunking_with(source, cipher),
                None => KeySet::generate(cipher),
            };
            let file = KeyFile::create(&keys, KeyKind::Full, key.password, key.kdf, key.label, &repo.config.id, &repo.config_bytes)?;
            let (key_key, _) = repo.save(&file)?;
            repo.key_id = KeyFile::name_of(&key_key).and_then(Id::from_hex);
            repo.storage = repo.storage.with_keys(Arc::new(keys));
        }
        repo.storage.put(CONFIG_KEY, &repo.config_bytes).context("cannot write the repository config")?;
        Ok(repo)
    }

    /// Opens an unencrypted repository; an encrypted one needs [`Repository::open_with`].
    pub fn open(backend: Arc<dyn Backend>) -> Result<Repository> {
        Repository::open_with(backend, &NoPassword)
    }

    /// Opens a repository; if it is encrypted, asks `passwords` once and
    /// unwraps the first key object the password opens ([`WrongPassword`] if none).
    pub fn open_with(backend: Arc<dyn Backend>, passwords: &dyn PasswordSource) -> Result<Repository> {
        // Every access from here on, locks and marks included, keeps to the key grammar.
        let storage = Storage::new(backend.clone());
        let bytes = match storage.get_capped(CONFIG_KEY, None, config::MAX_CONFIG_BYTES) {
            Ok(b) => b,
            Err(BackendError::NotFound(_)) => return Err(RepositoryNotFound { location: storage.location() }.into()),
            Err(e) => return Err(e).context("cannot read the repository config"),
        };
        let config = Config::parse(&bytes).with_context(|| format!("repository at {}", storage.location()))?;
        if let Err(e) = backend.set_object_lock(config.object_lock) {
            tracing::warn!("the repository config asks for object lock, but {e}: new objects are written without retention");
        }
        let mut repo = Repository { storage, config, config_bytes: Arc::new(bytes), key_id: None, held_locks: Default::default() };
        if repo.config.cipher().is_some() {
            repo.unlock(passwords)?;
        }
        tracing::debug!(location = %repo.storage.location(), encryption = %repo.config.encryption, "opened the repository");
        Ok(repo)
    }

    fn unlock(&mut self, passwords: &dyn PasswordSource) -> Result<()> {
        let cipher = self.config.cipher();
        let listed = self.list::<KeyFile>()?;
        if listed.is_empty() {
            bail!("the repository at {} is encrypted but holds no key objects (keys/ is empty)", self.location());
        }
        let password = passwords.password().with_context(|| format!("cannot open the encrypted repository at {}", self.location()))?;
        for (key, size) in listed {
            let file: KeyFile = match self.load(&key, Some(size)) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("skipping key object {key}: {e:#}");
                    continue;
                }
            };
            if let Some(keys) = file.open(&password, &self.config.id, &self.config_bytes).with_context(|| format!("key object {key}"))? {
                ensure!(
                    Some(keys.cipher()) == cipher,
                    "key object {key} holds {} keys for a {} repository",
                    keys.cipher(),
                    self.config.encryption
                );
                self.key_id = KeyFile::name_of(&key).and_then(Id::from_hex);
                self.storage = self.storage.with_keys(Arc::new(keys));
                return Ok(());
            }
        }
        Err(WrongPassword { location: self.location() }.into())
    }

    /// The backend behind the key grammar, for the Object Lock calls (retention, versions).
    pub fn lock_backend(&self) -> &dyn Backend {
        self.storage.backend()
    }

    /// The unwrapped keys of an encrypted repository.
    pub fn keys(&self) -> Option<&Arc<KeySet>> {
        self.storage.keys()
    }

    /// Full or write-only; `None` for an unencrypted repository.
    pub fn key_kind(&self) -> Option<KeyKind> {
        self.keys().map(|k| k.kind())
    }

    /// The key object this handle was opened with.
    pub fn key_id(&self) -> Option<Id> {
        self.key_id
    }

    /// The `config` object exactly as stored.
    pub fn config_bytes(&self) -> &[u8] {
        &self.config_bytes
    }

    /// How chunk and tree-blob ids are computed in the repository-wide scope.
    pub fn id_key(&self) -> IdKey {
        self.keys().map(|k| k.id_key()).unwrap_or(IdKey::UNKEYED)
    }

    /// A keyed fingerprint of how this repository cuts and names chunks: its
    /// chunker parameters, hole block size, chunk id scheme, dedup scope and
    /// (encrypted) a one-way digest of its id key and chunker key. Two
    /// repositories' fingerprints are equal iff the same bytes give the same
    /// chunk boundaries and the same chunk ids in both, so `copy` can move
    /// chunks by id without re-chunking or re-hashing. It reveals no key, but
    /// it is not printed: it would tell which repositories share keys.
    pub fn chunking_fingerprint(&self) -> [u8; 32] {
        let c = &self.config;
        let mut h = blake3::Hasher::new_derive_key(CHUNKING_FINGERPRINT_CONTEXT);
        // Every field length-prefixed or fixed-width, so no two inputs encode alike.
        let chunker = serde_json::to_vec(&c.chunker).expect("chunker params serialize");
        let scope = serde_json::to_vec(&c.dedup_scope).expect("dedup scope serializes");
        for part in [&chunker[..], c.chunk_id.as_bytes(), &scope[..]] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(&c.hole_block_size.to_le_bytes());
        match self.keys() {
            Some(keys) => h.update(&[1]).update(&keys.chunking_digest()),
            None => h.update(&[0]),
        };
        *h.finalize().as_bytes()
    }

    /// An error naming the operation unless this handle can open data
    /// (unencrypted, or a full key): restore, show, check --read-data, prune.
    pub fn require_full_key(&self, operation: &str) -> Result<()> {
        if self.key_kind() == Some(KeyKind::WriteOnly) {
            bail!("{operation} needs a full key: the repository was opened with a write-only key, which cannot read archived data");
        }
        Ok(())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The bounds every pack entry read from this repository must keep.
    pub fn blob_limits(&self) -> pack::BlobLimits {
        pack::BlobLimits::from_config(&self.config)
    }

    /// Makes every later write or delete through this handle (and its clones)
    /// first check that `lock` is still held, so a long archive, sync or prune
    /// stops at its next pack, snapshot or deletion once its lock is lost.
    pub fn hold_lock(&self, lock: &lock::Lock) {
        self.held_locks.lock().expect("held locks mutex").push(lock.watch());
    }

    /// An error if a lock this handle writes under was lost.
    pub fn ensure_locks_held(&self) -> Result<()> {
        for watch in self.held_locks.lock().expect("held locks mutex").iter() {
            watch.ensure_held()?;
        }
        Ok(())
    }

    pub fn location(&self) -> String {
        self.storage.location()
    }

    // ---- Typed objects: one save/load/list/delete for every kind, one name check.

    /// Stores `obj` under the name its kind gives it; returns its key and its
    /// size as stored (the size encoded: no lookup that could fail).
    pub fn save<T: RepoFile>(&self, obj: &T) -> Result<(String, u64)> {
        if T::NEEDS_LOCK {
            self.ensure_locks_held()?;
        }
        let plain = obj.encode()?;
        let seal = |binding: &str| if T::SEALED { self.storage.seal(binding, &plain) } else { std::borrow::Cow::Borrowed(&plain[..]) };
        let (key, stored) = match T::NAMING {
            Naming::ContentId => {
                let stored = seal(T::PREFIX);
                (T::id_key(&Id::of(&stored)), stored)
            }
            Naming::Random | Naming::Own => {
                let name = match T::NAMING {
                    Naming::Random => hex::encode(rand::random::<[u8; 16]>()),
                    _ => obj.own_name().with_context(|| format!("a {} without a name", T::KIND))?,
                };
                let key = T::key(&name);
                let stored = seal(&key);
                (key, stored)
            }
        };
        self.storage.put(&key, &stored).with_context(|| format!("cannot store {} {key}", T::KIND))?;
        Ok((key, stored.len() as u64))
    }

    /// Reads, checks and decodes the object at `key`. `listed_size` is its
    /// size from a listing, when the caller has one (else the store is
    /// asked): an object larger than its kind's cap is refused unread. The
    /// name check is the same for every kind (format-spec §1): a content-named
    /// object must hash to its name, a self-named one must name itself so.
    pub fn load<T: RepoFile>(&self, key: &str, listed_size: Option<u64>) -> Result<T> {
        let name = T::name_of(key).ok_or_else(|| anyhow!("{key} is not the key of a {}", T::KIND))?;
        let stored = self.storage.get_capped(key, listed_size, T::MAX_BYTES).with_context(|| format!("{} {key}", T::KIND))?;
        let damaged = || anyhow!("{} {key} is damaged (its content does not match its name)", T::KIND);
        if T::NAMING == Naming::ContentId && Id::from_hex(name) != Some(Id::of(&stored)) {
            return Err(damaged());
        }
        let binding = if T::NAMING == Naming::ContentId { T::PREFIX } else { key };
        let bytes =
            if T::SEALED { self.storage.unseal(key, binding, stored).with_context(|| format!("{} {key}", T::KIND))? } else { stored };
        let obj = T::decode(&bytes, &self.blob_limits()).with_context(|| format!("{} {key}", T::KIND))?;
        if T::NAMING == Naming::Own && obj.own_name().as_deref() != Some(name) {
            return Err(damaged());
        }
        Ok(obj)
    }

    /// Every object of a kind: its key and its listed size.
    pub fn list<T: RepoFile>(&self) -> Result<Vec<(String, u64)>> {
        Ok(self.storage.list(T::PREFIX)?.into_iter().filter(|o| T::name_of(&o.key).is_some()).map(|o| (o.key, o.size)).collect())
    }

    /// The stored size of the object at `key`: the store's own answer, for a
    /// caller that must not conclude absence from a (possibly lagging) listing.
    pub fn stat<T: RepoFile>(&self, key: &str) -> BackendResult<u64> {
        if T::name_of(key).is_none() {
            return Err(BackendError::Other { op: "size", key: key.to_string(), message: format!("not the key of a {}", T::KIND) });
        }
        self.storage.size(key)
    }

    pub fn delete<T: RepoFile>(&self, key: &str) -> Result<()> {
        if T::NEEDS_LOCK {
            self.ensure_locks_held()?;
        }
        T::name_of(key).ok_or_else(|| anyhow!("{key} is not the key of a {}", T::KIND))?;
        self.storage.delete(key).with_context(|| format!("cannot delete {} {key}", T::KIND))?;
        Ok(())
    }

    // ---- Packs.

    /// Stores a finished pack, then the index object that lists it.
    pub fn write_pack(&self, builder: PackBuilder) -> Result<WrittenPack> {
        self.ensure_locks_held()?;
        let (id, bytes, entries) = builder.finish();
        let pack_size = bytes.len() as u64;
        self.storage.put(&pack_key(&id), &bytes).context("cannot store pack")?;
        drop(bytes);
        let index = IndexObject::new(vec![IndexedPack::new(id, pack_size, &entries)]);
        let (index_key, index_size) = self.save(&index)?;
        Ok(WrittenPack { id, entries, index_key, stored_bytes: pack_size + index_size, pack_size })
    }

    /// A whole pack, as stored.
    pub fn read_pack(&self, id: &Id) -> BackendResult<Vec<u8>> {
        self.storage.get(&pack_key(id))
    }

    /// How many requests the store serves well at once ([`crate::backend::Backend::request_parallelism`]).
    pub fn request_parallelism(&self) -> usize {
        self.storage.backend().request_parallelism()
    }

    /// `len` bytes of a pack from `offset`.
    pub fn read_pack_range(&self, id: &Id, offset: u64, len: u64) -> BackendResult<Vec<u8>> {
        self.storage.get_range(&pack_key(id), offset, len)
    }

    /// A pack's size, asked of the store itself (not a listing).
    pub fn pack_size(&self, id: &Id) -> BackendResult<u64> {
        self.storage.size(&pack_key(id))
    }

    /// Every pack with its size.
    pub fn list_packs(&self) -> Result<Vec<(Id, u64)>> {
        Ok(self.storage.list("data/")?.iter().filter_map(|o| Some((pack_id_from_key(&o.key)?, o.size))).collect())
    }

    /// Deletes a pack (`prune`, after no index object lists it).
    pub fn delete_pack(&self, id: &Id) -> Result<()> {
        self.ensure_locks_held()?;
        self.storage.delete(&pack_key(id)).with_context(|| format!("cannot delete pack {}", id.to_hex()))?;
        Ok(())
    }

    /// Reads one blob's stored bytes and decodes them (open, decompress, verify id).
    pub fn read_blob(&self, pack: &Id, entry: &PackEntry) -> Result<Vec<u8>> {
        let stored = self.read_pack_range(pack, entry.offset, entry.stored_len as u64)?;
        self.decode_blob(entry, &stored).with_context(|| format!("in pack {}", pack.short()))
    }

    /// A blob from its stored bytes: opened (encrypted repositories: needs the
    /// full key), decompressed and checked against its id.
    pub fn decode_blob(&self, entry: &PackEntry, stored: &[u8]) -> Result<Vec<u8>> {
        pack::open_blob(entry, stored, self.keys().map(|k| &**k))
    }

    /// Names, compresses and seals the blobs of one archive run. `project`:
    /// the Glance project of the image, which keys the ids when the
    /// repository's dedup scope is `project`.
    pub fn blob_writer(&self, project: Option<&str>) -> Result<pack::BlobWriter> {
        let level = self.config.compression.level;
        let Some(keys) = self.keys() else { return Ok(pack::BlobWriter::plain(level)) };
        let scope = match self.config.dedup_scope {
            config::DedupScope::Repository => "",
            config::DedupScope::Project => project.unwrap_or(""),
        };
        let id_key = if scope.is_empty() { keys.id_key() } else { keys.project_id_key(scope) };
        pack::BlobWriter::sealed(level, keys, id_key, scope)
    }

    /// An empty pack for this repository (sealed trailer when encrypted).
    pub fn pack_builder(&self) -> PackBuilder {
        PackBuilder::with_keys(self.keys().cloned())
    }

    /// Reads a pack's own trailer (two ranged reads), without its data.
    pub fn read_pack_trailer(&self, pack: &Id) -> Result<Vec<PackEntry>> {
        let len = self.pack_size(pack)?;
        if len < (pack::HEADER_LEN + pack::FOOTER_LEN) as u64 {
            bail!("pack {} is only {len} bytes: truncated", pack.short());
        }
        let footer = self.read_pack_range(pack, len - pack::FOOTER_LEN as u64, pack::FOOTER_LEN as u64)?;
        let limits = self.blob_limits();
        let (count, digest, entries_len) = pack::parse_footer(&footer, len, &limits).with_context(|| format!("pack {}", pack.short()))?;
        let entries = self.read_pack_range(pack, len - pack::FOOTER_LEN as u64 - entries_len, entries_len)?;
        pack::parse_entries(&entries, count, &digest, len, &limits, self.keys().map(|k| &**k))
            .with_context(|| format!("pack {}", pack.short()))
    }

    // ---- Index objects and snapshots, by the names their callers use.

    pub fn write_index_object(&self, index: &IndexObject) -> Result<String> {
        Ok(self.save(index)?.0)
    }

    /// Reads and validates an index object (see [`Repository::load`]).
    pub fn read_index_object(&self, key: &str, listed_size: Option<u64>) -> Result<IndexObject> {
        self.load(key, listed_size)
    }

    /// Every index object's key with its listed size.
    pub fn list_index_objects(&self) -> Result<Vec<(String, u64)>> {
        self.list::<IndexObject>()
    }

    /// Deletes an index object (`prune`, after writing its replacement).
    pub fn delete_index_object(&self, key: &str) -> Result<()> {
        self.delete::<IndexObject>(key)
    }

    /// Stores a snapshot: its JSON in an unencrypted repository (byte for byte
    /// the v1 object), else the envelope of its head and its sealed body
    /// (`snapshot::seal_envelope`). Any key kind may write one.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<Id> {
        self.ensure_locks_held().context("no snapshot stored")?;
        let bytes = match self.keys() {
            None => snap.to_bytes(),
            Some(keys) => snapshot::seal_envelope(snap, &self.metadata_hasher(), keys),
        };
        let (key, _) = self.save(&snapshot::SnapshotObject(bytes))?;
        Ok(Snapshot::name_of(&key).and_then(Id::from_hex).expect("a snapshot is named by its id"))
    }

    /// Reads a whole snapshot. In an encrypted repository its body opens with
    /// the full key only: a write-only key gets an error naming the key type.
    pub fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        let key = Snapshot::id_key(id);
        let plain = self.load::<snapshot::SnapshotObject>(&key, None)?.0;
        let Some(keys) = self.keys() else { return Snapshot::decode(&plain).with_context(|| format!("snapshot {key}")) };
        let (head, aad, body) = snapshot::open_envelope(&plain).with_context(|| format!("snapshot {key}"))?;
        let body = keys.open_blob(&aad, body).map_err(|e| match e {
            crate::crypto::CryptoError::WriteOnlyKey => {
                anyhow!("snapshot {key}: its contents are sealed for full keys, and this repository was opened with a write-only key")
            }
            e => anyhow!("snapshot {key}: its body: {e}"),
        })?;
        let snap = Snapshot::decode(&body).with_context(|| format!("snapshot {key}"))?;
        ensure!(SnapshotHead::of(&snap, &self.metadata_hasher()) == head, "snapshot {key}: its head does not describe its body");
        Ok(snap)
    }

    /// What every key reads of a snapshot: the stored head of an encrypted
    /// repository's snapshot (its body is not opened), or the head of an
    /// unencrypted one's.
    pub fn load_snapshot_head(&self, id: &Id) -> Result<SnapshotHead> {
        let key = Snapshot::id_key(id);
        let plain = self.load::<snapshot::SnapshotObject>(&key, None)?.0;
        if self.keys().is_none() {
            let snap = Snapshot::decode(&plain).with_context(|| format!("snapshot {key}"))?;
            return Ok(SnapshotHead::of(&snap, &self.metadata_hasher()));
        }
        Ok(snapshot::open_envelope(&plain).with_context(|| format!("snapshot {key}"))?.0)
    }

    /// How this repository hashes source metadata records into snapshot heads.
    pub fn metadata_hasher(&self) -> snapshot::MetadataHasher {
        snapshot::MetadataHasher::new(&self.id_key())
    }

    /// Removes a snapshot object (`forget`); its data stays until `prune`.
    pub fn delete_snapshot(&self, id: &Id) -> Result<()> {
        self.delete::<Snapshot>(&Snapshot::id_key(id))
    }

    /// A snapshot's stored size, asked of the store itself (see [`Repository::stat`]).
    pub fn stat_snapshot(&self, id: &Id) -> BackendResult<u64> {
        self.stat::<Snapshot>(&Snapshot::id_key(id))
    }

    pub fn list_snapshot_ids(&self) -> Result<Vec<Id>> {
        Ok(self.list::<Snapshot>()?.iter().filter_map(|(k, _)| Id::from_hex(Snapshot::name_of(k)?)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;

    /// Plants a sparse object of `len` bytes straight on disk.
    fn plant(root: &std::path::Path, key: &str, len: u64) {
        let path = root.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
    }

    #[test]
    fn planted_huge_metadata_objects_are_refused_by_key_without_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let spy = crate::backend::faults::Faulty::new(Arc::new(LocalBackend::new(&root)));
        let repo = Repository::init(spy.clone(), Config::new(64 << 10, 3).unwrap()).unwrap();
        const HUGE: u64 = 200 << 20;
        let lock_key = "locks/00112233445566778899aabbccddeeff";
        let snap = Id::of(b"a planted snapshot");
        let mark_key = marks::PruneMark::id_key(&Id::of(b"a planted mark"));
        let record_key = "upstream/deleted/6f1c2a3e-0000-4000-8000-000000000000";
        for key in [lock_key, &Snapshot::id_key(&snap), &mark_key, record_key] {
            plant(&root, key, HUGE);
        }

        let locks = repo.list_locks().unwrap();
        assert_eq!(locks.len(), 1);
        assert_eq!(locks[0].0, lock_key);
        assert!(locks[0].1.is_stale(), "an unreadable lock is stale, so `unlock` can remove it");
        let err = format!("{:#}", repo.load_snapshot(&snap).unwrap_err());
        assert!(err.contains(&snap.to_hex()) && err.contains("more than"), "{err}");
        let err = format!("{:#}", repo.read_mark(&mark_key).unwrap_err());
        assert!(err.contains(&mark_key) && err.contains("more than"), "{err}");
        let err = format!("{:#}", repo.deleted_upstream().unwrap_err());
        assert!(err.contains(record_key) && err.contains("more than"), "{err}");
        // Index objects may be larger, but not beyond what one may decode to.
        let index_key = format!("index/{}", Id::of(b"a planted index object").to_hex());
        plant(&root, &index_key, index_object::MAX_DECODED_LEN + 1);
        let listed = repo.list_index_objects().unwrap();
        assert_eq!(listed, vec![(index_key.clone(), index_object::MAX_DECODED_LEN + 1)]);
        for listed_size in [None, Some(listed[0].1)] {
            let err = format!("{:#}", repo.read_index_object(&index_key, listed_size).unwrap_err());
            assert!(err.contains(&index_key) && err.contains("more than"), "{err}");
        }
        plant(&root, CONFIG_KEY, HUGE);
        assert!(Repository::open(spy.clone()).is_err());
        assert!(spy.largest_read() <= config::MAX_CONFIG_BYTES, "read {} bytes", spy.largest_read());
    }

    /// Every kind is checked against its name the same way: an index object
    /// stored under another object's hash is refused like a snapshot or a
    /// mark would be, and an upstream record must name the image its key says.
    #[test]
    fn every_kind_is_refused_when_its_content_does_not_match_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let repo = Repository::init(Arc::new(LocalBackend::new(&root)), Config::new(64 << 10, 3).unwrap()).unwrap();
        let good = repo.write_index_object(&IndexObject::new(vec![])).unwrap();
        assert!(repo.read_index_object(&good, None).is_ok());
        let moved = IndexObject::id_key(&Id::of(b"another index object"));
        std::fs::copy(root.join(&good), root.join(&moved)).unwrap();
        let err = format!("{:#}", repo.read_index_object(&moved, None).unwrap_err());
        assert!(err.contains(&moved) && err.contains("does not match its name"), "{err}");

        let record = upstream::DeletedUpstream { image_id: "img-1".into(), name: "web".into(), cloud: None, detected: "x".into() };
        repo.record_deleted_upstream(&record).unwrap();
        assert_eq!(repo.deleted_upstream().unwrap(), vec![record.clone()]);
        let renamed = upstream::DeletedUpstream::key("img-2");
        std::fs::copy(root.join(upstream::DeletedUpstream::key("img-1")), root.join(&renamed)).unwrap();
        let err = format!("{:#}", repo.deleted_upstream().unwrap_err());
        assert!(err.contains(&renamed) && err.contains("does not match its name"), "{err}");
    }

    /// A key of one kind is never read as another.
    #[test]
    fn a_key_of_another_kind_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(Arc::new(LocalBackend::new(dir.path().join("repo"))), Config::new(64 << 10, 3).unwrap()).unwrap();
        let key = repo.write_index_object(&IndexObject::new(vec![])).unwrap();
        let err = format!("{:#}", repo.read_mark(&key).unwrap_err());
        assert!(err.contains("not the key of a prune mark"), "{err}");
    }
}

#[cfg(test)]
mod encrypted_tests {
    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::crypto::Cipher;
    use pack::BlobKind;

    const FAST: KdfParams = KdfParams { m_kib: 64, t: 1, p: 1 };

    fn init(root: &std::path::Path, cipher: Cipher, password: &str) -> Repository {
        let config = Config::new(64 << 10, 3).unwrap().with_encryption(Some(cipher));
        let key = NewKey { password: &Secret::new(password), kdf: FAST, label: "test" };
        Repository::init_encrypted(Arc::new(LocalBackend::new(root)), config, &key).unwrap()
    }

    /// Every file under `root`, with its bytes.
    fn files(root: &std::path::Path) -> Vec<(String, Vec<u8>)> {
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
        out
    }

    #[test]
    fn an_encrypted_repository_round_trips_and_stores_no_plaintext() {
        for cipher in Cipher::ALL {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("repo");
            let repo = init(&root, cipher, "pw");
            let secret_text = b"THE-DISTINCTIVE-GUEST-STRING ".repeat(200);
            let writer = repo.blob_writer(None).unwrap();
            let blob = writer.encode(BlobKind::Data, &secret_text);
            assert_ne!(blob.id, Id::of(&secret_text), "ids are keyed");
            let mut builder = repo.pack_builder();
            builder.add(&blob);
            builder.add(&writer.encode(BlobKind::Tree, b"a tree"));
            let written = repo.write_pack(builder).unwrap();
            let index = repo.read_index_object(&written.index_key, None).unwrap();
            assert_eq!(index.packs[0].id, written.id);

            let reopened = Repository::open_with(Arc::new(LocalBackend::new(&root)), &Secret::new("pw")).unwrap();
            let trailer = reopened.read_pack_trailer(&written.id).unwrap();
            assert_eq!(trailer, written.entries);
            assert_eq!(reopened.read_blob(&written.id, &trailer[0]).unwrap(), secret_text);
            let whole = reopened.read_pack(&written.id).unwrap();
            assert_eq!(pack::parse_pack(&whole, &reopened.blob_limits(), reopened.keys().map(|k| &**k)).unwrap(), trailer);

            let plain_id = Id::of(&secret_text).to_hex();
            for (name, bytes) in files(&root) {
                let text = String::from_utf8_lossy(&bytes);
                assert!(!text.contains("THE-DISTINCTIVE"), "{cipher}: plaintext in {name}");
                assert!(
                    !text.contains(&plain_id) && !bytes.windows(32).any(|w| w == Id::of(&secret_text).0),
                    "{cipher}: unkeyed id in {name}"
                );
            }

            let err = Repository::open_with(Arc::new(LocalBackend::new(&root)), &Secret::new("wrong")).unwrap_err();
            assert!(err.downcast_ref::<WrongPassword>().is_some(), "{err:#}");
            assert!(Repository::open(Arc::new(LocalBackend::new(&root))).is_err());
        }
    }

    #[test]
    fn objects_from_another_repository_or_changed_bytes_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (a_root, b_root) = (dir.path().join("a"), dir.path().join("b"));
        let a = init(&a_root, Cipher::Aes256Gcm, "pw");
        let b = init(&b_root, Cipher::Aes256Gcm, "pw");
        let key = a.write_index_object(&IndexObject::new(vec![])).unwrap();
        // Planted in b under the same (content) name: b's keys do not open it.
        std::fs::create_dir_all(b_root.join("index")).unwrap();
        std::fs::copy(a_root.join(&key), b_root.join(&key)).unwrap();
        let err = format!("{:#}", b.read_index_object(&key, None).unwrap_err());
        assert!(err.contains(&key) && err.contains("cannot be authenticated"), "{err}");
        // A record moved to another name is refused: its key is its associated data.
        let record = upstream::DeletedUpstream { image_id: "img-1".into(), name: "web".into(), cloud: None, detected: "x".into() };
        a.record_deleted_upstream(&record).unwrap();
        let moved = upstream::DeletedUpstream::key("img-2");
        std::fs::copy(a_root.join(upstream::DeletedUpstream::key("img-1")), a_root.join(&moved)).unwrap();
        let err = format!("{:#}", a.deleted_upstream().unwrap_err());
        assert!(err.contains(&moved) && err.contains("cannot be authenticated"), "{err}");
        // A changed config no longer matches any key object.
        let cfg = a_root.join(CONFIG_KEY);
        let text = std::fs::read_to_string(&cfg).unwrap().replace("\"level\": 3", "\"level\": 4");
        std::fs::write(&cfg, text).unwrap();
        let err = format!("{:#}", Repository::open_with(Arc::new(LocalBackend::new(&a_root)), &Secret::new("pw")).unwrap_err());
        assert!(err.contains("config was changed"), "{err}");
    }
}

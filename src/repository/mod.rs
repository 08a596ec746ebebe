//! The repository: the on-disk (or in-bucket) format over a storage backend.
//!
//! Owns object naming and encoding: `config`, packs under `data/`, index
//! objects under `index/`, snapshots under `snapshots/`, locks under `locks/`.
//! It knows nothing of SQLite (that is `index`) nor of images (that is
//! `archive`/`restore`). Write order that keeps crashes safe: a pack, then its
//! index object, then — once every pack of an archive is indexed — the
//! snapshot. An object is referenced only after it is durable.

pub mod config;
pub mod extents;
pub mod index_object;
pub mod lock;
pub mod marks;
pub mod pack;
pub mod snapshot;
pub mod upstream;

use crate::backend::{Backend, BackendError};
use crate::ids::Id;
use anyhow::{bail, Context, Result};
use config::Config;
use index_object::{IndexObject, IndexedPack};
use pack::{PackBuilder, PackEntry};
use snapshot::Snapshot;
use std::sync::Arc;

pub const CONFIG_KEY: &str = "config";

#[derive(Debug, Clone)]
pub struct Repository {
    backend: Arc<dyn Backend>,
    config: Config,
    /// Locks this handle writes under: once one is lost, every write is refused.
    held_locks: Arc<std::sync::Mutex<Vec<lock::LockWatch>>>,
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

pub fn pack_key(id: &Id) -> String {
    let h = id.to_hex();
    format!("data/{}/{}", &h[..2], h)
}

pub fn pack_id_from_key(key: &str) -> Option<Id> {
    let name = key.strip_prefix("data/")?.rsplit('/').next()?;
    Id::from_hex(name)
}

pub fn snapshot_key(id: &Id) -> String {
    format!("snapshots/{}", id.to_hex())
}

impl Repository {
    /// Creates a repository; refuses if one (or anything else) is already there.
    pub fn init(backend: Arc<dyn Backend>, config: Config) -> Result<Repository> {
        match backend.size(CONFIG_KEY) {
            Ok(_) => bail!("a repository already exists at {}", backend.location()),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e).context("cannot reach the repository location"),
        }
        let bytes = serde_json::to_vec_pretty(&config)?;
        backend.put(CONFIG_KEY, &bytes).context("cannot write the repository config")?;
        Ok(Repository { backend, config, held_locks: Default::default() })
    }

    pub fn open(backend: Arc<dyn Backend>) -> Result<Repository> {
        let bytes = match backend.get(CONFIG_KEY) {
            Ok(b) => b,
            Err(BackendError::NotFound(_)) => bail!("no imgarc repository at {} (create one with `imgarc init`)", backend.location()),
            Err(e) => return Err(e).context("cannot read the repository config"),
        };
        let config = Config::parse(&bytes).with_context(|| format!("repository at {}", backend.location()))?;
        Ok(Repository { backend, config, held_locks: Default::default() })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
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
        self.backend.location()
    }

    /// Stores a finished pack, then the index object that lists it.
    pub fn write_pack(&self, builder: PackBuilder) -> Result<WrittenPack> {
        self.ensure_locks_held()?;
        let (id, bytes, entries) = builder.finish();
        let pack_size = bytes.len() as u64;
        self.backend.put(&pack_key(&id), &bytes).context("cannot store pack")?;
        drop(bytes);
        let index = IndexObject::new(vec![IndexedPack::new(id, pack_size, &entries)]);
        // The size stored is the size encoded: no lookup that could fail (and was once read as 0).
        let (index_key, index_size) = self.put_index_object(&index)?;
        Ok(WrittenPack { id, entries, index_key, stored_bytes: pack_size + index_size, pack_size })
    }

    pub fn write_index_object(&self, index: &IndexObject) -> Result<String> {
        Ok(self.put_index_object(index)?.0)
    }

    /// Stores an index object; returns its key and its size as stored.
    fn put_index_object(&self, index: &IndexObject) -> Result<(String, u64)> {
        self.ensure_locks_held()?;
        let enc = index.encode();
        let key = format!("index/{}", Id::of(&enc).to_hex());
        self.backend.put(&key, &enc).context("cannot store index object")?;
        Ok((key, enc.len() as u64))
    }

    pub fn read_index_object(&self, key: &str) -> Result<IndexObject> {
        let bytes = self.backend.get(key)?;
        IndexObject::decode(&bytes).with_context(|| format!("index object {key}"))
    }

    /// Reads one blob's stored bytes and decodes them (decompress + verify id).
    pub fn read_blob(&self, pack: &Id, entry: &PackEntry) -> Result<Vec<u8>> {
        let stored = self.backend.get_range(&pack_key(pack), entry.offset, entry.stored_len as u64)?;
        pack::decode_blob(entry, &stored).with_context(|| format!("in pack {}", pack.short()))
    }

    /// Reads a pack's own trailer (two ranged reads), without its data.
    pub fn read_pack_trailer(&self, pack: &Id) -> Result<Vec<PackEntry>> {
        let key = pack_key(pack);
        let len = self.backend.size(&key)?;
        if len < (pack::HEADER_LEN + pack::FOOTER_LEN) as u64 {
            bail!("pack {} is only {len} bytes: truncated", pack.short());
        }
        let footer = self.backend.get_range(&key, len - pack::FOOTER_LEN as u64, pack::FOOTER_LEN as u64)?;
        let (count, digest, entries_len) = pack::parse_footer(&footer, len).with_context(|| format!("pack {}", pack.short()))?;
        let entries = self.backend.get_range(&key, len - pack::FOOTER_LEN as u64 - entries_len, entries_len)?;
        pack::parse_entries(&entries, count, &digest, len).with_context(|| format!("pack {}", pack.short()))
    }

    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<Id> {
        self.ensure_locks_held().context("no snapshot stored")?;
        let bytes = snap.to_bytes();
        let id = Snapshot::id_of(&bytes);
        self.backend.put(&snapshot_key(&id), &bytes).context("cannot store snapshot")?;
        Ok(id)
    }

    /// Deletes an index object (`prune`, after writing its replacement).
    pub fn delete_index_object(&self, key: &str) -> Result<()> {
        self.ensure_locks_held()?;
        self.backend.delete(key).with_context(|| format!("cannot delete index object {key}"))?;
        Ok(())
    }

    /// Deletes a pack (`prune`, after no index object lists it).
    pub fn delete_pack(&self, id: &Id) -> Result<()> {
        self.ensure_locks_held()?;
        self.backend.delete(&pack_key(id)).with_context(|| format!("cannot delete pack {}", id.to_hex()))?;
        Ok(())
    }

    /// Removes a snapshot object (`forget`); its data stays until `prune`.
    pub fn delete_snapshot(&self, id: &Id) -> Result<()> {
        self.ensure_locks_held()?;
        self.backend.delete(&snapshot_key(id)).with_context(|| format!("cannot remove snapshot {}", id.short()))?;
        Ok(())
    }

    pub fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        let bytes = self.backend.get(&snapshot_key(id)).with_context(|| format!("snapshot {}", id.short()))?;
        if Id::of(&bytes) != *id {
            bail!("snapshot object {} is damaged (its content does not match its name)", id.to_hex());
        }
        let snap: Snapshot = serde_json::from_slice(&bytes).with_context(|| format!("snapshot {} is malformed", id.short()))?;
        if snap.version != snapshot::SNAPSHOT_VERSION {
            bail!("snapshot {} has version {}, which this imgarc does not read", id.short(), snap.version);
        }
        Ok(snap)
    }

    pub fn list_snapshot_ids(&self) -> Result<Vec<Id>> {
        Ok(self.backend.list("snapshots/")?.iter().filter_map(|o| Id::from_hex(o.key.strip_prefix("snapshots/")?)).collect())
    }

    pub fn list_index_keys(&self) -> Result<Vec<String>> {
        Ok(self.backend.list("index/")?.into_iter().map(|o| o.key).collect())
    }

    /// Every pack with its size.
    pub fn list_packs(&self) -> Result<Vec<(Id, u64)>> {
        Ok(self.backend.list("data/")?.iter().filter_map(|o| Some((pack_id_from_key(&o.key)?, o.size))).collect())
    }
}

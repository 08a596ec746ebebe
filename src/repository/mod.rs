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
pub mod keys;
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

/// Reads a small metadata object whole, refusing one larger than `cap` (the
/// per-prefix caps of format-spec §1) before a byte of it is fetched. The
/// size comes from the listing when the caller has one, else from the store;
/// the read is a range of exactly that size, so an object that is larger than
/// it claims still costs at most `cap` bytes of memory.
pub fn read_capped(backend: &dyn Backend, key: &str, listed_size: Option<u64>, cap: u64) -> Result<Vec<u8>, BackendError> {
    let size = match listed_size {
        Some(s) => s,
        None => backend.size(key)?,
    };
    if size > cap {
        return Err(BackendError::Other {
            op: "read",
            key: key.to_string(),
            message: format!("object is {size} bytes, more than the {cap} bytes this kind of object may hold"),
        });
    }
    backend.get_range(key, 0, size)
}

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
        let backend: Arc<dyn Backend> = Arc::new(keys::CheckedKeys::new(backend));
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
        // Every access from here on, locks and marks included, keeps to the key grammar.
        let backend: Arc<dyn Backend> = Arc::new(keys::CheckedKeys::new(backend));
        let bytes = match read_capped(&*backend, CONFIG_KEY, None, config::MAX_CONFIG_BYTES) {
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

    /// The bounds every pack entry read from this repository must keep.
    pub fn blob_limits(&self) -> pack::BlobLimits {
        pack::BlobLimits::from_config(&self.config)
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

    /// Reads and validates an index object. `listed_size` is its size from a
    /// listing, when the caller has one (else the store is asked): an object
    /// larger than any index object may decode to is refused unread.
    pub fn read_index_object(&self, key: &str, listed_size: Option<u64>) -> Result<IndexObject> {
        let bytes = read_capped(&*self.backend, key, listed_size, index_object::MAX_DECODED_LEN)?;
        IndexObject::decode(&bytes, &self.blob_limits()).with_context(|| format!("index object {key}"))
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
        pack::parse_entries(&entries, count, &digest, len, &self.blob_limits()).with_context(|| format!("pack {}", pack.short()))
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
        let bytes = read_capped(&*self.backend, &snapshot_key(id), None, snapshot::MAX_SNAPSHOT_BYTES)
            .with_context(|| format!("snapshot {}", id.short()))?;
        if Id::of(&bytes) != *id {
            bail!("snapshot object {} is damaged (its content does not match its name)", id.to_hex());
        }
        Snapshot::decode(&bytes).with_context(|| format!("snapshot {}", id.short()))
    }

    pub fn list_snapshot_ids(&self) -> Result<Vec<Id>> {
        Ok(self.backend.list("snapshots/")?.iter().filter_map(|o| Id::from_hex(o.key.strip_prefix("snapshots/")?)).collect())
    }

    /// Every index object's key with its listed size.
    pub fn list_index_objects(&self) -> Result<Vec<(String, u64)>> {
        Ok(self.backend.list("index/")?.into_iter().map(|o| (o.key, o.size)).collect())
    }

    /// Every pack with its size.
    pub fn list_packs(&self) -> Result<Vec<(Id, u64)>> {
        Ok(self.backend.list("data/")?.iter().filter_map(|o| Some((pack_id_from_key(&o.key)?, o.size))).collect())
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
        let mark_key = marks::mark_key(&Id::of(b"a planted mark"));
        let record_key = "upstream/deleted/6f1c2a3e-0000-4000-8000-000000000000";
        for key in [lock_key, &snapshot_key(&snap), &mark_key, record_key] {
            plant(&root, key, HUGE);
        }

        let locks = lock::list(&**repo.backend()).unwrap();
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
}

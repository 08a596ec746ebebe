//! Snapshot objects: one archived image. A snapshot is a JSON document stored
//! at `snapshots/<id>`, where the id is the BLAKE3 of the object's bytes. In an
//! encrypted repository the object is a meta-sealed envelope of a
//! [`SnapshotHead`] (what every key reads) and the snapshot itself as a body
//! sealed to the data public key (what only a full key reads).

use super::extents::StreamRef;
use crate::ids::{Id, IdKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const SNAPSHOT_VERSION: u32 = 1;
/// Largest snapshot object a reader accepts (format-spec §1); real ones are a
/// few KiB plus the source's metadata record.
pub const MAX_SNAPSHOT_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub version: u32,
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// RFC 3339, UTC: when the archive started.
    pub time: String,
    pub hostname: String,
    pub source: Source,
    /// Length of the image file: the bytes a restore writes.
    pub logical_bytes: u64,
    /// Size of the virtual disk, where the format says so.
    #[serde(default)]
    pub virtual_bytes: Option<u64>,
    /// Detected container format: `raw`, `qcow2`, `vmdk`, … (others are stored as raw bytes).
    pub format: String,
    /// What the format parser learnt (for QCOW2: `ImageInfo` — clusters, flags, sizes).
    #[serde(default)]
    pub image: Option<serde_json::Value>,
    pub layout: Layout,
    /// The guest stream: the virtual disk as chunks and holes.
    pub guest: StreamRef,
    /// Whole-file digests of the image, algorithm → lowercase hex.
    #[serde(default)]
    pub digests: BTreeMap<String, String>,
    pub stats: SnapshotStats,
    /// Free-form metadata from the source (e.g. a Glance image record).
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Set by `imgarc copy`: the repository and snapshot this one is a copy of.
    /// Absent (and not serialized) otherwise, so older snapshots keep their bytes and ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_from: Option<CopiedFrom>,
}

/// Where a copied snapshot came from (format-spec/README.md, "copied_from"): what
/// `imgarc copy` compares to tell a snapshot already copied, also from the head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct CopiedFrom {
    /// The source repository's id (its config `id`).
    pub repository: String,
    /// The source snapshot's id (hex).
    pub snapshot: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    File {
        path: String,
    },
    Stdin,
    Glance {
        image_id: String,
        cloud: Option<String>,
    },
    /// A Cinder volume (`archive cinder:`, `sync --volumes`), or the volume snapshot
    /// `snapshot_id` of one (a disk of a volume-backed instance snapshot), read
    /// through a scratch Glance image (format-spec/snapshots.md).
    Cinder {
        volume_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot_id: Option<String>,
        cloud: Option<String>,
    },
}

/// How the image file maps onto the guest stream. A reader that meets an
/// unknown kind must refuse the snapshot rather than guess.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Layout {
    /// The file is the guest stream, byte for byte (raw images and anything
    /// stored opaquely).
    Raw,
    /// A QCOW2 file rebuilt from a recipe, the guest stream and a stream
    /// of literal bytes (format-spec/qcow2-layout.md).
    Qcow2 { recipe: StreamRef, literals: StreamRef },
    /// Any other decomposed container (VMDK, VDI, VHD, VHDX: the snapshot's `format`
    /// says which), rebuilt exactly like `qcow2` from the same kind of recipe. A kind of
    /// its own so that an imgarc that predates these formats refuses such a snapshot.
    Container { recipe: StreamRef, literals: StreamRef },
}

impl Layout {
    /// The recipe and literal streams of a decomposed container; `None` for raw.
    pub fn recipe_streams(&self) -> Option<(&StreamRef, &StreamRef)> {
        match self {
            Layout::Raw => None,
            Layout::Qcow2 { recipe, literals } | Layout::Container { recipe, literals } => Some((recipe, literals)),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SnapshotStats {
    /// Chunk references (extents) of all streams.
    pub chunks: u64,
    /// Chunks this archive stored that the repository did not hold.
    pub new_chunks: u64,
    /// Uncompressed bytes of the new chunks.
    pub new_bytes: u64,
    /// Bytes of pack and index objects this archive added to the repository.
    pub stored_bytes_added: u64,
    /// Bytes of the guest stream that are holes (all-zero blocks).
    pub hole_bytes: u64,
    pub seconds: f64,
}

impl Snapshot {
    /// Decodes a snapshot object's bytes (the caller checks them against the name).
    pub fn decode(bytes: &[u8]) -> anyhow::Result<Snapshot> {
        use anyhow::Context;
        let snap: Snapshot = serde_json::from_slice(bytes).context("snapshot is malformed")?;
        anyhow::ensure!(snap.version == SNAPSHOT_VERSION, "snapshot has version {}, which this imgarc does not read", snap.version);
        Ok(snap)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("snapshot serializes")
    }

    pub fn id_of(bytes: &[u8]) -> Id {
        Id::of(bytes)
    }

    /// Every stream the snapshot references (guest first).
    pub fn streams(&self) -> Vec<&StreamRef> {
        let mut v = vec![&self.guest];
        if let Some((recipe, literals)) = self.layout.recipe_streams() {
            v.push(recipe);
            v.push(literals);
        }
        v
    }
}

impl super::file::RepoFile for Snapshot {
    const PREFIX: &'static str = "snapshots/";
    const KIND: &'static str = "snapshot";
    const MAX_BYTES: u64 = MAX_SNAPSHOT_BYTES;
    const NAMING: super::file::Naming = super::file::Naming::ContentId;
    const NEEDS_LOCK: bool = true;

    fn encode(&self) -> anyhow::Result<Vec<u8>> {
        Ok(self.to_bytes())
    }
    fn decode(bytes: &[u8], _: &super::pack::BlobLimits) -> anyhow::Result<Self> {
        Snapshot::decode(bytes)
    }
}

/// The version of the head of an encrypted repository's snapshot object.
pub const SNAPSHOT_HEAD_VERSION: u32 = 1;
/// Domain separation of the body's associated data and of the metadata hash key.
const BODY_AAD: &[u8] = b"imgarc snapshot body\0";
const METADATA_HASH_CONTEXT: &[u8] = b"imgarc 2026-12-01 snapshot metadata hash key";

/// What every key of an encrypted repository reads of a snapshot (sealed with
/// the meta key): exactly what the index cache's row, retention and `sync`'s
/// "unchanged" decision need. The full [`Snapshot`] (streams, layout, the
/// source's metadata record) is the body, sealed to the data public key.
/// An unencrypted repository stores no head: it is derived from the snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotHead {
    pub version: u32,
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub time: String,
    pub hostname: String,
    pub source: Source,
    pub logical_bytes: u64,
    #[serde(default)]
    pub digests: BTreeMap<String, String>,
    pub stored_bytes_added: u64,
    /// The source record's `updated_at` (sync's content identity of an image without digests).
    #[serde(default)]
    pub updated_at: Option<String>,
    /// Keyed BLAKE3 (hex) of the source's metadata record with store locations
    /// removed ([`MetadataHasher`]): sync compares records by it, so a head
    /// reveals whether a record changed, not what it holds.
    pub metadata_hash: String,
    /// The fields of the source record that sync's scope and filters test
    /// (`SELECTION_FIELDS`), for judging an image that is no longer listed.
    #[serde(default)]
    pub selection: serde_json::Map<String, serde_json::Value>,
    /// The snapshot's [`Snapshot::copied_from`], readable by every key (a write-only
    /// target key still sees what was copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_from: Option<CopiedFrom>,
}

/// What [`SnapshotHead::selection`] keeps of a Glance record: its identity and
/// what `sync --project`/`--filter` select by; nothing else of the record.
pub const SELECTION_FIELDS: &[&str] = &["id", "name", "owner", "visibility", "disk_format", "tags", "status"];

/// Hashes a source metadata record for [`SnapshotHead::metadata_hash`]. Keyed
/// in an encrypted repository (key derived from the id key, which every key
/// kind holds), so a guessed record cannot be confirmed without a key;
/// unkeyed in an unencrypted one, whose snapshots are plaintext anyway.
#[derive(Clone)]
pub struct MetadataHasher(IdKey);

impl std::fmt::Debug for MetadataHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MetadataHasher({:?})", self.0)
    }
}

impl MetadataHasher {
    pub const UNKEYED: MetadataHasher = MetadataHasher(IdKey::UNKEYED);

    /// The hasher of a repository whose chunk ids are computed with `id_key`.
    pub fn new(id_key: &IdKey) -> MetadataHasher {
        // A keyed hash of a fixed context string is a key derived from the id key.
        if id_key.is_keyed() {
            MetadataHasher(IdKey::keyed(id_key.id_of(METADATA_HASH_CONTEXT).0))
        } else {
            MetadataHasher::UNKEYED
        }
    }

    /// The hash of `record` as archive stores it (store locations never are):
    /// serde_json's maps are sorted, so equal records serialize equally.
    pub fn hash(&self, record: &serde_json::Map<String, serde_json::Value>) -> String {
        let mut record = record.clone();
        crate::openstack::glance::redact_store_locations(&mut record);
        let bytes = serde_json::to_vec(&record).expect("a JSON map serializes");
        self.0.id_of(&bytes).to_hex()
    }
}

impl SnapshotHead {
    /// The head of `snap` (what an encrypted repository stores beside its body).
    pub fn of(snap: &Snapshot, hasher: &MetadataHasher) -> SnapshotHead {
        SnapshotHead {
            version: SNAPSHOT_HEAD_VERSION,
            name: snap.name.clone(),
            tags: snap.tags.clone(),
            time: snap.time.clone(),
            hostname: snap.hostname.clone(),
            source: snap.source.clone(),
            logical_bytes: snap.logical_bytes,
            digests: snap.digests.clone(),
            stored_bytes_added: snap.stats.stored_bytes_added,
            updated_at: snap.metadata.get("updated_at").and_then(|v| v.as_str()).map(str::to_string),
            metadata_hash: hasher.hash(&snap.metadata),
            selection: snap
                .metadata
                .iter()
                .filter(|(k, _)| SELECTION_FIELDS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            copied_from: snap.copied_from.clone(),
        }
    }
}

/// The plaintext (inside the meta seal) of an encrypted repository's snapshot
/// object: `head_len u32 LE ‖ head JSON ‖ body`, the body being the snapshot
/// JSON sealed to the data public key with the associated data
/// `"imgarc snapshot body\0" ‖ BLAKE3(head JSON)`, which binds it to its head.
pub(crate) fn seal_envelope(snap: &Snapshot, hasher: &MetadataHasher, keys: &crate::crypto::KeySet) -> Vec<u8> {
    let head = serde_json::to_vec(&SnapshotHead::of(snap, hasher)).expect("a snapshot head serializes");
    let body = keys.blob_sealer().seal(&body_aad(&head), &snap.to_bytes());
    let mut out = Vec::with_capacity(4 + head.len() + body.len());
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&body);
    out
}

fn body_aad(head: &[u8]) -> Vec<u8> {
    let mut aad = BODY_AAD.to_vec();
    aad.extend_from_slice(blake3::hash(head).as_bytes());
    aad
}

/// Splits an envelope into its head (decoded) and the sealed body with its associated data.
pub(crate) fn open_envelope(plain: &[u8]) -> anyhow::Result<(SnapshotHead, Vec<u8>, &[u8])> {
    use anyhow::Context;
    let len = plain.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
    let head_bytes = len.and_then(|l| plain.get(4..4 + l)).context("snapshot envelope is truncated")?;
    let head: SnapshotHead = serde_json::from_slice(head_bytes).context("snapshot head is malformed")?;
    anyhow::ensure!(head.version == SNAPSHOT_HEAD_VERSION, "snapshot head has version {}, which this imgarc does not read", head.version);
    Ok((head, body_aad(head_bytes), &plain[4 + head_bytes.len()..]))
}

/// A snapshot object's bytes as stored inside the seal (the envelope of an
/// encrypted repository, the snapshot JSON of an unencrypted one): the
/// repository decides how to read them (`Repository::load_snapshot`).
pub(crate) struct SnapshotObject(pub Vec<u8>);

impl super::file::RepoFile for SnapshotObject {
    const PREFIX: &'static str = <Snapshot as super::file::RepoFile>::PREFIX;
    const KIND: &'static str = <Snapshot as super::file::RepoFile>::KIND;
    const MAX_BYTES: u64 = MAX_SNAPSHOT_BYTES;
    const NAMING: super::file::Naming = super::file::Naming::ContentId;
    const NEEDS_LOCK: bool = true;

    fn encode(&self) -> anyhow::Result<Vec<u8>> {
        Ok(self.0.clone())
    }
    fn decode(bytes: &[u8], _: &super::pack::BlobLimits) -> anyhow::Result<Self> {
        Ok(SnapshotObject(bytes.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::crypto::keyfile::{KdfParams, KeyFile};
    use crate::crypto::{Cipher, KeyKind};
    use crate::repository::config::Config;
    use crate::repository::file::RepoFile;
    use crate::repository::{NewKey, Repository};
    use crate::secret::Secret;
    use serde_json::json;
    use std::sync::Arc;

    const FAST: KdfParams = KdfParams { m_kib: 64, t: 1, p: 1 };

    fn snapshot(name: &str, metadata: serde_json::Value) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            name: name.into(),
            tags: vec!["nightly".into()],
            time: "2026-12-01T00:00:00Z".into(),
            hostname: "h".into(),
            source: Source::Glance { image_id: "img-1".into(), cloud: None },
            logical_bytes: 10,
            virtual_bytes: Some(10),
            format: "raw".into(),
            image: None,
            layout: Layout::Raw,
            guest: StreamRef { size: 10, extent_count: 1, extents_blake3: Id::of(b"e"), trees: vec![Id::of(b"t")], data_bytes: 10 },
            digests: [("sha256".to_string(), "ab".to_string())].into(),
            stats: SnapshotStats::default(),
            metadata: metadata.as_object().unwrap().clone(),
            copied_from: None,
        }
    }

    #[test]
    fn an_unencrypted_snapshot_is_stored_byte_for_byte_as_v1() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let repo = Repository::init(Arc::new(LocalBackend::new(&root)), Config::new(64 << 10, 3).unwrap()).unwrap();
        let snap = snapshot("web", json!({"id": "img-1"}));
        let id = repo.save_snapshot(&snap).unwrap();
        assert_eq!(id, Snapshot::id_of(&snap.to_bytes()));
        assert_eq!(std::fs::read(root.join(Snapshot::id_key(&id))).unwrap(), snap.to_bytes());
        assert_eq!(repo.load_snapshot(&id).unwrap(), snap);
        assert_eq!(repo.load_snapshot_head(&id).unwrap(), SnapshotHead::of(&snap, &MetadataHasher::UNKEYED));
    }

    #[test]
    fn a_write_only_key_reads_the_head_only_and_a_body_under_another_head_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let config = Config::new(64 << 10, 3).unwrap().with_encryption(Some(Cipher::XChaCha20Poly1305));
        let full = Repository::init_encrypted(
            Arc::new(LocalBackend::new(&root)),
            config,
            &NewKey { password: &Secret::new("full"), kdf: FAST, label: "" },
        )
        .unwrap();
        let file =
            KeyFile::create(full.keys().unwrap(), KeyKind::WriteOnly, &Secret::new("wo"), FAST, "", &full.config().id, full.config_bytes())
                .unwrap();
        full.save(&file).unwrap();
        let wo = Repository::open_with(Arc::new(LocalBackend::new(&root)), &Secret::new("wo")).unwrap();

        let snap = snapshot("web", json!({"id": "img-1", "secret_property": "s3cr3t", "updated_at": "u"}));
        // Written by the write-only key, read back by the full key.
        let id = wo.save_snapshot(&snap).unwrap();
        assert_eq!(full.load_snapshot(&id).unwrap(), snap);
        let head = wo.load_snapshot_head(&id).unwrap();
        assert_eq!((head.name.as_str(), head.updated_at.as_deref(), head.logical_bytes), ("web", Some("u"), 10));
        assert_eq!(head, full.load_snapshot_head(&id).unwrap());
        assert!(!serde_json::to_string(&head).unwrap().contains("s3cr3t"), "the head holds the metadata record: {head:?}");
        assert_eq!(head.selection, *json!({"id": "img-1"}).as_object().unwrap());
        let err = format!("{:#}", wo.load_snapshot(&id).unwrap_err());
        assert!(err.contains("write-only key") && err.contains(&id.to_hex()), "{err}");

        // The body of one snapshot spliced under the head of another: refused by name.
        let other = wo.save_snapshot(&snapshot("db", json!({"id": "img-2"}))).unwrap();
        let open =
            |id: &Id| wo.keys().unwrap().open_meta(b"imgarc object\0snapshots/", &std::fs::read(root.join(Snapshot::id_key(id))).unwrap());
        let (a, b) = (open(&id).unwrap(), open(&other).unwrap());
        let head_end = |p: &[u8]| 4 + u32::from_le_bytes(p[..4].try_into().unwrap()) as usize;
        let spliced = [&b[..head_end(&b)], &a[head_end(&a)..]].concat();
        let stored = wo.keys().unwrap().seal_meta(b"imgarc object\0snapshots/", &spliced);
        let planted = Id::of(&stored);
        std::fs::write(root.join(Snapshot::id_key(&planted)), &stored).unwrap();
        let err = format!("{:#}", full.load_snapshot(&planted).unwrap_err());
        assert!(err.contains(&planted.to_hex()) && err.contains("cannot be authenticated"), "{err}");
    }

    #[test]
    fn the_metadata_hash_ignores_store_locations_and_is_keyed() {
        let keyed = MetadataHasher::new(&IdKey::keyed([7; 32]));
        let record = json!({"id": "img-1", "name": "web", "min_ram": 0});
        let with_locations = json!({"id": "img-1", "name": "web", "min_ram": 0, "locations": [{"url": "rbd://secret"}], "direct_url": "x"});
        let (r, l) = (record.as_object().unwrap(), with_locations.as_object().unwrap());
        assert_eq!(keyed.hash(r), keyed.hash(l));
        assert_ne!(keyed.hash(r), keyed.hash(json!({"id": "img-1", "name": "web", "min_ram": 1}).as_object().unwrap()));
        assert_ne!(keyed.hash(r), MetadataHasher::UNKEYED.hash(r));
        assert_ne!(keyed.hash(r), MetadataHasher::new(&IdKey::keyed([8; 32])).hash(r));
        assert!(!format!("{keyed:?}").contains('7'), "{keyed:?}");
    }
}

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
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    File { path: String },
    Stdin,
    Glance { image_id: String, cloud: Option<String> },
}

/// How the image file maps onto the guest stream. A reader that meets an
/// unknown kind must refuse the snapshot rather than guess.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Layout {
    /// The file is the guest stream, byte for byte (raw images and anything
    /// stored opaquely).
    Raw,
    /// A container format rebuilt from a recipe, the guest stream and a stream
    /// of literal bytes (format-spec/qcow2-layout.md).
    Qcow2 { recipe: StreamRef, literals: StreamRef },
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
        if let Layout::Qcow2 { recipe, literals } = &self.layout {
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
}

/// What [`SnapshotHead::selection`] keeps of a Glance record: its identity and
/// what `sync --project`/`--filter` select by; nothing else of the record.
pub const SELECTION_FIELDS: &[&str] = &["id", "name", "owner", "visibility", "disk_format", "tags", "status"];

/// Hashes a source metadata record for [`SnapshotHead::metadata_hash`]. Keyed
/// in an encrypted repository (key derived from the id key, which every key
/// kind holds), so a guessed record cannot be confirmed without a key;
/// unkeyed in an unencrypted one, whose snapshots are plaintext anyway.
#[derive(Clone)]
pub struct MetadataHasher(Option<[u8; 32]>);

impl std::fmt::Debug for MetadataHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "MetadataHasher(keyed, ***)" } else { "MetadataHasher(unkeyed)" })
    }
}

impl Drop for MetadataHasher {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        if let Some(k) = &mut self.0 {
            k.zeroize();
        }
    }
}

impl MetadataHasher {
    pub const UNKEYED: MetadataHasher = MetadataHasher(None);

    /// The hasher of a repository whose chunk ids are computed with `id_key`.
    pub fn new(id_key: &IdKey) -> MetadataHasher {
        // A keyed hash of a fixed context string is a key derived from the id key.
        if id_key.is_keyed() {
            MetadataHasher(Some(id_key.id_of(METADATA_HASH_CONTEXT).0))
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
        match &self.0 {
            None => blake3::hash(&bytes).to_hex().to_string(),
            Some(k) => blake3::keyed_hash(k, &bytes).to_hex().to_string(),
        }
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

//! The image record (`GET /v2/images/{id}`): typed fields, custom
//! properties, the raw JSON as Glance sent it, what the data must hash to,
//! and which fields name a store location (credentials) and are never kept.

use super::super::{Error, Result};
use serde_json::{Map, Value};

/// An image record (`GET /v2/images/{id}`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ImageRecord {
    pub id: String,
    pub name: Option<String>,
    pub status: String,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub size: Option<u64>,
    pub virtual_size: Option<u64>,
    /// md5 hex.
    pub checksum: Option<String>,
    /// Normally "sha512".
    pub os_hash_algo: Option<String>,
    pub os_hash_value: Option<String>,
    pub owner: Option<String>,
    pub visibility: Option<String>,
    pub protected: bool,
    pub min_disk: u64,
    pub min_ram: u64,
    pub tags: Vec<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    /// Every other field of the record (hw_*, os_*, custom properties, and
    /// Glance's own extras such as `self`, `file`, `schema`, `stores`, `os_hidden`).
    pub properties: Map<String, Value>,
    /// The whole record as Glance returned it.
    pub raw: Value,
}

const TYPED_FIELDS: &[&str] = &[
    "id",
    "name",
    "status",
    "disk_format",
    "container_format",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "owner",
    "visibility",
    "protected",
    "min_disk",
    "min_ram",
    "tags",
    "created_at",
    "updated_at",
];

impl ImageRecord {
    /// Parse a Glance image JSON object.
    pub fn from_json(raw: Value) -> Result<ImageRecord> {
        let obj = raw.as_object().ok_or_else(|| Error::Config("image record is not a JSON object".into()))?;
        let s = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let u = |k: &str| obj.get(k).and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())));
        let id = s("id").ok_or_else(|| Error::Config("image record has no id".into()))?;
        let properties = obj.iter().filter(|(k, _)| !TYPED_FIELDS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
        Ok(ImageRecord {
            id,
            name: s("name"),
            status: s("status").unwrap_or_default(),
            disk_format: s("disk_format"),
            container_format: s("container_format"),
            size: u("size"),
            virtual_size: u("virtual_size"),
            checksum: s("checksum"),
            os_hash_algo: s("os_hash_algo"),
            os_hash_value: s("os_hash_value"),
            owner: s("owner"),
            visibility: s("visibility"),
            protected: obj.get("protected").and_then(|v| v.as_bool()).unwrap_or(false),
            min_disk: u("min_disk").unwrap_or(0),
            min_ram: u("min_ram").unwrap_or(0),
            tags: obj
                .get("tags")
                .and_then(|t| t.as_array())
                .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            created_at: s("created_at"),
            updated_at: s("updated_at"),
            properties,
            raw,
        })
    }

    /// What the image data must hash to, for [`crate::digest::HashingReader::verifying`]
    /// and the archive: the record's strongest digest imgarc computes — the multihash
    /// (`os_hash_algo`/`os_hash_value`), else `checksum` (md5) — plus each other digest
    /// it vouches for that `requested` names (`--digest md5` checks `checksum` too), and
    /// `size`. One strong digest proves the bytes; hashing md5 beside it would only cost a
    /// core. A multihash in an algorithm outside [`crate::digest::Algo`] leaves md5.
    pub fn expected(&self, requested: &[crate::digest::Algo]) -> crate::digest::Expected {
        use crate::digest::Algo;
        let mut vouched = Vec::new();
        if let Some(c) = self.checksum.as_deref().filter(|c| !c.is_empty()) {
            vouched.push((Algo::Md5, c.to_ascii_lowercase()));
        }
        // An empty os_hash_value vouches for nothing (Glance leaves it empty while an image is queued).
        if let (Some(a), Some(v)) =
            (self.os_hash_algo.as_deref().and_then(Algo::parse), self.os_hash_value.as_deref().filter(|v| !v.is_empty()))
        {
            if !vouched.iter().any(|(x, _)| *x == a) {
                vouched.push((a, v.to_ascii_lowercase()));
            }
        }
        let strongest = Algo::strongest(vouched.iter().map(|(a, _)| *a));
        let digests = vouched.into_iter().filter(|(a, _)| Some(*a) == strongest || requested.contains(a)).collect();
        crate::digest::Expected {
            digests,
            size: self.size,
            what: format!("download of image {}", self.id),
            against: "the image record".into(),
        }
    }

    /// The Cinder volume snapshots a boot-from-volume instance snapshot points to, or
    /// `None` when this is not one. Nova makes such an image (`bdm_v2` "True" and a
    /// `block_device_mapping` JSON list whose entries have `source_type: snapshot` and
    /// a `snapshot_id`) with no data of its own (size 0): the disks live in Cinder.
    /// An image that has data is never one, whatever its properties say (its bytes are archivable).
    pub fn volume_backed(&self) -> Option<VolumeBacked> {
        if self.size.is_some_and(|s| s > 0) {
            return None;
        }
        let bdm_v2 = match self.properties.get("bdm_v2") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
        // Glance properties are strings: Nova stores the mapping list as a JSON text.
        let mappings = match self.properties.get("block_device_mapping") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(serde_json::from_str::<Value>(s).ok()),
            Some(v) => Some(Some(v.clone())),
        };
        let readable = match &mappings {
            Some(Some(Value::Array(a))) => Some(a.clone()),
            Some(_) => None,
            None if bdm_v2 => None,
            None => return None,
        };
        let Some(list) = readable else {
            return Some(VolumeBacked { snapshot_ids: Vec::new(), mappings: Vec::new(), unreadable: true });
        };
        if list.is_empty() && !bdm_v2 {
            return None;
        }
        let (snapshot_ids, mappings) = list
            .iter()
            .filter_map(|m| Some((m.get("snapshot_id").and_then(|v| v.as_str()).filter(|id| !id.is_empty())?, m.clone())))
            // Image properties are the image owner's text and end up in log lines: no control characters.
            .map(|(id, m)| (id.chars().map(|c| if c.is_control() { '?' } else { c }).collect::<String>(), m))
            .unzip();
        Some(VolumeBacked { snapshot_ids, mappings, unreadable: false })
    }

    /// Why this image cannot be archived, if it cannot (`None` = active with data).
    pub fn not_downloadable_reason(&self) -> Option<String> {
        if self.status != "active" {
            return Some(format!("status is {:?}, not \"active\"", self.status));
        }
        if self.size == Some(0) {
            return Some("it has no data (size 0)".into());
        }
        None
    }
}

/// What [`ImageRecord::volume_backed`] found in a boot-from-volume instance snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeBacked {
    /// The `snapshot_id`s of its block device mappings (Cinder volume snapshots).
    pub snapshot_ids: Vec<String>,
    /// The block device mapping entry of each of `snapshot_ids` (same order), as Nova wrote it.
    pub mappings: Vec<Value>,
    /// `block_device_mapping` is there but is not a JSON list.
    pub unreadable: bool,
}

impl VolumeBacked {
    /// The report's reason: which volume snapshots hold the VM's disks.
    pub fn reason(&self) -> String {
        let what = "instance snapshot of a boot-from-volume VM, its disks are not in the image";
        if self.unreadable {
            format!("{what} (block_device_mapping is not a JSON list)")
        } else if self.snapshot_ids.is_empty() {
            format!("{what} (its block device mappings name no volume snapshot)")
        } else {
            // A log line, not a dump: a mapping list of any length names at most MAX_SHOWN.
            const MAX_SHOWN: usize = 16;
            let mut shown = self.snapshot_ids.iter().take(MAX_SHOWN).cloned().collect::<Vec<_>>().join(", ");
            if self.snapshot_ids.len() > MAX_SHOWN {
                shown.push_str(&format!(" and {} more", self.snapshot_ids.len() - MAX_SHOWN));
            }
            format!("{what}: volume snapshot(s) {shown}")
        }
    }
}

/// Fields of an image record that say where and how a store holds the data:
/// `direct_url` and `locations` can carry store credentials (a Swift or S3
/// URL with its key, an RBD path with its cluster). They are dropped when a
/// record is archived, and redacted from snapshots archived before that.
pub const STORE_LOCATION_FIELDS: &[&str] = &["direct_url", "locations", "stores"];

/// Removes [`STORE_LOCATION_FIELDS`] from an image record (or the metadata of
/// a snapshot); returns how many were there. The one place this is decided:
/// archive, `show`, `report` and `restore --to-glance` all call it.
pub fn redact_store_locations(record: &mut Map<String, Value>) -> usize {
    STORE_LOCATION_FIELDS.iter().filter(|k| record.remove(**k).is_some()).count()
}

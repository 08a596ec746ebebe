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

    /// What the image data must hash to: `checksum` (md5),
    /// `os_hash_algo`/`os_hash_value` (an algorithm outside
    /// [`crate::digest::Algo`] is skipped) and `size`, for
    /// [`crate::digest::HashingReader::verifying`].
    pub fn expected(&self) -> crate::digest::Expected {
        use crate::digest::Algo;
        let mut digests = Vec::new();
        if let Some(c) = self.checksum.as_deref().filter(|c| !c.is_empty()) {
            digests.push((Algo::Md5, c.to_ascii_lowercase()));
        }
        // An empty os_hash_value vouches for nothing (Glance leaves it empty while an image is queued).
        if let (Some(a), Some(v)) =
            (self.os_hash_algo.as_deref().and_then(Algo::parse), self.os_hash_value.as_deref().filter(|v| !v.is_empty()))
        {
            if !digests.iter().any(|(x, _)| *x == a) {
                digests.push((a, v.to_ascii_lowercase()));
            }
        }
        crate::digest::Expected {
            digests,
            size: self.size,
            what: format!("download of image {}", self.id),
            against: "the image record".into(),
        }
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

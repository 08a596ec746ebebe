//! The repository `config` object: format version, chunking and compression
//! parameters and the repository id. Written once by `init`, never changed.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::chunking::{ChunkAlgorithm, ChunkerParams};
use crate::crypto::Cipher;

pub const FORMAT_VERSION: u32 = 1;

/// Default average chunk size, chosen by measurement (see format-spec/README.md,
/// "Choosing the chunk size"): nightly VM changes are scattered 4 KiB writes, so
/// small chunks dedup far better, and 64 KiB keeps the index small enough.
pub const DEFAULT_AVG_CHUNK: u32 = 64 * 1024;
pub const DEFAULT_HOLE_BLOCK: u32 = 64 * 1024;
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
pub const DEFAULT_PACK_TARGET: u64 = 32 * 1024 * 1024;
/// Bounds on `pack_target_size`: below 1 MiB packs are mostly trailer and
/// request overhead; above 1 GiB one pack no longer fits a writer's memory.
pub const PACK_TARGET_RANGE: std::ops::RangeInclusive<u64> = (1 << 20)..=(1 << 30);
/// Largest `config` object a reader accepts (format-spec §1).
pub const MAX_CONFIG_BYTES: u64 = 64 << 10;
/// zstd levels a config may name (`compression.level`).
pub const ZSTD_LEVEL_RANGE: std::ops::RangeInclusive<i32> = 1..=19;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Config {
    pub version: u32,
    /// 32 random bytes, hex: keys the local index cache.
    pub id: String,
    pub created: String,
    pub chunker: ChunkerParams,
    /// Size of the aligned blocks of the guest stream that are tested for zero.
    pub hole_block_size: u32,
    pub compression: Compression,
    /// How chunk ids are computed: `blake3` (unkeyed, unencrypted repositories)
    /// or `blake3-keyed` (keyed with the repository's id key).
    pub chunk_id: String,
    /// `none`, or the AEAD every object is sealed with: `aes-256-gcm`, `xchacha20-poly1305`.
    pub encryption: String,
    pub pack_target_size: u64,
    /// Which archives may share a chunk: the whole repository (default; absent
    /// from the config, so unencrypted configs stay byte for byte v1) or only
    /// those of one Glance project (`project`, encrypted repositories only).
    #[serde(default, skip_serializing_if = "DedupScope::is_repository")]
    pub dedup_scope: DedupScope,
    /// S3 Object Lock: every pack, index object, snapshot, key object and this
    /// config are written with a retain-until date (format-spec/object-lock.md).
    /// Absent when off, so configs without it stay byte for byte v1/v2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<crate::backend::ObjectLock>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum DedupScope {
    #[default]
    Repository,
    Project,
}

impl DedupScope {
    fn is_repository(&self) -> bool {
        *self == DedupScope::Repository
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Compression {
    /// Always `zstd` in format v1.
    pub algorithm: Zstd,
    pub level: i32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Zstd {
    Zstd,
}

impl Config {
    pub fn new(avg_chunk: u32, zstd_level: i32) -> Result<Config> {
        if !ZSTD_LEVEL_RANGE.contains(&zstd_level) {
            bail!("zstd level {zstd_level} must be between 1 and 19");
        }
        Ok(Config {
            version: FORMAT_VERSION,
            id: hex::encode(rand::random::<[u8; 32]>()),
            created: crate::util::now_rfc3339(),
            chunker: ChunkerParams::with_average(avg_chunk)?,
            hole_block_size: DEFAULT_HOLE_BLOCK,
            compression: Compression { algorithm: Zstd::Zstd, level: zstd_level },
            chunk_id: "blake3".into(),
            encryption: "none".into(),
            pack_target_size: DEFAULT_PACK_TARGET,
            dedup_scope: DedupScope::Repository,
            object_lock: None,
        })
    }

    /// The same config, encrypted with `cipher` (or not, for `None`): chunk ids follow.
    pub fn with_encryption(mut self, cipher: Option<Cipher>) -> Config {
        self.encryption = cipher.map_or("none", |c| c.name()).into();
        self.chunk_id = if cipher.is_some() { "blake3-keyed" } else { "blake3" }.into();
        self
    }

    /// The AEAD of an encrypted repository.
    pub fn cipher(&self) -> Option<Cipher> {
        Cipher::from_name(&self.encryption)
    }

    /// Decodes and validates the `config` object. Every field is checked
    /// against its range (format-spec §2), because each steers something
    /// outside the repository: `id` names the cache directory, the sizes bound
    /// allocations, the level is passed to zstd.
    pub fn parse(bytes: &[u8]) -> Result<Config> {
        // Read the version first so a newer repository gets a clear message
        // rather than a field-by-field parse error.
        let v: serde_json::Value = serde_json::from_slice(bytes).context("repository config is not valid JSON")?;
        let version = v.get("version").and_then(|x| x.as_u64()).unwrap_or(0);
        if version != FORMAT_VERSION as u64 {
            bail!("repository format version {version} is not supported (this imgarc reads version {FORMAT_VERSION})");
        }
        let c: Config = serde_json::from_value(v).context("repository config is malformed")?;
        c.validate().context("repository config is invalid")?;
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        if self.id.len() != 64 || !self.id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            bail!("field `id` must be 64 lowercase hex digits, found {:?}", self.id.chars().take(80).collect::<String>());
        }
        if crate::util::parse_rfc3339(&self.created).is_none() {
            bail!("field `created` is not an RFC 3339 time: {:?}", self.created.chars().take(80).collect::<String>());
        }
        match (self.encryption.as_str(), self.chunk_id.as_str()) {
            ("none", "blake3") => {}
            (e, "blake3-keyed") if Cipher::from_name(e).is_some() => {}
            _ => bail!(
                "repository uses encryption {:?} with chunk ids {:?}, which this imgarc does not support (none + blake3, or aes-256-gcm / xchacha20-poly1305 + blake3-keyed)",
                self.encryption.chars().take(40).collect::<String>(),
                self.chunk_id.chars().take(40).collect::<String>()
            ),
        }
        if self.dedup_scope == DedupScope::Project && self.cipher().is_none() {
            bail!("field `dedup_scope` is `project`, which needs an encrypted repository (keyed chunk ids)");
        }
        let p = ChunkerParams::with_average(self.chunker.avg_size).context("field `chunker.avg_size`")?;
        if p != self.chunker {
            bail!("field `chunker` must be min = avg/4, max = 4*avg, normalization 1 (found {:?})", self.chunker);
        }
        if self.hole_block_size == 0 || self.hole_block_size % 4096 != 0 || self.hole_block_size > 4 << 20 {
            bail!("field `hole_block_size` {} must be a multiple of 4096 between 4 KiB and 4 MiB", self.hole_block_size);
        }
        if !ZSTD_LEVEL_RANGE.contains(&self.compression.level) {
            bail!("field `compression.level` {} must be between 1 and 19", self.compression.level);
        }
        if let Some(l) = &self.object_lock {
            if l.retention_seconds == 0 || l.retention_seconds > 100 * 365 * 86_400 {
                bail!("field `object_lock.retention_seconds` {} must be between 1 s and 100 years", l.retention_seconds);
            }
        }
        if !PACK_TARGET_RANGE.contains(&self.pack_target_size) {
            bail!("field `pack_target_size` {} must be between 1 MiB and 1 GiB", self.pack_target_size);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(field: &str, value: serde_json::Value) -> Vec<u8> {
        let mut v = serde_json::to_value(Config::new(DEFAULT_AVG_CHUNK, DEFAULT_ZSTD_LEVEL).unwrap()).unwrap();
        let mut at = &mut v;
        let mut parts = field.split('.').peekable();
        while let Some(p) = parts.next() {
            if parts.peek().is_none() {
                at[p] = value.clone();
                break;
            }
            at = &mut at[p];
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn a_fresh_config_parses_back() {
        let c = Config::new(DEFAULT_AVG_CHUNK, DEFAULT_ZSTD_LEVEL).unwrap();
        assert_eq!(Config::parse(&serde_json::to_vec(&c).unwrap()).unwrap(), c);
    }

    #[test]
    fn an_object_lock_round_trips_and_its_absence_keeps_the_v1_bytes() {
        let c = Config::new(DEFAULT_AVG_CHUNK, DEFAULT_ZSTD_LEVEL).unwrap();
        assert!(!String::from_utf8(serde_json::to_vec(&c).unwrap()).unwrap().contains("object_lock"));
        let mut l = c.clone();
        l.object_lock = Some(crate::backend::ObjectLock { mode: crate::backend::LockMode::Compliance, retention_seconds: 120 });
        let bytes = serde_json::to_vec(&l).unwrap();
        assert!(String::from_utf8(bytes.clone()).unwrap().contains(r#""object_lock":{"mode":"COMPLIANCE","retention_seconds":120}"#));
        assert_eq!(Config::parse(&bytes).unwrap(), l);
        let odd = with("object_lock", serde_json::json!({"mode": "LEGAL", "retention_seconds": 60}));
        assert!(Config::parse(&odd).is_err(), "an unknown lock mode parsed");
    }

    #[test]
    fn every_field_out_of_range_is_refused_by_name() {
        let cases = [
            ("id", serde_json::json!("../../etc")),
            ("id", serde_json::json!("/tmp/abs")),
            ("id", serde_json::json!("A".repeat(64))),
            ("id", serde_json::json!("ab")),
            ("created", serde_json::json!("yesterday")),
            ("compression.level", serde_json::json!(0)),
            ("compression.level", serde_json::json!(22)),
            ("pack_target_size", serde_json::json!(0)),
            ("pack_target_size", serde_json::json!(1u64 << 40)),
            ("hole_block_size", serde_json::json!(100)),
            ("chunker.max_size", serde_json::json!(u32::MAX)),
            ("object_lock", serde_json::json!({"mode": "COMPLIANCE", "retention_seconds": 0})),
        ];
        for (field, value) in cases {
            let err = format!("{:#}", Config::parse(&with(field, value.clone())).unwrap_err());
            let name = field.split('.').next().unwrap();
            assert!(err.contains(name), "{field} = {value}: {err}");
        }
    }
}

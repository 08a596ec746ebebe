//! The repository `config` object: format version, chunking and compression
//! parameters and the repository id. Written once by `init`, never changed.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u32 = 1;

/// Default average chunk size, chosen by measurement (see format-spec/README.md,
/// "Choosing the chunk size"): nightly VM changes are scattered 4 KiB writes, so
/// small chunks dedup far better, and 64 KiB keeps the index small enough.
pub const DEFAULT_AVG_CHUNK: u32 = 64 * 1024;
pub const DEFAULT_HOLE_BLOCK: u32 = 64 * 1024;
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
pub const DEFAULT_PACK_TARGET: u64 = 32 * 1024 * 1024;

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
    /// How chunk ids are computed: `blake3` (unkeyed). A keyed variant arrives with encryption.
    pub chunk_id: String,
    /// `none`. Reserved for authenticated encryption of packs.
    pub encryption: String,
    pub pack_target_size: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ChunkerParams {
    /// Always `fastcdc-2020`.
    pub algorithm: ChunkAlgorithm,
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// FastCDC normalization level (1).
    pub normalization: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub enum ChunkAlgorithm {
    #[serde(rename = "fastcdc-2020")]
    FastCdc2020,
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

impl ChunkerParams {
    pub fn with_average(avg: u32) -> Result<ChunkerParams> {
        if !(4096..=4 * 1024 * 1024).contains(&avg) || !avg.is_power_of_two() {
            bail!("chunk size {avg} must be a power of two between 4 KiB and 4 MiB");
        }
        Ok(ChunkerParams { algorithm: ChunkAlgorithm::FastCdc2020, min_size: avg / 4, avg_size: avg, max_size: avg * 4, normalization: 1 })
    }
}

impl Config {
    pub fn new(avg_chunk: u32, zstd_level: i32) -> Result<Config> {
        if !(1..=19).contains(&zstd_level) {
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
        })
    }

    pub fn parse(bytes: &[u8]) -> Result<Config> {
        // Read the version first so a newer repository gets a clear message
        // rather than a field-by-field parse error.
        let v: serde_json::Value = serde_json::from_slice(bytes).context("repository config is not valid JSON")?;
        let version = v.get("version").and_then(|x| x.as_u64()).unwrap_or(0);
        if version != FORMAT_VERSION as u64 {
            bail!("repository format version {version} is not supported (this imgarc reads version {FORMAT_VERSION})");
        }
        let c: Config = serde_json::from_value(v).context("repository config is malformed")?;
        if c.encryption != "none" || c.chunk_id != "blake3" {
            bail!("repository uses encryption {:?} / chunk ids {:?}, which this imgarc does not support", c.encryption, c.chunk_id);
        }
        let p = ChunkerParams::with_average(c.chunker.avg_size).context("repository config has bad chunker parameters")?;
        if p != c.chunker || c.hole_block_size == 0 || c.hole_block_size % 4096 != 0 || c.hole_block_size > 4 << 20 {
            bail!("repository config has unsupported chunker or hole-block parameters");
        }
        Ok(c)
    }
}

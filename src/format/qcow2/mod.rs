//! QCOW2 support: streaming decomposition of an untrusted qcow2 stream into guest data +
//! literal stream + layout recipe ([`decompose`]), byte-exact rebuild ([`rebuild`]), the
//! recipe codec ([`decode_recipe`]), a streaming writer of clean qcow2 v3 images
//! ([`write_qcow2`]) and the safety policy ([`Policy`]).
//!
//! Layout of this module: `header` (header parsing and bounds), `policy` (the safety policy:
//! limits, and what is refused or stored opaque), `pool` (clusters waiting for their role, RAM
//! then spill file), `decompose` (the one-pass decomposer), `codec` (zlib/zstd cluster codecs matching qemu), `recipe` (recipe encoding),
//! `rebuild` (recipe → original bytes), `writer` (guest extents → new qcow2), `error`.
//! The recipe encoding and the policy table are specified in `format-spec/qcow2-layout.md`.
mod decompose;
mod error;
pub mod header;
mod policy;
mod pool;
mod writer;

pub use crate::format::codec::{deflate_qemu, zlib_version, zstd_qemu, CODEC_ZLIB, CODEC_ZSTD};
pub use crate::format::rebuild::rebuild;
pub use crate::format::recipe::{compressed_check, Recipe, Segment, FLAG_OPAQUE, RECIPE_MAGIC, RECIPE_VERSION};
pub use decompose::decompose;
pub use error::Qcow2Error;
pub use policy::{Policy, DEFAULT_MAX_SEGMENTS, DEFAULT_SPILL_LIMIT};
/// Largest encoded recipe a reader accepts (and the decomposer produces).
pub const MAX_RECIPE_BYTES: u64 = crate::format::recipe::MAX_BODY;
pub use writer::write_qcow2;

pub use crate::format::{DecomposeSink, RebuildSource};

/// What `imgarc inspect` reports about a qcow2 image (also stored with snapshots).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: String,
    pub version: u32,
    pub virtual_size: u64,
    pub cluster_size: u64,
    pub file_len: u64,
    /// (data + compressed clusters) × cluster size, from the active L1/L2 tables.
    pub allocated_bytes: u64,
    /// Non-zero guest bytes handed to the sink.
    pub guest_bytes: u64,
    pub compression_type: String,
    pub data_clusters: u64,
    pub compressed_clusters: u64,
    /// Compressed clusters whose bytes the linked codec reproduced exactly.
    pub reproducible_clusters: u64,
    /// Compressed clusters kept as literal bytes (codec mismatch).
    pub literal_compressed_clusters: u64,
    pub zero_prealloc_clusters: u64,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub data_file: Option<String>,
    pub encrypted: bool,
    pub snapshots: u32,
    pub bitmaps: u32,
    pub dirty: bool,
    pub corrupt: bool,
    pub lazy_refcounts: bool,
    pub extended_l2: bool,
    pub refcount_bits: u32,
    /// Bytes of clusters identified as metadata (header, refcount, L1, L2).
    pub metadata_bytes: u64,
    /// Non-zero bytes sent to the literal stream.
    pub literal_bytes: u64,
    pub literal_stream_bytes: u64,
    pub pending_peak_bytes: u64,
    pub spilled_bytes: u64,
    pub segments: u64,
    pub recipe_bytes: u64,
    pub opaque: Option<String>,
    pub zlib_version: String,
}

/// Result of [`decompose`].
#[derive(Debug, Clone)]
pub struct Decomposed {
    /// Encoded recipe (see format-spec/qcow2-layout.md).
    pub recipe: Vec<u8>,
    pub info: ImageInfo,
    /// Why the image was stored opaque (all or partly literal), if it was.
    pub opaque: Option<String>,
}

/// Recipe decoding alone (for `inspect` of a stored snapshot, and fuzzing).
pub fn decode_recipe(recipe: &[u8]) -> Result<Recipe, Qcow2Error> {
    Ok(Recipe::decode(recipe)?)
}

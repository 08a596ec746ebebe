//! Sources of image bytes: a local file, standard input, or a Glance image
//! (`glance:IMAGE`). A source is read once, sequentially; it says what it
//! vouches for (size, digests, declared format) so the archive can check it.

use crate::net::ratelimit::{RateLimitedReader, RateLimiter};
use crate::openstack::glance::{GlanceClient, ImageRecord};
use crate::repository::snapshot::Source;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::Read;

pub use crate::util::read_full;

pub struct OpenedSource {
    pub reader: Box<dyn Read + Send>,
    /// Length in bytes, when known before reading.
    pub size: Option<u64>,
    pub source: Source,
    /// A default snapshot name (file name without directories, or the image name).
    pub default_name: String,
    /// Digests the source vouches for (algorithm → hex): checked, and a mismatch stores nothing.
    pub expected_digests: BTreeMap<String, String>,
    /// Digests the source announces that imgarc cannot compute (e.g. `sha3_512`): not checked.
    pub unverifiable_digests: Vec<String>,
    /// The format the source declares (Glance `disk_format`).
    pub declared_format: Option<String>,
    /// Source metadata kept with the snapshot (the Glance image record).
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

pub fn open(spec: &str) -> Result<OpenedSource> {
    let plain = |reader: Box<dyn Read + Send>, size, source, default_name: String| OpenedSource {
        reader,
        size,
        source,
        default_name,
        expected_digests: BTreeMap::new(),
        unverifiable_digests: Vec::new(),
        declared_format: None,
        metadata: Default::default(),
    };
    if spec == "-" {
        return Ok(plain(Box::new(std::io::stdin()), None, Source::Stdin, "stdin".into()));
    }
    let path = std::path::Path::new(spec);
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {spec}"))?;
    let meta = file.metadata().with_context(|| format!("cannot stat {spec}"))?;
    anyhow::ensure!(!meta.is_dir(), "{spec} is a directory, not an image file");
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| spec.to_string());
    Ok(plain(Box::new(file), meta.is_file().then_some(meta.len()), Source::File { path: abs.display().to_string() }, name))
}

/// The digests of a Glance record that are checked (its [`ImageRecord::expected`]:
/// the strongest, and those of `requested` — the `--digest` names — it vouches for,
/// in imgarc's algorithm names), and the name of an `os_hash_algo` imgarc cannot
/// compute (outside [`crate::digest::SUPPORTED`]).
pub fn glance_digest_claims(rec: &ImageRecord, requested: &[String]) -> (BTreeMap<String, String>, Vec<String>) {
    let requested: Vec<crate::digest::Algo> = requested.iter().filter_map(|n| crate::digest::Algo::parse(n)).collect();
    let checked = rec.expected(&requested).digests.into_iter().map(|(algo, value)| (algo.name().to_string(), value)).collect();
    let unverifiable = match (rec.os_hash_algo.as_deref(), rec.os_hash_value.as_deref()) {
        (Some(algo), Some(value)) if !value.is_empty() && crate::digest::Algo::parse(algo).is_none() => vec![algo.to_ascii_lowercase()],
        _ => Vec::new(),
    };
    (checked, unverifiable)
}

/// Opens `GET /v2/images/{id}/file` of an active image as a stream. `digests`: the
/// `--digest` names, checked against the record too where it has them
/// ([`glance_digest_claims`]).
pub fn open_glance(
    glance: &GlanceClient,
    image: &str,
    cloud: Option<&str>,
    limit: Option<RateLimiter>,
    digests: &[String],
) -> Result<OpenedSource> {
    let rec = glance.image(image)?;
    open_glance_record(glance, &rec, cloud, limit, digests)
}

/// [`open_glance`] for a record already fetched (a listing entry): no second lookup.
pub fn open_glance_record(
    glance: &GlanceClient,
    rec: &ImageRecord,
    cloud: Option<&str>,
    limit: Option<RateLimiter>,
    digests: &[String],
) -> Result<OpenedSource> {
    if let Some(why) = rec.not_downloadable_reason() {
        anyhow::bail!("Glance image {} ({}) cannot be archived: {why}", rec.id, rec.name.as_deref().unwrap_or("unnamed"));
    }
    let download = glance.download(rec)?;
    let reader: Box<dyn Read + Send> = match limit {
        Some(l) => Box::new(RateLimitedReader::new(download, l)),
        None => Box::new(download),
    };
    let mut metadata = match &rec.raw {
        serde_json::Value::Object(m) => m.clone(),
        _ => Default::default(),
    };
    // Store locations can carry store credentials: they never reach the repository.
    crate::openstack::glance::redact_store_locations(&mut metadata);
    let (expected_digests, unverifiable_digests) = glance_digest_claims(rec, digests);
    Ok(OpenedSource {
        reader,
        size: rec.size,
        source: Source::Glance { image_id: rec.id.clone(), cloud: cloud.map(str::to_string) },
        default_name: rec.name.clone().unwrap_or_else(|| rec.id.clone()),
        expected_digests,
        unverifiable_digests,
        declared_format: rec.disk_format.clone(),
        metadata,
    })
}

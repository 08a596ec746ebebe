//! The `restore --to-glance` workflow: the metadata rules for re-creating
//! an archived image in a (possibly different) cloud, and the create →
//! upload → wait → verify → protect sequence that deletes a half-created
//! image on failure.

use super::super::{Error, Result};
use super::client::GlanceClient;
use super::images::UploadMethod;
use super::record::ImageRecord;
use serde_json::{json, Map, Value};
use std::io::Read;
use std::time::Duration;

/// Options of [`restore_image`].
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Applied over the archived metadata (`--name`, `--visibility`, `--property K=V`; `null` removes).
    pub overrides: Map<String, Value>,
    pub method: UploadMethod,
    /// Exact size of the data if known (sent as Content-Length; else chunked).
    pub size: Option<u64>,
    /// How long to wait for `active` after the upload / import.
    pub timeout: Duration,
    /// Keep the image on failure instead of deleting it (`--keep-failed`).
    pub keep_failed: bool,
    /// The data is a conversion, not the archived bytes: it is checked against
    /// what was uploaded only, never against the archived `os_hash_value`.
    pub converted: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            overrides: Map::new(),
            method: UploadMethod::Put,
            size: None,
            timeout: Duration::from_secs(1800),
            keep_failed: false,
            converted: false,
        }
    }
}

/// Result of [`restore_image`].
#[derive(Debug, Clone)]
pub struct RestoreOutcome {
    /// The new image, `active` (and `protected` again if the archive was).
    pub record: ImageRecord,
    /// Digests of the bytes uploaded (md5, sha512 and the archived os_hash_algo).
    pub uploaded: crate::digest::Digests,
    /// What the new image was verified with, e.g. "os_hash_value (sha512)".
    pub verified_with: String,
}

/// The whole `restore --to-glance` flow for one image: create it with
/// [`restore_metadata`], stream `data` (PUT or stage + glance-direct import)
/// while computing md5 + sha512 on their own threads, wait for `active`,
/// check that the new image's `os_hash_value` (sha512; else `checksum`)
/// and `size` equal those of the bytes uploaded, then re-apply
/// `protected`. On any failure the half-created image is deleted (unless
/// `keep_failed`), and the error says so.
pub fn restore_image(
    glance: &GlanceClient,
    archived: &ImageRecord,
    data: impl Read + Send + 'static,
    opts: &RestoreOptions,
) -> Result<RestoreOutcome> {
    use crate::digest::{Algo, HashingReader};
    let (meta, protect) = create_request(archived, &opts.overrides);
    let created = glance.create(&meta).map_err(|e| Error::Restore { id: None, message: format!("creating the image failed: {e}") })?;
    let id = created.id.clone();
    let fail = |what: String| -> Error {
        let fate = if opts.keep_failed {
            format!("kept the failed image {id} (keep-failed)")
        } else {
            match glance.delete(&id) {
                Ok(()) => format!("deleted the half-created image {id}"),
                Err(e) => format!("could not delete the half-created image {id}: {e}"),
            }
        };
        Error::Restore { id: Some(id.clone()), message: format!("{what}; {fate}") }
    };
    // md5 and sha512 (Glance's default), plus the archived record's os_hash_algo: a
    // target configured like the source (sha384 on FIPS clouds, with no md5) is then verifiable.
    let mut algos = vec![Algo::Md5, Algo::Sha512];
    if let Some(a) = archived.os_hash_algo.as_deref().and_then(Algo::parse).filter(|a| !algos.contains(a)) {
        algos.push(a);
    }
    let mut reader = HashingReader::new(data, &algos);
    if let Some(n) = opts.size {
        reader = reader.with_size(n);
    }
    let digests = reader.handle();
    if let Err(e) = glance.upload_with(&id, reader, opts.size, opts.method) {
        return Err(fail(format!("uploading the data of image {id} failed: {e}")));
    }
    let Some(up) = digests.get() else {
        return Err(fail("the upload ended before the data did".into()));
    };
    // unconverted, the repository must have given back the archived bytes
    if let (false, Some(a), Some(v)) =
        (opts.converted, archived.os_hash_algo.as_deref().and_then(Algo::parse), archived.os_hash_value.as_deref())
    {
        if let Some(got) = up.get(a).filter(|got| !got.eq_ignore_ascii_case(v)) {
            return Err(fail(format!("the data uploaded has {} {got}, the archived image had {v}", a.name())));
        }
    }
    let rec = match glance.wait_active(&id, opts.timeout) {
        Ok(r) => r,
        Err(e) => return Err(fail(e.to_string())),
    };
    if rec.size.is_some_and(|s| s != up.bytes) {
        return Err(fail(format!("Glance stored {} bytes, imgarc uploaded {}", rec.size.unwrap_or(0), up.bytes)));
    }
    let verified_with = match (rec.os_hash_algo.as_deref().and_then(Algo::parse), rec.os_hash_value.as_deref()) {
        (Some(a), Some(v)) if up.get(a).is_some() => {
            if up.get(a) != Some(v) {
                return Err(fail(format!(
                    "the new image's os_hash_value ({}) {v} differs from the uploaded data's {}",
                    a.name(),
                    up.get(a).unwrap_or("")
                )));
            }
            format!("os_hash_value ({})", a.name())
        }
        _ => match rec.checksum.as_deref() {
            Some(c) if Some(c) == up.get(Algo::Md5) => "checksum (md5; the target's os_hash_algo was not computed)".to_string(),
            Some(c) => {
                return Err(fail(format!(
                    "the new image's checksum {c} differs from the uploaded data's {}",
                    up.get(Algo::Md5).unwrap_or("")
                )))
            }
            None => return Err(fail("the new image has neither os_hash_value nor checksum to verify".into())),
        },
    };
    let record = if protect {
        match glance.update(&id, &[json!({"op": "replace", "path": "/protected", "value": true})]) {
            Ok(r) => r,
            Err(e) => return Err(fail(format!("setting protected=true failed: {e}"))),
        }
    } else {
        rec
    };
    Ok(RestoreOutcome { record, uploaded: up, verified_with })
}

/// The `POST /v2/images` body [`restore_image`] sends (see [`restore_metadata`]) and
/// whether the image is made `protected` once verified: it is created unprotected so
/// that a failed restore can still delete it. `restore --to-glance --dry-run` shows these.
pub fn create_request(archived: &ImageRecord, overrides: &Map<String, Value>) -> (Map<String, Value>, bool) {
    let mut meta = restore_metadata(archived, overrides);
    let protect = match meta.remove("protected") {
        Some(Value::Bool(b)) => b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => archived.protected,
    };
    (meta, protect)
}

/// Top-level fields Glance owns or forbids on create (dropped on restore).
pub const GLANCE_OWNED: &[&str] = &[
    "id",
    "status",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "size",
    "virtual_size",
    "owner",
    "created_at",
    "updated_at",
    "file",
    "schema",
    "self",
    "direct_url",
    "locations",
    "stores",
    "os_hidden",
];

/// Custom properties that only make sense in the source cloud (dropped on restore).
pub const SOURCE_CLOUD_ONLY: &[&str] = &[
    "instance_uuid",
    "owner_id",
    "owner_project_name",
    "owner_user_name",
    "user_id",
    "image_location",
    "image_state",
    "base_image_ref",
    "boot_roles",
    "kernel_id",
    "ramdisk_id",
    "block_device_mapping",
    "bdm_v2",
    "os_glance_import_task",
    "os_glance_importing_to_stores",
    "os_glance_failed_import",
    "os_glance_stage_host",
    "os_glance_hash_op_compute",
];

/// Schema attributes whose JSON type is not string (kept as they are);
/// every other property is sent as a string, as Glance requires.
const TYPED_SCHEMA: &[&str] = &["min_disk", "min_ram", "protected", "tags", "os_hidden"];

/// Metadata for re-creating an archived image in a (possibly different)
/// cloud. Starts from `record.raw`, drops [`GLANCE_OWNED`] fields, every
/// `os_glance_*` key (a namespace Glance reserves), [`SOURCE_CLOUD_ONLY`]
/// properties and `null` values; drops `protected` (so a failed restore can
/// still delete the image: set it afterwards with
/// [`GlanceClient::update`]); turns non-string custom property values into
/// strings; then applies `overrides` (a `null` override removes the key).
pub fn restore_metadata(record: &ImageRecord, overrides: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    let src = record.raw.as_object().cloned().unwrap_or_default();
    for (k, v) in src {
        if v.is_null()
            || GLANCE_OWNED.contains(&k.as_str())
            || SOURCE_CLOUD_ONLY.contains(&k.as_str())
            || k.starts_with("os_glance_")
            || k == "protected"
        {
            continue;
        }
        let v = match (&v, is_core(&k) || TYPED_SCHEMA.contains(&k.as_str())) {
            (_, true) | (Value::String(_), _) => v,
            (Value::Bool(b), false) => Value::String(b.to_string()),
            (Value::Number(n), false) => Value::String(n.to_string()),
            (other, false) => Value::String(other.to_string()),
        };
        out.insert(k, v);
    }
    for (k, v) in overrides {
        if v.is_null() {
            out.remove(k);
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

fn is_core(k: &str) -> bool {
    matches!(k, "name" | "disk_format" | "container_format" | "visibility")
}

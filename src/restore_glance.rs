//! Restore into Glance (`imgarc restore --to-glance`): the restore writes into
//! a pipe that a Glance upload reads on its own thread, with the archived
//! image metadata (plus overrides). The stream ends cleanly only once the
//! restore verified every byte it wrote; an image whose upload completed but
//! whose bytes turn out wrong is deleted (unless `keep_failed`). Its dry run
//! ([`plan_restore_to_glance`]) shows the image record it would create.

use crate::index::Index;
use crate::net::ratelimit::{RateLimitedReader, RateLimiter};
use crate::openstack::glance::{self, GlanceClient, ImageRecord, UploadMethod};
use crate::progress::SharedProgress;
use crate::repository::snapshot::Snapshot;
use crate::repository::Repository;
use crate::restore::{restore, RestoreOptions, Target};
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use std::collections::BTreeMap;

/// The `imgarc restore --to-glance` flags (each doc line is its `--help`).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct ToGlanceOptions {
    /// Cloud in clouds.yaml to restore into, with --to-glance or --to-cinder (default: the source credentials)
    #[cfg_attr(feature = "clap", arg(long))]
    pub to_cloud: Option<String>,
    /// Name of the new Glance image (--to-glance) or Cinder volume (--to-cinder) (default: the archived name)
    #[cfg_attr(feature = "clap", arg(long))]
    pub name: Option<String>,
    /// Visibility of the new Glance image (private, shared, community, public)
    #[cfg_attr(feature = "clap", arg(long, requires = "to_glance"))]
    pub visibility: Option<String>,
    /// Set an image property on the new Glance image (repeatable)
    #[cfg_attr(feature = "clap", arg(long = "property", value_name = "K=V", requires = "to_glance"))]
    pub properties: Vec<String>,
    /// Upload with a PUT of the data, or stage + glance-direct import
    #[cfg_attr(feature = "clap", arg(long, default_value = "put", value_parser = ["put", "glance-direct"], requires = "to_glance"))]
    pub method: String,
    /// Keep a half-created Glance image when the restore fails (default: delete it)
    #[cfg_attr(feature = "clap", arg(long, requires = "to_glance"))]
    pub keep_failed: bool,
    /// Show the image record that would be created (and what it would be checked against); create nothing
    #[cfg_attr(feature = "clap", arg(long, requires = "to_glance"))]
    pub dry_run: bool,
    /// Cap on the upload rate (the global `--limit-upload`).
    #[cfg_attr(feature = "clap", arg(skip))]
    pub limit_upload: Option<RateLimiter>,
    /// Image fields set by the caller over everything else (not a flag: `restore --to-cinder`
    /// names and tags its intermediate image as scratch this way; `null` removes a field).
    #[cfg_attr(feature = "clap", arg(skip))]
    pub overrides: serde_json::Map<String, serde_json::Value>,
}

impl ToGlanceOptions {
    /// The first of these flags given, if any: without `--to-glance` each is an error,
    /// not ignored (clap's `requires` does not see a defaulted bool flag as missing; and a
    /// `--dry-run` that went on to restore a file would be worse than no flag at all).
    pub fn given_flag(&self) -> Option<&'static str> {
        [
            (self.dry_run, "--dry-run"),
            (self.to_cloud.is_some(), "--to-cloud"),
            (self.name.is_some(), "--name"),
            (self.visibility.is_some(), "--visibility"),
            (!self.properties.is_empty(), "--property"),
            (self.keep_failed, "--keep-failed"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }
}

/// The new image and what was verified.
#[derive(Debug, Clone, Serialize)]
pub struct GlanceRestoreReport {
    pub image_id: String,
    pub name: Option<String>,
    pub status: String,
    pub bytes: u64,
    pub seconds: f64,
    pub verified_with: String,
    pub os_hash_value: Option<String>,
    pub digests: BTreeMap<String, String>,
    /// The restore's warnings (each also logged as it happened).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The Glance `disk_format` of a conversion's `--disk-format`: imgarc's names are Glance's
/// (`vhd` is Glance's name for qemu's `vpc`), so this only refuses what Glance has no name for.
pub fn glance_disk_format(restore_disk_format: &str) -> Result<&'static str> {
    crate::restore::CONVERSION_FORMATS
        .iter()
        .copied()
        .find(|f| f.eq_ignore_ascii_case(restore_disk_format))
        .ok_or_else(|| anyhow!("--disk-format {restore_disk_format:?}: Glance stores {}", crate::restore::CONVERSION_FORMATS.join(", ")))
}

/// The Glance record to restore from: the archived one, or one made from the snapshot. A
/// conversion (`disk_format` given) is a bare disk image of that format: `disk_format` set to
/// match (Glance's upload inspection compares it with the bytes), `container_format` bare (the
/// only container Glance inspects), and VMware's `vmware_disktype` set for a VMDK (Nova's
/// VMware driver reads it: `streamOptimized` or `sparse`) and dropped for any other format.
fn archived_record(snap: &Snapshot, disk_format: Option<&str>, subformat: Option<&str>) -> Result<ImageRecord> {
    let mut metadata = snap.metadata.clone();
    // Older snapshots may hold store locations (with credentials): never sent to a cloud.
    glance::redact_store_locations(&mut metadata);
    let mut raw = serde_json::Value::Object(metadata);
    if snap.metadata.is_empty() {
        raw = serde_json::json!({"id": "", "name": snap.name, "status": "active", "container_format": "bare", "disk_format": snap.format});
    }
    if let Some(f) = disk_format {
        let f = glance_disk_format(f)?;
        raw["disk_format"] = f.into();
        raw["container_format"] = "bare".into();
        if let Some(m) = raw.as_object_mut() {
            m.remove("vmware_disktype");
            if f == "vmdk" {
                let sparse = subformat.is_some_and(|s| s.eq_ignore_ascii_case("monolithicSparse"));
                m.insert("vmware_disktype".into(), if sparse { "sparse" } else { "streamOptimized" }.into());
            }
        }
    }
    Ok(ImageRecord::from_json(raw)?)
}

/// What `restore --to-glance --dry-run` shows: the image a restore would create
/// and what its upload would be checked against. Nothing is created.
#[derive(Debug, Clone, Serialize)]
pub struct GlanceRestorePlan {
    pub dry_run: bool,
    pub snapshot: String,
    /// The target: the clouds.yaml cloud (`None`: `OS_*` or `--glance-url`) and its Glance endpoint.
    pub cloud: Option<String>,
    pub glance_url: String,
    /// `put` or `glance-direct`.
    pub method: String,
    /// The `POST /v2/images` body: name, disk_format, container_format, visibility, min_disk, min_ram, properties.
    pub image: serde_json::Map<String, serde_json::Value>,
    /// Set once the upload is verified (the image is created unprotected so a failure can delete it).
    pub protected: bool,
    /// Bytes the upload sends and Glance must store; `None` when converted (`--disk-format`), known only after.
    pub size: Option<u64>,
    /// The archived digests the uploaded bytes must match (empty when converted: then only
    /// Glance's digests of what was uploaded are compared).
    pub expected_digests: BTreeMap<String, String>,
    /// The format the data is converted to (`--disk-format`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub converted_to: Option<String>,
    /// The `--subformat` of that conversion (`None`: the writer's default — vmdk
    /// streamOptimized, vdi/vhd/vhdx dynamic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subformat: Option<String>,
    /// Images of that name already in the target (a restore adds another one, it replaces none).
    pub existing_images: Vec<String>,
    /// What may make the target refuse the upload.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Why Glance may refuse a conversion's upload, known before it starts: its upload inspection
/// (oslo.utils' VHD inspector reads only offset 0) sees a fixed VHD, whose only footer is at
/// the end, as raw, and with `require_image_format_match` (on by default) refuses it as `vhd`.
fn upload_warnings(restore_opts: &RestoreOptions) -> Vec<String> {
    let fixed = restore_opts.subformat.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("fixed"));
    match restore_opts.disk_format.as_deref() {
        Some("vhd") if fixed => {
            vec!["Glance's upload inspection sees a fixed VHD (footer at the end only) as raw and, with require_image_format_match \
             (its default), refuses it as vhd: use the dynamic default, or --disk-format raw"
                .to_string()]
        }
        _ => Vec::new(),
    }
}

/// The archived record to create from and the upload's options (shared by the restore and its dry run).
fn restore_request(
    snap: &Snapshot,
    restore_opts: &RestoreOptions,
    opts: &ToGlanceOptions,
) -> Result<(ImageRecord, glance::RestoreOptions)> {
    let archived = archived_record(snap, restore_opts.disk_format.as_deref(), restore_opts.subformat.as_deref())?;
    let mut overrides = serde_json::Map::new();
    if let Some(n) = &opts.name {
        overrides.insert("name".into(), n.clone().into());
    }
    if let Some(v) = &opts.visibility {
        overrides.insert("visibility".into(), v.clone().into());
    }
    for p in &opts.properties {
        let (k, v) = p.split_once('=').ok_or_else(|| anyhow!("--property {p:?}: expected K=V"))?;
        overrides.insert(k.to_string(), v.to_string().into());
    }
    for (k, v) in &opts.overrides {
        overrides.insert(k.clone(), v.clone());
    }
    let method = if opts.method == "glance-direct" { UploadMethod::GlanceDirect } else { UploadMethod::Put };
    let glance_opts = glance::RestoreOptions {
        overrides,
        method,
        size: restore_opts.disk_format.is_none().then_some(snap.logical_bytes),
        converted: restore_opts.disk_format.is_some(),
        keep_failed: opts.keep_failed,
        ..Default::default()
    };
    Ok((archived, glance_opts))
}

/// `restore --to-glance --dry-run`: the image [`restore_to_glance`] would create in
/// `glance` (`cloud` is the name it was resolved from). Reads the target's image
/// list for the name; creates, uploads and changes nothing.
pub fn plan_restore_to_glance(
    snap: &Snapshot,
    snapshot_id: &str,
    glance: &GlanceClient,
    cloud: Option<String>,
    restore_opts: &RestoreOptions,
    opts: &ToGlanceOptions,
) -> Result<GlanceRestorePlan> {
    let (archived, glance_opts) = restore_request(snap, restore_opts, opts)?;
    let (image, protected) = glance::create_request(&archived, &glance_opts.overrides);
    let mut expected_digests = BTreeMap::new();
    if !glance_opts.converted {
        expected_digests.extend(snap.digests.iter().map(|(k, v)| (k.clone(), v.to_ascii_lowercase())));
        if let (Some(a), Some(v)) = (archived.os_hash_algo.as_deref(), archived.os_hash_value.as_deref().filter(|v| !v.is_empty())) {
            expected_digests.entry(a.to_ascii_lowercase()).or_insert_with(|| v.to_ascii_lowercase());
        }
    }
    let existing_images = match image.get("name").and_then(|n| n.as_str()) {
        Some(name) => glance.list_filtered(&[("name", name)], 100)?.into_iter().map(|r| r.id).collect(),
        None => Vec::new(),
    };
    Ok(GlanceRestorePlan {
        dry_run: true,
        snapshot: snapshot_id.to_string(),
        cloud,
        glance_url: glance.endpoint().to_string(),
        method: opts.method.clone(),
        image,
        protected,
        size: glance_opts.size,
        expected_digests,
        converted_to: restore_opts.disk_format.clone(),
        subformat: restore_opts.subformat.clone(),
        existing_images,
        warnings: upload_warnings(restore_opts),
    })
}

/// Restores `snap` into a new image of `glance`.
pub fn restore_to_glance(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    glance: &GlanceClient,
    restore_opts: &RestoreOptions,
    opts: &ToGlanceOptions,
    progress: &SharedProgress,
) -> Result<GlanceRestoreReport> {
    repo.require_full_key("restore")?;
    let (archived, glance_opts) = restore_request(snap, restore_opts, opts)?;
    // The restore writes into a pipe; the upload reads it on its own thread. The
    // stream ends cleanly only once the restore verified every byte it wrote.
    let (writer, reader) = crate::util::pipe(16);
    let end = writer.end_handle();
    let limiter = opts.limit_upload.clone();
    let started = std::time::Instant::now();
    let uploader = glance.clone();
    let upload = std::thread::Builder::new().name("glance-upload".into()).spawn(move || {
        let data: Box<dyn std::io::Read + Send> = match limiter {
            Some(l) => Box::new(RateLimitedReader::new(reader, l)),
            None => Box::new(reader),
        };
        glance::restore_image(&uploader, &archived, data, &glance_opts)
    })?;
    let restored = restore(repo, index, snap, Target::Stream(Box::new(writer)), restore_opts, progress);
    match &restored {
        Ok(_) => end.finish(),
        Err(e) => end.fail(format!("the restore failed: {e:#}")),
    }
    let uploaded = upload.join().map_err(|_| anyhow!("upload thread panicked"))?;
    let (restored, outcome) = match (restored, uploaded) {
        (Ok(r), Ok(o)) => (r, o),
        (Ok(_), Err(e)) => return Err(e.into()),
        // The upload saw the restore's error and already deleted (or kept) the image.
        (Err(restore_err), Err(upload_err)) => bail!("{restore_err:#}; {upload_err}"),
        (Err(e), Ok(o)) => {
            // Unreachable through the pipe (it withholds the end of a failed stream); never leave it active.
            let fate = discard_failed(glance, opts, &o.record.id);
            bail!("{e:#}; {fate}")
        }
    };
    // With no conversion, the bytes uploaded are the archived ones: their digests must agree.
    if restore_opts.disk_format.is_none() {
        if let (Some(want), Some(got)) = (snap.digests.get("sha512"), outcome.uploaded.get(crate::digest::Algo::Sha512)) {
            if want != got {
                let fate = discard_failed(glance, opts, &outcome.record.id);
                bail!("uploaded sha512 {got} differs from the archived {want}; {fate}");
            }
        }
    }
    Ok(GlanceRestoreReport {
        image_id: outcome.record.id,
        name: outcome.record.name,
        status: outcome.record.status,
        bytes: restored.bytes,
        seconds: started.elapsed().as_secs_f64(),
        verified_with: outcome.verified_with,
        os_hash_value: outcome.record.os_hash_value,
        digests: restored.digests,
        warnings: restored.warnings,
    })
}

/// Deletes an image whose restore failed after its upload completed, unless `keep_failed`.
fn discard_failed(glance: &GlanceClient, opts: &ToGlanceOptions, id: &str) -> String {
    if opts.keep_failed {
        return format!("kept the failed image {id} (keep-failed)");
    }
    match glance.delete(id) {
        Ok(()) => format!("deleted the incomplete image {id}"),
        Err(e) => format!("could not delete the incomplete image {id}: {e:#}"),
    }
}

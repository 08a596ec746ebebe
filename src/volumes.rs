//! Archiving Cinder volumes: the volume → scratch Glance image workflow, and the
//! snapshot metadata that records the volume (format-spec/snapshots.md, source kind
//! `cinder`).
//!
//! * An available volume is uploaded (`os-volume_upload_image`, QCOW2) into a
//!   scratch image.
//! * An in-use volume is snapshotted (`force`), a scratch volume is made from
//!   the snapshot, and that volume is uploaded: the attached volume is never
//!   touched beyond the snapshot.
//! * A Cinder volume snapshot (a disk of a volume-backed instance snapshot) gets
//!   a scratch volume, which is uploaded.
//!
//! Every scratch resource is reserved in a [`ScratchSet`] before it is created,
//! so a killed run's leftovers are found by [`crate::scratch::cleanup`]. The
//! scratch image is then read exactly as `archive glance:` reads an image
//! ([`crate::source::open_glance_record`]: its digests are verified).

use crate::archive::{archive_opened, ArchiveOptions, SourceArchiveReport};
use crate::index::Index;
use crate::openstack::cinder::{CinderClient, NewVolume, Volume, VolumeSnapshot, ERROR_STATUSES};
use crate::openstack::glance::GlanceClient;
use crate::progress::SharedProgress;
use crate::repository::scratch::ScratchKind;
use crate::repository::snapshot::Source;
use crate::repository::Repository;
use crate::scratch::{ScratchName, ScratchSet, SCRATCH_TAG};
use crate::source::OpenedSource;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The snapshot-metadata key of the volume's Cinder record (format-spec/snapshots.md).
pub const VOLUME_KEY: &str = "cinder_volume";
/// The snapshot-metadata key of the Cinder volume snapshot a disk was read from.
pub const SNAPSHOT_KEY: &str = "cinder_snapshot";
/// The snapshot-metadata key of the block device mapping entry of a volume-backed instance snapshot.
pub const BDM_KEY: &str = "block_device_mapping";
/// The snapshot-metadata key of the instance snapshot image (`id`, `name`) a disk belongs to.
pub const INSTANCE_IMAGE_KEY: &str = "instance_snapshot_image";
/// The snapshot-metadata key of the scratch Glance image's record (store locations removed).
pub const SCRATCH_IMAGE_KEY: &str = "scratch_image";

/// The volume fields a snapshot records (the rest of Cinder's record is per-cloud noise).
const VOLUME_FIELDS: &[&str] = &[
    "id",
    "name",
    "size",
    "status",
    "volume_type",
    "bootable",
    "volume_image_metadata",
    "description",
    "availability_zone",
    "attachments",
    "metadata",
    "multiattach",
    "encrypted",
    "created_at",
];

/// What to read.
#[derive(Debug, Clone)]
pub enum VolumeTarget {
    /// A volume, available or in-use.
    Volume(Volume),
    /// A Cinder volume snapshot: a disk of a volume-backed instance snapshot.
    Snapshot {
        snapshot: VolumeSnapshot,
        /// The block device mapping entry that names it.
        bdm: Option<Value>,
        /// The instance snapshot image: id and name.
        instance_image: Option<(String, Option<String>)>,
    },
}

impl VolumeTarget {
    /// How a message names it.
    pub fn describe(&self) -> String {
        match self {
            VolumeTarget::Volume(v) => match &v.name {
                Some(n) => format!("volume {n} ({})", v.id),
                None => format!("volume {}", v.id),
            },
            VolumeTarget::Snapshot { snapshot, .. } => format!("volume snapshot {} of volume {}", snapshot.id, snapshot.volume_id),
        }
    }
}

/// Options of [`open_volume`].
#[derive(Debug, Clone)]
pub struct VolumeReadOptions {
    /// The `--os-cloud` name recorded in the snapshot's source.
    pub cloud: Option<String>,
    /// Cap on the download rate of the scratch image.
    pub limit_download: Option<crate::net::ratelimit::RateLimiter>,
    /// How long each Cinder/Glance step (snapshot, volume, upload) may take.
    pub timeout: Duration,
    /// The `--digest` names: checked against the scratch image's record too where it has
    /// them (its strongest digest always is). [`VolumeArchiver::archive`] sets them from its `opts`.
    pub digests: Vec<String>,
}

impl Default for VolumeReadOptions {
    fn default() -> Self {
        VolumeReadOptions { cloud: None, limit_download: None, timeout: Duration::from_secs(3600), digests: Vec::new() }
    }
}

/// One scratch resource a read made (deleted when its [`ScratchSet`] finishes).
#[derive(Debug, Clone, Serialize)]
pub struct ScratchUsed {
    pub kind: ScratchKind,
    pub name: String,
    pub id: String,
}

/// Creates the scratch resources that put `target`'s bytes into a scratch Glance image,
/// and opens that image as a source. The resources stay until `scratch` finishes: call
/// [`ScratchSet::finish`] after the archive, well or not. `used` gets each resource made
/// (also when this fails half-way).
pub fn open_volume(
    glance: &GlanceClient,
    cinder: &CinderClient,
    scratch: &mut ScratchSet<'_>,
    target: &VolumeTarget,
    opts: &VolumeReadOptions,
    used: &mut Vec<ScratchUsed>,
) -> Result<OpenedSource> {
    let what = target.describe();
    open_inner(glance, cinder, scratch, target, opts, used).with_context(|| format!("cannot archive {what}"))
}

fn open_inner(
    glance: &GlanceClient,
    cinder: &CinderClient,
    scratch: &mut ScratchSet<'_>,
    target: &VolumeTarget,
    opts: &VolumeReadOptions,
    used: &mut Vec<ScratchUsed>,
) -> Result<OpenedSource> {
    // The volume to upload, and whether it is the user's own (waited on, never deleted).
    let (upload_from, volume_record): (Volume, Option<Volume>) = match target {
        VolumeTarget::Volume(v) => {
            // Fresh state: the listing may be old.
            let v = cinder.get_volume(&v.id)?;
            match v.status.as_str() {
                "available" => (v.clone(), Some(v)),
                "in-use" => {
                    let snap = scratch_snapshot(cinder, scratch, &v, opts, used)?;
                    let clone = scratch_volume(cinder, scratch, &snap, opts, used)?;
                    (clone, Some(v))
                }
                s if ERROR_STATUSES.contains(&s) => bail!("the volume is in status {s:?}: it cannot be read"),
                s => bail!("the volume is in status {s:?}, neither \"available\" nor \"in-use\": try again when it is"),
            }
        }
        VolumeTarget::Snapshot { snapshot, .. } => {
            let snap = cinder.get_snapshot(&snapshot.id)?;
            if snap.status != "available" {
                bail!("the volume snapshot is in status {:?}, not \"available\"", snap.status);
            }
            let clone = scratch_volume(cinder, scratch, &snap, opts, used)?;
            // The snapshot's volume may be gone: its record is kept when it is there.
            (clone, cinder.get_volume(&snap.volume_id).ok())
        }
    };
    let image = scratch.reserve(ScratchKind::Image, "upload")?;
    let image_id = cinder
        .upload_to_image(&upload_from.id, &image.name, "qcow2", false)
        .with_context(|| format!("upload of volume {} to the scratch image {}", upload_from.id, image.name))?;
    scratch.created(&image, &image_id);
    used.push(ScratchUsed { kind: ScratchKind::Image, name: image.name.clone(), id: image_id.clone() });
    crate::util::crash_point("volume-scratch-image-created");
    // Cinder cannot tag the image it creates: tagged now, so a leftover is recognisable in Glance.
    if let Err(e) = glance.update(&image_id, &[json!({"op": "replace", "path": "/tags", "value": [SCRATCH_TAG]})]) {
        tracing::warn!("could not tag the scratch image {}: {e}", image.name);
    }
    // The uploaded volume (the user's available one, or a scratch clone) is back to
    // "available" when Cinder has written the image.
    cinder
        .wait_volume(&upload_from.id, &["available"], opts.timeout)
        .with_context(|| format!("waiting for the upload of volume {} to the scratch image {}", upload_from.id, image.name))?;
    let rec = glance.wait_active(&image_id, opts.timeout).with_context(|| format!("the scratch image {} ({image_id})", image.name))?;
    let mut src = crate::source::open_glance_record(glance, &rec, opts.cloud.as_deref(), opts.limit_download.clone(), &opts.digests)?;
    let scratch_record = std::mem::take(&mut src.metadata);
    src.metadata = snapshot_metadata(target, volume_record.as_ref(), scratch_record);
    let (volume_id, snapshot_id) = match target {
        VolumeTarget::Volume(v) => (v.id.clone(), None),
        VolumeTarget::Snapshot { snapshot, .. } => (snapshot.volume_id.clone(), Some(snapshot.id.clone())),
    };
    src.source = Source::Cinder { volume_id, snapshot_id, cloud: opts.cloud.clone() };
    src.default_name = default_name(target, volume_record.as_ref());
    Ok(src)
}

fn scratch_snapshot(
    cinder: &CinderClient,
    scratch: &mut ScratchSet<'_>,
    volume: &Volume,
    opts: &VolumeReadOptions,
    used: &mut Vec<ScratchUsed>,
) -> Result<VolumeSnapshot> {
    let name: ScratchName = scratch.reserve(ScratchKind::Snapshot, "snap")?;
    let snap = cinder
        .create_snapshot(&volume.id, &name.name, true, &name.cinder_metadata())
        .with_context(|| format!("creating the scratch snapshot {} of the in-use volume", name.name))?;
    scratch.created(&name, &snap.id);
    used.push(ScratchUsed { kind: ScratchKind::Snapshot, name: name.name.clone(), id: snap.id.clone() });
    crate::util::crash_point("volume-scratch-snapshot-created");
    cinder.wait_snapshot(&snap.id, &["available"], opts.timeout).with_context(|| format!("the scratch snapshot {}", name.name))
}

fn scratch_volume(
    cinder: &CinderClient,
    scratch: &mut ScratchSet<'_>,
    snap: &VolumeSnapshot,
    opts: &VolumeReadOptions,
    used: &mut Vec<ScratchUsed>,
) -> Result<Volume> {
    let name = scratch.reserve(ScratchKind::Volume, "clone")?;
    let req = NewVolume {
        name: name.name.clone(),
        size: snap.size,
        snapshot_id: Some(snap.id.clone()),
        metadata: name.cinder_metadata(),
        ..Default::default()
    };
    let vol = cinder.create_volume(&req).with_context(|| format!("creating the scratch volume {} from snapshot {}", name.name, snap.id))?;
    scratch.created(&name, &vol.id);
    used.push(ScratchUsed { kind: ScratchKind::Volume, name: name.name.clone(), id: vol.id.clone() });
    crate::util::crash_point("volume-scratch-volume-created");
    cinder.wait_volume(&vol.id, &["available"], opts.timeout).with_context(|| format!("the scratch volume {}", name.name))
}

/// The recorded fields of a Cinder volume record.
pub fn volume_fields(v: &Volume) -> Map<String, Value> {
    let mut m = Map::new();
    for k in VOLUME_FIELDS {
        if let Some(val) = v.raw.get(*k) {
            m.insert((*k).into(), val.clone());
        }
    }
    // Normalised: Cinder sends "true"/"false".
    m.insert("bootable".into(), Value::Bool(v.bootable));
    m
}

/// The snapshot metadata of a volume read through the scratch image `scratch_image`
/// (its Glance record, store locations already removed).
fn snapshot_metadata(target: &VolumeTarget, volume: Option<&Volume>, scratch_image: Map<String, Value>) -> Map<String, Value> {
    let mut m = Map::new();
    // The project the bytes belong to (dedup scope `project`, `report --project`): the
    // volume's, which is the scratch image's owner (the same project made it).
    if let Some(owner) = scratch_image.get("owner") {
        m.insert("owner".into(), owner.clone());
    }
    if let Some(v) = volume {
        m.insert(VOLUME_KEY.into(), Value::Object(volume_fields(v)));
    }
    if let VolumeTarget::Snapshot { snapshot, bdm, instance_image } = target {
        let mut s = Map::new();
        for k in ["id", "name", "volume_id", "size", "description", "metadata", "created_at"] {
            if let Some(val) = snapshot.raw.get(k) {
                s.insert(k.into(), val.clone());
            }
        }
        m.insert(SNAPSHOT_KEY.into(), Value::Object(s));
        if let Some(b) = bdm {
            m.insert(BDM_KEY.into(), b.clone());
        }
        if let Some((id, name)) = instance_image {
            m.insert(INSTANCE_IMAGE_KEY.into(), json!({ "id": id, "name": name }));
        }
    }
    m.insert(SCRATCH_IMAGE_KEY.into(), Value::Object(scratch_image));
    m
}

fn default_name(target: &VolumeTarget, volume: Option<&Volume>) -> String {
    match target {
        VolumeTarget::Volume(v) => v.display_name().to_string(),
        VolumeTarget::Snapshot { snapshot, bdm, instance_image } => {
            let image = instance_image.as_ref().map(|(id, name)| name.clone().unwrap_or_else(|| id.clone()));
            let device =
                bdm.as_ref().and_then(|b| b.get("device_name")).and_then(|d| d.as_str()).map(|d| d.trim_start_matches("/dev/").to_string());
            match (image, device) {
                (Some(i), Some(d)) => format!("{i}-{d}"),
                (Some(i), None) => format!("{i}-{}", snapshot.id),
                _ => volume.map(|v| v.display_name().to_string()).unwrap_or_else(|| snapshot.id.clone()),
            }
        }
    }
}

/// One volume archived: the archive's report, and the scratch resources it used.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeArchiveReport {
    #[serde(flatten)]
    pub archive: SourceArchiveReport,
    /// The volume read (`id`, `name`, `status` when it was read).
    pub volume: Value,
    /// The scratch resources made (all deleted unless a warning says otherwise).
    pub scratch: Vec<ScratchUsed>,
}

/// The clients and run identity [`archive_volume`] works with.
pub struct VolumeArchiver<'a> {
    pub repo: &'a Repository,
    pub glance: &'a GlanceClient,
    pub cinder: &'a CinderClient,
    /// The run's lock lease ([`crate::repository::lock::Lock::lease`]).
    pub lease: String,
}

impl VolumeArchiver<'_> {
    /// Archives `target` through scratch resources, then deletes them (their failures become
    /// warnings of the report; when the archive fails, they are logged and the error returned).
    /// `opts.name` etc. are the `archive` flags; `opts.source` is not read.
    pub fn archive(
        &self,
        index: &mut Index,
        target: &VolumeTarget,
        opts: &ArchiveOptions,
        read: &VolumeReadOptions,
        bar: &dyn Fn(Option<u64>) -> SharedProgress,
    ) -> Result<VolumeArchiveReport> {
        let read = &VolumeReadOptions { digests: opts.digests()?, ..read.clone() };
        let purpose = format!("archive {}", target.describe());
        let mut scratch = ScratchSet::new(self.repo, self.glance, Some(self.cinder), self.lease.clone(), read.cloud.as_deref(), &purpose);
        let mut used = Vec::new();
        let result = open_volume(self.glance, self.cinder, &mut scratch, target, read, &mut used)
            .and_then(|src| archive_opened(self.repo, index, opts, src, true, bar));
        let problems = scratch.finish();
        match result {
            Ok(mut archive) => {
                archive.warnings.extend(problems);
                let volume = match target {
                    VolumeTarget::Volume(v) => json!({ "id": v.id, "name": v.name, "status": v.status }),
                    VolumeTarget::Snapshot { snapshot, .. } => {
                        json!({ "id": snapshot.volume_id, "snapshot_id": snapshot.id, "status": snapshot.status })
                    }
                };
                Ok(VolumeArchiveReport { archive, volume, scratch: used })
            }
            Err(e) => {
                for p in problems {
                    tracing::warn!("{p}");
                }
                Err(e)
            }
        }
    }
}

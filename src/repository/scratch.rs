//! Scratch records: `scratch/<id>`, written before imgarc creates a temporary
//! cloud resource (a Glance image, a Cinder volume or volume snapshot) and
//! deleted once that resource is gone, so the leftovers of a killed run are
//! found and deleted by the next run or by `imgarc cleanup` (`crate::scratch`).
//!
//! One record per resource, JSON ([`ScratchRecord`]), named by the BLAKE3 of
//! its stored bytes and sealed with the meta key like every small object. A
//! record names the resource by its unique name (`imgarc-scratch-…`): the id is
//! not known until the resource exists, and a record written after creation
//! could be lost with the process. It names the cloud (Keystone URL, project,
//! service endpoint) so that only a host talking to that same cloud acts on
//! it, and the lock lease of the run that wrote it, so that nothing is deleted
//! while that run still holds its lock (format-spec/scratch.md).

use super::file::{Naming, RepoFile};
use super::Repository;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "scratch/";
pub const SCRATCH_VERSION: u32 = 1;
/// A reader refuses a larger record unread.
pub const MAX_SCRATCH_BYTES: u64 = 64 << 10;

/// What kind of cloud resource a record stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScratchKind {
    /// A Glance image (an upload of a volume, or the image a volume is restored from).
    Image,
    /// A Cinder volume (a clone of an in-use volume's snapshot, or of an instance snapshot's).
    Volume,
    /// A Cinder volume snapshot (of an in-use volume).
    Snapshot,
}

impl ScratchKind {
    pub fn name(self) -> &'static str {
        match self {
            ScratchKind::Image => "image",
            ScratchKind::Volume => "volume",
            ScratchKind::Snapshot => "volume snapshot",
        }
    }
}

/// A temporary cloud resource imgarc is about to create (format-spec/scratch.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScratchRecord {
    pub version: u32,
    pub kind: ScratchKind,
    /// The resource's name: `imgarc-scratch-<16 hex>-<what>`, unique, what cleanup looks it up by.
    pub name: String,
    /// Why it was made, for people: "archive cinder:<volume id>".
    pub purpose: String,
    /// The `--os-cloud` name of the run, if any (for messages only).
    #[serde(default)]
    pub cloud: Option<String>,
    /// The Keystone v3 URL and project of the run's credentials (`None` without Keystone).
    #[serde(default)]
    pub auth_url: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    /// The service endpoint the resource is created at (Glance root or Cinder `…/v3/<project>`).
    pub endpoint: String,
    /// The lock lease of the run that made it: while a live lock has this lease, the run goes on.
    #[serde(default)]
    pub lease: Option<String>,
    pub host: String,
    pub pid: u32,
    /// RFC 3339.
    pub created: String,
}

impl ScratchRecord {
    pub fn decode(bytes: &[u8]) -> Result<ScratchRecord> {
        let rec: ScratchRecord = serde_json::from_slice(bytes).context("scratch record is malformed")?;
        if rec.version != SCRATCH_VERSION {
            bail!("scratch record has version {}, which this imgarc does not read", rec.version);
        }
        if !crate::scratch::is_scratch_name(&rec.name) {
            bail!("scratch record names {:?}, which is not an imgarc scratch name; it is not acted on", rec.name);
        }
        Ok(rec)
    }
}

impl RepoFile for ScratchRecord {
    const PREFIX: &'static str = PREFIX;
    const KIND: &'static str = "scratch record";
    const MAX_BYTES: u64 = MAX_SCRATCH_BYTES;
    const NAMING: Naming = Naming::ContentId;
    /// Written and deleted under the run's lock (or cleanup's).
    const NEEDS_LOCK: bool = true;

    fn encode(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec_pretty(self)?)
    }
    fn decode(bytes: &[u8], _: &super::pack::BlobLimits) -> Result<Self> {
        ScratchRecord::decode(bytes)
    }
}

impl Repository {
    /// Stores a scratch record; returns its name (the id hex).
    pub fn save_scratch_record(&self, record: &ScratchRecord) -> Result<String> {
        let (key, _) = self.save(record).context("cannot store the scratch record")?;
        Ok(ScratchRecord::name_of(&key).unwrap_or_default().to_string())
    }

    /// Every scratch record: its name and listed size.
    pub fn list_scratch_records(&self) -> Result<Vec<(String, u64)>> {
        Ok(self.list::<ScratchRecord>()?.into_iter().filter_map(|(k, s)| Some((ScratchRecord::name_of(&k)?.to_string(), s))).collect())
    }

    pub fn load_scratch_record(&self, name: &str, listed_size: Option<u64>) -> Result<ScratchRecord> {
        self.load(&ScratchRecord::key(name), listed_size)
    }

    pub fn delete_scratch_record(&self, name: &str) -> Result<()> {
        self.delete::<ScratchRecord>(&ScratchRecord::key(name))
    }
}

//! Drill records: `drills/<id>`, the proof that a snapshot restored (and
//! booted) when `imgarc drill` last tried it.
//!
//! One record per drill of one snapshot, JSON ([`DrillRecord`]), named by the
//! BLAKE3 of its stored bytes and sealed with the meta key like every small
//! object, so every host sees every drill and a forged or damaged record is
//! refused by name. A record names its snapshot by id; prune deletes the
//! records of snapshots that no longer exist. Records are never rewritten: a
//! new drill is a new record, and "the last drill" of a snapshot is the one
//! with the latest `started` (format-spec/drills.md).

use super::file::{Naming, RepoFile};
use super::Repository;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "drills/";
pub const DRILL_VERSION: u32 = 1;
/// Largest record a reader accepts (format-spec §1): a record holds at most
/// [`MAX_CONSOLE_TAIL`] of console and short check details; real ones are a few KiB.
pub const MAX_DRILL_BYTES: u64 = 1 << 20;
/// The most console bytes a record keeps (its last ones).
pub const MAX_CONSOLE_TAIL: usize = 4096;

/// One drill of one snapshot. Also the `--json` document of each drill.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillRecord {
    pub version: u32,
    /// The snapshot drilled (64 hex digits).
    pub snapshot: String,
    /// The snapshot's name.
    pub name: String,
    /// The Glance image id the snapshot was archived from, if any.
    #[serde(default)]
    pub image: Option<String>,
    /// The Glance project (owner) of that image, if recorded.
    #[serde(default)]
    pub project: Option<String>,
    /// RFC 3339, UTC: when the drill of this snapshot started.
    pub started: String,
    /// The host that ran it.
    pub host: String,
    /// The imgarc version that ran it.
    pub imgarc_version: String,
    /// Every check that ran, in order.
    pub checks: Vec<DrillCheck>,
    /// True when every check passed or was unchecked.
    pub ok: bool,
    /// Wall time of the whole drill of this snapshot: the recovery time it shows.
    pub seconds: f64,
    /// Time from starting the VM to the expected console line, when `--boot` ran.
    #[serde(default)]
    pub boot_seconds: Option<f64>,
    /// The console's last bytes (at most [`MAX_CONSOLE_TAIL`]), when `--boot` ran.
    #[serde(default)]
    pub console_tail: Option<String>,
    /// Why the drill failed: the first failed check's detail.
    #[serde(default)]
    pub error: Option<String>,
}

/// One check of a drill.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillCheck {
    /// What was checked: `rebuild`, `partitions`, `filesystem p1`, `files p1`, `boot`, `glance`.
    pub check: String,
    pub status: CheckStatus,
    /// What was found (counts, digests verified) or why it failed / was not checked.
    #[serde(default)]
    pub detail: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Passed,
    Failed,
    /// imgarc cannot check it (a swap partition, NTFS, …): not a failure.
    Unchecked,
    /// The check could not be carried out (no qemu, the Glance unreachable): proves nothing
    /// either way; the drill is not ok.
    Error,
}

impl DrillRecord {
    pub fn decode(bytes: &[u8]) -> Result<DrillRecord> {
        let rec: DrillRecord = serde_json::from_slice(bytes).context("drill record is malformed")?;
        if rec.version != DRILL_VERSION {
            bail!("drill record has version {}, which this imgarc does not read", rec.version);
        }
        if crate::ids::Id::from_hex(&rec.snapshot).is_none() {
            bail!("drill record names no snapshot id ({:?})", rec.snapshot);
        }
        Ok(rec)
    }

    /// When the drill started, or `None` when `started` is not RFC 3339 (such a
    /// record is not used: format-spec/drills.md, "Reading").
    pub fn started_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        crate::util::parse_rfc3339(&self.started)
    }

    /// The snapshot drilled, as an id ([`DrillRecord::decode`] checked it is one).
    pub fn snapshot_id(&self) -> Option<crate::ids::Id> {
        crate::ids::Id::from_hex(&self.snapshot)
    }
}

impl RepoFile for DrillRecord {
    const PREFIX: &'static str = PREFIX;
    const KIND: &'static str = "drill record";
    const MAX_BYTES: u64 = MAX_DRILL_BYTES;
    const NAMING: Naming = Naming::ContentId;
    /// Written under the drill's shared lock, deleted under prune's exclusive one.
    const NEEDS_LOCK: bool = true;

    fn encode(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec_pretty(self)?)
    }
    fn decode(bytes: &[u8], _: &super::pack::BlobLimits) -> Result<Self> {
        DrillRecord::decode(bytes)
    }
}

impl Repository {
    /// Stores a drill record; returns its name (the id hex).
    pub fn save_drill_record(&self, record: &DrillRecord) -> Result<String> {
        let (key, _) = self.save(record).context("cannot store the drill record")?;
        Ok(DrillRecord::name_of(&key).unwrap_or_default().to_string())
    }

    /// Every drill record: its name and listed size.
    pub fn list_drill_records(&self) -> Result<Vec<(String, u64)>> {
        Ok(self.list::<DrillRecord>()?.into_iter().filter_map(|(k, s)| Some((DrillRecord::name_of(&k)?.to_string(), s))).collect())
    }

    pub fn load_drill_record(&self, name: &str, listed_size: Option<u64>) -> Result<DrillRecord> {
        self.load(&DrillRecord::key(name), listed_size)
    }

    /// The stored size of a drill record: the store's own answer, for a cache
    /// that must not conclude from a (possibly lagging) listing that it is gone.
    pub fn stat_drill_record(&self, name: &str) -> crate::backend::BackendResult<u64> {
        self.stat::<DrillRecord>(&DrillRecord::key(name))
    }

    pub fn delete_drill_record(&self, name: &str) -> Result<()> {
        self.delete::<DrillRecord>(&DrillRecord::key(name))
    }
}

//! The cache's copy of the repository's drill records (`drills/`), so that
//! `report` and `drill --sample` need no request per record. The rows are
//! filled by the catch-up (`catchup.rs`: new records loaded and checked, rows
//! of deleted ones dropped) and by [`Index::add_drill_record`] for a record
//! this host just stored.

use super::{id_of, Index};
use crate::ids::Id;
use crate::repository::drill::DrillRecord;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;

/// One cached drill record.
#[derive(Debug, Clone)]
pub struct DrillRow {
    /// The record's name (its id, hex).
    pub name: String,
    pub snapshot: Id,
    pub record: DrillRecord,
}

impl Index {
    /// Every cached drill record, oldest `started` first (ties by name, so the
    /// order is the same on every host).
    pub fn drill_rows(&self) -> Result<Vec<DrillRow>> {
        let mut st = self.conn.prepare("SELECT name, snapshot, record FROM drills ORDER BY started_micros, name")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, id_of(r.get(1)?)?, r.get::<_, String>(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, snapshot, json) = row?;
            let record: DrillRecord = serde_json::from_str(&json).with_context(|| format!("cached drill record {name} is malformed"))?;
            out.push(DrillRow { name, snapshot, record });
        }
        Ok(out)
    }

    /// Caches a record this host just stored (the next sync would find it too).
    /// A record without a snapshot id or an RFC 3339 `started` is refused: no
    /// reader uses one (format-spec/drills.md).
    pub fn add_drill_record(&mut self, name: &str, record: &DrillRecord) -> Result<()> {
        let Some(snapshot) = record.snapshot_id() else { bail!("drill record {name} names no snapshot id ({:?})", record.snapshot) };
        let Some(started) = record.started_at() else { bail!("drill record {name} has no RFC 3339 start time ({:?})", record.started) };
        self.conn.execute(
            "INSERT OR REPLACE INTO drills(name, snapshot, started, started_micros, ok, record) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![name, &snapshot.0[..], record.started, started.timestamp_micros(), record.ok, serde_json::to_string(record)?],
        )?;
        Ok(())
    }

    /// Names of the cached drill records.
    pub(super) fn drill_names(&self) -> Result<HashSet<String>> {
        let mut st = self.conn.prepare("SELECT name FROM drills")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Drops the row of a record that is gone from the repository.
    pub fn remove_drill_record(&mut self, name: &str) -> Result<()> {
        self.conn.execute("DELETE FROM drills WHERE name = ?1", [name])?;
        Ok(())
    }
}

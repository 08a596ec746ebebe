//! The cache's copy of the repository's drill records (`drills/`), so that
//! `report` and `drill --sample` need no request per record.

use super::Index;
use crate::ids::Id;
use crate::repository::drill::DrillRecord;
use anyhow::Result;

/// One cached drill record.
#[derive(Debug, Clone)]
pub struct DrillRow {
    /// The record's name (its id, hex).
    pub name: String,
    pub snapshot: Id,
    pub record: DrillRecord,
}

impl Index {
    /// Every cached drill record, oldest `started` first.
    pub fn drill_rows(&self) -> Result<Vec<DrillRow>> {
        // Seam: the cache table and its catch-up come next.
        Ok(Vec::new())
    }

    /// Caches a record this host just stored (the next sync would find it too).
    pub fn add_drill_record(&mut self, name: &str, record: &DrillRecord) -> Result<()> {
        let _ = (name, record);
        Ok(())
    }
}

//! Snapshot rows of the cache: adding one counts a reference for every blob
//! it uses, removing one uncounts them from its stored reference list. A row
//! always holds the snapshot's head; its whole snapshot and references only
//! when this cache's key could read them (see `schema`).

use super::{id_of, Index};
use crate::ids::Id;
use crate::repository::snapshot::{Snapshot, SnapshotHead};
use anyhow::{bail, Context, Result};
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use std::collections::HashSet;

#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotRow {
    pub id: Id,
    pub name: String,
    pub time: String,
    pub logical_bytes: u64,
    pub stored_bytes_added: u64,
    pub tags: Vec<String>,
}

impl Index {
    /// Adds a snapshot and counts one reference for each distinct blob it uses.
    /// Idempotent: a snapshot already present changes nothing.
    pub fn add_snapshot(&mut self, id: &Id, head: &SnapshotHead, snap: &Snapshot, referenced: &HashSet<Id>) -> Result<()> {
        self.insert_snapshot(id, head, Some(snap), Some(referenced))
    }

    /// Adds a snapshot of which only the head is readable (a write-only key):
    /// a row without references (`refs_known = 0`).
    pub fn add_snapshot_head(&mut self, id: &Id, head: &SnapshotHead) -> Result<()> {
        self.insert_snapshot(id, head, None, None)
    }

    /// Adds a snapshot whose extent lists were not read yet (a catch-up for
    /// `list` or `restore`, `Depth::Snapshots`): a row with the whole snapshot
    /// and `refs_known = 0`, until [`Index::complete_references`] counts them.
    pub fn add_snapshot_unreferenced(&mut self, id: &Id, head: &SnapshotHead, snap: &Snapshot) -> Result<()> {
        self.insert_snapshot(id, head, Some(snap), None)
    }

    fn insert_snapshot(&mut self, id: &Id, head: &SnapshotHead, snap: Option<&Snapshot>, referenced: Option<&HashSet<Id>>) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO snapshots(id, name, time, logical_bytes, stored_bytes_added, tags, json, head, refs_known) \
             VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                &id.0[..],
                head.name,
                head.time,
                head.logical_bytes as i64,
                head.stored_bytes_added as i64,
                serde_json::to_string(&head.tags)?,
                snap.map(serde_json::to_string).transpose()?,
                serde_json::to_string(head)?,
                referenced.is_some()
            ],
        )?;
        if inserted == 1 {
            count_references(&tx, tx.last_insert_rowid(), referenced.unwrap_or(&HashSet::new()))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Counts the references of a row added without them
    /// ([`Index::add_snapshot_unreferenced`]) and marks it `refs_known`;
    /// returns false (and changes nothing) when there is no such row.
    pub fn complete_references(&mut self, id: &Id, referenced: &HashSet<Id>) -> Result<bool> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seq: Option<i64> = tx
            .query_row("SELECT seq FROM snapshots WHERE id = ?1 AND refs_known = 0 AND json IS NOT NULL", [&id.0[..]], |r| r.get(0))
            .optional()?;
        let Some(seq) = seq else { return Ok(false) };
        count_references(&tx, seq, referenced)?;
        tx.execute("UPDATE snapshots SET refs_known = 1 WHERE seq = ?1", [seq])?;
        tx.commit()?;
        Ok(true)
    }

    /// Rows added without their references whose snapshot this cache holds
    /// (what [`Index::complete_references`] can complete), with that snapshot.
    pub fn snapshots_to_complete(&self) -> Result<Vec<(Id, Snapshot)>> {
        let mut st = self.conn.prepare("SELECT id, json FROM snapshots WHERE refs_known = 0 AND json IS NOT NULL ORDER BY seq")?;
        let rows = st.query_map([], |r| Ok((id_of(r.get(0)?)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, json) = row?;
            out.push((id, serde_json::from_str(&json).with_context(|| format!("cached snapshot {} is malformed", id.short()))?));
        }
        Ok(out)
    }

    /// Removes a snapshot row and its references (one gone from the repository,
    /// or one the caller just deleted there). Reads nothing from the
    /// repository: the references come from `snapshot_refs`, because the trees
    /// that list them may already have been pruned.
    pub fn remove_snapshot(&mut self, id: &Id) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seq: Option<i64> = tx.query_row("SELECT seq FROM snapshots WHERE id = ?1", [&id.0[..]], |r| r.get(0)).optional()?;
        if let Some(seq) = seq {
            let ids: Vec<u8> = tx
                .query_row("SELECT ids FROM snapshot_refs WHERE seq = ?1", [seq], |r| r.get(0))
                .optional()?
                .with_context(|| format!("index cache: snapshot {} has no reference list; run `imgarc index rebuild`", id.short()))?;
            if ids.len() % 32 != 0 {
                bail!("index cache: the reference list of snapshot {} is damaged; run `imgarc index rebuild`", id.short());
            }
            tx.execute("DELETE FROM snapshots WHERE seq = ?1", [seq])?;
            tx.execute("DELETE FROM snapshot_refs WHERE seq = ?1", [seq])?;
            Index::drop_catalog(&tx, id)?;
            let mut st = tx.prepare("UPDATE refs SET count = count - 1, owner = (owner | ?2) & ~(owner & ?2) WHERE id = ?1")?;
            // Stored sorted: the `refs` B-tree is walked in order.
            for r in ids.chunks_exact(32) {
                st.execute(params![r, seq])?;
            }
            drop(st);
            tx.execute("DELETE FROM refs WHERE count <= 0", [])?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn snapshot_rows(&self) -> Result<Vec<SnapshotRow>> {
        let mut st =
            self.conn.prepare("SELECT id, name, time, logical_bytes, stored_bytes_added, tags FROM snapshots ORDER BY time, id")?;
        let rows = st.query_map([], |r| {
            Ok(SnapshotRow {
                id: id_of(r.get(0)?)?,
                name: r.get(1)?,
                time: r.get(2)?,
                logical_bytes: r.get::<_, i64>(3)? as u64,
                stored_bytes_added: r.get::<_, i64>(4)? as u64,
                tags: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The whole snapshot, if the row has it: `None` both for an unknown id
    /// and for a row of which this cache's key reads only the head.
    pub fn snapshot(&self, id: &Id) -> Result<Option<Snapshot>> {
        let json: Option<Option<String>> =
            self.conn.query_row("SELECT json FROM snapshots WHERE id = ?1", [&id.0[..]], |r| r.get(0)).optional()?;
        json.flatten().map(|j| serde_json::from_str(&j).context("cached snapshot is malformed")).transpose()
    }

    /// A snapshot's head (every row has one).
    pub fn snapshot_head(&self, id: &Id) -> Result<Option<SnapshotHead>> {
        let json: Option<String> = self.conn.query_row("SELECT head FROM snapshots WHERE id = ?1", [&id.0[..]], |r| r.get(0)).optional()?;
        json.map(|j| serde_json::from_str(&j).context("cached snapshot head is malformed")).transpose()
    }

    /// Snapshots whose references this cache does not know: rows of a
    /// write-only key, and rows added without them (`Depth::Snapshots`) not completed yet.
    pub fn snapshots_without_references(&self) -> Result<u64> {
        Ok(self.conn.query_row("SELECT COUNT(*) FROM snapshots WHERE refs_known = 0", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Resolves a full id or a unique prefix of at least 8 hex digits.
    pub fn resolve_snapshot(&self, prefix: &str) -> Result<Id> {
        let p = prefix.trim().to_ascii_lowercase();
        if p.len() < 8 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!("snapshot {prefix:?}: give a snapshot id or a prefix of at least 8 hex digits");
        }
        let matches: Vec<Id> = self.snapshot_rows()?.into_iter().map(|s| s.id).filter(|id| id.to_hex().starts_with(&p)).collect();
        match matches.len() {
            0 => bail!("no snapshot {prefix} in this repository"),
            1 => Ok(matches[0]),
            n => bail!("snapshot prefix {prefix} is ambiguous ({n} snapshots match)"),
        }
    }

    /// How many snapshots reference `id` (0 when none).
    #[cfg(test)]
    pub fn ref_count(&self, id: &Id) -> Result<u64> {
        let n: Option<i64> = self.conn.query_row("SELECT count FROM refs WHERE id = ?1", [&id.0[..]], |r| r.get(0)).optional()?;
        Ok(n.unwrap_or(0) as u64)
    }
}

/// Counts one reference from the row `seq` for each blob of `referenced`, and
/// stores that set (`snapshot_refs`, replacing an empty one) and its sizes on the row.
fn count_references(tx: &rusqlite::Transaction, seq: i64, referenced: &HashSet<Id>) -> Result<()> {
    let mut count_ref = tx.prepare(
        "INSERT INTO refs VALUES(?1, 1, ?2) ON CONFLICT(id) DO UPDATE SET count = count + 1, owner = (owner | ?2) & ~(owner & ?2)",
    )?;
    let mut size_of = tx.prepare("SELECT raw_len, stored_len FROM blobs WHERE id = ?1 ORDER BY pack LIMIT 1")?;
    let (mut blobs, mut raw, mut stored) = (0i64, 0i64, 0i64);
    // In id order, both B-trees are walked page by page instead of at random.
    let mut ordered: Vec<&Id> = referenced.iter().collect();
    ordered.sort_unstable();
    for r in &ordered {
        count_ref.execute(params![&r.0[..], seq])?;
        let size = size_of.query_row([&r.0[..]], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))).optional()?;
        if let Some((raw_len, stored_len)) = size {
            blobs += 1;
            raw += raw_len;
            stored += stored_len;
        }
    }
    tx.execute("INSERT OR REPLACE INTO snapshot_refs VALUES(?1, ?2)", params![seq, ordered.iter().flat_map(|r| r.0).collect::<Vec<u8>>()])?;
    tx.execute(
        "UPDATE snapshots SET referenced_blobs = ?2, referenced_raw_bytes = ?3, referenced_stored_bytes = ?4 WHERE seq = ?1",
        params![seq, blobs, raw, stored],
    )?;
    Ok(())
}

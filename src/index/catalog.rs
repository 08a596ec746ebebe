//! The file catalog of each snapshot, cached: every guest path with its type,
//! size, mtime, mode, owner and a content fingerprint, so `find` over many
//! snapshots reads each snapshot's filesystems once. Derived from the
//! repository and rebuildable: filled on first need, dropped with the rest
//! of the cache (`index rebuild`, a wiped cache, a schema change) and with
//! its snapshot's row; it is never the only copy of anything.

use super::Index;
use crate::ids::Id;
use anyhow::Result;
use rusqlite::{params, OptionalExtension};

/// One path of a snapshot's guest tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CatalogEntry {
    /// As the verbs show it: `p1/etc/passwd`, `/etc/passwd`.
    pub path: String,
    /// `regular`, `directory`, `symlink`, … (the `FileType` name).
    pub file_type: String,
    pub size: u64,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// BLAKE3 of the file's bytes or the link's target: equal iff the contents are equal.
    #[serde(skip)]
    pub fingerprint: Option<Vec<u8>>,
    /// The chunks the file's bytes lie in (`files::diff::chunk_fingerprint`), when it has a
    /// block map: an equal placement in a later snapshot means equal bytes without reading them.
    #[serde(skip)]
    pub placement: Option<Vec<u8>>,
}

/// A snapshot's cached catalog: its entries and why some volumes could not be read.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub entries: Vec<CatalogEntry>,
    /// Volumes without a readable filesystem, and why (kept so `find` can say so each time).
    pub problems: Vec<String>,
}

impl Index {
    /// The cached catalog of `snapshot`, if one was built.
    pub fn catalog(&self, snapshot: &Id) -> Result<Option<Catalog>> {
        let problems: Option<String> = self
            .conn
            .query_row("SELECT problems FROM catalog_snapshots WHERE snapshot = ?1", [&snapshot.0[..]], |r| r.get(0))
            .optional()?;
        let Some(problems) = problems else { return Ok(None) };
        let mut st = self.conn.prepare(
            "SELECT path, type, size, mtime_secs, mtime_nanos, mode, uid, gid, fingerprint, placement
             FROM catalog_entries WHERE snapshot = ?1 ORDER BY path",
        )?;
        let rows = st.query_map([&snapshot.0[..]], |r| {
            Ok(CatalogEntry {
                path: r.get(0)?,
                file_type: r.get(1)?,
                size: r.get::<_, i64>(2)? as u64,
                mtime_secs: r.get(3)?,
                mtime_nanos: r.get::<_, i64>(4)? as u32,
                mode: r.get::<_, i64>(5)? as u32,
                uid: r.get::<_, i64>(6)? as u32,
                gid: r.get::<_, i64>(7)? as u32,
                fingerprint: r.get(8)?,
                placement: r.get(9)?,
            })
        })?;
        let entries = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        let problems = problems.lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
        Ok(Some(Catalog { entries, problems }))
    }

    /// Stores the catalog of `snapshot`, replacing any earlier one (one transaction).
    pub fn put_catalog(&self, snapshot: &Id, catalog: &Catalog) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute("DELETE FROM catalog_entries WHERE snapshot = ?1", [&snapshot.0[..]])?;
        tx.execute(
            "INSERT OR REPLACE INTO catalog_snapshots(snapshot, built, problems) VALUES(?1, ?2, ?3)",
            params![&snapshot.0[..], crate::util::now_rfc3339(), catalog.problems.join("\n")],
        )?;
        {
            let mut st = tx.prepare(
                "INSERT OR REPLACE INTO catalog_entries(snapshot, path, type, size, mtime_secs, mtime_nanos, mode, uid, gid, fingerprint, placement)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for e in &catalog.entries {
                st.execute(params![
                    &snapshot.0[..],
                    e.path,
                    e.file_type,
                    e.size as i64,
                    e.mtime_secs,
                    e.mtime_nanos as i64,
                    e.mode as i64,
                    e.uid as i64,
                    e.gid as i64,
                    e.fingerprint,
                    e.placement
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops the cached catalog of `snapshot` (its snapshot left the repository).
    pub(super) fn drop_catalog(tx: &rusqlite::Transaction, snapshot: &Id) -> rusqlite::Result<()> {
        tx.execute("DELETE FROM catalog_entries WHERE snapshot = ?1", [&snapshot.0[..]])?;
        tx.execute("DELETE FROM catalog_snapshots WHERE snapshot = ?1", [&snapshot.0[..]])?;
        Ok(())
    }
}

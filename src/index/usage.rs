//! The read-only queries behind `imgarc report`: what each snapshot and the
//! repository use, from the reference counts and owners the index keeps
//! current, in one pass over the blobs — never a scan of every snapshot's
//! chunk references.
//!
//! A blob stored in several packs is counted once, at its first location
//! (lowest pack id); its raw length is the same everywhere, its stored length
//! is that location's.

use super::{id_of, Index};
use crate::ids::Id;
use anyhow::Result;
use rusqlite::OptionalExtension;
use std::collections::HashMap;

/// A number of distinct blobs and their sizes, uncompressed and as stored.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Bytes {
    pub blobs: u64,
    pub raw: u64,
    pub stored: u64,
}

impl Bytes {
    pub fn add(&mut self, o: Bytes) {
        self.blobs += o.blobs;
        self.raw += o.raw;
        self.stored += o.stored;
    }

    /// `self - o`, saturating (the two are summed at different times, see `SnapshotUsage`).
    pub fn minus(self, o: Bytes) -> Bytes {
        Bytes {
            blobs: self.blobs.saturating_sub(o.blobs),
            raw: self.raw.saturating_sub(o.raw),
            stored: self.stored.saturating_sub(o.stored),
        }
    }
}

/// One snapshot as the report needs it.
#[derive(Debug, Clone)]
pub struct SnapshotUsage {
    /// The snapshot's rowid: what `refs.owner` holds.
    pub seq: i64,
    pub id: Id,
    /// The snapshot document.
    pub json: String,
    /// The distinct blobs it references, sized when it was added to the index.
    pub referenced: Bytes,
}

/// Every blob in the index, split by who references it.
#[derive(Debug, Default, Clone)]
pub struct BlobUsage {
    /// Blobs at least one snapshot references.
    pub referenced: Bytes,
    /// Blobs no snapshot references (awaiting prune).
    pub unreferenced: Bytes,
    /// Blobs exactly one snapshot references, by that snapshot's `seq`.
    pub unique_by_owner: HashMap<i64, Bytes>,
}

/// What the index knows of one blob: how many snapshots reference it, and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    pub count: u64,
    pub size: Bytes,
}

impl Index {
    pub fn snapshot_usage(&self) -> Result<Vec<SnapshotUsage>> {
        let mut st = self.conn.prepare(
            "SELECT seq, id, json, referenced_blobs, referenced_raw_bytes, referenced_stored_bytes FROM snapshots ORDER BY time, id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(SnapshotUsage {
                seq: r.get(0)?,
                id: id_of(r.get(1)?)?,
                json: r.get(2)?,
                referenced: Bytes {
                    blobs: r.get::<_, i64>(3)? as u64,
                    raw: r.get::<_, i64>(4)? as u64,
                    stored: r.get::<_, i64>(5)? as u64,
                },
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One pass over the blobs joined with their reference rows, aggregated in
    /// SQLite by "unreferenced" (key -1), "shared" (key 0) or the owning
    /// snapshot's `seq` (`count = 1`: `owner` is that snapshot).
    pub fn blob_usage(&self) -> Result<BlobUsage> {
        let mut st = self.conn.prepare(
            "SELECT CASE WHEN r.count IS NULL THEN -1 WHEN r.count = 1 THEN r.owner ELSE 0 END AS k,
                    COUNT(*), SUM(b.raw_len), SUM(b.stored_len)
             FROM blobs b LEFT JOIN refs r ON r.id = b.id
             WHERE NOT EXISTS (SELECT 1 FROM blobs f WHERE f.id = b.id AND f.pack < b.pack)
             GROUP BY k",
        )?;
        let mut usage = BlobUsage::default();
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let key: i64 = r.get(0)?;
            let b = Bytes { blobs: r.get::<_, i64>(1)? as u64, raw: r.get::<_, i64>(2)? as u64, stored: r.get::<_, i64>(3)? as u64 };
            match key {
                -1 => usage.unreferenced.add(b),
                0 => usage.referenced.add(b),
                owner => {
                    usage.referenced.add(b);
                    usage.unique_by_owner.insert(owner, b);
                }
            }
        }
        Ok(usage)
    }

    /// Number of packs and their total size.
    pub fn pack_totals(&self) -> Result<(u64, u64)> {
        let (n, bytes): (i64, i64) =
            self.conn.query_row("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM packs", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok((n as u64, bytes as u64))
    }

    /// The reference count and first-location size of one blob (`None` when the index does not hold it).
    pub fn blob_ref(&self, id: &Id) -> Result<Option<BlobRef>> {
        let mut st = self.conn.prepare_cached(
            "SELECT COALESCE((SELECT count FROM refs WHERE id = ?1), 0), raw_len, stored_len FROM blobs WHERE id = ?1 ORDER BY pack LIMIT 1",
        )?;
        let r = st
            .query_row([&id.0[..]], |r| {
                Ok(BlobRef {
                    count: r.get::<_, i64>(0)? as u64,
                    size: Bytes { blobs: 1, raw: r.get::<_, i64>(1)? as u64, stored: r.get::<_, i64>(2)? as u64 },
                })
            })
            .optional()?;
        Ok(r)
    }

    /// Runs raw SQL on the cache: for benchmarks and tests that fill it synthetically.
    #[doc(hidden)]
    pub fn execute_batch_for_tests(&self, sql: &str) -> Result<()> {
        self.conn.execute_batch(sql)?;
        Ok(())
    }
}

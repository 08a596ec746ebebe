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

/// A blob id as a fixed array (ids are 32 bytes; anything else sorts as zeros and matches nothing).
fn key(b: &[u8]) -> [u8; 32] {
    b.try_into().unwrap_or([0; 32])
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

    /// One pass over the blobs and one over the reference rows, both in id
    /// order, merged here (SQLite would seek `refs` once per blob instead):
    /// each distinct blob is unreferenced, shared (`count > 1`) or owned by the
    /// one snapshot whose `seq` is its `owner` (`count = 1`).
    pub fn blob_usage(&self) -> Result<BlobUsage> {
        let mut blobs = self.conn.prepare("SELECT id, raw_len, stored_len FROM blobs ORDER BY id, pack")?;
        let mut refs = self.conn.prepare("SELECT id, count, owner FROM refs ORDER BY id")?;
        let mut blob_rows = blobs.query([])?;
        let mut ref_rows = refs.query([])?;
        let mut usage = BlobUsage::default();
        let next_ref = |rows: &mut rusqlite::Rows| -> Result<Option<([u8; 32], i64, i64)>> {
            Ok(match rows.next()? {
                Some(r) => Some((key(r.get_ref(0)?.as_blob()?), r.get(1)?, r.get(2)?)),
                None => None,
            })
        };
        let mut current_ref = next_ref(&mut ref_rows)?;
        let mut previous: Option<[u8; 32]> = None;
        while let Some(r) = blob_rows.next()? {
            let id = key(r.get_ref(0)?.as_blob()?);
            if previous == Some(id) {
                continue; // another location of the same blob: counted at its first
            }
            previous = Some(id);
            let size = Bytes { blobs: 1, raw: r.get::<_, i64>(1)? as u64, stored: r.get::<_, i64>(2)? as u64 };
            // Reference rows of blobs the index no longer holds have no size to count.
            while current_ref.is_some_and(|(rid, _, _)| rid < id) {
                current_ref = next_ref(&mut ref_rows)?;
            }
            match current_ref {
                Some((rid, count, owner)) if rid == id && count > 0 => {
                    usage.referenced.add(size);
                    if count == 1 {
                        usage.unique_by_owner.entry(owner).or_default().add(size);
                    }
                }
                _ => usage.unreferenced.add(size),
            }
        }
        Ok(usage)
    }

    /// Runs `f` inside one read transaction, so every query it makes sees the
    /// same state of the cache even while an archive commits (WAL readers do
    /// not block writers).
    pub fn read_consistent<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let tx = self.conn.unchecked_transaction()?;
        let out = f()?;
        tx.commit()?;
        Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::extents::StreamRef;
    use crate::repository::index_object::{IndexObject, IndexedPack};
    use crate::repository::pack::{BlobKind, Codec, PackEntry};
    use crate::repository::snapshot::{Layout, Snapshot, SnapshotStats, Source};
    use std::collections::HashSet;

    fn snapshot(name: &str) -> Snapshot {
        let stream = StreamRef { size: 0, trees: vec![], extent_count: 0, extents_blake3: Id([0; 32]), data_bytes: 0 };
        Snapshot {
            version: 1,
            name: name.into(),
            tags: vec![],
            time: "2026-01-01T00:00:00Z".into(),
            hostname: "t".into(),
            source: Source::Stdin,
            logical_bytes: 0,
            virtual_bytes: None,
            format: "raw".into(),
            image: None,
            layout: Layout::Raw,
            guest: stream,
            digests: Default::default(),
            stats: SnapshotStats::default(),
            metadata: Default::default(),
            copied_from: None,
        }
    }

    #[test]
    fn owners_give_unique_bytes_and_a_blob_in_two_packs_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::open_at(&dir.path().join("i.sqlite"), "r").unwrap();
        let blob = |i: u8| Id::of(&[i]);
        let entry = |i: u8| PackEntry {
            id: blob(i),
            kind: BlobKind::Data,
            codec: Codec::Zstd,
            raw_len: 100 * i as u32,
            stored_len: 10 * i as u32,
            offset: 0,
        };
        let p1 = IndexedPack::new(Id::of(b"p1"), 1, &(1..=9).map(entry).collect::<Vec<_>>());
        // Blob 9 stored again elsewhere: still one blob.
        let p2 = IndexedPack::new(Id::of(b"p2"), 1, &[entry(9)]);
        index.add_index_object("i", &IndexObject::new(vec![p1, p2])).unwrap();
        let sets: [&[u8]; 4] = [&[1, 2, 3], &[2, 3, 4], &[3, 4, 5, 9], &[6]];
        let mut seqs = Vec::new();
        for (n, set) in sets.iter().enumerate() {
            let snap = snapshot(&format!("s{n}"));
            let id = Snapshot::id_of(&snap.to_bytes());
            let head = crate::repository::snapshot::SnapshotHead::of(&snap, &crate::repository::snapshot::MetadataHasher::UNKEYED);
            index.add_snapshot(&id, &head, &snap, &set.iter().map(|&i| blob(i)).collect::<HashSet<_>>()).unwrap();
            seqs.push(index.snapshot_usage().unwrap().into_iter().find(|u| u.id == id).unwrap().seq);
        }
        let usage = index.blob_usage().unwrap();
        // Brute force: a blob is a snapshot's own when no other set has it.
        for (n, set) in sets.iter().enumerate() {
            let own: Vec<u8> = set.iter().copied().filter(|b| sets.iter().enumerate().all(|(m, o)| m == n || !o.contains(b))).collect();
            let want = Bytes {
                blobs: own.len() as u64,
                raw: own.iter().map(|&b| 100 * b as u64).sum(),
                stored: own.iter().map(|&b| 10 * b as u64).sum(),
            };
            assert_eq!(usage.unique_by_owner.get(&seqs[n]).copied().unwrap_or_default(), want, "snapshot {n}");
        }
        assert_eq!(usage.referenced, Bytes { blobs: 7, raw: 100 * (1 + 2 + 3 + 4 + 5 + 6 + 9), stored: 10 * (1 + 2 + 3 + 4 + 5 + 6 + 9) });
        assert_eq!(usage.unreferenced, Bytes { blobs: 2, raw: 100 * (7 + 8), stored: 10 * (7 + 8) });
        let s2 = index.snapshot_usage().unwrap().into_iter().find(|u| u.seq == seqs[2]).unwrap();
        assert_eq!(s2.referenced, Bytes { blobs: 4, raw: 2100, stored: 210 });
    }

    #[test]
    fn a_cache_of_another_schema_is_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.sqlite");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO meta VALUES('repo_id', 'r'), ('schema', '1');
                 CREATE TABLE refs(id BLOB PRIMARY KEY, count INTEGER NOT NULL) WITHOUT ROWID;
                 INSERT INTO refs VALUES(x'00', 3);",
            )
            .unwrap();
        }
        let index = Index::open_at(&path, "r").unwrap();
        let n: i64 = index.conn.query_row("SELECT COUNT(*) FROM refs", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0, "the old rows are gone");
        let v: String = index.conn.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| r.get(0)).unwrap();
        assert_eq!(v, super::super::schema::SCHEMA_VERSION);
        index.conn.execute("INSERT INTO refs(id, count, owner) VALUES(x'01', 1, 7)", []).unwrap();
        drop(index);
        // Another repository's cache is still refused.
        assert!(Index::open_at(&path, "other").is_err());
    }
}

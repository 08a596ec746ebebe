//! Packs and blob locations in the cache: what index objects list, where
//! each blob is stored (a blob may live in several packs), and how much of
//! each pack the snapshots still use.

use super::{entry_from_row, filter, id_of, Index, Location};
use crate::ids::Id;
use crate::repository::index_object::{IndexObject, IndexedPack};
use crate::repository::pack::PackEntry;
use anyhow::Result;
use rusqlite::{params, TransactionBehavior};
use std::collections::{HashMap, HashSet};

/// How much of one pack the snapshots still use.
#[derive(Debug, Clone, Copy)]
pub struct PackUsage {
    pub pack: Id,
    pub size: u64,
    pub blobs: u64,
    /// Blobs some snapshot references, and their stored bytes.
    pub used_blobs: u64,
    pub used_bytes: u64,
}

impl Index {
    pub fn add_index_object(&mut self, key: &str, obj: &IndexObject) -> Result<()> {
        self.add_index_objects([(key, obj)])
    }

    /// Takes in several index objects in one transaction (a catch-up's batch).
    pub fn add_index_objects<'a>(&mut self, objs: impl IntoIterator<Item = (&'a str, &'a IndexObject)>) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (key, obj) in objs {
            for p in &obj.packs {
                insert_pack(&tx, key, p)?;
            }
            tx.execute("INSERT OR IGNORE INTO index_objects VALUES(?1)", [key])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a pack this process just wrote (its index object is `index_key`).
    pub fn add_pack(&mut self, index_key: &str, pack: &IndexedPack) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_pack(&tx, index_key, pack)?;
        tx.execute("INSERT OR IGNORE INTO index_objects VALUES(?1)", [index_key])?;
        tx.commit()?;
        Ok(())
    }

    pub fn locations(&self, id: &Id) -> Result<Vec<Location>> {
        // Copies outside packs marked for deletion first: those may vanish.
        let mut st = self.conn.prepare_cached(
            "SELECT pack, kind, codec, offset, stored_len, raw_len FROM blobs WHERE id = ?1
             ORDER BY pack IN (SELECT pack FROM marked_packs)",
        )?;
        let rows = st.query_map([&id.0[..]], |r| Ok(Location { pack: id_of(r.get(0)?)?, entry: entry_from_row(r, *id)? }))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Which of `ids` the index holds outside packs marked for deletion (a
    /// chunk only in a marked pack is stored again rather than deduplicated
    /// against — see `repository::marks`), in batched queries.
    pub fn contains_many(&self, ids: &[Id]) -> Result<HashSet<Id>> {
        let mut found = HashSet::new();
        for batch in ids.chunks(500) {
            let sql = format!(
                "SELECT DISTINCT id FROM blobs WHERE id IN ({}) AND pack NOT IN (SELECT pack FROM marked_packs)",
                vec!["?"; batch.len()].join(",")
            );
            let mut st = self.conn.prepare_cached(&sql)?;
            let params: Vec<&dyn rusqlite::ToSql> = batch.iter().map(|i| &i.0 as &dyn rusqlite::ToSql).collect();
            let rows = st.query_map(params.as_slice(), |r| id_of(r.get(0)?))?;
            for r in rows {
                found.insert(r?);
            }
        }
        Ok(found)
    }

    /// The Bloom filter of every blob id in the cache (marked packs included:
    /// SQLite answers its positives): from its file when that is current,
    /// taking in the blobs of packs added since, else rebuilt; saved when it
    /// changed. Room for `extra_capacity` more ids (see `filter.rs`).
    pub fn chunk_filter(&self, extra_capacity: usize) -> Result<filter::ChunkFilter> {
        let generation = self.filter_generation()?;
        let path = self.filter_path();
        let mut changed = false;
        let loaded = filter::ChunkFilter::load(&path, &generation).and_then(|mut f| {
            let max_seq: i64 = self.conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM packs", [], |r| r.get(0)).ok()?;
            // Numbers above this cache's: the file is of an earlier life of it.
            if f.watermark > max_seq {
                return None;
            }
            changed = self.catch_up_filter(&mut f).ok()? > 0;
            (!f.outgrown_by(f.inserted() as usize + extra_capacity)).then_some(f)
        });
        let f = match loaded {
            Some(f) => f,
            None => {
                let n: i64 = self.conn.query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get(0))?;
                let mut f = filter::ChunkFilter::with_capacity(n as usize + extra_capacity);
                self.catch_up_filter(&mut f)?;
                changed = true;
                f
            }
        };
        if changed {
            self.write_filter(&f, &generation);
        }
        Ok(f)
    }

    /// Saves `f` (an archive's, with what it stored) after taking in the blobs
    /// of packs added since it was loaded, so the next archive loads it current.
    pub fn save_chunk_filter(&self, f: &mut filter::ChunkFilter) -> Result<()> {
        let generation = self.filter_generation()?;
        self.catch_up_filter(f)?;
        self.write_filter(f, &generation);
        Ok(())
    }

    /// A filter that cannot be saved costs the next archive a rebuild, nothing more.
    fn write_filter(&self, f: &filter::ChunkFilter, generation: &Id) {
        if let Err(e) = f.save(&self.filter_path(), generation) {
            tracing::warn!("cannot save the chunk filter {}: {e}", self.filter_path().display());
        }
    }

    fn filter_path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("{}{}", self.path.display(), filter::FILE_SUFFIX))
    }

    /// What a filter file must be stamped with to be this cache's: its random generation and repository id.
    fn filter_generation(&self) -> Result<Id> {
        let (generation, repo): (String, String) = self.conn.query_row(
            "SELECT (SELECT value FROM meta WHERE key = 'generation'), (SELECT value FROM meta WHERE key = 'repo_id')",
            [],
            |r| Ok((r.get::<_, Option<String>>(0)?.unwrap_or_default(), r.get::<_, Option<String>>(1)?.unwrap_or_default())),
        )?;
        Ok(Id::of(format!("{generation}\n{repo}").as_bytes()))
    }

    /// Inserts the blobs of packs numbered above `f.watermark` and raises it;
    /// returns how many. One statement: one consistent view of the cache
    /// (a pack's row and its blobs are written in one transaction).
    fn catch_up_filter(&self, f: &mut filter::ChunkFilter) -> Result<u64> {
        let mut st = self.conn.prepare("SELECT p.seq, b.id FROM packs p JOIN blobs b ON b.pack = p.id WHERE p.seq > ?1")?;
        let mut rows = st.query([f.watermark])?;
        let (mut n, mut top) = (0, f.watermark);
        while let Some(r) = rows.next()? {
            top = top.max(r.get::<_, i64>(0)?);
            if let Some(id) = Id::from_slice(r.get_ref(1)?.as_blob()?) {
                f.insert(&id);
                n += 1;
            }
        }
        f.watermark = top;
        Ok(n)
    }

    /// Forgets one stored copy of a blob (found damaged or missing by `check`).
    pub fn remove_location(&mut self, id: &Id, pack: &Id) -> Result<()> {
        self.conn.execute("DELETE FROM blobs WHERE id = ?1 AND pack = ?2", params![&id.0[..], &pack.0[..]])?;
        Ok(())
    }

    /// Forgets a whole pack (missing from the repository).
    pub fn remove_pack(&mut self, pack: &Id) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM blobs WHERE pack = ?1", [&pack.0[..]])?;
        tx.execute("DELETE FROM packs WHERE id = ?1", [&pack.0[..]])?;
        tx.commit()?;
        Ok(())
    }

    pub fn packs(&self) -> Result<HashMap<Id, u64>> {
        let mut st = self.conn.prepare("SELECT id, size FROM packs")?;
        let rows = st.query_map([], |r| Ok((id_of(r.get(0)?)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn pack_entries(&self, pack: &Id) -> Result<Vec<PackEntry>> {
        let mut st = self.conn.prepare("SELECT id, kind, codec, offset, stored_len, raw_len FROM blobs WHERE pack = ?1 ORDER BY offset")?;
        let rows = st.query_map([&pack.0[..]], |r| entry_from_row(r, id_of(r.get(0)?)?))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The index objects that list `pack`.
    pub fn index_objects_listing(&self, pack: &Id) -> Result<Vec<String>> {
        let mut st = self.conn.prepare_cached("SELECT key FROM index_object_packs WHERE pack = ?1")?;
        let rows = st.query_map([&pack.0[..]], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets an index object; packs no remaining index object lists are
    /// forgotten with it (they are being deleted, or already are).
    pub fn remove_index_object(&mut self, key: &str) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let packs: Vec<Vec<u8>> = {
            let mut st = tx.prepare("SELECT pack FROM index_object_packs WHERE key = ?1")?;
            let rows = st.query_map([key], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        tx.execute("DELETE FROM index_object_packs WHERE key = ?1", [key])?;
        tx.execute("DELETE FROM index_objects WHERE key = ?1", [key])?;
        for pack in packs {
            let still: bool = tx.query_row("SELECT EXISTS(SELECT 1 FROM index_object_packs WHERE pack = ?1)", [&pack], |r| r.get(0))?;
            if !still {
                tx.execute("DELETE FROM blobs WHERE pack = ?1", [&pack])?;
                tx.execute("DELETE FROM packs WHERE id = ?1", [&pack])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Per pack: size, blobs, and what of it the snapshots still use. One
    /// merged pass over `blobs` and `refs`, both in id order (the report's
    /// technique: a SQL join seeks `refs` once per blob, ~15x slower at 2M blobs).
    pub fn pack_usage(&self) -> Result<Vec<PackUsage>> {
        let mut by_pack: HashMap<Id, PackUsage> = HashMap::new();
        {
            let mut st = self.conn.prepare("SELECT id, size FROM packs")?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let pack = id_of(r.get(0)?)?;
                by_pack.insert(pack, PackUsage { pack, size: r.get::<_, i64>(1)? as u64, blobs: 0, used_blobs: 0, used_bytes: 0 });
            }
        }
        let mut blobs = self.conn.prepare("SELECT id, pack, stored_len FROM blobs ORDER BY id")?;
        let mut refs = self.conn.prepare("SELECT id FROM refs WHERE count > 0 ORDER BY id")?;
        let mut blob_rows = blobs.query([])?;
        let mut ref_rows = refs.query([])?;
        let mut next_ref = || -> Result<Option<Id>> { ref_rows.next()?.map(|r| id_of(r.get(0)?)).transpose().map_err(Into::into) };
        let mut current_ref = next_ref()?;
        while let Some(r) = blob_rows.next()? {
            let id = id_of(r.get(0)?)?;
            while current_ref.is_some_and(|c| c.0 < id.0) {
                current_ref = next_ref()?;
            }
            let Some(u) = by_pack.get_mut(&id_of(r.get(1)?)?) else { continue };
            u.blobs += 1;
            if current_ref == Some(id) {
                u.used_blobs += 1;
                u.used_bytes += r.get::<_, i64>(2)? as u64;
            }
        }
        Ok(by_pack.into_values().collect())
    }

    /// The blobs of `pack` that some snapshot references, with every pack each is stored in.
    pub fn referenced_in_pack(&self, pack: &Id) -> Result<Vec<(PackEntry, Vec<Id>)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT b.id, b.kind, b.codec, b.offset, b.stored_len, b.raw_len FROM blobs b JOIN refs r ON r.id = b.id
             WHERE b.pack = ?1 ORDER BY b.offset",
        )?;
        let entries: Vec<PackEntry> =
            st.query_map([&pack.0[..]], |r| entry_from_row(r, id_of(r.get(0)?)?))?.collect::<rusqlite::Result<_>>()?;
        let mut st = self.conn.prepare_cached("SELECT pack FROM blobs WHERE id = ?1")?;
        entries
            .into_iter()
            .map(|e| {
                let packs = st.query_map([&e.id.0[..]], |r| id_of(r.get(0)?))?.collect::<rusqlite::Result<_>>()?;
                Ok((e, packs))
            })
            .collect()
    }

    pub fn counts(&self) -> Result<(u64, u64, u64)> {
        let q = |sql: &str| -> Result<u64> { Ok(self.conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64) };
        Ok((q("SELECT COUNT(*) FROM snapshots")?, q("SELECT COUNT(DISTINCT id) FROM blobs")?, q("SELECT COUNT(*) FROM packs")?))
    }
}

fn insert_pack(tx: &rusqlite::Transaction, index_key: &str, p: &IndexedPack) -> Result<()> {
    tx.execute("INSERT OR IGNORE INTO packs(id, size) VALUES(?1, ?2)", params![&p.id.0[..], p.size as i64])?;
    tx.execute("INSERT OR IGNORE INTO index_object_packs VALUES(?1, ?2)", params![index_key, &p.id.0[..]])?;
    let mut st = tx.prepare_cached("INSERT OR IGNORE INTO blobs VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)")?;
    for e in p.entries() {
        st.execute(params![
            &e.id.0[..],
            &p.id.0[..],
            e.kind as i64,
            e.codec as i64,
            e.offset as i64,
            e.stored_len as i64,
            e.raw_len as i64
        ])?;
    }
    Ok(())
}

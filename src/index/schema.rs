//! The cache's tables, and opening the SQLite file: created private to the
//! user, switched to WAL, and dropped and refilled when its schema version
//! is not this imgarc's (it is only a cache).

use super::Index;
use anyhow::{bail, Context, Result};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};

/// Bumped whenever the tables or what their rows may hold change; a cache of
/// another version is dropped and refilled (it is only a cache). 9: a full
/// key's rows may wait with `refs_known = 0` (an imgarc reading version 8
/// would count them as referencing nothing).
pub(super) const SCHEMA_VERSION: &str = "9";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS packs(seq INTEGER PRIMARY KEY AUTOINCREMENT, id BLOB NOT NULL UNIQUE, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS blobs(
    id BLOB NOT NULL, pack BLOB NOT NULL, kind INTEGER NOT NULL, codec INTEGER NOT NULL,
    offset INTEGER NOT NULL, stored_len INTEGER NOT NULL, raw_len INTEGER NOT NULL,
    PRIMARY KEY(id, pack)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_by_pack ON blobs(pack);
CREATE TABLE IF NOT EXISTS index_objects(key TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS snapshots(
    id BLOB NOT NULL UNIQUE, name TEXT NOT NULL, time TEXT NOT NULL, logical_bytes INTEGER NOT NULL,
    stored_bytes_added INTEGER NOT NULL, tags TEXT NOT NULL, json TEXT, head TEXT NOT NULL,
    refs_known INTEGER NOT NULL DEFAULT 1,
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    referenced_blobs INTEGER NOT NULL DEFAULT 0, referenced_raw_bytes INTEGER NOT NULL DEFAULT 0,
    referenced_stored_bytes INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS refs(id BLOB PRIMARY KEY, count INTEGER NOT NULL, owner INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshot_refs(seq INTEGER PRIMARY KEY, ids BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS index_object_packs(key TEXT NOT NULL, pack BLOB NOT NULL, PRIMARY KEY(key, pack)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS index_object_packs_by_pack ON index_object_packs(pack);
CREATE TABLE IF NOT EXISTS marks(key TEXT PRIMARY KEY, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS marked_packs(
    pack BLOB NOT NULL, mark TEXT NOT NULL, size INTEGER NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY(pack, mark)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS catalog_snapshots(snapshot BLOB PRIMARY KEY, built TEXT NOT NULL, problems TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS catalog_entries(
    snapshot BLOB NOT NULL, path TEXT NOT NULL, type TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_secs INTEGER NOT NULL, mtime_nanos INTEGER NOT NULL, mode INTEGER NOT NULL,
    uid INTEGER NOT NULL, gid INTEGER NOT NULL, fingerprint BLOB, placement BLOB,
    PRIMARY KEY(snapshot, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS drills(
    name TEXT PRIMARY KEY, snapshot BLOB NOT NULL, started TEXT NOT NULL, started_micros INTEGER NOT NULL,
    ok INTEGER NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS drills_by_started ON drills(started_micros, name);
";

// `packs.seq` numbers packs in the order the cache took them in (never reused):
// the persisted Bloom filter (`filter.rs`) records the highest it holds, and
// takes in only the blobs of later packs when it is loaded. `meta.generation`
// is random per cache file (made with the tables), so a filter of a cache that
// was dropped and refilled, whose numbers start again, is never taken for current.
// `drills` caches the repository's drill records (`drills/<name>`, format-spec/drills.md),
// each whole (`record`, its JSON) beside the columns queries order or filter by:
// `started_micros` is `started` in Unix microseconds (RFC 3339 strings with and
// without fractions do not sort as text). A row stays while its object exists; rows
// are independent of `snapshots` (a record may outlive its snapshot until a prune).
// `catalog_snapshots`/`catalog_entries` are the guest file catalog of a
// snapshot (`catalog.rs`): filled on first need by `find`, dropped with the
// snapshot's row; `problems` lists, one a line, the volumes it could not read;
// `fingerprint` is the BLAKE3 of a file's bytes (a link's target), `placement`
// its chunk fingerprint (`files::diff::chunk_fingerprint`), which lets the next
// night's catalog reuse the hash of a file whose chunks did not change.
// `snapshots.seq` is the table's rowid, declared so that it never changes
// (VACUUM renumbers undeclared rowids) and never reused (AUTOINCREMENT).
// `refs.owner` is the XOR of the `seq` of every snapshot referencing the blob:
// when `count = 1` it is that one snapshot, which gives every snapshot's unique
// bytes in one pass (`report`). SQL has no XOR: a ^ b = (a | b) & ~(a & b).
// `snapshots.referenced_*` are the distinct blobs the snapshot uses and their
// sizes (first location), summed once when the snapshot is added.
// `snapshot_refs.ids` is that same set of blob ids (sorted, 32 bytes each),
// kept so that a snapshot's references can be dropped from the cache alone:
// by the time a host learns a snapshot is gone, a prune on another host may
// have deleted the very tree blobs that list them. It is filled, like every
// other row, when the snapshot is ingested from the repository.
// `snapshots.head` is the snapshot's head (what every key reads); `json` the
// whole snapshot, NULL when this cache's key cannot open its body (a
// write-only key, for snapshots other hosts wrote). Such a row has
// `refs_known = 0` and an empty reference list: its extent lists are sealed.
// A full key's row has `refs_known = 0` (with `json`, an empty reference list)
// while its extent lists are unread: taken in by `Depth::Snapshots` for a
// command that counts no references, completed by the next full catch-up.
// A write-only key's cache is a file of its own (`cache_file_name`), so a
// full key never counts references from one.

/// Removes a cache file and its WAL companions (missing ones are fine).
pub(super) fn remove_cache_files(path: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm", super::filter::FILE_SUFFIX] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
        }
    }
    Ok(())
}

/// Runs `f` again while SQLite answers "busy"/"locked" (another process is
/// opening or writing the cache), for up to two minutes.
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20 + rand::random::<u64>() % 80));
            }
            r => return r,
        }
    }
}

/// Creates the cache file and its directory private to this user
/// (`util::PRIVATE_*_MODE`, whatever the umask), and tightens ones an older
/// imgarc left world-readable. SQLite gives its `-wal` and `-shm` files the
/// mode of the database file, so pre-creating that one covers all three.
fn make_private(path: &Path) -> std::io::Result<()> {
    use crate::util::{PRIVATE_DIR_MODE, PRIVATE_FILE_MODE};
    use std::fs::Permissions;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(PRIVATE_DIR_MODE).create(parent)?;
        std::fs::set_permissions(parent, Permissions::from_mode(PRIVATE_DIR_MODE))?;
    }
    let f = std::fs::OpenOptions::new().create(true).append(true).mode(PRIVATE_FILE_MODE).open(path)?;
    f.set_permissions(Permissions::from_mode(PRIVATE_FILE_MODE))?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        match std::fs::set_permissions(&side, Permissions::from_mode(PRIVATE_FILE_MODE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

impl Index {
    /// Opens the SQLite file without syncing.
    pub fn open_at(path: &Path, repo_id: &str) -> Result<Index> {
        make_private(path).with_context(|| format!("cannot create index cache {}", path.display()))?;
        let mut conn = Connection::open(path).with_context(|| format!("cannot open index cache {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(120))?;
        // Switching to WAL takes a lock the busy handler does not wait for, so a
        // second process opening the cache at the same moment retries here.
        retry_busy(|| {
            let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                conn.pragma_update(None, "journal_mode", "WAL")?;
            }
            Ok(())
        })?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Schema and identity in one write transaction: a concurrent opener sees all or nothing.
        let (stored, schema) = retry_busy(|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")?;
            let mut stored: Option<String> = tx.query_row("SELECT value FROM meta WHERE key='repo_id'", [], |r| r.get(0)).optional()?;
            let mut schema: Option<String> = tx.query_row("SELECT value FROM meta WHERE key='schema'", [], |r| r.get(0)).optional()?;
            if stored.as_deref() == Some(repo_id) && schema.as_deref() != Some(SCHEMA_VERSION) {
                // Another version of this repository's cache: drop it inside this
                // write transaction (no file deleted under a concurrent opener, which
                // waits and then finds the new version) and refill it from the repository.
                tracing::info!(
                    "note: index cache {} has schema {}, this imgarc uses {SCHEMA_VERSION}: recreating it from the repository",
                    path.display(),
                    schema.as_deref().unwrap_or("(none)")
                );
                drop_all_tables(&tx)?;
                (stored, schema) = (None, None);
            }
            tx.execute_batch(SCHEMA)?;
            if stored.is_none() && schema.is_none() {
                tx.execute("INSERT INTO meta VALUES('repo_id', ?1)", [repo_id])?;
                tx.execute("INSERT INTO meta VALUES('schema', ?1)", [SCHEMA_VERSION])?;
                tx.execute("INSERT INTO meta VALUES('generation', ?1)", [hex::encode(rand::random::<[u8; 16]>())])?;
            }
            tx.commit()?;
            Ok((stored, schema))
        })
        .context("cannot create the index schema")?;
        match (stored, schema) {
            (Some(s), Some(v)) if s == repo_id && v == SCHEMA_VERSION => {}
            (None, None) => {}
            _ => bail!("index cache {} belongs to another repository or version; remove it or run `imgarc index rebuild`", path.display()),
        }
        let index = Index { conn, path: path.to_path_buf() };
        Ok(index)
    }
}

/// Drops every table and index of the cache (SQLite's own bookkeeping is emptied instead).
fn drop_all_tables(tx: &rusqlite::Transaction) -> rusqlite::Result<()> {
    let tables: Vec<String> = {
        let mut st = tx.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")?;
        let rows = st.query_map([], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for t in tables {
        // Dropping a table drops its indexes.
        tx.execute_batch(&format!("DROP TABLE \"{}\"", t.replace('"', "\"\"")))?;
    }
    let has_sequence: bool =
        tx.query_row("SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_sequence'", [], |r| r.get::<_, i64>(0))? > 0;
    if has_sequence {
        tx.execute_batch("DELETE FROM sqlite_sequence")?;
    }
    Ok(())
}

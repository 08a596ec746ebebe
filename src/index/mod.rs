//! The local index: a SQLite cache of what the repository holds.
//!
//! It maps blob ids to pack locations (a blob may live in several packs),
//! lists snapshots, and keeps per-chunk reference counts current as snapshots
//! come and go, so reports never scan every reference. It lives in the user's
//! cache directory keyed by repository id — never on the repository's own
//! filesystem — and is always derivable from the repository: `catchup` syncs
//! from index and snapshot objects, `rebuild` starts from nothing.
//!
//! This file holds the [`Index`] handle and how it is opened; the tables are
//! in `schema`, and the queries by what they are about: `blobs` (packs and
//! blob locations), `snapshots`, `marks` (prune marks); `compact` merges
//! small index objects in the repository. [`IndexedRepository`]
//! is the read path over repository and cache together, and [`ChunkReader`]
//! the one chunk reader with read-ahead.

mod blobs;
pub mod catalog;
mod catchup;
pub mod compact;
mod drills;
pub(crate) mod filter;
mod indexed;
mod marks;
mod reader;
mod schema;
mod snapshots;
pub(crate) mod usage;

pub use blobs::PackUsage;
pub use catchup::{rebuild, Depth, RebuildReport, SyncReport, MAX_BLOBS_PER_INDEX_OBJECT};
pub use drills::DrillRow;
pub use indexed::IndexedRepository;
pub use marks::{MarkRow, MarkedPackRow};
pub use reader::{ChunkReader, DamagedChunk};
pub use snapshots::SnapshotRow;

use crate::ids::Id;
use crate::repository::pack::{BlobKind, Codec, PackEntry};
use crate::repository::Repository;
use anyhow::{bail, Context, Result};
use rusqlite::Connection;
use std::path::{Path, PathBuf};

/// One place a blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: Id,
    pub entry: PackEntry,
}

pub struct Index {
    conn: Connection,
    path: PathBuf,
}

/// The cache directory for one repository: `$IMGARC_CACHE_DIR/<repo id>` or
/// `~/.cache/imgarc/<repo id>`.
pub fn cache_dir_for(repo_id: &str) -> Result<PathBuf> {
    let base = match std::env::var_os("IMGARC_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => dirs::cache_dir().context("no cache directory for this user (set IMGARC_CACHE_DIR)")?.join("imgarc"),
    };
    Ok(base.join(repo_id))
}

/// The cache file of `repo` in its cache directory. A write-only key's cache
/// is a file of its own: it holds snapshot rows without references (their
/// extent lists are sealed), which a full key's prune or report must never count.
pub fn cache_file_name(repo: &Repository) -> &'static str {
    match repo.key_kind() {
        Some(crate::crypto::KeyKind::WriteOnly) => "index-write-only.sqlite",
        _ => "index.sqlite",
    }
}

fn id_of(blob: Vec<u8>) -> rusqlite::Result<Id> {
    Id::from_slice(&blob).ok_or(rusqlite::Error::InvalidQuery)
}

fn kind_of(v: i64) -> BlobKind {
    if v == 1 {
        BlobKind::Tree
    } else {
        BlobKind::Data
    }
}

fn codec_of(v: i64) -> Codec {
    if v == 1 {
        Codec::Zstd
    } else {
        Codec::None
    }
}

/// A pack entry from columns 1..=5 (`kind, codec, offset, stored_len, raw_len`) of a `blobs` row.
fn entry_from_row(r: &rusqlite::Row, id: Id) -> rusqlite::Result<PackEntry> {
    Ok(PackEntry {
        id,
        kind: kind_of(r.get(1)?),
        codec: codec_of(r.get(2)?),
        offset: r.get::<_, i64>(3)? as u64,
        stored_len: r.get::<_, i64>(4)? as u32,
        raw_len: r.get::<_, i64>(5)? as u32,
    })
}

impl Index {
    /// Opens (creating if needed) the cache for `repo`, then catches up with
    /// it, for a command that only reads: a prune mark that cannot be read is a warning.
    pub fn open(repo: &Repository) -> Result<Index> {
        Index::open_to(repo, Depth::References)
    }

    /// `open` for a command that reads snapshots and their data but no
    /// reference counts (`list`, `restore`, `cat`, …): new snapshots are
    /// caught up to [`Depth::Snapshots`], their extent lists left unread, so
    /// that a cold host's first command does not read every tree of the
    /// repository. Their references are counted by the next `open` or `open_writer`.
    pub fn open_without_references(repo: &Repository) -> Result<Index> {
        Index::open_to(repo, Depth::Snapshots)
    }

    fn open_to(repo: &Repository, depth: Depth) -> Result<Index> {
        let (index, report) = Index::open_synced(repo, depth)?;
        let warnings = crate::warnings::Warnings::new();
        for m in &report.marks_unreadable {
            warnings.warn(format!("skipping prune mark {m}"));
        }
        Ok(index)
    }

    /// Like `open`, for a command that writes packs or deletes them (archive,
    /// sync, prune; called with the lock held): a prune mark it cannot read
    /// is an error, since without it the writer would deduplicate against,
    /// or misjudge, packs that are about to be deleted.
    pub fn open_writer(repo: &Repository) -> Result<Index> {
        let (index, report) = Index::open_synced(repo, Depth::References)?;
        if let Some(m) = report.marks_unreadable.first() {
            bail!("cannot read prune mark {m}; {} mark(s) unreadable: repair or remove them first", report.marks_unreadable.len());
        }
        Ok(index)
    }

    fn open_synced(repo: &Repository, depth: Depth) -> Result<(Index, SyncReport)> {
        let dir = cache_dir_for(&repo.config().id)?;
        let mut index = Index::open_at(&dir.join(cache_file_name(repo)), &repo.config().id)?;
        let report = index.sync_to(repo, depth)?;
        Ok((index, report))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

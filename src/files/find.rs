//! `find`: which snapshots hold a path matching a glob, and when it changed
//! (the first snapshot of each distinct version, in snapshot time order).
//! Reads each snapshot's file catalog from the local cache, building it on
//! first need (`index::catalog`).
//!
//! A pattern with a `/` is matched against the whole path (`p1/etc/*.conf`,
//! `/etc/*`); one without, against the last component (`*.conf`). The glob is
//! the crate's one (`select::glob_match`): `*` also crosses `/`. A version is
//! the type, size, mode, uid, gid, mtime and content hash together (BLAKE3 of
//! the bytes). A catalog reuses the previous catalog's hash of a file whose
//! chunks did not change (its placement), so a night's catalog reads only the
//! files that moved or changed.

use super::diff::{chunk_fingerprint, content_hash};
use super::{walk_tree, GuestTree};
use crate::guest::FileType;
use crate::index::catalog::{Catalog, CatalogEntry};
use crate::index::Index;
use crate::repository::Repository;
use crate::select::{glob_match, name_matches};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Default)]
pub struct FindOptions {
    pub pattern: String,
    /// Only snapshots of this image name (a glob, as `--name` everywhere).
    pub name: Option<String>,
    /// Only snapshots taken at or after this time.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

/// One version of a path: where it first appeared and what it was.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FoundVersion {
    pub snapshot: String,
    pub name: String,
    pub time: String,
    #[serde(flatten)]
    pub entry: CatalogEntry,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FoundPath {
    /// The snapshot's image name and the path in it.
    pub name: String,
    pub path: String,
    /// Every snapshot holding the path (ids, in time order).
    pub snapshots: Vec<String>,
    /// Each distinct version, at the first snapshot holding it.
    pub versions: Vec<FoundVersion>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FindReport {
    pub pattern: String,
    pub snapshots_searched: u64,
    /// Catalogs built now (the others came from the cache).
    pub catalogs_built: u64,
    pub matches: Vec<FoundPath>,
    pub warnings: Vec<String>,
    pub bytes_read: u64,
}

pub fn find(repo: &Repository, index: &Index, opts: &FindOptions) -> Result<FindReport> {
    repo.require_full_key("find")?;
    let mut rows = index.snapshot_rows()?;
    rows.retain(|r| opts.name.as_deref().is_none_or(|n| name_matches(n, &r.name)));
    if let Some(since) = opts.since {
        rows.retain(|r| crate::util::parse_rfc3339(&r.time).is_some_and(|t| t >= since));
    }
    rows.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.0.cmp(&b.id.0)));
    let mut report = FindReport { pattern: opts.pattern.clone(), ..Default::default() };
    // (image name, path) → what was found.
    let mut found: BTreeMap<(String, String), FoundPath> = BTreeMap::new();
    // The latest catalog of each image name: a new catalog reuses its hashes of unmoved files.
    let mut previous: HashMap<String, Catalog> = HashMap::new();
    for row in &rows {
        let catalog = match index.catalog(&row.id)? {
            Some(c) => c,
            None => match build_catalog(repo, index, &row.id, previous.get(&row.name), &mut report.bytes_read) {
                Ok(c) => {
                    index.put_catalog(&row.id, &c)?;
                    report.catalogs_built += 1;
                    c
                }
                Err(e) => {
                    report.warnings.push(format!("snapshot {} ({}): {e:#}", row.id.short(), row.name));
                    continue;
                }
            },
        };
        report.snapshots_searched += 1;
        for p in &catalog.problems {
            report.warnings.push(format!("snapshot {} ({}): {p}", row.id.short(), row.name));
        }
        for e in catalog.entries.iter().filter(|e| matches(&opts.pattern, &e.path)).cloned() {
            let key = (row.name.clone(), e.path.clone());
            let f = found.entry(key).or_insert_with(|| FoundPath {
                name: row.name.clone(),
                path: e.path.clone(),
                snapshots: Vec::new(),
                versions: Vec::new(),
            });
            f.snapshots.push(row.id.to_hex());
            if f.versions.last().is_none_or(|v| !same_version(&v.entry, &e)) {
                f.versions.push(FoundVersion { snapshot: row.id.to_hex(), name: row.name.clone(), time: row.time.clone(), entry: e });
            }
        }
        previous.insert(row.name.clone(), catalog);
    }
    report.matches = found.into_values().collect();
    Ok(report)
}

fn matches(pattern: &str, path: &str) -> bool {
    if pattern.contains('/') {
        glob_match(pattern, path) || glob_match(pattern.trim_start_matches('/'), path.trim_start_matches('/'))
    } else {
        glob_match(pattern, path.rsplit('/').next().unwrap_or(path))
    }
}

fn same_version(a: &CatalogEntry, b: &CatalogEntry) -> bool {
    let dir = a.file_type == "directory";
    a.file_type == b.file_type
        && a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && (dir || (a.size == b.size && a.mtime_secs == b.mtime_secs && a.mtime_nanos == b.mtime_nanos && a.fingerprint == b.fingerprint))
}

/// Reads every volume's filesystem of one snapshot into a catalog. A regular
/// file whose chunk placement equals its entry in `previous` (the same image's
/// catalog before) takes that entry's content hash; any other is read and hashed.
fn build_catalog(
    repo: &Repository,
    index: &Index,
    id: &crate::ids::Id,
    previous: Option<&Catalog>,
    bytes_read: &mut u64,
) -> Result<Catalog> {
    let before: HashMap<&str, &CatalogEntry> = previous.into_iter().flat_map(|c| &c.entries).map(|e| (e.path.as_str(), e)).collect();
    let snap = index.snapshot(id)?.context("snapshot vanished from the index")?;
    let tree = GuestTree::open(repo, index, &snap)?;
    let mut catalog = Catalog::default();
    for i in 0..tree.volume_count() {
        let fs = match tree.fs(i) {
            Ok(fs) => fs,
            Err(e) => {
                catalog.problems.push(format!("{e:#}"));
                continue;
            }
        };
        let base = tree.display_path(i, "");
        walk_tree(fs, fs.root(), &mut |w| {
            let path = if w.rel.is_empty() { base.clone() } else { format!("{}/{}", base.trim_end_matches('/'), w.rel) };
            let (fingerprint, placement) = match w.meta.file_type {
                FileType::Regular => {
                    let placement = chunk_fingerprint(&tree, i, w.ino)?.map(|p| p.to_vec());
                    let unmoved = before
                        .get(path.as_str())
                        .filter(|b| placement.is_some() && b.placement == placement && b.size == w.meta.size && b.fingerprint.is_some());
                    let hash = match unmoved {
                        Some(b) => b.fingerprint.clone(),
                        None => Some(content_hash(fs, w.ino, w.meta.size)?.to_vec()),
                    };
                    (hash, placement)
                }
                FileType::Symlink => (Some(blake3::hash(&fs.read_link(w.ino)?).as_bytes().to_vec()), None),
                _ => (None, None),
            };
            let file_type = serde_json::to_value(w.meta.file_type)?.as_str().unwrap_or("unknown").to_string();
            catalog.entries.push(CatalogEntry {
                path,
                file_type,
                size: w.meta.size,
                mtime_secs: w.meta.mtime.secs,
                mtime_nanos: w.meta.mtime.nanos,
                mode: w.meta.mode,
                uid: w.meta.uid,
                gid: w.meta.gid,
                fingerprint,
                placement,
            });
            Ok(true)
        })
        .with_context(|| format!("reading {}", if base.is_empty() { "/" } else { &base }))?;
    }
    *bytes_read += tree.bytes_read();
    Ok(catalog)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_without_a_slash_match_the_last_component() {
        assert!(matches("*.conf", "p1/etc/resolv.conf"));
        assert!(!matches("etc", "p1/etc/resolv.conf"));
        assert!(matches("p1/etc/*", "p1/etc/resolv.conf"));
        assert!(matches("/etc/passwd", "/etc/passwd"));
        assert!(matches("etc/passwd", "/etc/passwd"));
    }
}

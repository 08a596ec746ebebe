//! Checking a repository: every snapshot's extent lists readable and every
//! chunk they name present in some pack; every indexed pack present with the
//! right size; with `--read-data` (or a subset), every blob decompressed and
//! verified against its id. A damaged or missing chunk is named with the
//! snapshots it affects and dropped from the index, so the next archive of the
//! same data stores it again.

use crate::ids::Id;
use crate::index::{Index, IndexedRepository};
use crate::progress::SharedProgress;
use crate::repository::pack::{self, PackEntry};
use crate::repository::Repository;
use crate::warnings::Warnings;
use anyhow::Result;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Fraction (0..=1) of packs whose data is read and verified.
    pub read_data_fraction: f64,
}

/// The `imgarc check` flags (each doc line is its `--help`); [`CheckFlags::options`] makes the [`CheckOptions`].
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct CheckFlags {
    /// Read and verify every chunk
    #[cfg_attr(feature = "clap", arg(long, conflicts_with = "read_data_subset"))]
    pub read_data: bool,
    /// Read and verify a random subset of packs, e.g. 10%
    #[cfg_attr(feature = "clap", arg(long))]
    pub read_data_subset: Option<String>,
}

impl CheckFlags {
    pub fn options(&self) -> Result<CheckOptions> {
        let read_data_fraction = match (&self.read_data_subset, self.read_data) {
            (Some(s), _) => parse_percent(s)?,
            (None, true) => 1.0,
            (None, false) => 0.0,
        };
        Ok(CheckOptions { read_data_fraction })
    }
}

/// `10%` (or `10`): a fraction of more than 0 and at most 1.
pub fn parse_percent(s: &str) -> Result<f64> {
    use anyhow::Context;
    let v: f64 =
        s.trim().trim_end_matches('%').parse().with_context(|| format!("--read-data-subset {s:?}: expected a percentage like 10%"))?;
    if !(v > 0.0 && v <= 100.0) {
        anyhow::bail!("--read-data-subset {s:?}: must be more than 0% and at most 100%");
    }
    Ok(v / 100.0)
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub snapshots_checked: usize,
    pub packs_checked: usize,
    pub packs_read: usize,
    pub blobs_verified: u64,
    pub damaged_chunks: Vec<DamagedChunkReport>,
    /// Whether the backend keeps the objects immutable (S3 Object Lock), and why not.
    pub immutability: Option<crate::object_lock::Immutability>,
    /// Object lock: per snapshot, when its data becomes deletable.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots_retained: Vec<crate::object_lock::SnapshotRetention>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DamagedChunkReport {
    pub chunk: String,
    pub pack: Option<String>,
    pub problem: String,
    /// Snapshot ids (with names) that reference the chunk.
    pub snapshots: Vec<String>,
}

pub fn check(repo: &Repository, index: &mut Index, opts: &CheckOptions, progress: &SharedProgress) -> Result<CheckReport> {
    if opts.read_data_fraction > 0.0 {
        repo.require_full_key("check --read-data")?;
    }
    let mut report = CheckReport::default();
    let warnings = Warnings::new();
    // A write-only key reads packs' trailers, index objects and snapshot heads,
    // not the extent lists (sealed to the data key): those it leaves unchecked.
    let write_only = repo.key_kind() == Some(crate::crypto::KeyKind::WriteOnly);
    // chunk → (pack, problem) for every copy found bad.
    let mut damaged: BTreeMap<Id, (Option<Id>, String)> = BTreeMap::new();

    // 0. Index objects: one the cache could not take in (damaged, unauthentic) is an error, named.
    let taken_in = index.index_object_keys()?;
    for (key, size) in repo.list_index_objects()?.into_iter().filter(|(k, _)| !taken_in.contains(k)) {
        if let Err(e) = repo.read_index_object(&key, Some(size)) {
            report.errors.push(format!("index object {key}: {e:#}"));
        }
    }

    // 1. Packs: present, right size.
    let in_repo: HashMap<Id, u64> = repo.list_packs()?.into_iter().collect();
    let indexed = index.packs()?;
    for (pack, size) in &indexed {
        let actual = match in_repo.get(pack) {
            Some(s) => Some(*s),
            // Listings may lag; ask for the object itself before calling it missing.
            // Only the store's own "not found" means missing: any other failure
            // (timeout, 5xx, permissions) says nothing about the pack, and
            // dropping its rows would make archives store its chunks again.
            None => match repo.pack_size(pack) {
                Ok(s) => Some(s),
                Err(e) if e.is_not_found() => None,
                Err(e) => {
                    report.errors.push(format!("pack {}: cannot check it: {e}", pack.to_hex()));
                    continue;
                }
            },
        };
        let problem = match actual {
            None => Some("pack is missing".to_string()),
            Some(a) if a != *size => Some(format!("pack is {a} bytes, the index says {size} (truncated or damaged)")),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            report.errors.push(format!("pack {}: {problem}", pack.to_hex()));
            for e in index.pack_entries(pack)? {
                damaged.entry(e.id).or_insert((Some(*pack), problem.clone()));
            }
            index.remove_pack(pack)?;
        }
    }
    report.packs_checked = indexed.len();
    for pack in in_repo.keys().filter(|p| !indexed.contains_key(p)) {
        warnings.warn(format!(
            "pack {} is in the repository but in no index object (left by an interrupted archive?); `imgarc index rebuild` adopts it",
            pack.to_hex()
        ));
    }

    // 2. Data: read packs and verify every blob.
    if opts.read_data_fraction > 0.0 {
        let mut packs: Vec<(Id, u64)> = index.packs()?.into_iter().collect();
        packs.sort();
        if opts.read_data_fraction < 1.0 {
            use rand::seq::SliceRandom;
            packs.shuffle(&mut rand::rng());
            let n = ((packs.len() as f64 * opts.read_data_fraction).ceil() as usize).min(packs.len());
            packs.truncate(n);
        }
        progress.set_length(packs.iter().map(|p| p.1).sum());
        for (pack, size) in &packs {
            let expected = index.pack_entries(pack)?;
            let bad = match verify_pack(repo, pack, &expected) {
                Ok((bad, damage)) => {
                    match damage {
                        Some(PackDamage::Trailer(why)) => report.errors.push(format!(
                            "pack {}: its header or trailer is damaged ({why}); its blobs are intact and read through the index objects, but the pack no longer describes itself",
                            pack.to_hex()
                        )),
                        Some(PackDamage::Name) => warnings.warn(format!(
                            "pack {}: its bytes no longer match its name (a header or gap byte changed); its trailer and every blob are intact",
                            pack.to_hex()
                        )),
                        None => {}
                    }
                    bad
                }
                Err(e) => {
                    // Not read is not damaged: the locations stay.
                    report.errors.push(format!("pack {}: cannot read it: {e}", pack.to_hex()));
                    progress.inc(*size);
                    continue;
                }
            };
            report.packs_read += 1;
            report.blobs_verified += expected.len() as u64;
            for (id, problem) in bad {
                report.errors.push(format!("chunk {} in pack {}: {problem}", id.to_hex(), pack.short()));
                index.remove_location(&id, pack)?;
                damaged.entry(id).or_insert((Some(*pack), problem));
            }
            progress.inc(*size);
        }
    }

    // 3. Snapshots: trees readable, every chunk still has a location.
    // One the cache could not take in (unreadable object or extent lists) is an error, named.
    let cached: std::collections::HashSet<Id> = index.snapshot_rows()?.into_iter().map(|s| s.id).collect();
    for id in repo.list_snapshot_ids()?.into_iter().filter(|id| !cached.contains(id)) {
        report.snapshots_checked += 1;
        let why = match repo.load_snapshot(&id) {
            Err(e) if !write_only => format!("cannot read it: {e:#}"),
            Err(_) => match repo.load_snapshot_head(&id) {
                Err(e) => format!("cannot read its head: {e:#}"),
                Ok(_) => "readable now, but not in the index yet (run the check again)".to_string(),
            },
            Ok(snap) => match IndexedRepository::new(repo, index).referenced_ids(&snap) {
                Err(e) => format!("cannot read its extent lists: {e:#}"),
                Ok(_) => "readable now, but not in the index yet (run the check again)".to_string(),
            },
        };
        report.errors.push(format!("snapshot {}: {why}", id.to_hex()));
    }
    if write_only {
        warnings.warn(
            "checked with a write-only key: packs, index objects and snapshot heads only; the snapshots' extent lists are sealed for full keys"
                .to_string(),
        );
    }
    let horizon = crate::retention::horizon(chrono::Utc::now());
    for row in index.snapshot_rows()? {
        report.snapshots_checked += 1;
        if crate::retention::is_future(&row.time, horizon) {
            warnings.warn(format!(
                "snapshot {} ({}) is dated {}, in the future: retention ignores it (check the clock of the host that wrote it)",
                row.id.to_hex(),
                row.name,
                row.time
            ));
        }
        let Some(snap) = index.snapshot(&row.id)?.filter(|_| !write_only) else {
            continue;
        };
        let refs = match IndexedRepository::new(repo, index).referenced_ids(&snap) {
            Ok(r) => r,
            Err(e) => {
                report.errors.push(format!("snapshot {} ({}): cannot read its extent lists: {e:#}", row.id.to_hex(), row.name));
                continue;
            }
        };
        let ids: Vec<Id> = refs.into_iter().collect();
        let present = index.contains_many(&ids)?;
        let mut complete = true;
        for id in ids.iter().filter(|id| !present.contains(id)) {
            complete = false;
            damaged.entry(*id).or_insert((None, "not stored in any pack".into()));
        }
        // Reading data includes the layout recipe: decoded as restore will decode it.
        if opts.read_data_fraction > 0.0 && complete {
            if let Err(e) = check_recipe(IndexedRepository::new(repo, index), &snap) {
                report.errors.push(format!("snapshot {} ({}): layout recipe: {e:#}", row.id.to_hex(), row.name));
            }
        }
    }

    if !damaged.is_empty() {
        let ids: Vec<Id> = damaged.keys().copied().collect();
        let users = IndexedRepository::new(repo, index).snapshots_using(&ids)?;
        // A bad copy matters only if no good copy remains.
        let still_present = index.contains_many(&ids)?;
        for (id, (pack, problem)) in damaged {
            if still_present.contains(&id) {
                warnings.warn(format!("chunk {} had a bad copy ({problem}) but another copy is intact", id.to_hex()));
                continue;
            }
            let snaps: Vec<String> = users.get(&id).into_iter().flatten().map(|(s, n)| format!("{} ({n})", s.to_hex())).collect();
            if !snaps.is_empty() {
                report.errors.push(format!("chunk {} is lost ({problem}); affected snapshots: {}", id.to_hex(), snaps.join(", ")));
            }
            report.damaged_chunks.push(DamagedChunkReport {
                chunk: id.to_hex(),
                pack: pack.map(|p| p.to_hex()),
                problem,
                snapshots: snaps,
            });
        }
    }
    let lock = repo.config().object_lock;
    let immutability = crate::object_lock::Immutability::of(lock.as_ref(), repo.lock_backend());
    if lock.is_some() {
        if !immutability.enforced {
            warnings.warn(immutability.line());
        }
        report.snapshots_retained = crate::object_lock::snapshot_dates(repo, index)?;
    }
    report.immutability = Some(immutability);
    report.ok = report.errors.is_empty();
    report.warnings = warnings.take();
    Ok(report)
}

/// Decodes a qcow2 snapshot's recipe with restore's own reader and decoder, and checks it
/// against what the snapshot records (file length, virtual size, literal stream length).
fn check_recipe(source: IndexedRepository, snap: &crate::repository::snapshot::Snapshot) -> Result<()> {
    let Some((recipe, literals)) = snap.layout.recipe_streams() else {
        return Ok(());
    };
    let r = crate::format::qcow2::decode_recipe(&source.read_recipe(recipe)?)?;
    if r.file_len != snap.logical_bytes {
        anyhow::bail!("rebuilds {} bytes, the snapshot records {}", r.file_len, snap.logical_bytes);
    }
    if r.virtual_size != snap.guest.size {
        anyhow::bail!("virtual size {} differs from the guest stream's {}", r.virtual_size, snap.guest.size);
    }
    if r.literal_len() > literals.size {
        anyhow::bail!("references {} literal bytes, the literal stream holds {}", r.literal_len(), literals.size);
    }
    Ok(())
}

/// Reads a whole pack and returns the blobs that are not intact. A pack that
/// is gone makes every blob bad; a read that fails otherwise is an error, as
/// it proves nothing about the blobs.
/// What is wrong with a pack as a whole, beyond its blobs.
enum PackDamage {
    /// Its own header or trailer no longer parses or opens: the pack no longer
    /// describes itself (what `index rebuild` relies on).
    Trailer(String),
    /// Its bytes no longer hash to its name, yet its trailer and blobs are intact
    /// (a header or gap byte changed).
    Name,
}

/// The blobs of a pack found bad (id, why), and what is wrong with the pack as a whole.
type PackVerdict = (Vec<(Id, String)>, Option<PackDamage>);

fn verify_pack(repo: &Repository, pack: &Id, expected: &[PackEntry]) -> Result<PackVerdict, crate::backend::BackendError> {
    let bytes = match repo.read_pack(pack) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok((expected.iter().map(|x| (x.id, "pack is missing".to_string())).collect(), None)),
        Err(e) => return Err(e),
    };
    if Id::of(&bytes) != *pack {
        // The pack's name is its hash: some byte changed. Find which blobs.
        let trailer = pack::parse_pack(&bytes, &repo.blob_limits(), repo.keys().map(|k| &**k));
        let mut bad: Vec<(Id, String)> = Vec::new();
        for e in expected {
            let end = e.offset + e.stored_len as u64;
            let r = if end as usize <= bytes.len() {
                repo.decode_blob(e, &bytes[e.offset as usize..end as usize]).map(|_| ())
            } else {
                Err(anyhow::anyhow!("pack is truncated"))
            };
            if let Err(err) = r {
                bad.push((e.id, format!("{err:#}")));
            }
        }
        let damage = match trailer {
            Err(e) => Some(PackDamage::Trailer(format!("{e:#}"))),
            Ok(_) if bad.is_empty() => Some(PackDamage::Name),
            Ok(_) => None,
        };
        return Ok((bad, damage));
    }
    use rayon::prelude::*;
    let bad = expected
        .par_iter()
        .filter_map(|e| {
            let end = (e.offset + e.stored_len as u64) as usize;
            let r =
                bytes.get(e.offset as usize..end).ok_or_else(|| anyhow::anyhow!("outside the pack")).and_then(|s| repo.decode_blob(e, s));
            r.err().map(|err| (e.id, format!("{err:#}")))
        })
        .collect();
    Ok((bad, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{local::LocalBackend, Backend, BackendError, BackendResult, ObjectInfo};
    use crate::repository::config::Config;
    use crate::repository::pack::{encode_blob, BlobKind, PackBuilder};
    use std::sync::Arc;

    /// A store whose listing lags (no packs yet) and whose HEAD and GET of
    /// packs fail with a transient error, as an overloaded object store does.
    #[derive(Debug)]
    struct Unreachable(LocalBackend);

    fn transient(op: &'static str, key: &str) -> BackendError {
        BackendError::Io { op, key: key.into(), source: std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out") }
    }

    impl Backend for Unreachable {
        fn location(&self) -> String {
            self.0.location()
        }
        fn put(&self, key: &str, data: &[u8]) -> BackendResult<()> {
            self.0.put(key, data)
        }
        fn get(&self, key: &str) -> BackendResult<Vec<u8>> {
            if key.starts_with("data/") {
                return Err(transient("get", key));
            }
            self.0.get(key)
        }
        fn get_range(&self, key: &str, offset: u64, length: u64) -> BackendResult<Vec<u8>> {
            self.0.get_range(key, offset, length)
        }
        fn size(&self, key: &str) -> BackendResult<u64> {
            if key.starts_with("data/") {
                return Err(transient("size", key));
            }
            self.0.size(key)
        }
        fn list(&self, prefix: &str) -> BackendResult<Vec<ObjectInfo>> {
            if prefix.starts_with("data/") {
                return Ok(Vec::new());
            }
            self.0.list(prefix)
        }
        fn delete(&self, key: &str) -> BackendResult<()> {
            self.0.delete(key)
        }
    }

    #[test]
    fn a_pack_that_cannot_be_reached_is_an_error_not_a_loss() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(Arc::new(LocalBackend::new(dir.path().join("repo"))), Config::new(64 << 10, 3).unwrap()).unwrap();
        let mut builder = PackBuilder::new();
        builder.add(&encode_blob(BlobKind::Data, &[42u8; 5000], 3));
        let written = repo.write_pack(builder).unwrap();
        drop(repo);

        let flaky = Repository::open(Arc::new(Unreachable(LocalBackend::new(dir.path().join("repo"))))).unwrap();
        let mut index = Index::open_at(&dir.path().join("index.sqlite"), &flaky.config().id).unwrap();
        index.sync(&flaky).unwrap();
        assert!(index.packs().unwrap().contains_key(&written.id));

        for fraction in [0.0, 1.0] {
            let opts = CheckOptions { read_data_fraction: fraction };
            let report = check(&flaky, &mut index, &opts, &crate::progress::none()).unwrap();
            assert!(!report.ok, "an unreachable pack is not a pass");
            assert!(report.errors.iter().any(|e| e.contains("cannot") && e.contains("timed out")), "{:?}", report.errors);
            assert!(report.damaged_chunks.is_empty(), "nothing is known to be damaged: {:?}", report.damaged_chunks);
            assert!(index.packs().unwrap().contains_key(&written.id), "check dropped a pack it could not reach (read_data {fraction})");
            assert!(index.contains_many(&[written.entries[0].id]).unwrap().contains(&written.entries[0].id));
        }
    }
}

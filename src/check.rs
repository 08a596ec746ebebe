//! Checking a repository: every snapshot's extent lists readable and every
//! chunk they name present in some pack; every indexed pack present with the
//! right size; with `--read-data` (or a subset), every blob decompressed and
//! verified against its id. A damaged or missing chunk is named with the
//! snapshots it affects and dropped from the index, so the next archive of the
//! same data stores it again.

use crate::ids::Id;
use crate::index::Index;
use crate::repository::pack::{self, PackEntry};
use crate::repository::{pack_key, Repository};
use anyhow::Result;
use indicatif::ProgressBar;
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Fraction (0..=1) of packs whose data is read and verified.
    pub read_data_fraction: f64,
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
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DamagedChunkReport {
    pub chunk: String,
    pub pack: Option<String>,
    pub problem: String,
    /// Snapshot ids (with names) that reference the chunk.
    pub snapshots: Vec<String>,
}

/// For each id in `ids`, the snapshots (id, name) whose streams reference it.
pub fn snapshots_using(repo: &Repository, index: &Index, ids: &[Id]) -> Result<HashMap<Id, Vec<(Id, String)>>> {
    let wanted: HashSet<Id> = ids.iter().copied().collect();
    let mut out: HashMap<Id, Vec<(Id, String)>> = HashMap::new();
    for row in index.snapshot_rows()? {
        let Some(snap) = index.snapshot(&row.id)? else {
            continue;
        };
        // Tree ids are in the snapshot itself: a lost tree is attributed even when
        // the extent list it holds can no longer be read.
        let mut refs: HashSet<Id> = snap.streams().iter().flat_map(|s| s.trees.iter().copied()).collect();
        if let Ok(more) = index.referenced_ids(repo, &snap) {
            refs.extend(more);
        }
        for id in refs.intersection(&wanted) {
            out.entry(*id).or_default().push((row.id, row.name.clone()));
        }
    }
    Ok(out)
}

pub fn check(repo: &Repository, index: &mut Index, opts: &CheckOptions, progress: &ProgressBar) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    // chunk → (pack, problem) for every copy found bad.
    let mut damaged: BTreeMap<Id, (Option<Id>, String)> = BTreeMap::new();

    // 1. Packs: present, right size.
    let in_repo: HashMap<Id, u64> = repo.list_packs()?.into_iter().collect();
    let indexed = index.packs()?;
    for (pack, size) in &indexed {
        let actual = match in_repo.get(pack) {
            Some(s) => Some(*s),
            // Listings may lag; ask for the object itself before calling it missing.
            None => repo.backend().size(&pack_key(pack)).ok(),
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
        report.warnings.push(format!(
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
            packs.shuffle(&mut rand::thread_rng());
            let n = ((packs.len() as f64 * opts.read_data_fraction).ceil() as usize).min(packs.len());
            packs.truncate(n);
        }
        progress.set_length(packs.iter().map(|p| p.1).sum());
        for (pack, size) in &packs {
            let expected = index.pack_entries(pack)?;
            let bad = verify_pack(repo, pack, &expected);
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
            Err(e) => format!("cannot read it: {e:#}"),
            Ok(snap) => match index.referenced_ids(repo, &snap) {
                Err(e) => format!("cannot read its extent lists: {e:#}"),
                Ok(_) => "readable now, but not in the index yet (run the check again)".to_string(),
            },
        };
        report.errors.push(format!("snapshot {}: {why}", id.to_hex()));
    }
    for row in index.snapshot_rows()? {
        report.snapshots_checked += 1;
        let Some(snap) = index.snapshot(&row.id)? else {
            continue;
        };
        let refs = match index.referenced_ids(repo, &snap) {
            Ok(r) => r,
            Err(e) => {
                report.errors.push(format!("snapshot {} ({}): cannot read its extent lists: {e:#}", row.id.to_hex(), row.name));
                continue;
            }
        };
        let ids: Vec<Id> = refs.into_iter().collect();
        let present = index.contains_many(&ids)?;
        for id in ids.iter().filter(|id| !present.contains(id)) {
            damaged.entry(*id).or_insert((None, "not stored in any pack".into()));
        }
    }

    if !damaged.is_empty() {
        let ids: Vec<Id> = damaged.keys().copied().collect();
        let users = snapshots_using(repo, index, &ids)?;
        // A bad copy matters only if no good copy remains.
        let still_present = index.contains_many(&ids)?;
        for (id, (pack, problem)) in damaged {
            if still_present.contains(&id) {
                report.warnings.push(format!("chunk {} had a bad copy ({problem}) but another copy is intact", id.to_hex()));
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
    report.ok = report.errors.is_empty();
    Ok(report)
}

/// Reads a whole pack and returns the blobs that are not intact.
fn verify_pack(repo: &Repository, pack: &Id, expected: &[PackEntry]) -> Vec<(Id, String)> {
    let bytes = match repo.backend().get(&pack_key(pack)) {
        Ok(b) => b,
        Err(e) => return expected.iter().map(|x| (x.id, format!("cannot read pack: {e}"))).collect(),
    };
    if Id::of(&bytes) != *pack {
        // The pack's name is its hash: some byte changed. Find which blobs.
        let trailer_ok = pack::parse_pack(&bytes).is_ok();
        let mut bad: Vec<(Id, String)> = Vec::new();
        for e in expected {
            let end = e.offset + e.stored_len as u64;
            let r = if end as usize <= bytes.len() {
                pack::decode_blob(e, &bytes[e.offset as usize..end as usize]).map(|_| ())
            } else {
                Err(anyhow::anyhow!("pack is truncated"))
            };
            if let Err(err) = r {
                bad.push((e.id, format!("{err:#}")));
            }
        }
        if bad.is_empty() && trailer_ok {
            // Only padding or the trailer changed; the blobs are fine.
            return vec![];
        }
        return bad;
    }
    use rayon::prelude::*;
    expected
        .par_iter()
        .filter_map(|e| {
            let end = (e.offset + e.stored_len as u64) as usize;
            let r =
                bytes.get(e.offset as usize..end).ok_or_else(|| anyhow::anyhow!("outside the pack")).and_then(|s| pack::decode_blob(e, s));
            r.err().map(|err| (e.id, format!("{err:#}")))
        })
        .collect()
}

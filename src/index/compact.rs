//! `index compact`: merges many small index objects (a writer adds one per
//! pack) into few large ones, so that a new host's catch-up reads tens of
//! objects instead of tens of thousands.
//!
//! Two-phase, like prune's deletions: a run writes the merged objects; the
//! small objects they replace are deleted only by a run at least the grace
//! period later (the same run when the grace is zero). An object is deleted
//! only when every pack it lists, with the very same entries, is listed by
//! another index object that stays and was written at least the grace period
//! ago, so every host's listing has had the time to show it: a host whose
//! cache lists the old objects finds the new ones at its next catch-up before
//! it confirms the old ones gone (`Index::sync` adds before it removes), and
//! never loses a pack from its view. Readers take a pack listed by several
//! objects once (`index_object_packs`), so a run killed between the phases, or
//! among the deletions, leaves duplicates the next run deletes.
//! format-spec/README.md, "Index objects".

use super::{catchup::batches_of_blobs, Index, MAX_BLOBS_PER_INDEX_OBJECT};
use crate::ids::Id;
use crate::repository::index_object::{IndexObject, IndexedPack};
use crate::repository::Repository;
use crate::util::crash_point;
use crate::warnings::Warnings;
use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use std::collections::HashSet;

/// The default size of a merged index object: some 10 MiB of JSON, 1-2 MiB stored.
pub const DEFAULT_TARGET_BLOBS: usize = 100_000;

/// What a compaction does (the `imgarc index compact` flags: each doc line is its `--help`).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct CompactOptions {
    /// Show what would be merged and deleted, change nothing
    #[cfg_attr(feature = "clap", arg(long))]
    pub dry_run: bool,
    /// Blobs per merged index object; objects with fewer than half as many are merged
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT_TARGET_BLOBS))]
    pub target_blobs: usize,
    /// Time between writing a merged object and deleting the objects it replaces (s, m, h, d); must exceed the listing lag of the store
    #[cfg_attr(feature = "clap", arg(long, default_value = crate::prune::DEFAULT_GRACE, value_parser = crate::prune::parse_grace))]
    pub grace: chrono::Duration,
    /// The compaction's clock (the time the options were made).
    #[cfg_attr(feature = "clap", arg(skip = Utc::now()))]
    pub now: DateTime<Utc>,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions { dry_run: false, target_blobs: DEFAULT_TARGET_BLOBS, grace: chrono::Duration::hours(23), now: Utc::now() }
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CompactReport {
    pub dry_run: bool,
    /// Index objects read (all of them, as listed when the run started).
    pub index_objects: usize,
    /// Merged index objects written (a dry run: that would be), and the packs they list.
    pub objects_written: usize,
    pub packs_merged: usize,
    /// Index objects deleted (a dry run: that would be): every pack they list is in an older merged one.
    pub objects_deleted: usize,
    /// Index objects replaced by an object younger than the grace period: a later compaction deletes them.
    pub objects_awaiting_grace: usize,
    /// Unreadable index objects (left alone) and the like.
    pub warnings: Vec<String>,
}

/// One index object as read, with what the classification needs.
struct Listed {
    key: String,
    obj: IndexObject,
    blobs: usize,
    created: Option<DateTime<Utc>>,
}

/// A pack as an index object lists it: its id and a digest of its entries.
fn listing_of(p: &IndexedPack) -> (Id, Id) {
    (p.id, Id::of(&serde_json::to_vec(p).expect("an indexed pack serializes")))
}

/// What to do with each object: indices into the slice.
struct Plan {
    /// Every pack listed identically by a kept object old enough.
    doomed: Vec<usize>,
    /// Covered only by objects younger than the grace period.
    awaiting: usize,
    /// Kept, not covered, and smaller than half the target: to be merged.
    small: Vec<usize>,
}

/// Largest first (merged objects cover the small ones they replace), then by
/// key, so that the outcome does not depend on the listing's order.
fn plan(objects: &[Listed], opts: &CompactOptions) -> Plan {
    let mut order: Vec<usize> = (0..objects.len()).collect();
    order.sort_by(|&a, &b| objects[b].blobs.cmp(&objects[a].blobs).then_with(|| objects[a].key.cmp(&objects[b].key)));
    let (mut covered_aged, mut covered_any) = (HashSet::new(), HashSet::new());
    let mut plan = Plan { doomed: Vec::new(), awaiting: 0, small: Vec::new() };
    for i in order {
        let o = &objects[i];
        let packs: Vec<(Id, Id)> = o.obj.packs.iter().map(listing_of).collect();
        if packs.iter().all(|p| covered_aged.contains(p)) {
            plan.doomed.push(i);
        } else if packs.iter().all(|p| covered_any.contains(p)) {
            plan.awaiting += 1;
        } else {
            if o.created.is_some_and(|t| t + opts.grace <= opts.now) {
                covered_aged.extend(packs.iter().copied());
            }
            covered_any.extend(packs);
            if o.blobs < opts.target_blobs / 2 {
                plan.small.push(i);
            }
        }
    }
    plan
}

/// Merges small index objects and deletes those merged ones replace; the
/// caller holds the `prune` singleton lock (prune rewrites index objects too).
/// The cache follows: merged objects are added, deleted ones removed.
pub fn compact(repo: &Repository, index: &mut Index, opts: &CompactOptions) -> Result<CompactReport> {
    if opts.target_blobs < 2 || opts.target_blobs > MAX_BLOBS_PER_INDEX_OBJECT {
        bail!("--target-blobs {} is outside 2..={MAX_BLOBS_PER_INDEX_OBJECT}", opts.target_blobs);
    }
    repo.require_delete_permission("index compact")?;
    let warnings = Warnings::new();
    let listed = repo.list_index_objects()?;
    let mut objects = Vec::with_capacity(listed.len());
    crate::util::fetch_parallel(
        &listed,
        crate::util::fetch_threads(),
        || Ok(()),
        |_, (key, size)| repo.read_index_object(key, Some(*size)),
        |(key, _), read| {
            match read {
                Ok(obj) => objects.push(Listed {
                    key: key.clone(),
                    blobs: obj.packs.iter().map(|p| p.blobs.len()).sum(),
                    created: crate::util::parse_rfc3339(&obj.created),
                    obj,
                }),
                // Deleted since the listing (a prune): nothing to merge.
                Err(e) if crate::backend::is_not_found(&e) => {}
                // Never merged nor deleted: `check` and `index rebuild` are for it.
                Err(e) => warnings.warn(format!("skipping {key}: {e:#}; left alone")),
            }
            Ok(())
        },
    )?;
    let mut report = CompactReport { dry_run: opts.dry_run, index_objects: objects.len(), ..Default::default() };

    let first = plan(&objects, opts);
    if first.small.len() >= 2 {
        let mut seen = HashSet::new();
        let mut packs = Vec::new();
        for &i in &first.small {
            for p in &objects[i].obj.packs {
                if seen.insert(listing_of(p)) {
                    packs.push(p.clone());
                }
            }
        }
        report.packs_merged = packs.len();
        for batch in batches_of_blobs(packs, opts.target_blobs) {
            report.objects_written += 1;
            let obj = IndexObject::new(batch);
            if opts.dry_run {
                continue;
            }
            let key = repo.write_index_object(&obj)?;
            index.add_index_object(&key, &obj)?;
            objects.push(Listed { key, blobs: obj.packs.iter().map(|p| p.blobs.len()).sum(), created: Some(opts.now), obj });
        }
        crash_point("compact-written");
    }

    // Again with what was just written: with a zero grace it replaces the small objects at once.
    let second = plan(&objects, opts);
    report.objects_awaiting_grace = second.awaiting;
    report.objects_deleted = second.doomed.len();
    if !opts.dry_run {
        for &i in &second.doomed {
            repo.delete_index_object(&objects[i].key)?;
            index.remove_index_object(&objects[i].key)?;
            crash_point("compact-deleted-one");
        }
    }
    report.warnings = warnings.take();
    Ok(report)
}

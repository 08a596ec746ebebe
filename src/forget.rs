//! Forget: removes snapshots by a retention policy ([`crate::retention`]) or
//! by id, and reports what it keeps and why. Frees no space by itself:
//! [`crate::prune`] does that. The caller holds a non-exclusive lock (unless
//! it is a dry run) and passes an index caught up with the repository.

use crate::ids::Id;
use crate::index::Index;
use crate::repository::snapshot::{Snapshot, Source};
use crate::repository::Repository;
use crate::retention::{self, Item, Policy};
use crate::select::{image_group, SnapshotSelector};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashSet;

/// How snapshots are grouped before the policy applies to each group:
/// per Glance image id (else name), per name, or all together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum GroupBy {
    #[default]
    Image,
    Name,
    None,
}

/// What `forget` removes (the `imgarc forget` flags: each doc line is its `--help`).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
// The selector's --latest is refused here (see `validate`): not offered in --help.
#[cfg_attr(feature = "clap", command(mut_arg("latest", |a| a.hide(true))))]
pub struct ForgetOptions {
    /// Snapshots to remove by id (or unique prefix), in addition to the policy
    pub snapshots: Vec<String>,
    #[cfg_attr(feature = "clap", command(flatten))]
    pub policy: Policy,
    /// Apply the policy per image (Glance image id, else name), per name, or to all snapshots at once
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value = "image"))]
    pub group_by: GroupBy,
    /// Which snapshots the policy considers (`--name`, `--tag`, `--image`; `--latest` is refused: use --keep-last)
    #[cfg_attr(feature = "clap", command(flatten))]
    pub select: SnapshotSelector,
    /// Also let the policy remove the last snapshot of images deleted upstream
    #[cfg_attr(feature = "clap", arg(long))]
    pub include_deleted: bool,
    /// Show what would be removed, remove nothing
    #[cfg_attr(feature = "clap", arg(long))]
    pub dry_run: bool,
}

impl ForgetOptions {
    /// Refuses options that would remove nothing (no policy and no ids), and
    /// `--latest`: narrowing the policy to the newest N would let it remove
    /// only among the newest, never what is older, surely not what was meant.
    pub fn validate(&self) -> Result<()> {
        if self.select.latest.is_some() {
            bail!("forget --latest: not a selection forget takes (the policy would only see the newest N); keep the newest N with --keep-last N");
        }
        self.select.validate()?;
        if self.policy.is_empty() && self.snapshots.is_empty() {
            bail!("no policy given (--keep-last, --keep-daily, …, --keep-tag) and no snapshot ids: nothing to do, nothing removed");
        }
        Ok(())
    }
}

/// One snapshot and the verdict on it. A snapshot named by id that the index
/// cache could not read has only `id` and `reasons`.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetEntry {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Why it is kept, or why it is removed when named on the command line.
    pub reasons: Vec<String>,
    /// Dated after now + the clock skew allowed (see `retention::horizon`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub future: Option<bool>,
    /// S3 Object Lock: the removed snapshot's object is hidden (a delete marker) but its
    /// version stays until this date (RFC 3339); `prune` deletes it, and its data no
    /// other snapshot needs, after that.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retained_until: Option<String>,
}

impl ForgetEntry {
    /// True for a snapshot the index cache could not read (named by its full id).
    pub fn unreadable(&self) -> bool {
        self.name.is_none()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ForgetReport {
    pub dry_run: bool,
    pub keep: Vec<ForgetEntry>,
    /// What is (or, in a dry run, would be) removed; unreadable snapshots last.
    pub remove: Vec<ForgetEntry>,
    /// Snapshots actually removed (0 in a dry run).
    pub removed: u64,
}

fn group_key(by: GroupBy, snap: &Snapshot) -> String {
    match by {
        GroupBy::Image => image_group(&snap.source, &snap.name),
        GroupBy::Name => format!("name {}", snap.name),
        GroupBy::None => "all".to_string(),
    }
}

struct Candidate {
    id: Id,
    snap: Snapshot,
    item: Item,
}

/// Applies the policy (and the ids named) and, unless a dry run, removes the
/// snapshots it does not keep from the repository and the index.
pub fn forget(repo: &Repository, index: &mut Index, opts: &ForgetOptions) -> Result<ForgetReport> {
    // A write-only host may add history, never remove it: a stolen one cannot erase the backups.
    repo.require_full_key("forget")?;
    opts.validate()?;
    // Even with nothing to remove: a host whose credentials may not delete learns it on its first run.
    repo.require_delete_permission("forget")?;
    if !opts.dry_run {
        repo.tidy_superseded()?;
    }
    let policy = &opts.policy;
    let mut named: HashSet<Id> = HashSet::new();
    // Snapshots the cache could not read (damaged object or trees): named by
    // their full id, they can still be removed, so they stop blocking `prune`.
    let mut unreadable: Vec<Id> = Vec::new();
    for s in &opts.snapshots {
        match index.resolve_snapshot(s) {
            Ok(id) => {
                named.insert(id);
            }
            Err(e) => match Id::from_hex(s.trim()) {
                Some(id) if repo.list_snapshot_ids()?.contains(&id) => unreadable.push(id),
                _ => return Err(e),
            },
        }
    }
    // The selector narrows what the policy sees; snapshots named by id are removed whatever it says.
    let selected: HashSet<Id> = opts.select.select(index, &[])?.into_iter().map(|r| r.id).collect();
    let mut candidates = Vec::new();
    for row in index.snapshot_rows()? {
        if !selected.contains(&row.id) && !named.contains(&row.id) {
            continue;
        }
        let snap = index.snapshot(&row.id)?.context("snapshot vanished from the index")?;
        let time = crate::util::parse_rfc3339(&snap.time).with_context(|| format!("snapshot {} has an unreadable time", row.id.short()))?;
        let image = match &snap.source {
            Source::Glance { image_id, .. } => Some(image_id.clone()),
            _ => None,
        };
        let item = Item { time, tags: snap.tags.clone(), group: group_key(opts.group_by, &snap), image };
        candidates.push(Candidate { id: row.id, snap, item });
    }
    let deleted: HashSet<String> =
        if opts.include_deleted { HashSet::new() } else { repo.deleted_upstream()?.into_iter().map(|d| d.image_id).collect() };
    let items: Vec<Item> = candidates.iter().map(|c| c.item.clone()).collect();
    let horizon = retention::horizon(chrono::Utc::now());
    let verdicts = if policy.is_empty() {
        // Only ids were named: everything else stays.
        vec![retention::Verdict { keep: true, reasons: vec!["not named".into()] }; items.len()]
    } else {
        retention::decide(policy, &items, &deleted, horizon)
    };

    let mut keep = Vec::new();
    let mut remove = Vec::new();
    for (c, v) in candidates.iter().zip(&verdicts) {
        let entry = |reasons: Vec<String>| ForgetEntry {
            id: c.id.to_hex(),
            name: Some(c.snap.name.clone()),
            time: Some(c.snap.time.clone()),
            group: Some(c.item.group.clone()),
            tags: Some(c.snap.tags.clone()),
            reasons,
            future: Some(c.item.time > horizon),
            retained_until: None,
        };
        if named.contains(&c.id) {
            remove.push((c.id, entry(vec!["named on the command line".to_string()])));
        } else if v.keep {
            keep.push(entry(v.reasons.clone()));
        } else {
            remove.push((c.id, entry(vec![])));
        }
    }
    if repo.config().object_lock.is_some() {
        // Asked before the delete: a hidden version's retention is then asked by version id.
        for (id, e) in remove.iter_mut() {
            e.retained_until = crate::object_lock::snapshot_retained_until(
                repo.lock_backend(),
                &<Snapshot as crate::repository::file::RepoFile>::id_key(id),
            )?;
        }
    }
    let mut removed = 0u64;
    if !opts.dry_run {
        for (id, _) in &remove {
            repo.delete_snapshot(id)?;
            index.remove_snapshot(id)?;
            removed += 1;
        }
        for id in &unreadable {
            repo.delete_snapshot(id)?;
            removed += 1;
        }
    }
    let unreadable_entries = unreadable.iter().map(|id| ForgetEntry {
        id: id.to_hex(),
        name: None,
        time: None,
        group: None,
        tags: None,
        reasons: vec!["named on the command line".into(), "unreadable: not in the index cache".into()],
        future: None,
        retained_until: None,
    });
    Ok(ForgetReport {
        dry_run: opts.dry_run,
        keep,
        remove: remove.into_iter().map(|(_, e)| e).chain(unreadable_entries).collect(),
        removed,
    })
}

//! `imgarc forget`: removes snapshots by retention policy or by id, and says
//! what it keeps and why. Frees no space by itself: `prune` does that.

use super::Ctx;
use anyhow::{bail, Context, Result};
use clap::Args;
use imgarc::ids::Id;
use imgarc::index::Index;
use imgarc::repository::lock::Lock;
use imgarc::repository::snapshot::{Snapshot, Source};
use imgarc::retention::{self, Item, Policy};
use std::collections::HashSet;

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots to remove by id (or unique prefix), in addition to the policy
    pub snapshots: Vec<String>,
    /// Keep the N newest snapshots (-1: all)
    #[arg(long, allow_negative_numbers = true)]
    pub keep_last: Option<i64>,
    /// Keep the newest snapshot of each of the last N hours that have one
    #[arg(long, allow_negative_numbers = true)]
    pub keep_hourly: Option<i64>,
    /// Keep the newest snapshot of each of the last N days that have one
    #[arg(long, allow_negative_numbers = true)]
    pub keep_daily: Option<i64>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one
    #[arg(long, allow_negative_numbers = true)]
    pub keep_weekly: Option<i64>,
    /// Keep the newest snapshot of each of the last N months that have one
    #[arg(long, allow_negative_numbers = true)]
    pub keep_monthly: Option<i64>,
    /// Keep the newest snapshot of each of the last N years that have one
    #[arg(long, allow_negative_numbers = true)]
    pub keep_yearly: Option<i64>,
    /// Keep every snapshot within this span of the group's newest, e.g. 14d, 1y6m, 36h
    #[arg(long)]
    pub keep_within: Option<imgarc::retention::Span>,
    /// Keep every snapshot with this tag (repeatable)
    #[arg(long = "keep-tag")]
    pub keep_tags: Vec<String>,
    /// Apply the policy per image (Glance image id, else name), per name, or to all snapshots at once
    #[arg(long, value_enum, default_value = "image")]
    pub group_by: GroupBy,
    /// Only consider snapshots with this name
    #[arg(long)]
    pub name: Option<String>,
    /// Also let the policy remove the last snapshot of images deleted upstream
    #[arg(long)]
    pub include_deleted: bool,
    /// Show what would be removed, remove nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Image,
    Name,
    None,
}

struct Candidate {
    id: Id,
    snap: Snapshot,
    item: Item,
}

fn group_key(by: GroupBy, snap: &Snapshot) -> String {
    match (by, &snap.source) {
        (GroupBy::Image, Source::Glance { image_id, .. }) => format!("image {image_id}"),
        (GroupBy::Image | GroupBy::Name, _) => format!("name {}", snap.name),
        (GroupBy::None, _) => "all".to_string(),
    }
}

fn policy_of(args: &ForgetArgs) -> Policy {
    Policy {
        last: args.keep_last,
        hourly: args.keep_hourly,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        yearly: args.keep_yearly,
        within: args.keep_within,
        tags: args.keep_tags.clone(),
    }
}

pub fn run(ctx: &Ctx, args: ForgetArgs) -> Result<()> {
    let policy = policy_of(&args);
    if policy.is_empty() && args.snapshots.is_empty() {
        bail!("no policy given (--keep-last, --keep-daily, …, --keep-tag) and no snapshot ids: nothing to do, nothing removed");
    }
    let repo = ctx.open_repo()?;
    let lock = if args.dry_run { None } else { Some(Lock::acquire(repo.backend().clone(), false, "forget")?) };
    if let Some(l) = &lock {
        repo.hold_lock(l);
    }
    let mut index = Index::open(&repo).context("cannot bring the local index up to date")?;

    let mut named: HashSet<Id> = HashSet::new();
    // Snapshots the cache could not read (damaged object or trees): named by
    // their full id, they can still be removed, so they stop blocking `prune`.
    let mut unreadable: Vec<Id> = Vec::new();
    for s in &args.snapshots {
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
    let mut candidates = Vec::new();
    for row in index.snapshot_rows()? {
        if args.name.as_ref().is_some_and(|n| *n != row.name) && !named.contains(&row.id) {
            continue;
        }
        let snap = index.snapshot(&row.id)?.context("snapshot vanished from the index")?;
        let time =
            imgarc::util::parse_rfc3339(&snap.time).with_context(|| format!("snapshot {} has an unreadable time", row.id.short()))?;
        let image = match &snap.source {
            Source::Glance { image_id, .. } => Some(image_id.clone()),
            _ => None,
        };
        let item = Item { time, tags: snap.tags.clone(), group: group_key(args.group_by, &snap), image };
        candidates.push(Candidate { id: row.id, snap, item });
    }
    let deleted: HashSet<String> =
        if args.include_deleted { HashSet::new() } else { repo.deleted_upstream()?.into_iter().map(|d| d.image_id).collect() };
    let items: Vec<Item> = candidates.iter().map(|c| c.item.clone()).collect();
    let horizon = retention::horizon(chrono::Utc::now());
    let verdicts = if policy.is_empty() {
        // Only ids were named: everything else stays.
        vec![retention::Verdict { keep: true, reasons: vec!["not named".into()] }; items.len()]
    } else {
        retention::decide(&policy, &items, &deleted, horizon)
    };

    let mut keep = Vec::new();
    let mut remove = Vec::new();
    for (c, v) in candidates.iter().zip(&verdicts) {
        let doc = |reasons: &[String]| {
            serde_json::json!({
                "id": c.id.to_hex(), "name": c.snap.name, "time": c.snap.time, "group": c.item.group,
                "tags": c.snap.tags, "reasons": reasons, "future": c.item.time > horizon,
            })
        };
        if named.contains(&c.id) {
            remove.push((c, doc(&["named on the command line".to_string()])));
        } else if v.keep {
            keep.push((c, doc(&v.reasons)));
        } else {
            remove.push((c, doc(&[])));
        }
    }
    let mut removed = 0u64;
    if !args.dry_run {
        for (c, _) in &remove {
            repo.delete_snapshot(&c.id)?;
            index.remove_snapshot(&c.id)?;
            removed += 1;
        }
        for id in &unreadable {
            repo.delete_snapshot(id)?;
            removed += 1;
        }
    }
    let unreadable_docs = unreadable
        .iter()
        .map(|id| serde_json::json!({"id": id.to_hex(), "reasons": ["named on the command line", "unreadable: not in the index cache"]}));
    let json = serde_json::json!({
        "dry_run": args.dry_run,
        "keep": keep.iter().map(|k| k.1.clone()).collect::<Vec<_>>(),
        "remove": remove.iter().map(|r| r.1.clone()).chain(unreadable_docs).collect::<Vec<_>>(),
        "removed": removed,
    });
    ctx.emit(&json, || {
        let mut groups: Vec<&str> = candidates.iter().map(|c| c.item.group.as_str()).collect();
        groups.sort();
        groups.dedup();
        let mut s = String::new();
        for g in groups {
            let k: Vec<_> = keep.iter().filter(|k| k.0.item.group == g).collect();
            let r: Vec<_> = remove.iter().filter(|r| r.0.item.group == g).collect();
            s.push_str(&format!("{g}: keep {}, remove {}\n", k.len(), r.len()));
            for (c, doc) in k {
                let reasons: Vec<&str> = doc["reasons"].as_array().into_iter().flatten().filter_map(|r| r.as_str()).collect();
                s.push_str(&format!("  keep    {}  {}  {}  ({})\n", &c.id.to_hex()[..16], c.snap.time, c.snap.name, reasons.join(", ")));
            }
            for (c, _) in r {
                s.push_str(&format!("  remove  {}  {}  {}\n", &c.id.to_hex()[..16], c.snap.time, c.snap.name));
            }
        }
        for id in &unreadable {
            s.push_str(&format!("  remove  {}  (unreadable)\n", &id.to_hex()[..16]));
        }
        if args.dry_run {
            s.push_str(&format!("dry run: {} snapshot(s) would be removed\n", remove.len() + unreadable.len()));
        } else {
            s.push_str(&format!("removed {removed} snapshot(s); run `imgarc prune` to reclaim their space\n"));
        }
        s
    });
    Ok(())
}

//! `imgarc copy --to REPO2`: copies snapshots into a second repository (`imgarc::copy`),
//! opening the target with its own password sources, and prints what was copied.
//! Exit 3 when some snapshots failed (the others were copied).

use super::password::TargetPasswords;
use super::{Ctx, SomeItemsFailed};
use anyhow::{Context, Result};
use clap::Args;
use imgarc::copy::{copy, CopyOptions, CopyReport};
use imgarc::index::Index;
use imgarc::repository::Repository;
use imgarc::util::human_bytes;

/// Where the copy goes: shared by `copy` and `sync --copy-to`.
#[derive(Args, Debug, Clone, Default)]
pub struct TargetArgs {
    /// Cloud in clouds.yaml holding a swift: target repository (--to-cloud names a Glance target elsewhere)
    #[arg(long, value_name = "CLOUD", env = "IMGARC_TO_REPO_CLOUD")]
    pub to_repo_cloud: Option<String>,
    /// Read the target repository's password from this file (also IMGARC_TO_PASSWORD_FILE, IMGARC_TO_PASSWORD; else the source's password)
    #[arg(long, value_name = "FILE")]
    pub to_password_file: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// The target repository: a directory, s3:https://HOST[:PORT]/BUCKET[/PREFIX] or swift:CONTAINER[/PREFIX]
    #[arg(long, value_name = "REPO2")]
    pub to: String,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub copy: CopyOptions,
}

pub fn run(ctx: &Ctx, args: CopyArgs) -> Result<()> {
    args.copy.select.validate()?;
    let source = ctx.open_repo()?;
    let passwords = TargetPasswords::new(args.target.to_password_file.clone(), &ctx.passwords);
    let target = ctx.open_target(&args.to, args.target.to_repo_cloud.as_deref(), &passwords)?;
    let report = copy_between(ctx, &source, &target, &args.to, &args.copy)?;
    super::run_metrics::record(&report);
    ctx.emit(&serde_json::to_value(&report)?, || prose(&report, &args.to));
    if report.ok {
        Ok(())
    } else {
        Err(SomeItemsFailed(format!(
            "copy: {} of {} snapshots failed{}",
            report.snapshots_failed,
            report.snapshots.len(),
            if report.verified.as_ref().is_some_and(|v| v.chunks_bad > 0) { ", and --verify found damaged chunks" } else { "" }
        ))
        .into())
    }
}

/// Locks both repositories (shared; none in a dry run), brings both indexes up to date
/// and copies. Used by `copy` and by `sync --copy-to`.
pub fn copy_between(ctx: &Ctx, source: &Repository, target: &Repository, to: &str, opts: &CopyOptions) -> Result<CopyReport> {
    let locks = if opts.dry_run {
        None
    } else {
        let s = source.acquire_lock(false, "copy").context("the source repository")?;
        source.hold_lock(&s);
        let t = target.acquire_lock(false, "copy").with_context(|| format!("the target repository {to}"))?;
        target.hold_lock(&t);
        Some((s, t))
    };
    let source_index = Index::open(source).context("cannot bring the source's local index up to date")?;
    // Lock first, then catch up (as archive): every prune mark written before the lock is seen.
    let mut target_index = if opts.dry_run { Index::open(target) } else { Index::open_writer(target) }
        .with_context(|| format!("cannot bring the local index of the target {to} up to date"))?;
    let report =
        copy(source, &source_index, target, &mut target_index, opts, &|name, bytes| ctx.out.bar(Some(bytes), &format!("copy {name}")))?;
    drop(locks);
    Ok(report)
}

pub fn prose(r: &CopyReport, to: &str) -> String {
    let mut s = String::new();
    for e in &r.snapshots {
        let short = |id: &str| id[..16.min(id.len())].to_string();
        let target = e.target.as_deref().map(short).unwrap_or_default();
        match e.status {
            "copied" => s.push_str(&format!(
                "copied   {} -> {}  {}  {}  ({} sent, {} new chunks; {})\n",
                short(&e.source),
                target,
                e.time,
                e.name,
                human_bytes(e.bytes_sent),
                e.chunks_sent,
                if e.rechunked { "re-chunked" } else { "not re-chunked" }
            )),
            "present" => s.push_str(&format!("present  {} == {}  {}  {}\n", short(&e.source), target, e.time, e.name)),
            "would_copy" => {
                s.push_str(&format!("would copy {}  {}  {}  ({})\n", short(&e.source), e.time, e.name, human_bytes(e.logical_bytes)))
            }
            _ => s.push_str(&format!("FAILED   {}  {}  {}: {}\n", short(&e.source), e.time, e.name, e.error.as_deref().unwrap_or(""))),
        }
    }
    if r.dry_run {
        let would = r.snapshots.iter().filter(|e| e.status == "would_copy").count();
        s.push_str(&format!("dry run: {would} snapshot(s) would be copied to {to}, {} present already\n", r.snapshots_present));
    } else {
        s.push_str(&format!(
            "{} snapshot(s) copied to {to}, {} present already, {} failed: {} sent ({} chunks), {} read from the source, {:.1} s\n",
            r.snapshots_copied,
            r.snapshots_present,
            r.snapshots_failed,
            human_bytes(r.bytes_sent),
            r.chunks_sent,
            human_bytes(r.bytes_read),
            r.seconds
        ));
        if r.snapshots_copied > 0 && r.rechunked {
            s.push_str("  images were re-chunked with the target's chunker (copy re-archives each snapshot; the target's dedup sends only new chunks)\n");
        } else if r.snapshots_copied > 0 {
            s.push_str("  not re-chunked: the target names chunks as the source does (init --copy-chunker-params-from), so only the chunks it lacked were read and sent\n");
        }
    }
    if let Some(v) = &r.verified {
        s.push_str(&format!(
            "verified {} of {} chunks ({}%) read back from the target: {}\n",
            v.chunks_checked,
            v.chunks_total,
            v.percent,
            if v.chunks_bad == 0 { "all intact".to_string() } else { format!("{} DAMAGED", v.chunks_bad) }
        ));
    }
    for w in &r.warnings {
        s.push_str(&format!("  warning: {w}\n"));
    }
    s
}

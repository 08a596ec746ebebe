//! `imgarc restore SNAPSHOT -o PATH|-`, `--to-glance` (`--dry-run`: only show the image it would create)
//! or `--to-cinder` (a new volume, through a scratch image): rebuild an image.

use super::Ctx;
use anyhow::{bail, Context, Result};
use clap::Args;
use imgarc::index::Index;
use imgarc::repository::snapshot::Snapshot;
use imgarc::repository::Repository;
use imgarc::restore::{restore, RestoreOptions, Target};
use imgarc::restore_cinder::{restore_to_cinder, CinderRestoreOptions};
use imgarc::restore_glance::{plan_restore_to_glance, restore_to_glance, GlanceRestorePlan, ToGlanceOptions};
use imgarc::util::human_bytes;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id or unique prefix (8+ hex digits)
    pub snapshot: String,
    /// Output file, or - for standard output
    #[arg(short, long, required_unless_present_any = ["to_glance", "to_cinder"])]
    pub output: Option<String>,
    #[command(flatten)]
    pub restore: RestoreOptions,
    /// Upload into Glance instead of writing a file (with the archived image metadata; with --disk-format converted, and Glance's disk_format set to match)
    #[arg(long, conflicts_with = "output")]
    pub to_glance: bool,
    #[command(flatten)]
    pub glance: ToGlanceOptions,
    /// Restore into a new Cinder volume: upload to the target cloud's Glance as a scratch image, create the volume from it (size, type, bootable flag of the archived volume), verify, delete the image (docs/cinder-restore.md)
    #[arg(long, conflicts_with_all = ["output", "to_glance"])]
    pub to_cinder: bool,
    #[command(flatten)]
    pub cinder: CinderRestoreOptions,
    /// Permission bits of the restored file, in octal (default 0600); not for devices or FIFOs
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode, conflicts_with_all = ["to_glance", "to_cinder"])]
    pub mode: Option<u32>,
    /// Into a block device: skip the holes instead of writing their zeros (only if the device is already zeroed)
    #[arg(long, conflicts_with_all = ["to_glance", "to_cinder"])]
    pub no_write_zeros: bool,
}

/// `0644`, `644` or `0o644`: permission bits of a created file.
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(format!("{s:?} is not an octal file mode such as 0600 or 0644")),
    }
}

pub fn run(ctx: &Ctx, args: RestoreArgs) -> Result<()> {
    if let (false, Some(flag)) = (args.to_cinder, args.cinder.given_flag()) {
        bail!("{flag} applies to --to-cinder only");
    }
    if args.to_cinder {
        // --to-cloud and --name are --to-cinder's too; the others are the image's.
        let image_only = ToGlanceOptions { to_cloud: None, name: None, ..args.glance.clone() };
        if let Some(flag) = image_only.given_flag() {
            bail!("{flag} applies to --to-glance only");
        }
    } else if let (false, Some(flag)) = (args.to_glance, args.glance.given_flag()) {
        bail!("{flag} applies to --to-glance only");
    }
    let (repo, index) = ctx.open_without_references()?;
    repo.require_full_key("restore")?;
    let id = index.resolve_snapshot(&args.snapshot)?;
    let snap = index.snapshot(&id)?.context("snapshot vanished from the index")?;
    let opts = &args.restore;
    if args.to_glance {
        if args.glance.dry_run {
            return to_glance_dry_run(ctx, &snap, &id.to_hex(), &args.glance, opts)
                .with_context(|| format!("planning the restore of snapshot {} ({}) into Glance", id.short(), snap.name));
        }
        return to_glance(ctx, &repo, &index, &snap, args.glance.clone(), opts)
            .with_context(|| format!("restoring snapshot {} ({}) into Glance", id.short(), snap.name));
    }
    if args.to_cinder {
        return to_cinder(ctx, &repo, &index, &snap, &args, opts)
            .with_context(|| format!("restoring snapshot {} ({}) into Cinder", id.short(), snap.name));
    }
    let output = args.output.clone().expect("clap requires -o without --to-glance or --to-cinder");
    let to_stdout = output == "-";
    let target = if to_stdout {
        if args.mode.is_some() {
            bail!("--mode applies to a file the restore creates, not to standard output");
        }
        Target::Stream(Box::new(std::io::BufWriter::with_capacity(1 << 20, std::io::stdout())))
    } else {
        Target::for_path(std::path::Path::new(&output), args.mode, !args.no_write_zeros)?
    };
    let pb = ctx.out.bar(Some(snap.logical_bytes), "restore");
    let r =
        restore(&repo, &index, &snap, target, opts, &pb).with_context(|| format!("restoring snapshot {} ({})", id.short(), snap.name))?;
    drop(pb);
    let json = serde_json::to_value(&r)?;
    let prose = format!(
        "restored {} ({}) to {} in {:.1} s ({}/s); digests verified: {}\n",
        &id.to_hex()[..16],
        human_bytes(r.bytes),
        output,
        r.seconds,
        human_bytes((r.bytes as f64 / r.seconds.max(1e-6)) as u64),
        if r.digests.is_empty() { "none recorded".to_string() } else { r.digests.keys().cloned().collect::<Vec<_>>().join(", ") }
    );
    if to_stdout {
        // stdout carries the image: the report goes to stderr.
        if ctx.out.json {
            eprintln!("{}", serde_json::to_string_pretty(&json)?);
        } else if !ctx.out.quiet {
            eprint!("{prose}");
        }
    } else {
        ctx.emit(&json, || prose);
    }
    Ok(())
}

fn to_glance(
    ctx: &Ctx,
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    mut glance_opts: ToGlanceOptions,
    opts: &RestoreOptions,
) -> Result<()> {
    let glance = ctx.glance(glance_opts.to_cloud.as_deref())?;
    glance_opts.limit_upload = Ctx::limiter(&ctx.global.limit_upload)?;
    let pb = ctx.out.bar(Some(snap.logical_bytes), "upload");
    let r = restore_to_glance(repo, index, snap, &glance, opts, &glance_opts, &pb)?;
    drop(pb);
    ctx.emit(&serde_json::to_value(&r)?, || {
        format!(
            "restored into Glance as image {} ({}): {} in {:.1} s, verified with {}\n",
            r.image_id,
            r.name.as_deref().unwrap_or(""),
            human_bytes(r.bytes),
            r.seconds,
            r.verified_with
        )
    });
    Ok(())
}

/// `--to-cinder`: under a shared lock (its scratch records are written under it), the leftovers
/// of dead runs cleaned first (format-spec/scratch.md), then the restore.
fn to_cinder(ctx: &Ctx, repo: &Repository, index: &Index, snap: &Snapshot, args: &RestoreArgs, opts: &RestoreOptions) -> Result<()> {
    let cloud = args.glance.to_cloud.clone().or_else(|| ctx.global.os_cloud.clone());
    let glance = ctx.glance(args.glance.to_cloud.as_deref())?;
    let cinder = ctx.cinder_for(&glance)?;
    let lock = repo.acquire_lock(false, "restore --to-cinder")?;
    repo.hold_lock(&lock);
    super::cleanup::before_run(repo, &glance, Some(&cinder));
    let mut cinder_opts = args.cinder.clone();
    cinder_opts.name = args.glance.name.clone();
    cinder_opts.limit_upload = Ctx::limiter(&ctx.global.limit_upload)?;
    let pb = ctx.out.bar(Some(snap.logical_bytes), "upload");
    let r = restore_to_cinder(repo, index, snap, &glance, &cinder, lock.lease(), cloud.as_deref(), opts, &cinder_opts, &pb)?;
    drop(pb);
    for p in &r.cleanup_problems {
        tracing::warn!("{p}");
    }
    ctx.emit(&serde_json::to_value(&r)?, || format!("{}\n", imgarc::restore_cinder::describe(&r)));
    Ok(())
}

/// `--to-glance --dry-run`: the record that would be created, read from the snapshot and the target; nothing is created.
fn to_glance_dry_run(ctx: &Ctx, snap: &Snapshot, id: &str, glance_opts: &ToGlanceOptions, opts: &RestoreOptions) -> Result<()> {
    let cloud = glance_opts.to_cloud.clone().or_else(|| ctx.global.os_cloud.clone());
    let glance = ctx.glance(glance_opts.to_cloud.as_deref())?;
    let plan = plan_restore_to_glance(snap, id, &glance, cloud, opts, glance_opts)?;
    ctx.emit(&serde_json::to_value(&plan)?, || plan_prose(&plan));
    Ok(())
}

fn plan_prose(p: &GlanceRestorePlan) -> String {
    let field = |k: &str| p.image.get(k).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).unwrap_or_else(|| "-".into());
    let target = match &p.cloud {
        Some(c) => format!("cloud {c} ({})", p.glance_url),
        None => p.glance_url.clone(),
    };
    let mut s = format!("restore --dry-run: would create in {target}, uploading by {}:\n", p.method);
    for k in ["name", "disk_format", "container_format", "visibility", "min_disk", "min_ram"] {
        s.push_str(&format!("  {k}: {}\n", field(k)));
    }
    let core = ["name", "disk_format", "container_format", "visibility", "min_disk", "min_ram", "tags"];
    let props: Vec<String> = p
        .image
        .iter()
        .filter(|(k, _)| !core.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_string)))
        .collect();
    s.push_str(&format!("  tags: {}\n", field("tags")));
    s.push_str(&format!("  properties: {}\n", if props.is_empty() { "none".into() } else { props.join(", ") }));
    s.push_str(&format!("  protected once verified: {}\n", if p.protected { "yes" } else { "no" }));
    match (p.size, &p.converted_to) {
        (_, Some(f)) => s.push_str(&format!(
            "  data: converted to {f} ({}); checked against what is uploaded only\n",
            p.subformat.as_deref().map_or_else(|| "default subformat".to_string(), |sf| format!("subformat {sf}"))
        )),
        (Some(n), None) => {
            let digests: Vec<String> = p.expected_digests.iter().map(|(k, v)| format!("{k} {v}")).collect();
            s.push_str(&format!(
                "  data: {n} bytes ({}), checked against {}\n",
                human_bytes(n),
                if digests.is_empty() { "its size only".into() } else { digests.join(", ") }
            ));
        }
        (None, None) => {}
    }
    for w in &p.warnings {
        s.push_str(&format!("  warning: {w}\n"));
    }
    if !p.existing_images.is_empty() {
        s.push_str(&format!("  already in the target with this name: {} (a restore adds another image)\n", p.existing_images.join(", ")));
    }
    s
}

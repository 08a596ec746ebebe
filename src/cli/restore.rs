//! `imgarc restore SNAPSHOT -o PATH|-` or `--to-glance`: rebuild an image.

use super::Ctx;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use imgarc::index::Index;
use imgarc::openstack::glance::{self, ImageRecord, UploadMethod};
use imgarc::openstack::ratelimit::RateLimitedReader;
use imgarc::repository::snapshot::Snapshot;
use imgarc::repository::Repository;
use imgarc::restore::{restore, RestoreOptions, Target};
use imgarc::util::human_bytes;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id or unique prefix (8+ hex digits)
    pub snapshot: String,
    /// Output file, or - for standard output
    #[arg(short, long, required_unless_present = "to_glance")]
    pub output: Option<String>,
    /// Convert instead of restoring the archived file: raw (the guest disk, sparse) or qcow2 (clean v3)
    #[arg(long, value_parser = ["raw", "qcow2"])]
    pub disk_format: Option<String>,
    /// With --disk-format qcow2: compress clusters (zlib, like qemu-img convert -c)
    #[arg(long, requires = "disk_format")]
    pub compress: bool,
    /// Upload into Glance instead of writing a file (with the archived image metadata)
    #[arg(long, conflicts_with = "output")]
    pub to_glance: bool,
    /// Cloud in clouds.yaml to restore into (default: the source credentials)
    #[arg(long, requires = "to_glance")]
    pub to_cloud: Option<String>,
    /// Name of the new Glance image (default: the archived name)
    #[arg(long, requires = "to_glance")]
    pub name: Option<String>,
    /// Visibility of the new Glance image (private, shared, community, public)
    #[arg(long, requires = "to_glance")]
    pub visibility: Option<String>,
    /// Set an image property on the new Glance image (repeatable)
    #[arg(long = "property", value_name = "K=V", requires = "to_glance")]
    pub properties: Vec<String>,
    /// Upload with a PUT of the data, or stage + glance-direct import
    #[arg(long, default_value = "put", value_parser = ["put", "glance-direct"], requires = "to_glance")]
    pub method: String,
    /// Keep a half-created Glance image when the restore fails (default: delete it)
    #[arg(long, requires = "to_glance")]
    pub keep_failed: bool,
    /// Permission bits of the restored file, in octal (default 0600); not for devices or FIFOs
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode, conflicts_with = "to_glance")]
    pub mode: Option<u32>,
    /// Into a block device: skip the holes instead of writing their zeros (only if the device is already zeroed)
    #[arg(long, conflicts_with = "to_glance")]
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
    let (repo, index) = ctx.open()?;
    let id = index.resolve_snapshot(&args.snapshot)?;
    let snap = index.snapshot(&id)?.context("snapshot vanished from the index")?;
    let opts = RestoreOptions { disk_format: args.disk_format.clone(), compress: args.compress };
    if args.to_glance {
        return to_glance(ctx, &repo, &index, &snap, &args, &opts)
            .with_context(|| format!("restoring snapshot {} ({}) into Glance", id.short(), snap.name));
    }
    let output = args.output.clone().expect("clap requires -o without --to-glance");
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
        restore(&repo, &index, &snap, target, &opts, &pb).with_context(|| format!("restoring snapshot {} ({})", id.short(), snap.name))?;
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

/// The Glance record to restore from: the archived one, or one made from the snapshot.
fn archived_record(snap: &Snapshot, disk_format: Option<&str>) -> Result<ImageRecord> {
    let mut metadata = snap.metadata.clone();
    // Older snapshots may hold store locations (with credentials): never sent to a cloud.
    glance::redact_store_locations(&mut metadata);
    let mut raw = serde_json::Value::Object(metadata);
    if snap.metadata.is_empty() {
        raw = serde_json::json!({"id": "", "name": snap.name, "status": "active", "container_format": "bare", "disk_format": snap.format});
    }
    if let Some(f) = disk_format {
        raw["disk_format"] = f.into();
    }
    Ok(ImageRecord::from_json(raw)?)
}

fn to_glance(ctx: &Ctx, repo: &Repository, index: &Index, snap: &Snapshot, args: &RestoreArgs, opts: &RestoreOptions) -> Result<()> {
    let glance = ctx.glance(args.to_cloud.as_deref())?;
    let archived = archived_record(snap, opts.disk_format.as_deref())?;
    let mut overrides = serde_json::Map::new();
    if let Some(n) = &args.name {
        overrides.insert("name".into(), n.clone().into());
    }
    if let Some(v) = &args.visibility {
        overrides.insert("visibility".into(), v.clone().into());
    }
    for p in &args.properties {
        let (k, v) = p.split_once('=').ok_or_else(|| anyhow!("--property {p:?}: expected K=V"))?;
        overrides.insert(k.to_string(), v.to_string().into());
    }
    let method = if args.method == "glance-direct" { UploadMethod::GlanceDirect } else { UploadMethod::Put };
    let glance_opts = glance::RestoreOptions {
        overrides,
        method,
        size: opts.disk_format.is_none().then_some(snap.logical_bytes),
        converted: opts.disk_format.is_some(),
        keep_failed: args.keep_failed,
        ..Default::default()
    };
    // The restore writes into a pipe; the upload reads it on its own thread. The
    // stream ends cleanly only once the restore verified every byte it wrote.
    let (writer, reader) = imgarc::util::pipe(16);
    let end = writer.end_handle();
    let limiter = Ctx::limiter(&ctx.global.limit_upload)?;
    let started = std::time::Instant::now();
    let upload = std::thread::Builder::new().name("glance-upload".into()).spawn(move || {
        let data: Box<dyn std::io::Read + Send> = match limiter {
            Some(l) => Box::new(RateLimitedReader::new(reader, l)),
            None => Box::new(reader),
        };
        glance::restore_image(&glance, &archived, data, &glance_opts)
    })?;
    let pb = ctx.out.bar(Some(snap.logical_bytes), "upload");
    let restored = restore(repo, index, snap, Target::Stream(Box::new(writer)), opts, &pb);
    drop(pb);
    match &restored {
        Ok(_) => end.finish(),
        Err(e) => end.fail(format!("the restore failed: {e:#}")),
    }
    let uploaded = upload.join().map_err(|_| anyhow!("upload thread panicked"))?;
    let (restored, outcome) = match (restored, uploaded) {
        (Ok(r), Ok(o)) => (r, o),
        (Ok(_), Err(e)) => return Err(e.into()),
        // The upload saw the restore's error and already deleted (or kept) the image.
        (Err(restore_err), Err(upload_err)) => bail!("{restore_err:#}; {upload_err}"),
        (Err(e), Ok(o)) => {
            // Unreachable through the pipe (it withholds the end of a failed stream); never leave it active.
            let fate = discard_failed(ctx, args, &o.record.id);
            bail!("{e:#}; {fate}")
        }
    };
    // With no conversion, the bytes uploaded are the archived ones: their digests must agree.
    if opts.disk_format.is_none() {
        if let (Some(want), Some(got)) = (snap.digests.get("sha512"), outcome.uploaded.get(imgarc::openstack::verify::Algo::Sha512)) {
            if want != got {
                let fate = discard_failed(ctx, args, &outcome.record.id);
                bail!("uploaded sha512 {got} differs from the archived {want}; {fate}");
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let json = serde_json::json!({
        "image_id": outcome.record.id, "name": outcome.record.name, "status": outcome.record.status,
        "bytes": restored.bytes, "seconds": seconds, "verified_with": outcome.verified_with,
        "os_hash_value": outcome.record.os_hash_value, "digests": restored.digests,
    });
    ctx.emit(&json, || {
        format!(
            "restored into Glance as image {} ({}): {} in {seconds:.1} s, verified with {}\n",
            outcome.record.id,
            outcome.record.name.as_deref().unwrap_or(""),
            human_bytes(restored.bytes),
            outcome.verified_with
        )
    });
    Ok(())
}

/// Deletes an image whose restore failed after its upload completed, unless `--keep-failed`.
fn discard_failed(ctx: &Ctx, args: &RestoreArgs, id: &str) -> String {
    if args.keep_failed {
        return format!("kept the failed image {id} (keep-failed)");
    }
    match ctx.glance(args.to_cloud.as_deref()).and_then(|g| Ok(g.delete(id)?)) {
        Ok(()) => format!("deleted the incomplete image {id}"),
        Err(e) => format!("could not delete the incomplete image {id}: {e:#}"),
    }
}

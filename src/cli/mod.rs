//! The command line: argument definitions (clap), global options, dispatch to
//! `commands::*`, and the exit-code contract (0 ok, 1 failed, 2 usage).

use crate::commands;
use crate::progress::Output;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "imgarc", version, about = "Deduplicating archiver for VM images (raw, QCOW2, OpenStack Glance)")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Repository: a directory, s3:https://HOST[:PORT]/BUCKET[/PREFIX] or swift:CONTAINER[/PREFIX] (default: $IMGARC_REPO, else ~/.local/share/imgarc/repo)
    #[arg(long, global = true, env = "IMGARC_REPO")]
    pub repo: Option<String>,
    /// Print one JSON document on stdout instead of prose
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress and no prose on success
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Cloud in clouds.yaml holding a swift: repository, when not the one images come from
    #[arg(long, global = true, env = "IMGARC_REPO_CLOUD")]
    pub repo_cloud: Option<String>,
    /// Cloud in clouds.yaml holding the images (else the OS_* variables)
    #[arg(long, global = true, env = "OS_CLOUD")]
    pub os_cloud: Option<String>,
    /// A Glance endpoint to use directly (standalone or noauth Glance; token from OS_TOKEN)
    #[arg(long, global = true, env = "IMGARC_GLANCE_URL")]
    pub glance_url: Option<String>,
    /// Cap the download rate from Glance, e.g. 50M (bytes per second)
    #[arg(long, global = true)]
    pub limit_download: Option<String>,
    /// Cap the upload rate to Glance, e.g. 20M (bytes per second)
    #[arg(long, global = true)]
    pub limit_upload: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository
    Init(InitArgs),
    /// Archive an image file (or - for standard input)
    Archive(ArchiveArgs),
    /// List snapshots
    List(ListArgs),
    /// Show one snapshot in detail
    Show(ShowArgs),
    /// Rebuild an archived image byte-exactly
    Restore(RestoreArgs),
    /// Describe an image file or an archived snapshot: format, sizes, QCOW2 features and flags
    Inspect(InspectArgs),
    /// Verify the repository (structure; with --read-data every byte)
    Check(CheckArgs),
    /// Maintain the local index cache
    Index(IndexArgs),
    /// Remove stale locks (or all locks with --all)
    Unlock(UnlockArgs),
    /// Glance images of a cloud and whether they are archived
    Glance(GlanceArgs),
    /// Generate a small synthetic disk series, archive it, restore and verify it
    Demo(DemoArgs),
    /// Archive every matching Glance image the repository does not hold yet (nightly; docs/nightly.md)
    Sync(SyncArgs),
    /// Remove snapshots by a retention policy (restic's rules) or by id
    Forget(ForgetArgs),
    /// Reclaim the space of chunks no snapshot references (two-phase, safe with concurrent archives)
    Prune(PruneArgs),
    /// Capacity report: sizes, dedup, what each snapshot or group frees, growth and projection
    Report(ReportArgs),
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Average chunk size (power of two, 4K..4M)
    #[arg(long, default_value = "64K")]
    pub chunk_size: String,
    /// Compression of chunk payloads: zstd:LEVEL (1..19)
    #[arg(long, default_value = "zstd:3")]
    pub compression: String,
}

#[derive(Args, Debug)]
pub struct ArchiveArgs {
    /// Image file path, - for standard input, or glance:IMAGE (id or unique name)
    pub source: String,
    /// Snapshot name (default: the file name)
    #[arg(long)]
    pub name: Option<String>,
    /// Tag the snapshot (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Whole-file digests to compute and record, e.g. md5,sha512,sha256
    #[arg(long, value_delimiter = ',')]
    pub digest: Vec<String>,
    /// The format the image is declared as (raw, qcow2, …); a declared raw image is never decomposed
    #[arg(long)]
    pub disk_format: Option<String>,
    /// Archive a QCOW2 image with a backing file as opaque bytes instead of refusing it
    #[arg(long)]
    pub allow_backing_file_opaque: bool,
    /// Archive a QCOW2 image with an external data file as opaque bytes instead of refusing it
    #[arg(long)]
    pub allow_data_file_opaque: bool,
    #[command(flatten)]
    pub spill: SpillArgs,
}

/// Where and how much the QCOW2 decomposer may spill (clusters read before the table that
/// says what they are). Shared by every command that archives.
#[derive(Args, Debug, Clone)]
pub struct SpillArgs {
    /// Directory for the QCOW2 decomposer's spill file (unlinked at once, mode 0600) [default: the system temp dir]
    #[arg(long, env = "IMGARC_SPILL_DIR", value_name = "DIR")]
    pub spill_dir: Option<PathBuf>,
    /// Most bytes a QCOW2 image may spill; beyond it the rest is stored opaque (exact, and the archive says so)
    #[arg(long, default_value = "2G", value_name = "SIZE")]
    pub spill_limit: String,
}

impl SpillArgs {
    /// The default QCOW2 policy with these spill settings.
    pub fn qcow2_policy(&self) -> anyhow::Result<crate::format::qcow2::Policy> {
        let mut policy = crate::format::qcow2::Policy::default();
        if let Some(dir) = &self.spill_dir {
            policy.spill_dir = dir.clone();
        }
        policy.max_spill_bytes = crate::util::parse_size(&self.spill_limit).map_err(|e| anyhow::anyhow!("--spill-limit: {e:#}"))?;
        Ok(policy)
    }
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only snapshots with this name
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Snapshot id or unique prefix (8+ hex digits)
    pub snapshot: String,
}

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

#[derive(Args, Debug)]
pub struct GlanceArgs {
    #[command(subcommand)]
    pub action: GlanceAction,
}

#[derive(Subcommand, Debug)]
pub enum GlanceAction {
    /// List the cloud's images with size, format, status and their latest archive
    List,
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Every project's images (needs an admin role); default: the images owned by the credentials' project
    #[arg(long, conflicts_with = "project")]
    pub all_projects: bool,
    /// Only the images owned by this project (id or name)
    #[arg(long)]
    pub project: Option<String>,
    /// Only images with KEY=VALUE: name=GLOB, tag=T, visibility=V, disk_format=F (repeatable; the same key ORs, different keys AND)
    #[arg(long = "filter", value_name = "KEY=VALUE", value_parser = crate::sync::parse_filter)]
    pub filters: Vec<crate::sync::FilterTerm>,
    /// Leave out images with KEY=VALUE (same keys as --filter; repeatable)
    #[arg(long = "exclude", value_name = "KEY=VALUE", value_parser = crate::sync::parse_filter)]
    pub excludes: Vec<crate::sync::FilterTerm>,
    /// Images downloaded and archived at the same time (images archived together cannot dedup against each other)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Extra whole-file digests to compute and record, e.g. sha256 (as archive --digest)
    #[arg(long, value_delimiter = ',')]
    pub digest: Vec<String>,
    #[command(flatten)]
    pub spill: SpillArgs,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// An image file (or -), or a snapshot id / unique prefix
    pub target: String,
    /// The format the image is declared as; a declared raw image is never decomposed
    #[arg(long)]
    pub disk_format: Option<String>,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Read and verify every chunk
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read and verify a random subset of packs, e.g. 10%
    #[arg(long)]
    pub read_data_subset: Option<String>,
}

#[derive(Args, Debug)]
pub struct IndexArgs {
    #[command(subcommand)]
    pub action: IndexAction,
}

#[derive(Subcommand, Debug)]
pub enum IndexAction {
    /// Rebuild the local index from the repository alone
    Rebuild,
}

#[derive(Args, Debug)]
pub struct UnlockArgs {
    /// Remove every lock, not only stale ones
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Work directory (default: a new temporary directory, removed afterwards)
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Number of nights in the synthetic series
    #[arg(long, default_value_t = 5)]
    pub nights: u32,
    /// Virtual disk size of the synthetic VM
    #[arg(long, default_value = "256M")]
    pub size: String,
}

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
    pub keep_within: Option<crate::retention::Span>,
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

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Show what would be deleted and repacked, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Repack a pack when its still-used bytes are at most this fraction of its size (0 disables repacking)
    #[arg(long, default_value_t = crate::prune::DEFAULT_MAX_REPACK_RATIO, value_parser = parse_ratio)]
    pub max_repack_ratio: f64,
    /// Time between marking a pack and deleting it (s, m, h, d: 23h, 90m, 0); must exceed the listing lag of the store
    #[arg(long, default_value = crate::prune::DEFAULT_GRACE, value_parser = crate::prune::parse_grace)]
    pub grace: chrono::Duration,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Output format (the global --json means json)
    #[arg(long, value_parser = ["table", "json", "csv", "prometheus", "html"])]
    pub format: Option<String>,
    /// Group snapshots (html groups by name unless told otherwise)
    #[arg(long, value_parser = ["image", "name", "project", "tag", "month"])]
    pub by: Option<String>,
    /// Only this project's images (Glance owner); nothing repository-wide is shown
    #[arg(long)]
    pub project: Option<String>,
    /// Capacity to project the growth against, e.g. 10T
    #[arg(long)]
    pub capacity: Option<String>,
    /// Chunk references read at most for exact per-group figures
    #[arg(long, default_value_t = crate::report::DEFAULT_SCAN_LIMIT)]
    pub scan_limit: u64,
    /// Write the report to FILE instead of standard output
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1")),
    }
}

impl GlobalArgs {
    pub fn output(&self) -> Output {
        Output { json: self.json, quiet: self.quiet }
    }
}

/// Parses arguments, runs the command, and returns the process exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
    init_logging();
    let out = cli.global.output();
    match commands::dispatch(&cli.global, cli.command) {
        Ok(()) => 0,
        Err(e) => {
            if out.json && e.downcast_ref::<commands::AlreadyReported>().is_none() {
                println!("{}", serde_json::json!({ "ok": false, "error": format!("{e:#}") }));
            }
            eprintln!("imgarc: error: {e:#}");
            1
        }
    }
}

/// The library's `tracing` events on standard error, one line each, in the
/// words the user has always seen: `imgarc: warning: …` for warnings,
/// `imgarc: …` for information; debug events are not shown.
fn init_logging() {
    use tracing_subscriber::fmt::{format::Writer, FmtContext, FormatEvent, FormatFields};
    use tracing_subscriber::registry::LookupSpan;

    struct Plain;
    impl<S, N> FormatEvent<S, N> for Plain
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &tracing::Event<'_>) -> std::fmt::Result {
            match *event.metadata().level() {
                tracing::Level::ERROR => write!(w, "imgarc: error: ")?,
                tracing::Level::WARN => write!(w, "imgarc: warning: ")?,
                _ => write!(w, "imgarc: ")?,
            }
            ctx.field_format().format_fields(w.by_ref(), event)?;
            writeln!(w)
        }
    }
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(tracing::Level::INFO).event_format(Plain).try_init();
}

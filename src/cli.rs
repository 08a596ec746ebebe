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
    /// Repository location: a directory (default: $IMGARC_REPO, else ~/.local/share/imgarc/repo)
    #[arg(long, global = true, env = "IMGARC_REPO")]
    pub repo: Option<String>,
    /// Print one JSON document on stdout instead of prose
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress and no prose on success
    #[arg(long, short, global = true)]
    pub quiet: bool,
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
    /// Generate a small synthetic disk series, archive it, restore and verify it
    Demo(DemoArgs),
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
    /// Image file path, or - for standard input
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
    #[arg(short, long)]
    pub output: String,
    /// Convert instead of restoring the archived file: raw (the guest disk, sparse) or qcow2 (clean v3)
    #[arg(long, value_parser = ["raw", "qcow2"])]
    pub disk_format: Option<String>,
    /// With --disk-format qcow2: compress clusters (zlib, like qemu-img convert -c)
    #[arg(long, requires = "disk_format")]
    pub compress: bool,
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

impl GlobalArgs {
    pub fn output(&self) -> Output {
        Output { json: self.json, quiet: self.quiet }
    }
}

/// Parses arguments, runs the command, and returns the process exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
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

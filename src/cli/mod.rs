//! The command line (binary only): global options, the verbs and their
//! dispatch, the exit-code contract ([`exit_code`]: restic's codes), and the JSON error
//! document. The log subscriber is `logging`, SIGINT/SIGTERM `signals`, `--metrics-file` `run_metrics`.
//! Each verb lives in its own file: its clap arguments beside its `run`,
//! which calls one library operation and presents its typed report.

mod archive;
mod check;
mod cleanup;
mod completions;
mod copy;
mod ctx;
mod demo;
mod drill;
mod forget;
mod glance;
mod index;
mod init;
mod inspect;
mod key;
mod list;
mod logging;
mod password;
mod progress;
mod prune;
mod report;
mod restore;
mod run_metrics;
mod serve_nbd;
mod show;
mod signals;
mod sync;
mod unlock;
// the guest file verbs (issue 13)
mod cat;
mod diff;
mod extract;
mod find;
mod ls;

use clap::{Args, Parser, Subcommand};
pub use ctx::Ctx;
use progress::Output;
use std::io::Write as _;

#[derive(Parser, Debug)]
#[command(
    name = "imgarc",
    version,
    about = "Deduplicating archiver for VM images (raw, QCOW2, OpenStack Glance)",
    after_help = "Password of an encrypted repository, first match wins: --password-command, --password-file, \
                  IMGARC_PASSWORD_FILE, IMGARC_PASSWORD, $CREDENTIALS_DIRECTORY/imgarc-password (systemd), a terminal prompt.\n\
                  Exit codes: 0 success, 1 the operation failed, 2 usage error, 3 finished but some items failed (sync: an image; cleanup: a scratch resource), \
                  10 no repository at that location, 11 the repository is locked by another process, 12 wrong password, \
                  130 interrupted (SIGINT), 143 stopped (SIGTERM).\n\
                  Logs: standard error; -v debug, -vv trace; IMGARC_LOG takes a tracing filter (e.g. imgarc=debug,hyper_util=info) and overrides both."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Repository: a directory, s3:https://HOST[:PORT]/BUCKET[/PREFIX] or swift:CONTAINER[/PREFIX] (default: $IMGARC_REPO, else ~/.local/share/imgarc/repo)
    #[arg(long, short = 'r', global = true, env = "IMGARC_REPO")]
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
    /// Region of the images' cloud (over OS_REGION_NAME and clouds.yaml; one of its regions: list if it has one)
    #[arg(long, global = true, value_name = "REGION")]
    pub os_region_name: Option<String>,
    /// Endpoint interface of the images' cloud: public, internal or admin (over OS_INTERFACE and clouds.yaml)
    #[arg(long, global = true, value_name = "INTERFACE")]
    pub os_interface: Option<String>,
    /// CA bundle (PEM) the images' cloud is verified with, besides the system roots (over OS_CACERT and clouds.yaml)
    #[arg(long, global = true, value_name = "FILE")]
    pub os_cacert: Option<std::path::PathBuf>,
    /// Do not verify the TLS certificates of the images' cloud (over OS_INSECURE and clouds.yaml verify:)
    #[arg(long, global = true)]
    pub insecure: bool,
    /// A Glance endpoint to use directly (standalone or noauth Glance; token from OS_TOKEN)
    #[arg(long, global = true, env = "IMGARC_GLANCE_URL")]
    pub glance_url: Option<String>,
    /// Cap the download rate from Glance and from an s3:/swift: repository, e.g. 50M (bytes per second; K=1024, M=2^20, G=2^30)
    #[arg(long, global = true)]
    pub limit_download: Option<String>,
    /// Cap the upload rate to Glance and to an s3:/swift: repository, e.g. 20M (bytes per second; K=1024, M=2^20, G=2^30)
    #[arg(long, global = true)]
    pub limit_upload: Option<String>,
    /// Run this shell command (sh -c) to get the repository password: its standard output minus one trailing newline
    #[arg(long, global = true, value_name = "CMD")]
    pub password_command: Option<String>,
    /// Read the repository password from this file (one trailing newline is ignored; also IMGARC_PASSWORD_FILE)
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<std::path::PathBuf>,
    /// More log detail on standard error: -v debug events of imgarc, -vv trace (and debug of the libraries it uses)
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log lines as text, or as one JSON object per line (timestamp, level, target, message, fields)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// After sync, forget, prune, check or copy, write run metrics here (node_exporter textfile, 0644), also when the run fails
    #[arg(long, global = true, value_name = "PATH")]
    pub metrics_file: Option<std::path::PathBuf>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository (encrypted unless --encryption none)
    Init(imgarc::maintenance::InitOptions),
    /// Manage the keys (passwords) of an encrypted repository: list, add, remove, passwd
    Key(key::KeyArgs),
    /// Archive an image file (or - for standard input)
    Archive(imgarc::archive::ArchiveOptions),
    /// List snapshots (alias: snapshots)
    #[command(visible_alias = "snapshots")]
    List(list::ListArgs),
    /// Show one snapshot in detail
    Show(show::ShowArgs),
    /// Rebuild an archived image byte-exactly, or convert its guest disk (--disk-format raw, qcow2, vmdk, vdi, vhd, vhdx)
    Restore(restore::RestoreArgs),
    /// Describe an image file or an archived snapshot: format, sizes, subformat, grain/block/cluster size, allocation, flags
    Inspect(imgarc::inspect::InspectOptions),
    /// Verify the repository (structure; with --read-data every byte)
    Check(imgarc::check::CheckFlags),
    /// Maintain the local index cache
    Index(index::IndexArgs),
    /// Remove stale locks (or all locks with --all)
    Unlock(imgarc::maintenance::UnlockOptions),
    /// Delete the scratch images, volumes and volume snapshots killed runs left in the cloud (docs/cleanup.md)
    Cleanup(cleanup::CleanupArgs),
    /// Glance images of a cloud and whether they are archived
    Glance(glance::GlanceArgs),
    /// Generate a small synthetic disk series, archive it, restore and verify it
    Demo(imgarc::demo::DemoOptions),
    /// Archive every matching Glance image the repository does not hold yet (nightly; docs/nightly.md)
    Sync(imgarc::sync::SyncFlags),
    /// Copy snapshots (all, or those selected) and exactly the chunks it lacks into a second repository (--to REPO2)
    Copy(copy::CopyArgs),
    /// Remove snapshots by a retention policy (restic's rules) or by id
    Forget(imgarc::forget::ForgetOptions),
    /// Reclaim the space of chunks no snapshot references (two-phase, safe with concurrent archives)
    Prune(imgarc::prune::PruneOptions),
    /// Capacity report: sizes, dedup, what each snapshot or group frees, growth and projection
    Report(imgarc::report::ReportFlags),
    /// Prove that snapshots restore: rebuild against every digest, check partitions and filesystems, optionally boot (--boot) and restore into Glance (--to-glance); results are recorded
    Drill(drill::DrillArgs),
    /// Serve a snapshot's guest disk read-only over NBD (qemu-img, qemu, nbdinfo, nbdcopy, nbd-client) until SIGINT/SIGTERM
    ServeNbd(imgarc::nbd::ServeNbdOptions),
    /// Print a shell completion script (bash, zsh, fish) on standard output
    Completions(completions::CompletionsArgs),
    /// Print the imgarc(1) man page, or write one page per verb into a directory (-o DIR)
    Man(completions::ManArgs),
    /// List a snapshot's guest volumes (p1/, p2/ …) and files, read from the archive
    Ls(ls::LsArgs),
    /// Print one guest file of a snapshot on standard output
    Cat(cat::CatArgs),
    /// Extract guest files and trees of a snapshot into a directory (modes, owners as root, times, links, sparse files)
    Extract(extract::ExtractArgs),
    /// Which snapshots hold a guest path matching a glob, and when it changed
    Find(find::FindArgs),
    /// Guest files added (+), removed (-) and changed (M) between two snapshots
    Diff(diff::DiffArgs),
}

impl Command {
    /// The verb as typed (`sync`, `forget`, …): the `<cmd>` of the metric names.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Init(_) => "init",
            Command::Key(_) => "key",
            Command::Archive(_) => "archive",
            Command::List(_) => "list",
            Command::Show(_) => "show",
            Command::Restore(_) => "restore",
            Command::Inspect(_) => "inspect",
            Command::Check(_) => "check",
            Command::Index(_) => "index",
            Command::Unlock(_) => "unlock",
            Command::Cleanup(_) => "cleanup",
            Command::Glance(_) => "glance",
            Command::Demo(_) => "demo",
            Command::Sync(_) => "sync",
            Command::Copy(_) => "copy",
            Command::Forget(_) => "forget",
            Command::Prune(_) => "prune",
            Command::Report(_) => "report",
            Command::Drill(_) => "drill",
            Command::ServeNbd(_) => "serve-nbd",
            Command::Completions(_) => "completions",
            Command::Man(_) => "man",
            Command::Ls(_) => "ls",
            Command::Cat(_) => "cat",
            Command::Extract(_) => "extract",
            Command::Find(_) => "find",
            Command::Diff(_) => "diff",
        }
    }

    /// True for a dry run (sync, forget, prune): it changes nothing, so it must not write run metrics.
    fn is_dry_run(&self) -> bool {
        match self {
            Command::Sync(f) => f.dry_run,
            Command::Forget(o) => o.dry_run,
            Command::Copy(a) => a.copy.dry_run,
            Command::Prune(o) => o.dry_run,
            _ => false,
        }
    }
}

impl GlobalArgs {
    pub fn output(&self) -> Output {
        Output { json: self.json, quiet: self.quiet }
    }

    pub fn passwords(&self) -> password::PasswordSpec {
        password::PasswordSpec { command: self.password_command.clone(), file: self.password_file.clone() }
    }
}

/// The exit code of a wrong password (restic's): no key of the repository opened.
pub const EXIT_WRONG_PASSWORD: i32 = 12;
/// A command line clap accepts but imgarc refuses ([`UsageError`]), as clap's own usage errors.
pub const EXIT_USAGE: i32 = 2;
/// The command finished, but some of its items failed ([`SomeItemsFailed`]).
pub const EXIT_SOME_FAILED: i32 = 3;
/// No repository at the location ([`imgarc::repository::RepositoryNotFound`]).
pub const EXIT_NO_REPOSITORY: i32 = 10;
/// A lock could not be acquired ([`imgarc::repository::lock::LockConflict`]).
pub const EXIT_LOCKED: i32 = 11;

/// The exit code of a failed run: the first cause in the error chain that has a code of its own, else 1.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        let code = if cause.is::<UsageError>() {
            EXIT_USAGE
        } else if cause.is::<SomeItemsFailed>() {
            EXIT_SOME_FAILED
        } else if cause.is::<imgarc::repository::RepositoryNotFound>() {
            EXIT_NO_REPOSITORY
        } else if cause.is::<imgarc::repository::lock::LockConflict>() {
            EXIT_LOCKED
        } else if cause.is::<imgarc::crypto::keyfile::WrongPassword>() {
            EXIT_WRONG_PASSWORD
        } else {
            continue;
        };
        return code;
    }
    1
}

/// Parses arguments, runs the command, and returns the process exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
    let out = cli.global.output();
    let format = cli.global.log_format;
    let result = start(&cli.global, &cli.command).and_then(|()| dispatch(&cli.global, cli.command));
    let code = match &result {
        Ok(()) => 0,
        Err(e) => exit_code(e),
    };
    let (code, written) = run_metrics::finish(code);
    if let Err(e) = &result {
        if out.json && e.downcast_ref::<AlreadyReported>().is_none() && e.downcast_ref::<SomeItemsFailed>().is_none() {
            let _ = writeln!(std::io::stdout(), "{}", serde_json::json!({ "ok": false, "error": format!("{e:#}"), "exit_code": code }));
        }
        logging::error_line(format, &format!("{e:#}"), code);
    }
    match written {
        Ok(()) => code,
        Err(e) => {
            // Monitoring that reads a stale file would miss this run: a success becomes a failure.
            logging::error_line(format, &format!("{e:#}"), code);
            if code == 0 {
                1
            } else {
                code
            }
        }
    }
}

/// Everything before the command: the signal thread (first, before any other thread exists),
/// the log subscriber, and `--metrics-file` (refused on a verb that writes no metrics).
fn start(global: &GlobalArgs, command: &Command) -> anyhow::Result<()> {
    let (json, format) = (global.json, global.log_format);
    signals::install(move |signal| {
        let (code, written) = run_metrics::finish(signals::exit_code(signal));
        imgarc::repository::lock::release_held_locks();
        // The NBD socket of serve-nbd, a boot drill's private directory.
        imgarc::util::remove_paths_on_exit();
        signals::restore_tty();
        let error = format!("interrupted by {}", signals::name(signal));
        if json {
            // A reader that closed stdout (`| head -1` after serve-nbd's ready line) must not
            // turn the exit into a panic that leaves the process running.
            let _ = writeln!(std::io::stdout(), "{}", serde_json::json!({ "ok": false, "error": error, "exit_code": code }));
        }
        logging::error_line(format, &error, code);
        if let Err(e) = written {
            logging::error_line(format, &format!("{e:#}"), code);
        }
        std::process::exit(code);
    })
    .map_err(|e| anyhow::anyhow!("cannot set up the SIGINT/SIGTERM handling: {e}"))?;
    logging::init(global)?;
    if let Some(path) = &global.metrics_file {
        let verb = command.name();
        if !run_metrics::METERED.contains(&verb) {
            return Err(UsageError(run_metrics::not_metered(verb)).into());
        }
        // A dry run's file would say "last success: now" for a night in which nothing ran.
        if command.is_dry_run() {
            return Err(UsageError(format!("--metrics-file records a real {verb}: a dry run changes nothing and writes no metrics")).into());
        }
        if path.is_dir() || path.file_name().is_none() {
            return Err(UsageError(format!("--metrics-file {}: a file name is needed, not a directory", path.display())).into());
        }
        // Refused now rather than after a night's sync: the file could not be written then.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        if !dir.is_dir() {
            return Err(UsageError(format!("--metrics-file {}: directory {} does not exist", path.display(), dir.display())).into());
        }
        run_metrics::start(path.clone(), verb);
    }
    Ok(())
}

/// A command line clap accepts but imgarc refuses: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The command ran to its end but some of its items failed (a sync with a failed image, a copy, a
/// drill): exit code 3. Like [`AlreadyReported`], its JSON document was printed already.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SomeItemsFailed(pub String);

/// A failure whose details the command already printed (its JSON document
/// says `ok: false`); the exit code is still 1, but no second document follows.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AlreadyReported(pub String);

pub fn default_repo() -> String {
    dirs::data_dir().map(|d| d.join("imgarc").join("repo").display().to_string()).unwrap_or_else(|| ".imgarc-repo".to_string())
}

pub fn dispatch(global: &GlobalArgs, command: Command) -> anyhow::Result<()> {
    let ctx = Ctx {
        location: global.repo.clone().unwrap_or_else(default_repo),
        out: global.output(),
        global: global.clone(),
        passwords: password::CliPasswords::new(global.passwords()),
    };
    match command {
        Command::Init(a) => init::run(&ctx, a),
        Command::Key(a) => key::run(&ctx, a),
        Command::Archive(a) => archive::run(&ctx, a),
        Command::List(a) => list::run(&ctx, a),
        Command::Show(a) => show::run(&ctx, a),
        Command::Restore(a) => restore::run(&ctx, a),
        Command::Inspect(a) => inspect::run(&ctx, a),
        Command::Check(a) => check::run(&ctx, a),
        Command::Index(a) => index::run(&ctx, a),
        Command::Unlock(a) => unlock::run(&ctx, a),
        Command::Cleanup(a) => cleanup::run(&ctx, a),
        Command::Glance(a) => glance::run(&ctx, a),
        Command::Demo(a) => demo::run(&ctx, a),
        Command::Sync(a) => sync::run(&ctx, a),
        Command::Copy(a) => copy::run(&ctx, a),
        Command::Forget(a) => forget::run(&ctx, a),
        Command::Prune(a) => prune::run(&ctx, a),
        Command::Report(a) => report::run(&ctx, a),
        Command::Drill(a) => drill::run(&ctx, a),
        Command::ServeNbd(a) => serve_nbd::run(&ctx, a),
        Command::Completions(a) => completions::run_completions(a),
        Command::Man(a) => completions::run_man(a),
        Command::Ls(a) => ls::run(&ctx, a),
        Command::Cat(a) => cat::run(&ctx, a),
        Command::Extract(a) => extract::run(&ctx, a),
        Command::Find(a) => find::run(&ctx, a),
        Command::Diff(a) => diff::run(&ctx, a),
    }
}

//! The command line (binary only): global options, the verbs and their
//! dispatch, the exit-code contract (0 ok, 1 failed, 2 usage, 12 wrong password), the JSON error
//! document, and the tracing subscriber that prints the library's events.
//! Each verb lives in its own file: its clap arguments beside its `run`,
//! which calls one library operation and presents its typed report.

mod archive;
mod check;
mod completions;
mod ctx;
mod demo;
mod forget;
mod glance;
mod index;
mod init;
mod inspect;
mod key;
mod list;
mod password;
mod progress;
mod prune;
mod report;
mod restore;
mod show;
mod sync;
mod unlock;

use clap::{Args, Parser, Subcommand};
pub use ctx::Ctx;
use progress::Output;

#[derive(Parser, Debug)]
#[command(
    name = "imgarc",
    version,
    about = "Deduplicating archiver for VM images (raw, QCOW2, OpenStack Glance)",
    after_help = "Password of an encrypted repository, first match wins: --password-command, --password-file, \
                  IMGARC_PASSWORD_FILE, IMGARC_PASSWORD, $CREDENTIALS_DIRECTORY/imgarc-password (systemd), a terminal prompt.\n\
                  Exit codes: 0 success, 1 the operation failed, 2 usage error, 12 wrong password."
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
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository (encrypted unless --encryption none)
    Init(imgarc::maintenance::InitOptions),
    /// Manage the keys (passwords) of an encrypted repository: list, add, remove, passwd
    Key(key::KeyArgs),
    /// Archive an image file (or - for standard input)
    Archive(imgarc::archive::ArchiveOptions),
    /// List snapshots
    List(list::ListArgs),
    /// Show one snapshot in detail
    Show(show::ShowArgs),
    /// Rebuild an archived image byte-exactly
    Restore(restore::RestoreArgs),
    /// Describe an image file or an archived snapshot: format, sizes, QCOW2 features and flags
    Inspect(imgarc::inspect::InspectOptions),
    /// Verify the repository (structure; with --read-data every byte)
    Check(imgarc::check::CheckFlags),
    /// Maintain the local index cache
    Index(index::IndexArgs),
    /// Remove stale locks (or all locks with --all)
    Unlock(imgarc::maintenance::UnlockOptions),
    /// Glance images of a cloud and whether they are archived
    Glance(glance::GlanceArgs),
    /// Generate a small synthetic disk series, archive it, restore and verify it
    Demo(imgarc::demo::DemoOptions),
    /// Archive every matching Glance image the repository does not hold yet (nightly; docs/nightly.md)
    Sync(imgarc::sync::SyncFlags),
    /// Remove snapshots by a retention policy (restic's rules) or by id
    Forget(imgarc::forget::ForgetOptions),
    /// Reclaim the space of chunks no snapshot references (two-phase, safe with concurrent archives)
    Prune(imgarc::prune::PruneOptions),
    /// Capacity report: sizes, dedup, what each snapshot or group frees, growth and projection
    Report(imgarc::report::ReportFlags),
    /// Print a shell completion script (bash, zsh, fish) on standard output
    Completions(completions::CompletionsArgs),
    /// Print the imgarc(1) man page, or write one page per verb into a directory (-o DIR)
    Man(completions::ManArgs),
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

/// Parses arguments, runs the command, and returns the process exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
    init_logging();
    let out = cli.global.output();
    match dispatch(&cli.global, cli.command) {
        Ok(()) => 0,
        Err(e) => {
            if out.json && e.downcast_ref::<AlreadyReported>().is_none() {
                println!("{}", serde_json::json!({ "ok": false, "error": format!("{e:#}") }));
            }
            eprintln!("imgarc: error: {e:#}");
            if e.downcast_ref::<imgarc::crypto::keyfile::WrongPassword>().is_some() {
                EXIT_WRONG_PASSWORD
            } else {
                1
            }
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
        Command::Glance(a) => glance::run(&ctx, a),
        Command::Demo(a) => demo::run(&ctx, a),
        Command::Sync(a) => sync::run(&ctx, a),
        Command::Forget(a) => forget::run(&ctx, a),
        Command::Prune(a) => prune::run(&ctx, a),
        Command::Report(a) => report::run(&ctx, a),
        Command::Completions(a) => completions::run_completions(a),
        Command::Man(a) => completions::run_man(a),
    }
}

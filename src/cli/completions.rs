//! `imgarc completions SHELL` and `imgarc man` (binary only): shell completion scripts and roff
//! man pages generated from the one clap definition of the command line, so they cannot drift
//! from the verbs and flags the binary accepts. The package (ci/package.sh) ships their output.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to write a completion script for (bash, zsh, fish, elvish, powershell)
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write one page per verb (imgarc.1, imgarc-sync.1, imgarc-key-add.1, …) into this directory
    /// (created if missing) instead of the imgarc(1) page on standard output
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: Option<PathBuf>,
}

/// The command line as clap builds it, without the `help` subcommand clap adds (it has no page
/// and no completion of its own worth shipping).
fn command() -> clap::Command {
    super::Cli::command().disable_help_subcommand(true)
}

pub fn run_completions(args: CompletionsArgs) -> Result<()> {
    // Rendered into memory first: clap_complete panics when its writer fails (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command(), "imgarc", &mut script);
    write_stdout(&script).context("writing the completion script to standard output")
}

/// Writes `bytes` on standard output; a reader that stopped early (`imgarc man | head`) is not
/// an error.
fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

pub fn run_man(args: ManArgs) -> Result<()> {
    match args.output {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command()).render(&mut page).context("rendering the man page")?;
            write_stdout(&page).context("writing the man page to standard output")
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating the man page directory {}", dir.display()))?;
            clap_mangen::generate_to(command(), &dir).with_context(|| format!("writing the man pages into {}", dir.display()))
        }
    }
}

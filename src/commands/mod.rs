//! One file per user verb. Each command opens what it needs through `Ctx`,
//! does its work through the library modules, and prints either prose or one
//! JSON document (`--json`).

pub mod archive;
pub mod check;
pub mod demo;
pub mod index;
pub mod init;
pub mod inspect;
pub mod list;
pub mod restore;
pub mod show;
pub mod unlock;

use crate::backend::{self, Backend};
use crate::cli::{Command, GlobalArgs};
use crate::index::Index;
use crate::progress::Output;
use crate::repository::Repository;
use anyhow::{Context, Result};
use std::sync::Arc;

/// A failure whose details the command already printed (its JSON document
/// says `ok: false`); the exit code is still 1, but no second document follows.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AlreadyReported(pub String);

pub struct Ctx {
    pub location: String,
    pub out: Output,
}

impl Ctx {
    pub fn backend(&self) -> Result<Arc<dyn Backend>> {
        backend::open(&self.location)
    }

    pub fn open_repo(&self) -> Result<Repository> {
        Repository::open(self.backend()?)
    }

    /// Opens the repository and its index cache, caught up with the repository.
    pub fn open(&self) -> Result<(Repository, Index)> {
        let repo = self.open_repo()?;
        let index = Index::open(&repo).context("cannot bring the local index up to date")?;
        Ok((repo, index))
    }

    /// Prints the JSON document, or the prose, to stdout.
    pub fn emit(&self, json: &serde_json::Value, prose: impl FnOnce() -> String) {
        if self.out.json {
            println!("{}", serde_json::to_string_pretty(json).expect("JSON serializes"));
        } else if !self.out.quiet {
            print!("{}", prose());
        }
    }
}

pub fn default_repo() -> String {
    dirs::data_dir().map(|d| d.join("imgarc").join("repo").display().to_string()).unwrap_or_else(|| ".imgarc-repo".to_string())
}

pub fn dispatch(global: &GlobalArgs, command: Command) -> Result<()> {
    let ctx = Ctx { location: global.repo.clone().unwrap_or_else(default_repo), out: global.output() };
    match command {
        Command::Init(a) => init::run(&ctx, a),
        Command::Archive(a) => archive::run(&ctx, a),
        Command::List(a) => list::run(&ctx, a),
        Command::Show(a) => show::run(&ctx, a),
        Command::Restore(a) => restore::run(&ctx, a),
        Command::Inspect(a) => inspect::run(&ctx, a),
        Command::Check(a) => check::run(&ctx, a),
        Command::Index(a) => index::run(&ctx, a),
        Command::Unlock(a) => unlock::run(&ctx, a),
        Command::Demo(a) => demo::run(&ctx, a),
    }
}

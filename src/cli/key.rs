//! `imgarc key list | add | remove | passwd`: the key objects of an encrypted
//! repository (`imgarc::key`). The new password of `add` and `passwd` comes
//! from `--new-password-file` or a terminal prompt asked twice.

use super::password::new_password;
use super::Ctx;
use anyhow::Result;
use clap::{Args, Subcommand};
use imgarc::crypto::keyfile::KdfParams;
use imgarc::crypto::KeyKind;
use imgarc::key::{self, AddKeyOptions, KeyEntry, PasswdOptions, RemoveKeyOptions};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List the key objects: id, kind, label, created, hostname, and which one is in use
    List,
    /// Add a key (a new password) to the repository; needs a full key
    Add {
        /// A write-only key: archives and syncs, but cannot read archived data
        #[arg(long)]
        write_only: bool,
        /// A label shown by `key list`
        #[arg(long, default_value = "")]
        label: String,
        /// Read the new key's password from this file (else a terminal prompt, asked twice)
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// Remove a key; refused for the last key and the last full key
    Remove {
        /// The key's id, or at least 4 of its first hex digits
        id: String,
    },
    /// Change the password of the key in use (a new key object replaces it)
    Passwd {
        /// Read the new password from this file (else a terminal prompt, asked twice)
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
}

fn line(k: &KeyEntry) -> String {
    format!(
        "{} {} {:<10} {:<24} {:<20} {}{}\n",
        if k.in_use { "*" } else { " " },
        k.short_id,
        k.kind.name(),
        k.created,
        k.hostname,
        k.label,
        if k.in_use { " (in use)" } else { "" }
    )
}

pub fn run(ctx: &Ctx, args: KeyArgs) -> Result<()> {
    let repo = ctx.open_repo()?;
    match args.command {
        KeyCommand::List => {
            let r = key::list(&repo)?;
            for u in &r.unreadable {
                tracing::warn!("unreadable key object {u}");
            }
            ctx.emit(&serde_json::to_value(&r)?, || r.keys.iter().map(line).collect());
        }
        KeyCommand::Add { write_only, label, new_password_file } => {
            let password = new_password(new_password_file.as_deref())?;
            let kind = if write_only { KeyKind::WriteOnly } else { KeyKind::Full };
            let k = key::add(&repo, &AddKeyOptions { kind, label, kdf: KdfParams::for_new_keys() }, &password)?;
            ctx.emit(&serde_json::json!({ "added": k }), || format!("added {} key {}\n", k.kind.name(), k.short_id));
        }
        KeyCommand::Remove { id } => {
            let k = key::remove(&repo, &RemoveKeyOptions { id })?;
            ctx.emit(&serde_json::json!({ "removed": k }), || format!("removed {} key {}\n", k.kind.name(), k.short_id));
        }
        KeyCommand::Passwd { new_password_file } => {
            let password = new_password(new_password_file.as_deref())?;
            let r = key::passwd(&repo, &PasswdOptions { kdf: KdfParams::for_new_keys() }, &password)?;
            ctx.emit(&serde_json::to_value(&r)?, || {
                format!("changed the password: key {} replaces {}\n", r.key.short_id, &r.replaced[..8])
            });
        }
    }
    Ok(())
}

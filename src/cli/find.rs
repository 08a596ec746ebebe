//! `imgarc find PATTERN [--name N] [--since T]`: which snapshots hold a guest path, and when it changed.

use super::ls::print_warnings;
use super::{Ctx, UsageError};
use anyhow::Result;
use clap::Args;
use imgarc::files::find::{find, FindOptions};

#[derive(Args, Debug)]
pub struct FindArgs {
    /// Glob over guest paths (with a /: the whole path, e.g. p1/etc/*.conf; without: the file name)
    pub pattern: String,
    /// Only snapshots of this image name (a glob)
    #[arg(long)]
    pub name: Option<String>,
    /// Only snapshots taken at or after this time (RFC 3339, or a date YYYY-MM-DD, UTC)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
}

/// `2026-11-30T00:00:00Z`, or a date (midnight UTC).
fn parse_since(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    imgarc::util::parse_rfc3339(s).or_else(|| imgarc::util::parse_rfc3339(&format!("{s}T00:00:00Z")))
}

pub fn run(ctx: &Ctx, args: FindArgs) -> Result<()> {
    let since = match &args.since {
        None => None,
        Some(s) => Some(
            parse_since(s)
                .ok_or_else(|| UsageError(format!("--since {s:?}: not a time (RFC 3339 such as 2026-11-30T02:00:00Z, or a date)")))?,
        ),
    };
    let (repo, index) = ctx.open_without_references()?;
    let r = find(&repo, &index, &FindOptions { pattern: args.pattern.clone(), name: args.name.clone(), since })?;
    print_warnings(ctx, &r.warnings);
    ctx.emit(&serde_json::to_value(&r)?, || {
        let mut s = String::new();
        for m in &r.matches {
            s.push_str(&format!("{} {}: in {} snapshot(s)\n", m.name, m.path, m.snapshots.len()));
            for v in &m.versions {
                s.push_str(&format!(
                    "  {} {} {} {} bytes, mtime {}\n",
                    v.time,
                    &v.snapshot[..16],
                    v.entry.file_type,
                    v.entry.size,
                    v.entry.mtime_secs
                ));
            }
        }
        if r.matches.is_empty() {
            s.push_str(&format!("no path matches {:?} in {} snapshot(s)\n", r.pattern, r.snapshots_searched));
        }
        s
    });
    Ok(())
}

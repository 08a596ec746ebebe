//! `imgarc report`: the capacity report, in the format asked for, to stdout or `-o FILE`.

use super::Ctx;
use anyhow::{Context, Result};
use clap::Args;
use imgarc::report::render::{self, Format};
use imgarc::report::{self, GroupBy, Options};

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
    /// Capacity to project the growth against, e.g. 10T (K=1024, M=2^20, G=2^30, T=2^40)
    #[arg(long)]
    pub capacity: Option<String>,
    /// Chunk references read at most for exact per-group figures
    #[arg(long, default_value_t = imgarc::report::DEFAULT_SCAN_LIMIT)]
    pub scan_limit: u64,
    /// Write the report to FILE instead of standard output
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
}

pub fn run(ctx: &Ctx, args: ReportArgs) -> Result<()> {
    let format = match (&args.format, ctx.out.json) {
        (Some(f), _) => Format::parse(f)?,
        (None, true) => Format::Json,
        (None, false) => Format::Table,
    };
    let mut by = args.by.as_deref().map(GroupBy::parse).transpose()?;
    if format == Format::Html && by.is_none() {
        // The page's "dedup by group" chart needs groups.
        by = Some(GroupBy::Name);
    }
    let capacity = args.capacity.as_deref().map(imgarc::util::parse_size).transpose().context("--capacity")?;
    let opts = Options { by, project: args.project, capacity, scan_limit: args.scan_limit };
    let (repo, index) = ctx.open()?;
    let report = report::compute(&repo, &index, &opts)?;
    let text = render::render(&report, format);
    match &args.output {
        Some(path) => imgarc::util::write_public_file(path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

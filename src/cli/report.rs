//! `imgarc report`: the capacity report, in the format asked for, to stdout or `-o FILE`.

use super::Ctx;
use crate::cli::ReportArgs;
use crate::report::render::{self, Format};
use crate::report::{self, GroupBy, Options};
use anyhow::{Context, Result};

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
    let capacity = args.capacity.as_deref().map(crate::util::parse_size).transpose().context("--capacity")?;
    let opts = Options { by, project: args.project, capacity, scan_limit: args.scan_limit };
    let (repo, index) = ctx.open()?;
    let report = report::compute(&repo, &index, &opts)?;
    let text = render::render(&report, format);
    match &args.output {
        Some(path) => crate::util::write_public_file(path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

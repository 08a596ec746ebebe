//! `imgarc report`: the capacity report (`imgarc::report`), in the format asked for, to stdout or `-o FILE`
//! (written by `imgarc::util::write_public_file`: temp file + rename, mode 0644, so a textfile collector never reads half a file).

use super::Ctx;
use anyhow::{Context, Result};
use imgarc::report::{self, render, ReportFlags};

pub fn run(ctx: &Ctx, flags: ReportFlags) -> Result<()> {
    let (format, opts) = flags.resolve(ctx.out.json)?;
    let detail = flags.metrics_detail(format)?;
    let (repo, index) = ctx.open()?;
    let report = report::compute(&repo, &index, &opts)?;
    let text = render::render_with(&report, format, detail);
    match &flags.output {
        Some(path) => imgarc::util::write_public_file(path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

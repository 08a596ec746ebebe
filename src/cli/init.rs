//! `imgarc init`: create a repository.

use super::Ctx;
use anyhow::{bail, Context, Result};
use clap::Args;
use imgarc::repository::{config::Config, Repository};

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Average chunk size (power of two, 4K..4M)
    #[arg(long, default_value = "64K")]
    pub chunk_size: String,
    /// Compression of chunk payloads: zstd:LEVEL (1..19)
    #[arg(long, default_value = "zstd:3")]
    pub compression: String,
}

pub fn parse_compression(s: &str) -> Result<i32> {
    let Some(level) = s.strip_prefix("zstd:") else {
        bail!("compression {s:?}: expected zstd:LEVEL, e.g. zstd:3");
    };
    level.parse().with_context(|| format!("compression {s:?}: LEVEL must be a number"))
}

pub fn run(ctx: &Ctx, args: InitArgs) -> Result<()> {
    let avg = imgarc::util::parse_size(&args.chunk_size)?;
    let avg = u32::try_from(avg).context("chunk size too large")?;
    let config = Config::new(avg, parse_compression(&args.compression)?)?;
    let repo = Repository::init(ctx.backend()?, config)?;
    let c = repo.config();
    ctx.emit(
        &serde_json::json!({"repository": repo.location(), "id": c.id, "chunk_size": c.chunker.avg_size, "compression": format!("zstd:{}", c.compression.level), "version": c.version}),
        || format!("created repository {} at {}\n", &c.id[..16], repo.location()),
    );
    Ok(())
}

//! `imgarc init`: create a repository (`imgarc::maintenance::init`).

use super::Ctx;
use anyhow::Result;
use imgarc::maintenance::{init, InitOptions};

pub fn run(ctx: &Ctx, opts: InitOptions) -> Result<()> {
    let repo = init(ctx.connect()?, &opts, &super::ctx::EnvPassword)?;
    let c = repo.config();
    ctx.emit(
        &serde_json::json!({"repository": repo.location(), "id": c.id, "chunk_size": c.chunker.avg_size, "compression": format!("zstd:{}", c.compression.level), "version": c.version}),
        || format!("created repository {} at {}\n", &c.id[..16], repo.location()),
    );
    Ok(())
}

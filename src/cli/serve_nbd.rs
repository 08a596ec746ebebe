//! `imgarc serve-nbd SNAPSHOT [--listen unix:PATH|HOST:PORT] [--export-name N]`: serve a
//! snapshot's guest disk read-only over NBD until SIGINT/SIGTERM (exit 130/143, the socket
//! file removed, the lock released by the signal thread).

use super::Ctx;
use anyhow::{Context, Result};
use imgarc::index::Index;
use imgarc::nbd::{NbdServer, ServeNbdOptions};
use imgarc::util::human_bytes;
use std::io::Write;

pub fn run(ctx: &Ctx, opts: ServeNbdOptions) -> Result<()> {
    let repo = ctx.open_repo()?;
    // Refused before a lock is written: a write-only key cannot read the disk anyway.
    repo.require_full_key("serve-nbd")?;
    // A shared lock for as long as clients may read: a prune that marks packs while we serve
    // postpones deleting them until we stop (as for an archive).
    let lock = repo.acquire_lock(false, "serve-nbd")?;
    repo.hold_lock(&lock);
    let index = Index::open_without_references(&repo).context("cannot bring the local index up to date")?;
    // SNAPSHOT as restore resolves it.
    let id = index.resolve_snapshot(&opts.snapshot)?;
    let snap = index.snapshot(&id)?.context("snapshot vanished from the index")?;
    let server = NbdServer::bind(&repo, &index, &id, &snap, &opts)?;
    let ready = server.ready();
    // One line, on stdout, once clients can connect: scripts and tests wait for it.
    let line = if ctx.out.json {
        serde_json::to_string(ready)?
    } else {
        format!(
            "serving snapshot {} ({}), {} guest disk, read-only at {}\n(stop with Ctrl-C or SIGTERM)",
            id.short(),
            snap.name,
            human_bytes(ready.size),
            ready.uri
        )
    };
    if ctx.out.json || !ctx.out.quiet {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
    let never = std::sync::atomic::AtomicBool::new(false);
    server.serve(&never)?;
    drop(lock);
    Ok(())
}

//! `imgarc init`: create a repository (`imgarc::maintenance::init`), encrypted
//! unless `--encryption none`; the first key's password is asked twice on a terminal.

use super::password::CliPasswords;
use super::Ctx;
use anyhow::Result;
use imgarc::maintenance::{init, InitOptions};

pub fn run(ctx: &Ctx, opts: InitOptions) -> Result<()> {
    let passwords = CliPasswords::confirming(ctx.global.passwords());
    let repo = init(ctx.connect()?, &opts, &passwords)?;
    let c = repo.config();
    let encrypted = c.cipher().is_some();
    let immutability = imgarc::object_lock::Immutability::of(c.object_lock.as_ref(), repo.lock_backend());
    let key = repo.key_id().map(|id| serde_json::json!({"id": id.to_hex(), "kind": repo.key_kind().map(|k| k.name())}));
    ctx.emit(
        &serde_json::json!({
            "repository": repo.location(), "id": c.id, "chunk_size": c.chunker.avg_size,
            "compression": format!("zstd:{}", c.compression.level), "version": c.version,
            "encrypted": encrypted, "encryption": c.encryption, "chunk_id": c.chunk_id, "dedup_scope": c.dedup_scope, "key": key,
            "object_lock": c.object_lock, "immutability": immutability,
        }),
        || {
            let mut s = format!("created repository {} at {}\n", &c.id[..16], repo.location());
            match repo.key_id() {
                Some(id) => s.push_str(&format!(
                    "encrypted with {} (keyed chunk ids, dedup scope {}); first key {} (full). \
                     Keep the password safe: without a key's password the data cannot be read.\n",
                    c.encryption,
                    serde_json::to_value(c.dedup_scope).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
                    &id.to_hex()[..8]
                )),
                None => s.push_str("not encrypted (--encryption none): anyone who can read the repository can read the images\n"),
            }
            s.push_str(&format!("{}\n", immutability.line()));
            s
        },
    );
    Ok(())
}

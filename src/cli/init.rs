//! `imgarc init`: create a repository (`imgarc::maintenance::init`), encrypted
//! unless `--encryption none`; the first key's password is asked twice on a terminal.
//! With `--copy-chunker-params-from REPO` the source is opened first (its
//! password from `--from-password-file`, else the usual sources — then one
//! password serves both, asked once) and the new repository cuts and names
//! chunks as it does (`imgarc::maintenance::init_copying_chunker_params`).

use super::password::{CliPasswords, PasswordSpec};
use super::Ctx;
use anyhow::{Context, Result};
use imgarc::maintenance::{init, init_copying_chunker_params, InitOptions};
use imgarc::repository::Repository;

pub fn run(ctx: &Ctx, opts: InitOptions) -> Result<()> {
    let passwords = CliPasswords::confirming(ctx.global.passwords());
    let backend = ctx.connect()?;
    let (repo, copied) = match &opts.copy_chunker_params_from {
        None => (init(backend, &opts, &passwords)?, None),
        Some(source) => {
            // Refuse an occupied target before the source's password is asked.
            Repository::ensure_creatable(&backend)?;
            let from_passwords =
                opts.from_password_file.clone().map(|file| CliPasswords::new(PasswordSpec { command: None, file: Some(file) }));
            // Without --from-password-file one password serves both: asked once, and not twice at a
            // prompt, since opening the source has checked it.
            let shared = CliPasswords::new(ctx.global.passwords());
            let source_repo = Repository::open_with(
                ctx.connect_other(source, opts.from_repo_cloud.as_deref())?,
                from_passwords.as_ref().unwrap_or(&shared),
            )
            .with_context(|| format!("cannot open the --copy-chunker-params-from repository {source}"))?;
            let checked = from_passwords.is_none() && source_repo.keys().is_some();
            let (repo, copied) = init_copying_chunker_params(backend, &opts, &source_repo, if checked { &shared } else { &passwords })?;
            (repo, Some(copied))
        }
    };
    let c = repo.config();
    let encrypted = c.cipher().is_some();
    let immutability = imgarc::object_lock::Immutability::of(c.object_lock.as_ref(), repo.lock_backend());
    let key = repo.key_id().map(|id| serde_json::json!({"id": id.to_hex(), "kind": repo.key_kind().map(|k| k.name())}));
    ctx.emit(
        &serde_json::json!({
            "repository": repo.location(), "id": c.id, "chunk_size": c.chunker.avg_size,
            "compression": format!("zstd:{}", c.compression.level), "version": c.version,
            "encrypted": encrypted, "encryption": c.encryption, "chunk_id": c.chunk_id, "dedup_scope": c.dedup_scope, "key": key,
            "chunker_params_from": copied,
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
            if let Some(copied) = &copied {
                s.push_str(&format!("chunker parameters copied from repository {} at {}", &copied.id[..16], copied.repository));
                match &copied.reason {
                    None if copied.shared_keys.is_empty() => s.push_str(": chunk ids match (both unencrypted)\n"),
                    None => s.push_str(": chunk ids match (its chunker key and chunk id key are shared; its other keys are not)\n"),
                    Some(why) => s.push_str(&format!(
                        "; chunk ids will NOT match: {why}. `copy` between the two re-identifies every chunk (without re-chunking)\n"
                    )),
                }
            }
            s.push_str(&format!("{}\n", immutability.line()));
            s
        },
    );
    Ok(())
}

//! Typed repository objects: what every kind of small object (snapshot,
//! index object, prune mark, deleted-upstream record, lock) declares about
//! itself, so that one generic save/load/list/delete on
//! [`super::Repository`] serves them all, with one name check.
//!
//! Packs are not `RepoFile`s: they are read by range and named by the
//! pack writer (`Repository::write_pack`, `read_pack*`).

use super::pack::BlobLimits;
use crate::ids::Id;
use anyhow::Result;

/// How an object's name (the key after its prefix) is chosen, and so how a
/// reader checks it (format-spec §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// The BLAKE3 of the object's bytes, in hex: a reader refuses an object
    /// whose bytes do not hash to its name.
    ContentId,
    /// Random (`locks/`): any name the key grammar accepts.
    Random,
    /// Given by the object itself ([`RepoFile::own_name`]): a reader refuses
    /// an object that names itself otherwise.
    Own,
}

/// One kind of small repository object.
pub trait RepoFile: Sized {
    /// Key prefix, with its trailing `/` (`snapshots/`).
    const PREFIX: &'static str;
    /// What messages call it (`snapshot`, `prune mark`).
    const KIND: &'static str;
    /// Largest object a reader fetches (format-spec §1); a larger one is refused unread.
    const MAX_BYTES: u64;
    const NAMING: Naming;
    /// Whether writing or deleting it needs the locks the handle holds (see
    /// `Repository::hold_lock`); locks themselves and upstream records do not.
    const NEEDS_LOCK: bool;
    /// Whether an encrypted repository seals it (with the meta key). Key
    /// objects are not sealed: they are what unseals.
    const SEALED: bool = true;

    fn encode(&self) -> Result<Vec<u8>>;
    /// Decodes stored bytes (the name is checked by the caller, uniformly).
    fn decode(bytes: &[u8], limits: &BlobLimits) -> Result<Self>;
    /// The name an [`Naming::Own`] object must be stored under.
    fn own_name(&self) -> Option<String> {
        None
    }

    /// The key of the object named `name`.
    fn key(name: &str) -> String {
        format!("{}{name}", Self::PREFIX)
    }

    /// The key of a content-named object with this id.
    fn id_key(id: &Id) -> String {
        Self::key(&id.to_hex())
    }

    /// The name in `key`, if `key` is one of this kind's.
    fn name_of(key: &str) -> Option<&str> {
        key.strip_prefix(Self::PREFIX).filter(|n| !n.is_empty() && !n.contains('/'))
    }
}

//! imgarc: a content-addressed, deduplicating archiver for VM images.
//!
//! Data flows one way: `source` (bytes in) → `chunking` (guest stream into
//! chunks and holes) → `store` (hash, dedup, compress, pack) → `repository`
//! (format) → `backend` (storage); `index` caches what the repository holds;
//! `archive` drives the write path, `restore` and `check` read back. `cli` and
//! `commands` are the user surface. See ARCHITECTURE.md.

pub mod archive;
pub mod backend;
pub mod check;
pub mod chunking;
pub mod cli;
pub mod commands;
pub mod digest;
pub mod format;
pub mod ids;
pub mod index;
pub mod net;
pub mod openstack;
pub mod progress;
pub mod prune;
pub mod report;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod secret;
pub mod source;
pub mod store;
pub mod sync;
pub mod synthetic;
pub mod util;
pub mod warnings;

//! imgarc: a content-addressed, deduplicating archiver for VM images.
//!
//! Data flows one way: `source` (bytes in) → `chunking` (guest stream into
//! chunks and holes) → `store` (hash, dedup, compress, pack) → `repository`
//! (format) → `backend` (storage); `index` caches what the repository holds;
//! `archive` drives the write path, `restore` and `check` read back. The
//! operations take one options struct and return a typed report; the binary
//! (`src/main.rs`, `src/cli/`) parses arguments and prints. See ARCHITECTURE.md.

pub mod archive;
pub mod backend;
pub mod check;
pub mod chunking;
pub mod copy;
pub mod crc32c;
pub mod crypto;
pub mod demo;
pub mod digest;
pub mod drill;
pub mod files;
pub mod forget;
pub mod format;
pub mod guest;
pub mod ids;
pub mod images;
pub mod index;
pub mod inspect;
pub mod key;
pub mod maintenance;
pub mod metrics;
pub mod nbd;
pub mod net;
pub mod object_lock;
pub mod openstack;
pub mod progress;
pub mod prune;
pub mod report;
pub mod repository;
pub mod restore;
pub mod restore_cinder;
pub mod restore_glance;
pub mod retention;
pub mod scratch;
pub mod secret;
pub mod select;
pub mod shard;
pub(crate) mod source;
pub(crate) mod store;
pub mod sync;
pub mod synthetic;
pub mod util;
pub mod volumes;
pub(crate) mod warnings;

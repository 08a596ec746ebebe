//! The one integration-test binary: every suite is a module here (as ripgrep and rustic do), so the
//! whole stack is linked once instead of once per file. Run one suite with a filter:
//! `cargo nextest run -E 'test(/^roundtrip::/)'` or `cargo test --test integration roundtrip::`.
//!
//! Suites that talk to real servers are compiled only with their feature: `remote-tests` (Ceph RGW,
//! Swift; `ci/objectstore.sh`) and `openstack-tests` (Keystone, Glance, Cinder; `ci/openstack.sh`).

// Tests report progress and skips on stderr, and call libc for umask, flock and getrusage.
#![allow(clippy::print_stdout, clippy::print_stderr, unsafe_code)]

mod support;

// The fuzz target functions, shared with the libFuzzer binaries (fuzz/src/lib.rs has no crate
// attributes so that it can be included here).
#[path = "../../fuzz/src/lib.rs"]
mod fuzz_targets;

mod backend_modes;
mod backend_retry;
mod copy;
mod copy_params;
mod dedup_scope;
mod drill;
mod drill_boot;
mod drill_records;
mod encryption;
mod faults;
mod format_matrix;
mod format_vdi;
mod format_vhd;
mod format_vhdx;
mod format_vmdk;
mod fuzz_replay;
mod guest_fat;
mod guest_files;
mod guest_xfs;
mod index_compact;
mod keys;
mod multi_host;
mod nbd;
mod operator;
mod package;
mod prune;
mod qcow2_header;
mod qcow2_hostile;
mod qcow2_perf;
mod qcow2_roundtrip;
mod report;
mod restore_order;
mod roundtrip;
mod select;
mod tls;
mod write_only;

#[cfg(feature = "remote-tests")]
mod backend_conformance;
#[cfg(feature = "remote-tests")]
mod backend_faults;
#[cfg(feature = "remote-tests")]
mod backend_throughput;
#[cfg(feature = "remote-tests")]
mod no_delete;
#[cfg(feature = "remote-tests")]
mod object_lock;
#[cfg(feature = "remote-tests")]
mod remote_e2e;

#[cfg(feature = "openstack-tests")]
mod cinder_archive;
#[cfg(feature = "openstack-tests")]
mod cinder_cleanup;
#[cfg(feature = "openstack-tests")]
mod cinder_restore;
#[cfg(feature = "openstack-tests")]
mod cinder_sync;
#[cfg(feature = "openstack-tests")]
mod drill_glance;
#[cfg(feature = "openstack-tests")]
mod format_glance;
#[cfg(feature = "openstack-tests")]
mod glance_e2e;
#[cfg(feature = "openstack-tests")]
mod openstack_bench;
#[cfg(feature = "openstack-tests")]
mod openstack_cinder;
#[cfg(feature = "openstack-tests")]
mod openstack_fault;
#[cfg(feature = "openstack-tests")]
mod openstack_glance;
#[cfg(feature = "openstack-tests")]
mod openstack_keystone;
#[cfg(feature = "openstack-tests")]
mod sync_e2e;
#[cfg(all(feature = "openstack-tests", feature = "remote-tests"))]
mod sync_shard;

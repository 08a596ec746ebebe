//! Crafted QCOW2 headers (every field at 0, at its maximum and at its boundaries): the library
//! parse returns an error naming the field — never a panic or a wrapped offset — and the
//! binary (`inspect`, `archive`) exits 1 with that field in its message.
//! Headers are built in code, so this needs no qemu-img.

use crate::support;
use imgarc::format::qcow2::header;
use std::process::{Command, Stdio};
use support::Env;

const CLUSTER: usize = 0x10000;
const FILE_LEN: usize = 0x50000;

/// A valid v3 header (64 KiB clusters, 1 MiB disk): refcount table @0x10000, L1 @0x30000,
/// header_length 104 followed by the extension end marker; the rest of the file is zeros.
fn base() -> Vec<u8> {
    let mut b = vec![0u8; FILE_LEN];
    b[..4].copy_from_slice(header::MAGIC);
    put(&mut b, 4, 4, 3);
    put(&mut b, 20, 4, 16);
    put(&mut b, 24, 8, 1 << 20);
    put(&mut b, 36, 4, 1);
    put(&mut b, 40, 8, 0x30000);
    put(&mut b, 48, 8, 0x10000);
    put(&mut b, 56, 4, 1);
    put(&mut b, 96, 4, 4);
    put(&mut b, 100, 4, 104);
    b
}

/// Big-endian store of the low `width` bytes of `v` at `off`.
fn put(b: &mut [u8], off: usize, width: usize, v: u64) {
    b[off..off + width].copy_from_slice(&v.to_be_bytes()[8 - width..]);
}

/// One crafted header: the field the error must name, and the patches (offset, width, value).
struct Case {
    field: &'static str,
    patches: &'static [(usize, usize, u64)],
    /// Only wrong given the file length (a table just past the end of the file).
    needs_file_len: bool,
}

const fn case(field: &'static str, patches: &'static [(usize, usize, u64)]) -> Case {
    Case { field, patches, needs_file_len: false }
}

const fn past_end(field: &'static str, patches: &'static [(usize, usize, u64)]) -> Case {
    Case { field, patches, needs_file_len: true }
}

const MAX32: u64 = u32::MAX as u64;
/// qemu's table limits in this header's units: 8 MiB of refcount table, 32 MiB of L1.
const REFTABLE_CLUSTERS_MAX: u64 = (8 << 20) / CLUSTER as u64;
const L1_ENTRIES_MAX: u64 = (32 << 20) / 8;
const MAX64: u64 = u64::MAX;

fn cases() -> Vec<Case> {
    vec![
        case("version", &[(4, 4, 0)]),
        case("version", &[(4, 4, 1)]),
        case("version", &[(4, 4, 4)]),
        case("version", &[(4, 4, MAX32)]),
        // The reported panic: name offset near u64::MAX, `offset + size` wrapped.
        case("backing_file_offset", &[(8, 8, MAX64), (16, 4, 1)]),
        case("backing_file_offset", &[(8, 8, MAX64), (16, 4, 0)]),
        case("backing_file_offset", &[(8, 8, MAX64 - 1022), (16, 4, 1023)]),
        case("backing_file_offset", &[(8, 8, 103), (16, 4, 1)]),
        case("backing_file_offset", &[(8, 8, CLUSTER as u64 - 1), (16, 4, 2)]),
        case("backing_file_offset", &[(8, 8, 1 << 32), (16, 4, 8)]),
        case("backing_file_size", &[(8, 8, 0x1000), (16, 4, 1024)]),
        case("backing_file_size", &[(8, 8, 0x1000), (16, 4, MAX32)]),
        case("backing_file_size", &[(8, 8, MAX64), (16, 4, MAX32)]),
        case("cluster_bits", &[(20, 4, 0)]),
        case("cluster_bits", &[(20, 4, 8)]),
        case("cluster_bits", &[(20, 4, 22)]),
        case("cluster_bits", &[(20, 4, 63)]),
        case("cluster_bits", &[(20, 4, 64)]),
        case("cluster_bits", &[(20, 4, MAX32)]),
        // Extended L2 needs 16 KiB clusters.
        case("cluster_bits", &[(72, 8, 1 << 4), (20, 4, 13)]),
        case("l1_size", &[(24, 8, MAX64)]),
        case("l1_size", &[(36, 4, 0)]),
        case("l1_size", &[(36, 4, L1_ENTRIES_MAX + 1)]),
        case("l1_size", &[(36, 4, MAX32)]),
        case("l1_table_offset", &[(40, 8, 0)]),
        case("l1_table_offset", &[(40, 8, 0x30001)]),
        case("l1_table_offset", &[(40, 8, MAX64)]),
        case("l1_table_offset", &[(40, 8, MAX64 & !0xffff)]),
        past_end("l1_table_offset", &[(40, 8, FILE_LEN as u64)]),
        case("l1_table_offset", &[(40, 8, 0x10000)]),
        case("refcount_table_offset", &[(48, 8, 0)]),
        case("refcount_table_offset", &[(48, 8, 0x10200)]),
        case("refcount_table_offset", &[(48, 8, MAX64)]),
        case("refcount_table_offset", &[(48, 8, MAX64 & !0xffff)]),
        past_end("refcount_table_offset", &[(48, 8, FILE_LEN as u64)]),
        case("refcount_table_clusters", &[(56, 4, MAX32)]),
        case("refcount_table_clusters", &[(56, 4, REFTABLE_CLUSTERS_MAX + 1)]),
        case("nb_snapshots", &[(60, 4, 65537)]),
        case("nb_snapshots", &[(60, 4, MAX32)]),
        case("snapshots_offset", &[(60, 4, 1), (64, 8, 0)]),
        case("snapshots_offset", &[(60, 4, 1), (64, 8, MAX64)]),
        case("snapshots_offset", &[(60, 4, 1), (64, 8, MAX64 & !0xffff)]),
        case("refcount_order", &[(96, 4, 7)]),
        case("refcount_order", &[(96, 4, MAX32)]),
        case("header_length", &[(100, 4, 0)]),
        case("header_length", &[(100, 4, 103)]),
        case("header_length", &[(100, 4, 108)]),
        case("header_length", &[(100, 4, CLUSTER as u64 + 8)]),
        case("header_length", &[(100, 4, MAX32 & !7)]),
        case("compression_type", &[(100, 4, 112), (104, 1, 1)]),
        case("compression_type", &[(100, 4, 112), (72, 8, 1 << 3), (104, 1, 2)]),
        // Extensions: a length that runs far past cluster 0, one ending just past it, a duplicate.
        case("header_extension", &[(104, 4, 0xe279_2aca), (108, 4, MAX32)]),
        case("header_extension", &[(104, 4, 0xe279_2aca), (108, 4, (CLUSTER - 104 - 8 + 1) as u64)]),
        case("header_extension", &[(104, 4, 0x1234), (108, 4, 0), (112, 4, 0x1234)]),
    ]
}

fn crafted(c: &Case) -> Vec<u8> {
    let mut b = base();
    for &(off, width, v) in c.patches {
        put(&mut b, off, width, v);
    }
    b
}

#[test]
fn base_header_parses() {
    let b = base();
    let h = header::parse(&b[..CLUSTER], Some(FILE_LEN as u64)).expect("the base header is valid");
    assert_eq!((h.version, h.cluster_size(), h.l1_size), (3, CLUSTER as u64, 1));
}

/// The library refuses every crafted header with a BadHeader naming the field, with and
/// without a known file length, and from both the full cluster and a short prefix.
#[test]
fn library_parse_names_the_field() {
    for c in cases() {
        let b = crafted(&c);
        for file_len in [Some(FILE_LEN as u64), None] {
            for head in [&b[..CLUSTER], &b[..200]] {
                let r = std::panic::catch_unwind(|| header::parse(head, file_len));
                let r = r.unwrap_or_else(|_| panic!("header::parse panicked on {} {:x?}", c.field, c.patches));
                let Err(e) = r else {
                    if c.needs_file_len && file_len.is_none() {
                        continue;
                    }
                    panic!("{} {:x?} (head {} bytes, file_len {file_len:?}) was accepted", c.field, c.patches, head.len())
                };
                let m = e.to_string();
                assert!(
                    m.contains(c.field) || (head.len() < CLUSTER && m.contains("stream ends")),
                    "{:x?}: message {m:?} does not name {}",
                    c.patches,
                    c.field
                );
            }
        }
    }
}

fn imgarc(args: &[&str], env: &Env) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_imgarc"))
        .args(args)
        .env("IMGARC_CACHE_DIR", &env.cache)
        .env_remove("IMGARC_REPO")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn inspect_exits_1_naming_the_field() {
    let env = Env::new();
    let p = env.path("crafted.qcow2");
    std::fs::write(&p, base()).unwrap();
    let o = imgarc(&["inspect", p.to_str().unwrap()], &env);
    assert!(o.status.success(), "the base image must inspect: {}", String::from_utf8_lossy(&o.stderr));
    for c in cases() {
        std::fs::write(&p, crafted(&c)).unwrap();
        let o = imgarc(&["inspect", p.to_str().unwrap()], &env);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{} {:x?}: inspect exit status {:?}, stderr {err}", c.field, c.patches, o.status);
        assert!(err.contains(c.field) && !err.contains("panicked"), "{:x?}: stderr does not name {}: {err}", c.patches, c.field);
    }
}

/// `archive` reads the header in its reader thread; a refusal there must reach the user as
/// the parse error, not as a panicked thread, and store nothing.
#[test]
fn archive_exits_1_naming_the_field() {
    let env = Env::init("64K");
    let p = env.path("crafted.qcow2");
    for c in cases().iter().filter(|c| c.field == "backing_file_offset" || c.field == "header_extension") {
        std::fs::write(&p, crafted(c)).unwrap();
        let o = env.run(&["archive", p.to_str().unwrap(), "--name", "crafted"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{} {:x?}: archive exit status {:?}, stderr {err}", c.field, c.patches, o.status);
        assert!(err.contains(c.field) && !err.contains("panicked"), "{:x?}: stderr does not name {}: {err}", c.patches, c.field);
    }
    let list = env.json(&["list"]);
    assert_eq!(list.as_array().map(|a| a.len()), Some(0), "a refused archive stored a snapshot: {list}");
}

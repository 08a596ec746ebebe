//! The capacity report at scale: an index filled through the `Index` API with
//! 10,000 snapshots (200 VMs × 50 nights) over 2,000,000 blobs, then the
//! report's queries timed. No packs are written: the report reads only the index.
//!
//! Run: `cargo bench --bench report` (or `--profile dev`; SQLite is optimised in
//! both). `REPORT_BENCH_VMS` / `REPORT_BENCH_NIGHTS` scale it down.

// A benchmark reports its timings on stdout.
#![allow(clippy::print_stdout)]

use imgarc::ids::Id;
use imgarc::index::Index;
use imgarc::report::{self, render, GroupBy, Options};
use imgarc::repository::extents::StreamRef;
use imgarc::repository::index_object::{IndexObject, IndexedPack};
use imgarc::repository::pack::{BlobKind, Codec, PackEntry};
use imgarc::repository::snapshot::{Layout, MetadataHasher, Snapshot, SnapshotHead, SnapshotStats, Source};
use std::collections::HashSet;
use std::time::Instant;

/// Blobs per VM: a base every night uses, then each night's new slice.
const BLOBS_PER_VM: u64 = 10_000;
const BASE: u64 = 100;
const SLICE: u64 = 150;
const BLOBS_PER_PACK: u64 = 1_000;

fn env_or(k: &str, d: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn blob(vm: u64, i: u64) -> Id {
    Id::of(&(vm * BLOBS_PER_VM + i).to_le_bytes())
}

fn snapshot(vm: u64, night: u64) -> Snapshot {
    let stream = StreamRef { size: 2 << 30, trees: vec![], extent_count: 0, extents_blake3: Id([0; 32]), data_bytes: 1 << 30 };
    let day = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Days::new(night);
    Snapshot {
        version: 1,
        name: format!("vm-{vm:03}"),
        tags: vec![format!("night-{night:02}")],
        time: format!("{day}T02:{:02}:00.000Z", vm % 60),
        hostname: "bench".into(),
        source: Source::Glance { image_id: format!("image-{vm:03}"), cloud: None },
        logical_bytes: 2 << 30,
        virtual_bytes: Some(2 << 30),
        format: "qcow2".into(),
        image: None,
        layout: Layout::Raw,
        guest: stream,
        digests: Default::default(),
        stats: SnapshotStats {
            chunks: 30_000,
            new_chunks: SLICE,
            new_bytes: SLICE * 65536,
            stored_bytes_added: SLICE * 40_000,
            hole_bytes: 1 << 30,
            seconds: 1.0,
        },
        metadata: serde_json::json!({"owner": format!("project-{:02}", vm % 20), "id": format!("image-{vm:03}")})
            .as_object()
            .unwrap()
            .clone(),
        copied_from: None,
    }
}

fn main() {
    let (vms, nights) = (env_or("REPORT_BENCH_VMS", 200), env_or("REPORT_BENCH_NIGHTS", 50));
    let dir = tempfile::tempdir().unwrap();
    // REPORT_BENCH_KEEP=DIR keeps the filled index there (to try queries on it).
    let dir_path = std::env::var("REPORT_BENCH_KEEP").map(std::path::PathBuf::from).unwrap_or_else(|_| dir.path().to_path_buf());
    let mut index = Index::open_at(&dir_path.join("index.sqlite"), "bench").unwrap();

    // A kept index from an earlier run is reused as it is.
    let filled = index.counts().unwrap().0 > 0;
    let t = Instant::now();
    let mut pack_no = 0u64;
    for vm in (0..vms).filter(|_| !filled) {
        let mut packs = Vec::new();
        for first in (0..BLOBS_PER_VM).step_by(BLOBS_PER_PACK as usize) {
            let entries: Vec<PackEntry> = (first..first + BLOBS_PER_PACK)
                .map(|i| PackEntry {
                    id: blob(vm, i),
                    kind: BlobKind::Data,
                    codec: Codec::Zstd,
                    raw_len: 65536,
                    stored_len: 30_000 + (i % 20_000) as u32,
                    offset: (i - first) * 65536,
                })
                .collect();
            pack_no += 1;
            packs.push(IndexedPack::new(Id::of(&pack_no.to_be_bytes()), BLOBS_PER_PACK * 40_000, &entries));
        }
        index.add_index_object(&format!("index/{vm}"), &IndexObject::new(packs)).unwrap();
    }
    let fill_blobs = t.elapsed();
    let t = Instant::now();
    for night in (0..nights).filter(|_| !filled) {
        for vm in 0..vms {
            let mut refs: HashSet<Id> = (0..BASE).map(|i| blob(vm, i)).collect();
            let slice = |n: u64| (BASE + n * SLICE..BASE + (n + 1) * SLICE).map(move |i| blob(vm, i));
            refs.extend(slice(night));
            if night > 0 {
                // Two thirds of last night's slice are still in use: the rest is this night's own.
                refs.extend(slice(night - 1).take(2 * SLICE as usize / 3));
            }
            let snap = snapshot(vm, night);
            index
                .add_snapshot(&Snapshot::id_of(&snap.to_bytes()), &SnapshotHead::of(&snap, &MetadataHasher::UNKEYED), &snap, &refs)
                .unwrap();
        }
    }
    let fill_snapshots = t.elapsed();
    let (snaps, blobs, packs) = index.counts().unwrap();
    println!("filled: {snaps} snapshots, {blobs} blobs, {packs} packs (blobs {fill_blobs:.1?}, snapshots {fill_snapshots:.1?})");

    let repo_dir = dir.path().join("repo");
    let backend = imgarc::backend::open(repo_dir.to_str().unwrap(), &Default::default()).unwrap();
    let repo = imgarc::repository::Repository::init(backend, imgarc::repository::config::Config::new(65536, 3).unwrap()).unwrap();

    // What keeping the counts, owners and referenced sizes costs an archive:
    // adding one snapshot of 30,000 chunks (a 2 GiB image) the index already holds.
    let t = Instant::now();
    let big: HashSet<Id> = (0..30_000u64).map(|i| blob(i % vms, i / vms % BLOBS_PER_VM)).collect();
    let mut snap = snapshot(vms, 0);
    snap.hostname = format!("bench-{}", imgarc::util::now_rfc3339());
    index.add_snapshot(&Snapshot::id_of(&snap.to_bytes()), &SnapshotHead::of(&snap, &MetadataHasher::UNKEYED), &snap, &big).unwrap();
    println!("add_snapshot with {} references: {:.2?}", big.len(), t.elapsed());

    for round in 0..3 {
        let t = Instant::now();
        let usage = index.blob_usage().unwrap();
        let blob_pass = t.elapsed();
        let t = Instant::now();
        let r = report::compute(&repo, &index, &Options::default()).unwrap();
        let whole = t.elapsed();
        let t = Instant::now();
        let by_name = Options { by: Some(GroupBy::Name), scan_limit: 0, capacity: Some(1 << 40), ..Default::default() };
        let g = report::compute(&repo, &index, &by_name).unwrap();
        let grouped = t.elapsed();
        let t = Instant::now();
        let json = render::render(&g, render::Format::Json);
        let html = render::render(&g, render::Format::Html);
        let rendered = t.elapsed();
        // prune's first question over the same index: how much of each pack is still used.
        let t = Instant::now();
        let packs_used = index.pack_usage().unwrap().iter().filter(|p| p.used_blobs > 0).count();
        let pack_usage = t.elapsed();
        println!("round {round}: prune's pack usage {pack_usage:.2?} ({packs_used} packs in use)");
        if let Ok(keep) = std::env::var("REPORT_BENCH_KEEP") {
            std::fs::write(std::path::Path::new(&keep).join("report.html"), &html).unwrap();
        }
        println!(
            "round {round}: blob pass {blob_pass:.2?} ({} unique owners), whole report {whole:.2?}, --by name {grouped:.2?}, render json+html {rendered:.2?} ({} + {} bytes); {} snapshots, stored {} B, unreferenced {} B",
            usage.unique_by_owner.len(),
            json.len(),
            html.len(),
            r.totals.snapshots,
            r.totals.stored_bytes,
            r.totals.unreferenced_bytes.unwrap_or(0)
        );
    }
}

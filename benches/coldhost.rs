//! A cold host at scale: a repository on the test RGW with many tiny packs and
//! snapshots (one pack, index object and snapshot per archive), then a new
//! host's first `imgarc list` and first `restore` timed with an old binary
//! (main's) and this one, and again after `index compact`; then the first
//! `report` on the list's cache, which reads the extent lists `list` left unread. Then the chunk
//! filter: rebuilt from SQLite versus loaded from its file, at a large
//! synthetic scale (no repository needed).
//!
//! Run (servers up, `source /tmp/imgarc-servers.env`, release binaries built):
//!   cargo bench --bench coldhost
//! Knobs: COLDHOST_SNAPSHOTS (10000), COLDHOST_OLD_BIN (an older release binary to compare;
//! before issue 17 its cold catch-up is sequential: more than 15 minutes per run at 10,000),
//! COLDHOST_NEW_BIN (target/release/imgarc), COLDHOST_REPO_PREFIX (reuse a filled
//! repository: skips the fill and the "before compact" runs if it is compacted),
//! COLDHOST_FILTER_BLOBS (10000000; 0 skips the filter part).

// A benchmark reports its timings on stdout.
#![allow(clippy::print_stdout)]

use imgarc::archive::{archive, ArchiveRequest};
use imgarc::ids::Id;
use imgarc::index::Index;
use imgarc::repository::index_object::{IndexObject, IndexedPack};
use imgarc::repository::pack::{BlobKind, Codec, PackEntry};
use imgarc::repository::snapshot::Source;
use imgarc::secret::Secret;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const PASSWORD: &str = "coldhost bench password";

fn env_or(k: &str, d: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn need(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set: source /tmp/imgarc-servers.env"))
}

struct Target {
    url: String,
    access: String,
    secret: String,
}

impl Target {
    /// `bin` against the repository with a cache of its own; returns seconds and stdout.
    fn run(&self, bin: &Path, cache: &Path, args: &[&str]) -> (f64, String) {
        let t = Instant::now();
        let o = Command::new(bin)
            .arg("--repo")
            .arg(&self.url)
            .args(args)
            .env("IMGARC_CACHE_DIR", cache)
            .env("IMGARC_PASSWORD", PASSWORD)
            .env("AWS_ACCESS_KEY_ID", &self.access)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env_remove("IMGARC_REPO")
            .output()
            .unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(o.status.success(), "{} {args:?}: {}", bin.display(), String::from_utf8_lossy(&o.stderr));
        (secs, String::from_utf8(o.stdout).unwrap())
    }
}

/// Fills the repository: `n` archives of 4 KiB each, on 16 threads.
fn fill(target: &Target, new_bin: &Path, n: usize, work: &Path) -> Vec<String> {
    target.run(new_bin, &work.join("fill-cache"), &["init", "--chunk-size", "64K"]);
    // The RGW user's keys, as the child processes get them, without touching this process's environment.
    let (access, secret) = (target.access.clone(), target.secret.clone());
    let env = move |k: &str| match k {
        "AWS_ACCESS_KEY_ID" => Some(access.clone()),
        "AWS_SECRET_ACCESS_KEY" => Some(secret.clone()),
        _ => std::env::var(k).ok(),
    };
    let opts = imgarc::backend::url::RemoteOptions { env: Some(std::sync::Arc::new(env)), ..Default::default() };
    let backend = imgarc::backend::open(&target.url, &opts).unwrap();
    let repo = imgarc::repository::Repository::open_with(backend, &Secret::new(PASSWORD)).unwrap();
    let cache = work.join("fill-index.sqlite");
    let repo_id = repo.config().id.clone();
    let items: Vec<usize> = (0..n).collect();
    let mut ids = Vec::with_capacity(n);
    let t = Instant::now();
    imgarc::util::fetch_parallel(
        &items,
        16,
        || Index::open_at(&cache, &repo_id),
        |index, &i| {
            let data: Vec<u8> = (0..128u64).flat_map(|j| Id::of(&[i as u64, j].map(u64::to_le_bytes).concat()).0).collect();
            let req = ArchiveRequest::raw_unannounced(&format!("vm-{:05}", i), Source::File { path: format!("/bench/vm-{i}") });
            archive(&repo, index, Box::new(std::io::Cursor::new(data)), req, &imgarc::progress::none()).map(|o| o.snapshot)
        },
        |_, r| {
            ids.push(r?);
            if ids.len() % 1000 == 0 {
                println!("  filled {} snapshots in {:.0} s", ids.len(), t.elapsed().as_secs_f64());
            }
            Ok(())
        },
    )
    .unwrap();
    println!("filled {n} snapshots (one pack each) in {:.1} s", t.elapsed().as_secs_f64());
    ids
}

/// A cold host's first `list` and first `restore` (each with a new cache).
fn cold(target: &Target, bin: &Path, snap: &str, work: &Path, tag: &str) -> (f64, f64) {
    let (list, out) = target.run(bin, &work.join(format!("cache-{tag}-list")), &["list"]);
    assert!(out.lines().count() > 1, "{out}");
    let file = work.join(format!("restored-{tag}"));
    let (restore, _) = target.run(bin, &work.join(format!("cache-{tag}-restore")), &["restore", snap, "-o", file.to_str().unwrap()]);
    let (warm, _) = target.run(bin, &work.join(format!("cache-{tag}-list")), &["list"]);
    // `list` and `restore` leave the extent lists unread; the first command that counts
    // references (here `report`, on the list's cache) reads them.
    let (report, _) = target.run(bin, &work.join(format!("cache-{tag}-list")), &["report"]);
    println!("{tag:>28}: first list {list:7.2} s, first restore {restore:7.2} s (a warm list: {warm:.2} s; then report {report:.2} s)");
    (list, restore)
}

fn filter_bench(blobs: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut index = Index::open_at(&dir.path().join("index.sqlite"), "bench").unwrap();
    let t = Instant::now();
    const PER_PACK: u64 = 1000;
    let mut batch = Vec::new();
    for p in 0..blobs.div_ceil(PER_PACK) {
        let entries: Vec<PackEntry> = (0..PER_PACK)
            .map(|i| PackEntry {
                id: Id::of(&(p * PER_PACK + i).to_le_bytes()),
                kind: BlobKind::Data,
                codec: Codec::Zstd,
                offset: 16 + i * 100,
                stored_len: 100,
                raw_len: 200,
            })
            .collect();
        batch.push((
            format!("index/{}", Id::of(&p.to_le_bytes()).to_hex()),
            IndexObject::new(vec![IndexedPack::new(Id::of(&[p as u8, 1]), 1 << 20, &entries)]),
        ));
        if batch.len() == 100 {
            index.add_index_objects(batch.iter().map(|(k, o)| (k.as_str(), o))).unwrap();
            batch.clear();
        }
    }
    index.add_index_objects(batch.iter().map(|(k, o)| (k.as_str(), o))).unwrap();
    println!("filter: {blobs} blobs in the cache (filled in {:.1} s)", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let f = index.chunk_filter(0).unwrap();
    let rebuild = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let g = index.chunk_filter(0).unwrap();
    let load = t.elapsed().as_secs_f64();
    let probe = Id::of(&7u64.to_le_bytes());
    assert!(f.may_contain(&probe) && g.may_contain(&probe));
    println!("filter: rebuilt from SQLite in {rebuild:.2} s, loaded from its file in {load:.3} s ({:.0}x)", rebuild / load);
}

fn main() {
    let n = env_or("COLDHOST_SNAPSHOTS", 10_000) as usize;
    let work_dir = tempfile::tempdir().unwrap();
    let work = work_dir.path();
    let new_bin = PathBuf::from(std::env::var("COLDHOST_NEW_BIN").unwrap_or_else(|_| "target/release/imgarc".into()));
    let old_bin = std::env::var("COLDHOST_OLD_BIN").map(PathBuf::from).ok();
    if env_or("COLDHOST_FILTER_ONLY", 0) == 0 {
        let prefix = std::env::var("COLDHOST_REPO_PREFIX")
            .unwrap_or_else(|_| format!("coldhost-{}", &hex::encode(Id::of(format!("{:?}", Instant::now()).as_bytes()).0)[..12]));
        let target = Target {
            url: format!("s3:{}/{}/{prefix}", need("IMGARC_RGW_ENDPOINT"), need("IMGARC_RGW_BUCKET")),
            access: need("IMGARC_RGW_ACCESS_KEY"),
            secret: need("IMGARC_RGW_SECRET_KEY"),
        };
        println!("repository {}", target.url);
        let snaps = if std::env::var("COLDHOST_REPO_PREFIX").is_ok() {
            let (_, out) = target.run(&new_bin, &work.join("probe"), &["--json", "list"]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            v.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
        } else {
            fill(&target, &new_bin, n, work)
        };
        let snap = &snaps[snaps.len() / 2];
        let before_old = old_bin.as_ref().map(|b| cold(&target, b, snap, work, "main, not compacted"));
        let before_new = cold(&target, &new_bin, snap, work, "this branch, not compacted");
        let t = Instant::now();
        let (_, out) = target.run(&new_bin, &work.join("compact-cache"), &["index", "compact", "--grace", "0"]);
        println!("index compact --grace 0 (cold cache) took {:.1} s: {}", t.elapsed().as_secs_f64(), out.trim());
        let after_old = old_bin.as_ref().map(|b| cold(&target, b, snap, work, "main, compacted"));
        let after_new = cold(&target, &new_bin, snap, work, "this branch, compacted");
        let ratio = |a: (f64, f64), b: (f64, f64)| format!("list {:.1}x, restore {:.1}x", a.0 / b.0, a.1 / b.1);
        if let Some(o) = before_old {
            println!("speed-up, parallel catch-up alone (main → branch): {}", ratio(o, before_new));
            println!("speed-up, with compaction (main uncompacted → branch compacted): {}", ratio(o, after_new));
        }
        if let Some(o) = after_old {
            println!("main on the compacted repository: {}", ratio(before_old.unwrap_or(o), o));
        }
        println!("speed-up of compaction for this branch: {}", ratio(before_new, after_new));
    }
    let blobs = env_or("COLDHOST_FILTER_BLOBS", 10_000_000);
    if blobs > 0 {
        filter_bench(blobs);
    }
}

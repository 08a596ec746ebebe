//! `imgarc demo`: the whole job on an embedded default — a synthetic VM disk
//! series archived night by night into a local repository, the last night
//! restored and verified, and what was stored compared with what was read.

use super::Ctx;
use anyhow::{bail, Context, Result};
use clap::Args;
use imgarc::archive::{archive, ArchiveRequest};
use imgarc::index::Index;
use imgarc::prune::{prune, PruneOptions};
use imgarc::report;
use imgarc::repository::{config::Config, snapshot::Source, Repository};
use imgarc::restore::{restore, Target};
use imgarc::retention::{self, Item, Policy};
use imgarc::synthetic::SyntheticDisk;
use imgarc::util::human_bytes;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Work directory (default: a new temporary directory, removed afterwards)
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Number of nights in the synthetic series
    #[arg(long, default_value_t = 5)]
    pub nights: u32,
    /// Virtual disk size of the synthetic VM
    #[arg(long, default_value = "256M")]
    pub size: String,
}

pub fn run(ctx: &Ctx, args: DemoArgs) -> Result<()> {
    let size = imgarc::util::parse_size(&args.size)?;
    if !(1 << 20..=64 << 30).contains(&size) || args.nights == 0 || args.nights > 60 {
        bail!("demo wants --size between 1M and 64G and --nights between 1 and 60");
    }
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile_dir()?;
            tmp.0.clone()
        }
    };
    let say = |s: String| {
        if !ctx.out.json && !ctx.out.quiet {
            println!("{s}");
        }
    };
    let repo_dir = dir.join("repo");
    let backend: Arc<dyn imgarc::backend::Backend> = Arc::new(imgarc::backend::local::LocalBackend::new(&repo_dir));
    let repo = match Repository::open(backend.clone()) {
        Ok(r) => r,
        Err(_) => Repository::init(backend, Config::new(imgarc::repository::config::DEFAULT_AVG_CHUNK, 3)?)?,
    };
    // The demo keeps its index cache beside its repository, so it leaves nothing behind.
    std::env::set_var("IMGARC_CACHE_DIR", dir.join("cache"));
    let mut index = Index::open(&repo)?;
    say(format!("imgarc demo: {} nights of a {} synthetic VM disk in {}", args.nights, human_bytes(size), dir.display()));
    let disk = SyntheticDisk::new(size, 42);
    let mut nights = Vec::new();
    let (mut logical, mut added) = (0u64, 0u64);
    for n in 0..args.nights {
        let path = dir.join(format!("night-{n:02}.raw"));
        disk.write_night(&path, n)?;
        let file = std::fs::File::open(&path)?;
        let req = ArchiveRequest {
            name: "demo-vm".into(),
            tags: vec![format!("night-{n:02}")],
            source: Source::File { path: path.display().to_string() },
            digests: vec!["sha256".into()],
            expected_digests: Default::default(),
            expected_size: Some(size),
            metadata: Default::default(),
            declared_format: None,
            qcow2_policy: Default::default(),
        };
        let pb = ctx.out.bar(Some(size), &format!("night {n:02}"));
        let r = archive(&repo, &mut index, Box::new(file), req, &pb)?;
        drop(pb);
        logical += r.logical_bytes;
        added += r.stored_bytes_added;
        say(format!(
            "  night {n:02}: read {:>10}, {:>6} new chunks ({:>10}), stored {:>10}  [{:.0} MB/s]  snapshot {}",
            human_bytes(r.logical_bytes),
            r.new_chunks,
            human_bytes(r.new_bytes),
            human_bytes(r.stored_bytes_added),
            r.logical_bytes as f64 / r.seconds.max(1e-6) / 1e6,
            &r.snapshot[..16]
        ));
        nights.push((path, r));
    }
    let (last_path, last) = nights.last().expect("at least one night");
    let out_path = dir.join("restored.raw");
    let id = imgarc::ids::Id::from_hex(&last.snapshot).context("snapshot id")?;
    let snap = index.snapshot(&id)?.context("snapshot in index")?;
    let pb = ctx.out.bar(Some(size), "restore");
    let rr = restore(&repo, &index, &snap, Target::File(out_path.clone()), &Default::default(), &pb)?;
    drop(pb);
    let identical = files_equal(last_path, &out_path)?;
    if !identical {
        bail!("restored image differs from {}", last_path.display());
    }
    let ratio = logical as f64 / added.max(1) as f64;
    say(format!(
        "restored the last night in {:.2} s ({:.0} MB/s): byte-identical, sha256 {}",
        rr.seconds,
        rr.bytes as f64 / rr.seconds.max(1e-6) / 1e6,
        rr.digests.get("sha256").map_or("-", |s| s.as_str())
    ));
    say(format!("logical {} archived, {} stored: {ratio:.1}x smaller", human_bytes(logical), human_bytes(added)));

    // Retention: keep the last three nights, then reclaim the rest in prune's two phases
    // (no grace period: nothing else uses the demo's repository).
    let rows: Vec<_> = index.snapshot_rows()?.into_iter().filter(|r| r.name == "demo-vm").collect();
    let items: Vec<Item> = rows
        .iter()
        .map(|r| Item {
            time: imgarc::util::parse_rfc3339(&r.time).unwrap_or_default(),
            tags: r.tags.clone(),
            group: String::new(),
            image: None,
        })
        .collect();
    let policy = Policy { last: Some(3), ..Default::default() };
    let verdicts = retention::decide(&policy, &items, &Default::default(), retention::horizon(chrono::Utc::now()));
    let mut forgotten = 0;
    for (row, v) in rows.iter().zip(&verdicts) {
        if !v.keep {
            repo.delete_snapshot(&row.id)?;
            index.remove_snapshot(&row.id)?;
            forgotten += 1;
        }
    }
    let opts = PruneOptions { dry_run: false, max_repack_ratio: 0.5, grace: chrono::Duration::zero(), now: chrono::Utc::now() };
    let marked = prune(&repo, &mut index, &opts)?;
    let swept = prune(&repo, &mut index, &PruneOptions { now: chrono::Utc::now(), ..opts })?;
    say(format!(
        "forget --keep-last 3: {forgotten} snapshot(s) removed; prune: {} marked ({} repacked), then {} freed; \
         {} unreferenced left in packs still mostly in use",
        human_bytes(marked.bytes_marked),
        human_bytes(marked.bytes_repacked),
        human_bytes(swept.bytes_freed),
        human_bytes(swept.unreferenced_bytes_kept)
    ));
    let opts = report::Options { by: Some(report::GroupBy::Name), project: None, capacity: None, scan_limit: report::DEFAULT_SCAN_LIMIT };
    let capacity = report::compute(&repo, &index, &opts)?;
    let t = &capacity.totals;
    say(format!(
        "report: {} snapshots, {} logical, {} stored (dedup {:.1}x, compression {:.1}x), {} awaiting prune",
        t.snapshots,
        human_bytes(t.logical_bytes),
        human_bytes(t.stored_bytes),
        t.dedup_ratio.unwrap_or(0.0),
        t.compression_ratio.unwrap_or(0.0),
        human_bytes(t.unreferenced_bytes.unwrap_or(0))
    ));
    if args.dir.is_some() {
        let page = dir.join("report.html");
        imgarc::util::write_public_file(&page, report::render::render(&capacity, report::render::Format::Html).as_bytes())?;
        say(format!("capacity report with charts: {}", page.display()));
    }
    ctx.emit(
        &serde_json::json!({
            "nights": nights.iter().map(|(_, r)| r).collect::<Vec<_>>(),
            "logical_bytes": logical, "stored_bytes": added, "ratio": ratio,
            "restore": rr, "restored_identical": identical, "dir": dir.display().to_string(),
            "forgotten": forgotten, "prune": [marked, swept], "report": capacity.totals,
        }),
        String::new,
    );
    Ok(())
}

fn files_equal(a: &std::path::Path, b: &std::path::Path) -> Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = imgarc::source::read_full(&mut fa, &mut ba)?;
        let nb = imgarc::source::read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

/// A temporary directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> Result<TempDir> {
    let p = std::env::temp_dir().join(format!("imgarc-demo-{}", hex::encode(rand::random::<[u8; 6]>())));
    std::fs::create_dir_all(&p)?;
    Ok(TempDir(p))
}

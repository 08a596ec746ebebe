//! `imgarc demo`: runs `imgarc::demo` (a synthetic disk series archived,
//! restored, verified, forgotten and pruned) and tells the story.

use super::Ctx;
use anyhow::Result;
use imgarc::demo::{demo, DemoOptions, DemoReport, DEMO_KEEP_LAST};
use imgarc::util::human_bytes;

pub fn run(ctx: &Ctx, opts: DemoOptions) -> Result<()> {
    let dir_removed = opts.dir.is_none();
    let r = demo(&opts, &|what, total| ctx.out.bar(Some(total), what))?;
    ctx.emit(&serde_json::to_value(&r)?, || prose(&r, dir_removed));
    Ok(())
}

fn prose(r: &DemoReport, dir_removed: bool) -> String {
    let mut lines =
        vec![format!("imgarc demo: {} nights of a {} synthetic VM disk in {}", r.nights.len(), human_bytes(r.disk_size), r.dir)];
    for (n, a) in r.nights.iter().enumerate() {
        lines.push(format!(
            "  night {n:02}: read {:>10}, {:>6} new chunks ({:>10}), stored {:>10}  [{:.0} MB/s]  snapshot {}",
            human_bytes(a.logical_bytes),
            a.new_chunks,
            human_bytes(a.new_bytes),
            human_bytes(a.stored_bytes_added),
            a.logical_bytes as f64 / a.seconds.max(1e-6) / 1e6,
            &a.snapshot[..16]
        ));
    }
    match &r.password_file {
        Some(f) => lines.push(format!(
            "repository encrypted with {}; its random password is in {f} (0600){}",
            r.encryption,
            if dir_removed { ", removed with the directory" } else { "" }
        )),
        None => lines.push(format!("repository not encrypted (encryption {})", r.encryption)),
    }
    let rr = &r.restore;
    lines.push(format!(
        "restored the last night in {:.2} s ({:.0} MB/s): byte-identical, sha256 {}",
        rr.seconds,
        rr.bytes as f64 / rr.seconds.max(1e-6) / 1e6,
        rr.digests.get("sha256").map_or("-", |s| s.as_str())
    ));
    lines.push(format!(
        "logical {} archived, {} stored: {:.1}x smaller",
        human_bytes(r.logical_bytes),
        human_bytes(r.stored_bytes),
        r.ratio
    ));
    let [marked, swept] = &r.prune;
    lines.push(format!(
        "forget --keep-last {DEMO_KEEP_LAST}: {} snapshot(s) removed; prune: {} marked ({} repacked), then {} freed; \
         {} unreferenced left in packs still mostly in use",
        r.forgotten,
        human_bytes(marked.bytes_marked),
        human_bytes(marked.bytes_repacked),
        human_bytes(swept.bytes_freed),
        human_bytes(swept.unreferenced_bytes_kept)
    ));
    let t = &r.report;
    lines.push(format!(
        "report: {} snapshots, {} logical, {} stored (dedup {:.1}x, compression {:.1}x), {} awaiting prune",
        t.snapshots,
        human_bytes(t.logical_bytes),
        human_bytes(t.stored_bytes),
        t.dedup_ratio.unwrap_or(0.0),
        t.compression_ratio.unwrap_or(0.0),
        human_bytes(t.unreferenced_bytes.unwrap_or(0))
    ));
    if let Some(page) = &r.html_report {
        lines.push(format!("capacity report with charts: {}", page.display()));
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

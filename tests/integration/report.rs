//! `imgarc report` through the real binary: its figures against sums computed
//! independently (archive outcomes, file lengths, pack files on disk, and what
//! a snapshot's removal really leaves unreferenced), every format's syntax,
//! `--project` scoping, and the HTML page rendered in headless Chromium.

use crate::support;
use serde_json::Value;
use std::path::{Path, PathBuf};
use support::*;

fn report(env: &Env, extra: &[&str]) -> Value {
    let mut args = vec!["report", "--format", "json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&env.ok(&args)).unwrap()
}

fn snap<'a>(r: &'a Value, id: &str) -> &'a Value {
    r["snapshots"].as_array().unwrap().iter().find(|s| s["id"] == id).unwrap_or_else(|| panic!("snapshot {id} not in {r}"))
}

fn group<'a>(r: &'a Value, key: &str) -> &'a Value {
    r["groups"].as_array().unwrap().iter().find(|g| g["key"] == key).unwrap_or_else(|| panic!("group {key} not in {r}"))
}

/// Simulates `forget`: removes the snapshot object; the next command's sync drops it from the index.
fn remove_snapshot_object(env: &Env, id: &str) {
    std::fs::remove_file(env.repo.join("snapshots").join(id)).unwrap();
}

fn file_sizes(paths: &[PathBuf]) -> u64 {
    paths.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum()
}

/// The distinct tree blobs (extent lists) of snapshots and their raw bytes, read
/// from the repository: archive outcomes count data chunks only.
fn trees(env: &Env, ids: &[String]) -> (u64, u64) {
    let repo = env.open_repo();
    let cache = env.cache.join(&repo.config().id).join("index.sqlite");
    let index = imgarc::index::Index::open_at(&cache, &repo.config().id).unwrap();
    let mut seen = std::collections::HashSet::new();
    let (mut n, mut bytes) = (0, 0);
    for id in ids {
        let snap = repo.load_snapshot(&imgarc::ids::Id::from_hex(id).unwrap()).unwrap();
        for stream in snap.streams() {
            for tree in &stream.trees {
                if seen.insert(*tree) {
                    n += 1;
                    bytes += imgarc::index::IndexedRepository::new(&repo, &index).read_blob(tree).unwrap().len() as u64;
                }
            }
        }
    }
    (n, bytes)
}

#[test]
fn figures_match_independent_sums() {
    let env = Env::init("16K");
    let a = bytes(3 << 20, 1, false);
    let mut b = a[..3 << 19].to_vec(); // half of A, then new data
    b.extend(bytes(3 << 19, 2, false));
    let mut c = bytes(2 << 20, 3, true);
    c.extend(vec![0u8; 1 << 20]); // an aligned all-zero MiB: a hole, not allocated
    let mut outcomes = Vec::new();
    for (file, data, name) in [("a.raw", &a, "vm"), ("b.raw", &b, "vm"), ("c.raw", &c, "other")] {
        let p = env.path(file);
        std::fs::write(&p, data).unwrap();
        outcomes.push(env.archive(&p, name));
        if outcomes.len() == 1 {
            // A alone: everything stored is A's and only A's.
            let r = report(&env, &[]);
            let (t, sa) = (&r["totals"], snap(&r, &s(&outcomes[0], "snapshot")));
            assert_eq!(u(t, "snapshots"), 1);
            assert_eq!(u(sa, "unique_bytes"), u(t, "stored_bytes"));
            assert_eq!(u(sa, "referenced_bytes"), u(t, "stored_bytes"));
            assert_eq!(u(sa, "shared_bytes"), 0);
            assert_eq!(u(t, "pack_bytes"), file_sizes(&env.packs()), "pack_bytes is what data/ holds");
            assert!(u(t, "stored_bytes") < u(t, "pack_bytes") && u(t, "pack_bytes") <= u(&outcomes[0], "stored_bytes_added"), "{r}");
        }
    }
    let ids: Vec<String> = outcomes.iter().map(|o| s(o, "snapshot")).collect();
    let r = report(&env, &["--by", "name"]);
    let t = &r["totals"];
    assert_eq!(u(t, "snapshots"), 3);
    assert_eq!(u(t, "logical_bytes"), (a.len() + b.len() + c.len()) as u64);
    assert_eq!(u(t, "virtual_bytes"), u(t, "logical_bytes"));
    assert_eq!(u(snap(&r, &ids[2]), "allocated_bytes"), 2 << 20);
    assert_eq!(u(snap(&r, &ids[0]), "allocated_bytes"), 3 << 20);
    // Nothing was ever stored twice nor dropped: the distinct blobs are exactly
    // the data chunks the archives reported as new, plus the snapshots' trees.
    let sum = |k: &str| outcomes.iter().map(|o| u(o, k)).sum::<u64>();
    let (tree_count, tree_bytes) = trees(&env, &ids);
    assert_eq!(u(t, "deduplicated_bytes"), sum("new_bytes") + tree_bytes);
    assert_eq!(u(t, "chunks"), sum("new_chunks") + tree_count);
    assert_eq!(u(t, "unreferenced_bytes"), 0);
    assert_eq!(u(t, "pack_bytes"), file_sizes(&env.packs()));
    // What B and C stored new (and their trees) is theirs alone: no later archive shares it.
    for (o, id) in outcomes.iter().zip(&ids).skip(1) {
        let x = snap(&r, id);
        let (tree_count, tree_bytes) = trees(&env, std::slice::from_ref(id));
        assert_eq!(u(x, "unique_raw_bytes"), u(o, "new_bytes") + tree_bytes, "{x} vs {o}");
        assert_eq!(u(x, "unique_chunks"), u(o, "new_chunks") + tree_count, "{x} vs {o}");
    }
    for x in r["snapshots"].as_array().unwrap() {
        assert_eq!(u(x, "referenced_bytes"), u(x, "unique_bytes") + u(x, "shared_bytes"), "{x}");
        assert_eq!(u(x, "referenced_raw_bytes"), u(x, "unique_raw_bytes") + u(x, "shared_raw_bytes"), "{x}");
    }
    let (sa, sb) = (snap(&r, &ids[0]), snap(&r, &ids[1]));
    assert!(u(sa, "shared_raw_bytes") > (1 << 20) && u(sb, "shared_raw_bytes") > (1 << 20), "A and B share ~1.5 MiB: {sa} {sb}");
    let vm = group(&r, "vm");
    assert_eq!(vm["exact"], true);
    assert_eq!(u(vm, "members_unique_bytes"), u(sa, "unique_bytes") + u(sb, "unique_bytes"));
    assert!(u(vm, "unique_bytes") > u(vm, "members_unique_bytes"), "A and B's shared half is the group's own: {vm}");
    assert_eq!(u(group(&r, "other"), "unique_bytes"), u(snap(&r, &ids[2]), "unique_bytes"));
    // Over the scan limit a group gives its lower bound only, and says so.
    let limited = report(&env, &["--by", "name", "--scan-limit", "1"]);
    let vm_limited = group(&limited, "vm");
    assert_eq!(vm_limited["exact"], false);
    assert!(vm_limited["unique_bytes"].is_null());
    assert_eq!(u(vm_limited, "members_unique_bytes"), u(vm, "members_unique_bytes"));
    assert_eq!(group(&limited, "other")["exact"], true, "a single snapshot needs no scan");

    // Forgetting A really frees what the report said: its unique blobs become unreferenced.
    remove_snapshot_object(&env, &ids[0]);
    let after = report(&env, &[]);
    assert_eq!(u(&after["totals"], "snapshots"), 2);
    assert_eq!(u(&after["totals"], "unreferenced_bytes"), u(sa, "unique_bytes"));
    assert_eq!(u(&after["totals"], "unreferenced_chunks"), u(sa, "unique_chunks"));
    // What A and B alone shared is now B's own.
    let sb2 = snap(&after, &ids[1]);
    assert!(u(sb2, "unique_bytes") > u(sb, "unique_bytes"));
    // Forgetting the whole group "vm" frees the group's unique bytes.
    remove_snapshot_object(&env, &ids[1]);
    let after = report(&env, &[]);
    assert_eq!(u(&after["totals"], "unreferenced_bytes"), u(vm, "unique_bytes"));
    assert_eq!(u(&after["totals"], "unreferenced_raw_bytes"), u(vm, "unique_raw_bytes"));
    let sc = snap(&after, &ids[2]);
    assert_eq!(u(sc, "unique_bytes"), u(&after["totals"], "stored_bytes"));

    // Same file twice: neither copy has anything of its own.
    let p = env.path("c.raw");
    let again = env.archive(&p, "other");
    let r = report(&env, &[]);
    assert_eq!(u(snap(&r, &s(&again, "snapshot")), "unique_bytes"), 0);
    assert_eq!(u(snap(&r, &ids[2]), "unique_bytes"), 0);
}

/// Checks node_exporter text syntax: HELP and TYPE before each family's samples,
/// `name{label="value",...} number` samples. Returns (family, labels, value) rows.
fn parse_prometheus(text: &str) -> Vec<(String, String, f64)> {
    let mut typed = std::collections::HashSet::new();
    let mut helped = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut f = rest.split(' ');
            let name = f.next().unwrap().to_string();
            assert_eq!(f.next(), Some("gauge"), "{line}");
            assert!(helped.contains(&name), "TYPE before HELP: {line}");
            typed.insert(name);
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "stray line {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                let l = l.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                // label="value" pairs, values with \\ \" \n escapes only.
                let mut rest = l;
                while !rest.is_empty() {
                    let (k, v) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label: {line}"));
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !k.is_empty(), "{line}");
                    let mut chars = v.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((_, '\\')) => assert!(matches!(chars.next(), Some((_, '\\' | '"' | 'n'))), "bad escape: {line}"),
                            Some((i, '"')) => break i,
                            Some(_) => {}
                            None => panic!("unterminated label value: {line}"),
                        }
                    };
                    rest = v[end + 1..].strip_prefix(',').unwrap_or(&v[end + 1..]);
                }
                (n, l.to_string())
            }
            None => (series, String::new()),
        };
        assert!(name.starts_with("imgarc_") && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
        assert!(typed.contains(name), "sample before its TYPE: {line}");
        out.push((name.to_string(), labels, value));
    }
    out
}

fn csv_rows(text: &str) -> Vec<Vec<String>> {
    // The test data has no quoted fields; quoting itself is unit-tested by shape here.
    text.lines().map(|l| l.split(',').map(str::to_string).collect()).collect()
}

#[test]
fn csv_and_prometheus_are_well_formed() {
    let env = Env::init("16K");
    let mut ids = Vec::new();
    for (i, name) in ["web", "web", "db"].iter().enumerate() {
        let p = env.path(&format!("{i}.raw"));
        std::fs::write(&p, bytes(1 << 20, i as u64 % 2, false)).unwrap();
        ids.push(s(&env.archive(&p, name), "snapshot"));
    }
    let json = report(&env, &[]);
    let rows = csv_rows(&env.ok(&["report", "--format", "csv"]));
    assert_eq!(rows.len(), 4);
    let header = &rows[0];
    assert_eq!(header[0], "id");
    let col = |k: &str| header.iter().position(|h| h == k).unwrap_or_else(|| panic!("no column {k}"));
    for row in &rows[1..] {
        assert_eq!(row.len(), header.len(), "{row:?}");
        let x = snap(&json, &row[0]);
        for k in ["logical_bytes", "unique_bytes", "unique_raw_bytes", "shared_bytes", "referenced_bytes"] {
            assert_eq!(row[col(k)].parse::<u64>().unwrap(), u(x, k), "{k}");
        }
    }
    let grouped = csv_rows(&env.ok(&["report", "--format", "csv", "--by", "name"]));
    assert_eq!(grouped.len(), 3, "{grouped:?}");
    assert!(grouped[1..].iter().all(|r| r.len() == grouped[0].len()));

    let prom = env.ok(&["report", "--format", "prometheus", "--metrics-detail", "snapshot", "--by", "name", "--capacity", "1G"]);
    let samples = parse_prometheus(&prom);
    let value = |name: &str, label: &str| {
        samples.iter().find(|(n, l, _)| n == name && l.contains(label)).unwrap_or_else(|| panic!("{name} {label} missing:\n{prom}")).2
    };
    assert_eq!(value("imgarc_repository_stored_bytes", "") as u64, u(&json["totals"], "stored_bytes"));
    assert_eq!(value("imgarc_repository_snapshots", ""), 3.0);
    for id in &ids {
        let x = snap(&json, id);
        assert_eq!(value("imgarc_snapshot_unique_bytes", &format!("snapshot=\"{}\"", &id[..16])) as u64, u(x, "unique_bytes"));
    }
    // Night 0 of web and db hold the same bytes: each has nothing of its own.
    assert_eq!(u(snap(&json, &ids[0]), "unique_bytes"), 0);
    assert!(value("imgarc_group_unique_bytes", "group=\"web\"") > 0.0);
    assert!(samples.iter().any(|(n, _, _)| n == "imgarc_repository_capacity_bytes"));

    let table = env.ok(&["report"]);
    assert!(table.contains("Capacity report") && table.contains(&ids[0][..16]), "{table}");
    let out = env.path("report.json");
    env.ok(&["--json", "report", "-o", out.to_str().unwrap()]);
    let from_file: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(from_file["totals"], json["totals"]);
}

/// Two VMs in two projects, four nights each on consecutive days: archived
/// through the binary, then re-dated and given Glance-like metadata through the
/// library (the CLI sets neither), replacing the original snapshot objects.
fn fleet() -> (Env, Vec<(String, String)>) {
    fleet_in(Env::init("16K"))
}

fn fleet_in(env: Env) -> (Env, Vec<(String, String)>) {
    let mut out = Vec::new();
    for (vm, seed) in [("web", 5), ("db", 9)] {
        let disk = imgarc::synthetic::SyntheticDisk::new(6 << 20, seed);
        for night in 0..4u32 {
            let p = env.path(&format!("{vm}-{night}.raw"));
            disk.write_night(&p, night).unwrap();
            let a = env.archive(&p, vm);
            out.push((vm.to_string(), s(&a, "snapshot")));
        }
    }
    let repo = env.open_repo();
    let mut renamed = Vec::new();
    for (i, (vm, id)) in out.iter().enumerate() {
        let mut snap = repo.load_snapshot(&imgarc::ids::Id::from_hex(id).unwrap()).unwrap();
        snap.time = format!("2026-11-{:02}T02:00:00.000Z", 1 + i % 4);
        snap.metadata.insert("owner".into(), format!("proj-{vm}").into());
        snap.metadata.insert("id".into(), format!("image-{vm}").into());
        let new = repo.save_snapshot(&snap).unwrap();
        remove_snapshot_object(&env, id);
        renamed.push((vm.clone(), new.to_hex()));
    }
    (env, renamed)
}

#[test]
fn project_scope_shows_only_that_project() {
    // Exact per-project figures: an unencrypted repository (an encrypted one whose dedup scope is
    // `repository` withholds the figures measured against other projects: the dedup_scope suite).
    let (env, snaps) = fleet_in(Env::init_unencrypted("16K"));
    let all = report(&env, &["--by", "project"]);
    assert_eq!(u(&all["totals"], "snapshots"), 8);
    let web_ids: Vec<&String> = snaps.iter().filter(|(vm, _)| vm == "web").map(|(_, id)| id).collect();
    let db_ids: Vec<&String> = snaps.iter().filter(|(vm, _)| vm == "db").map(|(_, id)| id).collect();
    let scoped = report(&env, &["--project", "proj-web", "--by", "image", "--capacity", "1G"]);
    assert_eq!(scoped["project"], "proj-web");
    let t = &scoped["totals"];
    assert_eq!(u(t, "snapshots"), 4);
    for k in ["packs", "pack_bytes", "unreferenced_bytes", "unreferenced_chunks", "unreferenced_raw_bytes"] {
        assert!(t.get(k).is_none(), "scoped totals leak repository-wide {k}: {t}");
    }
    // The project's own figures: the same as its group in the unscoped report.
    let g = group(&all, "proj-web");
    assert_eq!(u(t, "stored_bytes"), u(g, "referenced_bytes"));
    assert_eq!(u(t, "deduplicated_bytes"), u(g, "referenced_raw_bytes"));
    assert_eq!(u(t, "logical_bytes"), u(g, "logical_bytes"));
    assert_eq!(u(group(&scoped, "image-web"), "unique_bytes"), u(g, "unique_bytes"));
    // Capacity is measured against the project's own stored bytes; four days of growth give a rate.
    let p = &scoped["growth"]["projection"];
    assert_eq!(u(p, "used_bytes"), u(t, "stored_bytes"));
    assert!(p["bytes_per_day"].as_f64().unwrap() > 0.0, "{p}");
    assert!(p["full_on"].as_str().unwrap() > "2026-11-04", "{p}");
    assert_eq!(scoped["growth"]["days"].as_array().unwrap().len(), 4);
    for format in ["json", "table", "csv", "prometheus", "html"] {
        // (per-snapshot Prometheus series are opt-in: asked for, so each snapshot is named)
        let detail: &[&str] = if format == "prometheus" { &["--metrics-detail", "snapshot"] } else { &[] };
        let text = env.ok(&[&["report", "--format", format, "--project", "proj-web"][..], detail].concat());
        for id in &db_ids {
            assert!(!text.contains(&id[..16]), "{format} shows another project's snapshot");
        }
        assert!(!text.contains("proj-db") && !text.contains("image-db"), "{format} names another project");
        assert!(web_ids.iter().all(|id| text.contains(&id[..16])), "{format} misses the project's snapshots");
        assert!(!text.contains("pack_bytes") && !text.contains("unreferenced"), "{format} leaks repository totals");
    }
}

/// The default Prometheus report has one series set per image (Glance images by
/// id, file archives by name) with the "no backup in 26 h" timestamp, and no
/// per-snapshot series; `--metrics-detail snapshot` adds those.
#[test]
fn prometheus_is_per_image_unless_snapshot_detail_is_asked_for() {
    let (env, snaps) = fleet();
    let p = env.path("notes.raw");
    std::fs::write(&p, bytes(1 << 20, 3, false)).unwrap();
    let notes = [s(&env.archive(&p, "notes"), "snapshot"), s(&env.archive(&p, "notes"), "snapshot")];

    let prom = env.ok(&["report", "--format", "prometheus"]);
    let samples = parse_prometheus(&prom);
    assert!(!prom.contains("imgarc_snapshot_"), "per-snapshot series by default:\n{prom}");
    for (_, id) in &snaps {
        assert!(!prom.contains(&id[..16]), "a snapshot id in the default metrics:\n{prom}");
    }
    let series = |name: &str| samples.iter().filter(|(n, _, _)| n == name).map(|(_, l, v)| (l.clone(), *v)).collect::<Vec<_>>();
    // The fleet's latest night of each VM is 2026-11-04 02:00 UTC.
    let night4 = chrono::DateTime::parse_from_rfc3339("2026-11-04T02:00:00Z").unwrap().timestamp() as f64;
    let mut last = series("imgarc_image_last_snapshot_timestamp_seconds");
    last.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(last.len(), 3, "{prom}");
    assert_eq!(last[0], (r#"image="",name="notes",project="""#.to_string(), last[0].1));
    assert_eq!(last[1], (r#"image="image-db",name="db",project="proj-db""#.to_string(), night4));
    assert_eq!(last[2], (r#"image="image-web",name="web",project="proj-web""#.to_string(), night4));
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - last[0].1).abs() < 600.0, "the file archive's latest snapshot is from just now: {}", last[0].1);
    let mut counts = series("imgarc_image_snapshots");
    counts.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(counts.iter().map(|(_, v)| *v).collect::<Vec<_>>(), vec![2.0, 4.0, 4.0], "{prom}");

    let detailed = env.ok(&["report", "--format", "prometheus", "--metrics-detail", "snapshot"]);
    let samples = parse_prometheus(&detailed);
    let unique: Vec<&(String, String, f64)> = samples.iter().filter(|(n, _, _)| n == "imgarc_snapshot_unique_bytes").collect();
    assert_eq!(unique.len(), snaps.len() + notes.len(), "{detailed}");
    for id in snaps.iter().map(|(_, id)| id).chain(&notes) {
        assert!(unique.iter().any(|(_, l, _)| l.contains(&format!("snapshot=\"{}\"", &id[..16]))), "{id} missing:\n{detailed}");
    }
    assert!(samples.iter().any(|(n, _, _)| n == "imgarc_image_last_snapshot_timestamp_seconds"), "the image series stay");

    let o = env.run(&["report", "--format", "csv", "--metrics-detail", "snapshot"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--metrics-detail applies to --format prometheus"), "{err}");
}

/// `report -o FILE` replaces the file by a rename (a scraper never reads half of
/// it, and a hard link to the old file keeps the old text), mode 0644, and
/// leaves no temporary file behind, also when the write fails.
#[test]
fn report_files_are_replaced_atomically_and_world_readable() {
    let env = Env::init("16K");
    let p = env.path("a.raw");
    std::fs::write(&p, bytes(1 << 20, 1, false)).unwrap();
    env.archive(&p, "web");
    let dir = env.path("textfile");
    std::fs::create_dir(&dir).unwrap();
    let out = dir.join("imgarc.prom");
    std::fs::write(&out, "old\n").unwrap();
    let old_link = env.path("old-link.prom");
    std::fs::hard_link(&out, &old_link).unwrap();

    env.ok(&["report", "--format", "prometheus", "-o", out.to_str().unwrap()]);
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(parse_prometheus(&written).iter().filter(|(n, _, _)| n == "imgarc_image_snapshots").count(), 1, "{written}");
    assert_eq!(std::fs::read_to_string(&old_link).unwrap(), "old\n", "the old file was rewritten in place, not replaced");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o7777, 0o644);
    let names = |d: &Path| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect::<Vec<_>>();
    assert_eq!(names(&dir), vec!["imgarc.prom".to_string()], "a temporary file was left behind");

    // A target that cannot be replaced (a directory): an error naming it, and still no temporary file.
    let blocked = dir.join("blocked.prom");
    std::fs::create_dir(&blocked).unwrap();
    let o = env.run(&["report", "--format", "prometheus", "-o", blocked.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("blocked.prom"), "{err}");
    let mut left = names(&dir);
    left.sort();
    assert_eq!(left, vec!["blocked.prom".to_string(), "imgarc.prom".to_string()], "a temporary file was left behind");
}

/// Width, height and pixels of an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes).
fn decode_png(png: &[u8]) -> (u32, u32, usize, Vec<u8>) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (mut pos, mut idat, mut header) = (8, Vec::new(), None);
    while pos + 8 <= png.len() {
        let len = u32::from_be_bytes(png[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = &png[pos + 4..pos + 8];
        let data = &png[pos + 8..pos + 8 + len];
        match kind {
            b"IHDR" => header = Some(data.to_vec()),
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        pos += 12 + len;
    }
    let h = header.expect("IHDR");
    let (w, ht) = (u32::from_be_bytes(h[0..4].try_into().unwrap()), u32::from_be_bytes(h[4..8].try_into().unwrap()));
    assert_eq!((h[8], h[12]), (8, 0), "8-bit, non-interlaced");
    let bpp = match h[9] {
        2 => 3,
        6 => 4,
        t => panic!("colour type {t}"),
    };
    let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&idat).expect("IDAT inflates");
    let stride = w as usize * bpp;
    let mut px = vec![0u8; stride * ht as usize];
    for y in 0..ht as usize {
        let filter = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        for x in 0..stride {
            let a = if x >= bpp { px[y * stride + x - bpp] as i16 } else { 0 };
            let b = if y > 0 { px[(y - 1) * stride + x] as i16 } else { 0 };
            let c = if x >= bpp && y > 0 { px[(y - 1) * stride + x - bpp] as i16 } else { 0 };
            let pred = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => (a + b) / 2,
                4 => {
                    let p = a + b - c;
                    let (pa, pb, pc) = ((p - a).abs(), (p - b).abs(), (p - c).abs());
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                f => panic!("filter {f}"),
            };
            px[y * stride + x] = (line[x] as i16 + pred) as u8;
        }
    }
    (w, ht, bpp, px)
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| std::process::Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
}

fn chromium_run(bin: &str, args: &[&str], page: &Path) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    std::process::Command::new(bin)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap()
}

#[test]
fn html_report_renders_in_chromium() {
    let (env, snaps) = fleet();
    let page = env.path("report.html");
    env.ok(&["report", "--format", "html", "--capacity", "200M", "-o", page.to_str().unwrap()]);
    let html = std::fs::read_to_string(&page).unwrap();
    for id in ["chart-growth", "chart-top", "chart-dedup"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id} missing");
    }
    assert!(!html.contains("<script") && !html.contains("http://") && !html.contains("https://"), "the page must be self-contained");
    assert!(html.contains(&snaps[0].1[..16]));

    let Some(bin) = chromium() else {
        skip_or_fail_in_ci("chromium not installed: the HTML report was NOT rendered (apt-get install chromium)");
        return;
    };
    let dom = chromium_run(bin, &["--dump-dom"], &page);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(dom.matches("<svg").count(), 3, "the rendered DOM holds the three charts");
    assert!(dom.matches("class=\"bar-added\"").count() == 4, "one growth bar per day");

    // Kept beside the test's temporary files only while it runs; IMGARC_REPORT_SCREENSHOT keeps a copy.
    let shot = env.path("report.png");
    let o = chromium_run(bin, &[&format!("--screenshot={}", shot.display()), "--window-size=1200,1600", "--hide-scrollbars"], &page);
    assert!(shot.exists(), "no screenshot: {}", String::from_utf8_lossy(&o.stderr));
    if let Some(keep) = std::env::var_os("IMGARC_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
    let png = std::fs::read(&shot).unwrap();
    let (w, h, bpp, px) = decode_png(&png);
    assert_eq!((w, h), (1200, 1600));
    let colours: std::collections::HashSet<&[u8]> = px.chunks(bpp).map(|p| &p[..3]).collect();
    let non_white = px.chunks(bpp).filter(|p| p[..3] != [255, 255, 255]).count();
    assert!(colours.len() > 30, "a blank or flat screenshot ({} colours)", colours.len());
    assert!(non_white * 20 > px.len() / bpp, "under 5% of the page is drawn ({non_white} pixels)");
    // The charts' bar colours appear: growth bars (#4c78a8) and the running total (#f58518).
    assert!(colours.contains(&[0x4c, 0x78, 0xa8][..]) && colours.contains(&[0xf5, 0x85, 0x18][..]), "chart colours missing");
}

#[test]
fn qcow2_virtual_against_allocated() {
    let env = Env::init("64K");
    let mut raw = bytes(2 << 20, 7, false);
    raw.resize(8 << 20, 0); // 6 MiB never written: holes
    let (r, q) = (env.path("d.raw"), env.path("d.qcow2"));
    std::fs::write(&r, &raw).unwrap();
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "qcow2", r.to_str().unwrap(), q.to_str().unwrap()])
        .status()
        .expect("qemu-img is required (apt-get install qemu-utils)");
    assert!(st.success());
    let a = env.archive(&q, "d");
    let rep = report(&env, &[]);
    let x = snap(&rep, &s(&a, "snapshot"));
    assert_eq!(s(x, "format"), "qcow2");
    assert_eq!(u(x, "logical_bytes"), std::fs::metadata(&q).unwrap().len());
    assert_eq!(u(x, "virtual_bytes"), 8 << 20);
    assert_eq!(u(x, "allocated_bytes"), 2 << 20);
}

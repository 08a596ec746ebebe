//! `imgarc sync --shard K/N` against the real Glance and one Ceph RGW repository: three
//! shards run at once, each with its own cache (three hosts), and between them archive
//! every image exactly once; deleted-upstream detection stays within a shard.
//! Run: `source /tmp/imgarc-servers.env` (or `. ci/openstack.sh` and `. ci/objectstore.sh`), then
//! `cargo nextest run --features openstack-tests,remote-tests -E 'test(/sync_shard/)'`.
use crate::support;
use crate::support::backend_common::{need, unique as prefix_of};
use crate::support::openstack as os;
use imgarc::shard::Shard;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output, Stdio};
use std::time::Instant;
use support::*;

/// A repository on RGW under a fresh prefix, and a work directory for caches and restores.
struct Rgw {
    repo: String,
    work: tempfile::TempDir,
}

impl Rgw {
    fn new(tag: &str) -> Rgw {
        let prefix = prefix_of(tag);
        let rgw = Rgw {
            repo: format!("s3:{}/{}/{prefix}", need("IMGARC_RGW_ENDPOINT"), need("IMGARC_RGW_BUCKET")),
            work: tempfile::tempdir().unwrap(),
        };
        let o = rgw.run("init", &["init", "--chunk-size", "64K"]);
        assert!(o.status.success(), "init: {}", String::from_utf8_lossy(&o.stderr));
        rgw
    }

    /// `imgarc --repo <rgw> ARGS` as host `host` (its own cache directory).
    fn cmd(&self, host: &str, args: &[&str]) -> Command {
        let mut c = bare_cmd();
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
            c.env_remove(k);
        }
        c.env("IMGARC_PASSWORD", PASSWORD)
            .env("AWS_ACCESS_KEY_ID", need("IMGARC_RGW_ACCESS_KEY"))
            .env("AWS_SECRET_ACCESS_KEY", need("IMGARC_RGW_SECRET_KEY"))
            .env("AWS_REGION", "us-east-1")
            .env("IMGARC_CACHE_DIR", self.work.path().join(format!("cache-{host}")))
            .arg("--repo")
            .arg(&self.repo)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, host: &str, args: &[&str]) -> Output {
        self.cmd(host, args).output().unwrap()
    }

    fn json(&self, host: &str, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = self.run(host, &a);
        assert!(o.status.success(), "imgarc {args:?}: {}\n{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

/// `--json --glance-url <noauth> sync --filter tag=<tag> ARGS`.
fn sync_args<'a>(glance: &'a str, tag: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--json", "--glance-url", glance, "sync", "--filter", tag];
    a.extend_from_slice(args);
    a
}

fn parse(o: &Output, what: &str) -> Value {
    assert!(o.status.success(), "{what}: {}\n{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{what}: no JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

/// image id → snapshot of the report's `archived` list.
fn archived(doc: &Value) -> BTreeMap<String, String> {
    doc["archived"].as_array().unwrap().iter().map(|e| (s(e, "id"), s(e, "snapshot"))).collect()
}

#[test]
fn three_shards_at_once_archive_every_image_exactly_once() {
    let _serial = os::serial();
    let g = os::noauth();
    let glance = os::env("GLANCE_URL");
    let tag = os::unique("sync-shard");
    let filter = format!("tag={tag}");

    // Six images at least, and more until every one of the three shards owns one (ids are
    // Glance's random UUIDs), so that each shard has work and the deletion test has a
    // shard that owns the victim and one that does not.
    let mut uploaded: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut guards = Vec::new();
    let owners = |u: &BTreeMap<String, Vec<u8>>| u.keys().map(|id| Shard::of(id, 3)).collect::<BTreeSet<u32>>();
    let mut i = 0u64;
    while uploaded.len() < 6 || (owners(&uploaded).len() < 3 && uploaded.len() < 16) {
        let data = bytes(8 << 20, 900 + i, false);
        let (rec, guard) = os::upload_image(&g, &format!("shard-vm-{i}"), &data, json!({"tags": [tag]}));
        uploaded.insert(rec.id, data);
        guards.push(guard);
        i += 1;
    }
    assert_eq!(owners(&uploaded).len(), 3, "16 random ids and a shard owns none: the assignment is broken");
    let total_bytes: usize = uploaded.values().map(Vec::len).sum();

    // The baseline measurement: one unsharded sync of the same images into its own repository.
    let single = Rgw::new("shard-single");
    let t = Instant::now();
    let whole = parse(&single.run("one", &sync_args(&glance, &filter, &[])), "unsharded sync");
    let single_secs = t.elapsed().as_secs_f64();
    assert_eq!(archived(&whole).len(), uploaded.len(), "{whole}");
    assert_eq!(whole["shard"], Value::Null, "{whole}");
    drop(single);

    // Three hosts at once, one shard each.
    let rgw = Rgw::new("shard-three");
    let t = Instant::now();
    let children: Vec<(u32, std::process::Child)> = (1..=3u32)
        .map(|k| {
            let shard = format!("{k}/3");
            (k, rgw.cmd(&format!("host{k}"), &sync_args(&glance, &filter, &["--shard", &shard])).spawn().unwrap())
        })
        .collect();
    let reports: Vec<(u32, Value)> =
        children.into_iter().map(|(k, c)| (k, parse(&c.wait_with_output().unwrap(), &format!("sync --shard {k}/3")))).collect();
    let sharded_secs = t.elapsed().as_secs_f64();
    let mb = total_bytes as f64 / (1 << 20) as f64;
    eprintln!(
        "MEASUREMENT sync of {} images, {mb:.0} MiB into RGW: unsharded {single_secs:.2} s ({:.1} MiB/s); \
         3 concurrent shards {sharded_secs:.2} s wall ({:.1} MiB/s aggregate)",
        uploaded.len(),
        mb / single_secs,
        mb / sharded_secs
    );

    let mut seen: BTreeMap<String, (u32, String)> = BTreeMap::new();
    for (k, doc) in &reports {
        assert_eq!(doc["shard"], json!({"index": k, "count": 3}), "{doc}");
        assert!(doc["failed"].as_array().unwrap().is_empty(), "{doc}");
        let mine = archived(doc);
        assert_eq!(u(doc, "images") as usize, mine.len(), "shard {k}: {doc}");
        assert_eq!(u(doc, "images_other_shards") as usize, uploaded.len() - mine.len(), "shard {k}: {doc}");
        for (id, snap) in mine {
            assert_eq!(Shard::of(&id, 3), *k, "shard {k} archived {id}, which is not its own");
            if let Some((other, _)) = seen.insert(id.clone(), (*k, snap)) {
                panic!("{id} archived by shards {other} and {k}");
            }
        }
    }
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), uploaded.keys().cloned().collect::<Vec<_>>(), "the shards cover every image");
    let listed = rgw.json("check", &["list"]);
    assert_eq!(listed.as_array().unwrap().len(), uploaded.len(), "one snapshot per image: {listed}");

    let check = rgw.json("check", &["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    for (id, (_, snap)) in &seen {
        let out = rgw.work.path().join(format!("restored-{id}"));
        let o = rgw.run("check", &["restore", snap, "-o", out.to_str().unwrap()]);
        assert!(o.status.success(), "restore {snap}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(std::fs::read(&out).unwrap() == uploaded[id], "{id} does not restore byte-exactly");
    }

    // One image deleted in Glance: a shard that does not own it says nothing of it (and
    // records nothing: the owner below still finds it newly deleted), its owner records it.
    let (victim, _) = uploaded.iter().next().unwrap();
    let victim = victim.clone();
    let owner = Shard::of(&victim, 3);
    let bystander = (owner % 3) + 1;
    g.delete(&victim).unwrap();
    let by = format!("{bystander}/3");
    let doc = parse(&rgw.run(&format!("host{bystander}"), &sync_args(&glance, &filter, &["--shard", &by])), "bystander");
    assert!(doc["deleted_upstream"].as_array().unwrap().is_empty(), "shard {by} marked another shard's image deleted: {doc}");
    assert!(doc["archived"].as_array().unwrap().is_empty(), "{doc}");
    let own = format!("{owner}/3");
    let doc = parse(&rgw.run(&format!("host{owner}"), &sync_args(&glance, &filter, &["--shard", &own])), "owner");
    let deleted: Vec<String> = doc["deleted_upstream"].as_array().unwrap().iter().map(|e| s(e, "id")).collect();
    assert_eq!(deleted, vec![victim.clone()], "{doc}");
    // Recorded once: a rerun of the owner finds nothing new, an unsharded dry run nothing either.
    let doc = parse(&rgw.run(&format!("host{owner}"), &sync_args(&glance, &filter, &["--shard", &own])), "owner again");
    assert!(doc["deleted_upstream"].as_array().unwrap().is_empty(), "{doc}");
    let doc = parse(&rgw.run("check", &sync_args(&glance, &filter, &["--dry-run"])), "unsharded dry run");
    assert!(doc["deleted_upstream"].as_array().unwrap().is_empty() && doc["archived"].as_array().unwrap().is_empty(), "{doc}");
    drop(guards);
}

/// `--shard` that names no shard is a usage error (exit 2, as clap's own), naming what is wrong.
#[test]
fn a_shard_that_is_no_shard_is_a_usage_error() {
    let env = Env::init("64K");
    for (bad, says) in [("0/3", "counts from 1"), ("4/3", "counts from 1 to N"), ("1/0", "at least 1"), ("x/y", "not a whole number")] {
        let o = env.run(&["--glance-url", "http://127.0.0.1:9", "sync", "--shard", bad]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "--shard {bad}: {err}");
        assert!(err.contains(says) && err.contains("--shard"), "--shard {bad}: {err}");
    }
}

//! Several hosts on one repository, each with its own index cache
//! (`IMGARC_CACHE_DIR`): a cache that sat idle while another host forgot and
//! pruned must still catch up, and one unreadable snapshot must not lock any
//! host out of the others.

use crate::support;
use serde_json::Value;
use std::path::PathBuf;
use support::*;

/// One repository, nights of one VM archived from host `a`.
struct Site {
    env: Env,
    nights: Vec<(String, Vec<u8>)>,
}

impl Site {
    fn new() -> Site {
        Site { env: Env::init("64K"), nights: Vec::new() }
    }

    fn cache(&self, host: &str) -> PathBuf {
        self.env.path(&format!("cache-{host}"))
    }

    /// Runs `imgarc --json ARGS` with `host`'s cache; panics with stderr on failure.
    fn on(&self, host: &str, args: &[&str]) -> Value {
        let o = self.run(host, args);
        assert!(o.status.success(), "host {host}: imgarc {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn run(&self, host: &str, args: &[&str]) -> std::process::Output {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        self.env.cmd(&a).env("IMGARC_CACHE_DIR", self.cache(host)).output().unwrap()
    }

    /// Archives another night (half of it shared with the night before) from host `a`.
    fn night(&mut self) -> String {
        let n = self.nights.len() as u64;
        let shared = self.nights.last().map(|(_, d)| d[..2 << 20].to_vec()).unwrap_or_else(|| bytes(2 << 20, 100, false));
        let data = [shared, bytes(2 << 20, n + 1, false)].concat();
        let p = self.env.path(&format!("night{n}"));
        std::fs::write(&p, &data).unwrap();
        let id = s(&self.on("a", &["archive", p.to_str().unwrap(), "--name", "vm"]), "snapshot");
        self.nights.push((id.clone(), data));
        id
    }

    fn listed(&self, host: &str) -> Vec<String> {
        let mut ids: Vec<String> =
            self.on(host, &["list"]).as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
        ids.sort();
        ids
    }

    fn assert_restores(&self, host: &str, night: usize) {
        let (id, data) = &self.nights[night];
        let out = self.env.path(&format!("restored-{host}-{night}"));
        self.on(host, &["restore", id, "-o", out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == *data, "host {host}: night {night} does not restore byte-exactly");
    }

    /// `forget` then the two prunes that delete what it freed, all from host `a`.
    fn forget_and_prune(&self, id: &str) {
        self.on("a", &["forget", id]);
        self.on("a", &["prune", "--grace", "0", "--max-repack-ratio", "1"]);
        let sweep = self.on("a", &["prune", "--grace", "0"]);
        assert!(u(&sweep, "packs_deleted") > 0, "the prune deleted nothing, so the test proves nothing: {sweep}");
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The reproduction: `b` last saw both nights; `a` forgets night 0
/// and prunes its packs (trees included) away. `b` must catch up.
#[test]
fn a_cache_older_than_another_hosts_prune_catches_up() {
    let mut site = Site::new();
    let n0 = site.night();
    let n1 = site.night();
    assert_eq!(site.listed("b"), sorted(vec![n0.clone(), n1.clone()]));
    site.forget_and_prune(&n0);

    assert_eq!(site.listed("b"), vec![n1.clone()]);
    site.assert_restores("b", 1);
    assert_eq!(site.on("b", &["check", "--read-data"])["ok"], true);
    // b's reference counts are right: the same figures as a cache made from nothing,
    // and a prune from b finds nothing to free and leaves night 1 intact.
    let report = |host: &str| {
        let r = site.on(host, &["report"]);
        (r["totals"].clone(), r["snapshots"].clone())
    };
    assert_eq!(report("b"), report("fresh"));
    let from_b = site.on("b", &["prune", "--grace", "0"]);
    assert_eq!(from_b["packs_marked"], 0, "{from_b}");
    site.assert_restores("b", 1);
}

/// `b` last ran after a repack (it knows the mark and the new pack) but
/// before the forget, then sleeps through two prune cycles; `c` is created
/// only after them.
#[test]
fn a_cache_idle_across_two_prune_cycles_and_a_new_cache_agree() {
    let mut site = Site::new();
    let n0 = site.night();
    let n1 = site.night();
    let n2 = site.night();
    site.on("a", &["forget", &n0]);
    let marked = site.on("a", &["prune", "--grace", "0", "--max-repack-ratio", "1"]);
    assert!(u(&marked, "packs_repacked") > 0, "{marked}");
    assert_eq!(site.listed("b"), sorted(vec![n1.clone(), n2.clone()]));

    // Cycle 1: sweep night 0's packs. Cycle 2: forget night 1, mark, sweep.
    site.on("a", &["prune", "--grace", "0"]);
    site.forget_and_prune(&n1);
    let n3 = site.night();

    for host in ["b", "c"] {
        assert_eq!(site.listed(host), sorted(vec![n2.clone(), n3.clone()]), "host {host}");
        site.assert_restores(host, 2);
        site.assert_restores(host, 3);
        assert_eq!(site.on(host, &["check"])["ok"], true, "host {host}");
    }
    // Both caches count the same references: the same report figures.
    let report = |host: &str| {
        let r = site.on(host, &["report"]);
        (r["totals"].clone(), r["snapshots"].clone())
    };
    assert_eq!(report("b"), report("c"));
}

/// A damaged snapshot object and a snapshot whose extent tree is gone: every
/// host still lists and restores the others, `check` names both, `index
/// rebuild` completes and names both, and `prune` refuses rather than treat
/// them as referencing nothing.
#[test]
fn unreadable_snapshots_are_named_and_never_block_the_others() {
    let mut site = Site::new();
    let good = site.night();
    // Night 1: its own pack holds its new chunks and its tree; deleting that
    // pack leaves the snapshot object with an unreadable extent tree.
    let packs_before: Vec<PathBuf> = site.env.packs();
    let treeless = site.night();
    let new_packs: Vec<PathBuf> = site.env.packs().into_iter().filter(|p| !packs_before.contains(p)).collect();
    assert!(!new_packs.is_empty());
    let damaged = site.night();
    for p in &new_packs {
        std::fs::remove_file(p).unwrap();
    }
    let snap_file = site.env.repo.join("snapshots").join(&damaged);
    let mut bytes = std::fs::read(&snap_file).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&snap_file, bytes).unwrap();

    // A host that knew them (a) and a new one (fresh) both go on.
    for host in ["a", "fresh"] {
        let o = site.run(host, &["list"]);
        assert!(o.status.success(), "host {host}: {}", String::from_utf8_lossy(&o.stderr));
        let listed: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(listed.as_array().unwrap().iter().any(|r| r["id"] == good.as_str()), "host {host}: {listed}");
        site.assert_restores(host, 0);
    }
    // `list` reads snapshot objects, not their extent lists: a new host lists the
    // treeless snapshot (restoring it fails) and warns about the damaged one.
    let warned = site.run("fresh2", &["list"]);
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert!(stderr.contains(&damaged) && !stderr.contains(&treeless), "the warning must name the damaged snapshot: {stderr}");
    let listed: Value = serde_json::from_slice(&warned.stdout).unwrap();
    assert!(listed.as_array().unwrap().iter().any(|r| r["id"] == treeless.as_str()), "{listed}");
    let out = site.env.path("treeless-restored");
    let restore = site.run("fresh2", &["restore", &treeless, "-o", out.to_str().unwrap()]);
    assert!(!restore.status.success(), "a snapshot without its extent tree restored");
    // A command that counts references (report) reads them, and names the treeless one.
    let counted = site.run("fresh2", &["report"]);
    let stderr = String::from_utf8_lossy(&counted.stderr);
    assert!(stderr.contains(&treeless) && stderr.contains(&damaged), "the warning must name both snapshots: {stderr}");

    let check = site.run("fresh", &["check"]);
    assert_eq!(check.status.code(), Some(1));
    let check: Value = serde_json::from_slice(&check.stdout).unwrap();
    let errors = check["errors"].to_string();
    assert!(errors.contains(&treeless) && errors.contains(&damaged), "check must name both: {check}");

    let rebuilt = site.on("rebuild", &["index", "rebuild"]);
    let unreadable = rebuilt["snapshots_unreadable"].to_string();
    assert!(unreadable.contains(&treeless) && unreadable.contains(&damaged), "{rebuilt}");
    assert_eq!(rebuilt["snapshots"], 1, "{rebuilt}");
    site.assert_restores("rebuild", 0);

    let prune = site.run("fresh", &["prune", "--grace", "0"]);
    assert!(!prune.status.success(), "prune ran with unreadable snapshots");
    assert!(String::from_utf8_lossy(&prune.stderr).contains(&damaged));

    // Forgetting them by full id (they are in no cache to resolve a prefix) unblocks prune.
    let forgot = site.on("fresh", &["forget", &damaged, &treeless]);
    assert_eq!(forgot["removed"], 2, "{forgot}");
    site.on("fresh", &["prune", "--grace", "0"]);
    site.on("fresh", &["prune", "--grace", "0"]);
    for host in ["a", "fresh"] {
        assert_eq!(site.listed(host), vec![good.clone()], "host {host}");
        site.assert_restores(host, 0);
    }
    assert_eq!(site.on("fresh", &["check", "--read-data"])["ok"], true);
}

/// Archive, sync and check take their lock before they catch up with the
/// repository (else a prune mark written in between is missed while the
/// sweep, seeing a lock younger than its mark, does not wait): when the lock
/// is refused, the cache has not even been opened.
#[test]
fn writers_take_their_lock_before_catching_up() {
    // Plants a plaintext lock: an unencrypted repository (an encrypted one seals its locks).
    let site = Site { env: Env::init_unencrypted("64K"), nights: Vec::new() };
    let now = chrono::Utc::now();
    let held = serde_json::json!({
        "hostname": "elsewhere", "pid": 1, "time": now.to_rfc3339(), "expires": (now + chrono::Duration::hours(1)).to_rfc3339(),
        "exclusive": true, "purpose": "check", "since": now.to_rfc3339(),
    });
    std::fs::create_dir_all(site.env.repo.join("locks")).unwrap();
    std::fs::write(site.env.repo.join("locks").join("00".repeat(16)), held.to_string()).unwrap();
    let image = site.env.path("img");
    std::fs::write(&image, bytes(1 << 20, 9, false)).unwrap();
    for (host, args) in [
        ("archive", vec!["archive", image.to_str().unwrap()]),
        ("sync", vec!["sync", "--glance-url", "http://127.0.0.1:9"]),
        ("check", vec!["check"]),
    ] {
        let o = site.run(host, &args);
        assert!(!o.status.success(), "{host} ran beside an exclusive lock");
        assert!(String::from_utf8_lossy(&o.stderr).contains("locked by check"), "{host}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(!site.cache(host).exists(), "{host} caught up with the repository before taking its lock");
    }
}

/// A prune mark that cannot be read: commands that only read warn and go on;
/// a writer refuses (it would deduplicate against packs about to be deleted).
#[test]
fn an_unreadable_prune_mark_stops_writers_and_names_the_mark() {
    let mut site = Site::new();
    site.night();
    let key = format!("prune/{}", "ab".repeat(32));
    std::fs::create_dir_all(site.env.repo.join("prune")).unwrap();
    std::fs::write(site.env.repo.join(&key), b"{ not a mark").unwrap();

    let listed = site.run("a", &["list"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    assert!(String::from_utf8_lossy(&listed.stderr).contains(&key));
    let image = site.env.path("img");
    std::fs::write(&image, bytes(1 << 20, 9, false)).unwrap();
    for args in [vec!["archive", image.to_str().unwrap()], vec!["prune", "--grace", "0"]] {
        let o = site.run("a", &args);
        assert!(!o.status.success(), "{args:?} went on without a prune mark");
        assert!(String::from_utf8_lossy(&o.stderr).contains(&key), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(site.listed("a").len(), 1, "a snapshot was written");
}

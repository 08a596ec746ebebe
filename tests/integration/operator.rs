//! The operator surface of issue 16: exit codes per condition (3 some items failed, 10 no
//! repository, 11 locked, 12 wrong password, 130/143 signals), `--metrics-file` (read back with
//! the strict exposition-format parser of `support::prom`, present after failed and interrupted
//! runs, 0644, the last success carried over a failure), and the logs (`-v`, `--log-format json`,
//! `IMGARC_LOG`; no secret at any level against the real Keystone and Glance).
use crate::support;
use crate::support::prom;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// The metrics file parsed strictly; also asserts it is 0644 and that no temporary file is left beside it.
fn metrics(path: &Path) -> prom::Exposition {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("no metrics file {}: {e}", path.display()));
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "metrics file mode {mode:o}");
    let dir = path.parent().unwrap();
    let leftovers: Vec<_> =
        std::fs::read_dir(dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let parsed = prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // Every family is a documented gauge.
    for s in &parsed.samples {
        assert_eq!(parsed.types.get(&s.name).map(String::as_str), Some("gauge"), "{}: {text}", s.name);
        assert!(parsed.help.get(&s.name).is_some_and(|h| !h.is_empty()), "{} has no HELP: {text}", s.name);
    }
    assert_eq!(parsed.value("imgarc_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0), "{text}");
    parsed
}

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or_else(|| panic!("killed by a signal: {o:?}"))
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

#[test]
fn the_metrics_parser_rejects_what_a_scraper_would() {
    let good = "# HELP a_b Help \\\\ text\\n.\n# TYPE a_b gauge\na_b{x=\"q\\\"\\\\\\n\"} 1.5\na_b{x=\"y\",} -Inf\nc NaN 1700000000\n";
    let p = prom::parse(good).unwrap();
    assert_eq!(p.value("a_b", &[("x", "q\"\\\n")]), Some(1.5));
    assert_eq!(p.help["a_b"], "Help \\ text\n.");
    for bad in [
        "a_b 1",                                 // no final newline
        "1abc 1\n",                              // bad name
        "a b\n",                                 // value not a float
        "a{x=\"unterminated} 1\n",               // unterminated label value
        "a{x=\"\\t\"} 1\n",                      // bad escape
        "a{x=\"1\",x=\"2\"} 1\n",                // label twice
        "a{__x=\"1\"} 1\n",                      // reserved label name
        "a 1\nb 1\na 2\n",                       // a family split apart
        "a 1\n# TYPE a gauge\n",                 // TYPE after samples
        "# TYPE a gauge\n# TYPE a gauge\na 1\n", // second TYPE
        "# TYPE a meter\na 1\n",                 // unknown type
        "a 1\na 1\n",                            // duplicate series
        "a 1 2 3\n",                             // trailing text
        "a 1 1.5\n",                             // timestamp not an integer
        "garbage\n",
    ] {
        assert!(prom::parse(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn a_missing_repository_exits_10_and_says_so_in_json_and_metrics() {
    let env = Env::new();
    let o = env.run(&["--json", "list"]);
    assert_eq!(code(&o), 10, "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["exit_code"], 10);
    assert!(doc["error"].as_str().unwrap().contains("no imgarc repository"), "{doc}");

    let file = env.path("check.prom");
    let o = env.run(&["check", "--metrics-file", file.to_str().unwrap()]);
    assert_eq!(code(&o), 10, "{}", stderr(&o));
    let m = metrics(&file);
    assert_eq!(m.value("imgarc_check_exit_code", &[]), Some(10.0));
    assert_eq!(m.value("imgarc_check_last_success_timestamp_seconds", &[]), None, "never succeeded: the series is left out");
    assert!(m.value("imgarc_check_last_run_timestamp_seconds", &[]).unwrap() > now() - 600.0);
    // With JSON logs the final error line is a JSON object too, carrying the code.
    let o = env.run(&["--log-format", "json", "list"]);
    assert_eq!(code(&o), 10);
    let last: serde_json::Value = serde_json::from_str(stderr(&o).lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "ERROR");
    assert_eq!(last["fields"]["exit_code"], 10);
    assert!(last["message"].as_str().unwrap().contains("no imgarc repository"), "{last}");
    // init is the verb that expects no repository.
    env.ok(&["init"]);
}

#[test]
fn a_held_lock_exits_11_for_every_verb_that_locks() {
    let env = Env::init("64K");
    let image = env.path("img");
    std::fs::write(&image, bytes(256 << 10, 3, false)).unwrap();
    env.archive(&image, "a");
    let repo = env.open_repo();
    let lock = repo.acquire_lock(true, "operator-test").unwrap();
    let file = env.path("m.prom");
    let m = file.to_str().unwrap();
    for args in [
        vec!["check", "--metrics-file", m],
        vec!["prune", "--metrics-file", m],
        vec!["forget", "--keep-last", "1", "--metrics-file", m],
        vec!["sync", "--glance-url", "http://127.0.0.1:9", "--metrics-file", m],
        vec!["archive", image.to_str().unwrap()],
    ] {
        let o = env.run(&args);
        assert_eq!(code(&o), 11, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("locked by operator-test"), "{args:?}: {}", stderr(&o));
        if args.contains(&"--metrics-file") {
            assert_eq!(metrics(&file).value(&format!("imgarc_{}_exit_code", args[0]), &[]), Some(11.0), "{args:?}");
        }
    }
    drop(lock);
    env.ok(&["check"]);
}

#[test]
fn a_wrong_password_exits_12_and_a_failed_run_keeps_the_last_success() {
    let env = Env::init("64K");
    let file = env.path("check.prom");
    let m = file.to_str().unwrap();
    env.ok(&["check", "--metrics-file", m]);
    let first = metrics(&file);
    assert_eq!(first.value("imgarc_check_exit_code", &[]), Some(0.0));
    let success = first.value("imgarc_check_last_success_timestamp_seconds", &[]).unwrap();
    assert_eq!(Some(success), first.value("imgarc_check_last_run_timestamp_seconds", &[]));
    assert!(first.value("imgarc_check_duration_seconds", &[]).unwrap() >= 0.0);
    assert_eq!(first.value("imgarc_check_errors", &[]), Some(0.0));

    std::thread::sleep(Duration::from_millis(20));
    let o = env.cmd(&["check", "--metrics-file", m]).env("IMGARC_PASSWORD", "not the password").stdin(Stdio::null()).output().unwrap();
    assert_eq!(code(&o), 12, "{}", stderr(&o));
    let failed = metrics(&file);
    assert_eq!(failed.value("imgarc_check_exit_code", &[]), Some(12.0));
    assert_eq!(failed.value("imgarc_check_last_success_timestamp_seconds", &[]), Some(success), "the last success is carried over");
    assert!(failed.value("imgarc_check_last_run_timestamp_seconds", &[]).unwrap() > success);

    // A previous file that does not parse gives no last success to carry.
    std::fs::write(&file, "imgarc_check_last_success_timestamp_seconds garbage\n").unwrap();
    let o = env.cmd(&["check", "--metrics-file", m]).env("IMGARC_PASSWORD", "not the password").stdin(Stdio::null()).output().unwrap();
    assert_eq!(code(&o), 12);
    assert_eq!(metrics(&file).value("imgarc_check_last_success_timestamp_seconds", &[]), None);
}

#[test]
fn forget_prune_and_check_write_their_series() {
    let env = Env::init("64K");
    for (i, name) in ["a", "a"].iter().enumerate() {
        let image = env.path(&format!("img{i}"));
        std::fs::write(&image, bytes(512 << 10, i as u64 + 10, false)).unwrap();
        env.archive(&image, name);
    }
    let file = env.path("run.prom");
    let m = file.to_str().unwrap();
    env.ok(&["forget", "--keep-last", "1", "--metrics-file", m]);
    let f = metrics(&file);
    assert_eq!(f.value("imgarc_forget_snapshots_removed", &[]), Some(1.0));
    assert_eq!(f.value("imgarc_forget_snapshots_kept", &[]), Some(1.0));
    assert_eq!(f.value("imgarc_forget_exit_code", &[]), Some(0.0));

    env.ok(&["prune", "--metrics-file", m]);
    let p = metrics(&file);
    assert_eq!(p.value("imgarc_prune_exit_code", &[]), Some(0.0));
    assert!(p.value("imgarc_prune_bytes_awaiting_grace", &[]).unwrap() > 0.0, "the forgotten image's chunks await the grace period");
    assert_eq!(p.value("imgarc_prune_bytes_freed", &[]), Some(0.0));
    assert_eq!(p.value("imgarc_forget_exit_code", &[]), None, "one file per run: prune replaced forget's");

    env.ok(&["check", "--read-data", "--metrics-file", m]);
    let c = metrics(&file);
    assert_eq!(c.value("imgarc_check_damaged_chunks", &[]), Some(0.0));
    assert_eq!(c.value("imgarc_check_snapshots_checked", &[]), Some(1.0));

    // Damage a pack: check exits 1 and its metrics count the damage.
    let pack = env.packs().into_iter().next().unwrap();
    let mut data = std::fs::read(&pack).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&pack, data).unwrap();
    let o = env.run(&["check", "--read-data", "--metrics-file", m]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let c = metrics(&file);
    assert_eq!(c.value("imgarc_check_exit_code", &[]), Some(1.0));
    assert!(c.value("imgarc_check_errors", &[]).unwrap() >= 1.0);
    assert!(c.value("imgarc_check_last_success_timestamp_seconds", &[]).is_some(), "carried from the clean check");
}

#[test]
fn usage_errors_exit_2_naming_what_is_wrong() {
    let env = Env::init("64K");
    let file = env.path("m.prom");
    let o = env.run(&["list", "--metrics-file", file.to_str().unwrap()]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--metrics-file is for sync, forget, prune, check, copy, drill (not list)"), "{}", stderr(&o));
    assert!(!file.exists());
    let o = env.run(&["check", "--metrics-file", env.dir.path().to_str().unwrap()]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = env.run(&["check", "--metrics-file", env.path("no/such/dir/m.prom").to_str().unwrap()]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    // A dry run changes nothing: its file would report a success that did not happen.
    for dry in [&["forget", "--keep-last", "1", "--dry-run"][..], &["prune", "--dry-run"][..]] {
        let mut args = dry.to_vec();
        args.extend(["--metrics-file", file.to_str().unwrap()]);
        let o = env.run(&args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("a dry run changes nothing and writes no metrics"), "{}", stderr(&o));
        assert!(!file.exists());
    }
    let o = env.cmd(&["list"]).env("IMGARC_LOG", "imgarc=loud").stdin(Stdio::null()).output().unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("IMGARC_LOG=\"imgarc=loud\" is not a log filter"), "{}", stderr(&o));
    let o = env.run(&["--log-format", "xml", "list"]);
    assert_eq!(code(&o), 2);
}

#[test]
fn verbosity_and_json_log_lines() {
    let env = Env::init("64K");
    let quiet = env.run(&["check"]);
    assert!(!stderr(&quiet).contains("debug"), "debug events at the default level: {}", stderr(&quiet));

    let o = env.run(&["-v", "--log-format", "json", "check"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let lines: Vec<serde_json::Value> =
        stderr(&o).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))).collect();
    let opened = lines.iter().find(|l| l["message"] == "opened the repository").unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(opened["level"], "DEBUG");
    assert_eq!(opened["target"], "imgarc::repository");
    assert!(chrono::DateTime::parse_from_rfc3339(opened["timestamp"].as_str().unwrap()).is_ok(), "{opened}");
    assert_eq!(opened["fields"]["location"], env.repo.to_str().unwrap());
    assert!(lines.iter().any(|l| l["fields"]["purpose"] == "check" && l["level"] == "DEBUG"), "{lines:?}");

    // IMGARC_LOG overrides -v: only warnings and up of imgarc.
    let o = env.cmd(&["-v", "check"]).env("IMGARC_LOG", "imgarc=warn").stdin(Stdio::null()).output().unwrap();
    assert_eq!(code(&o), 0);
    assert!(!stderr(&o).contains("opened the repository"), "{}", stderr(&o));
    let o = env.cmd(&["check"]).env("IMGARC_LOG", "imgarc::repository=debug").stdin(Stdio::null()).output().unwrap();
    assert!(stderr(&o).contains("imgarc: debug: imgarc::repository: opened the repository"), "{}", stderr(&o));
}

/// A Glance that accepts connections and never answers: a sync that waits on it until signalled.
fn silent_glance() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

#[test]
fn sigint_during_a_sync_exits_130_writes_metrics_and_removes_the_lock() {
    let env = Env::init("64K");
    let (_listener, url) = silent_glance();
    let file = env.path("sync.prom");
    let child = env
        .cmd(&["--json", "--glance-url", &url, "sync", "--metrics-file", file.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let repo = env.open_repo();
    wait_for(30, "the sync lock", || repo.list_locks().unwrap_or_default().iter().any(|(_, l)| l.purpose == "sync"));
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, libc::SIGINT);
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 130, "{}", stderr(&o));
    assert!(stderr(&o).contains("interrupted by SIGINT"), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["exit_code"], 130);
    let m = metrics(&file);
    assert_eq!(m.value("imgarc_sync_exit_code", &[]), Some(130.0));
    assert!(repo.list_locks().unwrap().is_empty(), "the interrupted sync left its lock");
}

#[test]
fn sigterm_during_an_archive_exits_143_and_removes_the_lock() {
    let env = Env::init("64K");
    let mut child = env.cmd(&["archive", "-", "--name", "piped"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, &bytes(128 << 10, 1, false)).unwrap();
    let repo = env.open_repo();
    wait_for(30, "the archive lock", || !repo.list_locks().unwrap_or_default().is_empty());
    signal(&child, libc::SIGTERM);
    let o = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(code(&o), 143, "{}", stderr(&o));
    assert!(stderr(&o).contains("interrupted by SIGTERM"), "{}", stderr(&o));
    assert!(repo.list_locks().unwrap().is_empty(), "the stopped archive left its lock");
    assert!(repo.list_snapshot_ids().unwrap().is_empty());
}

#[cfg(feature = "remote-tests")]
#[test]
fn a_missing_repository_on_s3_exits_10() {
    let need = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set: run `. ci/objectstore.sh` first"));
    let repo = format!("s3:{}/{}/operator-missing-{}", need("IMGARC_RGW_ENDPOINT"), need("IMGARC_RGW_BUCKET"), std::process::id());
    let o = bare_cmd()
        .args(["--repo", &repo, "list"])
        .env("AWS_ACCESS_KEY_ID", need("IMGARC_RGW_ACCESS_KEY"))
        .env("AWS_SECRET_ACCESS_KEY", need("IMGARC_RGW_SECRET_KEY"))
        .env("AWS_REGION", "us-east-1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&o), 10, "{}", stderr(&o));
    assert!(stderr(&o).contains("no imgarc repository at s3:"), "{}", stderr(&o));
}

/// A missing swift: repository exits 10 too; its trace log (Keystone application-credential
/// auth, then Swift) holds neither the credential's secret nor a token.
#[cfg(feature = "remote-tests")]
#[test]
fn a_missing_repository_on_swift_exits_10_and_its_trace_log_holds_no_secret() {
    let need = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set: run `. ci/objectstore.sh` first"));
    let secret = need("IMGARC_SWIFT_APP_CRED_SECRET");
    let mut c = bare_cmd();
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OS_")) {
        c.env_remove(k);
    }
    let repo = format!("swift:{}/operator-missing-{}", need("IMGARC_SWIFT_CONTAINER"), std::process::id());
    let o = c
        .args(["--log-format", "json", "--repo", &repo, "list"])
        .env("IMGARC_LOG", "trace")
        .env("OS_AUTH_URL", need("IMGARC_SWIFT_AUTH_URL"))
        .env("OS_AUTH_TYPE", "v3applicationcredential")
        .env("OS_APPLICATION_CREDENTIAL_ID", need("IMGARC_SWIFT_APP_CRED_ID"))
        .env("OS_APPLICATION_CREDENTIAL_SECRET", &secret)
        .env("OS_REGION_NAME", need("IMGARC_SWIFT_REGION"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&o), 10, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.lines().count() > 1, "trace logged nothing: {err}");
    for line in err.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    }
    assert!(err.contains("no imgarc repository at swift:"), "{err}");
    assert!(!err.contains(&secret), "the application credential's secret is in the trace log");
    assert!(!err.contains("gAAAAA"), "a token is in the trace log");
    assert!(!err.to_ascii_lowercase().contains("x-auth-token"), "the token header is in the trace log");
}

#[cfg(feature = "openstack-tests")]
mod openstack {
    use super::*;
    use crate::support::openstack as os;
    use serde_json::json;

    #[test]
    fn a_sync_with_one_failed_image_exits_3_and_its_metrics_say_so() {
        let _serial = os::serial();
        let g = os::noauth();
        let env = Env::init("64K");
        let tag = os::unique("operator-fail");
        let (good, _g1) =
            os::upload_image(&g, &format!("{tag}-good"), &bytes(1 << 20, 1, true), json!({"disk_format": "raw", "tags": [tag]}));
        let (bad, _g2) =
            os::upload_image(&g, &format!("{tag}-bad"), &bytes(1 << 20, 2, true), json!({"disk_format": "raw", "tags": [tag]}));
        // Change the bytes behind Glance's back: its checksum no longer matches.
        let stored = Path::new(&os::env("GLANCE_STATE_DIR")).join("images").join(&bad.id);
        let mut data = std::fs::read(&stored).expect("image file in Glance's store");
        data[4321] ^= 0xff;
        std::fs::write(&stored, &data).unwrap();

        let file = env.path("sync.prom");
        let args =
            ["--glance-url", &os::env("GLANCE_URL"), "sync", "--filter", &format!("tag={tag}"), "--metrics-file", file.to_str().unwrap()];
        let o = env.run(&args);
        assert_eq!(code(&o), 3, "{}", stderr(&o));
        assert!(stderr(&o).contains(&format!("failed {tag}-bad ({})", bad.id)), "{}", stderr(&o));
        let m = metrics(&file);
        assert_eq!(m.value("imgarc_sync_exit_code", &[]), Some(3.0));
        assert_eq!(m.value("imgarc_sync_images", &[("outcome", "failed")]), Some(1.0));
        assert_eq!(m.value("imgarc_sync_images", &[("outcome", "archived")]), Some(1.0));
        for zero in ["unchanged", "metadata_updated", "skipped", "volume_backed", "deleted_upstream"] {
            assert_eq!(m.value("imgarc_sync_images", &[("outcome", zero)]), Some(0.0), "{zero}");
        }
        assert!(m.value("imgarc_sync_bytes_read", &[]).unwrap() >= (2 << 20) as f64);
        assert!(m.value("imgarc_sync_bytes_stored", &[]).unwrap() > 0.0);
        assert_eq!(m.value("imgarc_sync_last_success_timestamp_seconds", &[]), None);

        // With --log-format json the per-image lines are events too: standard error is JSON lines only.
        let o = env.run(&["--log-format", "json", "--glance-url", &os::env("GLANCE_URL"), "sync", "--filter", &format!("tag={tag}")]);
        assert_eq!(code(&o), 3, "{}", stderr(&o));
        let events: Vec<serde_json::Value> =
            stderr(&o).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))).collect();
        let outcome =
            |id: &str| events.iter().find(|v| v["fields"]["id"] == id).map(|v| (v["level"].clone(), v["fields"]["outcome"].clone()));
        assert_eq!(outcome(&good.id), Some((json!("INFO"), json!("unchanged"))), "{events:?}");
        assert_eq!(outcome(&bad.id), Some((json!("ERROR"), json!("failed"))), "{events:?}");
    }

    /// `-vv` and `IMGARC_LOG=trace`, JSON lines, against the real Keystone and Glance: every line
    /// parses, and neither the password nor a token (Keystone's fernet tokens start `gAAAAA`)
    /// nor the header that carries it appears.
    #[test]
    fn debug_and_trace_logs_carry_no_password_or_token() {
        let env = Env::init("64K");
        let password = os::env("OS_PASSWORD");
        for (verbosity, filter) in [("-vv", None), ("-v", Some("trace"))] {
            let mut c = env.cmd(&[verbosity, "--log-format", "json", "glance", "list"]);
            for (k, v) in os::os_env() {
                c.env(k, v);
            }
            c.env_remove("OS_CLOUD").env_remove("IMGARC_GLANCE_URL");
            if let Some(f) = filter {
                c.env("IMGARC_LOG", f);
            }
            let o = c.stdin(Stdio::null()).output().unwrap();
            assert_eq!(code(&o), 0, "{}", stderr(&o));
            let err = stderr(&o);
            assert!(err.lines().count() > 0, "{verbosity} {filter:?} logged nothing");
            for line in err.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                assert!(v["level"].is_string() && v["target"].is_string() && v["timestamp"].is_string(), "{line}");
            }
            assert!(!err.contains(&password), "the password is in the {verbosity} {filter:?} log");
            assert!(!err.contains("gAAAAA"), "a token is in the {verbosity} {filter:?} log");
            assert!(!err.to_ascii_lowercase().contains("x-auth-token"), "the token header is in the {verbosity} {filter:?} log");
        }
    }
}

//! Passwords and keys through the CLI: `init` encrypted by default, every
//! password source and their order, no source without a terminal (exit 1, at
//! once), a wrong password (exit 12), `key list | add | remove | passwd`,
//! write-only keys, the demo that never prompts, and no password in any output.

use crate::support;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// Runs `c` with stdin null, failing the test if it has not exited after `limit`.
fn run_within(mut c: Command, limit: Duration) -> Output {
    let mut child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("still running after {limit:?} (a prompt that hangs?): {}", String::from_utf8_lossy(&o.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `imgarc --repo REPO ARGS` with no password source but those `vars` set.
fn with_vars(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = bare_cmd();
    c.arg("--repo").arg(&env.repo).args(args).env("IMGARC_CACHE_DIR", &env.cache).env_remove("IMGARC_REPO");
    c.envs(vars.iter().copied());
    run_within(c, Duration::from_secs(60))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(env: &Env, name: &str, content: &str) -> PathBuf {
    let p = env.path(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn key_objects(env: &Env) -> Vec<Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(env.repo.join("keys")).unwrap() {
        out.push(serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap());
    }
    out
}

fn key_list(env: &Env, password: &str) -> Vec<Value> {
    let o = with_vars(env, &[("IMGARC_PASSWORD", password)], &["--json", "key", "list"]);
    assert!(o.status.success(), "key list: {}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["keys"].as_array().unwrap().clone()
}

fn opens(env: &Env, password: &str) -> bool {
    let o = with_vars(env, &[("IMGARC_PASSWORD", password)], &["list"]);
    match o.status.code() {
        Some(0) => true,
        Some(12) => false,
        c => panic!("list exited {c:?}: {}", text(&o.stderr)),
    }
}

#[test]
fn init_encrypts_by_default_says_so_and_round_trips() {
    let env = Env::new();
    let r = env.json(&["init"]);
    assert_eq!(r["encrypted"], true, "{r}");
    assert_eq!(r["encryption"], "aes-256-gcm");
    assert_eq!(r["chunk_id"], "blake3-keyed");
    assert_eq!(r["key"]["kind"], "full");
    assert_eq!(r["key"]["id"].as_str().unwrap().len(), 64);
    let config: Value = serde_json::from_slice(&std::fs::read(env.repo.join("config")).unwrap()).unwrap();
    assert_eq!(config["encryption"], "aes-256-gcm");
    let data = bytes(2 << 20, 3, true);
    let p = env.path("img.raw");
    std::fs::write(&p, &data).unwrap();
    let snap = s(&env.archive(&p, "vm"), "snapshot");
    assert!(env.restore_bytes(&snap) == data);
    // The snapshot object is sealed: not JSON, and without the password nothing opens.
    let sealed = std::fs::read(env.repo.join("snapshots").join(&snap)).unwrap();
    assert!(serde_json::from_slice::<Value>(&sealed).is_err());
    let keys = key_list(&env, PASSWORD);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["in_use"], true);
    assert_eq!(keys[0]["id"], r["key"]["id"]);

    // Prose says it too; and the other cipher works the same way.
    let other = Env::new();
    let out = other.ok(&["init", "--encryption", "xchacha20-poly1305"]);
    assert!(out.contains("encrypted with xchacha20-poly1305"), "{out}");
    let snap = s(&other.archive(&p, "vm"), "snapshot");
    assert!(other.restore_bytes(&snap) == data);
}

#[test]
fn an_unencrypted_repository_never_asks_and_keeps_the_v1_format() {
    let env = Env::new();
    let o = with_vars(&env, &[], &["init", "--encryption", "none"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("not encrypted"), "{}", text(&o.stdout));
    let config: Value = serde_json::from_slice(&std::fs::read(env.repo.join("config")).unwrap()).unwrap();
    assert_eq!((config["encryption"].as_str(), config["chunk_id"].as_str()), (Some("none"), Some("blake3")));
    assert!(config.get("dedup_scope").is_none(), "v1 configs have no dedup_scope: {config}");
    assert!(!env.repo.join("keys").exists());
    // No password source at all, and no terminal: an unencrypted repository never asks.
    let p = env.path("img.raw");
    let data = bytes(1 << 20, 4, false);
    std::fs::write(&p, &data).unwrap();
    let o = with_vars(&env, &[], &["--json", "archive", p.to_str().unwrap(), "--name", "vm"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let snap = s(&serde_json::from_slice(&o.stdout).unwrap(), "snapshot");
    // v1: the snapshot is plain JSON named by its unkeyed BLAKE3.
    let raw = std::fs::read(env.repo.join("snapshots").join(&snap)).unwrap();
    assert_eq!(blake3::hash(&raw).to_hex().as_str(), snap);
    assert_eq!(serde_json::from_slice::<Value>(&raw).unwrap()["name"], "vm");
    let o = with_vars(&env, &[], &["key", "list"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("not encrypted"), "{}", text(&o.stderr));
}

#[test]
fn dedup_scope_project_needs_encryption() {
    let env = Env::new();
    let o = env.run(&["init", "--encryption", "none", "--dedup-scope", "project"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("--dedup-scope project needs an encrypted repository"), "{}", text(&o.stderr));
    assert!(!env.repo.join("config").exists());
    let r = env.json(&["init", "--dedup-scope", "project"]);
    assert_eq!(r["dedup_scope"], "project");
    let config: Value = serde_json::from_slice(&std::fs::read(env.repo.join("config")).unwrap()).unwrap();
    assert_eq!(config["dedup_scope"], "project");
}

#[test]
fn password_sources_are_tried_in_order_first_match_wins() {
    let env = Env::init("64K");
    let right = write(&env, "right", &format!("{PASSWORD}\n"));
    let wrong = write(&env, "wrong", "not the password\n");
    let creds_right = env.path("creds-right");
    let creds_wrong = env.path("creds-wrong");
    for (dir, pw) in [(&creds_right, PASSWORD), (&creds_wrong, "nope")] {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("imgarc-password"), pw).unwrap();
    }
    let (right, wrong) = (right.to_str().unwrap(), wrong.to_str().unwrap());
    let (creds_right, creds_wrong) = (creds_right.to_str().unwrap(), creds_wrong.to_str().unwrap());
    let (cat_right, cat_wrong) = (format!("cat {right}"), format!("cat {wrong}"));
    // Source `i` (in the documented order), holding the right password or not.
    let source = |i: usize, good: bool| -> (Vec<String>, Vec<(&'static str, String)>) {
        let pick = |a: &str, b: &str| if good { a.to_string() } else { b.to_string() };
        match i {
            0 => (vec!["--password-command".into(), pick(&cat_right, &cat_wrong)], vec![]),
            1 => (vec!["--password-file".into(), pick(right, wrong)], vec![]),
            2 => (vec![], vec![("IMGARC_PASSWORD_FILE", pick(right, wrong))]),
            3 => (vec![], vec![("IMGARC_PASSWORD", pick(PASSWORD, "nope"))]),
            _ => (vec![], vec![("CREDENTIALS_DIRECTORY", pick(creds_right, creds_wrong))]),
        }
    };
    // Sources before `level` are absent; `level` holds `good`, every later one the opposite:
    // whatever `level` holds decides (exit 0 or 12).
    for level in 0..5 {
        for good in [true, false] {
            let (mut args, mut vars) = (Vec::new(), Vec::new());
            for i in level..5 {
                let (a, v) = source(i, if i == level { good } else { !good });
                args.extend(a);
                vars.extend(v);
            }
            args.push("list".into());
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let varv: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let o = with_vars(&env, &varv, &argv);
            let want = if good { 0 } else { 12 };
            assert_eq!(o.status.code(), Some(want), "source {level} good={good} {argv:?} {varv:?}: {}", text(&o.stderr));
        }
    }
}

#[test]
fn no_source_and_no_terminal_fails_at_once_naming_the_sources() {
    let env = Env::init("64K");
    let start = Instant::now();
    let o = with_vars(&env, &[], &["list"]);
    assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let err = text(&o.stderr);
    for source in ["--password-command", "--password-file", "IMGARC_PASSWORD_FILE", "IMGARC_PASSWORD", "CREDENTIALS_DIRECTORY", "terminal"]
    {
        assert!(err.contains(source), "{source} not named: {err}");
    }
    // init asks too, and fails the same way, leaving nothing behind.
    let fresh = Env::new();
    let o = with_vars(&fresh, &[], &["init"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("IMGARC_PASSWORD_FILE"), "{}", text(&o.stderr));
    assert!(!fresh.repo.join("config").exists());
    // An empty password is refused, whatever its source.
    let empty = write(&env, "empty", "\n");
    for vars in [vec![("IMGARC_PASSWORD_FILE", empty.to_str().unwrap())], vec![]] {
        let mut args = vec!["list"];
        if vars.is_empty() {
            args = vec!["--password-command", "true", "list"];
        }
        let o = with_vars(&env, &vars, &args);
        assert_eq!(o.status.code(), Some(1));
        assert!(text(&o.stderr).contains("empty password is refused"), "{}", text(&o.stderr));
    }
}

#[test]
fn a_wrong_password_exits_12_with_nothing_on_stdout() {
    let env = Env::init("64K");
    let o = with_vars(&env, &[("IMGARC_PASSWORD", "wrong horse")], &["list"]);
    assert_eq!(o.status.code(), Some(12));
    assert!(o.stdout.is_empty(), "{}", text(&o.stdout));
    let err = text(&o.stderr);
    assert!(err.contains("wrong password"), "{err}");
    assert!(!err.contains("wrong horse"), "{err}");
    let o = with_vars(&env, &[("IMGARC_PASSWORD", "wrong horse")], &["--json", "list"]);
    assert_eq!(o.status.code(), Some(12));
    let doc: Value = serde_json::from_slice(&o.stdout).expect("one JSON document on stdout");
    assert_eq!(doc["ok"], false);
    assert!(doc["error"].as_str().unwrap().contains("wrong password"), "{doc}");
    assert_eq!(doc["exit_code"], 12, "{doc}");
    assert_eq!(doc.as_object().unwrap().len(), 3, "only the error document (ok, error, exit_code): {doc}");
    // The exit code is documented.
    let help = env.ok(&["--help"]);
    assert!(help.contains("12 wrong password"), "{help}");
}

#[test]
fn the_password_command_failing_names_the_command_not_its_output() {
    let env = Env::init("64K");
    let script = write(&env, "pw.sh", "#!/bin/sh\necho xyzzy-printed-secret\nexit 3\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    let o = with_vars(&env, &[("IMGARC_PASSWORD", PASSWORD)], &["--password-command", script.to_str().unwrap(), "list"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains(script.to_str().unwrap()) && err.contains("3"), "{err}");
    assert!(!err.contains("xyzzy") && !text(&o.stdout).contains("xyzzy"), "{err}");
    // A working command: one trailing newline dropped.
    let ok = write(&env, "pw-ok.sh", &format!("#!/bin/sh\nprintf '%s\\n' '{PASSWORD}'\n"));
    std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o700)).unwrap();
    let o = with_vars(&env, &[], &["--password-command", ok.to_str().unwrap(), "list"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn keys_add_remove_passwd_round_trip() {
    let env = Env::init("64K");
    let p = env.path("img.raw");
    let data = bytes(1 << 20, 5, true);
    std::fs::write(&p, &data).unwrap();
    let snap = s(&env.archive(&p, "vm"), "snapshot");
    let first = key_list(&env, PASSWORD)[0]["id"].as_str().unwrap().to_string();

    let second_pw = "second password 42";
    let f = write(&env, "second", second_pw);
    let added = env.json(&["key", "add", "--label", "backup admin", "--new-password-file", f.to_str().unwrap()]);
    assert_eq!(added["added"]["kind"], "full");
    assert_eq!(added["added"]["label"], "backup admin");
    let second = added["added"]["id"].as_str().unwrap().to_string();
    let keys = key_list(&env, second_pw);
    assert_eq!(keys.len(), 2);
    let in_use: Vec<&str> = keys.iter().filter(|k| k["in_use"] == true).map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(in_use, [second.as_str()], "the key the password opened is marked");
    for k in &keys {
        assert_eq!(k["short_id"].as_str().unwrap(), &k["id"].as_str().unwrap()[..8]);
        assert!(k["created"].is_string() && k["hostname"].is_string(), "{k}");
    }
    let o = with_vars(&env, &[("IMGARC_PASSWORD", second_pw)], &["restore", &snap, "-o", env.path("out").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(std::fs::read(env.path("out")).unwrap() == data);

    // Removing the first key (by a short id, with the second): the first password no longer opens.
    let o = with_vars(&env, &[("IMGARC_PASSWORD", second_pw)], &["--json", "key", "remove", &first[..8]]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!opens(&env, PASSWORD), "a removed key must not open the repository");
    assert!(opens(&env, second_pw));
    // The last key cannot be removed.
    let o = with_vars(&env, &[("IMGARC_PASSWORD", second_pw)], &["key", "remove", &second]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("last key"), "{}", text(&o.stderr));

    // passwd: a new object replaces the one in use; the old password stops opening.
    let third_pw = "third password 99";
    let f3 = write(&env, "third", &format!("{third_pw}\n"));
    let o = with_vars(&env, &[("IMGARC_PASSWORD", second_pw)], &["--json", "key", "passwd", "--new-password-file", f3.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["replaced"], second.as_str());
    assert_eq!(r["key"]["label"], "backup admin", "passwd keeps the label");
    assert!(!opens(&env, second_pw));
    let keys = key_list(&env, third_pw);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], r["key"]["id"]);
    let o = with_vars(&env, &[("IMGARC_PASSWORD", third_pw)], &["restore", &snap, "-o", env.path("out2").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // A new password from nowhere (no file, no terminal) is an error, not a hang.
    let o = with_vars(&env, &[("IMGARC_PASSWORD", third_pw)], &["key", "add"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("--new-password-file"), "{}", text(&o.stderr));
}

#[test]
fn a_write_only_key_cannot_add_or_remove_keys_and_the_last_full_key_stays() {
    let env = Env::init("64K");
    let wo_pw = "write only host";
    let f = write(&env, "wo", wo_pw);
    let added = env.json(&["key", "add", "--write-only", "--label", "sync host", "--new-password-file", f.to_str().unwrap()]);
    assert_eq!(added["added"]["kind"], "write-only");
    let wo_id = added["added"]["id"].as_str().unwrap().to_string();
    let keys = key_list(&env, wo_pw);
    let mine = keys.iter().find(|k| k["in_use"] == true).unwrap();
    assert_eq!(mine["kind"], "write-only");
    let full_id = keys.iter().find(|k| k["kind"] == "full").unwrap()["id"].as_str().unwrap().to_string();
    let g = write(&env, "minted", "minted full");
    for args in [
        vec!["key", "add", "--new-password-file", g.to_str().unwrap()],
        vec!["key", "add", "--write-only", "--new-password-file", g.to_str().unwrap()],
        vec!["key", "remove", &full_id],
    ] {
        let o = with_vars(&env, &[("IMGARC_PASSWORD", wo_pw)], &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(text(&o.stderr).contains("needs a full key"), "{args:?}: {}", text(&o.stderr));
    }
    assert_eq!(key_objects(&env).len(), 2, "nothing was written or removed");
    // The only full key cannot be removed while a write-only one would remain.
    let o = env.run(&["key", "remove", &full_id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("last full key"), "{}", text(&o.stderr));
    // A write-only key may change its own password, and stays write-only.
    let h = write(&env, "wo2", "write only host 2");
    let o = with_vars(&env, &[("IMGARC_PASSWORD", wo_pw)], &["--json", "key", "passwd", "--new-password-file", h.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((r["key"]["kind"].as_str(), r["replaced"].as_str()), (Some("write-only"), Some(wo_id.as_str())));
    // The full key removes the write-only one.
    let o = env.run(&["key", "remove", r["key"]["id"].as_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!opens(&env, "write only host 2"));
}

#[test]
fn concurrent_removals_never_remove_the_last_two_keys() {
    let env = Env::init("64K");
    let other_pw = "other admin";
    let f = write(&env, "other", other_pw);
    let other = s(&env.json(&["key", "add", "--new-password-file", f.to_str().unwrap()])["added"], "id");
    let first = key_list(&env, PASSWORD).into_iter().find(|k| k["id"] != other.as_str()).unwrap()["id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        // Each admin removes the other's key at the same moment.
        let spawn = |pw: &str, victim: &str| {
            let mut c = bare_cmd();
            c.arg("--repo").arg(&env.repo).args(["key", "remove", victim]).env("IMGARC_CACHE_DIR", &env.cache).env("IMGARC_PASSWORD", pw);
            c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
        };
        let (a, b) = (spawn(PASSWORD, &other), spawn(other_pw, &first));
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let left = key_objects(&env).len();
        assert!(left >= 1, "both removals went through: {} / {}", text(&a.stderr), text(&b.stderr));
        assert!(opens(&env, PASSWORD) || opens(&env, other_pw));
        if left == 2 {
            assert!(!a.status.success() && !b.status.success());
            continue;
        }
        return;
    }
}

#[test]
fn no_password_appears_in_any_output_or_object() {
    let env = Env::new();
    let new_pw = "brand new secret 5150";
    let f = write(&env, "new", new_pw);
    let p = env.path("img.raw");
    std::fs::write(&p, bytes(1 << 20, 6, false)).unwrap();
    let mut outputs = Vec::new();
    for args in [
        vec!["--json", "init"],
        vec!["init"],
        vec!["--json", "archive", p.to_str().unwrap(), "--name", "vm"],
        vec!["list"],
        vec!["--json", "key", "list"],
        vec!["key", "list"],
        vec!["--json", "key", "add", "--new-password-file", f.to_str().unwrap()],
        vec!["--json", "check"],
    ] {
        outputs.push(env.run(&args));
    }
    outputs.push(with_vars(&env, &[("IMGARC_PASSWORD", &format!("{PASSWORD}x"))], &["--json", "list"]));
    outputs.push(with_vars(&env, &[("IMGARC_PASSWORD", new_pw)], &["--json", "key", "passwd", "--new-password-file", f.to_str().unwrap()]));
    for o in &outputs {
        for stream in [&o.stdout, &o.stderr] {
            let t = text(stream);
            assert!(!t.contains(PASSWORD) && !t.contains(new_pw), "a password in the output: {t}");
        }
    }
    let mut files = Vec::new();
    collect(&env.repo, &mut files);
    for file in files {
        let b = std::fs::read(&file).unwrap();
        for pw in [PASSWORD, new_pw] {
            assert!(!b.windows(pw.len()).any(|w| w == pw.as_bytes()), "{} holds a password", file.display());
        }
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            collect(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

#[test]
fn new_keys_record_the_default_argon2id_cost() {
    // Without the test suite's cheap-KDF switch: what a user's keys get.
    let env = Env::new();
    let mut c = env.cmd(&["init"]);
    c.env_remove("IMGARC_TEST_KDF");
    let o = run_within(c, Duration::from_secs(60));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let keys = key_objects(&env);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kdf"], "argon2id");
    assert_eq!(keys[0]["kdf_params"], serde_json::json!({"m_kib": 65536, "t": 3, "p": 1}));
    assert!(opens(&env, PASSWORD));
    // The suite's own keys are cheap (IMGARC_TEST_KDF=fast, a test-hooks build only).
    let fast = Env::init("64K");
    assert_eq!(key_objects(&fast)[0]["kdf_params"]["m_kib"], 1024);
}

#[test]
fn demo_never_prompts_and_keeps_its_password_in_a_private_file() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("demo");
    let mut c = bare_cmd();
    c.args(["demo", "--nights", "2", "--size", "2M", "--dir", work.to_str().unwrap()]).env("IMGARC_CACHE_DIR", dir.path().join("c"));
    let o = run_within(c, Duration::from_secs(120));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let pw_file = work.join("password");
    assert!(out.contains("encrypted with aes-256-gcm") && out.contains(pw_file.to_str().unwrap()), "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&pw_file).unwrap().permissions().mode() & 0o777, 0o600);
    let password = std::fs::read_to_string(&pw_file).unwrap();
    assert!(!out.contains(password.trim()), "the password itself is not printed");
    // The file opens the demo's repository.
    let mut c = bare_cmd();
    c.arg("--repo").arg(work.join("repo")).args(["--password-file", pw_file.to_str().unwrap(), "list"]);
    c.env("IMGARC_CACHE_DIR", dir.path().join("c2"));
    let o = run_within(c, Duration::from_secs(60));
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// Runs `imgarc ARGS` on a pseudo-terminal (util-linux `script`), typing `lines`
/// once the prompt is up; returns the exit code and everything the terminal showed.
fn on_a_terminal(env: &Env, args: &str, lines: &[&str]) -> Option<(i32, String)> {
    if Command::new("script").arg("--version").output().is_err() {
        skip_or_fail_in_ci("util-linux `script` (a pseudo-terminal for the prompt tests) is not installed");
        return None;
    }
    let bin = env!("CARGO_BIN_EXE_imgarc");
    // The same environment as bare_cmd gives; script puts imgarc in a new session on its terminal.
    let mut s = Command::new("script");
    s.args(["-qec", &format!("{bin} --repo {} {args}", env.repo.display()), "/dev/null"]);
    s.env("IMGARC_CACHE_DIR", &env.cache).env("IMGARC_TEST_KDF", "fast");
    for var in ["IMGARC_PASSWORD", "IMGARC_PASSWORD_FILE", "CREDENTIALS_DIRECTORY", "IMGARC_REPO"] {
        s.env_remove(var);
    }
    let mut child = s.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write;
    for line in lines {
        std::thread::sleep(Duration::from_millis(700));
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(700));
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    Some((o.status.code().unwrap_or(-1), format!("{}{}", text(&o.stdout), text(&o.stderr))))
}

#[test]
fn a_terminal_prompt_hides_the_password_and_init_asks_twice() {
    let env = Env::new();
    let Some((code, shown)) = on_a_terminal(&env, "init", &["typed pw 1", "typed pw 2"]) else { return };
    assert_eq!(code, 1, "{shown}");
    assert!(shown.contains("the two passwords differ"), "{shown}");
    assert!(!env.repo.join("config").exists());
    let (code, shown) = on_a_terminal(&env, "init", &["typed pw 1", "typed pw 1"]).unwrap();
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("Enter repository password again") && shown.contains("encrypted with"), "{shown}");
    assert!(!shown.contains("typed pw"), "the prompt echoed the password: {shown}");
    let (code, shown) = on_a_terminal(&env, "list", &["typed pw 1"]).unwrap();
    assert_eq!(code, 0, "{shown}");
    assert!(!shown.contains("again"), "opening asks once: {shown}");
    let (code, _) = on_a_terminal(&env, "list", &["typed pw 2"]).unwrap();
    assert_eq!(code, 12);
}

//! Test harness: a temporary repository and cache, and a runner for the real
//! `imgarc` binary, which every test runs with the repository password
//! [`PASSWORD`] (so the whole suite runs on encrypted repositories), cheap
//! Argon2id for the keys it makes (`IMGARC_TEST_KDF=fast`, a `test-hooks`
//! switch), and no controlling terminal (a prompt fails, never hangs); its submodules are the helpers of the qcow2, OpenStack (Glance,
//! Keystone, Cinder) and remote-backend suites.

#[cfg(feature = "remote-tests")]
pub mod backend_common;
#[cfg(feature = "openstack-tests")]
pub mod cinder;
#[cfg(feature = "openstack-tests")]
pub mod openstack;
pub mod prom;
pub mod qcow2_util;
pub mod tls;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The password every CLI test passes (`IMGARC_PASSWORD`).
pub const PASSWORD: &str = "imgarc test password 7f3c";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub cache: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let cache = dir.path().join("cache");
        Env { dir, repo, cache }
    }

    /// A new encrypted repository (the default), password [`PASSWORD`].
    pub fn init(chunk: &str) -> Env {
        let env = Env::new();
        env.ok(&["init", "--chunk-size", chunk]);
        env
    }

    /// A new unencrypted repository (`--encryption none`): for tests that read
    /// or forge its objects' v1 bytes directly.
    pub fn init_unencrypted(chunk: &str) -> Env {
        let env = Env::new();
        env.ok(&["init", "--chunk-size", chunk, "--encryption", "none"]);
        env
    }

    /// The repository opened in-process, with [`PASSWORD`] if it is encrypted.
    pub fn open_repo(&self) -> imgarc::repository::Repository {
        let backend = imgarc::backend::open(self.repo.to_str().unwrap(), &Default::default()).unwrap();
        imgarc::repository::Repository::open_with(backend, &imgarc::secret::Secret::new(PASSWORD)).unwrap()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = bare_cmd();
        c.arg("--repo").arg(&self.repo).args(args).env("IMGARC_CACHE_DIR", &self.cache).env_remove("IMGARC_REPO");
        c.env("IMGARC_PASSWORD", PASSWORD);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "imgarc {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs with --json and parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    pub fn archive(&self, path: &Path, name: &str) -> Value {
        self.json(&["archive", path.to_str().unwrap(), "--name", name])
    }

    /// Restores `snap` to a file and returns its bytes.
    pub fn restore_bytes(&self, snap: &str) -> Vec<u8> {
        let out = self.path(&format!("restored-{}", &snap[..snap.len().min(12)]));
        self.ok(&["restore", snap, "-o", out.to_str().unwrap()]);
        std::fs::read(out).unwrap()
    }

    pub fn packs(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        walk(&self.repo.join("data"), &mut v);
        v.sort();
        v
    }
}

/// The `imgarc` binary with no password source from the caller's environment,
/// cheap Argon2id for new keys, and no controlling terminal: it runs in a new
/// session (setsid), so opening `/dev/tty` fails and a prompt cannot hang a test.
pub fn bare_cmd() -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(env!("CARGO_BIN_EXE_imgarc"));
    for var in ["IMGARC_PASSWORD", "IMGARC_PASSWORD_FILE", "CREDENTIALS_DIRECTORY"] {
        c.env_remove(var);
    }
    c.env("IMGARC_TEST_KDF", "fast");
    // SAFETY: setsid(2) is async-signal-safe, as pre_exec requires.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    c
}

pub fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
}

/// Deterministic bytes: incompressible when `text` is false.
pub fn bytes(n: usize, seed: u64, text: bool) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if text {
            v.extend_from_slice([&b"lorem "[..], b"ipsum ", b"dolor ", b"sit\n"][(x % 4) as usize]);
        } else {
            v.extend_from_slice(&x.to_le_bytes());
        }
    }
    v.truncate(n);
    v
}

pub fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("field {k} missing in {v}"))
}

pub fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_else(|| panic!("field {k} missing in {v}")).to_string()
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A test whose input this machine lacks says so and is skipped, never passes silently. In CI
/// (`CI` set, as `.ci/run` does), where every such input is installed, a missing one fails the test.
pub fn skip_or_fail_in_ci(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "{why}: required in CI (.ci/run installs it)");
    eprintln!("skipped: {why}");
}

//! Demo: the whole job on an embedded default — a synthetic VM disk series
//! archived night by night into a local repository, the last night restored
//! and verified, retention and prune applied, and the capacity report
//! computed. Everything (repository, index cache, images) stays inside the
//! demo's directory, which is removed afterwards unless the caller named it.
//! The repository is encrypted, as `init` makes them by default, under a random
//! password the demo writes (0600) into its directory: it never prompts.

use crate::archive::{archive, ArchiveOutcome, ArchiveRequest};
use crate::crypto::keyfile::{KdfParams, PasswordSource};
use crate::crypto::Cipher;
use crate::forget::{forget, ForgetOptions, GroupBy};
use crate::index::Index;
use crate::progress::SharedProgress;
use crate::prune::{prune, PruneOptions, PruneReport};
use crate::report;
use crate::repository::{config::Config, snapshot::Source, NewKey, Repository, CONFIG_KEY};
use crate::restore::{restore, RestoreOutcome, Target};
use crate::retention::Policy;
use crate::secret::Secret;
use crate::synthetic::SyntheticDisk;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The `imgarc demo` flags (each doc line is its `--help`).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct DemoOptions {
    /// Work directory (default: a new temporary directory, removed afterwards)
    #[cfg_attr(feature = "clap", arg(long))]
    pub dir: Option<PathBuf>,
    /// Number of nights in the synthetic series
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 5))]
    pub nights: u32,
    /// Virtual disk size of the synthetic VM (K=1024, M=2^20, G=2^30)
    #[cfg_attr(feature = "clap", arg(long, default_value = "256M"))]
    pub size: String,
}

/// Snapshots the demo's retention step keeps (`forget --keep-last 3`).
pub const DEMO_KEEP_LAST: i64 = 3;

#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// One archive per night, in order.
    pub nights: Vec<ArchiveOutcome>,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    /// `logical_bytes / stored_bytes`.
    pub ratio: f64,
    /// The restore of the last night.
    pub restore: RestoreOutcome,
    pub restored_identical: bool,
    pub dir: String,
    /// The repository's AEAD (`none` for a demo directory made before the demo encrypted).
    pub encryption: String,
    /// The 0600 file holding the repository's random password.
    pub password_file: Option<String>,
    /// Snapshots removed by the retention step.
    pub forgotten: u64,
    /// Prune's mark phase, then its sweep.
    pub prune: [PruneReport; 2],
    pub report: report::Totals,
    /// The synthetic disk's size in bytes.
    #[serde(skip)]
    pub disk_size: u64,
    /// The HTML capacity report, written only into a directory the caller named.
    #[serde(skip)]
    pub html_report: Option<PathBuf>,
}

/// Runs the demo. `bar(what, total)` makes the progress handle of each archive
/// and of the restore (dropped when that step ends).
pub fn demo(opts: &DemoOptions, bar: &dyn Fn(&str, u64) -> SharedProgress) -> Result<DemoReport> {
    let size = crate::util::parse_size(&opts.size)?;
    if !(1 << 20..=64 << 30).contains(&size) || opts.nights == 0 || opts.nights > 60 {
        bail!("demo wants --size between 1M and 64G and --nights between 1 and 60");
    }
    let tmp;
    let dir = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    let repo_dir = dir.join("repo");
    let backend: Arc<dyn crate::backend::Backend> = Arc::new(crate::backend::local::LocalBackend::new(&repo_dir));
    let password_file = dir.join(DEMO_PASSWORD_FILE);
    let repo = match backend.size(CONFIG_KEY) {
        Ok(_) => Repository::open_with(backend, &DemoPassword(&password_file))?,
        Err(e) if e.is_not_found() => {
            let password = new_password_file(&password_file)?;
            let config = Config::new(crate::repository::config::DEFAULT_AVG_CHUNK, 3)?.with_encryption(Some(Cipher::Aes256Gcm));
            Repository::init_encrypted(backend, config, &NewKey { password: &password, kdf: KdfParams::for_new_keys(), label: "demo" })?
        }
        Err(e) => return Err(e).context("cannot reach the demo repository"),
    };
    // The index cache lives beside the repository (as `IMGARC_CACHE_DIR=DIR/cache`
    // would place it), so the demo leaves nothing behind.
    let repo_id = repo.config().id.clone();
    let cache = dir.join("cache").join(&repo_id).join("index.sqlite");
    let mut index = Index::open_at(&cache, &repo_id)?;
    index.sync(&repo)?;
    let disk = SyntheticDisk::new(size, 42);
    let mut nights = Vec::new();
    let mut last_path = PathBuf::new();
    let (mut logical, mut added) = (0u64, 0u64);
    for n in 0..opts.nights {
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
            project: None,
        };
        let r = archive(&repo, &mut index, Box::new(file), req, &bar(&format!("night {n:02}"), size))?;
        logical += r.logical_bytes;
        added += r.stored_bytes_added;
        nights.push(r);
        last_path = path;
    }
    let last = nights.last().expect("at least one night");
    let out_path = dir.join("restored.raw");
    let id = crate::ids::Id::from_hex(&last.snapshot).context("snapshot id")?;
    let snap = index.snapshot(&id)?.context("snapshot in index")?;
    let rr = restore(&repo, &index, &snap, Target::File(out_path.clone()), &Default::default(), &bar("restore", size))?;
    let identical = files_equal(&last_path, &out_path)?;
    if !identical {
        bail!("restored image differs from {}", last_path.display());
    }
    let ratio = logical as f64 / added.max(1) as f64;

    // Retention: keep the last three nights, then reclaim the rest in prune's two phases
    // (no grace period: nothing else uses the demo's repository).
    let policy = Policy { last: Some(DEMO_KEEP_LAST), ..Default::default() };
    let select = crate::select::SnapshotSelector { name: Some("demo-vm".into()), ..Default::default() };
    let forgotten = forget(&repo, &mut index, &ForgetOptions { policy, group_by: GroupBy::None, select, ..Default::default() })?.removed;
    let opts_prune = PruneOptions { dry_run: false, max_repack_ratio: 0.5, grace: chrono::Duration::zero(), now: chrono::Utc::now() };
    let marked = prune(&repo, &mut index, &opts_prune)?;
    let swept = prune(&repo, &mut index, &PruneOptions { now: chrono::Utc::now(), ..opts_prune })?;
    let ropts = report::Options { by: Some(report::GroupBy::Name), project: None, capacity: None, scan_limit: report::DEFAULT_SCAN_LIMIT };
    let capacity = report::compute(&repo, &index, &ropts)?;
    let mut html_report = None;
    if opts.dir.is_some() {
        let page = dir.join("report.html");
        crate::util::write_public_file(&page, report::render::render(&capacity, report::render::Format::Html).as_bytes())?;
        html_report = Some(page);
    }
    Ok(DemoReport {
        nights,
        logical_bytes: logical,
        stored_bytes: added,
        ratio,
        restore: rr,
        restored_identical: identical,
        dir: dir.display().to_string(),
        encryption: repo.config().encryption.clone(),
        password_file: repo.keys().map(|_| password_file.display().to_string()),
        forgotten,
        prune: [marked, swept],
        report: capacity.totals,
        disk_size: size,
        html_report,
    })
}

/// The demo repository's password file, in the demo's directory.
pub const DEMO_PASSWORD_FILE: &str = "password";

/// The password of a demo directory made earlier, read from its file.
struct DemoPassword<'a>(&'a Path);

impl PasswordSource for DemoPassword<'_> {
    fn password(&self) -> Result<Secret> {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(self.0).with_context(|| format!("the demo repository's password file {}", self.0.display()))?,
        );
        Ok(Secret::new(text.trim_end_matches('\n')))
    }
}

/// A random password, written to a new file only its owner can read.
fn new_password_file(path: &Path) -> Result<Secret> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let password = Secret::new(hex::encode(rand::random::<[u8; 24]>()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create the demo password file {}", path.display()))?;
    f.write_all(format!("{}\n", password.expose()).as_bytes())?;
    f.sync_all()?;
    Ok(password)
}

fn files_equal(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = crate::source::read_full(&mut fa, &mut ba)?;
        let nb = crate::source::read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let p = std::env::temp_dir().join(format!("imgarc-demo-{}", hex::encode(rand::random::<[u8; 6]>())));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole demo in a named directory: byte-identical restore, retention
    /// applied, and the index cache inside the directory (no environment used).
    #[test]
    fn demo_keeps_everything_in_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("demo");
        let opts = DemoOptions { dir: Some(work.clone()), nights: 4, size: "2M".into() };
        let r = demo(&opts, &|_, _| crate::progress::none()).unwrap();
        assert!(r.restored_identical);
        assert_eq!(r.nights.len(), 4);
        assert_eq!(r.forgotten, 4 - DEMO_KEEP_LAST as u64);
        assert_eq!(r.report.snapshots, DEMO_KEEP_LAST as u64);
        let repo_id = std::fs::read_dir(work.join("cache")).unwrap().next().unwrap().unwrap().file_name();
        assert!(work.join("cache").join(repo_id).join("index.sqlite").exists());
        assert_eq!(r.html_report.as_deref(), Some(work.join("report.html").as_path()));
        assert_eq!(r.encryption, "aes-256-gcm");
        let pw = work.join(DEMO_PASSWORD_FILE);
        assert_eq!(r.password_file.as_deref(), Some(pw.to_str().unwrap()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&pw).unwrap().permissions().mode() & 0o777, 0o600);
        // The same directory again reopens its repository with the password file.
        let again = demo(&DemoOptions { nights: 1, ..opts.clone() }, &|_, _| crate::progress::none()).unwrap();
        assert!(again.restored_identical);
        assert!(demo(&DemoOptions { nights: 0, ..opts }, &|_, _| crate::progress::none()).is_err());
    }
}

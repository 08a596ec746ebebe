//! Lock objects: `locks/<random id>`, JSON with host, process identity, time and expiry.
//!
//! Archives take shared locks (many may run at once); `check` and `index
//! rebuild` take an exclusive one. `sync` and `prune` take *singleton* locks:
//! shared with archives, but only one holder per purpose at a time (two syncs
//! or two prunes never overlap). A lock whose expiry has passed, or whose
//! process is certainly gone (same kernel boot and PID namespace, and that
//! PID is not the process that wrote it), is stale and ignored; `imgarc
//! unlock` deletes stale locks. A hostname and a PID alone prove nothing:
//! containers share hostnames and reuse PIDs in their own namespaces.
//!
//! A holder refreshes its lock (writes a new one, then deletes the old) well
//! inside the expiry. Every lock object of one hold carries the same `lease`.
//! Where the credentials may not delete (a policy denying `s3:DeleteObject`),
//! the superseded objects stay, and releasing (drop, signal, withdrawal,
//! `unlock`) writes a *release record* instead: a lock object whose `releases`
//! names the lease; readers then take every lock of that lease as gone, whatever
//! their clock says. A DELETE is always tried first; its refusal is a debug
//! event, not a warning. `prune`/`forget`/`unlock` with credentials that may
//! delete remove released locks and their records (`tidy_locks`).
//!
//! If refreshing keeps failing, the lock is *lost* once
//! less than one refresh interval of its life is left: the holder's
//! repository handle then refuses every further write (see
//! `Repository::hold_lock`), so nothing is written that a prune, no longer
//! seeing the lock, might undercut. Locks are advisory: safety against
//! concurrent prune rests on the two-phase design, not on locks alone.

use super::file::{Naming, RepoFile};
use super::Repository;
use crate::shard::Shard;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const LOCK_TTL_SECS: i64 = 30 * 60;
/// Largest lock object a reader accepts (format-spec §1); real ones are ~250
/// bytes. A larger one is listed as an unreadable (stale) lock, never read.
pub const MAX_LOCK_BYTES: u64 = 64 << 10;
/// Holders refresh their lock this often, well inside `LOCK_TTL_SECS`.
const REFRESH_SECS: u64 = 5 * 60;

/// How long a lock lives, and how often its holder refreshes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTiming {
    pub ttl: Duration,
    pub refresh: Duration,
}

impl Default for LockTiming {
    fn default() -> Self {
        LockTiming { ttl: Duration::from_secs(LOCK_TTL_SECS as u64), refresh: Duration::from_secs(REFRESH_SECS) }
    }
}

impl LockTiming {
    /// The defaults, or `IMGARC_LOCK_TTL_SECS` / `IMGARC_LOCK_REFRESH_SECS`
    /// (for tests: a lock lost within seconds instead of half an hour).
    pub fn from_env() -> Result<LockTiming> {
        let var = |name: &str, default: Duration| -> Result<Duration> {
            match std::env::var(name) {
                Err(_) => Ok(default),
                Ok(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
                    _ => bail!("{name}={v:?}: expected a whole number of seconds above 0"),
                },
            }
        };
        let d = LockTiming::default();
        let timing = LockTiming { ttl: var("IMGARC_LOCK_TTL_SECS", d.ttl)?, refresh: var("IMGARC_LOCK_REFRESH_SECS", d.refresh)? };
        if timing.refresh >= timing.ttl {
            bail!("IMGARC_LOCK_REFRESH_SECS must be less than IMGARC_LOCK_TTL_SECS ({timing:?})");
        }
        Ok(timing)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub hostname: String,
    pub pid: u32,
    pub time: String,
    pub expires: String,
    pub exclusive: bool,
    pub purpose: String,
    /// RFC 3339: when the holder first took the lock (`time` moves with every
    /// refresh). Prune compares it with its marks (older locks may lack it).
    #[serde(default)]
    pub since: Option<String>,
    /// Who holds it, precisely enough to tell that it is gone (older locks lack it).
    #[serde(flatten)]
    pub process: Option<ProcessIdentity>,
    /// Random, the same in every lock object one hold writes (its refreshes too), so that one
    /// release record releases them all. Older locks lack it: their name is their lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// Only in a release record, which is no lock: every lock object of this lease is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub releases: Option<String>,
    /// A singleton lock of one shard of its purpose's work (`sync --shard K/N`): it excludes
    /// only the holders whose shard overlaps ([`Shard::overlaps`]). Absent: the whole work
    /// (every lock of older writers). Older readers compare `purpose` alone, so to them a
    /// shard's lock excludes every holder of the purpose: stricter, never laxer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

/// A process, told apart from every other: the kernel boot, the PID
/// namespace its PID means something in, and its start time (a reused PID
/// starts later). Linux only; elsewhere locks expire by time alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// The target of `/proc/self/ns/pid`, e.g. `pid:[4026531836]`.
    pub pid_namespace: String,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot when the process started.
    pub start_ticks: u64,
}

impl ProcessIdentity {
    /// This process, read once.
    pub fn current() -> Option<&'static ProcessIdentity> {
        static CURRENT: std::sync::OnceLock<Option<ProcessIdentity>> = std::sync::OnceLock::new();
        CURRENT
            .get_or_init(|| {
                // `/proc` must number processes as we do (it may be mounted from another PID namespace).
                let me = std::process::id().to_string();
                if std::fs::read_link("/proc/self").ok()?.as_os_str() != me.as_str() {
                    return None;
                }
                Some(ProcessIdentity {
                    boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?.trim().to_string(),
                    pid_namespace: std::fs::read_link("/proc/self/ns/pid").ok()?.to_string_lossy().into_owned(),
                    start_ticks: start_ticks(std::process::id()).ok()??,
                })
            })
            .as_ref()
    }
}

/// A process's start time from `/proc/<pid>/stat`: `Ok(None)` when no such
/// process exists (here), `Err` when that cannot be told.
fn start_ticks(pid: u32) -> std::io::Result<Option<u64>> {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // `pid (comm) state ...`: comm may hold spaces and parentheses, so count from the last `)`.
    let after_comm = stat.rfind(')').map(|i| &stat[i + 1..]).ok_or_else(|| std::io::Error::other("unreadable stat"))?;
    // Field 3 (state) is the first after comm; field 22 is the 20th after it.
    let ticks = after_comm.split_whitespace().nth(19).and_then(|f| f.parse().ok());
    ticks.map(Some).ok_or_else(|| std::io::Error::other("unreadable stat"))
}

impl LockInfo {
    /// The lease a lock stored under `key` belongs to: its `lease`, else (older imgarc, or an
    /// unreadable lock) its own name.
    pub fn lease_of<'a>(&'a self, key: &'a str) -> &'a str {
        self.lease.as_deref().unwrap_or_else(|| LockInfo::name_of(key).unwrap_or(key))
    }

    /// A release record of `lease`, written by this process. Its expiry is its own time, so an
    /// older imgarc, which knows nothing of releases, takes it for a stale lock and ignores it.
    fn release_record(lease: &str, purpose: &str) -> LockInfo {
        let now = crate::util::now_rfc3339();
        LockInfo {
            hostname: crate::util::hostname(),
            pid: std::process::id(),
            time: now.clone(),
            expires: now,
            exclusive: false,
            purpose: purpose.to_string(),
            since: None,
            process: ProcessIdentity::current().cloned(),
            lease: None,
            releases: Some(lease.to_string()),
            shard: None,
        }
    }

    /// What holds it, for a person: its purpose, and its shard if it has one (`sync --shard 2/3`).
    pub fn what(&self) -> String {
        match self.shard {
            Some(s) => format!("{} --shard {s}", self.purpose),
            None => self.purpose.clone(),
        }
    }

    /// When the holder started: `since`, else (older imgarc) the last refresh.
    pub fn started(&self) -> &str {
        self.since.as_deref().unwrap_or(&self.time)
    }

    pub fn is_stale(&self) -> bool {
        let expired = crate::util::parse_rfc3339(&self.expires).is_none_or(|t| t < chrono::Utc::now());
        expired || self.holder_is_certainly_gone()
    }

    /// True only when this host can prove the holder is gone: same kernel
    /// boot and PID namespace (so its PID means the same here), and that PID
    /// is free or belongs to a process that started at another time. Any
    /// doubt (another host or container, older lock, unreadable `/proc`)
    /// leaves it to the expiry time.
    fn holder_is_certainly_gone(&self) -> bool {
        let (Some(theirs), Some(mine)) = (&self.process, ProcessIdentity::current()) else {
            return false;
        };
        if theirs.boot_id != mine.boot_id || theirs.pid_namespace != mine.pid_namespace {
            return false;
        }
        match start_ticks(self.pid) {
            Ok(None) => true,
            Ok(Some(ticks)) => ticks != theirs.start_ticks,
            Err(_) => false,
        }
    }
}

/// What the holder's refresher and its writers share: until when the lock in
/// the repository is sure to be live, and why it was lost, once it is.
#[derive(Debug)]
struct LockState {
    purpose: String,
    /// Monotonic time at which the current lock object expires, counted from
    /// before it was written (so never later than the expiry it records).
    expires: Mutex<Instant>,
    lost: Mutex<Option<String>>,
    refresh: Duration,
}

impl LockState {
    fn ensure_held(&self) -> Result<()> {
        let mut lost = self.lost.lock().expect("lock state mutex");
        // The refresher may itself be stuck in a write that never returns: the clock decides too.
        if lost.is_none() && Instant::now() + self.refresh >= *self.expires.lock().expect("lock state mutex") {
            *lost = Some("not refreshed in time".to_string());
        }
        match &*lost {
            // Lost for good: a refresh that succeeds later does not undo what writers were told.
            Some(why) => bail!("the {} lock on the repository was lost ({why}); stopped before writing more", self.purpose),
            None => Ok(()),
        }
    }

    fn is_lost(&self) -> bool {
        self.lost.lock().expect("lock state mutex").is_some()
    }
}

/// A handle on a held lock's liveness, for the code that writes under it.
#[derive(Debug, Clone)]
pub struct LockWatch(Arc<LockState>);

impl LockWatch {
    /// An error once the lock is lost or about to expire unrefreshed: the caller must stop writing.
    pub fn ensure_held(&self) -> Result<()> {
        self.0.ensure_held()
    }
}

impl RepoFile for LockInfo {
    const PREFIX: &'static str = "locks/";
    const KIND: &'static str = "lock";
    const MAX_BYTES: u64 = MAX_LOCK_BYTES;
    const NAMING: Naming = Naming::Random;
    /// A lock is what writes are checked against; writing or removing one never waits on another.
    const NEEDS_LOCK: bool = false;

    fn encode(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec_pretty(self)?)
    }
    fn decode(bytes: &[u8], _: &super::pack::BlobLimits) -> Result<Self> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// A held lock; refreshed in the background, removed (or released) when dropped.
#[derive(Debug)]
pub struct Lock {
    repo: Repository,
    holding: Arc<Mutex<Holding>>,
    state: Arc<LockState>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

/// What releasing a held lock needs, wherever it happens (drop, signal, withdrawal).
#[derive(Debug, Clone)]
struct Holding {
    /// The current lock object.
    key: String,
    lease: String,
    purpose: String,
    /// The shard a singleton lock is of (written into each refresh too).
    shard: Option<Shard>,
    /// Earlier lock objects of the lease may still be in the repository (a refresh could not
    /// delete its predecessor), so deleting the current one does not release the lease.
    leftovers: bool,
}

/// Every lock this process holds (its repository and holding), so that a process about to
/// exit on a signal, without unwinding, can still release them ([`release_held_locks`]).
static HELD: Mutex<Vec<(Repository, Arc<Mutex<Holding>>)>> = Mutex::new(Vec::new());

/// Releases every lock this process holds: for a process that exits on SIGINT/SIGTERM
/// without dropping them. Best effort: a lock that can be neither deleted nor released is
/// left to go stale, at once on this host, else when it expires.
pub fn release_held_locks() {
    let held: Vec<_> = HELD.lock().map(|h| h.clone()).unwrap_or_default();
    for (repo, holding) in held {
        let holding = holding.lock().map(|h| h.clone());
        if let Ok(holding) = holding {
            release(&repo, &holding);
        }
    }
}

/// How a lock object went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockRemoval {
    Deleted,
    /// The credentials may not delete: a release record releases its lease instead.
    Released,
}

/// Deletes the holder's lock object, or, where that is refused or earlier objects of the
/// lease remain, writes a release record for the lease. Never fails: what cannot be released
/// only expires.
fn release(repo: &Repository, holding: &Holding) {
    match repo.delete_lock(&holding.key) {
        Ok(()) if !holding.leftovers => return,
        Ok(()) => {}
        Err(e) if crate::backend::is_permission_denied(&e) => {
            tracing::debug!(lock = %holding.key, "may not delete the lock; releasing it with a release record: {e:#}");
        }
        Err(e) => tracing::debug!(lock = %holding.key, "cannot delete the lock; releasing it with a release record: {e:#}"),
    }
    if let Err(e) = repo.save(&LockInfo::release_record(&holding.lease, &holding.purpose)) {
        tracing::warn!("cannot remove or release lock {} (it goes stale by itself): {e:#}", holding.key);
    }
}

/// Writes a new lock object; returns its key and the monotonic instant it expires.
fn write_lock(
    repo: &Repository,
    exclusive: bool,
    (purpose, shard): (&str, Option<Shard>),
    since: &str,
    lease: &str,
    timing: LockTiming,
) -> Result<(String, Instant)> {
    let written = Instant::now();
    let now = chrono::Utc::now();
    let info = LockInfo {
        hostname: crate::util::hostname(),
        pid: std::process::id(),
        time: crate::util::now_rfc3339(),
        expires: (now + chrono::Duration::from_std(timing.ttl)?).to_rfc3339(),
        exclusive,
        purpose: purpose.to_string(),
        since: Some(since.to_string()),
        process: ProcessIdentity::current().cloned(),
        lease: Some(lease.to_string()),
        releases: None,
        shard,
    };
    let (key, _) = repo.save(&info)?;
    Ok((key, written + timing.ttl))
}

/// A live lock of another process stands in the way: the lock could not be
/// acquired (the binary exits 11 on it, restic's code). Not a lock lost while held.
#[derive(Debug, thiserror::Error)]
#[error(
    "repository is locked by {} on {} (pid {}) since {}{}; if that process is gone, run `imgarc unlock` (lock {key})",
    holder.what(),
    holder.hostname,
    holder.pid,
    holder.time,
    if holder.exclusive { ", exclusively" } else { "" }
)]
pub struct LockConflict {
    /// The key of the lock object that stands in the way.
    pub key: String,
    pub holder: LockInfo,
}

fn conflict(key: &str, info: &LockInfo) -> anyhow::Error {
    LockConflict { key: key.to_string(), holder: info.clone() }.into()
}

impl Repository {
    /// Takes a shared lock (archive, forget) or an exclusive one (check, index rebuild).
    pub fn acquire_lock(&self, exclusive: bool, purpose: &str) -> Result<Lock> {
        Lock::acquire_timed(self, exclusive, purpose, LockTiming::from_env()?)
    }

    /// [`Repository::acquire_lock`] with a given ttl and refresh interval (tests).
    pub fn acquire_lock_timed(&self, exclusive: bool, purpose: &str, timing: LockTiming) -> Result<Lock> {
        Lock::acquire_timed(self, exclusive, purpose, timing)
    }

    /// A shared lock of which only one may exist per `purpose` (see [`Lock::acquire_singleton`]).
    pub fn acquire_singleton_lock(&self, purpose: &str) -> Result<Lock> {
        Lock::acquire_singleton(self, purpose, None)
    }

    /// [`Repository::acquire_singleton_lock`] for one shard of the purpose's work (`None`:
    /// all of it): it excludes only the holders of overlapping shards ([`Shard::overlaps`]).
    pub fn acquire_shard_lock(&self, purpose: &str, shard: Option<Shard>) -> Result<Lock> {
        Lock::acquire_singleton(self, purpose, shard)
    }

    /// Every lock in the repository, by key. An oversized or unreadable lock is
    /// listed as unreadable (hence stale, so `unlock` removes it), never read.
    pub fn list_locks(&self) -> Result<Vec<(String, LockInfo)>> {
        list(self)
    }

    /// The leases of every live hold: the [`Repository::list_locks`] locks that are not stale.
    pub fn live_leases(&self) -> Result<HashSet<String>> {
        Ok(list(self)?.into_iter().filter(|(_, i)| !i.is_stale()).map(|(k, i)| i.lease_of(&k).to_string()).collect())
    }

    /// Deletes a lock object; a key outside the grammar is refused.
    pub fn delete_lock(&self, key: &str) -> Result<()> {
        self.delete::<LockInfo>(key)
    }

    /// Removes the lock `info` stored under `key` (`unlock`): deletes it, or, where these
    /// credentials may not delete, writes a release record for its lease.
    pub fn remove_lock(&self, key: &str, info: &LockInfo) -> Result<LockRemoval> {
        match self.delete_lock(key) {
            Ok(()) => Ok(LockRemoval::Deleted),
            Err(e) if crate::backend::is_permission_denied(&e) => {
                tracing::debug!(lock = %key, "may not delete the lock; releasing it with a release record: {e:#}");
                self.save(&LockInfo::release_record(info.lease_of(key), &info.purpose))
                    .with_context(|| format!("cannot release lock {key}"))?;
                Ok(LockRemoval::Released)
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes the lock objects readers no longer count: every lock of a released lease, then
    /// its release record, and locks that expired more than [`LOCK_TTL_SECS`] ago (a holder
    /// that could neither delete nor release). Returns how many it deleted; stops quietly at
    /// the first refused DELETE.
    pub(crate) fn tidy_locks(&self) -> Result<usize> {
        let all = list_all(self)?;
        let released: HashSet<&str> = all.iter().filter_map(|(_, i)| i.releases.as_deref()).collect();
        let long_ago = chrono::Utc::now() - chrono::Duration::seconds(LOCK_TTL_SECS);
        let mut kept_leases: HashSet<&str> = HashSet::new();
        let mut deleted = 0;
        let mut delete = |key: &str| -> Result<bool> {
            match self.delete_lock(key) {
                Ok(()) => {
                    deleted += 1;
                    Ok(true)
                }
                Err(e) if crate::backend::is_permission_denied(&e) => {
                    tracing::debug!("may not delete lock objects; leaving them to the readers' rules: {e:#}");
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        };
        for (key, info) in all.iter().filter(|(_, i)| i.releases.is_none()) {
            let lease = info.lease_of(key);
            let expired_long_ago = crate::util::parse_rfc3339(&info.expires).is_some_and(|t| t < long_ago);
            if released.contains(lease) || expired_long_ago {
                if !delete(key)? {
                    return Ok(deleted);
                }
            } else {
                kept_leases.insert(lease);
            }
        }
        // A record goes last, and only once no lock of its lease is left for it to release.
        for (key, info) in &all {
            if info.releases.as_deref().is_some_and(|lease| !kept_leases.contains(lease)) && !delete(key)? {
                return Ok(deleted);
            }
        }
        Ok(deleted)
    }
}

impl Lock {
    fn acquire_timed(repo: &Repository, exclusive: bool, purpose: &str, timing: LockTiming) -> Result<Lock> {
        for (key, info) in list(repo)? {
            if !info.is_stale() && (exclusive || info.exclusive) {
                return Err(conflict(&key, &info));
            }
        }
        let since = crate::util::now_rfc3339();
        let lease = new_lease();
        let (mine, expires) = write_lock(repo, exclusive, (purpose, None), &since, &lease, timing)?;
        if exclusive {
            // Another holder may have written its lock between our listing and our
            // write; it would not see ours if it listed first. Listing again settles it.
            let rival = match list(repo) {
                Ok(locks) => locks.into_iter().find(|(k, i)| *k != mine && !i.is_stale()).map(|(k, i)| conflict(&k, &i)),
                Err(e) => Some(e.context("cannot list the locks again after writing ours")),
            };
            if let Some(e) = rival {
                withdraw(repo, &mine, &lease, purpose);
                return Err(e);
            }
        }
        Self::hold(
            repo.clone(),
            Holding { key: mine, lease, purpose: purpose.to_string(), shard: None, leftovers: false },
            expires,
            exclusive,
            since,
            timing,
        )
    }

    /// A shared lock of which only one may exist per `purpose` (one `sync`, one
    /// `prune`), or with `shard`, per overlapping shard of it ([`Shard::overlaps`]:
    /// `sync --shard 1/3` and `2/3` run together). Two processes that start at the same
    /// moment both write their lock, then list again: the older lock (by start time,
    /// then key) wins and the other withdraws, so at most one proceeds.
    fn acquire_singleton(repo: &Repository, purpose: &str, shard: Option<Shard>) -> Result<Lock> {
        let timing = LockTiming::from_env()?;
        let rivals = |repo: &Repository| -> Result<Vec<(String, LockInfo)>> {
            Ok(list(repo)?
                .into_iter()
                .filter(|(_, i)| !i.is_stale() && (i.exclusive || (i.purpose == purpose && Shard::overlaps(i.shard, shard))))
                .collect())
        };
        if let Some((key, info)) = rivals(repo)?.into_iter().next() {
            return Err(conflict(&key, &info));
        }
        let since = crate::util::now_rfc3339();
        let lease = new_lease();
        let (mine, expires) = write_lock(repo, false, (purpose, shard), &since, &lease, timing)?;
        let older = match rivals(repo) {
            Ok(r) => r
                .into_iter()
                .find(|(k, i)| *k != mine && (i.exclusive || (i.started(), k.as_str()) < (since.as_str(), mine.as_str())))
                .map(|(k, i)| conflict(&k, &i)),
            Err(e) => Some(e.context("cannot list the locks again after writing ours")),
        };
        if let Some(e) = older {
            withdraw(repo, &mine, &lease, purpose);
            return Err(e);
        }
        Self::hold(
            repo.clone(),
            Holding { key: mine, lease, purpose: purpose.to_string(), shard, leftovers: false },
            expires,
            false,
            since,
            timing,
        )
    }

    /// The lease of this hold: every lock object it writes carries it, so another
    /// process sees the hold as live while a non-stale lock of this lease is listed
    /// (scratch records name it: `crate::scratch`).
    pub fn lease(&self) -> String {
        self.holding.lock().map(|h| h.lease.clone()).unwrap_or_default()
    }

    /// A handle for the code that writes under this lock (`Repository::hold_lock`).
    pub fn watch(&self) -> LockWatch {
        LockWatch(self.state.clone())
    }

    /// An error once the lock is lost or about to expire unrefreshed.
    pub fn ensure_held(&self) -> Result<()> {
        self.state.ensure_held()
    }

    fn hold(repo: Repository, holding: Holding, expires: Instant, exclusive: bool, since: String, timing: LockTiming) -> Result<Lock> {
        let (purpose, shard) = (holding.purpose.clone(), holding.shard);
        tracing::debug!(lock = %holding.key, purpose, exclusive, "acquired the {purpose} lock");
        let (lease, holding) = (holding.lease.clone(), Arc::new(Mutex::new(holding)));
        if let Ok(mut held) = HELD.lock() {
            held.push((repo.clone(), holding.clone()));
        }
        let state =
            Arc::new(LockState { purpose: purpose.clone(), expires: Mutex::new(expires), lost: Mutex::new(None), refresh: timing.refresh });
        // Objects are never rewritten: a refresh writes a new lock, then deletes the old.
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (r2, h2, s2) = (repo.clone(), holding.clone(), state.clone());
        let refresher = std::thread::Builder::new().name("lock-refresh".into()).spawn(move || {
            // After a failure, try again sooner: the lock is lost once less than
            // one refresh interval of its life is left.
            let retry = (timing.refresh / 5).max(Duration::from_millis(100));
            let mut wait = timing.refresh;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
                if s2.is_lost() {
                    return;
                }
                match write_lock(&r2, exclusive, (&purpose, shard), &since, &lease, timing) {
                    Ok((new_key, new_expires)) => {
                        *s2.expires.lock().expect("lock state mutex") = new_expires;
                        let old = std::mem::replace(&mut h2.lock().expect("lock holding mutex").key, new_key);
                        // The new lock is in place; a superseded one left behind is the same
                        // lease, released with it (or it expires).
                        if let Err(e) = r2.delete_lock(&old) {
                            if crate::backend::is_permission_denied(&e) {
                                tracing::debug!(lock = %old, "may not delete the superseded lock; it is released with the lease: {e:#}");
                            } else if !crate::backend::is_not_found(&e) {
                                tracing::warn!("cannot delete superseded lock {old} (it expires by itself): {e:#}");
                            }
                            h2.lock().expect("lock holding mutex").leftovers = true;
                        }
                        wait = timing.refresh;
                    }
                    Err(e) => {
                        let expires = *s2.expires.lock().expect("lock state mutex");
                        if Instant::now() + timing.refresh >= expires {
                            tracing::error!("the {purpose} lock could not be refreshed before its expiry: {e:#}");
                            *s2.lost.lock().expect("lock state mutex") = Some(format!("refresh failed: {e:#}"));
                            return;
                        }
                        tracing::warn!("cannot refresh the {purpose} lock (trying again): {e:#}");
                        wait = retry;
                    }
                }
            }
        })?;
        Ok(Lock { repo, holding, state, stop: Some(stop), refresher: Some(refresher) })
    }
}

/// A random lease: no two holds share one.
fn new_lease() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Removes a lock we just wrote and will not hold: deleted, else released (a failure of both
/// only leaves it to expire).
fn withdraw(repo: &Repository, key: &str, lease: &str, purpose: &str) {
    release(repo, &Holding { key: key.to_string(), lease: lease.to_string(), purpose: purpose.to_string(), shard: None, leftovers: false });
}

impl Drop for Lock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        if let Ok(mut held) = HELD.lock() {
            held.retain(|(_, h)| !Arc::ptr_eq(h, &self.holding));
        }
        if let Ok(holding) = self.holding.lock().map(|h| h.clone()) {
            release(&self.repo, &holding);
            tracing::debug!(lock = %holding.key, "released the lock");
        }
    }
}

/// The locks readers count: every lock object but release records and the locks of a
/// released lease. No clock decides this, so a host whose clock is behind still sees a
/// released lock as gone.
fn list(repo: &Repository) -> Result<Vec<(String, LockInfo)>> {
    let all = list_all(repo)?;
    let released: HashSet<String> = all.iter().filter_map(|(_, i)| i.releases.clone()).collect();
    Ok(all.into_iter().filter(|(key, info)| info.releases.is_none() && !released.contains(info.lease_of(key))).collect())
}

/// Every lock object, release records included.
fn list_all(repo: &Repository) -> Result<Vec<(String, LockInfo)>> {
    let mut out = Vec::new();
    for (key, size) in repo.list::<LockInfo>()? {
        // An oversized lock is never read: it is listed as unreadable (hence
        // stale, so `unlock` removes it), named in a warning.
        let parsed = if size > MAX_LOCK_BYTES {
            tracing::warn!("lock {key} is {size} bytes, more than a lock may hold ({MAX_LOCK_BYTES}); treating it as unreadable");
            None
        } else {
            match repo.load::<LockInfo>(&key, Some(size)) {
                Ok(info) => Some(info),
                // A lock deleted between list and get is simply gone.
                Err(e) if crate::backend::is_not_found(&e) => continue,
                // Any other read failure says nothing about the lock: an error, not a stale lock.
                Err(e) if e.chain().any(|c| c.is::<crate::backend::BackendError>()) => {
                    return Err(e).with_context(|| format!("cannot read lock {key}"))
                }
                Err(_) => None,
            }
        };
        match parsed {
            Some(info) => out.push((key, info)),
            None => out.push((
                key,
                LockInfo {
                    hostname: "?".into(),
                    pid: 0,
                    time: "?".into(),
                    expires: "1970-01-01T00:00:00Z".into(),
                    exclusive: false,
                    purpose: "unreadable lock".into(),
                    since: None,
                    process: None,
                    lease: None,
                    releases: None,
                    shard: None,
                },
            )),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::faults::{Faulty, Op};
    use crate::backend::Backend;

    fn local(dir: &std::path::Path) -> Arc<dyn Backend> {
        crate::backend::open(dir.join("repo").to_str().unwrap(), &Default::default()).unwrap()
    }

    const FAST: LockTiming = LockTiming { ttl: Duration::from_secs(3), refresh: Duration::from_millis(500) };

    fn repo_on(backend: Arc<dyn Backend>) -> Repository {
        Repository::init(backend, crate::repository::config::Config::new(64 << 10, 3).unwrap()).unwrap()
    }

    fn lock_infos(repo: &Repository) -> Vec<LockInfo> {
        list(repo).unwrap().into_iter().map(|(_, i)| i).collect()
    }

    #[test]
    fn a_lock_whose_refresh_fails_is_lost_before_it_expires_and_stops_writes() {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Faulty::new(local(dir.path()));
        let repo = repo_on(faulty.clone());
        let lock = repo.acquire_lock_timed(false, "archive", FAST).unwrap();
        repo.hold_lock(&lock);
        std::thread::sleep(FAST.refresh * 2);
        lock.ensure_held().expect("a refreshed lock is held");
        let expires = crate::util::parse_rfc3339(&lock_infos(&repo)[0].expires).unwrap();

        faulty.fail(Op::Put, "locks/");
        let lost_at = loop {
            if lock.ensure_held().is_err() {
                break chrono::Utc::now();
            }
            assert!(chrono::Utc::now() < expires, "the lock expired in the repository while its holder still thought it held");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(lost_at < expires, "noticed only at {lost_at}, the lock expired at {expires}");
        faulty.heal();
        // Lost stays lost: the holder does not resume as if nothing happened.
        std::thread::sleep(FAST.refresh * 2);
        let err = format!("{:#}", lock.ensure_held().unwrap_err());
        assert!(err.contains("archive lock") && err.contains("lost"), "{err}");
        // Nothing is written through the repository handle any more.
        let err = format!("{:#}", repo.write_index_object(&crate::repository::index_object::IndexObject::new(vec![])).unwrap_err());
        assert!(err.contains("lost"), "{err}");
        assert!(repo.list_index_objects().unwrap().is_empty(), "an index object was written after the lock was lost");
    }

    #[test]
    fn a_failed_delete_of_the_superseded_lock_is_only_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Faulty::new(local(dir.path()));
        let repo = repo_on(faulty.clone());
        faulty.fail(Op::Delete, "locks/");
        let lock = repo.acquire_lock_timed(false, "archive", FAST).unwrap();
        std::thread::sleep(FAST.ttl + FAST.refresh);
        lock.ensure_held().expect("the lock was refreshed although old ones could not be deleted");
        let live = lock_infos(&repo).into_iter().filter(|i| !i.is_stale()).count();
        assert!(live >= 1, "no live lock in the repository");
    }

    #[test]
    fn an_exclusive_lock_lists_again_after_writing_and_withdraws_for_a_rival() {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Faulty::new(local(dir.path()));
        // A shared holder writes its lock between our listing and our write.
        let repo = repo_on(faulty.clone());
        let (rival_repo, rival_key) = (repo.clone(), Arc::new(Mutex::new(None)));
        let slot = rival_key.clone();
        faulty.before_next_put("locks/", move |_| {
            let (key, _) = write_lock(&rival_repo, false, ("archive", None), &crate::util::now_rfc3339(), &new_lease(), FAST).unwrap();
            *slot.lock().unwrap() = Some(key);
        });
        let err = repo.acquire_lock_timed(true, "check", FAST).unwrap_err();
        assert!(format!("{err:#}").contains("locked by archive"), "{err:#}");
        let left: Vec<String> = list(&repo).unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(left, vec![rival_key.lock().unwrap().clone().unwrap()], "the exclusive lock was not withdrawn");
    }

    #[test]
    fn a_holder_that_may_not_delete_releases_its_lease_and_blocks_no_one() {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Faulty::new(local(dir.path()));
        let repo = repo_on(faulty.clone());
        faulty.deny(Op::Delete, "locks/");
        let lock = repo.acquire_lock_timed(false, "sync", FAST).unwrap();
        // Refreshes whose predecessor cannot be deleted: several objects of one lease.
        std::thread::sleep(FAST.refresh * 3);
        lock.ensure_held().unwrap();
        assert!(list_all(&repo).unwrap().len() >= 2, "the refreshes could not delete, yet left one object");
        assert_eq!(list(&repo).unwrap().len(), list_all(&repo).unwrap().len(), "no release record before the release");
        drop(lock);

        let all = list_all(&repo).unwrap();
        let records: Vec<&LockInfo> = all.iter().map(|(_, i)| i).filter(|i| i.releases.is_some()).collect();
        assert_eq!(records.len(), 1, "one release record for the whole lease: {all:?}");
        // The released objects have not expired: no clock makes them gone, the record does
        // (so a host whose clock is behind reads them right too).
        assert!(all.iter().any(|(_, i)| i.releases.is_none() && !i.is_stale()), "{all:?}");
        assert!(list(&repo).unwrap().is_empty(), "a released lock is still counted");
        // The next run (another sync, a check) is not blocked by the lock it could not delete.
        drop(repo.acquire_lock_timed(true, "check", FAST).expect("an exclusive lock after a released one"));
        drop(Lock::acquire_singleton(&repo, "sync", None).expect("a second sync after the first one's undeletable lock"));
        assert!(list(&repo).unwrap().is_empty());

        // An older imgarc, which knows no releases, takes the record for an expired lock.
        let record = records[0];
        assert!(crate::util::parse_rfc3339(&record.expires).unwrap() <= chrono::Utc::now());
        let json: serde_json::Value = serde_json::from_slice(&record.encode().unwrap()).unwrap();
        for field in ["hostname", "pid", "time", "expires", "exclusive", "purpose"] {
            assert!(json.get(field).is_some(), "an older reader needs {field}: {json}");
        }

        // Credentials that may delete remove all of it; nothing counted was removed.
        faulty.heal();
        let live = repo.acquire_lock_timed(false, "archive", FAST).unwrap();
        let removed = repo.tidy_locks().unwrap();
        assert!(removed >= 4, "removed {removed}");
        let left = list_all(&repo).unwrap();
        assert_eq!(left.len(), 1, "only the live lock is left: {left:?}");
        assert_eq!(left[0].1.purpose, "archive");
        drop(live);
        assert!(list_all(&repo).unwrap().is_empty(), "a lock that could be deleted was deleted");
    }

    /// `sync --shard K/N`: shards of one count run together; the same shard twice, shards of
    /// two counts, or a shard and an unsharded sync do not. A shard's lock keeps the purpose
    /// an older reader compares (so to it, any shard is a running sync), and a lock without
    /// `shard` (an older writer's) is the whole purpose.
    #[test]
    fn shard_locks_exclude_only_overlapping_shards() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo_on(local(dir.path()));
        let s = |k, n| Some(Shard::new(k, n).unwrap());
        let one = repo.acquire_shard_lock("sync", s(1, 3)).unwrap();
        let two = repo.acquire_shard_lock("sync", s(2, 3)).expect("another shard of the same count");
        for (rival, what) in [(s(1, 3), "the same shard"), (s(1, 4), "another count"), (None, "an unsharded sync")] {
            let err = repo.acquire_shard_lock("sync", rival).unwrap_err();
            assert!(err.chain().any(|c| c.is::<LockConflict>()), "{what}: {err:#}");
        }
        let err = repo.acquire_singleton_lock("sync").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("locked by sync --shard 1/3") || msg.contains("locked by sync --shard 2/3"), "{msg}");
        drop(repo.acquire_singleton_lock("prune").expect("another purpose"));
        let stored: Vec<serde_json::Value> =
            list(&repo).unwrap().iter().map(|(_, i)| serde_json::from_slice(&i.encode().unwrap()).unwrap()).collect();
        assert!(stored.iter().all(|j| j["purpose"] == "sync"), "{stored:?}");
        assert!(stored.iter().any(|j| j["shard"] == serde_json::json!({"index": 2, "count": 3})), "{stored:?}");
        drop((one, two));

        let whole = repo.acquire_singleton_lock("sync").unwrap();
        let err = repo.acquire_shard_lock("sync", s(3, 3)).unwrap_err();
        assert!(err.chain().any(|c| c.is::<LockConflict>()), "a shard beside an unsharded sync: {err:#}");
        drop(whole);
        let mut old = serde_json::to_value(info(1, None)).unwrap();
        old["purpose"] = "sync".into();
        let old: LockInfo = serde_json::from_value(old).unwrap();
        assert!(old.shard.is_none());
        repo.save(&old).unwrap();
        assert!(repo.acquire_shard_lock("sync", s(1, 2)).is_err(), "an older writer's sync lock is the whole sync");
    }

    #[test]
    fn a_withdrawn_singleton_lock_that_may_not_be_deleted_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Faulty::new(local(dir.path()));
        let repo = repo_on(faulty.clone());
        faulty.deny(Op::Delete, "locks/");
        // A rival sync that started earlier writes its lock between our listing and our write.
        let (rival_repo, rival_key) = (repo.clone(), Arc::new(Mutex::new(None)));
        let slot = rival_key.clone();
        faulty.before_next_put("locks/", move |_| {
            let since = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
            let (key, _) = write_lock(&rival_repo, false, ("sync", None), &since, &new_lease(), FAST).unwrap();
            *slot.lock().unwrap() = Some(key);
        });
        let err = Lock::acquire_singleton(&repo, "sync", None).unwrap_err();
        assert!(err.chain().any(|c| c.is::<LockConflict>()), "{err:#}");
        let counted: Vec<String> = list(&repo).unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(counted, vec![rival_key.lock().unwrap().clone().unwrap()], "the withdrawn lock is still counted");
        assert_eq!(list_all(&repo).unwrap().len(), 3, "rival, ours and our release record");
    }

    #[test]
    fn unlock_releases_what_it_may_not_delete_and_tidies_it_later() {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Faulty::new(local(dir.path()));
        let repo = repo_on(faulty.clone());
        // A lock of a crashed older imgarc on another host (no lease), expired.
        let mut crashed = info(1, None);
        crashed.hostname = "gone-host".into();
        crashed.expires = "2026-01-01T00:00:00Z".into();
        let (key, _) = repo.save(&crashed).unwrap();
        faulty.deny(Op::Delete, "locks/");
        let report = crate::maintenance::unlock(&repo, &Default::default()).unwrap();
        assert_eq!(report.released, vec![key.clone()]);
        assert!(report.removed.is_empty() && report.tidied == 0, "{report:?}");
        assert!(repo.list_locks().unwrap().is_empty());
        faulty.heal();
        let report = crate::maintenance::unlock(&repo, &Default::default()).unwrap();
        assert_eq!(report.tidied, 2, "{report:?}");
        assert!(list_all(&repo).unwrap().is_empty());
    }

    fn info(pid: u32, process: Option<ProcessIdentity>) -> LockInfo {
        LockInfo {
            hostname: crate::util::hostname(),
            pid,
            time: crate::util::now_rfc3339(),
            expires: (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
            exclusive: false,
            purpose: "archive".into(),
            since: None,
            process,
            lease: None,
            releases: None,
            shard: None,
        }
    }

    #[test]
    fn only_a_certainly_dead_holder_makes_an_unexpired_lock_stale() {
        let Some(me) = ProcessIdentity::current() else {
            eprintln!("skipped: no /proc process identity on this system");
            return;
        };
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let dead_here = ProcessIdentity { start_ticks: 1, ..me.clone() };
        assert!(info(dead_pid, Some(dead_here.clone())).is_stale(), "a finished process on this boot and namespace");
        // Our own PID, but a process that started at another time: the PID was reused.
        assert!(info(std::process::id(), Some(ProcessIdentity { start_ticks: me.start_ticks + 1, ..me.clone() })).is_stale());
        assert!(!info(std::process::id(), Some(me.clone())).is_stale(), "this very process");
        // Same hostname, but another PID namespace (a container) or another boot: proves nothing.
        let other_ns = ProcessIdentity { pid_namespace: "pid:[1]".into(), ..dead_here.clone() };
        assert!(!info(dead_pid, Some(other_ns)).is_stale());
        let other_boot = ProcessIdentity { boot_id: "another-boot".into(), ..dead_here };
        assert!(!info(dead_pid, Some(other_boot)).is_stale());
        // An older lock with hostname and PID only: left to its expiry.
        assert!(!info(dead_pid, None).is_stale());
        // The identity survives the JSON round trip, and older JSON without it still reads.
        let round: LockInfo = serde_json::from_slice(&serde_json::to_vec(&info(1, Some(me.clone()))).unwrap()).unwrap();
        assert_eq!(round.process.as_ref(), Some(me));
        let mut old = serde_json::to_value(info(1, None)).unwrap();
        old.as_object_mut().unwrap().retain(|k, _| !["boot_id", "pid_namespace", "start_ticks"].contains(&k.as_str()));
        assert!(serde_json::from_value::<LockInfo>(old).unwrap().process.is_none());
    }
}

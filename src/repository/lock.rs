//! Lock objects: `locks/<random id>`, JSON with host, pid, time and expiry.
//!
//! Archives take shared locks (many may run at once); `check` and `index
//! rebuild` take an exclusive one. `sync` and `prune` take *singleton* locks:
//! shared with archives, but only one holder per purpose at a time (two syncs
//! or two prunes never overlap). A lock whose expiry has passed, or
//! whose process is gone on this host, is stale and ignored; `imgarc unlock`
//! deletes stale locks. Locks are advisory: safety against concurrent prune
//! rests on the two-phase design, not on locks alone.

use crate::backend::Backend;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

pub const LOCK_TTL_SECS: i64 = 30 * 60;
/// Largest lock object a reader accepts (format-spec §1); real ones are ~250
/// bytes. A larger one is listed as an unreadable (stale) lock, never read.
pub const MAX_LOCK_BYTES: u64 = 64 << 10;

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
}

impl LockInfo {
    /// When the holder started: `since`, else (older imgarc) the last refresh.
    pub fn started(&self) -> &str {
        self.since.as_deref().unwrap_or(&self.time)
    }
}

impl LockInfo {
    pub fn is_stale(&self) -> bool {
        let expired = crate::util::parse_rfc3339(&self.expires).is_none_or(|t| t < chrono::Utc::now());
        let dead_here = self.hostname == crate::util::hostname() && !process_alive(self.pid);
        expired || dead_here
    }
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Holders refresh their lock this often, well inside `LOCK_TTL_SECS`.
const REFRESH_SECS: u64 = 5 * 60;

/// A held lock; refreshed in the background, removed when dropped.
#[derive(Debug)]
pub struct Lock {
    backend: Arc<dyn Backend>,
    key: Arc<Mutex<String>>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

fn write_lock(backend: &dyn Backend, exclusive: bool, purpose: &str, since: &str) -> Result<String> {
    let now = chrono::Utc::now();
    let info = LockInfo {
        hostname: crate::util::hostname(),
        pid: std::process::id(),
        time: crate::util::now_rfc3339(),
        expires: (now + chrono::Duration::seconds(LOCK_TTL_SECS)).to_rfc3339(),
        exclusive,
        purpose: purpose.to_string(),
        since: Some(since.to_string()),
    };
    let key = format!("locks/{}", hex::encode(rand::random::<[u8; 16]>()));
    backend.put(&key, &serde_json::to_vec_pretty(&info)?)?;
    Ok(key)
}

fn conflict(key: &str, info: &LockInfo) -> anyhow::Error {
    anyhow::anyhow!(
        "repository is locked by {} on {} (pid {}) since {}{}; if that process is gone, run `imgarc unlock` (lock {key})",
        info.purpose,
        info.hostname,
        info.pid,
        info.time,
        if info.exclusive { ", exclusively" } else { "" }
    )
}

impl Lock {
    pub fn acquire(backend: Arc<dyn Backend>, exclusive: bool, purpose: &str) -> Result<Lock> {
        for (key, info) in list(&*backend)? {
            if !info.is_stale() && (exclusive || info.exclusive) {
                return Err(conflict(&key, &info));
            }
        }
        let since = crate::util::now_rfc3339();
        let key = write_lock(&*backend, exclusive, purpose, &since)?;
        Self::hold(backend, key, exclusive, purpose, since)
    }

    /// A shared lock of which only one may exist per `purpose` (one `sync`, one
    /// `prune`). Two processes that start at the same moment both write their
    /// lock, then list again: the older lock (by start time, then key) wins and the
    /// other withdraws, so at most one proceeds.
    pub fn acquire_singleton(backend: Arc<dyn Backend>, purpose: &str) -> Result<Lock> {
        let rivals = |backend: &dyn Backend| -> Result<Vec<(String, LockInfo)>> {
            Ok(list(backend)?.into_iter().filter(|(_, i)| !i.is_stale() && (i.exclusive || i.purpose == purpose)).collect())
        };
        if let Some((key, info)) = rivals(&*backend)?.into_iter().next() {
            return Err(conflict(&key, &info));
        }
        let since = crate::util::now_rfc3339();
        let mine = write_lock(&*backend, false, purpose, &since)?;
        let older = rivals(&*backend)?
            .into_iter()
            .find(|(k, i)| *k != mine && (i.exclusive || (i.started(), k.as_str()) < (since.as_str(), mine.as_str())));
        if let Some((key, info)) = older {
            let _ = backend.delete(&mine);
            return Err(conflict(&key, &info));
        }
        Self::hold(backend, mine, false, purpose, since)
    }

    fn hold(backend: Arc<dyn Backend>, key: String, exclusive: bool, purpose: &str, since: String) -> Result<Lock> {
        let key = Arc::new(Mutex::new(key));
        // Objects are never rewritten: a refresh writes a new lock, then deletes the old.
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (b2, k2, purpose) = (backend.clone(), key.clone(), purpose.to_string());
        let refresher = std::thread::Builder::new().name("lock-refresh".into()).spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(std::time::Duration::from_secs(REFRESH_SECS)) {
                if let Ok(new_key) = write_lock(&*b2, exclusive, &purpose, &since) {
                    let old = std::mem::replace(&mut *k2.lock().expect("lock key mutex"), new_key);
                    let _ = b2.delete(&old);
                }
            }
        })?;
        Ok(Lock { backend, key, stop: Some(stop), refresher: Some(refresher) })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        let key = self.key.lock().map(|k| k.clone()).unwrap_or_default();
        let _ = self.backend.delete(&key);
    }
}

pub fn list(backend: &dyn Backend) -> Result<Vec<(String, LockInfo)>> {
    let mut out = Vec::new();
    for o in backend.list("locks/")? {
        // An oversized lock is never read: it is listed as unreadable (hence
        // stale, so `unlock` removes it), named in a warning.
        let parsed = if o.size > MAX_LOCK_BYTES {
            eprintln!(
                "warning: lock {} is {} bytes, more than a lock may hold ({MAX_LOCK_BYTES}); treating it as unreadable",
                o.key, o.size
            );
            None
        } else {
            match super::read_capped(backend, &o.key, Some(o.size), MAX_LOCK_BYTES) {
                Ok(bytes) => serde_json::from_slice::<LockInfo>(&bytes).ok(),
                // A lock deleted between list and get is simply gone.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read lock {}", o.key)),
            }
        };
        match parsed {
            Some(info) => out.push((o.key, info)),
            None => out.push((
                o.key,
                LockInfo {
                    hostname: "?".into(),
                    pid: 0,
                    time: "?".into(),
                    expires: "1970-01-01T00:00:00Z".into(),
                    exclusive: false,
                    purpose: "unreadable lock".into(),
                    since: None,
                },
            )),
        }
    }
    Ok(out)
}

//! Lock objects: `locks/<random id>`, JSON with host, pid, time and expiry.
//!
//! Archives take shared locks (many may run at once); `check`, `index rebuild`
//! and later `prune` take an exclusive one. A lock whose expiry has passed, or
//! whose process is gone on this host, is stale and ignored; `imgarc unlock`
//! deletes stale locks. Locks are advisory: safety against concurrent prune
//! rests on the two-phase design, not on locks alone.

use crate::backend::Backend;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const LOCK_TTL_SECS: i64 = 30 * 60;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub hostname: String,
    pub pid: u32,
    pub time: String,
    pub expires: String,
    pub exclusive: bool,
    pub purpose: String,
}

impl LockInfo {
    pub fn is_stale(&self) -> bool {
        let expired =
            crate::util::parse_rfc3339(&self.expires).is_none_or(|t| t < chrono::Utc::now());
        let dead_here = self.hostname == crate::util::hostname() && !process_alive(self.pid);
        expired || dead_here
    }
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A held lock; removed from the repository when dropped.
#[derive(Debug)]
pub struct Lock {
    backend: Arc<dyn Backend>,
    key: String,
}

impl Lock {
    pub fn acquire(backend: Arc<dyn Backend>, exclusive: bool, purpose: &str) -> Result<Lock> {
        let others = list(&*backend)?;
        for (key, info) in &others {
            if info.is_stale() {
                continue;
            }
            if exclusive || info.exclusive {
                bail!(
                    "repository is locked by {} on {} (pid {}) since {}{}; if that process is gone, run `imgarc unlock` (lock {key})",
                    info.purpose,
                    info.hostname,
                    info.pid,
                    info.time,
                    if info.exclusive { ", exclusively" } else { "" }
                );
            }
        }
        let now = chrono::Utc::now();
        let info = LockInfo {
            hostname: crate::util::hostname(),
            pid: std::process::id(),
            time: crate::util::now_rfc3339(),
            expires: (now + chrono::Duration::seconds(LOCK_TTL_SECS)).to_rfc3339(),
            exclusive,
            purpose: purpose.to_string(),
        };
        let key = format!("locks/{}", hex::encode(rand::random::<[u8; 16]>()));
        backend.put(&key, &serde_json::to_vec_pretty(&info)?)?;
        Ok(Lock { backend, key })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = self.backend.delete(&self.key);
    }
}

pub fn list(backend: &dyn Backend) -> Result<Vec<(String, LockInfo)>> {
    let mut out = Vec::new();
    for o in backend.list("locks/")? {
        // A lock deleted between list and get is simply gone.
        let Ok(bytes) = backend.get(&o.key) else {
            continue;
        };
        match serde_json::from_slice::<LockInfo>(&bytes) {
            Ok(info) => out.push((o.key, info)),
            Err(_) => out.push((
                o.key,
                LockInfo {
                    hostname: "?".into(),
                    pid: 0,
                    time: "?".into(),
                    expires: "1970-01-01T00:00:00Z".into(),
                    exclusive: false,
                    purpose: "unreadable lock".into(),
                },
            )),
        }
    }
    Ok(out)
}

//! Rate-limit decorator for `--limit-upload` / `--limit-download RATE`.
//!
//! One limiter per direction is shared by all threads using the backend, so
//! the limit is on the sum of parallel transfers. It is a virtual-clock
//! scheduler: each transfer of `n` bytes books `n / rate` seconds on the
//! clock and sleeps until its slot has passed (a burst of up to one second
//! of idle budget is allowed). Whole objects are transferred at full speed
//! and the caller waits afterwards, so the average rate over several objects
//! is the limit; with 32 MiB packs and limits of a few MiB/s this is smooth
//! enough. Listings, HEADs and deletes are not limited.

use super::{Backend, BackendResult, ObjectInfo};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Parse a rate: a number with an optional binary suffix K, M, G, T (also
/// KiB, MB, M/s, ...; all powers of 1024), meaning bytes per second.
/// `0` or `unlimited` means no limit (None).
pub fn parse_rate(s: &str) -> anyhow::Result<Option<u64>> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let t = t.strip_suffix("/s").unwrap_or(t);
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| anyhow::anyhow!("invalid rate {s:?} (e.g. 20M, 500K)"))?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit.trim_end_matches("IB").trim_end_matches('B');
    let mult: f64 = match unit {
        "" => 1.0,
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        "T" => 1024.0f64.powi(4),
        _ => anyhow::bail!("invalid rate unit in {s:?} (use K, M, G, T)"),
    };
    let v = (n * mult).round();
    if !v.is_finite() || v < 0.0 {
        anyhow::bail!("invalid rate {s:?}");
    }
    Ok(if v == 0.0 { None } else { Some(v as u64) })
}

/// A shared byte-rate limiter.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    next_free: Mutex<Instant>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimiter { bytes_per_sec: bytes_per_sec.max(1), next_free: Mutex::new(Instant::now()) }
    }

    /// Account for `n` bytes just transferred (or about to be); sleeps as needed.
    pub fn consume(&self, n: u64) {
        let cost = Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
        let wait_until = {
            let mut next = self.next_free.lock().unwrap();
            let now = Instant::now();
            // up to 1 s of unused budget may be spent as a burst
            let start = (*next).max(now.checked_sub(Duration::from_secs(1)).unwrap_or(now));
            *next = start + cost;
            *next
        };
        let now = Instant::now();
        if wait_until > now + Duration::from_secs(1) {
            std::thread::sleep(wait_until - now - Duration::from_secs(1));
        }
    }
}

/// Decorator limiting upload (put) and download (get, get_range) bytes.
#[derive(Debug)]
pub struct RateLimitBackend {
    inner: Box<dyn Backend>,
    upload: Option<RateLimiter>,
    download: Option<RateLimiter>,
}

impl RateLimitBackend {
    /// Rates in bytes per second; None = unlimited.
    pub fn new(inner: Box<dyn Backend>, upload: Option<u64>, download: Option<u64>) -> Self {
        RateLimitBackend { inner, upload: upload.map(RateLimiter::new), download: download.map(RateLimiter::new) }
    }
}

impl Backend for RateLimitBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put(&self, key: &str, data: &[u8]) -> BackendResult<()> {
        if let Some(l) = &self.upload {
            l.consume(data.len() as u64);
        }
        self.inner.put(key, data)
    }
    fn get(&self, key: &str) -> BackendResult<Vec<u8>> {
        let v = self.inner.get(key)?;
        if let Some(l) = &self.download {
            l.consume(v.len() as u64);
        }
        Ok(v)
    }
    fn get_range(&self, key: &str, offset: u64, length: u64) -> BackendResult<Vec<u8>> {
        let v = self.inner.get_range(key, offset, length)?;
        if let Some(l) = &self.download {
            l.consume(v.len() as u64);
        }
        Ok(v)
    }
    fn size(&self, key: &str) -> BackendResult<u64> {
        self.inner.size(key)
    }
    fn list(&self, prefix: &str) -> BackendResult<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> BackendResult<()> {
        self.inner.delete(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("1024").unwrap(), Some(1024));
        assert_eq!(parse_rate("2K").unwrap(), Some(2048));
        assert_eq!(parse_rate("1.5M").unwrap(), Some(1572864));
        assert_eq!(parse_rate("10MiB/s").unwrap(), Some(10 << 20));
        assert_eq!(parse_rate("1GB").unwrap(), Some(1 << 30));
        assert_eq!(parse_rate("0").unwrap(), None);
        assert_eq!(parse_rate("unlimited").unwrap(), None);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10X").is_err());
    }

    #[test]
    fn limiter_enforces_average_rate() {
        // 1 MiB/s, 1 s burst allowance: 3 MiB must take >= ~2 s
        let l = RateLimiter::new(1 << 20);
        let t = Instant::now();
        for _ in 0..6 {
            l.consume(512 << 10);
        }
        let e = t.elapsed();
        assert!(e >= Duration::from_millis(1900), "too fast: {e:?}");
        assert!(e < Duration::from_millis(3500), "too slow: {e:?}");
    }
}

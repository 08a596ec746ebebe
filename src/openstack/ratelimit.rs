//! Token-bucket rate limiting for `--limit-download` / `--limit-upload`.
//!
//! ```
//! use imgarc::openstack::ratelimit::{parse_rate, RateLimiter, RateLimitedReader};
//! let limiter = RateLimiter::new(parse_rate("50MiB/s").unwrap());
//! let data = std::io::Read::take(std::io::repeat(0), 1000);
//! let mut r = RateLimitedReader::new(data, limiter.clone());
//! std::io::copy(&mut r, &mut std::io::sink()).unwrap();
//! ```

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Parse a rate in bytes per second: `1048576`, `500K`, `50M`, `1.5G`,
/// `10MiB/s`, `100MB/s`, `20mbit`... `K/M/G/T` (and `KB`...) are decimal
/// (1000), `KiB/MiB/GiB/TiB` binary (1024); a `bit` suffix divides by 8; an
/// optional `/s` or `ps` is accepted. Zero and negative rates are errors.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let orig = s;
    let mut s = s.trim().to_ascii_lowercase().replace(' ', "");
    for suf in ["/s", "/sec", "ps"] {
        if let Some(t) = s.strip_suffix(suf) {
            s = t.to_string();
            break;
        }
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("bad rate {orig:?}: expected a number with an optional unit, e.g. 50M or 10MiB/s"))?;
    let (unit, bits) = match unit.strip_suffix("bit").or_else(|| unit.strip_suffix("bits")) {
        Some(u) => (u, true),
        None => (unit, false),
    };
    let mult: f64 = match unit {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024f64.powi(4),
        _ => return Err(format!("bad rate {orig:?}: unknown unit {unit:?} (use K, M, G, KiB, MiB, GiB)")),
    };
    let v = n * mult / if bits { 8.0 } else { 1.0 };
    if v.is_nan() || v < 1.0 || !v.is_finite() {
        return Err(format!("bad rate {orig:?}: must be at least 1 byte/s"));
    }
    Ok(v as u64)
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

/// A token bucket shared by clones (so several streams can share one
/// limit). Burst: 1/8 s worth of bytes, at least 16 KiB.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    inner: Arc<Mutex<Bucket>>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> RateLimiter {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = (rate / 8.0).max(16.0 * 1024.0);
        RateLimiter { inner: Arc::new(Mutex::new(Bucket { rate, burst, tokens: burst, last: Instant::now() })) }
    }

    pub fn rate(&self) -> u64 {
        self.inner.lock().unwrap().rate as u64
    }

    /// Largest amount to move at once.
    fn chunk(&self) -> usize {
        self.inner.lock().unwrap().burst as usize
    }

    /// Account for `n` bytes, sleeping as long as needed to keep the rate.
    pub fn consume(&self, n: usize) {
        let wait = {
            let mut b = self.inner.lock().unwrap();
            let now = Instant::now();
            let el = now.duration_since(b.last).as_secs_f64();
            b.last = now;
            b.tokens = (b.tokens + el * b.rate).min(b.burst);
            b.tokens -= n as f64;
            if b.tokens < 0.0 {
                Duration::from_secs_f64(-b.tokens / b.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// A reader that delivers at most the limiter's rate.
pub struct RateLimitedReader<R> {
    inner: R,
    limiter: RateLimiter,
}

impl<R: Read> RateLimitedReader<R> {
    pub fn new(inner: R, limiter: RateLimiter) -> Self {
        RateLimitedReader { inner, limiter }
    }
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for RateLimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = buf.len().min(self.limiter.chunk());
        let n = self.inner.read(&mut buf[..max])?;
        self.limiter.consume(n);
        Ok(n)
    }
}

/// A writer that accepts at most the limiter's rate.
pub struct RateLimitedWriter<W> {
    inner: W,
    limiter: RateLimiter,
}

impl<W: Write> RateLimitedWriter<W> {
    pub fn new(inner: W, limiter: RateLimiter) -> Self {
        RateLimitedWriter { inner, limiter }
    }
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for RateLimitedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let max = buf.len().min(self.limiter.chunk());
        let n = self.inner.write(&buf[..max])?;
        self.limiter.consume(n);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1048576").unwrap(), 1048576);
        assert_eq!(parse_rate("50M").unwrap(), 50_000_000);
        assert_eq!(parse_rate("50MB/s").unwrap(), 50_000_000);
        assert_eq!(parse_rate("10MiB/s").unwrap(), 10 * 1024 * 1024);
        assert_eq!(parse_rate("1.5G").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("512k").unwrap(), 512_000);
        assert_eq!(parse_rate("100Mbit").unwrap(), 12_500_000);
        assert_eq!(parse_rate(" 2 KiB ").unwrap(), 2048);
        assert_eq!(parse_rate("8mbps").unwrap(), 8_000_000);
        for bad in ["", "0", "-5M", "fast", "5X", "M"] {
            assert!(parse_rate(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn limits_reader_rate() {
        // 1 MiB at 4 MiB/s: about 0.25 s minus the initial burst (0.125 s)
        let lim = RateLimiter::new(4 * 1024 * 1024);
        let t = Instant::now();
        let mut r = RateLimitedReader::new(io::repeat(7).take(1024 * 1024), lim);
        let n = io::copy(&mut r, &mut io::sink()).unwrap();
        let el = t.elapsed().as_secs_f64();
        assert_eq!(n, 1024 * 1024);
        assert!(el > 0.08 && el < 1.0, "took {el}s");
    }

    #[test]
    fn limits_writer_rate() {
        let lim = RateLimiter::new(2 * 1024 * 1024);
        let t = Instant::now();
        let mut w = RateLimitedWriter::new(Vec::new(), lim);
        w.write_all(&vec![1u8; 512 * 1024]).unwrap();
        let el = t.elapsed().as_secs_f64();
        assert_eq!(w.into_inner().len(), 512 * 1024);
        assert!(el > 0.08 && el < 1.0, "took {el}s");
    }
}

//! The one rate limiter for `--limit-download` / `--limit-upload`: a token
//! bucket that Glance downloads and uploads ([`RateLimitedReader`],
//! [`RateLimitedWriter`]) and the storage backends (`backend::ratelimit`)
//! all account their bytes to. Rates come from `util::parse_rate`.
//!
//! ```
//! use imgarc::net::ratelimit::{RateLimiter, RateLimitedReader};
//! let limiter = RateLimiter::new(imgarc::util::parse_rate("50MiB/s").unwrap());
//! let data = std::io::Read::take(std::io::repeat(0), 1000);
//! let mut r = RateLimitedReader::new(data, limiter.clone());
//! std::io::copy(&mut r, &mut std::io::sink()).unwrap();
//! ```

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

/// A token bucket shared by clones, so every thread and stream of one
/// direction shares one limit. Burst: 1/8 s worth of bytes, at least 16 KiB.
/// A transfer bigger than the burst (a whole 32 MiB pack) drives the bucket
/// negative and its caller sleeps until the rate is kept on average.
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
    pub fn consume(&self, n: u64) {
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
        self.limiter.consume(n as u64);
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
        self.limiter.consume(n as u64);
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
    fn whole_objects_keep_the_average_rate() {
        // 1 MiB/s: six 512 KiB objects (3 MiB) take about 2.9 s (the first
        // one spends the 128 KiB burst)
        let l = RateLimiter::new(1 << 20);
        let t = Instant::now();
        for _ in 0..6 {
            l.consume(512 << 10);
        }
        let e = t.elapsed();
        assert!(e >= Duration::from_millis(1900), "too fast: {e:?}");
        assert!(e < Duration::from_millis(3500), "too slow: {e:?}");
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

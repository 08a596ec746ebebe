//! The one retry policy of every remote call (Keystone, Glance, Swift, S3):
//! which failures are transient, how long to back off, and `Retry-After`.
//!
//! Transient: no HTTP answer at all (connect, reset, timeout), HTTP 408,
//! 429 and 5xx except 501 Not Implemented. Everything else — 4xx including
//! 401/403/404/412, 501, configuration and decoding errors — fails at once.
//! Backoff is capped exponential with jitter in [cap/2, cap]; a server's
//! `Retry-After` (seconds or an HTTP date) replaces it, capped at `max_delay`.

use std::time::{Duration, SystemTime};

/// How often and how long to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = no retries). A download that
    /// makes progress starts a fresh budget.
    pub max_retries: u32,
    /// Backoff before the first retry; doubles each time.
    pub base_delay: Duration,
    /// Upper bound of one backoff, `Retry-After` included.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// The storage backends' budget: many small objects, quick retries.
    fn default() -> Self {
        RetryPolicy { max_retries: 5, base_delay: Duration::from_millis(200), max_delay: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// The OpenStack API budget (Keystone, Glance): fewer, longer calls
    /// behind load balancers that shed load for tens of seconds.
    pub fn openstack_api() -> Self {
        RetryPolicy { max_retries: 6, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(30) }
    }

    /// The wait before retry number `attempt` (1-based): the server's
    /// `retry_after` if it sent one, else a random duration in [cap/2, cap]
    /// with cap = min(max_delay, base · 2^(attempt-1)). The lower half-bound
    /// keeps retries from hammering a struggling server.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max_delay);
        }
        let exp = self.base_delay.saturating_mul(1u32 << (attempt.saturating_sub(1)).min(20));
        let cap = exp.min(self.max_delay);
        let half = cap / 2;
        let jitter = rand::random_range(0..=half.as_micros().max(1) as u64);
        half + Duration::from_micros(jitter)
    }
}

/// Whether an HTTP status is worth retrying (`None`: no answer at all).
pub fn is_transient_status(status: Option<u16>) -> bool {
    match status {
        None => true,
        Some(s) => s == 408 || s == 429 || (s >= 500 && s != 501),
    }
}

/// A `Retry-After` header value: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let when = SystemTime::from(when);
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// The `Retry-After` of a response's headers, if any.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers.get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_statuses() {
        for s in [None, Some(500), Some(502), Some(503), Some(504), Some(429), Some(408)] {
            assert!(is_transient_status(s), "{s:?}");
        }
        for s in [Some(400), Some(401), Some(403), Some(404), Some(412), Some(416), Some(501)] {
            assert!(!is_transient_status(s), "{s:?}");
        }
    }

    #[test]
    fn backoff_and_retry_after() {
        let p = RetryPolicy { max_retries: 3, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        for attempt in 1..10 {
            let cap = Duration::from_millis(100 * (1 << (attempt - 1))).min(Duration::from_secs(1));
            let d = p.delay(attempt, None);
            assert!(d >= cap / 2 && d <= cap, "{attempt}: {d:?}");
        }
        assert_eq!(p.delay(1, Some(Duration::from_millis(300))), Duration::from_millis(300));
        assert_eq!(p.delay(1, Some(Duration::from_secs(60))), Duration::from_secs(1));
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}

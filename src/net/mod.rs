//! The pieces every HTTP client of the crate shares — Keystone, Glance and
//! the Swift backend alike: the configured `reqwest` client (TLS roots, CA
//! bundle, timeouts, redirect rule), error descriptions free of URLs and
//! secrets, the one retry policy ([`retry`]) and the one rate limiter
//! ([`ratelimit`]). Neutral ground: it imports neither `backend` nor
//! `openstack`, so both can use it.

pub mod ratelimit;
pub(crate) mod retry;

use reqwest::blocking::Client;
use std::path::PathBuf;
use std::time::Duration;

/// Renew a token this long before it expires, so a long upload does not
/// start with a token about to expire (Keystone sessions and Swift backends).
pub const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(300);

/// TLS settings of a client: an extra CA bundle (`cacert` / `OS_CACERT`) and
/// whether certificate verification is off (`verify: false` / `OS_INSECURE`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpOptions {
    pub cacert: Option<PathBuf>,
    pub insecure: bool,
}

/// The HTTP client for every OpenStack call (Keystone, Glance, Swift):
/// connect timeout 15 s, a default request timeout of 120 s (callers with
/// big bodies set their own per request), TCP keepalive, up to 16 idle pooled
/// connections per host, rustls with the platform's roots plus `cacert` if
/// given. Redirects are followed only within one origin (scheme, host, port):
/// the `X-Auth-Token` header goes with every request, and reqwest strips only
/// the standard credential headers when a redirect changes host.
/// The error is a sentence naming the CA file, never a secret.
pub fn http_client(opts: &HttpOptions) -> Result<Client, String> {
    let mut b = Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(120))
        .tcp_keepalive(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(16)
        .user_agent(concat!("imgarc/", env!("CARGO_PKG_VERSION")))
        .redirect(same_origin_redirects());
    if let Some(p) = &opts.cacert {
        let pem = std::fs::read(p).map_err(|e| format!("cannot read CA bundle {}: {e}", p.display()))?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("bad CA bundle {}: {}", p.display(), describe_reqwest(&e)))?;
        if certs.is_empty() {
            return Err(format!("CA bundle {} holds no certificate", p.display()));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if opts.insecure {
        crate::util::warn_once(
            "TLS certificate verification is disabled (verify: false / OS_INSECURE): tokens and image data can be intercepted",
        );
        b = b.danger_accept_invalid_certs(true);
    }
    b.build().map_err(|e| format!("cannot build HTTP client: {}", describe_reqwest(&e)))
}

/// Whether two URLs have one origin: the same scheme, host and port.
pub fn same_origin(a: &url::Url, b: &url::Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let from = attempt.previous().first().cloned();
        match from {
            _ if attempt.previous().len() > 10 => attempt.error("more than 10 redirects"),
            Some(from) if !same_origin(&from, attempt.url()) => {
                // The origin only: a Location's user:password never reaches an error message.
                let to = attempt.url().origin().ascii_serialization();
                attempt.error(format!("refused a redirect to another host ({to}): the auth token is never sent there"))
            }
            _ => attempt.follow(),
        }
    })
}

/// Describe a reqwest error without its URL (callers add their own,
/// secret-free) and with its source chain (e.g. "connection refused").
pub fn describe_reqwest(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut msg = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_body() || e.is_decode() {
        "error reading the response body".to_string()
    } else if e.is_request() {
        "request failed".to_string()
    } else {
        "HTTP error".to_string()
    };
    let mut src = e.source();
    let mut last = String::new();
    while let Some(s) = src {
        let t = s.to_string();
        if !t.is_empty() && t != last && !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
            last = t;
        }
        src = s.source();
    }
    msg
}

/// Shorten a server error body to something printable; drops HTML tags and
/// prefers the `error.message` of an OpenStack JSON error.
pub fn short_body(body: &str) -> String {
    let mut t = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                t.push(' ');
            }
            _ if !in_tag => t.push(c),
            _ => {}
        }
    }
    let t = t.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        // Keystone: {"error":{"message":..}}; Glance sometimes returns JSON too
        if let Some(m) = v.pointer("/error/message").and_then(|m| m.as_str()) {
            return truncate(m, 300);
        }
    }
    truncate(&t, 300)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut o: String = s.chars().take(n).collect();
        o.push('…');
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cacert_errors_are_clear() {
        let e = http_client(&HttpOptions { cacert: Some("/nonexistent/ca.pem".into()), insecure: false }).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("empty.pem");
        std::fs::write(&p, "not a certificate\n").unwrap();
        let e = http_client(&HttpOptions { cacert: Some(p.clone()), insecure: false }).unwrap_err();
        assert!(e.contains("empty.pem"), "{e}");
        http_client(&HttpOptions { cacert: None, insecure: true }).unwrap();
    }

    #[test]
    fn short_bodies() {
        assert_eq!(
            short_body(r#"{"error":{"message":"The request you have made requires authentication.","code":401}}"#),
            "The request you have made requires authentication."
        );
        assert_eq!(short_body("<html><h1>503 Service Unavailable</h1></html>"), "503 Service Unavailable");
        assert_eq!(short_body(&"x".repeat(400)).chars().count(), 301);
    }
}

//! Resumable image download: a `Read` over `GET /v2/images/{id}/file` that
//! retries transient failures, resumes with `Range` after an interruption,
//! and refuses to pass off a short or restarted stream as the image.

use super::super::{Error, Result};
use super::client::GlanceClient;
use super::record::ImageRecord;
use reqwest::blocking::Response;
use reqwest::Method;
use std::io::{self, Read};

impl GlanceClient {
    /// Start streaming the image data. Fails now (clearly) for an image
    /// that is not active, has no data or does not exist. The returned
    /// reader retries and resumes (HTTP Range) on its own.
    pub fn download(&self, rec: &ImageRecord) -> Result<ImageDownload> {
        if let Some(r) = rec.not_downloadable_reason() {
            return Err(Error::NotActive { id: rec.id.clone(), status: rec.status.clone(), reason: r });
        }
        let mut d = ImageDownload {
            client: self.clone(),
            id: rec.id.clone(),
            url: self.api.url(&["images", &rec.id, "file"]),
            expected: rec.size,
            total: None,
            pos: 0,
            resp: None,
            accept_ranges: None,
            content_md5: None,
            failures: 0,
            resumes: 0,
            done: false,
        };
        d.open()?;
        Ok(d)
    }
}

/// Streaming image data (`impl Read + Send`). Transient failures before or
/// during the transfer are retried; after bytes were delivered it resumes
/// with `Range: bytes=<pos>-` and fails clearly if the server answers 200
/// instead of 206. A stream that ends before `Content-Length` (or the
/// record's `size`) counts as an interruption. Errors are `io::Error`s
/// wrapping [`Error`] (`err.get_ref()` + `downcast_ref::<Error>()`).
pub struct ImageDownload {
    client: GlanceClient,
    id: String,
    url: String,
    expected: Option<u64>,
    total: Option<u64>,
    pos: u64,
    resp: Option<Response>,
    accept_ranges: Option<bool>,
    content_md5: Option<String>,
    failures: u32,
    resumes: u32,
    done: bool,
}

impl std::fmt::Debug for ImageDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageDownload").field("id", &self.id).field("pos", &self.pos).field("total", &self.total).finish()
    }
}

impl ImageDownload {
    /// Total size (from `Content-Length` / `Content-Range`).
    pub fn total(&self) -> Option<u64> {
        self.total
    }
    /// Bytes delivered so far.
    pub fn position(&self) -> u64 {
        self.pos
    }
    /// `Content-MD5` of the first response (Glance sends the md5 hex of the whole image).
    pub fn content_md5(&self) -> Option<&str> {
        self.content_md5.as_deref()
    }
    /// How many times the transfer was resumed with Range after an interruption.
    pub fn resumes(&self) -> u32 {
        self.resumes
    }

    fn err(&self, message: String) -> Error {
        Error::Download { id: self.id.clone(), message }
    }

    /// (Re)open at `self.pos`, retrying transient failures.
    fn open(&mut self) -> Result<()> {
        let pos = self.pos;
        let range = if pos > 0 { Some(format!("bytes={pos}-")) } else { None };
        let accept: &[u16] = &[204, 416];
        let resp = self.client.api.send(Method::GET, &self.url, true, accept, &|rb| match &range {
            Some(r) => rb.header("Range", r),
            None => rb,
        })?;
        let st = resp.status().as_u16();
        let h = resp.headers();
        let hs = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        match st {
            204 => {
                return Err(Error::NotActive {
                    id: self.id.clone(),
                    status: "unknown".into(),
                    reason: "Glance has no data for it (HTTP 204)".into(),
                })
            }
            416 if Some(pos) == self.total => {
                self.done = true;
                return Ok(());
            }
            416 => return Err(self.err(format!("server refused the range starting at byte {pos} (HTTP 416)"))),
            206 => {
                let cr = hs("content-range").unwrap_or_default();
                let (start, total) = parse_content_range(&cr)
                    .ok_or_else(|| self.err(format!("bad Content-Range {cr:?} in the resumed download")))?;
                if start != pos {
                    return Err(self.err(format!("asked to resume at byte {pos}, server sent from {start}")));
                }
                if let (Some(t), Some(old)) = (total, self.total) {
                    if t != old {
                        return Err(self.err(format!("image size changed during download: {old} then {t} bytes")));
                    }
                }
                self.accept_ranges = Some(true);
            }
            _ if pos > 0 => {
                return Err(self.err(format!(
                    "interrupted at byte {pos} of {} and the server does not support Range (answered HTTP {st} instead of 206), so it cannot resume; retry the whole download",
                    self.total.map(|t| t.to_string()).unwrap_or_else(|| "?".into())
                )))
            }
            _ => {
                let len = resp.content_length();
                if let (Some(l), Some(e)) = (len, self.expected) {
                    if l != e {
                        return Err(self.err(format!("server sends {l} bytes but the image record says size {e}")));
                    }
                }
                self.total = len.or(self.expected);
                self.accept_ranges = Some(hs("accept-ranges").is_some_and(|v| v.contains("bytes")));
                if self.content_md5.is_none() {
                    self.content_md5 = hs("content-md5");
                }
            }
        }
        self.resp = Some(resp);
        Ok(())
    }

    fn interrupted(&mut self, why: String) -> io::Result<()> {
        self.resp = None;
        let p = self.client.api.retry.clone();
        let of = self.total.map(|t| format!(" of {t}")).unwrap_or_default();
        let mut why = why;
        loop {
            self.failures += 1;
            if self.failures > p.max_retries {
                return Err(io::Error::other(
                    self.err(format!("interrupted at byte {}{of}: {why}; gave up after {} retries", self.pos, p.max_retries)),
                ));
            }
            let d = p.delay(self.failures, None);
            tracing::info!(
                "glance: download of image {}: {why} at byte {}{of}; {} in {:.1}s (retry {}/{})",
                self.id,
                self.pos,
                if self.pos > 0 { "resuming with Range" } else { "restarting" },
                d.as_secs_f64(),
                self.failures,
                p.max_retries
            );
            std::thread::sleep(d);
            // one attempt per failure here: this loop owns the retry budget
            match self.open_once() {
                Ok(()) => {
                    if self.pos > 0 {
                        self.resumes += 1;
                    }
                    return Ok(());
                }
                Err(e @ (Error::Transport { .. } | Error::Auth { .. })) => why = e.to_string(),
                Err(Error::Http { status, message, .. }) if crate::net::retry::is_transient_status(Some(status)) => {
                    why = format!("HTTP {status}: {message}")
                }
                Err(e @ Error::Download { .. }) => return Err(io::Error::other(e)),
                Err(e) => return Err(io::Error::other(self.err(format!("interrupted at byte {}{of} ({why}), then: {e}", self.pos)))),
            }
        }
    }

    fn open_once(&mut self) -> Result<()> {
        let saved = self.client.api.retry.clone();
        self.client.api.retry.max_retries = 0;
        let r = self.open();
        self.client.api.retry = saved;
        r
    }
}

/// `bytes 100-199/1000` → (100, Some(1000)); `/*` → None total.
pub(super) fn parse_content_range(s: &str) -> Option<(u64, Option<u64>)> {
    let r = s.trim().strip_prefix("bytes")?.trim();
    let (range, total) = r.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

impl Read for ImageDownload {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.done {
                return Ok(0);
            }
            let Some(resp) = self.resp.as_mut() else {
                // a previous reopen failed and was reported; try once more
                self.interrupted("no open connection".into())?;
                continue;
            };
            match resp.read(buf) {
                Ok(0) => match self.total {
                    Some(t) if self.pos < t => {
                        let why = format!("connection closed early ({} bytes short)", t - self.pos);
                        self.interrupted(why)?;
                    }
                    _ => {
                        self.done = true;
                        self.resp = None;
                        return Ok(0);
                    }
                },
                Ok(n) => {
                    self.pos += n as u64;
                    self.failures = 0;
                    if let Some(t) = self.total {
                        if self.pos > t {
                            return Err(io::Error::other(self.err(format!("server sent more than the {t} bytes announced"))));
                        }
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let why = self.client.api.scrub(io_reason(&e));
                    self.interrupted(why)?;
                }
            }
        }
    }
}

fn io_reason(e: &io::Error) -> String {
    use std::error::Error as _;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    s
}

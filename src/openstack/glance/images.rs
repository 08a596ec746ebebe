//! Image operations on a [`GlanceClient`]: lookup by id or unique name,
//! paged listing, create, update (JSON patch), upload by PUT or stage +
//! import, waiting for `active`, delete.

use super::super::{describe_reqwest, Error, Result};
use super::client::{GlanceClient, UPLOAD_TIMEOUT};
use super::record::ImageRecord;
use reqwest::blocking::Body;
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::io::Read;
use std::time::{Duration, Instant};

/// How [`GlanceClient::upload_with`] sends the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMethod {
    /// `PUT /v2/images/{id}/file`.
    Put,
    /// `PUT /v2/images/{id}/stage` then `POST /v2/images/{id}/import` (glance-direct).
    GlanceDirect,
}

impl GlanceClient {
    /// `GET /v2/images/{id}`.
    pub fn get(&self, id: &str) -> Result<ImageRecord> {
        let url = self.api.url(&["images", id]);
        match self.api.get_json(&url) {
            Err(Error::NotFound(_)) => Err(Error::NotFound(format!("image {id:?} at {}", self.api.base))),
            r => ImageRecord::from_json(r?),
        }
    }

    /// Find an image by id, or else by exact, unique name.
    pub fn image(&self, id_or_name: &str) -> Result<ImageRecord> {
        super::super::api::by_id_or_unique_name(
            id_or_name,
            "image",
            &self.api.base,
            |id| self.get(id),
            |name| self.list_filtered(&[("name", name)], 100),
            |r| &r.id,
        )
    }

    /// All images visible to the caller (follows `next` links).
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        self.list_filtered(&[], 200)
    }

    /// Images matching Glance filters (`name`, `status`, `visibility`,
    /// `sort`...), fetched `page_size` at a time (max 1000).
    pub fn list_filtered(&self, filters: &[(&str, &str)], page_size: u32) -> Result<Vec<ImageRecord>> {
        let mut u = url::Url::parse(&self.api.url(&["images"])).expect("valid url");
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in filters {
                q.append_pair(k, v);
            }
            q.append_pair("limit", &page_size.clamp(1, 1000).to_string());
        }
        let mut next = Some(u.to_string());
        let mut out = Vec::new();
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > 100_000 {
                return Err(Error::Config("image list does not end (more than 100000 pages)".into()));
            }
            let v = self.api.get_json(&url)?;
            for img in v["images"].as_array().into_iter().flatten() {
                out.push(ImageRecord::from_json(img.clone())?);
            }
            next = v["next"].as_str().map(|n| self.api.join_link(n)).transpose()?;
            if v["images"].as_array().is_none_or(|a| a.is_empty()) {
                break;
            }
        }
        Ok(out)
    }

    /// `POST /v2/images`: create an image record (status `queued`).
    pub fn create(&self, meta: &Map<String, Value>) -> Result<ImageRecord> {
        let url = self.api.url(&["images"]);
        let body = Value::Object(meta.clone());
        let resp = self.api.send(Method::POST, &url, false, &[], &|rb| rb.json(&body))?;
        let v: Value = resp.json().map_err(|e| Error::Transport {
            method: "POST".into(),
            url: url.clone(),
            message: format!("bad JSON: {}", describe_reqwest(&e)),
        })?;
        ImageRecord::from_json(v)
    }

    /// `PATCH /v2/images/{id}` with JSON-patch `ops`
    /// (e.g. `[{"op":"replace","path":"/protected","value":true}]`).
    pub fn update(&self, id: &str, ops: &[Value]) -> Result<ImageRecord> {
        let url = self.api.url(&["images", id]);
        let body = serde_json::to_vec(ops).expect("json");
        let resp = self.api.send(Method::PATCH, &url, false, &[], &|rb| {
            rb.header("Content-Type", "application/openstack-images-v2.1-json-patch").body(body.clone())
        })?;
        ImageRecord::from_json(resp.json().map_err(|e| Error::Transport {
            method: "PATCH".into(),
            url: url.clone(),
            message: describe_reqwest(&e),
        })?)
    }

    fn put_stream(&self, id: &str, what: &str, reader: Box<dyn Read + Send>, size: Option<u64>) -> Result<()> {
        let url = self.api.url(&["images", id, what]);
        let (token, _) = self.api.token()?; // fresh (renewed if near expiry): a streamed body cannot be replayed
        let body = match size {
            Some(n) => Body::sized(reader, n),
            None => Body::new(reader), // chunked
        };
        let mut rb = self.api.http.put(&url).timeout(UPLOAD_TIMEOUT).header("Content-Type", "application/octet-stream").body(body);
        if let Some(t) = &token {
            rb = rb.header("X-Auth-Token", t.expose());
        }
        let resp = rb.send().map_err(|e| Error::Transport {
            method: "PUT".into(),
            url: url.clone(),
            message: self.api.scrub(describe_reqwest(&e)),
        })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.api.http_error(&Method::PUT, &url, resp))
        }
    }

    /// `PUT /v2/images/{id}/file`: stream the data (chunked when `size` is
    /// `None`). Not retried: the reader cannot be replayed. After a failure
    /// Glance may leave the image unusable: delete it and start over.
    pub fn upload(&self, id: &str, reader: impl Read + Send + 'static, size: Option<u64>) -> Result<()> {
        self.put_stream(id, "file", Box::new(reader), size)
    }

    /// `PUT /v2/images/{id}/stage` (first half of glance-direct).
    pub fn stage(&self, id: &str, reader: impl Read + Send + 'static, size: Option<u64>) -> Result<()> {
        self.put_stream(id, "stage", Box::new(reader), size)
    }

    /// `POST /v2/images/{id}/import` with `method` (e.g. "glance-direct").
    pub fn import(&self, id: &str, method: &str) -> Result<()> {
        let url = self.api.url(&["images", id, "import"]);
        let body = json!({ "method": { "name": method } });
        self.api.send(Method::POST, &url, false, &[], &|rb| rb.json(&body))?;
        Ok(())
    }

    /// Import methods the cloud enables (`GET /v2/info/import`).
    pub fn import_methods(&self) -> Result<Vec<String>> {
        let v = self.api.get_json(&self.api.url(&["info", "import"]))?;
        Ok(v.pointer("/import-methods/value")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_string)).collect())
            .unwrap_or_default())
    }

    /// Upload with the given method; glance-direct fails clearly if the
    /// cloud does not enable it. Call [`GlanceClient::wait_active`] after.
    pub fn upload_with(&self, id: &str, reader: impl Read + Send + 'static, size: Option<u64>, method: UploadMethod) -> Result<()> {
        match method {
            UploadMethod::Put => self.upload(id, reader, size),
            UploadMethod::GlanceDirect => {
                let m = self.import_methods()?;
                if !m.iter().any(|m| m == "glance-direct") {
                    return Err(Error::Config(format!(
                        "the cloud at {} does not enable glance-direct import (methods: {})",
                        self.api.base,
                        if m.is_empty() { "none".into() } else { m.join(", ") }
                    )));
                }
                self.stage(id, reader, size)?;
                self.import(id, "glance-direct")
            }
        }
    }

    /// Poll until the image is `active`; fails on `killed`/`deleted`/
    /// `deactivated`, on a failed import (with the task's message) or after
    /// `timeout`.
    pub fn wait_active(&self, id: &str, timeout: Duration) -> Result<ImageRecord> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            let rec = self.get(id)?;
            match rec.status.as_str() {
                "active" => return Ok(rec),
                "killed" | "deleted" | "pending_delete" | "deactivated" => {
                    return Err(Error::Wait { id: id.into(), message: format!("went to status {:?}", rec.status) })
                }
                _ => {}
            }
            let failed = rec.properties.get("os_glance_failed_import").and_then(|v| v.as_str()).unwrap_or("");
            if !failed.is_empty() {
                let detail = self.task_message(id).unwrap_or_default();
                return Err(Error::Wait {
                    id: id.into(),
                    message: format!("import failed for store(s) {failed:?} (status {:?}){detail}", rec.status),
                });
            }
            if start.elapsed() >= timeout {
                return Err(Error::Wait { id: id.into(), message: format!("still {:?} after {:.0}s", rec.status, timeout.as_secs_f64()) });
            }
            std::thread::sleep(delay.min(timeout.saturating_sub(start.elapsed())));
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    fn task_message(&self, id: &str) -> Option<String> {
        let v = self.api.get_json(&self.api.url(&["images", id, "tasks"])).ok()?;
        let t = v["tasks"].as_array()?.iter().find(|t| t["status"] == "failure")?;
        Some(format!(": task {}: {}", t["id"].as_str().unwrap_or("?"), t["message"].as_str().unwrap_or("")))
    }

    /// `DELETE /v2/images/{id}`.
    pub fn delete(&self, id: &str) -> Result<()> {
        let url = self.api.url(&["images", id]);
        match self.api.send(Method::DELETE, &url, true, &[], &|rb| rb) {
            Err(Error::NotFound(_)) => Err(Error::NotFound(format!("image {id:?} at {}", self.api.base))),
            r => r.map(|_| ()),
        }
    }
}

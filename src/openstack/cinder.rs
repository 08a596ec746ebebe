//! Cinder block-storage API v3 (microversion 3.44): volumes, volume
//! snapshots, attachments and the `os-volume_upload_image` action, with
//! typed records and a wait that fails fast on error states. The request
//! path (token, 401 renewal, retries, scrubbed errors) is the shared
//! [`ApiClient`]. The workflows that use it (archive a volume through a
//! scratch image, restore into a volume) are in `crate::volumes`.

use super::api::{ApiClient, Auth};
use super::keystone::Session;
use super::{Error, Result};
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

/// The microversion every request asks for: 3.44 brings the attachment API
/// (`attachment create` + `complete`), which marks a volume in-use without Nova.
pub const MICROVERSION: &str = "3.44";

/// A Cinder v3 client for the session's project. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct CinderClient {
    api: ApiClient,
}

impl std::fmt::Debug for CinderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CinderClient").field("endpoint", &self.api.base).finish()
    }
}

/// A volume (`GET /volumes/{id}`). Sizes are whole GiB, as Cinder counts them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Volume {
    pub id: String,
    pub name: Option<String>,
    pub status: String,
    /// GiB.
    pub size: u64,
    pub volume_type: Option<String>,
    pub bootable: bool,
    pub description: Option<String>,
    pub availability_zone: Option<String>,
    pub multiattach: bool,
    /// The `attachments` list as Cinder sent it (server ids, devices).
    pub attachments: Vec<Value>,
    pub metadata: Map<String, Value>,
    /// The Glance image a volume was made from (`image_id`, `checksum`, `hw_*` …).
    pub volume_image_metadata: Map<String, Value>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    /// The record as Cinder returned it.
    pub raw: Value,
}

/// A volume snapshot (`GET /snapshots/{id}`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VolumeSnapshot {
    pub id: String,
    pub name: Option<String>,
    pub status: String,
    pub volume_id: String,
    /// GiB.
    pub size: u64,
    pub description: Option<String>,
    pub metadata: Map<String, Value>,
    pub created_at: Option<String>,
    pub raw: Value,
}

/// What `POST /volumes` creates; unset fields are left to Cinder.
#[derive(Debug, Clone, Default)]
pub struct NewVolume {
    pub name: String,
    /// GiB; with a source, at least the source's size.
    pub size: u64,
    pub snapshot_id: Option<String>,
    pub image_id: Option<String>,
    pub volume_type: Option<String>,
    pub availability_zone: Option<String>,
    pub description: Option<String>,
    pub metadata: Map<String, Value>,
}

fn obj_map(v: &Value, k: &str) -> Map<String, Value> {
    v.get(k).and_then(|m| m.as_object()).cloned().unwrap_or_default()
}

fn opt_str(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(|x| x.as_str()).map(str::to_string)
}

impl Volume {
    pub fn from_json(raw: Value) -> Result<Volume> {
        let id = opt_str(&raw, "id").ok_or_else(|| Error::Config("volume record has no id".into()))?;
        Ok(Volume {
            id,
            name: opt_str(&raw, "name").filter(|n| !n.is_empty()),
            status: opt_str(&raw, "status").unwrap_or_default(),
            size: raw.get("size").and_then(|s| s.as_u64()).unwrap_or(0),
            volume_type: opt_str(&raw, "volume_type"),
            // Cinder sends the flag as the string "true"/"false".
            bootable: match raw.get("bootable") {
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
                _ => false,
            },
            description: opt_str(&raw, "description"),
            availability_zone: opt_str(&raw, "availability_zone"),
            multiattach: raw.get("multiattach").and_then(|m| m.as_bool()).unwrap_or(false),
            attachments: raw.get("attachments").and_then(|a| a.as_array()).cloned().unwrap_or_default(),
            metadata: obj_map(&raw, "metadata"),
            volume_image_metadata: obj_map(&raw, "volume_image_metadata"),
            created_at: opt_str(&raw, "created_at"),
            updated_at: opt_str(&raw, "updated_at"),
            raw,
        })
    }

    /// The volume's name, else its id.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

impl VolumeSnapshot {
    pub fn from_json(raw: Value) -> Result<VolumeSnapshot> {
        let id = opt_str(&raw, "id").ok_or_else(|| Error::Config("snapshot record has no id".into()))?;
        Ok(VolumeSnapshot {
            id,
            name: opt_str(&raw, "name").filter(|n| !n.is_empty()),
            status: opt_str(&raw, "status").unwrap_or_default(),
            volume_id: opt_str(&raw, "volume_id").unwrap_or_default(),
            size: raw.get("size").and_then(|s| s.as_u64()).unwrap_or(0),
            description: opt_str(&raw, "description"),
            metadata: obj_map(&raw, "metadata"),
            created_at: opt_str(&raw, "created_at"),
            raw,
        })
    }
}

/// Statuses a volume or snapshot does not leave by itself: waiting for any
/// other status fails at once when one of these is reached.
pub const ERROR_STATUSES: &[&str] = &["error", "error_deleting", "error_restoring", "error_extending", "error_managing"];

impl CinderClient {
    /// Client for the block-storage endpoint of an authenticated session
    /// (`block-storage`, else `volumev3` in the catalog).
    pub fn new(session: &Session) -> Result<CinderClient> {
        let c = session.config();
        let found = session
            .endpoint_for("block-storage", c.region_name.as_deref(), &c.interface)
            .or_else(|_| session.endpoint_for("volumev3", c.region_name.as_deref(), &c.interface))
            .map_err(|e| session.explain(e))?;
        Ok(CinderClient { api: Self::api(session.http().clone(), &found, Auth::Session(session.clone()))? })
    }

    /// Client for an explicit endpoint (`…/v3/<project_id>`) with a fixed token (tests, `OS_TOKEN`).
    pub fn standalone(url: &str, token: Option<super::Secret>) -> Result<CinderClient> {
        let http = super::keystone::http_client(&Default::default())?;
        Ok(CinderClient { api: Self::api(http, url, Auth::Static(token))? })
    }

    fn api(http: reqwest::blocking::Client, url: &str, auth: Auth) -> Result<ApiClient> {
        Ok(ApiClient {
            http,
            base: super::api::normalize_base(url, "Cinder", &[])?,
            prefix: &[],
            service: "cinder",
            headers: vec![("OpenStack-API-Version", format!("volume {MICROVERSION}"))],
            auth,
            retry: super::api::RetryPolicy::openstack_api(),
        })
    }

    /// Replace the retry policy.
    pub fn with_retry(mut self, retry: super::api::RetryPolicy) -> Self {
        self.api.retry = retry;
        self
    }

    /// Endpoint root (`…/v3/<project_id>`).
    pub fn endpoint(&self) -> &str {
        &self.api.base
    }

    fn post(&self, segments: &[&str], body: &Value, accept: &[u16]) -> Result<Value> {
        let url = self.api.url(segments);
        let resp = self.api.send(Method::POST, &url, false, accept, &|rb| rb.header("Accept", "application/json").json(body))?;
        if resp.content_length() == Some(0) || resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let text =
            resp.text().map_err(|e| Error::Transport { method: "POST".into(), url: url.clone(), message: super::describe_reqwest(&e) })?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| Error::Transport { method: "POST".into(), url, message: format!("bad JSON: {e}") })
    }

    fn delete_at(&self, segments: &[&str], what: &str) -> Result<()> {
        let url = self.api.url(segments);
        match self.api.send(Method::DELETE, &url, true, &[], &|rb| rb) {
            Err(Error::NotFound(_)) => Err(Error::NotFound(format!("{what} at {}", self.api.base))),
            r => r.map(|_| ()),
        }
    }

    /// `GET` of a paged list (`volumes/detail`, `snapshots/detail`) with query
    /// `filters`, following `<key>_links` `next`.
    fn list_paged(&self, segments: &[&str], key: &str, filters: &[(&str, &str)]) -> Result<Vec<Value>> {
        let mut u = url::Url::parse(&self.api.url(segments)).expect("valid url");
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in filters {
                q.append_pair(k, v);
            }
            q.append_pair("limit", "500");
        }
        let mut next = Some(u.to_string());
        let mut out = Vec::new();
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > 100_000 {
                return Err(Error::Config(format!("the {key} list does not end (more than 100000 pages)")));
            }
            let v = self.api.get_json(&url)?;
            let items = v[key].as_array().cloned().unwrap_or_default();
            let links = format!("{key}_links");
            next = v[links.as_str()]
                .as_array()
                .and_then(|l| l.iter().find(|l| l["rel"] == "next"))
                .and_then(|l| l["href"].as_str())
                .map(|h| self.api.join_link(h))
                .transpose()?;
            if items.is_empty() {
                break;
            }
            out.extend(items);
        }
        Ok(out)
    }

    // ---- volumes ----

    /// `GET /volumes/{id}`.
    pub fn get_volume(&self, id: &str) -> Result<Volume> {
        let url = self.api.url(&["volumes", id]);
        match self.api.get_json(&url) {
            Err(Error::NotFound(_)) => Err(Error::NotFound(format!("volume {id:?} at {}", self.api.base))),
            r => Volume::from_json(r?["volume"].take()),
        }
    }

    /// A volume by id, or else by exact, unique name.
    pub fn volume(&self, id_or_name: &str) -> Result<Volume> {
        super::api::by_id_or_unique_name(
            id_or_name,
            "volume",
            &self.api.base,
            |id| self.get_volume(id),
            |name| Ok(self.list_volumes(&[("name", name)])?.into_iter().filter(|v| v.name.as_deref() == Some(name)).collect()),
            |v| &v.id,
        )
    }

    /// `GET /volumes/detail` with Cinder filters (`name`, `status`, `all_tenants=1`,
    /// `project_id`, `metadata={"k":"v"}`), every page.
    pub fn list_volumes(&self, filters: &[(&str, &str)]) -> Result<Vec<Volume>> {
        self.list_paged(&["volumes", "detail"], "volumes", filters)?.into_iter().map(Volume::from_json).collect()
    }

    /// `POST /volumes`.
    pub fn create_volume(&self, v: &NewVolume) -> Result<Volume> {
        let mut body = Map::new();
        body.insert("name".into(), json!(v.name));
        body.insert("size".into(), json!(v.size));
        for (k, val) in [
            ("snapshot_id", &v.snapshot_id),
            ("imageRef", &v.image_id),
            ("volume_type", &v.volume_type),
            ("availability_zone", &v.availability_zone),
            ("description", &v.description),
        ] {
            if let Some(val) = val {
                body.insert(k.into(), json!(val));
            }
        }
        if !v.metadata.is_empty() {
            body.insert("metadata".into(), Value::Object(v.metadata.clone()));
        }
        let mut r = self.post(&["volumes"], &json!({ "volume": body }), &[])?;
        Volume::from_json(r["volume"].take())
    }

    /// `DELETE /volumes/{id}` (Cinder deletes in the background: [`CinderClient::wait_volume_gone`]).
    pub fn delete_volume(&self, id: &str) -> Result<()> {
        self.delete_at(&["volumes", id], &format!("volume {id:?}"))
    }

    /// `PUT /volumes/{id}`: a new name (and description, if given).
    pub fn rename_volume(&self, id: &str, name: &str, description: Option<&str>) -> Result<Volume> {
        let url = self.api.url(&["volumes", id]);
        let mut body = json!({ "volume": { "name": name } });
        if let Some(d) = description {
            body["volume"]["description"] = json!(d);
        }
        let resp = self.api.send(Method::PUT, &url, false, &[], &|rb| rb.header("Accept", "application/json").json(&body))?;
        let mut v: Value =
            resp.json().map_err(|e| Error::Transport { method: "PUT".into(), url: url.clone(), message: super::describe_reqwest(&e) })?;
        Volume::from_json(v["volume"].take())
    }

    /// `DELETE /volumes/{id}/metadata/{key}` (an absent key is not an error).
    pub fn delete_volume_metadata(&self, id: &str, key: &str) -> Result<()> {
        match self.delete_at(&["volumes", id, "metadata", key], &format!("metadata {key:?} of volume {id:?}")) {
            Err(Error::NotFound(_)) => Ok(()),
            r => r,
        }
    }

    /// `os-set_bootable`.
    pub fn set_bootable(&self, id: &str, bootable: bool) -> Result<()> {
        self.post(&["volumes", id, "action"], &json!({ "os-set_bootable": { "bootable": bootable } }), &[]).map(|_| ())
    }

    /// `os-volume_upload_image`: Cinder writes the volume into a new Glance image
    /// (`disk_format` qcow2 or raw, container bare) and returns its id. With
    /// `force`, an in-use volume is uploaded too (a crash-consistent copy).
    pub fn upload_to_image(&self, id: &str, image_name: &str, disk_format: &str, force: bool) -> Result<String> {
        let body = json!({ "os-volume_upload_image": {
            "image_name": image_name, "disk_format": disk_format, "container_format": "bare", "force": force } });
        let v = self.post(&["volumes", id, "action"], &body, &[])?;
        v.pointer("/os-volume_upload_image/image_id")
            .and_then(|i| i.as_str())
            .map(str::to_string)
            .ok_or_else(|| Error::Config(format!("upload of volume {id} to an image: Cinder's answer names no image_id")))
    }

    /// Polls until the volume's status is one of `want`; fails on an
    /// [`ERROR_STATUSES`] status, on a vanished volume, or after `timeout`.
    pub fn wait_volume(&self, id: &str, want: &[&str], timeout: Duration) -> Result<Volume> {
        wait(timeout, &format!("volume {id}"), want, || self.get_volume(id).map(|v| (v.status.clone(), v)))
    }

    /// Polls until `GET /volumes/{id}` is 404 (deleted), or fails after `timeout`.
    pub fn wait_volume_gone(&self, id: &str, timeout: Duration) -> Result<()> {
        wait_gone(timeout, &format!("volume {id}"), || self.get_volume(id).map(|v| v.status))
    }

    // ---- snapshots ----

    /// `GET /snapshots/{id}`.
    pub fn get_snapshot(&self, id: &str) -> Result<VolumeSnapshot> {
        let url = self.api.url(&["snapshots", id]);
        match self.api.get_json(&url) {
            Err(Error::NotFound(_)) => Err(Error::NotFound(format!("volume snapshot {id:?} at {}", self.api.base))),
            r => VolumeSnapshot::from_json(r?["snapshot"].take()),
        }
    }

    /// `GET /snapshots/detail` with filters (`name`, `volume_id`, `status`, `all_tenants=1`).
    pub fn list_snapshots(&self, filters: &[(&str, &str)]) -> Result<Vec<VolumeSnapshot>> {
        self.list_paged(&["snapshots", "detail"], "snapshots", filters)?.into_iter().map(VolumeSnapshot::from_json).collect()
    }

    /// `POST /snapshots` of `volume_id`; `force` snapshots an in-use volume.
    pub fn create_snapshot(&self, volume_id: &str, name: &str, force: bool, metadata: &Map<String, Value>) -> Result<VolumeSnapshot> {
        let body = json!({ "snapshot": { "volume_id": volume_id, "name": name, "force": force, "metadata": metadata } });
        let mut r = self.post(&["snapshots"], &body, &[])?;
        VolumeSnapshot::from_json(r["snapshot"].take())
    }

    /// `DELETE /snapshots/{id}`.
    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        self.delete_at(&["snapshots", id], &format!("volume snapshot {id:?}"))
    }

    /// [`CinderClient::wait_volume`] for a snapshot.
    pub fn wait_snapshot(&self, id: &str, want: &[&str], timeout: Duration) -> Result<VolumeSnapshot> {
        wait(timeout, &format!("volume snapshot {id}"), want, || self.get_snapshot(id).map(|s| (s.status.clone(), s)))
    }

    /// [`CinderClient::wait_volume_gone`] for a snapshot.
    pub fn wait_snapshot_gone(&self, id: &str, timeout: Duration) -> Result<()> {
        wait_gone(timeout, &format!("volume snapshot {id}"), || self.get_snapshot(id).map(|s| s.status))
    }

    // ---- attachments (3.27+; complete 3.44) ----

    /// `POST /attachments` for `instance_uuid` with a connector, so that the volume
    /// is reserved and (after [`CinderClient::complete_attachment`]) `in-use`. Returns the attachment id.
    pub fn create_attachment(&self, volume_id: &str, instance_uuid: &str, connector: Option<&Value>) -> Result<String> {
        let mut att = json!({ "volume_uuid": volume_id, "instance_uuid": instance_uuid });
        if let Some(c) = connector {
            att["connector"] = c.clone();
        }
        let v = self.post(&["attachments"], &json!({ "attachment": att }), &[])?;
        v.pointer("/attachment/id")
            .and_then(|i| i.as_str())
            .map(str::to_string)
            .ok_or_else(|| Error::Config("attachment create: Cinder's answer names no attachment id".into()))
    }

    /// `POST /attachments/{id}/action` `os-complete`: the volume becomes `in-use`.
    pub fn complete_attachment(&self, attachment_id: &str) -> Result<()> {
        self.post(&["attachments", attachment_id, "action"], &json!({ "os-complete": null }), &[]).map(|_| ())
    }

    /// `DELETE /attachments/{id}`: detaches.
    pub fn delete_attachment(&self, attachment_id: &str) -> Result<()> {
        self.delete_at(&["attachments", attachment_id], &format!("attachment {attachment_id:?}"))
    }
}

/// Polls `get` (→ status and record) until the status is one of `want`.
fn wait<T>(timeout: Duration, what: &str, want: &[&str], get: impl Fn() -> Result<(String, T)>) -> Result<T> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        let (status, rec) = get()?;
        if want.contains(&status.as_str()) {
            return Ok(rec);
        }
        if ERROR_STATUSES.contains(&status.as_str()) {
            return Err(Error::WaitFor {
                what: what.into(),
                message: format!("went to status {status:?} (waiting for {})", want.join("/")),
            });
        }
        if start.elapsed() >= timeout {
            return Err(Error::Wait {
                id: what.into(),
                message: format!("still {status:?} after {:.0}s (waiting for {})", timeout.as_secs_f64(), want.join("/")),
            });
        }
        std::thread::sleep(delay.min(timeout.saturating_sub(start.elapsed())));
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Polls `get` until it answers 404.
fn wait_gone(timeout: Duration, what: &str, get: impl Fn() -> Result<String>) -> Result<()> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        match get() {
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
            Ok(status) if status == "error_deleting" => {
                return Err(Error::WaitFor { what: what.into(), message: "went to status \"error_deleting\"".into() })
            }
            Ok(status) if start.elapsed() >= timeout => {
                return Err(Error::WaitFor {
                    what: what.into(),
                    message: format!("still {status:?} after {:.0}s (waiting for it to be deleted)", timeout.as_secs_f64()),
                })
            }
            Ok(_) => {}
        }
        std::thread::sleep(delay.min(timeout.saturating_sub(start.elapsed())));
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_volume_records_never_panic() {
        for raw in [
            json!({}),
            json!(null),
            json!([1, 2]),
            json!("volume"),
            json!({"id": 7}),
            json!({"id": ""}),
            json!({"id": "v", "size": "big", "bootable": 1, "attachments": "x", "metadata": [1], "name": 5}),
            json!({"id": "v", "size": u64::MAX, "status": {"a": 1}, "volume_image_metadata": "x"}),
            json!({"id": "v", "size": -1}),
            json!({"id": "v", "size": 1e300}),
        ] {
            let _ = Volume::from_json(raw.clone());
            let _ = VolumeSnapshot::from_json(raw);
        }
        assert!(Volume::from_json(json!({})).is_err());
        assert!(VolumeSnapshot::from_json(json!({"id": 3})).is_err());
        let v = Volume::from_json(json!({"id": "v", "size": u64::MAX, "bootable": "TRUE", "name": ""})).unwrap();
        assert_eq!((v.size, v.bootable, v.name.as_deref(), v.display_name()), (u64::MAX, true, None, "v"));
        let v = Volume::from_json(json!({"id": "v", "size": "1", "bootable": "yes", "attachments": "x"})).unwrap();
        assert_eq!((v.size, v.bootable, v.attachments.len()), (0, false, 0));
    }
}

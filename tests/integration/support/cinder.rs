//! Shared helpers of the Cinder integration tests: the real Cinder of
//! `ci/openstack.sh` (`tests/servers/start-cinder`: RBD driver on a
//! throw-away Ceph, the Keystone-backed Glance), admin clients for it,
//! volumes with known bytes written straight into their RBD images, reading
//! a volume back (`rbd export`), marking a volume in-use without Nova
//! (Cinder's attachment API, no connector: see [`CinderEnv::mark_in_use`]), a Glance image shaped like Nova's snapshot of a
//! volume-backed instance, a cleanup of everything a test made, and the
//! check that no `imgarc-scratch-…` resource is left.
//!
//! Typical use:
//! ```ignore
//! let Some(c) = cinder::env() else { return };      // skipped outside CI without CINDER_URL
//! let data = crate::support::bytes(3 << 20, 7, false);
//! let vol = c.make_volume(&unique("vol"), &data);   // 1 GiB, `data` at offset 0
//! c.assert_volume_bytes(&vol.id, &data);
//! c.assert_no_scratch_left();
//! // dropping `c` deletes every volume, snapshot, image and attachment it made or tracks
//! ```
//! A [`CinderEnv`] holds the OpenStack tests' serial lock
//! ([`super::openstack::serial`]) while alive: do not take it again in the same test (flock
//! would wait for itself).

use super::openstack::{config_from, os_env, serial, Serial};
use imgarc::openstack::cinder::{CinderClient, NewVolume, Volume};
use imgarc::openstack::glance::{GlanceClient, ImageRecord};
use imgarc::openstack::keystone::Session;
use imgarc::openstack::Error;
use imgarc::scratch::SCRATCH_PREFIX;
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One GiB: the size of every test volume (Cinder sizes are whole GiB).
pub const GIB: u64 = 1 << 30;
/// How long a create / snapshot / upload may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(180);

/// Something a test made, deleted when the [`CinderEnv`] drops.
#[derive(Debug, Clone, PartialEq)]
pub enum Made {
    Volume(String),
    Snapshot(String),
    Image(String),
    /// (attachment id, volume id)
    Attachment(String, String),
}

/// The Cinder test environment: admin clients, the Ceph of the RBD backend,
/// a temp dir, and the list of what to delete at the end.
pub struct CinderEnv {
    pub session: Session,
    pub cinder: CinderClient,
    /// The Keystone-backed Glance (the catalog's `image`) that Cinder uploads into.
    pub glance: GlanceClient,
    /// `CINDER_CEPH_CONF`: for `rbd -c`, librbd.
    pub ceph_conf: String,
    /// `CINDER_RBD_POOL` (`volumes`).
    pub pool: String,
    /// `CINDER_VENV_PYTHON`: a python that can `import rados, rbd` (librbd scripts).
    pub venv_python: String,
    /// Scratch files (volume data, exports).
    pub dir: tempfile::TempDir,
    made: RefCell<Vec<Made>>,
    _serial: Serial,
}

/// The Cinder test environment, or `None` (with "skipped: …" on stderr) when
/// `CINDER_URL` is unset outside CI. In CI (`CI` set) a missing Cinder fails the test.
pub fn env() -> Option<CinderEnv> {
    if std::env::var("CINDER_URL").map_or(true, |v| v.is_empty()) {
        super::skip_or_fail_in_ci(
            "CINDER_URL is not set: the Cinder tests need a real Cinder (`source ci/openstack.sh` starts one; docs/openstack.md)",
        );
        return None;
    }
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("CINDER_URL is set but {k} is not (see ci/openstack.sh)"));
    let (ceph_conf, pool, venv_python) = (var("CINDER_CEPH_CONF"), var("CINDER_RBD_POOL"), var("CINDER_VENV_PYTHON"));
    let serial = serial();
    let session = Session::new(&config_from(os_env()).expect("OS_* config")).expect("Keystone admin session");
    let cinder = CinderClient::new(&session).expect("Cinder in the catalog (volumev3 / block-storage)");
    let glance = GlanceClient::new(&session).expect("Glance in the catalog").with_retry(super::openstack::quick_retry());
    Some(CinderEnv {
        session,
        cinder,
        glance,
        ceph_conf,
        pool,
        venv_python,
        dir: tempfile::tempdir().unwrap(),
        made: RefCell::new(Vec::new()),
        _serial: serial,
    })
}

/// Runs `cmd`, panics with its stderr on failure.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The `block_device_mapping` property of a Nova snapshot of a volume-backed instance:
/// one entry per `(snapshot id, volume size GiB)`, the first the boot disk `/dev/vda`,
/// then `/dev/vdb`, …
pub fn nova_bdm(snapshots: &[(&str, u64)]) -> Value {
    Value::Array(
        snapshots
            .iter()
            .enumerate()
            .map(|(i, (sid, size))| {
                json!({
                    "source_type": "snapshot", "destination_type": "volume", "snapshot_id": sid,
                    "volume_size": size, "boot_index": if i == 0 { json!(0) } else { Value::Null },
                    "device_name": format!("/dev/vd{}", (b'a' + i as u8) as char), "delete_on_termination": false,
                    "device_type": "disk", "disk_bus": "virtio", "guest_format": null, "image_id": null,
                    "volume_id": null, "no_device": null, "tag": null
                })
            })
            .collect(),
    )
}

impl CinderEnv {
    /// Delete `m` when the environment drops (for things made outside these helpers,
    /// e.g. by the `imgarc` binary). Deleting something already gone is fine.
    pub fn track(&self, m: Made) {
        self.made.borrow_mut().push(m);
    }

    pub fn track_volume(&self, id: &str) {
        self.track(Made::Volume(id.into()));
    }

    pub fn track_snapshot(&self, id: &str) {
        self.track(Made::Snapshot(id.into()));
    }

    pub fn track_image(&self, id: &str) {
        self.track(Made::Image(id.into()));
    }

    /// A 1 GiB volume named `name` with `bytes` at offset 0 (the rest zeros), `available`.
    pub fn make_volume(&self, name: &str, bytes: &[u8]) -> Volume {
        self.make_volume_with(NewVolume { name: name.into(), size: 1, ..Default::default() }, bytes)
    }

    /// [`CinderEnv::make_volume`] with every field of the request given.
    pub fn make_volume_with(&self, new: NewVolume, bytes: &[u8]) -> Volume {
        let v = self.cinder.create_volume(&new).expect("create volume");
        self.track_volume(&v.id);
        let v = self.cinder.wait_volume(&v.id, &["available"], WAIT).expect("volume available");
        if !bytes.is_empty() {
            self.write_volume(&v.id, bytes);
        }
        v
    }

    /// Writes `bytes` at offset 0 of the volume's RBD image with librbd (`$CINDER_VENV_PYTHON`;
    /// `qemu-img … rbd:` would need Debian's qemu-block-extra).
    pub fn write_volume(&self, volume_id: &str, bytes: &[u8]) {
        let file = self.dir.path().join(format!("in-{volume_id}.raw"));
        std::fs::write(&file, bytes).unwrap();
        const WRITE: &str = "import rados, rbd, sys\n\
            conf, pool, image, path = sys.argv[1:]\n\
            with rados.Rados(conffile=conf) as c, c.open_ioctx(pool) as io, rbd.Image(io, image) as img:\n\
            \x20   data = open(path, 'rb').read()\n\
            \x20   assert img.write(data, 0) == len(data)\n\
            \x20   img.flush()\n";
        run(Command::new(&self.venv_python).args(["-c", WRITE, &self.ceph_conf, &self.pool, &format!("volume-{volume_id}")]).arg(&file));
        let _ = std::fs::remove_file(file);
    }

    /// The volume's whole content as a file (`rbd export`), in the environment's temp dir.
    pub fn rbd_export(&self, volume_id: &str) -> PathBuf {
        let out = self.dir.path().join(format!("export-{volume_id}-{:08x}.raw", rand::random::<u32>()));
        run(Command::new("rbd")
            .args(["-c", &self.ceph_conf, "export", "--no-progress"])
            .arg(format!("{}/volume-{volume_id}", self.pool))
            .arg(&out));
        out
    }

    /// Asserts that the volume holds `expected` at offset 0 and only zeros after it.
    pub fn assert_volume_bytes(&self, volume_id: &str, expected: &[u8]) {
        let path = self.rbd_export(volume_id);
        assert_file_holds(&path, expected, &format!("volume {volume_id}"));
        let _ = std::fs::remove_file(path);
    }

    /// Marks an `available` volume `in-use` as Nova would, without Nova: `attachment create`
    /// for a made-up instance, then `attachment complete`. Returns the attachment id;
    /// [`CinderEnv::detach`] undoes it (and the drop does, if the test does not).
    ///
    /// No connector is sent, on purpose: an attachment with a connector gets
    /// `connection_info`, and Cinder 29 then refuses to let anyone but Nova (a service
    /// token) delete it (bug #2004555; here it asks the catalog for Nova and answers 500),
    /// so the volume could never be detached again. Without one the attachment is
    /// `reserved`, `complete` makes it `attached` and the volume `in-use` all the same.
    pub fn mark_in_use(&self, volume_id: &str) -> String {
        let instance = uuid_v4();
        let att = self.cinder.create_attachment(volume_id, &instance, None).expect("attachment create");
        self.track(Made::Attachment(att.clone(), volume_id.into()));
        self.cinder.complete_attachment(&att).expect("attachment complete");
        let v = self.cinder.wait_volume(volume_id, &["in-use"], WAIT).expect("volume in-use");
        assert_eq!(v.attachments.len(), 1, "{:?}", v.attachments);
        att
    }

    /// Deletes the attachment and waits until the volume is `available` again.
    pub fn detach(&self, attachment_id: &str, volume_id: &str) {
        self.cinder.delete_attachment(attachment_id).expect("attachment delete");
        self.cinder.wait_volume(volume_id, &["available"], WAIT).expect("volume available after detach");
    }

    /// A Glance image shaped like Nova's snapshot of a volume-backed instance
    /// (Nova ≥ 31: size 0, `disk_format` raw, container bare, 0 bytes uploaded, so `active`),
    /// its BDM pointing at `snapshots` (`(snapshot id, volume size GiB)`, boot disk first).
    pub fn make_bdm_image(&self, name: &str, snapshots: &[(&str, u64)]) -> ImageRecord {
        self.make_bdm_image_with(name, snapshots, "raw", Map::new())
    }

    /// [`CinderEnv::make_bdm_image`] with a `disk_format` and extra properties. A `disk_format`
    /// other than raw is what older Nova made: nothing is uploaded (Glance would refuse the 0
    /// bytes with 415) and the image stays `queued`.
    pub fn make_bdm_image_with(&self, name: &str, snapshots: &[(&str, u64)], disk_format: &str, extra: Map<String, Value>) -> ImageRecord {
        let mut meta = json!({
            "name": name, "disk_format": disk_format, "container_format": "bare",
            "block_device_mapping": nova_bdm(snapshots).to_string(), "bdm_v2": "True",
            "root_device_name": "/dev/vda", "min_disk": snapshots.first().map_or(1, |s| s.1),
        });
        meta.as_object_mut().unwrap().extend(extra);
        let rec = self.glance.create(meta.as_object().unwrap()).expect("create BDM image");
        self.track_image(&rec.id);
        if disk_format != "raw" {
            return rec;
        }
        self.glance.upload(&rec.id, std::io::Cursor::new(Vec::new()), Some(0)).expect("upload 0 bytes");
        self.glance.wait_active(&rec.id, WAIT).expect("BDM image active")
    }

    /// Every Glance image, Cinder volume and volume snapshot (all projects) whose name
    /// starts with [`SCRATCH_PREFIX`]: `(kind, id, name, status)`.
    pub fn scratch_left(&self) -> Vec<(&'static str, String, String, String)> {
        let scratch = |n: &Option<String>| n.as_deref().is_some_and(|n| n.starts_with(SCRATCH_PREFIX));
        let mut left = Vec::new();
        for i in self.glance.list().expect("list images").into_iter().filter(|i| scratch(&i.name)) {
            left.push(("image", i.id, i.name.unwrap_or_default(), i.status));
        }
        for v in self.cinder.list_volumes(&[("all_tenants", "1")]).expect("list volumes").into_iter().filter(|v| scratch(&v.name)) {
            left.push(("volume", v.id, v.name.unwrap_or_default(), v.status));
        }
        for s in self.cinder.list_snapshots(&[("all_tenants", "1")]).expect("list snapshots").into_iter().filter(|s| scratch(&s.name)) {
            left.push(("snapshot", s.id, s.name.unwrap_or_default(), s.status));
        }
        left
    }

    /// Panics, naming them, if any scratch image, volume or snapshot exists.
    pub fn assert_no_scratch_left(&self) {
        let left = self.scratch_left();
        assert!(left.is_empty(), "scratch resources left in the cloud: {left:?}");
    }

    /// Deletes everything made or tracked so far, newest first, waiting until each is gone
    /// (the drop does this too; call it to check the cloud is clean before the test ends).
    /// Returns what could not be deleted.
    pub fn cleanup(&self) -> Vec<String> {
        let made: Vec<Made> = self.made.borrow_mut().drain(..).rev().collect();
        let mut failed = Vec::new();
        for m in made {
            if let Err(e) = self.delete(&m) {
                failed.push(format!("{m:?}: {e}"));
            }
        }
        failed
    }

    fn delete(&self, m: &Made) -> imgarc::openstack::Result<()> {
        let gone = |r: imgarc::openstack::Result<()>| match r {
            Err(Error::NotFound(_)) => Ok(()),
            r => r,
        };
        match m {
            Made::Attachment(att, vol) => {
                gone(self.cinder.delete_attachment(att))?;
                // leaves `detaching` by itself; a gone volume is fine too
                match self.cinder.wait_volume(vol, &["available", "error"], WAIT) {
                    Err(Error::NotFound(_)) => Ok(()),
                    r => r.map(|_| ()),
                }
            }
            Made::Image(id) => gone(self.glance.delete(id)),
            Made::Snapshot(id) => {
                let _ = self.cinder.wait_snapshot(id, &["available", "error"], WAIT);
                gone(self.cinder.delete_snapshot(id))?;
                self.cinder.wait_snapshot_gone(id, WAIT)
            }
            Made::Volume(id) => {
                // a volume that is still creating / uploading / detaching cannot be deleted yet
                let _ = self.cinder.wait_volume(id, &["available", "in-use", "error"], WAIT);
                gone(self.cinder.delete_volume(id))?;
                self.cinder.wait_volume_gone(id, WAIT)
            }
        }
    }
}

impl Drop for CinderEnv {
    fn drop(&mut self) {
        let failed = self.cleanup();
        if !failed.is_empty() {
            eprintln!("cinder test cleanup could not delete: {failed:?}");
        }
    }
}

/// Asserts that the file holds `expected` at offset 0 and only zeros after it.
pub fn assert_file_holds(path: &Path, expected: &[u8], what: &str) {
    let mut f = std::fs::File::open(path).unwrap();
    let mut head = vec![0u8; expected.len()];
    f.read_exact(&mut head).unwrap_or_else(|e| panic!("{what}: shorter than {} bytes: {e}", expected.len()));
    if head != expected {
        let at = head.iter().zip(expected).position(|(a, b)| a != b).unwrap();
        panic!("{what}: differs from the expected bytes at offset {at}");
    }
    let mut buf = vec![0u8; 4 << 20];
    let mut off = expected.len() as u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        if let Some(p) = buf[..n].iter().position(|b| *b != 0) {
            panic!("{what}: non-zero byte at offset {} after the expected bytes", off + p as u64);
        }
        off += n as u64;
    }
}

/// A random RFC 4122 v4 UUID (a made-up instance id for attachments).
pub fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Runs `f`, prints `timing: <what>: <s>` on stderr (the notes' operation times), returns its value.
pub fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    eprintln!("timing: {what}: {:.2}s", t.elapsed().as_secs_f64());
    r
}

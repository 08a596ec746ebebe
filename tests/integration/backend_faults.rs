//! Faults between imgarc and a real object store: a TCP forwarder in the
//! test sits in front of RGW / Swift, cuts every connection in the middle of
//! an upload, refuses connections for a while (server "down"), then lets
//! them through again ("restarted"). The retry decorator must finish every
//! put, with the bytes intact. The shared servers themselves are untouched,
//! so this runs in parallel with the other suites.
//!
//!     . ci/objectstore.sh
//!     cargo test --features remote-tests --test integration backend_faults::
use crate::support::backend_common;

use backend_common::*;
use imgarc::backend::retry::{RetryBackend, RetryPolicy};
use imgarc::backend::swift::{SwiftAuth, SwiftSession};
use imgarc::backend::Backend;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Forwards 127.0.0.1:port → upstream. Once `cut_after` bytes of request
/// data have gone upstream in total, it kills all connections and refuses
/// new ones for `down_for`.
struct Forwarder {
    port: u16,
    cuts: Arc<AtomicU64>,
}

fn forwarder(upstream: String, cut_after: u64, down_for: Duration) -> Forwarder {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let sent = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let cut_done = Arc::new(AtomicBool::new(false));
    let cuts = Arc::new(AtomicU64::new(0));
    let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let c2 = cuts.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(client) = conn else { continue };
            if down.load(Ordering::SeqCst) {
                drop(client); // "server down": connection closed at once
                continue;
            }
            let Ok(server) = TcpStream::connect(&upstream) else { continue };
            live.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
            // client -> server, counting, with the cut
            let (mut cr, mut sw) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (sent, down, cut_done, live, cuts) = (sent.clone(), down.clone(), cut_done.clone(), live.clone(), c2.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match cr.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if sw.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    let total = sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                    if total >= cut_after && !cut_done.swap(true, Ordering::SeqCst) {
                        down.store(true, Ordering::SeqCst);
                        cuts.fetch_add(1, Ordering::SeqCst);
                        for s in live.lock().unwrap().drain(..) {
                            let _ = s.shutdown(Shutdown::Both);
                        }
                        let down = down.clone();
                        std::thread::spawn(move || {
                            std::thread::sleep(down_for);
                            down.store(false, Ordering::SeqCst);
                        });
                        break;
                    }
                }
                let _ = sw.shutdown(Shutdown::Write);
            });
            // server -> client
            let (mut sr, mut cw) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut sr, &mut cw);
                let _ = cw.shutdown(Shutdown::Both);
            });
        }
    });
    Forwarder { port, cuts }
}

fn policy() -> RetryPolicy {
    RetryPolicy { max_retries: 8, base_delay: Duration::from_millis(200), max_delay: Duration::from_secs(2) }
}

/// 4 x 8 MiB puts; the cut comes 3 MiB into the first upload, the "server"
/// stays down 1.5 s (several retries hit the refused port).
fn survive(name: &str, b: &dyn Backend, fwd: &Forwarder) {
    let objs: Vec<(String, Vec<u8>)> =
        (0..4u64).map(|i| (format!("data/{i:02x}/pack-{i}"), crate::support::bytes(8 << 20, i + 1000, false))).collect();
    let t = std::time::Instant::now();
    for (k, v) in &objs {
        b.put(k, v).unwrap_or_else(|e| panic!("{name}: put {k} not retried to success: {e}"));
    }
    assert_eq!(fwd.cuts.load(Ordering::SeqCst), 1, "{name}: the fault was never injected");
    assert!(t.elapsed() >= Duration::from_millis(1500), "{name}: finished before the server came back?");
    // no partial object became visible: exactly the 4 objects, full size
    let mut listed: Vec<(String, u64)> = b.list("").unwrap().into_iter().map(|o| (o.key, o.size)).collect();
    listed.sort();
    let want: Vec<(String, u64)> = objs.iter().map(|(k, v)| (k.clone(), v.len() as u64)).collect();
    assert_eq!(listed, want, "{name}: listing after the faults");
    for (k, v) in &objs {
        assert!(b.get(k).unwrap() == *v, "{name}: {k} differs after the faulty upload");
        b.delete(k).unwrap();
    }
    eprintln!("{name}: 4 puts survived a mid-upload cut + 1.5 s outage in {:.1}s", t.elapsed().as_secs_f64());
}

#[test]
fn rgw_upload_survives_connection_cut_and_outage() {
    let t = rgw();
    let upstream = t.endpoint.trim_start_matches("http://").to_string();
    let fwd = forwarder(upstream, 3 << 20, Duration::from_millis(1500));
    let via = S3Target { endpoint: format!("http://127.0.0.1:{}", fwd.port), ..t };
    let b = RetryBackend::new(s3_backend(&via, &unique("fault"), 1000), policy());
    survive("rgw", &b, &fwd);
}

/// Keystone as usual, but the storage URL is rewritten to go through the forwarder.
#[derive(Debug)]
struct ViaForwarder {
    inner: imgarc::openstack::keystone::Session,
    port: u16,
}

impl SwiftAuth for ViaForwarder {
    fn authenticate(&self, renew: bool) -> anyhow::Result<SwiftSession> {
        let mut s = self.inner.authenticate(renew)?;
        let mut u = url::Url::parse(&s.storage_url)?;
        u.set_port(Some(self.port)).unwrap();
        s.storage_url = u.to_string();
        Ok(s)
    }
    fn describe(&self) -> String {
        "keystone via forwarder".into()
    }
}

#[test]
fn swift_upload_survives_connection_cut_and_outage() {
    let upstream = need("IMGARC_SWIFT_ENDPOINT").trim_start_matches("http://").to_string();
    let fwd = forwarder(upstream, 3 << 20, Duration::from_millis(1500));
    let auth = Arc::new(ViaForwarder { inner: keystone(true), port: fwd.port });
    let b = RetryBackend::new(Box::new(swift_backend_with(auth, &unique("fault"), 1000)), policy());
    survive("swift", &b, &fwd);
}

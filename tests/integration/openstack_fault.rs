//! Faults during a download: a connection cut mid-stream (resumed with
//! Range, or a clear failure when the server ignores Range), and a Glance
//! process killed mid-download and restarted (`GLANCE_FAULT_*`).
use crate::support::openstack as support;

use imgarc::openstack::glance::{GlanceClient, RetryPolicy};
use imgarc::openstack::Error;
use serde_json::json;
use std::io::Read;
use std::process::Command;
use std::time::Duration;
use support::*;

#[test]
fn cut_connection_resumes_with_range() {
    let _serial = serial();
    let g = noauth();
    let data = crate::support::bytes(4 * 1024 * 1024, 11, false);
    let (rec, _c) = upload_image(&g, &unique("cut"), &data, json!({}));
    let proxy = Proxy::start(&env("GLANCE_URL"), ProxyMode::CutFirstDownloadAfter(1_000_000));
    let pg = GlanceClient::standalone(&proxy.url, None).unwrap().with_retry(quick_retry());
    let mut dl = pg.download(&rec).unwrap();
    let mut got = Vec::new();
    dl.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(sha512_hex(&got), rec.os_hash_value.clone().unwrap());
    assert_eq!(dl.resumes(), 1);
    let heads = proxy.heads();
    let ranged: Vec<&String> = heads.iter().filter(|h| h.to_ascii_lowercase().contains("range: bytes=")).collect();
    assert_eq!(ranged.len(), 1, "{heads:#?}");
    // resumed exactly where the delivered bytes ended (the body starts after the response head)
    let start: u64 = ranged[0].to_ascii_lowercase().split("range: bytes=").nth(1).unwrap().split('-').next().unwrap().parse().unwrap();
    assert!(start > 0 && start < 1_000_000, "{start}");
}

#[test]
fn cut_connection_without_range_support_fails_clearly() {
    let _serial = serial();
    let g = noauth();
    let data = crate::support::bytes(2 * 1024 * 1024, 12, false);
    let (rec, _c) = upload_image(&g, &unique("norange"), &data, json!({}));
    let proxy = Proxy::start(&env("GLANCE_URL"), ProxyMode::CutAndStripRange(500_000));
    let pg = GlanceClient::standalone(&proxy.url, None).unwrap().with_retry(quick_retry());
    let mut dl = pg.download(&rec).unwrap();
    let mut got = Vec::new();
    let e = dl.read_to_end(&mut got).unwrap_err();
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<Error>()).expect("wraps openstack::Error");
    assert!(matches!(inner, Error::Download { .. }), "{inner:?}");
    let s = e.to_string();
    assert!(s.contains("does not support Range") && s.contains(&format!("of {}", data.len())), "{s}");
    assert!(got.len() < data.len());
}

/// Children of `pid`, from /proc.
fn children(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            let ppid = stat.rsplit(") ").next().and_then(|r| r.split(' ').nth(1)).and_then(|x| x.parse::<u32>().ok());
            if ppid == Some(pid) {
                v.push(p);
            }
        }
    }
    v
}

fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.rsplit(") ").next().unwrap_or("").starts_with('Z')).unwrap_or(true)
}

/// SIGKILL the Glance recorded in `pid_file` (the gunicorn master this
/// harness started) and its workers. The master is stopped first so that it
/// cannot fork a replacement worker that would keep serving.
fn kill_glance(pid_file: &str) -> u32 {
    let pid: u32 = std::fs::read_to_string(pid_file).unwrap().trim().parse().unwrap();
    let _ = Command::new("kill").args(["-STOP", &pid.to_string()]).status();
    let kids = children(pid);
    for k in &kids {
        let _ = Command::new("kill").args(["-KILL", &k.to_string()]).status();
    }
    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    for _ in 0..100 {
        if gone(pid) && kids.iter().all(|k| gone(*k)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone(pid) && kids.iter().all(|k| gone(*k)), "Glance {pid} or its workers {kids:?} survived SIGKILL");
    pid
}

/// Restarts the fault Glance if it is down (at test start and, on drop,
/// when a failed assertion left it killed), so later runs find it up.
struct EnsureRunning(String);
impl EnsureRunning {
    fn check(&self) {
        let pid: u32 = std::fs::read_to_string(format!("{}/glance.pid", self.0)).ok().and_then(|p| p.trim().parse().ok()).unwrap_or(0);
        if pid == 0 || gone(pid) {
            restart_glance(&self.0);
        }
    }
}
impl Drop for EnsureRunning {
    fn drop(&mut self) {
        self.check();
    }
}

fn restart_glance(state: &str) {
    let out = Command::new("bash").arg(format!("{state}/restart")).output().unwrap();
    assert!(out.status.success(), "restart failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Kill the Glance process mid-download: with a short retry budget the read
/// fails clearly (byte reached, total, cause); after a restart a new
/// download completes, and a download whose retries span the restart resumes.
#[test]
fn glance_killed_mid_download() {
    let _serial = serial();
    let url = env("GLANCE_FAULT_URL");
    let state = env("GLANCE_FAULT_STATE_DIR");
    let pid_file = format!("{state}/glance.pid");
    let up = EnsureRunning(state.clone());
    up.check();
    let g = GlanceClient::standalone(&url, None).unwrap().with_retry(quick_retry());
    let data = crate::support::bytes(32 * 1024 * 1024, 13, false);
    let (rec, _c) = upload_image(&g, &unique("kill"), &data, json!({}));

    // 1) killed, not restarted in time: clear failure
    let mut dl = g.download(&rec).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    dl.read_exact(&mut buf).unwrap();
    kill_glance(&pid_file);
    let mut rest = Vec::new();
    let e = dl.read_to_end(&mut rest).unwrap_err();
    let s = e.to_string();
    assert!(s.contains(&rec.id) && s.contains("interrupted at byte") && s.contains("gave up"), "{s}");
    assert!((dl.position() as usize) < data.len());

    // 2) restarted: the same image downloads completely (nothing was lost)
    restart_glance(&state);
    let mut got = Vec::new();
    g.download(&rec).unwrap().read_to_end(&mut got).unwrap();
    assert_eq!(sha512_hex(&got), rec.os_hash_value.clone().unwrap());

    // 3) killed and restarted while the client retries: resumed with Range
    let patient = GlanceClient::standalone(&url, None).unwrap().with_retry(RetryPolicy {
        max_retries: 30,
        base_delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(2),
    });
    let mut dl = patient.download(&rec).unwrap();
    let mut got = vec![0u8; 1024 * 1024];
    dl.read_exact(&mut got).unwrap();
    kill_glance(&pid_file);
    let st = state.clone();
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        restart_glance(&st);
    });
    dl.read_to_end(&mut got).unwrap();
    restarter.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(sha512_hex(&got), rec.os_hash_value.unwrap());
    assert!(dl.resumes() >= 1);
}

#[test]
fn busy_server_503_retry_after_is_honoured() {
    let _serial = serial();
    let proxy = Proxy::start(&env("GLANCE_URL"), ProxyMode::FailFirst { count: 2, status: 503, retry_after: 1 });
    let g = GlanceClient::standalone(&proxy.url, None).unwrap().with_retry(RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_secs(5),
    });
    let t = std::time::Instant::now();
    g.list_filtered(&[("name", "nothing-has-this-name")], 5).unwrap();
    let el = t.elapsed();
    assert!(el >= Duration::from_secs(2), "two Retry-After: 1 waits expected, took {el:?}");
    assert_eq!(proxy.heads().len(), 3);
    // 429 beyond the retry budget: the error names the status
    let proxy = Proxy::start(&env("GLANCE_URL"), ProxyMode::FailFirst { count: 10, status: 429, retry_after: 0 });
    let g = GlanceClient::standalone(&proxy.url, None).unwrap().with_retry(quick_retry());
    let e = g.list().unwrap_err();
    assert_eq!(e.status(), Some(429), "{e}");
    assert_eq!(proxy.heads().len(), 3); // first try + 2 retries
}

/// A token that expires mid-download is renewed when the stream is
/// resumed (Keystone-backed Glance behind the cutting proxy).
#[test]
fn token_renewed_on_resume() {
    use imgarc::openstack::keystone::Session;
    let _serial = serial();
    let mut cfg = config_from(os_env()).unwrap();
    let direct = GlanceClient::new(&Session::new(&cfg).unwrap()).unwrap();
    let data = crate::support::bytes(3 * 1024 * 1024, 31, false);
    let (rec, _c) = upload_image(&direct, &unique("renew"), &data, json!({}));
    let proxy = Proxy::start(&env("GLANCE_KEYSTONE_URL"), ProxyMode::CutFirstDownloadAfter(600_000));
    cfg.image_endpoint_override = Some(proxy.url.clone());
    let s = Session::new(&cfg).unwrap();
    let g = GlanceClient::new(&s).unwrap().with_retry(quick_retry());
    let mut dl = g.download(&rec).unwrap();
    let mut got = vec![0u8; 100_000];
    dl.read_exact(&mut got).unwrap();
    let gen = s.generation();
    s.expire_token_now();
    dl.read_to_end(&mut got).unwrap();
    assert_eq!(sha512_hex(&got), rec.os_hash_value.unwrap());
    assert_eq!(dl.resumes(), 1);
    assert!(s.generation() > gen, "token was not renewed");
    // the resumed request carried the new token
    let tokens: Vec<String> = proxy
        .heads()
        .iter()
        .filter_map(|h| h.lines().find(|l| l.to_ascii_lowercase().starts_with("x-auth-token:")).map(str::to_string))
        .collect();
    assert!(tokens.len() >= 2 && tokens.first() != tokens.last(), "{} token headers", tokens.len());
}

//! The one HTTP client (`imgarc::net::http_client`) against a real TLS
//! server whose certificate a private CA signed.

use imgarc::net::{http_client, HttpOptions};

/// A private CA (openssl), a TLS server with a certificate it signed for
/// 127.0.0.1, and the client: unknown without the bundle, trusted with it.
/// Keystone, Glance and the Swift backend all get their client here.
#[test]
fn a_private_ca_bundle_is_trusted() {
    use std::io::{Read, Write};
    let d = tempfile::tempdir().unwrap();
    let (cfg, ca) = crate::support::tls::private_ca(d.path());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://127.0.0.1:{}/", listener.local_addr().unwrap().port());
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(cfg.clone()).unwrap(), tcp);
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut b) {
                    Ok(1) => head.push(b[0]),
                    _ => break,
                }
            }
            let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            let _ = tls.flush();
        }
    });
    let plain = http_client(&HttpOptions::default()).unwrap();
    let e = plain.get(&url).send().unwrap_err();
    assert!(e.is_connect() || e.is_request(), "{e:?}");
    let pinned = http_client(&HttpOptions { cacert: Some(ca), insecure: false }).unwrap();
    let r = pinned.get(&url).send().unwrap();
    assert_eq!((r.status().as_u16(), r.text().unwrap()), (200, "ok".to_string()));
}

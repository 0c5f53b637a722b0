//! TLS to Redis (issue 24): `rediss://` URLs, the server verified against
//! `--redis-ca`. A redis-server of the test's own listens with TLS only
//! (`--port 0 --tls-port P`), its certificate made by `tls/gencert.sh`.

mod support;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    RedisServer, TestServer, free_port, make_certificate, next_event, redis_installed, send_event,
    unique_prefix, until_heard, wait_for_health,
};

/// A redis-server speaking TLS only, on a certificate from `cert_dir`.
fn tls_redis(cert_dir: &Path) -> Option<RedisServer> {
    if !redis_installed() {
        return None;
    }
    let port = free_port();
    let path = |name: &str| cert_dir.join(name).to_string_lossy().into_owned();
    let (cert, key) = (path("cert.pem"), path("key.pem"));
    let tls_port = port.to_string();
    let redis = RedisServer::launch(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &cert,
            "--tls-auth-clients",
            "no",
        ],
    );
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "redis-server never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(redis)
}

fn rediss_url(redis: &RedisServer) -> String {
    format!("rediss://127.0.0.1:{}", redis.port)
}

#[test]
fn two_processes_chat_through_a_redis_over_tls() {
    let certs = make_certificate();
    let Some(redis) = tls_redis(&certs) else {
        return;
    };
    let ca = certs.join("cert.pem");
    let prefix = unique_prefix("tls");
    let args = [
        "--redis",
        &rediss_url(&redis),
        "--redis-ca",
        ca.to_str().expect("a path"),
        "--redis-prefix",
        &prefix,
    ];
    let (a, b) = (TestServer::start_with(&args), TestServer::start_with(&args));
    wait_for_health(&a, 200);
    wait_for_health(&b, 200);
    let (mut on_a, mut on_b) = (a.connect(), b.connect());
    for ws in [&mut on_a, &mut on_b] {
        send_event(ws, "change_room", json!({ "name": "tls" }));
    }
    until_heard(&mut on_a, &mut on_b, "over tls");
    send_event(&mut on_b, "send_message", json!({ "message": "back" }));
    loop {
        let event = next_event(&mut on_a);
        if event["payload"]["message"] == "back" {
            break;
        }
    }
}

/// A Redis whose certificate another CA signed is refused: a clear log
/// line, and `/healthz` says Redis is unavailable.
#[test]
fn a_redis_certificate_from_another_ca_is_refused() {
    let (certs, other) = (make_certificate(), make_certificate());
    let Some(redis) = tls_redis(&certs) else {
        return;
    };
    let wrong_ca = other.join("cert.pem");
    let server = TestServer::start_with(&[
        "--redis",
        &rediss_url(&redis),
        "--redis-ca",
        wrong_ca.to_str().expect("a path"),
    ]);
    server.wait_for_log("TLS with", Duration::from_secs(10));
    let logs = server.logs();
    let line = logs
        .lines()
        .find(|line| line.contains("TLS with"))
        .unwrap_or_default();
    assert!(
        line.contains("ERROR") && line.contains("certificate"),
        "{line}"
    );
    assert_eq!(server.request("GET", "/healthz", &[], b"").status, 503);
}

#[test]
fn a_redis_ca_that_cannot_be_read_stops_start_up() {
    let output = Command::new(support::server_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--www",
            concat!(env!("CARGO_MANIFEST_DIR"), "/www"),
        ])
        .args(["--redis", "rediss://127.0.0.1:1"])
        .args(["--redis-ca", "/nonexistent/ca.pem"])
        .output()
        .expect("run chat-server");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");
}

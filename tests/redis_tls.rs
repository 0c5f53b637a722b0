//! TLS to Redis (issue 24): `rediss://` URLs, the server verified against
//! `--redis-ca`. A redis-server of the test's own listens with TLS only
//! (`--port 0 --tls-port P`), its certificate made by `tls/gencert.sh`.

mod support;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{TestServer, free_port, next_event, send_event, unique_prefix};

/// A certificate and key for localhost and 127.0.0.1 in a directory of their
/// own (each call a new pair, so a second one is "another CA").
fn certificate() -> PathBuf {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "chat-redis-tls-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::SeqCst)
    ));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tls/gencert.sh");
    let made = Command::new("bash")
        .arg(script)
        .arg(&dir)
        .stdout(Stdio::null())
        .status()
        .expect("run gencert.sh");
    assert!(made.success(), "gencert.sh failed (is openssl installed?)");
    dir
}

/// A redis-server speaking TLS only, stopped (by pid) when dropped.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl TlsRedis {
    fn start(cert_dir: &std::path::Path) -> Option<TlsRedis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "redis-server is not installed (apt-get install redis-server)"
            );
            eprintln!("skipped: redis-server is not installed");
            return None;
        }
        let port = free_port();
        let path = |name: &str| cert_dir.join(name).to_string_lossy().into_owned();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--tls-cert-file", &path("cert.pem")])
            .args(["--tls-key-file", &path("key.pem")])
            .args(["--tls-ca-cert-file", &path("cert.pem")])
            .args(["--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server never listened on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(TlsRedis { child, port })
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `/healthz` until it answers `status`.
fn wait_for_health(server: &TestServer, status: u16) {
    let start = Instant::now();
    while server.request("GET", "/healthz", &[], b"").status != status {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "/healthz never answered {status}; logs:\n{}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_processes_chat_through_a_redis_over_tls() {
    let certs = certificate();
    let Some(redis) = TlsRedis::start(&certs) else {
        return;
    };
    let ca = certs.join("cert.pem");
    let prefix = unique_prefix("tls");
    let args = [
        "--redis",
        &redis.url(),
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
    // Until B hears A, the room's subscriptions may still be on their way.
    let start = Instant::now();
    'heard: for attempt in 1.. {
        let text = format!("over tls #{attempt}");
        send_event(&mut on_a, "send_message", json!({ "message": text }));
        on_b.get_mut()
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("a timeout");
        while let Ok(tungstenite::Message::Text(event)) = on_b.read() {
            let event: serde_json::Value = serde_json::from_str(&event).expect("JSON");
            if event["payload"]["message"] == text.as_str() {
                break 'heard;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "B never heard A; A's logs:\n{}",
            a.logs()
        );
    }
    on_b.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a timeout");
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
    let (certs, other) = (certificate(), certificate());
    let Some(redis) = TlsRedis::start(&certs) else {
        return;
    };
    let wrong_ca = other.join("cert.pem");
    let server = TestServer::start_with(&[
        "--redis",
        &redis.url(),
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

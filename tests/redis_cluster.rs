//! Keys ready for Redis Cluster (issue 24): every script's keys share one
//! hash slot. A redis-server in cluster mode that owns every slot itself
//! refuses a command whose keys span slots (`CROSSSLOT`) as a real cluster
//! would, and needs no redirection: the whole chat (rooms, logins, session
//! OTPs, logouts) must work on it.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    RedisServer, TestServer, free_port, key_file, next_event, redis_installed, send_event,
    session_cookie, session_otp, unique_prefix, until_heard, wait_for_health,
};

/// A one-node Redis Cluster that owns every slot (persistence off),
/// stopped by pid when dropped; its `nodes.conf` in a directory of its own.
struct OneNodeCluster {
    redis: RedisServer,
    dir: std::path::PathBuf,
}

impl OneNodeCluster {
    fn start() -> Option<OneNodeCluster> {
        if !redis_installed() {
            return None;
        }
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("chat-cluster-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for nodes.conf");
        let redis = RedisServer::launch(
            port,
            &[
                "--port",
                &port.to_string(),
                "--cluster-enabled",
                "yes",
                "--dir",
                dir.to_str().expect("a path"),
            ],
        );
        let node = OneNodeCluster { redis, dir };
        let start = Instant::now();
        while !node.redis.ping() {
            assert!(start.elapsed() < Duration::from_secs(10), "no PONG");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(node.call("CLUSTER ADDSLOTSRANGE 0 16383"), "+OK");
        while !node.call("CLUSTER INFO").contains("cluster_state:ok") {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "cluster never ok"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(node)
    }

    /// One inline command; its reply's first line (a bulk reply: its text).
    fn call(&self, command: &str) -> String {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.redis.port)) else {
            return String::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream
            .write_all(format!("{command}\r\n").as_bytes())
            .is_err()
        {
            return String::new();
        }
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        if let Some(len) = line
            .strip_prefix('$')
            .and_then(|l| l.trim().parse::<usize>().ok())
        {
            let mut body = vec![0u8; len + 2];
            let _ = std::io::Read::read_exact(&mut reader, &mut body);
            return String::from_utf8_lossy(&body).into_owned();
        }
        line.trim_end().to_string()
    }
}

impl Drop for OneNodeCluster {
    fn drop(&mut self) {
        self.redis.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn chat_logins_sessions_and_logouts_work_on_a_redis_cluster() {
    let Some(cluster) = OneNodeCluster::start() else {
        return;
    };
    let key = key_file("cluster");
    let prefix = unique_prefix("cluster");
    let args = [
        "--redis",
        &cluster.redis.url(),
        "--redis-prefix",
        &prefix,
        "--session-key",
        key.path_str(),
    ];
    let (a, b) = (TestServer::start_with(&args), TestServer::start_with(&args));
    wait_for_health(&a, 200);
    wait_for_health(&b, 200);

    // A room across both processes: the publish script's keys.
    let (mut on_a, mut on_b) = (a.connect(), b.connect());
    for ws in [&mut on_a, &mut on_b] {
        send_event(ws, "change_room", json!({ "name": "cluster" }));
    }
    until_heard(&mut on_a, &mut on_b, "hello");
    // A resume: the read script's keys.
    let otp = b.login("percy", "123");
    let url = format!("ws://{}/ws?otp={otp}&room=cluster&history=5", b.addr);
    let request = tungstenite::client::IntoClientRequest::into_client_request(url).expect("url");
    let mut resumed = support::connect_ws(b.addr, request).expect("upgrade");
    assert_eq!(next_event(&mut resumed)["type"], "new_message");

    // A session's OTP (stored unless the session ended: one script), on
    // the other process, then a logout there and the session refused here.
    let login = a.request(
        "POST",
        "/login",
        &[],
        br#"{"username":"percy","password":"123"}"#,
    );
    let cookie = session_cookie(&login);
    let otp = session_otp(&b, &cookie);
    assert_eq!(otp.status, 200, "{}\n{}", otp.text(), b.logs());
    let logout = b.request("POST", "/logout", &[("Cookie", &cookie)], b"");
    assert_eq!(logout.status, 200, "{}", logout.text());
    assert_eq!(
        session_otp(&a, &cookie).status,
        401,
        "ended on every process"
    );
    let _ = std::fs::remove_file(format!("{}.revoked", key.path_str()));
}

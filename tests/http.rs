//! HTTP behaviour against the real server: files, methods, limits, keep-alive, login.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::{TestServer, parse_responses};

#[test]
fn serves_index_and_files_with_content_types() {
    let server = TestServer::start();
    let index = server.request("GET", "/", &[], b"");
    assert_eq!(index.status, 200);
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let on_disk = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/www/index.html")).unwrap();
    assert_eq!(index.body, on_disk);
    assert!(index.header("etag").is_some());
    assert!(index.header("last-modified").is_some());

    let named = server.request("GET", "/index.html", &[], b"");
    assert_eq!(named.body, on_disk);

    let head = server.request("HEAD", "/", &[], b"");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(on_disk.len().to_string().as_str())
    );
    assert!(head.body.is_empty());
}

#[test]
fn revalidation_answers_304() {
    let server = TestServer::start();
    let first = server.request("GET", "/", &[], b"");
    let etag = first.header("etag").unwrap().to_string();
    let again = server.request("GET", "/", &[("If-None-Match", &etag)], b"");
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
}

#[test]
fn missing_files_and_other_methods() {
    let server = TestServer::start();
    assert_eq!(server.request("GET", "/nope.html", &[], b"").status, 404);
    let delete = server.request("DELETE", "/", &[], b"");
    assert_eq!(delete.status, 405);
    assert_eq!(delete.header("allow"), Some("GET, HEAD"));
    let get_login = server.request("GET", "/login", &[], b"");
    assert_eq!(get_login.status, 405);
    assert_eq!(get_login.header("allow"), Some("POST"));
}

#[test]
fn requests_never_leave_the_web_root() {
    let server = TestServer::start();
    for path in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/%2E%2E/%2e%2e/etc/passwd",
        "/www/../../Cargo.toml",
        "//etc/passwd",
        "/.gitignore",
        "/..%2fCargo.toml",
        "/a%5c..%5c..%5cCargo.toml",
        "/%00",
    ] {
        let response = server.request("GET", path, &[], b"");
        assert!(
            response.status == 404 || response.status == 400,
            "{path} answered {}",
            response.status
        );
        assert!(
            !response.text().contains("[package]"),
            "{path} leaked Cargo.toml"
        );
    }
    // Absolute-form targets are not paths under www/.
    let raw =
        server.raw(b"GET http://evil/etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(parse_responses(&raw, false)[0].status, 400);
}

#[test]
fn keep_alive_and_pipelining_answer_in_order() {
    let server = TestServer::start();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let login = r#"{"username":"percy","password":"124"}"#;
    let pipelined = format!(
        "GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /missing HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{login}\
         HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        login.len()
    );
    stream.write_all(pipelined.as_bytes()).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    // parse_responses reads bodies by Content-Length, except for the last (HEAD) one.
    let head_start = find_last_status(&reply);
    let mut responses = parse_responses(&reply[..head_start], false);
    responses.extend(parse_responses(&reply[head_start..], true));
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 404, 401, 200]);
    assert_eq!(responses[3].header("connection"), Some("close"));

    // The same connection serves a second request later (keep-alive).
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for _ in 0..2 {
        stream
            .write_all(b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 404"));
    }
}

fn find_last_status(reply: &[u8]) -> usize {
    reply
        .windows(9)
        .rposition(|w| w == b"HTTP/1.1 ")
        .expect("a status line")
}

#[test]
fn oversized_heads_are_refused() {
    let server = TestServer::start();
    let long_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let reply = server.raw(long_header.as_bytes());
    assert_eq!(parse_responses(&reply, false)[0].status, 431);

    let long_line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    let reply = server.raw(long_line.as_bytes());
    assert_eq!(parse_responses(&reply, false)[0].status, 414);

    let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(150));
    let reply = server.raw(many.as_bytes());
    assert_eq!(parse_responses(&reply, false)[0].status, 431);

    let garbage = server.raw(b"\x16\x03\x01 not http at all\r\n\r\n");
    assert_eq!(parse_responses(&garbage, false)[0].status, 400);
    // The server is still fine afterwards.
    assert_eq!(server.request("GET", "/", &[], b"").status, 200);
}

#[test]
fn login_answers_otp_or_the_right_error() {
    let server = TestServer::start();
    let ok = server.request(
        "POST",
        "/login",
        &[],
        br#"{"username":"percy","password":"123"}"#,
    );
    assert_eq!(ok.status, 200);
    let json: serde_json::Value = serde_json::from_slice(&ok.body).unwrap();
    let otp = json["otp"].as_str().unwrap();
    assert!(
        otp.len() >= 32 && otp.chars().all(|c| c.is_ascii_hexdigit()),
        "{otp}"
    );
    let other = server.login("percy", "123");
    assert_ne!(other, otp, "OTPs must differ");

    let wrong = server.request(
        "POST",
        "/login",
        &[],
        br#"{"username":"percy","password":"nope"}"#,
    );
    assert_eq!(wrong.status, 401);
    let unknown = server.request(
        "POST",
        "/login",
        &[],
        br#"{"username":"zed","password":"123"}"#,
    );
    assert_eq!(unknown.status, 401);
    for bad in [
        &b"not json"[..],
        br#"{"username":"percy"}"#,
        br#"{"username":1,"password":"123"}"#,
        b"",
    ] {
        assert_eq!(
            server.request("POST", "/login", &[], bad).status,
            400,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let big = format!(
        r#"{{"username":"percy","password":"{}"}}"#,
        "x".repeat(5000)
    );
    assert_eq!(
        server.request("POST", "/login", &[], big.as_bytes()).status,
        413
    );
    assert!(!server.logs().contains(otp), "an OTP reached the log");
}

#[test]
fn healthz_and_metrics() {
    let server = TestServer::start();
    let health = server.request("GET", "/healthz", &[], b"");
    assert_eq!((health.status, health.text().trim()), (200, "ok"));

    let mut ws = server.connect();
    support::send_event(&mut ws, "send_message", support::say("counted"));
    support::next_event(&mut ws);
    let wrong = server.request(
        "POST",
        "/login",
        &[],
        br#"{"username":"percy","password":"x"}"#,
    );
    assert_eq!(wrong.status, 401);

    let metrics = server.request("GET", "/metrics", &[], b"");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = metrics.text();
    let value = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'));
        let line = line.unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    // Every sample line is "name[{labels}] value" with a HELP and TYPE before it.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, number) = line.rsplit_once(' ').expect("name value");
        assert!(number.parse::<f64>().is_ok(), "{line}");
        let base = name.split('{').next().unwrap();
        assert!(
            text.contains(&format!("# TYPE {base} ")),
            "{base} has no TYPE"
        );
    }
    assert_eq!(value("chat_connections{phase=\"websocket\"}"), 1.0);
    assert_eq!(value("chat_messages_received_total"), 1.0);
    assert_eq!(value("chat_messages_delivered_total"), 1.0);
    assert_eq!(value("chat_logins_succeeded_total"), 1.0);
    assert_eq!(value("chat_logins_failed_total"), 1.0);
    assert_eq!(value("chat_rooms"), 1.0);
    assert!(value("chat_received_bytes_total") > 0.0);
    assert!(value("chat_sent_bytes_total") > 0.0);
    assert!(value("chat_loop_iterations_total") > 0.0);

    // The gauge comes down when the WebSocket goes.
    ws.close(None).expect("send a close");
    let _ = ws.read(); // the server's close answer
    let start = std::time::Instant::now();
    loop {
        let text = server.request("GET", "/metrics", &[], b"").text();
        if text.contains("chat_connections{phase=\"websocket\"} 0\n") {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "the websocket gauge never came down:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn repeated_login_failures_get_429_with_retry_after() {
    let server = TestServer::start();
    let wrong = br#"{"username":"percy","password":"wrong"}"#;
    for _ in 0..10 {
        assert_eq!(server.request("POST", "/login", &[], wrong).status, 401);
    }
    let limited = server.request("POST", "/login", &[], wrong);
    assert_eq!(limited.status, 429);
    let wait: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Even the right password waits: the limit is on the address.
    assert_eq!(
        server
            .request(
                "POST",
                "/login",
                &[],
                br#"{"username":"percy","password":"123"}"#
            )
            .status,
        429
    );
}

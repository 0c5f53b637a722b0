//! Test harness: starts the real server binary on an ephemeral port and offers
//! small clients (raw HTTP, login, WebSocket) to talk to it.
//!
//! The server announces its bound address on stderr ("listening on http://ADDR");
//! the harness waits for that line, so no test sleeps to guess readiness.
#![allow(dead_code)]

pub mod delivery;
pub mod proxy;
pub mod resp;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tungstenite::protocol::WebSocket;
use tungstenite::{Message, client::IntoClientRequest};

/// Path of the server binary built by cargo for this test run.
pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_chat-server");

/// The binary `TestServer` runs: `$CHAT_SERVER_BIN` when set (to run the
/// tests against another build, e.g. the server before a fix), else
/// `SERVER_BIN`.
pub fn server_bin() -> String {
    match std::env::var("CHAT_SERVER_BIN") {
        Ok(path) if !path.is_empty() => path,
        _ => SERVER_BIN.to_string(),
    }
}

/// A running server process; killed when dropped.
pub struct TestServer {
    /// The first listener (plain, or TLS when only TLS is configured).
    pub addr: SocketAddr,
    /// The TLS listener, when there is one.
    pub tls_addr: Option<SocketAddr>,
    child: Child,
    logs: Arc<Mutex<String>>,
}

impl TestServer {
    /// Starts the server with default settings on 127.0.0.1:0.
    pub fn start() -> TestServer {
        TestServer::start_with(&[])
    }

    /// Starts the server with extra flags (after `--listen 127.0.0.1:0 --www <repo>/www`).
    pub fn start_with(args: &[&str]) -> TestServer {
        TestServer::spawn(&with_defaults(args))
    }

    /// Starts the server with exactly these flags.
    pub fn spawn(args: &[&str]) -> TestServer {
        TestServer::spawn_command(Command::new(server_bin()), args)
    }

    /// Starts the server with exactly these flags and these environment variables.
    pub fn spawn_with_env(env: &[(&str, &str)], args: &[&str]) -> TestServer {
        let mut command = Command::new(server_bin());
        command.envs(env.iter().copied());
        TestServer::spawn_command(command, args)
    }

    /// Starts the server under a wrapper (e.g. `prlimit --nofile=64:64`), default flags added.
    pub fn start_under(wrapper: &[&str], args: &[&str]) -> TestServer {
        let mut command = Command::new(wrapper[0]);
        command.args(&wrapper[1..]).arg(server_bin());
        TestServer::spawn_command(command, &with_defaults(args))
    }

    fn spawn_command(mut command: Command, args: &[&str]) -> TestServer {
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start server binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            let mut listeners = Vec::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    listeners.push(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                // Logged once every listener is up.
                if line.contains("allowed origins:") {
                    let _ = addr_tx.send(std::mem::take(&mut listeners));
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let listeners = match addr_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(listeners) => listeners,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not announce its address; logs:\n{}",
                    logs.lock().unwrap()
                );
            }
        };
        let parse = |url: &String| -> SocketAddr {
            url.split("://")
                .nth(1)
                .and_then(|a| a.parse().ok())
                .expect("listen address in log line")
        };
        let addr = parse(&listeners[0]);
        let tls_addr = listeners
            .iter()
            .find(|url| url.starts_with("https://"))
            .map(parse);
        TestServer {
            addr,
            tls_addr,
            child,
            logs,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything the server wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until the server's log contains `needle`, or panics after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.logs().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("log never contained {needle:?}; logs:\n{}", self.logs());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of /proc/PID/status in kB (e.g. "VmRSS", "VmHWM").
    pub fn status_kb(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .expect("field");
        line.split_whitespace()
            .nth(1)
            .expect("value")
            .parse()
            .expect("number")
    }

    /// CPU time (user + system) the server has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    }

    /// Sends a signal (e.g. "TERM") to the server process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("server did not exit within {timeout:?}");
    }

    /// Kills the process at once.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Logs in and returns the OTP.
    pub fn login(&self, username: &str, password: &str) -> String {
        let body = format!(r#"{{"username":"{username}","password":"{password}"}}"#);
        let response = self.request("POST", "/login", &[], body.as_bytes());
        assert_eq!(response.status, 200, "login failed: {response:?}");
        let json: serde_json::Value = serde_json::from_slice(&response.body).expect("login JSON");
        json["otp"].as_str().expect("otp field").to_string()
    }

    /// Logs in as the demo account and opens a WebSocket.
    pub fn connect(&self) -> Ws {
        let otp = self.login("percy", "123");
        self.connect_with_otp(&otp).expect("upgrade")
    }

    /// Opens a WebSocket with `otp`; returns the HTTP status on refusal.
    pub fn connect_with_otp(&self, otp: &str) -> Result<Ws, u16> {
        let url = format!("ws://{}/ws?otp={otp}", self.addr);
        connect_ws(self.addr, url.into_client_request().expect("request"))
    }

    /// Opens a WebSocket with `otp` and an `Origin` header; returns the HTTP status on refusal.
    pub fn connect_with_origin(&self, otp: &str, origin: &str) -> Result<Ws, u16> {
        let url = format!("ws://{}/ws?otp={otp}", self.addr);
        let mut request = url.into_client_request().expect("request");
        request
            .headers_mut()
            .insert("Origin", origin.parse().expect("origin header"));
        connect_ws(self.addr, request)
    }

    /// One HTTP/1.1 request on a fresh connection (Connection: close).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        request_at(self.addr, method, path, headers, body)
    }

    /// Sends raw bytes on a fresh connection and returns all bytes until the server closes.
    pub fn raw(&self, bytes: &[u8]) -> Vec<u8> {
        raw_at(self.addr, bytes)
    }
}

/// One HTTP/1.1 request to `addr` on a fresh connection (Connection: close).
pub fn request_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    let reply = raw_at(addr, &bytes);
    parse_responses(&reply, method == "HEAD")
        .into_iter()
        .next()
        .expect("one response")
}

/// Sends raw bytes to `addr` on a fresh connection and returns all bytes
/// until the server closes.
fn raw_at(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream.write_all(bytes).expect("send");
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    reply
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The flags every test server gets: an ephemeral port, the repo's www/, debug logs.
fn with_defaults<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let www = concat!(env!("CARGO_MANIFEST_DIR"), "/www");
    let mut all = vec![
        "--listen",
        "127.0.0.1:0",
        "--www",
        www,
        "--log-level",
        "debug",
    ];
    all.extend_from_slice(args);
    all
}

/// A client WebSocket over plain TCP with a read timeout.
pub type Ws = WebSocket<TcpStream>;

/// Connects a WebSocket client for `request` to `addr`.
pub fn connect_ws(
    addr: SocketAddr,
    request: tungstenite::handshake::client::Request,
) -> Result<Ws, u16> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match tungstenite::client(request, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(err) => panic!("handshake failed: {err}"),
    }
}

/// Sends one chat event.
pub fn send_event(ws: &mut Ws, kind: &str, payload: serde_json::Value) {
    let text = serde_json::json!({ "type": kind, "payload": payload }).to_string();
    ws.send(Message::text(text)).expect("send event");
}

/// Reads the next text event (skipping pings/pongs) as JSON. The server's
/// pings would keep a blocking read alive for ever: past 30 s it fails.
pub fn next_event(ws: &mut Ws) -> serde_json::Value {
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            std::time::Instant::now() < give_up,
            "no event in 30 s (only pings)"
        );
        match ws.read().expect("read event") {
            Message::Text(text) => return serde_json::from_str(&text).expect("event JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text event, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame arrives; returns its code.
pub fn expect_close(ws: &mut Ws) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return frame.code.into(),
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => continue,
            Err(err) => panic!("connection ended without a close frame: {err}"),
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Splits a byte stream into responses (uses Content-Length; `head_only` means no bodies).
pub fn parse_responses(mut bytes: &[u8], head_only: bool) -> Vec<HttpResponse> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            panic!(
                "incomplete response head: {:?}",
                String::from_utf8_lossy(bytes)
            );
        };
        let head = std::str::from_utf8(&bytes[..end]).expect("UTF-8 head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .expect("status")
            .parse()
            .expect("code");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse::<usize>().expect("length"))
            .unwrap_or(0);
        let body_len = if head_only || status == 101 || status == 304 {
            0
        } else {
            length
        };
        let start = end + 4;
        let body = bytes[start..start + body_len].to_vec();
        bytes = &bytes[start + body_len..];
        out.push(HttpResponse {
            status,
            headers,
            body,
        });
    }
    out
}

/// A masked client text frame, for tests that speak WebSocket over raw TCP.
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x80 | opcode];
    let len = payload.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// A raw WebSocket upgrade request for `/ws?otp=OTP` with extra header lines.
pub fn upgrade_request(addr: SocketAddr, otp: &str, extra_headers: &str) -> String {
    format!(
        "GET /ws?otp={otp} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra_headers}\r\n"
    )
}

/// Event JSON for `send_message`.
pub fn say(message: &str) -> serde_json::Value {
    serde_json::json!({ "message": message, "from": "someone-else" })
}

// --- helpers for attack tests: other source addresses, cheap accounts, metrics ---

impl TestServer {
    /// Like `status_kb`, but `None` once the process has died (a zombie has
    /// no memory lines) instead of panicking.
    pub fn try_status_kb(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// The exit status, if the process has already exited (never blocks).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// The address of the separate metrics listener, from its log line
    /// ("metrics on http://ADDR"), if the server announced one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let logs = self.logs();
        let rest = logs.split("metrics on http://").nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    }
}

/// 127.0.0.`n`: another source address on the loopback network, so a test can
/// be "another client" to the server's per-address limits.
pub fn loopback(n: u8) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, n))
}

/// A TCP connection to `addr` from `source` (bound before connecting).
pub fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    try_connect_from(source, addr).unwrap_or_else(|err| panic!("connect from {source}: {err}"))
}

/// `connect_from`, returning the error instead of panicking.
pub fn try_connect_from(source: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect(&addr.into())?;
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One HTTP/1.1 request from `source` on a fresh connection (Connection:
/// close); the response, or why there was none within `timeout`.
pub fn request_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let mut stream = try_connect_from(source, addr).map_err(|err| format!("connect: {err}"))?;
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut bytes = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    stream
        .write_all(&bytes)
        .map_err(|err| format!("send: {err}"))?;
    let mut reply = Vec::new();
    let start = Instant::now();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(err) => {
                return Err(format!(
                    "no complete answer after {:?} ({err}); got {} bytes",
                    start.elapsed(),
                    reply.len()
                ));
            }
        }
    }
    if reply.is_empty() {
        return Err("closed without an answer".to_string());
    }
    if !reply.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err(format!(
            "incomplete answer: {:?}",
            String::from_utf8_lossy(&reply)
        ));
    }
    Ok(parse_responses(&reply, method == "HEAD")
        .into_iter()
        .next()
        .expect("one response"))
}

/// The JSON body of a login request.
pub fn login_body(username: &str, password: &str) -> String {
    serde_json::json!({ "username": username, "password": password }).to_string()
}

/// Logs in from `source` and returns the OTP (panics on anything but 200).
pub fn login_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    username: &str,
    password: &str,
) -> String {
    let body = login_body(username, password);
    let response = request_from(
        source,
        addr,
        "POST",
        "/login",
        body.as_bytes(),
        Duration::from_secs(15),
    )
    .unwrap_or_else(|err| panic!("login from {source}: {err}"));
    assert_eq!(response.status, 200, "login failed: {response:?}");
    let json: serde_json::Value = serde_json::from_slice(&response.body).expect("login JSON");
    json["otp"].as_str().expect("otp field").to_string()
}

/// Logs in from `source` and opens a chat WebSocket from the same address.
pub fn connect_ws_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    username: &str,
    password: &str,
) -> Ws {
    let otp = login_from(source, addr, username, password);
    let url = format!("ws://{addr}/ws?otp={otp}");
    let stream = connect_from(source, addr);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match tungstenite::client(url.into_client_request().expect("request"), stream) {
        Ok((ws, _)) => ws,
        Err(err) => panic!("upgrade from {source} failed: {err}"),
    }
}

/// The value of an unlabelled sample `name` in `GET /metrics` at `addr`
/// (asked from `source`), or why it could not be read.
pub fn metric_from(source: std::net::IpAddr, addr: SocketAddr, name: &str) -> Result<f64, String> {
    let response = request_from(
        source,
        addr,
        "GET",
        "/metrics",
        b"",
        Duration::from_secs(15),
    )?;
    if response.status != 200 {
        return Err(format!("/metrics answered {}", response.status));
    }
    sample(&response.text(), name).ok_or_else(|| format!("no {name} in /metrics"))
}

/// The first sample of metric `name` in a /metrics text, whatever its labels.
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            let labels = key.strip_prefix(name)?;
            (labels.is_empty() || labels.starts_with('{'))
                .then(|| value.trim().parse().ok())
                .flatten()
        })
}

/// A file removed when dropped.
pub struct TempFile {
    pub path: std::path::PathBuf,
}

impl TempFile {
    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An argon2id PHC hash of `password` with the smallest cost argon2 allows
/// (8 KiB, one pass): a login checks it in microseconds, so a test can log in
/// thousands of clients. Never a production setting.
pub fn cheap_hash(password: &str) -> String {
    use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
    let params = Params::new(8, 1, 1, None).expect("argon2 params");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_with_salt(password.as_bytes(), b"attack-test-salt")
        .expect("hash")
        .to_string()
}

/// A `--users` file with `users` (name, password), each with a `cheap_hash`.
pub fn cheap_users_file(tag: &str, users: &[(&str, &str)]) -> TempFile {
    let path = std::env::temp_dir().join(format!(
        "chat-users-{tag}-{}-{:?}.txt",
        std::process::id(),
        std::thread::current().id()
    ));
    let text: String = users
        .iter()
        .map(|(name, password)| format!("{name}:{}\n", cheap_hash(password)))
        .collect();
    std::fs::write(&path, text).expect("write users file");
    TempFile { path }
}

// --- Redis ---------------------------------------------------------------------

/// A redis-server of the test's own: a free port, persistence off, stopped
/// (by pid) when dropped. Never one that some earlier step left running.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    /// Starts one on a free port; None, with a note, when redis-server is not
    /// installed (with CI=true that fails the test instead).
    pub fn start() -> Option<RedisServer> {
        redis_installed().then(|| RedisServer::start_on(free_port()))
    }

    /// Starts one on `port` (again, after `stop`).
    pub fn start_on(port: u16) -> RedisServer {
        let server = RedisServer::launch(port, &["--port", &port.to_string()]);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if server.ping() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {port} did not answer PING");
    }

    /// A redis-server with `args` on 127.0.0.1, persistence off, known by
    /// `port` (the caller's to wait for: PING, a TLS port, a cluster...).
    pub fn launch(port: u16, args: &[&str]) -> RedisServer {
        let child = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        RedisServer {
            child: Some(child),
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// True when it answers PING with PONG.
    pub fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    /// Kills it at once (a crash, as far as its clients can tell).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True when redis-server can be run; false, with a note, when it is not
/// installed (with CI=true that fails the test instead).
pub fn redis_installed() -> bool {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "redis-server is not installed (apt-get install redis-server)"
    );
    eprintln!("skipped: redis-server is not installed");
    false
}

/// Polls `/healthz` until it answers `status` (200: Redis reached, both
/// links up; 503: Redis lost), or panics with the logs after 10 s.
pub fn wait_for_health(server: &TestServer, status: u16) {
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

/// The next event, or None after `quiet` of silence.
pub fn event_within(ws: &mut Ws, quiet: Duration) -> Option<serde_json::Value> {
    ws.get_mut().set_read_timeout(Some(quiet)).unwrap();
    let event = loop {
        match ws.read() {
            Ok(Message::Text(text)) => break serde_json::from_str(&text).ok(),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(err))
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break None;
            }
            Err(err) => panic!("read failed: {err}"),
        }
    };
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    event
}

/// Sends `text` from `sender` until `receiver` hears it: the room is live
/// between the two (a new room's subscription takes a moment to reach
/// Redis). Returns the id it was heard with.
pub fn until_heard(sender: &mut Ws, receiver: &mut Ws, text: &str) -> String {
    let start = Instant::now();
    for attempt in 1.. {
        let probe = format!("{text} #{attempt}");
        send_event(
            sender,
            "send_message",
            serde_json::json!({ "message": probe }),
        );
        while let Some(event) = event_within(receiver, Duration::from_millis(200)) {
            if event["payload"]["message"] == probe.as_str() {
                return event["payload"]["id"].as_str().unwrap_or("").to_string();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{text}: never heard"
        );
    }
    unreachable!()
}

/// A rustls client (ring, the safe default versions) that trusts only the
/// certificates in `cert` (a PEM file, as `make_certificate` writes).
pub fn tls_client_config(cert: &std::path::Path) -> Arc<rustls::ClientConfig> {
    tls_client_config_for(cert, rustls::DEFAULT_VERSIONS, None)
}

/// A client that trusts `cert` and offers only `versions` and, when given,
/// only `suite`.
pub fn tls_client_config_for(
    cert: &std::path::Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
    suite: Option<rustls::CipherSuite>,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cert).expect("read cert") {
        roots.add(cert.expect("PEM cert")).expect("add root");
    }
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suite) = suite {
        provider
            .cipher_suites
            .retain(|offered| offered.suite() == suite);
        assert!(!provider.cipher_suites.is_empty(), "ring has no {suite:?}");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A certificate and key for localhost and 127.0.0.1 (`tls/gencert.sh`) in
/// a directory of their own: each call a new pair, so two calls are two CAs.
pub fn make_certificate() -> std::path::PathBuf {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "chat-tls-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tls/gencert.sh");
    let status = Command::new("bash")
        .arg(script)
        .arg(&dir)
        .stdout(Stdio::null())
        .status()
        .expect("run gencert.sh");
    assert!(
        status.success(),
        "gencert.sh failed (is openssl installed?)"
    );
    dir
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// A Redis key prefix of this test's own, so runs never share state.
pub fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("t{}{test}{nanos}:", std::process::id())
}

/// A session key file of 32 random-enough bytes, removed when dropped.
pub fn key_file(tag: &str) -> TempFile {
    let path = std::env::temp_dir().join(format!("session-key-{tag}-{}", std::process::id()));
    let key: Vec<u8> = (0..32u8)
        .map(|b| b.wrapping_mul(37).wrapping_add(11))
        .collect();
    std::fs::write(&path, key).expect("write key");
    TempFile { path }
}

/// The session cookie a login set, as `name=value`.
pub fn session_cookie(login: &HttpResponse) -> String {
    let set = login.header("set-cookie").expect("a Set-Cookie header");
    set.split(';').next().expect("name=value").to_string()
}

/// `POST /session/otp` with `cookie`.
pub fn session_otp(server: &TestServer, cookie: &str) -> HttpResponse {
    server.request("POST", "/session/otp", &[("Cookie", cookie)], b"")
}

//! The attacks of the security review (issue 15), each against the real
//! server binary over real sockets, each checking the figure the issue names.
//!
//! Heavy tests take the `HEAVY` lock so that their timings (loop pauses,
//! round trips, login latencies) are not disturbed by one another; the whole
//! file runs one test at a time. Servers that a memory attack could blow up
//! run under a 1 GiB address-space limit (as a systemd `MemoryMax` would
//! set), so a server without the bound aborts instead of eating the machine.
//!
//! Tests that need many WebSockets log in with a cheap argon2id hash
//! (`support::cheap_users_file`) and spread their clients over several
//! loopback source addresses (127.0.0.N), below the default per-address
//! connection cap. Run against another build with `CHAT_SERVER_BIN=PATH`.

mod support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    HttpResponse, TestServer, Ws, cheap_users_file, connect_from, connect_ws_from, login_body,
    loopback, masked_frame, metric_from, request_from, upgrade_request,
};
use tungstenite::Message;

// --- shared machinery ----------------------------------------------------------

static HEAVY: Mutex<()> = Mutex::new(());

/// One test at a time (a failed test must not poison the others).
fn heavy() -> MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Latency figures (loop pauses, probe round trips) measure the server's own
/// work. With two cores or more, the server runs alone on core 0 and this
/// test process, with its hundreds of client threads, on the others, so the
/// clients cannot preempt the loop they are measuring (as `bench/run.sh` pins
/// its servers). With one core, both share it.
fn start_on_own_core(args: &[&str]) -> TestServer {
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES.get_or_init(|| thread::available_parallelism().map_or(1, |n| n.get()));
    let pinned = cores >= 2
        && std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", &format!("1-{}", cores - 1)])
            .arg(std::process::id().to_string())
            .output()
            .is_ok_and(|out| out.status.success());
    match pinned {
        true => TestServer::start_under(&["taskset", "-c", "0"], args),
        false => TestServer::start_with(args),
    }
}

/// The address-space cap for memory attacks: 1 GiB, as in the issue.
const AS_CAP_1GIB: [&str; 3] = ["prlimit", "--as=1073741824", "--"];

/// The password of every account in the cheap users files.
const PASSWORD: &str = "attack-test-pw";

/// A wrong-password `POST /login` request (keep-alive).
fn wrong_login_request() -> Vec<u8> {
    let body = login_body("percy", "wrong");
    format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A masked `send_message` frame, as a client sends it.
fn send_message_frame(text: &str) -> Vec<u8> {
    let event = json!({"type": "send_message", "payload": {"message": text}}).to_string();
    masked_frame(0x1, event.as_bytes())
}

/// A masked `change_room` frame.
fn change_room_frame(room: &str) -> Vec<u8> {
    let event = json!({"type": "change_room", "payload": {"name": room}}).to_string();
    masked_frame(0x1, event.as_bytes())
}

/// Writes `prefix` once and then `repeat` over and over, as fast as the
/// socket takes them, until `until`; never reads. Returns the bytes written.
/// The stream of bytes stays whole (a write cut short resumes where it
/// stopped), so frames and requests are never torn.
fn spawn_writer(
    mut stream: TcpStream,
    prefix: Vec<u8>,
    repeat: Vec<u8>,
    until: Instant,
) -> JoinHandle<u64> {
    thread::spawn(move || {
        stream
            .set_write_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut written = 0u64;
        let mut at = 0;
        while at < prefix.len() && Instant::now() < until {
            match stream.write(&prefix[at..]) {
                Ok(0) => return written,
                Ok(n) => {
                    at += n;
                    written += n as u64;
                }
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return written,
            }
        }
        let mut at = 0;
        while !repeat.is_empty() && Instant::now() < until {
            match stream.write(&repeat[at..]) {
                Ok(0) => break,
                Ok(n) => {
                    at = (at + n) % repeat.len();
                    written += n as u64;
                }
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        written
    })
}

/// Reads and drops everything until EOF, an error or `until`; returns the
/// bytes read and, when `keep` > 0, the first `keep` of them.
fn spawn_drain(mut stream: TcpStream, until: Instant, keep: usize) -> JoinHandle<(u64, Vec<u8>)> {
    thread::spawn(move || {
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut total = 0u64;
        let mut kept = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        while Instant::now() < until {
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    total += n as u64;
                    let room = keep.saturating_sub(kept.len()).min(n);
                    kept.extend_from_slice(&chunk[..room]);
                }
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        (total, kept)
    })
}

/// Reads one whole HTTP response (head and Content-Length body) from
/// `stream`, with `pending` holding bytes already read; what follows the
/// response stays in `pending`.
fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> std::io::Result<HttpResponse> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let status_is_101 = head.starts_with("http/1.1 101");
            let total = end + 4 + if status_is_101 { 0 } else { length };
            if pending.len() >= total {
                let response = support::parse_responses(&pending[..total], false)
                    .into_iter()
                    .next()
                    .expect("a response");
                pending.drain(..total);
                return Ok(response);
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// Logs in and upgrades on ONE keep-alive connection from `source`, over raw
/// TCP; returns the stream (blocking, 10 s read timeout) after the 101, and
/// the bytes that already followed it.
fn raw_member(
    source: IpAddr,
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> (TcpStream, Vec<u8>) {
    let mut stream = connect_from(source, addr);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = login_body(user, password);
    let login = format!(
        "POST /login HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(login.as_bytes()).expect("send login");
    let mut pending = Vec::new();
    let response = read_response(&mut stream, &mut pending).expect("login answer");
    assert_eq!(response.status, 200, "login from {source}: {response:?}");
    let json: serde_json::Value = serde_json::from_slice(&response.body).expect("login JSON");
    let otp = json["otp"].as_str().expect("otp").to_string();
    stream
        .write_all(upgrade_request(addr, &otp, "").as_bytes())
        .expect("send upgrade");
    let response = read_response(&mut stream, &mut pending).expect("upgrade answer");
    assert_eq!(response.status, 101, "upgrade from {source}: {response:?}");
    (stream, pending)
}

/// A frame as the server sends it (unmasked).
struct Frame {
    opcode: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Splits a stream of server frames as bytes arrive.
#[derive(Default)]
struct FrameReader {
    buf: Vec<u8>,
    at: usize,
}

impl FrameReader {
    fn push(&mut self, bytes: &[u8]) {
        if self.at > 0 && self.at * 2 > self.buf.len() {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn next_frame(&mut self) -> Option<Frame> {
        let bytes = &self.buf[self.at..];
        if bytes.len() < 2 {
            return None;
        }
        let (head, len) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (4, u16::from_be_bytes([bytes[2], bytes[3]]) as usize),
            127 if bytes.len() >= 10 => (
                10,
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
            ),
            126 | 127 => return None,
            n => (2, n as usize),
        };
        if bytes.len() < head + len {
            return None;
        }
        let frame = Frame {
            opcode: bytes[0] & 0x0f,
            payload: bytes[head..head + len].to_vec(),
        };
        self.at += head + len;
        Some(frame)
    }
}

/// What a raw WebSocket client saw, read by `spawn_frame_reader`.
#[derive(Default, Debug)]
struct Seen {
    /// `new_message` texts, in arrival order (only when asked to keep them).
    messages: Vec<String>,
    new_messages: u64,
    /// `error` event messages, with the number of `new_message`s before each.
    errors: Vec<(u64, String)>,
    close_code: Option<u16>,
    /// How the stream ended: "EOF", an error kind, or None if still open.
    ended: Option<String>,
}

/// Reads server frames from a raw WebSocket on its own thread until the
/// stream ends or `finish` is called; counts `new_message`s, keeps `error`
/// events and the close code, visible meanwhile through `seen`.
struct FrameWatch {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl FrameWatch {
    fn start(stream: TcpStream, early: Vec<u8>, keep_messages: bool) -> FrameWatch {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, flag) = (Arc::clone(&seen), Arc::clone(&stop));
        let handle =
            thread::spawn(move || watch_frames(stream, early, keep_messages, shared, flag));
        FrameWatch { seen, stop, handle }
    }

    /// Runs `f` on what has been seen so far.
    fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap())
    }

    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("frame reader");
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn watch_frames(
    mut stream: TcpStream,
    early: Vec<u8>,
    keep_messages: bool,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut frames = FrameReader::default();
    frames.push(&early);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        {
            let mut seen = seen.lock().unwrap();
            while let Some(frame) = frames.next_frame() {
                match frame.opcode {
                    0x1 if frame.payload.starts_with(br#"{"type":"new_message""#) => {
                        seen.new_messages += 1;
                        if keep_messages {
                            let event: serde_json::Value =
                                serde_json::from_slice(&frame.payload).expect("event JSON");
                            let text = event["payload"]["message"].as_str().unwrap_or("");
                            seen.messages.push(text.to_string());
                        }
                    }
                    0x1 => {
                        let event: serde_json::Value =
                            serde_json::from_slice(&frame.payload).expect("event JSON");
                        if event["type"] == "error" {
                            let message = event["payload"]["message"].as_str().unwrap_or("");
                            let at = seen.new_messages;
                            seen.errors.push((at, message.to_string()));
                        }
                    }
                    0x8 => seen.close_code = frame.close_code().or(Some(1005)),
                    _ => {}
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let ended = match stream.read(&mut chunk) {
            Ok(0) => "EOF".to_string(),
            Ok(n) => {
                frames.push(&chunk[..n]);
                continue;
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                continue;
            }
            Err(err) => format!("{:?}", err.kind()),
        };
        seen.lock().unwrap().ended = Some(ended);
        return;
    }
}

/// The `p`-quantile (0..=1) of `samples`.
fn quantile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::MAX;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sends change_room and then a marker message until the marker comes back:
/// proof that the server has put `ws` in `room`.
fn join_room(ws: &mut Ws, room: &str) {
    support::send_event(ws, "change_room", json!({ "name": room }));
    let marker = format!("joined {room} {:?}", Instant::now());
    support::send_event(ws, "send_message", json!({ "message": marker }));
    loop {
        let event = support::next_event(ws);
        if event["payload"]["message"] == marker.as_str() {
            return;
        }
    }
}

/// Reads events from `ws` until the `new_message` carrying `text`.
fn read_until_message(ws: &mut Ws, text: &str) -> Result<(), String> {
    loop {
        match ws.read() {
            Ok(Message::Text(frame)) => {
                let event: serde_json::Value =
                    serde_json::from_str(&frame).map_err(|e| e.to_string())?;
                if event["payload"]["message"] == text {
                    return Ok(());
                }
            }
            Ok(Message::Close(frame)) => return Err(format!("closed: {frame:?}")),
            Ok(_) => {}
            Err(err) => return Err(err.to_string()),
        }
    }
}

/// Probe clients in a room of their own: every `every`, one of them (in
/// turn) sends a message and the next one times its arrival, until `until`.
/// With 4 probes at 15 ms each sends one message per 60 ms (under the event
/// rate of 20 per second). A message that does not arrive within 2 s counts
/// as a 2 s round trip. Gives the probes back with the samples.
fn spawn_probe(
    mut probes: Vec<Ws>,
    every: Duration,
    until: Instant,
) -> JoinHandle<(Vec<Duration>, Vec<Ws>)> {
    thread::spawn(move || {
        for ws in &mut probes {
            ws.get_mut()
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
        }
        let count = probes.len();
        let mut samples = Vec::new();
        let mut next = Instant::now();
        let mut round = 0usize;
        while Instant::now() < until {
            let (from, to) = (round % count, (round + 1) % count);
            let text = format!("probe {round}");
            let sent = Instant::now();
            support::send_event(
                &mut probes[from],
                "send_message",
                json!({ "message": text }),
            );
            samples.push(match read_until_message(&mut probes[to], &text) {
                Ok(()) => sent.elapsed(),
                Err(_) => Duration::from_secs(2),
            });
            // Everyone else in the room got a copy too: read them now.
            for (i, ws) in probes.iter_mut().enumerate() {
                if i != to {
                    let _ = read_until_message(ws, &text);
                }
            }
            round += 1;
            next += every;
            let now = Instant::now();
            if next > now {
                thread::sleep(next - now); // pacing the probe, not waiting for a result
            } else {
                next = now;
            }
        }
        (samples, probes)
    })
}

/// `count` WebSockets from `source`, each confirmed in `room`.
fn probes_in_room(source: IpAddr, addr: SocketAddr, count: usize, room: &str) -> Vec<Ws> {
    (0..count)
        .map(|_| {
            let mut ws = connect_ws_from(source, addr, "member", PASSWORD);
            join_room(&mut ws, room);
            ws
        })
        .collect()
}

/// A reader for many sockets on one thread (mio): reads as fast as data
/// comes, or at most `rate` bytes per second for a paced socket. Records
/// which sockets the server ended (EOF or error).
struct ReaderPool {
    stop: Arc<AtomicBool>,
    /// How many sockets the server has ended so far.
    ended: Arc<AtomicUsize>,
    handle: JoinHandle<PoolOutcome>,
}

struct PoolOutcome {
    /// For each socket: bytes read and how it ended (None: still open).
    sockets: Vec<(u64, Option<String>)>,
    /// Kept open until the test drops the outcome.
    _streams: Vec<mio::net::TcpStream>,
}

impl ReaderPool {
    fn start(sockets: Vec<(TcpStream, Option<u64>)>) -> ReaderPool {
        let stop = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&ended));
        let handle = thread::spawn(move || read_pool(sockets, flag, count));
        ReaderPool {
            stop,
            ended,
            handle,
        }
    }

    fn ended(&self) -> usize {
        self.ended.load(Ordering::Relaxed)
    }

    fn finish(self) -> PoolOutcome {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("reader pool")
    }
}

fn read_pool(
    sockets: Vec<(TcpStream, Option<u64>)>,
    stop: Arc<AtomicBool>,
    ended_count: Arc<AtomicUsize>,
) -> PoolOutcome {
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new().expect("poll");
    let mut streams = Vec::new();
    let mut rates = Vec::new();
    for (i, (stream, rate)) in sockets.into_iter().enumerate() {
        stream.set_nonblocking(true).unwrap();
        let mut stream = mio::net::TcpStream::from_std(stream);
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE)
            .expect("register");
        streams.push(stream);
        rates.push(rate);
    }
    let n = streams.len();
    let mut read = vec![0u64; n];
    let mut ended: Vec<Option<String>> = vec![None; n];
    // Sockets that may have data we have not read yet (edge-triggered).
    let mut ready = vec![true; n];
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        poll.poll(&mut events, Some(Duration::from_millis(5)))
            .expect("poll");
        for event in events.iter() {
            ready[event.token().0] = true;
        }
        for i in 0..n {
            if !ready[i] || ended[i].is_some() {
                continue;
            }
            let mut allowance = match rates[i] {
                None => u64::MAX,
                Some(rate) => {
                    ((rate as f64 * start.elapsed().as_secs_f64()) as u64).saturating_sub(read[i])
                }
            };
            loop {
                if allowance == 0 {
                    break; // paced: stays ready, read again on a later turn
                }
                let want = chunk.len().min(allowance.min(usize::MAX as u64) as usize);
                match streams[i].read(&mut chunk[..want]) {
                    Ok(0) => {
                        ended[i] = Some("EOF".to_string());
                        ended_count.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Ok(got) => {
                        read[i] += got as u64;
                        allowance -= got as u64;
                    }
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {
                        ready[i] = false;
                        break;
                    }
                    Err(err) if err.kind() == ErrorKind::Interrupted => {}
                    Err(err) => {
                        ended[i] = Some(format!("{:?}", err.kind()));
                        ended_count.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    }
    PoolOutcome {
        sockets: read.into_iter().zip(ended).collect(),
        _streams: streams,
    }
}

/// Waits until `condition` holds, or `limit` passes; returns whether it held.
fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if condition() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of the server's log, for failure messages.
fn log_tail(server: &TestServer, n: usize) -> String {
    let logs = server.logs();
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Panics with every failed check at once, so one run shows all figures.
fn assert_all(failures: &[String], context: &str) {
    assert!(
        failures.is_empty(),
        "{} check(s) failed:\n  - {}\n{context}",
        failures.len(),
        failures.join("\n  - ")
    );
}

// --- 1. pipelined logins --------------------------------------------------------------

/// Issue 15 §1. Attack: 20 connections from 127.0.0.1 write wrong-password
/// `POST /login` requests back to back for 8 s, as fast as the server takes
/// them, and drain the answers (401s, then 429s); meanwhile a user on
/// 127.0.0.2 logs in (correct password) 5 times. The server runs under a
/// 1 GiB address-space limit. Figures: the server is still alive; its RSS
/// high-water mark grew by less than 64 MiB; each of the 5 logins got 200
/// within 1 s.
#[test]
fn pipelined_wrong_logins_keep_memory_bounded_and_let_others_log_in() {
    const ATTACKERS: usize = 20;
    const ATTACK: Duration = Duration::from_secs(8);
    let _heavy = heavy();
    let mut server = TestServer::start_under(&AS_CAP_1GIB, &["--log-level", "info"]);
    let addr = server.addr;
    let before_kb = server.status_kb("VmRSS");
    let start = Instant::now();
    let until = start + ATTACK;
    let requests = wrong_login_request().repeat(64);
    let mut attackers = Vec::new();
    for _ in 0..ATTACKERS {
        let stream = connect_from(loopback(1), addr);
        let drain = spawn_drain(stream.try_clone().unwrap(), until, 0);
        let writer = spawn_writer(stream, Vec::new(), requests.clone(), until);
        attackers.push((writer, drain));
    }
    let user = thread::spawn(move || {
        let body = login_body("percy", "123");
        (0..5u32)
            .map(|i| {
                let due = start + Duration::from_millis(1000 + 1400 * u64::from(i));
                thread::sleep(due.saturating_duration_since(Instant::now())); // spacing
                let asked = Instant::now();
                let answer = request_from(
                    loopback(2),
                    addr,
                    "POST",
                    "/login",
                    body.as_bytes(),
                    Duration::from_secs(3),
                );
                match answer {
                    Ok(response) if response.status == 200 => Ok(asked.elapsed()),
                    Ok(response) => Err(format!("answered {}", response.status)),
                    Err(err) => Err(err),
                }
            })
            .collect::<Vec<_>>()
    });
    let mut peak_kb = before_kb;
    let mut died = None;
    while Instant::now() < until {
        if let Some(status) = server.exit_status() {
            died = Some(status);
            break;
        }
        if let Some(kb) = server.try_status_kb("VmRSS") {
            peak_kb = peak_kb.max(kb);
        }
        thread::sleep(Duration::from_millis(100));
    }
    let mut sent = 0;
    let mut answered = 0;
    for (writer, drain) in attackers {
        sent += writer.join().unwrap();
        answered += drain.join().unwrap().0;
    }
    let logins = user.join().unwrap();
    if died.is_none() {
        peak_kb = peak_kb.max(server.try_status_kb("VmHWM").unwrap_or(0));
        died = server.exit_status();
    }

    let mut failures = Vec::new();
    if let Some(status) = died {
        failures.push(format!("the server died during the attack: {status}"));
    }
    let growth_mib = peak_kb.saturating_sub(before_kb) / 1024;
    if growth_mib >= 64 {
        failures.push(format!(
            "server RSS grew by {growth_mib} MiB (peak seen), bound 64 MiB"
        ));
    }
    for (i, login) in logins.iter().enumerate() {
        match login {
            Ok(took) if *took <= Duration::from_secs(1) => {}
            Ok(took) => failures.push(format!("login {i} from 127.0.0.2 took {took:?} (> 1 s)")),
            Err(err) => failures.push(format!("login {i} from 127.0.0.2: {err}")),
        }
    }
    eprintln!(
        "pipelined logins: {} MiB sent, {} KiB answered, RSS {before_kb} -> {peak_kb} kB, logins {logins:?}",
        sent >> 20,
        answered >> 10
    );
    assert_all(
        &failures,
        &format!("server log tail:\n{}", log_tail(&server, 5)),
    );
}

/// Issue 15 §1, read-budget bypass. Attack: on one connection from
/// 127.0.0.1, 400 pipelined wrong-password logins (the server defers logins
/// past 4 per loop turn, and today keeps reading behind them), then a
/// WebSocket upgrade with a valid OTP, then small `send_message` frames
/// written as fast as the server reads, for 5 s. Figure:
/// `chat_loop_longest_pause_seconds` stays <= 50 ms (today everything
/// buffered behind the deferred logins reaches tungstenite as early data and
/// is decoded in one call). The upgrade must have been answered 101.
#[test]
fn early_data_behind_deferred_logins_obeys_the_read_budget() {
    const LOGINS: usize = 400;
    let _heavy = heavy();
    let server = start_on_own_core(&["--log-level", "info", "--otp-ttl", "60s"]);
    let addr = server.addr;
    let otp = support::login_from(loopback(2), addr, "percy", "123");
    let pause_before =
        metric_from(loopback(3), addr, "chat_loop_longest_pause_seconds").expect("metrics before");
    let mut prefix = wrong_login_request().repeat(LOGINS);
    prefix.extend_from_slice(upgrade_request(addr, &otp, "").as_bytes());
    let frames: Vec<u8> = (0..1000)
        .flat_map(|i| send_message_frame(&format!("early {i}")))
        .collect();
    let stream = connect_from(loopback(1), addr);
    let until = Instant::now() + Duration::from_secs(5);
    let drain = spawn_drain(stream.try_clone().unwrap(), until, 1 << 20);
    let writer = spawn_writer(stream, prefix, frames, until);
    let written = writer.join().unwrap();
    let (read, head) = drain.join().unwrap();
    let pause = metric_from(loopback(3), addr, "chat_loop_longest_pause_seconds");

    let mut failures = Vec::new();
    if !head.windows(12).any(|w| w == b"HTTP/1.1 101") {
        failures.push("the upgrade behind the logins was never answered 101".to_string());
    }
    match &pause {
        Ok(pause) if *pause <= 0.050 => {}
        Ok(pause) => failures.push(format!(
            "chat_loop_longest_pause_seconds = {:.0} ms (> 50 ms; {:.1} ms before the attack)",
            pause * 1000.0,
            pause_before * 1000.0
        )),
        Err(err) => failures.push(format!("no metrics after the attack: {err}")),
    }
    eprintln!(
        "early data: {} KiB written, {} KiB read back, pause {pause:?}",
        written >> 10,
        read >> 10
    );
    assert_all(
        &failures,
        &format!("server log tail:\n{}", log_tail(&server, 5)),
    );
}

// --- 2. unauthenticated connections holding answers --------------------------------

/// `GET /app.js` (14 KiB) `count` times, pipelined in one write.
fn pipelined_gets(count: usize) -> Vec<u8> {
    b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n".repeat(count)
}

/// Waits until the server's RSS stops moving (5 samples 100 ms apart within
/// 256 kB of each other) or `limit` passes; returns the last VmRSS in kB,
/// or None if the server died.
fn settled_rss_kb(server: &TestServer, limit: Duration) -> Option<u64> {
    let start = Instant::now();
    let mut last = server.try_status_kb("VmRSS")?;
    let mut steady = 0;
    while steady < 5 && start.elapsed() < limit {
        thread::sleep(Duration::from_millis(100));
        let now = server.try_status_kb("VmRSS")?;
        steady = if now.abs_diff(last) < 256 {
            steady + 1
        } else {
            0
        };
        last = now;
    }
    Some(last)
}

/// Issue 15 §2. Attack: 240 connections (60 each from 127.0.0.2..=127.0.0.5,
/// under the default per-address cap), no login, each pipelining 90
/// `GET /app.js` in one write and never reading. The server runs under a
/// 1 GiB address-space limit. Figure: server RSS growth per connection
/// < 128 KiB (today each queues its ~1.2 MiB of answers: ~1 MiB of RSS), the
/// server alive and still serving a fresh client.
#[test]
fn pipelined_gets_that_are_never_read_hold_little_memory_per_connection() {
    const PER_ADDRESS: usize = 60;
    const ADDRESSES: u8 = 4;
    let _heavy = heavy();
    let mut server = TestServer::start_under(&AS_CAP_1GIB, &["--log-level", "info"]);
    let addr = server.addr;
    let before_kb = settled_rss_kb(&server, Duration::from_secs(2)).expect("running");
    let requests = pipelined_gets(90);
    let mut held = Vec::new();
    for n in 0..ADDRESSES {
        for _ in 0..PER_ADDRESS {
            let mut stream = connect_from(loopback(2 + n), addr);
            stream.write_all(&requests).expect("send requests");
            held.push(stream);
        }
    }
    let connections = held.len() as u64;
    let after_kb = settled_rss_kb(&server, Duration::from_secs(15));
    let fresh = request_from(loopback(9), addr, "GET", "/", b"", Duration::from_secs(5));

    let mut failures = Vec::new();
    if let Some(status) = server.exit_status() {
        failures.push(format!("the server died: {status}"));
    }
    match after_kb {
        Some(after_kb) => {
            let per_conn = after_kb.saturating_sub(before_kb) / connections;
            if per_conn >= 128 {
                failures.push(format!(
                    "server RSS grew {per_conn} KiB per connection ({before_kb} -> {after_kb} kB for {connections}), bound 128 KiB"
                ));
            }
        }
        None => failures.push("server RSS unreadable: the server is gone".to_string()),
    }
    match fresh {
        Ok(response) if response.status == 200 => {}
        other => failures.push(format!("a fresh client was not served: {other:?}")),
    }
    let context = format!("server log tail:\n{}", log_tail(&server, 3));
    drop(held);
    assert_all(&failures, &context);
}

/// Reads what the server sends until it closes (EOF or reset) or `limit`
/// passes; returns the bytes and whether it closed.
fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while start.elapsed() < limit {
        match stream.read(&mut chunk) {
            Ok(0) => return (bytes, true),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (bytes, true),
        }
    }
    (bytes, false)
}

/// Issue 15 §2, per-address cap. Attack: one address opens connections past
/// `--max-connections-per-ip 10`. Figures: the 11th connection from
/// 127.0.0.1 gets 503 mentioning "too many connections" and is closed; a
/// connection from 127.0.0.2 is still served 200; once one of the ten closes,
/// 127.0.0.1 is served again. (Today: the flag does not exist, so the server
/// refuses to start: "unknown argument".)
#[test]
fn connections_past_the_per_address_cap_get_503() {
    let _heavy = heavy();
    let server = TestServer::start_with(&["--max-connections-per-ip", "10"]);
    let addr = server.addr;
    let mut held: Vec<TcpStream> = (0..10).map(|_| connect_from(loopback(1), addr)).collect();
    server.wait_for_log("(10 open)", Duration::from_secs(5));

    let mut eleventh = connect_from(loopback(1), addr);
    let _ = eleventh.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let (reply, closed) = read_to_close(&mut eleventh, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&reply).to_string();
    assert!(
        text.starts_with("HTTP/1.1 503"),
        "the 11th connection from 127.0.0.1 was not refused with 503: {text:?}"
    );
    assert!(
        text.contains("too many connections"),
        "the 503 does not say why: {text:?}"
    );
    assert!(closed, "the refused connection was left open");

    let other = request_from(loopback(2), addr, "GET", "/", b"", Duration::from_secs(5));
    assert_eq!(
        other.map(|r| r.status),
        Ok(200),
        "another address was not served"
    );

    drop(held.pop());
    let served_again = wait_until(Duration::from_secs(5), || {
        request_from(loopback(1), addr, "GET", "/", b"", Duration::from_secs(5))
            .is_ok_and(|r| r.status == 200)
    });
    assert!(
        served_again,
        "127.0.0.1 was not served after one of its connections closed"
    );
}

// --- the memory budget ----------------------------------------------------------------

/// Issue 15 §2, total budget. Attack: 50 connections from 127.0.0.1 each
/// pipeline 600 `GET /app.js` (8.4 MB of answers: more than the ~4 MB a
/// loopback socket that is never read absorbs, so the rest must wait in the
/// server) and never read, against `--max-memory 1048576` (1 MiB). Figures: `chat_memory_cutoffs_total` > 0 in /metrics; a log line
/// mentions "memory budget"; some of the 50 (not all: the largest first,
/// until back under the bound) are closed; a fresh client is served. (Today:
/// `--max-memory` does not exist: "unknown argument".)
#[test]
fn a_total_memory_budget_cuts_off_the_largest_holders() {
    const CLIENTS: usize = 50;
    let _heavy = heavy();
    let server = TestServer::start_under(
        &AS_CAP_1GIB,
        &["--max-memory", "1048576", "--log-level", "info"],
    );
    let addr = server.addr;
    let requests = pipelined_gets(600);
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut stream = connect_from(loopback(1), addr);
            stream.write_all(&requests).expect("send requests");
            stream
        })
        .collect();
    let mut cutoffs = Err("never asked".to_string());
    let cut = wait_until(Duration::from_secs(10), || {
        cutoffs = metric_from(loopback(2), addr, "chat_memory_cutoffs_total");
        matches!(cutoffs, Ok(n) if n > 0.0)
    });
    assert!(cut, "chat_memory_cutoffs_total never rose: {cutoffs:?}");
    server.wait_for_log("memory budget", Duration::from_secs(5));

    // Now read every client: a cut-off one ends (EOF or reset); the others
    // get the rest of their answers and stay open (keep-alive). Count the
    // ended ones half a second after the first was seen.
    let pool = ReaderPool::start(clients.into_iter().map(|s| (s, None)).collect());
    let some_ended = wait_until(Duration::from_secs(5), || pool.ended() > 0);
    thread::sleep(Duration::from_millis(500)); // the observation window, not a race
    let closed = pool
        .finish()
        .sockets
        .iter()
        .filter(|(_, e)| e.is_some())
        .count();
    assert!(some_ended, "no client saw its connection closed");
    eprintln!("memory budget: {closed} of {CLIENTS} clients cut off, cutoffs {cutoffs:?}");
    assert!(
        (1..CLIENTS).contains(&closed),
        "{closed} of {CLIENTS} clients were closed: expected the largest holders only"
    );
    let fresh = request_from(loopback(3), addr, "GET", "/", b"", Duration::from_secs(5));
    assert_eq!(
        fresh.map(|r| r.status),
        Ok(200),
        "a fresh client was not served"
    );
}

// --- 3. one member stalling the loop --------------------------------------------------

/// Issue 15 §3, flooding. Attack: in a room of 400 members (from
/// 127.0.0.2..=127.0.0.5; 380 read as fast as they can, 20 read at a steady
/// 2 MB/s), one member pipelines `send_message` as fast as the server takes
/// them, for 8 s. Four probes in another room send a message every 15 ms
/// (in turn, under the event rate) and time its arrival. Figures: probe
/// round trip p99 <= 50 ms; `chat_loop_longest_pause_seconds` <= 50 ms; no
/// member was closed (fast or paced) and no "slow consumer" was logged; the
/// flooder got an `error` event mentioning "rate limit" and was not closed.
#[test]
fn a_flooding_member_neither_stalls_the_loop_nor_gets_readers_cut_off() {
    const MEMBERS: usize = 400;
    const PACED: usize = 20;
    const FLOOD: Duration = Duration::from_secs(8);
    let _heavy = heavy();
    let users = cheap_users_file("flood", &[("member", PASSWORD)]);
    let server = start_on_own_core(&[
        "--users",
        users.path_str(),
        "--ping-interval",
        "60s",
        "--pong-wait",
        "60s",
        "--log-level",
        "info",
    ]);
    let addr = server.addr;
    let sockets: Vec<(TcpStream, Option<u64>)> = (0..MEMBERS)
        .map(|i| {
            let (stream, _) = raw_member(loopback(2 + (i / 100) as u8), addr, "member", PASSWORD);
            (stream, (i < PACED).then_some(2_000_000))
        })
        .collect();
    let pool = ReaderPool::start(sockets);
    let probes = probes_in_room(loopback(7), addr, 4, "probe");
    let (flooder, early) = raw_member(loopback(6), addr, "member", PASSWORD);
    let pause_before = metric_from(loopback(8), addr, "chat_loop_longest_pause_seconds")
        .expect("metrics before the flood");

    let flooder_watch = FrameWatch::start(flooder.try_clone().unwrap(), early, false);
    let until = Instant::now() + FLOOD;
    let batch: Vec<u8> = (0..500)
        .flat_map(|i| send_message_frame(&format!("flood {i}")))
        .collect();
    let writer = spawn_writer(flooder, Vec::new(), batch, until);
    let (samples, _probes) = spawn_probe(probes, Duration::from_millis(15), until)
        .join()
        .unwrap();
    let written = writer.join().unwrap();
    let pause = metric_from(loopback(8), addr, "chat_loop_longest_pause_seconds");
    let flooder_seen = flooder_watch.finish();
    let members = pool.finish();
    let logs = server.logs();

    let mut failures = Vec::new();
    let p50 = quantile(&samples, 0.5);
    let p99 = quantile(&samples, 0.99);
    if p99 > Duration::from_millis(50) {
        failures.push(format!(
            "probe round trip p99 {:.1} ms (> 50 ms; p50 {:.1} ms, max {:.1} ms, {} samples)",
            ms(p99),
            ms(p50),
            ms(quantile(&samples, 1.0)),
            samples.len()
        ));
    }
    match &pause {
        Ok(pause) if *pause <= 0.050 => {}
        Ok(pause) => failures.push(format!(
            "chat_loop_longest_pause_seconds = {:.0} ms (> 50 ms; {:.1} ms before the flood)",
            pause * 1000.0,
            pause_before * 1000.0
        )),
        Err(err) => failures.push(format!("no metrics after the flood: {err}")),
    }
    let closed = |range: std::ops::Range<usize>| {
        members.sockets[range]
            .iter()
            .filter(|(_, ended)| ended.is_some())
            .count()
    };
    let (fast_closed, paced_closed) = (closed(PACED..MEMBERS), closed(0..PACED));
    if fast_closed + paced_closed > 0 {
        failures.push(format!(
            "members closed: {fast_closed} of {} fast readers, {paced_closed} of {PACED} reading at 2 MB/s",
            MEMBERS - PACED
        ));
    }
    let slow = logs.matches("slow consumer").count();
    if slow > 0 {
        failures.push(format!("{slow} \"slow consumer\" line(s) logged"));
    }
    if !flooder_seen
        .errors
        .iter()
        .any(|(_, message)| message.contains("rate limit"))
    {
        failures.push(format!(
            "the flooder got no \"rate limit\" error (errors: {:?})",
            flooder_seen.errors
        ));
    }
    if flooder_seen.close_code.is_some() || flooder_seen.ended.is_some() {
        failures.push(format!(
            "the flooder was closed: close code {:?}, stream {:?}",
            flooder_seen.close_code, flooder_seen.ended
        ));
    }
    let delivered: u64 = members.sockets.iter().map(|(read, _)| read).sum();
    eprintln!(
        "flood: {} KiB written by the flooder, {} MiB read by members, probe p50 {:.1} ms p99 {:.1} ms, pause {pause:?}",
        written >> 10,
        delivered >> 20,
        ms(p50),
        ms(p99)
    );
    assert_all(&failures, "");
}

/// Issue 15 §3, flooding against members who read at a normal pace.
/// Attack: a room of 20 members (127.0.0.2) that each read at a steady
/// 2 MB/s; one member pipelines 450-byte `send_message`s as fast as the
/// server takes them, for 6 s. Figures: no member was closed and no "slow
/// consumer" was logged (today the flood outruns 2 MB/s and they are cut
/// off with 1008); the flooder got a "rate limit" error.
#[test]
fn members_reading_at_a_steady_pace_survive_a_flood() {
    const MEMBERS: usize = 20;
    const FLOOD: Duration = Duration::from_secs(6);
    let _heavy = heavy();
    let users = cheap_users_file("pace", &[("member", PASSWORD)]);
    let server = TestServer::start_with(&["--users", users.path_str(), "--log-level", "info"]);
    let addr = server.addr;
    let sockets: Vec<(TcpStream, Option<u64>)> = (0..MEMBERS)
        .map(|_| {
            let (stream, _) = raw_member(loopback(2), addr, "member", PASSWORD);
            (stream, Some(2_000_000))
        })
        .collect();
    let pool = ReaderPool::start(sockets);
    let (flooder, early) = raw_member(loopback(3), addr, "member", PASSWORD);
    let flooder_watch = FrameWatch::start(flooder.try_clone().unwrap(), early, false);
    let until = Instant::now() + FLOOD;
    let text = "f".repeat(450);
    let batch: Vec<u8> = (0..100).flat_map(|_| send_message_frame(&text)).collect();
    let written = spawn_writer(flooder, Vec::new(), batch, until)
        .join()
        .unwrap();
    let members = pool.finish();
    let flooder_seen = flooder_watch.finish();

    let mut failures = Vec::new();
    let closed: Vec<_> = members
        .sockets
        .iter()
        .filter_map(|(read, ended)| {
            ended
                .as_ref()
                .map(|how| format!("{how} after {} KiB", read >> 10))
        })
        .collect();
    if !closed.is_empty() {
        failures.push(format!(
            "{} of {MEMBERS} members reading at 2 MB/s were closed: {closed:?}",
            closed.len()
        ));
    }
    let slow = server.logs().matches("slow consumer").count();
    if slow > 0 {
        failures.push(format!("{slow} \"slow consumer\" line(s) logged"));
    }
    if !flooder_seen
        .errors
        .iter()
        .any(|(_, message)| message.contains("rate limit"))
    {
        failures.push(format!(
            "the flooder got no \"rate limit\" error (errors: {:?})",
            flooder_seen.errors
        ));
    }
    eprintln!("steady readers: the flooder wrote {} KiB", written >> 10);
    assert_all(&failures, "");
}

/// The event budget's contract (issue 15 §3): a client writes 80
/// `send_message` events at once (default budget: burst 50, 20 per second).
/// Figures: it gets exactly one `error` event mentioning "rate limit"; it is
/// not closed; it and another member of the room each receive all 80, in
/// order; and the last arrives no sooner than 1 s after the write (30 events
/// past the burst at 20 per second take 1.5 s), so the input was paused,
/// not dropped.
#[test]
fn the_event_rate_limit_pauses_input_without_dropping_or_closing() {
    const EVENTS: usize = 80;
    let _heavy = heavy();
    let server = TestServer::start_with(&["--log-level", "info"]);
    let addr = server.addr;
    let mut other = connect_ws_from(loopback(1), addr, "percy", "123");
    let (mut sender, early) = raw_member(loopback(1), addr, "percy", "123");
    let sender_watch = FrameWatch::start(sender.try_clone().unwrap(), early, true);
    let texts: Vec<String> = (0..EVENTS).map(|i| format!("paced {i}")).collect();
    let burst: Vec<u8> = texts.iter().flat_map(|t| send_message_frame(t)).collect();
    let written = Instant::now();
    sender.write_all(&burst).expect("send the burst");

    other
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut heard = Vec::new();
    while heard.len() < EVENTS {
        match other.read() {
            Ok(Message::Text(text)) => {
                let event: serde_json::Value = serde_json::from_str(&text).unwrap();
                heard.push(
                    event["payload"]["message"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                );
            }
            Ok(_) => {}
            Err(err) => panic!("the other member stopped hearing after {heard:?}: {err}"),
        }
    }
    let last_after = written.elapsed();
    // The sender's own copies left in the same turns as the other member's.
    wait_until(Duration::from_secs(5), || {
        sender_watch.with(|seen| seen.messages.len() >= EVENTS || seen.ended.is_some())
    });
    let seen = sender_watch.finish();

    let mut failures = Vec::new();
    if heard != texts {
        failures.push(format!("the other member heard {heard:?}"));
    }
    if seen.messages != texts {
        failures.push(format!("the sender heard {:?}", seen.messages));
    }
    let rate_errors: Vec<_> = seen
        .errors
        .iter()
        .filter(|(_, m)| m.contains("rate limit"))
        .collect();
    if rate_errors.len() != 1 || seen.errors.len() != 1 {
        failures.push(format!(
            "expected exactly one \"rate limit\" error, got {:?}",
            seen.errors
        ));
    }
    if seen.close_code.is_some() || seen.ended.is_some() {
        failures.push(format!(
            "the sender was closed: code {:?}, stream {:?}",
            seen.close_code, seen.ended
        ));
    }
    if last_after < Duration::from_secs(1) {
        failures.push(format!(
            "all {EVENTS} were delivered within {last_after:?}: not paced to 20 per second past the burst of 50"
        ));
    }
    assert_all(&failures, "");
}

/// Issue 15 §3, room churn. Attack: a room of 4,000 idle members (20
/// addresses × 200, cheap logins) and 16 members that pipeline `change_room`
/// in and out of it as fast as the server takes them, for 8 s. Four probes
/// in another room send a message every 15 ms (in turn) and time its
/// arrival, first for 2 s without churn (the baseline, reported), then
/// during the churn. Figures: during the churn, probe round trip median
/// <= 10 ms and p99 <= 50 ms (the flood bound): leaving a room must not cost
/// a scan of its members, and churners are held to the event budget.
#[test]
fn room_churn_does_not_slow_other_rooms() {
    const MEMBERS: usize = 4_000;
    const PER_ADDRESS: usize = 200;
    const CHURNERS: usize = 16;
    const CHURN: Duration = Duration::from_secs(8);
    let _heavy = heavy();
    let users = cheap_users_file("churn", &[("member", PASSWORD)]);
    let server = start_on_own_core(&[
        "--users",
        users.path_str(),
        "--ping-interval",
        "60s",
        "--pong-wait",
        "60s",
        "--log-level",
        "info",
    ]);
    let addr = server.addr;
    let setup = Instant::now();
    let members: Vec<TcpStream> = (0..MEMBERS)
        .map(|i| {
            raw_member(
                loopback(10 + (i / PER_ADDRESS) as u8),
                addr,
                "member",
                PASSWORD,
            )
            .0
        })
        .collect();
    let setup = setup.elapsed();
    let probes = probes_in_room(loopback(40), addr, 4, "probe");
    let churners: Vec<TcpStream> = (0..CHURNERS)
        .map(|_| raw_member(loopback(41), addr, "member", PASSWORD).0)
        .collect();

    let baseline_until = Instant::now() + Duration::from_secs(2);
    let (baseline, probes) = spawn_probe(probes, Duration::from_millis(15), baseline_until)
        .join()
        .unwrap();

    let until = Instant::now() + CHURN;
    let writers: Vec<_> = churners
        .into_iter()
        .enumerate()
        .map(|(k, stream)| {
            let mut cycle = change_room_frame(&format!("side-{k}"));
            cycle.extend(change_room_frame("general"));
            let drain = spawn_drain(stream.try_clone().unwrap(), until, 0);
            (
                spawn_writer(stream, Vec::new(), cycle.repeat(100), until),
                drain,
            )
        })
        .collect();
    let (samples, _probes) = spawn_probe(probes, Duration::from_millis(15), until)
        .join()
        .unwrap();
    let mut written = 0;
    for (writer, drain) in writers {
        written += writer.join().unwrap();
        drain.join().unwrap();
    }

    let (p50, p99) = (quantile(&samples, 0.5), quantile(&samples, 0.99));
    eprintln!(
        "churn: {MEMBERS} members set up in {setup:?}; {} KiB of change_room written; baseline p50 {:.1} ms p99 {:.1} ms; churn p50 {:.1} ms p99 {:.1} ms ({} samples)",
        written >> 10,
        ms(quantile(&baseline, 0.5)),
        ms(quantile(&baseline, 0.99)),
        ms(p50),
        ms(p99),
        samples.len()
    );
    let mut failures = Vec::new();
    if p50 > Duration::from_millis(10) {
        failures.push(format!(
            "probe round trip median {:.1} ms (> 10 ms)",
            ms(p50)
        ));
    }
    if p99 > Duration::from_millis(50) {
        failures.push(format!("probe round trip p99 {:.1} ms (> 50 ms)", ms(p99)));
    }
    drop(members);
    assert_all(
        &failures,
        &format!(
            "without churn: median {:.1} ms, p99 {:.1} ms ({} samples)",
            ms(quantile(&baseline, 0.5)),
            ms(quantile(&baseline, 0.99)),
            baseline.len()
        ),
    );
}

// --- 4. smaller ones -------------------------------------------------------------------

/// Characters a client must not be able to put into the log raw: C1 controls
/// (NEL, CSI), a bidi override, an ANSI escape, and plain non-ASCII.
const HOSTILE: [(&str, &str); 5] = [
    ("NEL", "\u{85}"),
    ("C1 CSI", "\u{9b}31m"),
    ("U+202E", "\u{202e}"),
    ("ESC [", "\u{1b}[31m"),
    ("e acute", "\u{e9}"),
];

/// Issue 15 §4, log injection. Attack: at `--log-level debug`, request paths
/// carrying NEL (`\xc2\x85`), CSI (`\xc2\x9b`, and `\x1b[`), U+202E and `é`;
/// the same in a login user name, an Origin header, a room name and an event
/// type. Figure: no character from a client that is a control character or
/// not ASCII appears raw anywhere in the server's stderr (lines found are
/// listed, escaped).
#[test]
fn client_bytes_never_reach_the_log_raw() {
    let _heavy = heavy();
    let server = TestServer::start(); // the harness runs it at debug level
    let addr = server.addr;
    for (name, chars) in HOSTILE {
        let path = format!("/x{chars}y?q={chars}");
        let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let reply = server.raw(raw.as_bytes());
        assert!(!reply.is_empty(), "no answer to the path with {name}");
        let login = login_body(&format!("user{chars}"), "wrong");
        let _ = request_from(
            loopback(2),
            addr,
            "POST",
            "/login",
            login.as_bytes(),
            Duration::from_secs(5),
        );
        let upgrade = upgrade_request(addr, "0", &format!("Origin: http://evil{chars}\r\n"));
        let _ = server.raw(upgrade.as_bytes());
    }
    let mut ws = server.connect();
    for (_, chars) in HOSTILE {
        support::send_event(
            &mut ws,
            "change_room",
            json!({ "name": format!("room{chars}") }),
        );
        support::send_event(&mut ws, &format!("type{chars}"), json!({}));
        let _ = support::next_event(&mut ws); // the error for the unknown type
    }
    join_room(&mut ws, "end"); // every event above has been handled
    drop(ws);
    let _ = server.request("GET", "/log-marker-done", &[], b"");
    server.wait_for_log("log-marker-done", Duration::from_secs(5));

    let logs = server.logs();
    let raw: Vec<String> = logs
        .lines()
        .filter(|line| line.chars().any(|c| c.is_control() || !c.is_ascii()))
        .map(|line| line.escape_default().to_string())
        .collect();
    assert!(
        raw.is_empty(),
        "{} log line(s) carry control or non-ASCII characters from clients:\n{}",
        raw.len(),
        raw.join("\n")
    );
}

/// The statuses of the HTTP responses at the start of each answer in `bytes`.
fn count_responses(bytes: &[u8]) -> HashMap<u16, usize> {
    let mut counts = HashMap::new();
    for at in memchr_all(bytes, b"HTTP/1.1 ") {
        let code = std::str::from_utf8(&bytes[at + 9..(at + 12).min(bytes.len())])
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        *counts.entry(code).or_insert(0) += 1;
    }
    counts
}

/// Every offset of `needle` in `haystack`.
fn memchr_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Issue 15 §4, failed-login limiter (global budget). Attack: wrong
/// passwords for `percy` from 30 addresses (127.0.0.2..=127.0.0.31), 9 each
/// (under the per-address burst of 10), 270 in all at 100 per second, each
/// on its own connection; meanwhile 3 correct logins from 127.0.0.50.
/// Figures: every failure is answered 401; once the global bucket (burst
/// 100, 20 per second) is empty, failures are answered only after ~1 s: at
/// least 60 of the 270 took >= 900 ms, and at most 5 of the first 90 did;
/// each correct login got 200 within 500 ms (no lockout).
#[test]
fn failed_logins_from_many_addresses_meet_a_global_budget() {
    const ADDRESSES: usize = 30;
    const FAILURES: usize = ADDRESSES * 9;
    let _heavy = heavy();
    let server = TestServer::start_with(&["--log-level", "info"]);
    let addr = server.addr;
    let start = Instant::now() + Duration::from_millis(200);
    let failures: Vec<JoinHandle<(u16, Duration)>> = (0..FAILURES)
        .map(|k| {
            let source = loopback(2 + (k % ADDRESSES) as u8);
            thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let due = start + Duration::from_millis(10 * k as u64);
                    thread::sleep(due.saturating_duration_since(Instant::now())); // the schedule
                    let body = login_body("percy", "wrong");
                    let asked = Instant::now();
                    let answer = request_from(
                        source,
                        addr,
                        "POST",
                        "/login",
                        body.as_bytes(),
                        Duration::from_secs(10),
                    );
                    (answer.map(|r| r.status).unwrap_or(0), asked.elapsed())
                })
                .expect("spawn")
        })
        .collect();
    let correct: Vec<JoinHandle<(u16, Duration)>> = [1800u64, 2200, 2600]
        .into_iter()
        .map(|at| {
            thread::spawn(move || {
                thread::sleep(
                    (start + Duration::from_millis(at)).saturating_duration_since(Instant::now()),
                );
                let body = login_body("percy", "123");
                let asked = Instant::now();
                let answer = request_from(
                    loopback(50),
                    addr,
                    "POST",
                    "/login",
                    body.as_bytes(),
                    Duration::from_secs(10),
                );
                (answer.map(|r| r.status).unwrap_or(0), asked.elapsed())
            })
        })
        .collect();
    let failed: Vec<(u16, Duration)> = failures.into_iter().map(|h| h.join().unwrap()).collect();
    let correct: Vec<(u16, Duration)> = correct.into_iter().map(|h| h.join().unwrap()).collect();

    let slow = Duration::from_millis(900);
    let delayed = failed.iter().filter(|(_, took)| *took >= slow).count();
    let early_delayed = failed[..90]
        .iter()
        .filter(|(_, took)| *took >= slow)
        .count();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for (status, _) in &failed {
        *statuses.entry(*status).or_insert(0) += 1;
    }
    let mut problems = Vec::new();
    if statuses.get(&401) != Some(&FAILURES) {
        problems.push(format!(
            "failures were answered {statuses:?}, expected 401 only"
        ));
    }
    if delayed < 60 {
        problems.push(format!(
            "{delayed} of {FAILURES} failures took >= 900 ms (expected >= 60 once the global budget is spent); slowest {:?}",
            failed.iter().map(|(_, t)| *t).max()
        ));
    }
    if early_delayed > 5 {
        problems.push(format!(
            "{early_delayed} of the first 90 failures (inside the burst) took >= 900 ms"
        ));
    }
    for (status, took) in &correct {
        if *status != 200 || *took > Duration::from_millis(500) {
            problems.push(format!("a correct login got {status} after {took:?}"));
        }
    }
    assert_all(&problems, "");
}

/// Issue 15 §4, log flooding. Attack: one connection pipelines 2,000
/// wrong-password logins (10 fail with 401, then the per-address limiter
/// answers 429). Figure: "login refused: too many failures" WARN lines are
/// written at most once per 5 s: at most 1 + elapsed/5 s + 1 of them (today
/// one per 429).
#[test]
fn refused_logins_do_not_flood_the_log() {
    const LOGINS: usize = 2_000;
    let _heavy = heavy();
    let server = TestServer::start_with(&["--log-level", "info"]);
    let stream = connect_from(loopback(1), server.addr);
    let start = Instant::now();
    let until = start + Duration::from_secs(30);
    let mut reader = stream.try_clone().unwrap();
    let mut writer = stream;
    writer
        .write_all(&wrong_login_request().repeat(LOGINS))
        .expect("send logins");
    reader
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut answers = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while memchr_all(&answers, b"HTTP/1.1 ").len() < LOGINS && Instant::now() < until {
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answers.extend_from_slice(&chunk[..n]),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(err) => panic!("reading the answers: {err}"),
        }
    }
    let elapsed = start.elapsed();
    let counts = count_responses(&answers);
    assert_eq!(
        counts.values().sum::<usize>(),
        LOGINS,
        "not every login was answered within 30 s: {counts:?}"
    );
    assert_eq!(
        counts.get(&401),
        Some(&10),
        "the per-address burst: {counts:?}"
    );
    let lines = server
        .logs()
        .matches("login refused: too many failures")
        .count();
    let allowed = 2 + (elapsed.as_secs() / 5) as usize;
    assert!(
        lines <= allowed,
        "{lines} \"login refused: too many failures\" lines for {} refusals in {elapsed:?} (at most {allowed})",
        counts.get(&429).copied().unwrap_or(0)
    );
}

/// Issue 15 §4, `/metrics` exposure. With `--metrics-listen 127.0.0.1:0` the
/// server logs "metrics on http://ADDR" after its "listening on" lines and
/// before "allowed origins:". Figures: `GET /metrics` on the main listener
/// answers 404; on the metrics listener 200 with Prometheus text
/// (`chat_loop_longest_pause_seconds` in it), and `/healthz` 200 there.
/// (Today: the flag does not exist: "unknown argument".)
#[test]
fn metrics_can_move_to_their_own_listener() {
    let _heavy = heavy();
    let server = TestServer::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let logs = server.logs();
    let metrics_addr = server
        .metrics_addr()
        .unwrap_or_else(|| panic!("no \"metrics on http://ADDR\" line:\n{logs}"));
    let (listening, metrics_line) = (
        logs.find("listening on").unwrap(),
        logs.find("metrics on http://").unwrap(),
    );
    assert!(
        listening < metrics_line,
        "the metrics line comes before the listening line"
    );
    let main = server.request("GET", "/metrics", &[], b"");
    assert_eq!(main.status, 404, "/metrics on the main listener: {main:?}");

    let metrics = request_from(
        loopback(1),
        metrics_addr,
        "GET",
        "/metrics",
        b"",
        Duration::from_secs(5),
    )
    .expect("metrics listener");
    assert_eq!(metrics.status, 200, "{metrics:?}");
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{metrics:?}"
    );
    assert!(
        metrics
            .text()
            .contains("# TYPE chat_loop_longest_pause_seconds gauge"),
        "{}",
        metrics.text()
    );
    let health = request_from(
        loopback(1),
        metrics_addr,
        "GET",
        "/healthz",
        b"",
        Duration::from_secs(5),
    )
    .expect("healthz on the metrics listener");
    assert_eq!(health.status, 200);
}

/// Reads `stream` until the server ends it; returns the bytes read and how
/// it ended: "EOF" (a FIN), "ConnectionReset" (an RST), or "still open".
fn read_to_end_kind(stream: &mut TcpStream, limit: Duration) -> (u64, String) {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut total = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    while start.elapsed() < limit {
        match stream.read(&mut chunk) {
            Ok(0) => return (total, "EOF".to_string()),
            Ok(n) => total += n as u64,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(err) => return (total, format!("{:?}", err.kind())),
        }
    }
    (total, "still open".to_string())
}

/// Issue 15 §4, aborted connections. A WebSocket client that never answers
/// pings (`--ping-interval 200ms --pong-wait 300ms`) but reads what it is
/// sent. Figure: the server's heartbeat abort reaches the client as a reset
/// (ECONNRESET on read, i.e. SO_LINGER 0), not a graceful FIN.
#[test]
fn heartbeat_timeouts_reset_the_connection() {
    let _heavy = heavy();
    let server = TestServer::start_with(&["--ping-interval", "200ms", "--pong-wait", "300ms"]);
    let (mut stream, _) = raw_member(loopback(1), server.addr, "percy", "123");
    let (read, ended) = read_to_end_kind(&mut stream, Duration::from_secs(5));
    server.wait_for_log("heartbeat timeout", Duration::from_secs(2));
    assert_eq!(
        ended, "ConnectionReset",
        "the heartbeat abort ended the stream with {ended} after {read} bytes, not an RST"
    );
}

/// Issue 15 §4, aborted connections. A member that never reads is cut off as
/// a slow consumer (close 1008) by five others sending 60 KB messages
/// (`--max-queue 262144 --max-message 65536`; 40 messages each, inside the
/// event burst); it never answers the close either, so the server aborts it
/// when the close handshake times out. Only then does it read. Figure: its
/// stream ends with a reset (the kernel dropped what was still queued), not
/// a FIN after everything queued trickled out; the bytes it could still
/// read are reported.
#[test]
fn slow_consumers_that_never_close_are_reset() {
    const SENDERS: usize = 5;
    const MESSAGES: usize = 40;
    let _heavy = heavy();
    let server = TestServer::start_with(&[
        "--max-queue",
        "262144",
        "--max-message",
        "65536",
        "--log-level",
        "info",
    ]);
    let addr = server.addr;
    let (mut victim, _) = raw_member(loopback(1), addr, "percy", "123");
    let victim_addr = victim.local_addr().unwrap().to_string();
    let payload = "m".repeat(60_000);
    let until = Instant::now() + Duration::from_secs(20);
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (mut stream, _) = raw_member(loopback(2), addr, "percy", "123");
            let drain = spawn_drain(stream.try_clone().unwrap(), until, 0);
            let burst: Vec<u8> = (0..MESSAGES)
                .flat_map(|_| send_message_frame(&payload))
                .collect();
            stream.write_all(&burst).expect("send the burst");
            (stream, drain)
        })
        .collect();
    server.wait_for_log("slow consumer", Duration::from_secs(10));
    // The abort: the server logs the victim's connection as closed.
    let aborted = wait_until(Duration::from_secs(10), || {
        server
            .logs()
            .lines()
            .any(|line| line.contains(&victim_addr) && line.contains("closed"))
    });
    let (read, ended) = read_to_end_kind(&mut victim, Duration::from_secs(10));
    drop(senders);
    assert!(aborted, "the server never closed the slow consumer");
    assert_eq!(
        ended, "ConnectionReset",
        "after the abort the slow consumer could still read {read} bytes, ending with {ended}, not an RST"
    );
}

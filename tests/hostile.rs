//! Hostile clients: races, half-closed sockets, framing tricks and protocol
//! violations, spoken over raw TCP so every byte is the test's choice.
//! (Limits, timeouts and the plain refusals live in http.rs, websocket.rs
//! and limits.rs; this file covers what those do not.)

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{TestServer, masked_frame, parse_responses, upgrade_request};

// --- helpers -------------------------------------------------------------------

/// A frame as the server sent it: opcode and payload (server frames are unmasked).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    opcode: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    fn json(&self) -> serde_json::Value {
        assert_eq!(self.opcode, 0x1, "not a text frame: {self:?}");
        serde_json::from_slice(&self.payload).expect("event JSON")
    }
}

/// Splits unmasked server frames; panics on a torn or masked frame.
fn parse_frames(mut bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 2, "torn frame header: {bytes:02x?}");
        assert_eq!(bytes[1] & 0x80, 0, "the server masked a frame");
        let (head, len) = match bytes[1] & 0x7f {
            126 => (4, u16::from_be_bytes([bytes[2], bytes[3]]) as usize),
            127 => (
                10,
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
            ),
            n => (2, n as usize),
        };
        assert!(bytes.len() >= head + len, "torn frame: {bytes:02x?}");
        frames.push(Frame {
            opcode: bytes[0] & 0x0f,
            payload: bytes[head..head + len].to_vec(),
        });
        bytes = &bytes[head + len..];
    }
    frames
}

fn connect(server: &TestServer) -> TcpStream {
    let stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads until the end of an HTTP response head; returns the head and what followed it.
fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return (head, buf[end + 4..].to_vec());
        }
        match stream.read(&mut chunk) {
            Ok(0) => panic!(
                "closed before a response head: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(err) => panic!(
                "no response head ({err}): {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
}

/// Everything until the server closes (or `limit` passes, which fails the test).
fn read_until_eof(stream: &mut TcpStream, mut buf: Vec<u8>, limit: Duration) -> Vec<u8> {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut chunk = [0u8; 65536];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(err) if err.kind() == ErrorKind::ConnectionReset => return buf,
            Err(err) => panic!("read failed: {err}"),
        }
        assert!(
            start.elapsed() < limit,
            "the server kept the connection open past {limit:?}; got {} bytes",
            buf.len()
        );
    }
}

/// Logs in, upgrades `/ws` over raw TCP with `behind` sent in the same write as
/// the request, and returns the stream and any frame bytes already read.
fn raw_websocket(server: &TestServer, behind: &[u8]) -> (TcpStream, Vec<u8>) {
    let otp = server.login("percy", "123");
    let mut stream = connect(server);
    let mut bytes = upgrade_request(server.addr, &otp, "").into_bytes();
    bytes.extend_from_slice(behind);
    stream.write_all(&bytes).unwrap();
    let (head, rest) = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
    (stream, rest)
}

/// Sends `frames` on a fresh chat WebSocket (after the upgrade, in one write)
/// and returns every frame the server sent until it closed the connection.
fn chat_exchange(server: &TestServer, frames: &[u8]) -> Vec<Frame> {
    let (mut stream, rest) = raw_websocket(server, b"");
    stream.write_all(frames).unwrap();
    parse_frames(&read_until_eof(&mut stream, rest, Duration::from_secs(5)))
}

/// The close code of the last frame, which must be a close frame.
fn final_close(frames: &[Frame]) -> u16 {
    let last = frames.last().expect("no frames at all");
    last.close_code()
        .unwrap_or_else(|| panic!("the last frame is not a close with a code: {frames:?}"))
}

fn send_message(text: &str) -> Vec<u8> {
    let event = json!({"type": "send_message", "payload": {"message": text}}).to_string();
    masked_frame(0x1, event.as_bytes())
}

/// A client frame with every header field chosen by the caller (masked when `mask`).
fn frame(first_byte: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    assert!(payload.len() < 126);
    let key = [0xA1, 0xB2, 0xC3, 0xD4];
    let mut out = vec![
        first_byte,
        payload.len() as u8 | if mask { 0x80 } else { 0 },
    ];
    if mask {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// The "(N open)" count the server logged when it closed the connection from `peer`.
fn open_count_after_close(server: &TestServer, peer: std::net::SocketAddr) -> usize {
    // "PEER: closed: ..." or, for a WebSocket, "PEER ("user"): closed: ...".
    let peer = format!("] {peer}");
    let start = Instant::now();
    let line = loop {
        let logs = server.logs();
        if let Some(line) = logs
            .lines()
            .find(|l| l.contains(&peer) && l.contains("closed: "))
        {
            break line.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no close logged for {peer}; logs:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let count = line
        .rsplit_once('(')
        .and_then(|(_, tail)| tail.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    count.unwrap_or_else(|| panic!("no open count in {line:?}"))
}

// --- OTP races -------------------------------------------------------------------

/// Two upgrades carrying the same OTP, written from two threads at the same
/// instant (both before either is read): exactly one gets 101, the other 401.
#[test]
fn one_otp_raced_by_two_upgrades_opens_exactly_one_websocket() {
    let server = TestServer::start();
    for round in 0..5 {
        let otp = server.login("percy", "123");
        let request = upgrade_request(server.addr, &otp, "");
        let streams: Vec<TcpStream> = (0..2).map(|_| connect(&server)).collect();
        let barrier = Arc::new(Barrier::new(2));
        let writers: Vec<_> = streams
            .iter()
            .map(|s| {
                let (mut stream, barrier, request) = (
                    s.try_clone().unwrap(),
                    Arc::clone(&barrier),
                    request.clone(),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    stream.write_all(request.as_bytes()).unwrap();
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let mut statuses: Vec<String> = streams
            .into_iter()
            .map(|mut stream| {
                let (head, _) = read_head(&mut stream);
                head.lines().next().unwrap_or("").to_string()
            })
            .collect();
        statuses.sort();
        assert!(
            statuses[0].starts_with("HTTP/1.1 101") && statuses[1].starts_with("HTTP/1.1 401"),
            "round {round}: {statuses:?}"
        );
    }
}

/// The same OTP twice in one pipelined write on one connection: the first
/// upgrade wins, and the second request is WebSocket bytes (a protocol error),
/// never a second HTTP answer.
#[test]
fn bytes_behind_an_upgrade_are_never_read_as_http() {
    let server = TestServer::start();
    let otp = server.login("percy", "123");
    let request = upgrade_request(server.addr, &otp, "");
    let (mut stream, rest) = {
        let mut stream = connect(&server);
        stream
            .write_all(format!("{request}{request}").as_bytes())
            .unwrap();
        let (head, rest) = read_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        (stream, rest)
    };
    let reply = read_until_eof(&mut stream, rest, Duration::from_secs(5));
    assert!(
        !reply.windows(5).any(|w| w == b"HTTP/"),
        "an HTTP response followed the 101: {:?}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(final_close(&parse_frames(&reply)), 1002);
}

// --- half-closed sockets -----------------------------------------------------------

/// A client that sends half a request head and then shuts its side down is
/// closed at once (not after the 10 s header timeout) and leaves the count.
#[test]
fn half_close_mid_request_is_closed_and_counted_out() {
    let server = TestServer::start();
    let mut stream = connect(&server);
    let local = stream.local_addr().unwrap();
    stream.write_all(b"GET /index.html HTTP/1.1\r\nHo").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let reply = read_until_eof(&mut stream, Vec::new(), Duration::from_secs(3));
    assert!(
        reply.is_empty() || reply.starts_with(b"HTTP/1.1 400"),
        "unexpected answer to half a request: {:?}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(open_count_after_close(&server, local), 0);
}

/// A full request and then a half-close: the answer still arrives, whole,
/// then the server closes and forgets the connection.
#[test]
fn half_close_after_a_request_still_gets_the_answer() {
    let server = TestServer::start();
    let mut stream = connect(&server);
    let local = stream.local_addr().unwrap();
    stream
        .write_all(b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let reply = read_until_eof(&mut stream, Vec::new(), Duration::from_secs(3));
    let responses = parse_responses(&reply, false);
    assert_eq!(responses.len(), 1, "{responses:?}");
    assert_eq!(responses[0].status, 200);
    let expected = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/www/app.js")).unwrap();
    assert_eq!(responses[0].body, expected);
    assert_eq!(open_count_after_close(&server, local), 0);
}

/// The same with a response far bigger than the socket buffers: the client's
/// FIN must not cut the answer short (the server still owes every byte).
#[test]
fn half_close_after_a_request_for_a_large_file_gets_all_of_it() {
    let root = std::env::temp_dir().join(format!("chat-hostile-www-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let big: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    let server = TestServer::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--www",
        root.to_str().unwrap(),
        "--log-level",
        "debug",
    ]);
    let mut stream = connect(&server);
    let local = stream.local_addr().unwrap();
    stream
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    // Let the server see the request and the FIN before we start reading.
    std::thread::sleep(Duration::from_millis(300));
    let reply = read_until_eof(&mut stream, Vec::new(), Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&root);
    let end = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    assert!(reply.starts_with(b"HTTP/1.1 200"));
    assert_eq!(
        reply.len() - (end + 4),
        big.len(),
        "the body was cut short after the client's half-close"
    );
    assert_eq!(open_count_after_close(&server, local), 0);
}

/// A WebSocket client that half-closes without a close frame is dropped and
/// leaves the count, and its room stops sending to it.
#[test]
fn half_closed_websocket_is_dropped_and_counted_out() {
    let server = TestServer::start();
    let (mut stream, rest) = raw_websocket(&server, b"");
    let local = stream.local_addr().unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let _ = read_until_eof(&mut stream, rest, Duration::from_secs(3));
    assert_eq!(open_count_after_close(&server, local), 0);
    // The room still works for someone else.
    let mut other = server.connect();
    support::send_event(&mut other, "send_message", support::say("after"));
    assert_eq!(
        support::next_event(&mut other)["payload"]["message"],
        "after"
    );
}

// --- HTTP framing -----------------------------------------------------------------

/// On one keep-alive connection: a login with a body, a second POST whose body
/// looks like a request (it must be read as body, not as a request), then
/// garbage. Exactly three answers: 200, 400 (body is not the login JSON), 400
/// (garbage), and the connection closes.
#[test]
fn bodies_are_framed_by_content_length_and_garbage_ends_the_connection() {
    let server = TestServer::start();
    let login = br#"{"username":"percy","password":"123"}"#;
    let smuggled = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut bytes = format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        login.len()
    )
    .into_bytes();
    bytes.extend_from_slice(login);
    bytes.extend_from_slice(
        format!(
            "POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            smuggled.len()
        )
        .as_bytes(),
    );
    bytes.extend_from_slice(smuggled);
    bytes.extend_from_slice(b"\x00\x01\x02 GARBAGE \xff\r\n\r\n");
    let mut stream = connect(&server);
    stream.write_all(&bytes).unwrap();
    let reply = read_until_eof(&mut stream, Vec::new(), Duration::from_secs(5));
    let statuses: Vec<u16> = parse_responses(&reply, false)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [200, 400, 400]);
}

/// Content-Length must be exactly one run of digits; two different values
/// (or a sign) make the framing ambiguous, which RFC 9112 6.3 says is a 400
/// and a closed connection, not a guess.
#[test]
fn ambiguous_content_length_is_refused() {
    let server = TestServer::start();
    let mut wrong = Vec::new();
    for lengths in [
        "Content-Length: 2\r\nContent-Length: 40\r\n",
        "Content-Length: 2, 40\r\n",
        "Content-Length: +2\r\n",
    ] {
        let request = format!(
            "POST /login HTTP/1.1\r\nHost: x\r\n{lengths}\r\n{{}}GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let reply = server.raw(request.as_bytes());
        let statuses: Vec<u16> = parse_responses(&reply, false)
            .iter()
            .map(|r| r.status)
            .collect();
        if statuses != [400] {
            wrong.push(format!("{lengths:?} -> {statuses:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "answered instead of 400 + close: {wrong:#?}"
    );
}

/// A header value that is not UTF-8 is refused with 400 before routing, so an
/// upgrade carrying it neither opens a WebSocket nor spends the OTP.
#[test]
fn header_values_that_are_not_utf8_get_400_and_keep_the_otp() {
    let server = TestServer::start();
    let otp = server.login("percy", "123");
    let mut bytes = upgrade_request(server.addr, &otp, "").into_bytes();
    let end = bytes.len() - 2; // before the blank line
    bytes.splice(end..end, b"X-Name: caf\xe9 \xff\xfe\r\n".iter().copied());
    let reply = server.raw(&bytes);
    let responses = parse_responses(&reply, false);
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].status, 400);
    assert!(server.connect_with_otp(&otp).is_ok(), "the OTP was spent");
}

// --- WebSocket protocol violations on the chat route ---------------------------------

#[test]
fn text_that_is_not_utf8_closes_with_1007() {
    let server = TestServer::start();
    // Overlong encoding, a lone surrogate, and invalid UTF-8 split across fragments.
    for frames in [
        masked_frame(0x1, b"\xc0\xaf"),
        masked_frame(0x1, b"\xed\xa0\x80"),
        [
            frame(0x01, b"ok \xf0\x9f", true),
            frame(0x80, b"\x98", true),
        ]
        .concat(),
    ] {
        let reply = chat_exchange(&server, &frames);
        assert_eq!(final_close(&reply), 1007, "{frames:02x?} -> {reply:?}");
    }
}

#[test]
fn unmasked_client_frames_close_with_1002() {
    let server = TestServer::start();
    let event = json!({"type": "send_message", "payload": {"message": "hi"}}).to_string();
    let reply = chat_exchange(&server, &frame(0x81, event.as_bytes(), false));
    assert_eq!(final_close(&reply), 1002);
    assert!(
        reply.iter().all(|f| f.opcode != 0x1),
        "the unmasked message was delivered: {reply:?}"
    );
}

#[test]
fn fragments_adding_up_past_the_limit_close_with_1009() {
    let server = TestServer::start();
    // Five 120-byte fragments: each small, 600 bytes together (limit 512).
    let mut frames = frame(0x01, &[b'a'; 120], true);
    for _ in 0..3 {
        frames.extend(frame(0x00, &[b'a'; 120], true));
    }
    frames.extend(frame(0x80, &[b'a'; 120], true));
    let reply = chat_exchange(&server, &frames);
    assert_eq!(final_close(&reply), 1009, "{reply:?}");
}

#[test]
fn oversized_or_fragmented_control_frames_close_with_1002() {
    let server = TestServer::start();
    let big_ping = {
        let mut f = vec![0x89, 0x80 | 126, 0, 126, 1, 2, 3, 4];
        f.extend(std::iter::repeat_n(0u8, 126));
        f
    };
    for (what, frames) in [
        ("ping with 126 bytes", big_ping),
        ("ping without FIN", frame(0x09, b"x", true)),
        ("close with a 1-byte payload", frame(0x88, b"\x03", true)),
        (
            "close with code 1005",
            frame(0x88, &1005u16.to_be_bytes(), true),
        ),
        (
            "close with code 999",
            frame(0x88, &999u16.to_be_bytes(), true),
        ),
    ] {
        let reply = chat_exchange(&server, &frames);
        assert_eq!(final_close(&reply), 1002, "{what}: {reply:?}");
    }
}

#[test]
fn reserved_bits_opcodes_and_orphan_continuations_close_with_1002() {
    let server = TestServer::start();
    for (what, frames) in [
        ("RSV1 without an extension", frame(0xC1, b"hi", true)),
        ("RSV3", frame(0x91, b"hi", true)),
        ("reserved data opcode 3", frame(0x83, b"hi", true)),
        ("reserved control opcode 0xB", frame(0x8B, b"hi", true)),
        (
            "continuation with nothing to continue",
            frame(0x80, b"hi", true),
        ),
        (
            "new message inside a fragmented one",
            [frame(0x01, b"a", true), frame(0x81, b"b", true)].concat(),
        ),
    ] {
        let reply = chat_exchange(&server, &frames);
        assert_eq!(final_close(&reply), 1002, "{what}: {reply:?}");
        assert!(reply.iter().all(|f| f.opcode != 0x1), "{what}: {reply:?}");
    }
}

/// Pings between the fragments of a message are answered, and the message
/// still arrives whole.
#[test]
fn pings_inside_a_fragmented_message_are_answered() {
    let server = TestServer::start();
    let event = json!({"type": "send_message", "payload": {"message": "in pieces"}}).to_string();
    let (first, second) = event.as_bytes().split_at(10);
    let frames = [
        frame(0x01, first, true),
        frame(0x89, b"are you there", true),
        frame(0x80, second, true),
        frame(0x88, &1000u16.to_be_bytes(), true),
    ]
    .concat();
    let reply = chat_exchange(&server, &frames);
    let pong = reply.iter().position(|f| f.opcode == 0xA).expect("a pong");
    assert_eq!(reply[pong].payload, b"are you there");
    let message = reply.iter().find(|f| f.opcode == 0x1).expect("the message");
    assert_eq!(message.json()["payload"]["message"], "in pieces");
}

/// RFC 6455 5.5.1: after sending a close frame an endpoint sends no more data
/// frames, and a message read before the violation is answered before the
/// close. Here the message and a bad frame arrive in one read.
#[test]
fn nothing_follows_the_close_frame_after_a_protocol_error() {
    let server = TestServer::start();
    let frames = [send_message("before"), frame(0x81, b"unmasked", false)].concat();
    let reply = chat_exchange(&server, &frames);
    assert_eq!(
        reply.last().and_then(Frame::close_code),
        Some(1002),
        "the close is not the last frame: {reply:?}"
    );
    assert_eq!(
        reply.iter().filter(|f| f.opcode == 0x1).count(),
        1,
        "{reply:?}"
    );
}

/// The same when the client's own close arrives in the read that carries its
/// last message: the message's broadcast reaches the sender before the close.
#[test]
fn nothing_follows_the_close_reply_when_message_and_close_arrive_together() {
    let server = TestServer::start();
    let frames = [
        send_message("last words"),
        frame(0x88, &1000u16.to_be_bytes(), true),
    ]
    .concat();
    let reply = chat_exchange(&server, &frames);
    assert_eq!(
        reply.last().and_then(Frame::close_code),
        Some(1000),
        "the close is not the last frame: {reply:?}"
    );
    assert_eq!(
        reply[0].json()["payload"]["message"],
        "last words",
        "{reply:?}"
    );
}

/// And on the echo route: the echo of a message read together with a bad
/// frame comes before the close, not after it.
#[test]
fn echo_replies_never_follow_the_close_frame() {
    let server = TestServer::start_with(&["--echo-path", "/echo"]);
    let mut stream = connect(&server);
    let mut bytes =
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
    bytes.extend(masked_frame(0x1, b"Hello, world!"));
    bytes.extend(frame(0xA1, b"Hello, world!", true)); // RSV2: protocol error
    stream.write_all(&bytes).unwrap();
    let (head, rest) = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let reply = parse_frames(&read_until_eof(&mut stream, rest, Duration::from_secs(5)));
    let opcodes: Vec<u8> = reply.iter().map(|f| f.opcode).collect();
    assert_eq!(opcodes, [0x1, 0x8], "echo then close: {reply:?}");
    assert_eq!(reply[0].payload, b"Hello, world!");
    assert_eq!(final_close(&reply), 1002);
}

/// An upgrade request and a message dripped one byte per write still work.
#[test]
fn a_byte_at_a_time_still_upgrades_and_delivers() {
    let server = TestServer::start();
    let otp = server.login("percy", "123");
    let mut stream = connect(&server);
    let mut bytes = upgrade_request(server.addr, &otp, "").into_bytes();
    bytes.extend(send_message("drip"));
    for byte in &bytes {
        stream.write_all(std::slice::from_ref(byte)).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    let (head, mut rest) = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut chunk = [0u8; 4096];
    while parse_complete(&rest).is_none() {
        let n = stream.read(&mut chunk).expect("the broadcast");
        assert!(n > 0, "closed before the broadcast");
        rest.extend_from_slice(&chunk[..n]);
    }
    let frames = parse_frames(&rest[..parse_complete(&rest).unwrap()]);
    assert_eq!(frames[0].json()["payload"]["message"], "drip");
}

/// The length of the first complete frame in `bytes`, if there is one.
fn parse_complete(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 2 {
        return None;
    }
    let (head, len) = match bytes[1] & 0x7f {
        126 if bytes.len() >= 4 => (4, u16::from_be_bytes([bytes[2], bytes[3]]) as usize),
        126 | 127 => return None,
        n => (2, n as usize),
    };
    (bytes.len() >= head + len).then_some(head + len)
}

// --- clients that send without reading -------------------------------------------------

/// Writes `bytes` repeatedly (up to `total`) without ever reading; stops early
/// when the server pushes back (the write blocks) or closes. Returns bytes sent.
fn send_without_reading(stream: &mut TcpStream, bytes: &[u8], total: usize) -> usize {
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let batch = bytes.repeat((256 * 1024 / bytes.len()).max(1));
    let mut sent = 0;
    while sent < total {
        match stream.write(&batch) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(_) => break, // closed on us: also a bound
        }
    }
    sent
}

/// Server memory (VmRSS) growth in MiB after `action`, once the server has
/// taken in what was sent (its memory has stopped moving, or 10 s passed).
fn rss_growth_mib(server: &TestServer, action: impl FnOnce()) -> u64 {
    let before = server.status_kb("VmRSS");
    action();
    let start = Instant::now();
    let mut last = server.status_kb("VmRSS");
    let mut steady = 0;
    while steady < 5 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        let now = server.status_kb("VmRSS");
        steady = if now.abs_diff(last) < 256 {
            steady + 1
        } else {
            0
        };
        last = now;
    }
    last.saturating_sub(before) / 1024
}

/// A client pipelining requests for a file and never reading the answers
/// must not make the server queue answers without bound: 512 KiB of requests
/// for a 16 KiB file would be 250 MiB of answers.
#[test]
fn pipelined_requests_from_a_client_that_never_reads_are_bounded() {
    let server = TestServer::start();
    let mut stream = connect(&server);
    let request = b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut sent = 0;
    let growth = rss_growth_mib(&server, || {
        sent = send_without_reading(&mut stream, request, 512 << 10);
    });
    assert!(
        growth < 32,
        "server memory grew {growth} MiB for {} KiB of pipelined requests nobody reads",
        sent / 1024
    );
    assert_eq!(server.request("GET", "/", &[], b"").status, 200);
}

/// Pings from a client that never reads its pongs: the pongs must count
/// against the same bound as everything else queued for it.
#[test]
fn pings_from_a_client_that_never_reads_are_bounded() {
    let server = TestServer::start();
    let (mut stream, _) = raw_websocket(&server, b"");
    let ping = frame(0x89, &[b'p'; 125], true);
    let mut sent = 0;
    let growth = rss_growth_mib(&server, || {
        sent = send_without_reading(&mut stream, &ping, 32 << 20);
    });
    assert!(
        growth < 16,
        "server memory grew {growth} MiB for {} KiB of pings whose pongs nobody reads",
        sent / 1024
    );
}

//! Posting the fan-out's messages through the server API instead of a
//! member's WebSocket (`fanout --post-via api`): `POST
//! /api/rooms/{room}/messages` with `Authorization: Bearer KEY` and `{"message",
//! "from"}`, which the server answers `202` and turns into the same
//! `new_message` a member's `send_message` makes.
//!
//! Each sender slot (a member that would have sent) gets a keep-alive
//! HTTP/1.1 connection of its own, to the server its member is on, opened
//! at its first post and driven by the engine's loop like a WebSocket (tokens
//! from `TOKEN_BASE` up). A post is queued when it is due and written when the
//! loop flushes, as a member's message is; one due before the last is
//! answered is pipelined behind it. Answers come back in order: a `202` is
//! counted and timed, anything else is an error, and so is a post whose
//! connection closed before its answer. A connection the server closes
//! between posts is simply opened again at the next one.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::mem;
use std::time::Instant;

use hdrhistogram::Histogram;
use mio::{Interest, Registry, Token};
use serde_json::{Value, json};

use crate::engine::{Errors, Target};
use crate::sourceport::SourcePorts;
use crate::stream::Stream;
use crate::wire;

/// Tokens of the API connections start here, far above any member's index.
pub const TOKEN_BASE: usize = 1 << 30;
/// Largest answer body accepted (the server's are a few dozen bytes).
const MAX_ANSWER_BODY: usize = 64 * 1024;
/// Bytes read per `read()` call.
const READ_CHUNK: usize = 16 * 1024;

/// What the engine lends the poster for one call: the loop's registry, the
/// source ports, the servers, and where errors are counted.
pub struct Io<'a> {
    pub registry: &'a Registry,
    pub ports: &'a mut SourcePorts,
    pub targets: &'a [Target],
    pub errors: &'a mut Errors,
}

/// Counts of posts and their answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub posted: u64,
    /// Answered `202 Accepted`.
    pub accepted: u64,
    /// Answered with any other status.
    pub refused: u64,
    /// Lost with their connection (or never sent: it could not be opened).
    pub unanswered: u64,
    /// Connections opened.
    pub connects: u64,
}

impl Tally {
    pub fn minus(self, before: &Tally) -> Tally {
        Tally {
            posted: self.posted - before.posted,
            accepted: self.accepted - before.accepted,
            refused: self.refused - before.refused,
            unanswered: self.unanswered - before.unanswered,
            connects: self.connects - before.connects,
        }
    }

    pub fn to_json(self) -> Value {
        json!({
            "posted": self.posted,
            "answered_202": self.accepted,
            "answered_other": self.refused,
            "unanswered": self.unanswered,
            "connects": self.connects,
        })
    }
}

/// One sender slot's connection.
struct Slot {
    /// Which of the engine's targets it talks to.
    server: usize,
    stream: Option<Stream>,
    /// The TCP connect has completed.
    connected: bool,
    out: Vec<u8>,
    out_at: usize,
    inbuf: Vec<u8>,
    /// When each post not yet answered was queued, oldest first.
    waiting: VecDeque<Instant>,
    dirty: bool,
}

impl Slot {
    fn new(server: usize) -> Slot {
        Slot {
            server,
            stream: None,
            connected: false,
            out: Vec::new(),
            out_at: 0,
            inbuf: Vec::new(),
            waiting: VecDeque::new(),
            dirty: false,
        }
    }
}

pub struct ApiPoster {
    key: String,
    slots: Vec<Slot>,
    /// A sender's connection index to its slot.
    by_sender: HashMap<usize, usize>,
    dirty: Vec<usize>,
    pub tally: Tally,
    /// From a post being queued to its `202`, microseconds.
    pub answer_time: Histogram<u64>,
    scratch: Vec<u8>,
}

impl ApiPoster {
    /// `key`: the API key, as the server's `--api-key` file holds it.
    pub fn new(key: String) -> ApiPoster {
        ApiPoster {
            key,
            slots: Vec::new(),
            by_sender: HashMap::new(),
            dirty: Vec::new(),
            tally: Tally::default(),
            answer_time: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
            scratch: vec![0; READ_CHUNK],
        }
    }

    /// Connections in use (one per sender slot that has posted).
    pub fn connections(&self) -> usize {
        self.slots.len()
    }

    /// Posts not answered yet.
    pub fn in_flight(&self) -> usize {
        self.slots.iter().map(|s| s.waiting.len()).sum()
    }

    /// Queues one post of `message` from `from` into `room`, on the slot of
    /// `sender` (on server `server`), opening its connection if it has none.
    pub fn post(
        &mut self,
        sender: usize,
        server: usize,
        room: &str,
        from: &str,
        message: &[u8],
        io: &mut Io,
    ) {
        let next = self.slots.len();
        let index = *self.by_sender.entry(sender).or_insert(next);
        if index == next {
            self.slots.push(Slot::new(server));
        }
        self.tally.posted += 1;
        if self.slots[index].stream.is_none() && !self.open(index, io) {
            self.tally.unanswered += 1;
            return;
        }
        let target = &io.targets[self.slots[index].server];
        let request = post_request(&target.host, &self.key, room, from, message);
        let slot = &mut self.slots[index];
        slot.out.extend_from_slice(&request);
        slot.waiting.push_back(Instant::now());
        self.mark_dirty(index);
    }

    /// Opens slot `index`'s connection; false (the error counted) if it
    /// cannot even start.
    fn open(&mut self, index: usize, io: &mut Io) -> bool {
        let target = &io.targets[self.slots[index].server];
        let opened = io
            .ports
            .connect(target.addr)
            .and_then(|tcp| Stream::new(tcp, target.tls.as_ref()))
            .and_then(|mut stream| {
                io.registry
                    .register(
                        stream.tcp_mut(),
                        Token(TOKEN_BASE + index),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map(|()| stream)
            });
        match opened {
            Ok(stream) => {
                let slot = &mut self.slots[index];
                slot.stream = Some(stream);
                slot.connected = false;
                self.tally.connects += 1;
                true
            }
            Err(err) => {
                io.errors.add(format!("api: connect: {err}"));
                false
            }
        }
    }

    /// Readiness for the connection with `token` (at or above `TOKEN_BASE`).
    pub fn ready(&mut self, token: usize, readable: bool, writable: bool, io: &mut Io) {
        let index = token - TOKEN_BASE;
        if index >= self.slots.len() || self.slots[index].stream.is_none() {
            return;
        }
        if !self.slots[index].connected && !self.check_connected(index, io.errors, io.registry) {
            return;
        }
        if readable {
            self.read_all(index, io.errors, io.registry);
        }
        if writable {
            self.mark_dirty(index);
        }
    }

    /// Whether the connect has completed (false: not yet, or it failed).
    fn check_connected(&mut self, index: usize, errors: &mut Errors, registry: &Registry) -> bool {
        let Some(stream) = self.slots[index].stream.as_ref() else {
            return false;
        };
        let tcp = stream.tcp();
        match tcp.take_error() {
            Ok(Some(err)) | Err(err) => {
                self.fail(index, format!("api: connect: {err}"), errors, registry);
                return false;
            }
            Ok(None) => {}
        }
        match tcp.peer_addr() {
            Ok(_) => {
                let _ = tcp.set_nodelay(true);
                self.slots[index].connected = true;
                self.mark_dirty(index);
                true
            }
            Err(err) if err.kind() == io::ErrorKind::NotConnected => false,
            Err(err) => {
                self.fail(index, format!("api: connect: {err}"), errors, registry);
                false
            }
        }
    }

    fn mark_dirty(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(index);
        }
    }

    /// Writes what every slot with queued requests holds, until done or
    /// its socket is full.
    pub fn flush(&mut self, errors: &mut Errors, registry: &Registry) {
        let list = mem::take(&mut self.dirty);
        for &index in &list {
            self.slots[index].dirty = false;
            self.flush_slot(index, errors, registry);
        }
    }

    fn flush_slot(&mut self, index: usize, errors: &mut Errors, registry: &Registry) {
        let slot = &mut self.slots[index];
        if !slot.connected {
            return;
        }
        let Some(stream) = slot.stream.as_mut() else {
            return;
        };
        while slot.out_at < slot.out.len() {
            match stream.write(&slot.out[slot.out_at..]) {
                Ok(0) => break,
                Ok(n) => slot.out_at += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    let why = format!("api: write: {}", err.kind());
                    return self.fail(index, why, errors, registry);
                }
            }
        }
        if let Err(err) = stream.flush_records() {
            let why = format!("api: write: {}", err.kind());
            return self.fail(index, why, errors, registry);
        }
        slot.out.clear();
        slot.out_at = 0;
    }

    fn read_all(&mut self, index: usize, errors: &mut Errors, registry: &Registry) {
        let mut scratch = mem::take(&mut self.scratch);
        while let Some(stream) = self.slots[index].stream.as_mut() {
            match stream.read(&mut scratch) {
                Ok(0) => {
                    self.closed_by_server(index, errors, registry);
                    break;
                }
                Ok(n) => {
                    let now = Instant::now();
                    self.slots[index].inbuf.extend_from_slice(&scratch[..n]);
                    if let Err(why) = self.take_answers(index, now, errors) {
                        self.fail(index, format!("api: {why}"), errors, registry);
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    self.fail(
                        index,
                        format!("api: read: {}", err.kind()),
                        errors,
                        registry,
                    );
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Counts every complete answer in slot `index`'s buffer.
    fn take_answers(
        &mut self,
        index: usize,
        now: Instant,
        errors: &mut Errors,
    ) -> Result<(), String> {
        let slot = &mut self.slots[index];
        let mut statuses = Vec::new();
        let used = complete_answers(&slot.inbuf, &mut statuses)?;
        slot.inbuf.drain(..used);
        for status in statuses {
            let Some(queued) = slot.waiting.pop_front() else {
                return Err(format!("HTTP {status} answering no request"));
            };
            if status == 202 {
                self.tally.accepted += 1;
                let micros = now.saturating_duration_since(queued).as_micros() as u64;
                self.answer_time.saturating_record(micros.max(1));
            } else {
                self.tally.refused += 1;
                errors.add(format!("api: HTTP {status}"));
            }
        }
        Ok(())
    }

    /// The server closed the connection: an error if posts were waiting
    /// for answers, else an idle keep-alive ending (the next post reopens).
    fn closed_by_server(&mut self, index: usize, errors: &mut Errors, registry: &Registry) {
        if self.slots[index].waiting.is_empty() && self.slots[index].out.is_empty() {
            self.drop_stream(index, registry);
        } else {
            let why = "api: connection closed by server before answering".to_string();
            self.fail(index, why, errors, registry);
        }
    }

    /// The connection ends in error: its unanswered posts are lost.
    fn fail(&mut self, index: usize, why: String, errors: &mut Errors, registry: &Registry) {
        errors.add(why);
        self.tally.unanswered += self.slots[index].waiting.len() as u64;
        self.drop_stream(index, registry);
    }

    fn drop_stream(&mut self, index: usize, registry: &Registry) {
        let slot = &mut self.slots[index];
        if let Some(mut stream) = slot.stream.take() {
            let _ = registry.deregister(stream.tcp_mut());
        }
        slot.connected = false;
        slot.out = Vec::new();
        slot.out_at = 0;
        slot.inbuf = Vec::new();
        slot.waiting.clear();
    }

    /// Closes every connection; posts still unanswered count as errors.
    pub fn close_all(&mut self, errors: &mut Errors, registry: &Registry) {
        for index in 0..self.slots.len() {
            let left = self.slots[index].waiting.len();
            if left > 0 {
                for _ in 0..left {
                    errors.add("api: unanswered when the run ended".into());
                }
                self.tally.unanswered += left as u64;
            }
            self.drop_stream(index, registry);
        }
    }
}

/// The key in the file the server's `--api-key` reads: its text without
/// the trailing newline.
pub fn read_key(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|err| format!("--api-key {path}: {err}"))?;
    let key = text.trim_end_matches(['\n', '\r']);
    if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "--api-key {path}: expected one line, the key, with no spaces"
        ));
    }
    Ok(key.to_string())
}

/// The request posting `message` from `from` into `room`.
fn post_request(host: &str, key: &str, room: &str, from: &str, message: &[u8]) -> Vec<u8> {
    let body = json!({
        "message": String::from_utf8_lossy(message),
        "from": from,
    })
    .to_string();
    format!(
        "POST /api/rooms/{}/messages HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        percent_encode(room),
        body.len()
    )
    .into_bytes()
}

/// A path segment: every byte but RFC 3986's unreserved ones escaped.
fn percent_encode(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The statuses of the complete answers at the start of `buf`, appended to
/// `statuses`; returns the bytes they take. An answer that is not plain
/// HTTP/1.1 with a bounded body is an error.
fn complete_answers(buf: &[u8], statuses: &mut Vec<u16>) -> Result<usize, String> {
    let mut at = 0;
    while let Some(answer) = wire::parse_response(&buf[at..])? {
        if answer.chunked {
            return Err("chunked answer not supported".into());
        }
        if answer.content_length > MAX_ANSWER_BODY {
            return Err(format!("answer body of {} bytes", answer.content_length));
        }
        let total = answer.head_len + answer.content_length;
        if buf.len() - at < total {
            break;
        }
        statuses.push(answer.status);
        at += total;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_is_one_request_with_the_key_and_a_json_body() {
        let request = post_request("h:1", "k3y", "room 1/x", "percy", b"b1 22 xxxx");
        let text = String::from_utf8(request).unwrap();
        assert!(text.starts_with("POST /api/rooms/room%201%2Fx/messages HTTP/1.1\r\n"));
        assert!(text.contains("\r\nHost: h:1\r\n"));
        assert!(text.contains("\r\nAuthorization: Bearer k3y\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body, json!({"message": "b1 22 xxxx", "from": "percy"}));
        assert_eq!(percent_encode("room-10"), "room-10");
    }

    #[test]
    fn answers_are_taken_whole_and_in_order() {
        let accepted = b"HTTP/1.1 202 Accepted\r\nContent-Length: 15\r\n\r\n{\"room\":\"r-1\"}\n";
        let refused = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}";
        let mut buf = accepted.to_vec();
        buf.extend_from_slice(refused);
        let mut statuses = Vec::new();
        // One answer and part of the next: only the first is taken.
        let cut = accepted.len() + 10;
        assert_eq!(
            complete_answers(&buf[..cut], &mut statuses),
            Ok(accepted.len())
        );
        assert_eq!(statuses, [202]);
        statuses.clear();
        assert_eq!(complete_answers(&buf, &mut statuses), Ok(buf.len()));
        assert_eq!(statuses, [202, 401]);
        // A head without its body yet waits.
        statuses.clear();
        assert_eq!(complete_answers(&accepted[..50], &mut statuses), Ok(0));
        assert!(statuses.is_empty());
    }

    #[test]
    fn odd_answers_are_refused() {
        let mut statuses = Vec::new();
        let chunked = b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(complete_answers(chunked, &mut statuses).is_err());
        let huge = b"HTTP/1.1 202 Accepted\r\nContent-Length: 99999999\r\n\r\n";
        assert!(complete_answers(huge, &mut statuses).is_err());
        assert!(complete_answers(b"SMTP ready\r\n\r\n", &mut statuses).is_err());
        assert!(statuses.is_empty());
    }

    #[test]
    fn tallies_subtract() {
        let before = Tally {
            posted: 2,
            accepted: 1,
            ..Tally::default()
        };
        let after = Tally {
            posted: 7,
            accepted: 5,
            refused: 1,
            unanswered: 1,
            connects: 3,
        };
        let step = after.minus(&before);
        assert_eq!((step.posted, step.accepted, step.refused), (5, 4, 1));
        assert_eq!(step.to_json()["answered_202"], 4);
    }
}

//! chat-floor: the least a single-threaded mio server must do per chat
//! delivery on this kernel, so chat-bench can measure the floor that
//! chat-server's CPU per delivery is compared with.
//!
//! Per `send_message` it reads and unmasks one frame, splices the client's
//! message string into one prebuilt `new_message` frame (no JSON library) and
//! appends that frame to every room member's output buffer; once per loop
//! iteration every connection with output gets one `write()`. That is what
//! chat-server must do per delivery, and nothing else: no JSON parsing, no
//! WebSocket library, no timers, no heartbeats, no per-connection limits.
//!
//! Writes are coalesced per loop iteration, as chat-server's are: a server
//! that wrote each frame the moment it was made would pay one `write()` per
//! delivery even when several frames for one socket are ready together, so it
//! would cost more than chat-server under load and could not be its floor.
//! At a moderate fixed rate each iteration usually carries one message, so
//! there it is one `write()` per delivery either way.
//!
//! The protocol is cut to what chat-bench uses: any `POST /login` answers an
//! OTP-looking JSON body (no account check), `GET /ws?...` with a
//! `Sec-WebSocket-Key` upgrades (no OTP or Origin check), anything else is a
//! 404. Over the WebSocket: `send_message` -> `new_message` to the sender's
//! room (the sender included) with `from` "percy" and a real `sent` time in
//! chat-server's format, so frames are the same size; `change_room` moves the
//! connection; pings get pongs; a close is answered and the socket closed.
//! New connections start in `general`. It never pings, unless it is given
//! `--ping-interval SECS`: then each WebSocket is pinged on its own schedule
//! from its upgrade, as chat-server does, and pongs are read and ignored. That
//! variant only shows what a heartbeat costs on the floor (in the kernel, not
//! in the server's code); the floor proper has no timers.
//!
//!     chat-floor --listen 127.0.0.1:8080 [--ping-interval 9]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);
/// Bytes per `read()` (one buffer shared by every connection).
const READ_CHUNK: usize = 64 * 1024;
/// Longest request head or frame accepted.
const MAX_HEAD: usize = 8 * 1024;
/// The message limit chat-server and the peers use.
const MAX_MESSAGE: usize = 512;
/// Output a client may leave unread before it is dropped (chat-server's
/// `--max-queue` in bench/run.sh).
const MAX_QUEUE: usize = 1 << 20;
/// How often due pings are looked for when `--ping-interval` is given.
const PING_SCAN: Duration = Duration::from_millis(100);
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const FROM: &[u8] = b"percy";

struct Conn {
    stream: TcpStream,
    /// Unprocessed input: a partial request head, body or frame.
    inbuf: Vec<u8>,
    out: Vec<u8>,
    websocket: bool,
    /// Room index and position in that room's member list (WebSocket only).
    room: usize,
    slot: usize,
    /// On the flush list.
    dirty: bool,
    /// Registered for WRITABLE because a write would have blocked.
    blocked: bool,
    /// Close once `out` is written.
    closing: bool,
    /// When this WebSocket is next pinged (only with `--ping-interval`).
    next_ping: Option<Instant>,
}

struct Rooms {
    names: HashMap<Vec<u8>, usize>,
    members: Vec<Vec<usize>>,
}

impl Rooms {
    fn index(&mut self, name: &[u8]) -> usize {
        if let Some(&room) = self.names.get(name) {
            return room;
        }
        self.members.push(Vec::new());
        self.names.insert(name.to_vec(), self.members.len() - 1);
        self.members.len() - 1
    }
}

struct Server {
    poll: Poll,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    rooms: Rooms,
    scratch: Vec<u8>,
    /// The frame being broadcast.
    frame: Vec<u8>,
    dirty: Vec<usize>,
    otps: u64,
    clock: Clock,
    /// `--ping-interval`: ping every WebSocket this often; none by default.
    ping_interval: Option<Duration>,
}

fn main() {
    let mut listen = "127.0.0.1:8080".to_string();
    let mut ping_interval = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(value)) => listen = value,
            ("--ping-interval", Some(value)) => match value.parse::<u64>() {
                Ok(secs) if secs > 0 => ping_interval = Some(Duration::from_secs(secs)),
                _ => {
                    eprintln!("chat-floor: --ping-interval {value}: expected whole seconds > 0");
                    std::process::exit(2);
                }
            },
            _ => {
                eprintln!("usage: chat-floor [--listen ADDR] [--ping-interval SECS]");
                std::process::exit(2);
            }
        }
    }
    let addr: SocketAddr = match listen.parse() {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("chat-floor: --listen {listen}: {err}");
            std::process::exit(2);
        }
    };
    if let Err(err) = run(addr, ping_interval) {
        eprintln!("chat-floor: {err}");
        std::process::exit(1);
    }
}

fn run(addr: SocketAddr, ping_interval: Option<Duration>) -> io::Result<()> {
    let poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("chat-floor listening on http://{}", listener.local_addr()?);
    let mut rooms = Rooms {
        names: HashMap::new(),
        members: Vec::new(),
    };
    rooms.index(b"general");
    let mut server = Server {
        poll,
        listener,
        conns: Vec::new(),
        free: Vec::new(),
        rooms,
        scratch: vec![0; READ_CHUNK],
        frame: Vec::with_capacity(1024),
        dirty: Vec::new(),
        otps: 0,
        clock: Clock::default(),
        ping_interval,
    };
    let mut events = Events::with_capacity(1024);
    // With a heartbeat, due pings are looked for at least this often.
    let ping_scan = ping_interval.map(|_| PING_SCAN);
    let mut last_scan = Instant::now();
    loop {
        if ping_scan.is_some() && last_scan.elapsed() >= PING_SCAN {
            last_scan = Instant::now();
            server.ping_due();
        }
        if let Err(err) = server.poll.poll(&mut events, ping_scan) {
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                server.accept();
                continue;
            }
            let index = event.token().0;
            if event.is_writable() {
                server.mark_dirty(index);
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                server.read(index);
            }
        }
        server.flush_all();
    }
}

impl Server {
    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let index = self.free.pop().unwrap_or_else(|| {
                        self.conns.push(None);
                        self.conns.len() - 1
                    });
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, Token(index), Interest::READABLE)
                        .is_err()
                    {
                        self.free.push(index);
                        continue;
                    }
                    self.conns[index] = Some(Conn {
                        stream,
                        inbuf: Vec::new(),
                        out: Vec::new(),
                        websocket: false,
                        room: 0,
                        slot: 0,
                        dirty: false,
                        blocked: false,
                        closing: false,
                        next_ping: None,
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                // Out of file descriptors and the like: try again on the next event.
                Err(_) => return,
            }
        }
    }

    fn read(&mut self, index: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) {
            match conn.stream.read(&mut scratch) {
                Ok(0) => {
                    self.remove(index);
                    break;
                }
                Ok(n) => {
                    if !self.on_bytes(index, &mut scratch[..n]) {
                        self.remove(index);
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.remove(index);
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Handles what one read brought; false drops the connection.
    fn on_bytes(&mut self, index: usize, bytes: &mut [u8]) -> bool {
        let Some(conn) = self.conns[index].as_mut() else {
            return false;
        };
        if conn.closing {
            return true;
        }
        // Work in place on the read buffer when nothing is left over from
        // the last read (the usual case); otherwise on the connection's buffer.
        let mut inbuf = std::mem::take(&mut conn.inbuf);
        let used;
        let ok;
        if inbuf.is_empty() {
            let (u, k) = self.process(index, bytes);
            used = u;
            ok = k;
            inbuf.extend_from_slice(&bytes[used..]);
        } else {
            inbuf.extend_from_slice(bytes);
            let (u, k) = self.process(index, &mut inbuf);
            used = u;
            ok = k;
            inbuf.drain(..used);
        }
        if inbuf.len() > MAX_HEAD {
            return false;
        }
        if let Some(conn) = self.conns[index].as_mut() {
            conn.inbuf = inbuf;
        }
        ok
    }

    /// Handles every complete request or frame at the start of `buf`;
    /// returns the bytes used and false to drop the connection.
    fn process(&mut self, index: usize, buf: &mut [u8]) -> (usize, bool) {
        let mut at = 0;
        loop {
            let Some(conn) = self.conns[index].as_ref() else {
                return (at, false);
            };
            if conn.closing {
                return (at, true);
            }
            let step = if conn.websocket {
                self.frame_in(index, &mut buf[at..])
            } else {
                self.http_in(index, &buf[at..])
            };
            match step {
                Step::More => return (at, true),
                Step::Used(n) => at += n,
                Step::Drop => return (at, false),
            }
        }
    }

    fn http_in(&mut self, index: usize, buf: &[u8]) -> Step {
        let Some(head_len) = find(buf, b"\r\n\r\n").map(|at| at + 4) else {
            return Step::More;
        };
        let head = &buf[..head_len];
        let line_end = find(head, b"\r\n").unwrap_or(0);
        let mut parts = head[..line_end].split(|&b| b == b' ');
        let method = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        let content_length = header(head, b"content-length")
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let total = head_len + content_length;
        if buf.len() < total {
            return if total > MAX_HEAD {
                Step::Drop
            } else {
                Step::More
            };
        }
        let mut response = Vec::with_capacity(160);
        if method == b"POST" && path == b"/login" {
            self.otps += 1;
            let body = format!("{{\"otp\":\"{:032x}\"}}", self.otps);
            response.extend_from_slice(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        } else if method == b"GET" && path.starts_with(b"/ws") {
            let Some(key) = header(head, b"sec-websocket-key") else {
                return Step::Drop;
            };
            let mut sha = sha1_smol::Sha1::new();
            sha.update(trim(key));
            sha.update(WS_GUID);
            response.extend_from_slice(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
            );
            base64(&sha.digest().bytes(), &mut response);
            response.extend_from_slice(b"\r\n\r\n");
            let members = &mut self.rooms.members[0];
            members.push(index);
            let slot = members.len() - 1;
            let next_ping = self.ping_interval.map(|every| Instant::now() + every);
            if let Some(conn) = self.conns[index].as_mut() {
                conn.websocket = true;
                conn.room = 0;
                conn.slot = slot;
                conn.next_ping = next_ping;
            }
        } else {
            response.extend_from_slice(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        }
        self.send(index, &response);
        Step::Used(total)
    }

    fn frame_in(&mut self, index: usize, buf: &mut [u8]) -> Step {
        if buf.len() < 2 {
            return Step::More;
        }
        let (fin, opcode) = (buf[0] & 0x80 != 0, buf[0] & 0x0F);
        if buf[1] & 0x80 == 0 {
            return Step::Drop; // clients must mask
        }
        let (len, header) = match buf[1] & 0x7F {
            126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 => return Step::Drop, // far over the message limit
            126 => return Step::More,
            short => (usize::from(short), 2),
        };
        if len > MAX_MESSAGE {
            self.close(index, 1009);
            return Step::Used(buf.len());
        }
        let total = header + 4 + len;
        if buf.len() < total {
            return Step::More;
        }
        let mask = [
            buf[header],
            buf[header + 1],
            buf[header + 2],
            buf[header + 3],
        ];
        let payload = &mut buf[header + 4..total];
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
        let payload = &buf[header + 4..total];
        match opcode {
            0x1 if fin => self.on_text(index, payload),
            0x9 => {
                let mut pong = Vec::with_capacity(2 + payload.len());
                push_header(&mut pong, 0xA, payload.len());
                pong.extend_from_slice(payload);
                self.send(index, &pong);
            }
            0xA => {}
            0x8 => {
                let code = match payload {
                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                    _ => 1000,
                };
                self.close(index, code);
            }
            // Binary, fragmented or unknown: chat-server closes 1003 too.
            _ => self.close(index, 1003),
        }
        Step::Used(total)
    }

    fn on_text(&mut self, index: usize, payload: &[u8]) {
        let Some(kind) = string_after(payload, b"\"type\":\"") else {
            return;
        };
        if kind == b"send_message" {
            let Some(message) = string_after(payload, b"\"message\":\"") else {
                return;
            };
            let Some(room) = self.conns[index].as_ref().map(|c| c.room) else {
                return;
            };
            let mut frame = std::mem::take(&mut self.frame);
            frame.clear();
            let sent = self.clock.now();
            let len = NEW_MESSAGE.len()
                + message.len()
                + FROM_KEY.len()
                + FROM.len()
                + SENT_KEY.len()
                + sent.len()
                + END.len();
            push_header(&mut frame, 0x1, len);
            frame.extend_from_slice(NEW_MESSAGE);
            frame.extend_from_slice(message);
            frame.extend_from_slice(FROM_KEY);
            frame.extend_from_slice(FROM);
            frame.extend_from_slice(SENT_KEY);
            frame.extend_from_slice(&sent);
            frame.extend_from_slice(END);
            // Index loop: `send` needs `self` while the member list is read.
            for i in 0..self.rooms.members[room].len() {
                let member = self.rooms.members[room][i];
                self.send(member, &frame);
            }
            self.frame = frame;
        } else if kind == b"change_room" {
            let Some(name) = string_after(payload, b"\"name\":\"") else {
                return;
            };
            if name.is_empty() || name.len() > 64 {
                return;
            }
            let room = self.rooms.index(name);
            self.leave(index);
            let members = &mut self.rooms.members[room];
            members.push(index);
            let slot = members.len() - 1;
            if let Some(conn) = self.conns[index].as_mut() {
                conn.room = room;
                conn.slot = slot;
            }
        }
    }

    /// Queues bytes for a connection; flushed at the end of the iteration.
    fn send(&mut self, index: usize, bytes: &[u8]) {
        let Some(conn) = self.conns[index].as_mut() else {
            return;
        };
        if conn.out.len() + bytes.len() > MAX_QUEUE {
            // A slow consumer: dropped at the flush (never mid-broadcast).
            conn.closing = true;
            conn.out.clear();
        } else {
            conn.out.extend_from_slice(bytes);
        }
        self.mark_dirty(index);
    }

    /// Pings every WebSocket whose ping is due (`--ping-interval` only).
    /// Each connection is pinged on its own schedule from its upgrade, as
    /// chat-server does; pongs are read and ignored.
    fn ping_due(&mut self) {
        let (Some(every), now) = (self.ping_interval, Instant::now()) else {
            return;
        };
        for index in 0..self.conns.len() {
            let due = self.conns[index]
                .as_ref()
                .and_then(|conn| conn.next_ping)
                .is_some_and(|at| at <= now);
            if due {
                if let Some(conn) = self.conns[index].as_mut() {
                    conn.next_ping = Some(now + every);
                }
                self.send(index, &[0x89, 0x00]);
            }
        }
        self.flush_all();
    }

    fn close(&mut self, index: usize, code: u16) {
        let mut frame = Vec::with_capacity(4);
        push_header(&mut frame, 0x8, 2);
        frame.extend_from_slice(&code.to_be_bytes());
        self.send(index, &frame);
        if let Some(conn) = self.conns[index].as_mut() {
            conn.closing = true;
        }
    }

    fn mark_dirty(&mut self, index: usize) {
        if let Some(conn) = self.conns[index].as_mut()
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(index);
        }
    }

    fn flush_all(&mut self) {
        let list = std::mem::take(&mut self.dirty);
        for &index in &list {
            let Some(conn) = self.conns[index].as_mut() else {
                continue;
            };
            conn.dirty = false;
            let mut written = 0;
            let mut failed = false;
            while written < conn.out.len() {
                match conn.stream.write(&conn.out[written..]) {
                    Ok(0) => {
                        failed = true;
                        break;
                    }
                    Ok(n) => written += n,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                self.remove(index);
                continue;
            }
            if written == conn.out.len() {
                conn.out.clear();
            } else {
                conn.out.drain(..written);
            }
            let drained = conn.out.is_empty();
            if drained && conn.closing {
                self.remove(index);
                continue;
            }
            // Write interest only while output is stuck, as in chat-server.
            if conn.blocked == drained {
                let interest = if drained {
                    Interest::READABLE
                } else {
                    Interest::READABLE | Interest::WRITABLE
                };
                if self
                    .poll
                    .registry()
                    .reregister(&mut conn.stream, Token(index), interest)
                    .is_err()
                {
                    self.remove(index);
                    continue;
                }
                conn.blocked = !drained;
            }
        }
        let mut list = list;
        list.clear();
        if self.dirty.is_empty() {
            self.dirty = list;
        }
    }

    fn leave(&mut self, index: usize) {
        let Some(conn) = self.conns[index].as_ref() else {
            return;
        };
        if !conn.websocket {
            return;
        }
        let (room, slot) = (conn.room, conn.slot);
        let members = &mut self.rooms.members[room];
        members.swap_remove(slot);
        if let Some(&moved) = members.get(slot)
            && let Some(other) = self.conns[moved].as_mut()
        {
            other.slot = slot;
        }
    }

    fn remove(&mut self, index: usize) {
        self.leave(index);
        if let Some(mut conn) = self.conns[index].take() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.free.push(index);
        }
    }
}

enum Step {
    More,
    Used(usize),
    Drop,
}

const NEW_MESSAGE: &[u8] = br#"{"type":"new_message","payload":{"message":""#;
const FROM_KEY: &[u8] = br#"","from":""#;
const SENT_KEY: &[u8] = br#"","sent":""#;
const END: &[u8] = br#""}}"#;

/// A server frame header (never masked).
fn push_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    }
}

/// The raw (still escaped) JSON string that follows `key`, up to its closing quote.
fn string_after<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let start = find(json, key)? + key.len();
    let rest = &json[start..];
    let mut end = 0;
    while end < rest.len() {
        match rest[end] {
            b'"' => return Some(&rest[..end]),
            b'\\' => end += 2,
            _ => end += 1,
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A header's value (name matched without case), from a request head.
fn header<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name)
            .then(|| trim(&line[colon + 1..]))
    })
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

fn base64(bytes: &[u8], out: &mut Vec<u8>) {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

/// `sent` in chat-server's format (`2026-11-25T19:40:00.123Z`), the date
/// part recomputed only when the second changes.
#[derive(Default)]
struct Clock {
    second: u64,
    text: [u8; 24],
}

impl Clock {
    fn now(&mut self) -> [u8; 24] {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let secs = since.as_secs();
        if secs != self.second || self.text[0] == 0 {
            self.second = secs;
            let (y, mo, d) = civil(secs / 86_400);
            let rem = secs % 86_400;
            let text = format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.000Z",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            );
            self.text.copy_from_slice(text.as_bytes());
        }
        let millis = since.subsec_millis();
        self.text[20] = b'0' + (millis / 100) as u8;
        self.text[21] = b'0' + (millis / 10 % 10) as u8;
        self.text[22] = b'0' + (millis % 10) as u8;
        self.text
    }
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455() {
        let mut sha = sha1_smol::Sha1::new();
        sha.update(b"dGhlIHNhbXBsZSBub25jZQ==");
        sha.update(WS_GUID);
        let mut out = Vec::new();
        base64(&sha.digest().bytes(), &mut out);
        assert_eq!(out, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn strings_are_cut_out_of_json() {
        let event = br#"{"type":"send_message","payload":{"message":"a \"b\" c","from":"x"}}"#;
        assert_eq!(
            string_after(event, b"\"type\":\""),
            Some(&b"send_message"[..])
        );
        assert_eq!(
            string_after(event, b"\"message\":\""),
            Some(&br#"a \"b\" c"#[..])
        );
        assert_eq!(string_after(b"{\"name\":\"open", b"\"name\":\""), None);
        let head = b"GET /ws HTTP/1.1\r\nsec-websocket-key:  abc \r\n\r\n";
        assert_eq!(header(head, b"Sec-WebSocket-Key"), Some(&b"abc"[..]));
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(20_513), (2026, 3, 1));
    }
}

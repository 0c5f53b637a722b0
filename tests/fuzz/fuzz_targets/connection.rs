//! (b) One connection core, driven the way the server's loop drives it, fed
//! arbitrary bytes.
//!
//! The first byte picks how the rest is cut into reads, how much the client
//! reads back per loop turn (down to nothing: backpressure) and how much time
//! passes per turn (timeouts and heartbeats). Each turn does what a loop turn
//! does: grant waiting logins their turn, read what the core will take, hand
//! chat events to a real hub, settle, fire the core's timer, flush. Logins
//! run for real against an account with a cheap hash; every `otp=VALID` in
//! the input stands for a freshly issued OTP.
//!
//! Checked: no panic; a connection never holds more than one request head
//! and body of unparsed input; no message longer than the limit reaches the
//! hub or an echo; what is queued for the client stays bounded; what it is
//! sent after the upgrade stays within a constant factor of what it sent;
//! and what it is sent is well-formed server frames with nothing after a
//! close frame (RFC 6455 5.5.1: after a Close frame, an endpoint sends no
//! more data).
#![no_main]

use std::rc::Rc;
use std::time::{Duration, Instant};

use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Params, Version};
use chat_server::auth::Accounts;
use chat_server::broker::{LocalBroker, MemberId};
use chat_server::config::Config;
use chat_server::conn::{Connection, Context, Event, Offer};
use chat_server::http::Role;
use chat_server::hub::{Delivery, Mailboxes};
use chat_server::slab::Slab;
use libfuzzer_sys::fuzz_target;

/// Read sizes to cut the input into (a real read returns anything from 1 byte).
const READS: [usize; 8] = [1, 2, 3, 7, 16, 64, 1500, 65536];
/// Bytes the client takes back per loop turn.
const SINK: [usize; 4] = [usize::MAX, 4096, 64, 0];
/// Time per loop turn.
const STEPS: [Duration; 4] = [
    Duration::from_millis(1),
    Duration::from_millis(100),
    Duration::from_secs(1),
    Duration::from_secs(7),
];
/// The loop's read budget per connection per turn.
const READ_BUDGET: usize = 64 * 1024;
/// A small queue bound, so fuzzing reaches the slow-consumer cut-off.
const MAX_QUEUE: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let read_size = READS[usize::from(flags & 7)];
    let sink = SINK[usize::from(flags >> 3 & 3)];
    let step = STEPS[usize::from(flags >> 5 & 3)];
    let mut world = World::new();
    let input = world.with_real_otps(input);
    let peer = "127.0.0.1:5000".parse().unwrap();
    let mut conn = Connection::new(peer, Role::Public, false, world.now, &world.config);
    let mut pending: Vec<u8> = Vec::new();
    let mut wire = Wire::default();
    let mut chunks = input.chunks(read_size);
    // Turns go on while input is left or the core still has work to do.
    for _ in 0..input.len() + 64 {
        if let Some(chunk) = chunks.next() {
            pending.extend_from_slice(chunk);
        } else if pending.is_empty() && !conn.has_output() {
            break;
        }
        world.turn(&mut conn, &mut pending, step);
        assert!(
            conn.input_buffered() <= chat_server::conn::MAX_REQUEST,
            "{} bytes of unparsed input held",
            conn.input_buffered()
        );
        let queued = conn.outbound().queued_bytes();
        assert!(
            queued <= MAX_QUEUE + 8 * READ_BUDGET + 64 * 1024,
            "{queued} bytes queued"
        );
        wire.take(&mut conn, sink);
        // A message comes back as JSON (escapes grow it up to 6x) in a frame;
        // an echo no bigger than it arrived; plus pings and a close.
        let sent = wire.after_upgrade();
        assert!(
            sent <= 8 * world.received + 4096,
            "{sent} bytes sent for {} bytes in",
            world.received
        );
        if conn.ending().is_some() {
            break;
        }
    }
});

/// Everything around the connection that the server's loop provides: the
/// server's own `World` on the local back end, and the fuzzer's clock.
struct World {
    world: chat_server::world::World,
    ids: Slab<()>,
    now: Instant,
    /// Bytes the client has sent.
    received: usize,
}

impl std::ops::Deref for World {
    type Target = chat_server::world::World;
    fn deref(&self) -> &Self::Target {
        &self.world
    }
}

impl std::ops::DerefMut for World {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.world
    }
}

/// The hub's way into the one connection (member 0).
struct Only<'a> {
    conn: &'a mut Connection,
    now: Instant,
}

impl Mailboxes for Only<'_> {
    fn deliver(&mut self, _member: MemberId, frame: &Rc<[u8]>, _kind: Delivery) -> bool {
        self.conn.offer(frame, MAX_QUEUE, self.now) == Offer::CutOff
    }
    fn close(&mut self, _member: MemberId, reason: &'static str) {
        self.conn.disconnect(reason, self.now);
    }
}

impl World {
    fn new() -> World {
        let www = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../www"));
        let cheap = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, None).unwrap(),
        );
        let hash = cheap
            .hash_password_with_salt(b"123", b"fuzzfuzzfuzzfuzz")
            .unwrap();
        let config = Config {
            www: www.into(),
            max_queue: MAX_QUEUE,
            echo_path: Some("/echo".into()),
            ..Config::default()
        };
        let now = Instant::now();
        let accounts = Accounts::parse(&format!("percy:{hash}\n")).unwrap();
        let local = Box::new(LocalBroker::for_config(&config, now));
        let origins = vec!["http://localhost:8080".into()];
        World {
            world: chat_server::world::World::with_accounts(config, origins, accounts, local)
                .unwrap(),
            ids: Slab::new(),
            now,
            received: 0,
        }
    }

    /// Replaces every `otp=VALID` with a live OTP of its own.
    fn with_real_otps(&mut self, input: &[u8]) -> Vec<u8> {
        let marker = b"otp=VALID";
        let mut out = Vec::with_capacity(input.len());
        let mut rest = input;
        while let Some(at) = rest.windows(marker.len()).position(|w| w == marker) {
            out.extend_from_slice(&rest[..at]);
            let expires = self.now + Duration::from_secs(5);
            let otp = self.site.otps.issue("percy", expires);
            out.extend_from_slice(b"otp=");
            out.extend_from_slice(otp.unwrap().as_bytes());
            rest = &rest[at + marker.len()..];
        }
        out.extend_from_slice(rest);
        out
    }

    /// One loop turn for this connection.
    fn turn(&mut self, conn: &mut Connection, pending: &mut Vec<u8>, step: Duration) {
        self.now += step;
        self.site.turns.new_iteration();
        if self.site.turns.grant(|_| true).is_some() {
            self.drive(conn, true, |core, cx| core.resume(cx));
        }
        let mut budget = READ_BUDGET;
        loop {
            let take = conn
                .input_capacity(&self.config, self.now)
                .min(pending.len())
                .min(budget);
            if take == 0 {
                break;
            }
            let bytes: Vec<u8> = pending.drain(..take).collect();
            budget -= take;
            self.received += take;
            self.drive(conn, false, |core, cx| core.receive(&bytes, cx));
        }
        if conn
            .next_timeout(&self.config, self.now)
            .is_some_and(|due| due <= self.now)
        {
            self.drive(conn, false, |core, cx| core.timeout(cx));
        }
    }

    fn drive(
        &mut self,
        conn: &mut Connection,
        login_turn: bool,
        step: impl FnOnce(&mut Connection, &mut Context),
    ) {
        let id = self.ids.id_of(0).unwrap_or_else(|| self.ids.insert(()));
        let now = self.now;
        let mut cx = self.world.context(id, now, login_turn);
        step(conn, &mut cx);
        for event in self.world.pending_events() {
            if let Event::Text(text) = event {
                assert!(
                    text.len() <= self.config.max_message,
                    "a {}-byte message passed the limit",
                    text.len()
                );
            }
        }
        let mut mail = Only { conn, now };
        self.world.dispatch(0, &mut mail);
        conn.settle(&self.config, self.now);
    }
}

/// What the client has been sent, checked frame by frame after the upgrade.
#[derive(Default)]
struct Wire {
    bytes: Vec<u8>,
    /// Where the frames begin (after the 101's head), once upgraded.
    frames_from: Option<usize>,
    at: usize,
    close_seen: bool,
}

impl Wire {
    /// The client reads up to `budget` bytes of what is queued for it.
    fn take(&mut self, conn: &mut Connection, budget: usize) {
        let mut sink = Sink {
            into: &mut self.bytes,
            left: budget,
        };
        let flushed = conn
            .outbound()
            .write_to(&mut sink)
            .expect("a sink only blocks");
        if flushed == chat_server::outbound::Flushed::All {
            conn.drained();
        }
        if self.frames_from.is_none()
            && let Some(at) = find(&self.bytes, b"HTTP/1.1 101 Switching Protocols\r\n")
            && let Some(end) = find(&self.bytes[at..], b"\r\n\r\n")
        {
            self.frames_from = Some(at + end + 4);
            self.at = at + end + 4;
        }
        self.check();
    }

    /// Bytes sent since the 101.
    fn after_upgrade(&self) -> usize {
        self.frames_from.map_or(0, |from| self.bytes.len() - from)
    }

    fn check(&mut self) {
        if self.frames_from.is_none() {
            return;
        }
        while let Some((opcode, len)) = header(&self.bytes[self.at..]) {
            let frame = &self.bytes[self.at..self.at + len];
            assert!(
                !self.close_seen,
                "a frame (opcode {opcode}) was queued after the close frame: {:02x?}",
                &frame[..frame.len().min(40)]
            );
            assert_eq!(frame[0] & 0x70, 0, "RSV bits set");
            assert_eq!(frame[1] & 0x80, 0, "a server frame is masked");
            assert!(
                matches!(opcode, 0x1 | 0x2 | 0x8 | 0x9 | 0xA),
                "opcode {opcode}"
            );
            if opcode >= 0x8 {
                assert!(frame[0] & 0x80 != 0 && len <= 127, "bad control frame");
            }
            self.close_seen |= opcode == 0x8;
            self.at += len;
        }
    }
}

/// A client socket that takes at most `left` bytes, then would block.
struct Sink<'a> {
    into: &'a mut Vec<u8>,
    left: usize,
}

impl std::io::Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.left);
        self.into.extend_from_slice(&buf[..n]);
        self.left -= n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The opcode and total length of the complete frame at the start of `bytes`.
fn header(bytes: &[u8]) -> Option<(u8, usize)> {
    let (&b0, rest) = bytes.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    let (head, len) = match b1 & 0x7f {
        126 => (
            4,
            usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
        ),
        127 => (
            10,
            usize::try_from(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?)).ok()?,
        ),
        n => (2, usize::from(n)),
    };
    (bytes.len() >= head + len).then_some((b0 & 0x0f, head + len))
}

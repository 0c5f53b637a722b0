//! The connection core driven with synthetic bytes and synthetic time: no
//! sockets, no sleeps. A `World` plays the loop's part (contexts, the hub).

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::*;
use crate::auth::LOGINS_PER_ITERATION;
use crate::broker::{LocalBroker, MemberId};
use crate::conn::http::MAX_UNSENT;
use crate::http::Role;
use crate::hub::{Delivery, Mailboxes};
use crate::slab::Slab;

/// Everything around one connection that the loop would provide: the
/// server's own `World` (on the local back end), and the slot and the time
/// the test gives it.
struct World {
    world: crate::world::World,
    ids: Slab<()>,
    t0: Instant,
}

impl std::ops::Deref for World {
    type Target = crate::world::World;
    fn deref(&self) -> &Self::Target {
        &self.world
    }
}

impl std::ops::DerefMut for World {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.world
    }
}

/// The hub's way into the one connection under test (member 0).
struct Only<'a> {
    conn: &'a mut Connection,
    max_queue: usize,
    now: Instant,
}

impl Mailboxes for Only<'_> {
    fn deliver(&mut self, _member: MemberId, frame: &Rc<[u8]>, _kind: Delivery) -> bool {
        self.conn.offer(frame, self.max_queue, self.now) == Offer::CutOff
    }
    fn close(&mut self, _member: MemberId, reason: &'static str) {
        self.conn.disconnect(reason, self.now);
    }
}

impl World {
    fn new() -> World {
        let config = Config {
            www: concat!(env!("CARGO_MANIFEST_DIR"), "/www").into(),
            echo_path: Some("/echo".into()),
            ..Config::default()
        };
        let t0 = Instant::now();
        let local = Box::new(LocalBroker::for_config(&config, t0));
        let origins = vec!["http://localhost:8080".into()];
        World {
            world: crate::world::World::open(config, origins, false, local).expect("a world"),
            ids: Slab::new(),
            t0,
        }
    }

    fn at(&self, millis: u64) -> Instant {
        self.t0 + Duration::from_millis(millis)
    }

    fn connect(&mut self) -> Connection {
        self.site.turns.new_iteration();
        Connection::new(
            "127.0.0.1:5000".parse().expect("an address"),
            Role::Public,
            false,
            self.t0,
            &self.config,
        )
    }

    /// One step of the core, then the hub's part, then `settle`: as the loop does.
    fn drive(
        &mut self,
        conn: &mut Connection,
        now: Instant,
        login_turn: bool,
        step: impl FnOnce(&mut Connection, &mut Context),
    ) {
        let id = self.ids.id_of(0).unwrap_or_else(|| self.ids.insert(()));
        let mut cx = self.world.context(id, now, login_turn);
        step(conn, &mut cx);
        let max_queue = self.config.max_queue;
        let mut mail = Only {
            conn,
            max_queue,
            now,
        };
        self.world.dispatch(0, &mut mail);
        conn.settle(&self.config, now);
    }

    fn receive(&mut self, conn: &mut Connection, bytes: &[u8], now: Instant) {
        self.drive(conn, now, false, |core, cx| core.receive(bytes, cx));
    }

    fn timeout(&mut self, conn: &mut Connection, now: Instant) {
        self.drive(conn, now, false, |core, cx| core.timeout(cx));
    }

    /// A chat WebSocket for the demo user, upgraded at t0.
    fn chat_member(&mut self) -> Connection {
        let expires = self.at(5_000);
        let otp = self.site.otps.issue("percy", expires).expect("an OTP");
        let mut conn = self.connect();
        self.receive(
            &mut conn,
            upgrade_request(&format!("/ws?otp={otp}")).as_bytes(),
            self.t0,
        );
        let wire = take_output(&mut conn);
        assert!(
            wire.starts_with(b"HTTP/1.1 101 "),
            "{}",
            String::from_utf8_lossy(&wire)
        );
        conn
    }
}

fn upgrade_request(target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A masked client frame (the mask is fixed: the server must unmask any).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        len if len < 126 => frame.push(0x80 | len as u8),
        len => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

fn send_message(text: &str) -> Vec<u8> {
    let event = format!(r#"{{"type":"send_message","payload":{{"message":"{text}"}}}}"#);
    client_frame(0x1, event.as_bytes())
}

/// Writes everything queued into a Vec, as a socket that takes it all would.
fn take_output(conn: &mut Connection) -> Vec<u8> {
    let mut wire = Vec::new();
    conn.outbound()
        .write_to(&mut wire)
        .expect("a Vec takes everything");
    wire
}

/// Server frames (unmasked): opcode and payload each.
fn frames(mut wire: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while wire.len() >= 2 {
        let (len, head) = match wire[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([wire[2], wire[3]])), 4),
            n => (usize::from(n), 2),
        };
        out.push((wire[0] & 0x0f, wire[head..head + len].to_vec()));
        wire = &wire[head + len..];
    }
    out
}

/// The status line of every response in `wire` (bodies here never hold one).
fn status_lines(wire: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(wire);
    text.match_indices("HTTP/1.1 ")
        .map(|(at, _)| text[at..].split("\r\n").next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut world = World::new();
    let mut conn = world.connect();
    let login = r#"{"username":"percy","password":"123"}"#;
    let pipeline = format!(
        "GET /healthz HTTP/1.1\r\n\r\nGET /missing.txt HTTP/1.1\r\n\r\n\
         POST /login HTTP/1.1\r\nContent-Length: {}\r\n\r\n{login}GET /healthz HTTP/1.1\r\n\r\n",
        login.len()
    );
    // Cut anywhere, the answers are the same and in order.
    let (first, rest) = pipeline.as_bytes().split_at(37);
    world.receive(&mut conn, first, world.t0);
    world.receive(&mut conn, rest, world.at(1));
    let wire = take_output(&mut conn);
    assert_eq!(
        status_lines(&wire),
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK"
        ]
    );
    assert_eq!(world.metrics.logins_succeeded, 1);
    // Between requests it waits for the next one no longer than the idle timeout.
    let idle = world.at(1) + world.config.idle_timeout;
    assert_eq!(conn.next_timeout(&world.config, world.t0), Some(idle));
    world.timeout(&mut conn, idle);
    assert_eq!(conn.ending().expect("it ended").reason, "idle timeout");
}

#[test]
fn a_login_beyond_the_iterations_checks_waits_for_its_turn() {
    let mut world = World::new();
    let mut conn = world.connect();
    let body = r#"{"username":"percy","password":"nope"}"#;
    let one = format!(
        "POST /login HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // One iteration's checks, one that waits for a turn, one more after it.
    let logins = LOGINS_PER_ITERATION + 2;
    world.receive(&mut conn, one.repeat(logins).as_bytes(), world.t0);
    assert_eq!(
        status_lines(&take_output(&mut conn)).len(),
        LOGINS_PER_ITERATION,
        "the iteration's checks, no more"
    );
    assert_eq!(
        conn.input_capacity(&world.config, world.t0),
        0,
        "input pauses while a login waits"
    );
    assert_eq!(world.site.turns.waiting(), 1);
    world.site.turns.new_iteration();
    let granted = world.site.turns.grant(|_| true).expect("a login turn");
    world.drive(&mut conn, world.at(10), true, |core, cx| {
        assert_eq!(cx.id, granted);
        core.resume(cx)
    });
    // The granted check, then one more: nobody else waits and checks are left.
    let answers = status_lines(&take_output(&mut conn));
    assert_eq!(answers, ["HTTP/1.1 401 Unauthorized"; 2]);
    assert_eq!(world.site.turns.waiting(), 0);
    assert!(
        conn.input_capacity(&world.config, world.t0) > 0,
        "reading resumes"
    );
}

#[test]
fn frames_behind_the_upgrade_in_the_same_read_are_the_first_messages() {
    let mut world = World::new();
    let expires = world.at(5_000);
    let otp = world.site.otps.issue("percy", expires).expect("an OTP");
    let mut conn = world.connect();
    let mut read = upgrade_request(&format!("/ws?otp={otp}")).into_bytes();
    read.extend(send_message("early"));
    world.receive(&mut conn, &read, world.t0);
    let wire = take_output(&mut conn);
    let head_end = wire
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    assert!(wire.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    let sent = frames(&wire[head_end..]);
    assert_eq!(sent.len(), 1, "the message came back to its sender");
    let event: serde_json::Value = serde_json::from_slice(&sent[0].1).expect("event JSON");
    assert_eq!(event["type"], "new_message");
    assert_eq!(event["payload"]["message"], "early");
    assert_eq!(event["payload"]["from"], "percy");
    assert!(conn.is_websocket());
}

#[test]
fn a_close_follows_the_replies_to_what_was_read_before_it() {
    let mut world = World::new();
    let mut conn = world.chat_member();
    let mut read = client_frame(0x1, b"not json");
    read.extend(send_message("last words"));
    read.extend(client_frame(0x8, &1000u16.to_be_bytes()));
    read.extend(send_message("after the close"));
    world.receive(&mut conn, &read, world.at(5));
    let sent = frames(&take_output(&mut conn));
    let opcodes: Vec<u8> = sent.iter().map(|(op, _)| *op).collect();
    assert_eq!(
        opcodes,
        [0x1, 0x1, 0x8],
        "error, echo of the message, then the close"
    );
    assert!(String::from_utf8_lossy(&sent[0].1).contains(r#""type":"error""#));
    assert!(String::from_utf8_lossy(&sent[1].1).contains("last words"));
    // The peer closed first: once our reply is out, the connection is over.
    assert!(!conn.is_websocket());
    assert!(!conn.drained(), "no FIN wait: the peer already closed");
    assert_eq!(conn.ending().expect("it ended").reason, "client closed");
}

#[test]
fn a_binary_frame_is_refused_with_1003_after_earlier_replies() {
    let mut world = World::new();
    let mut conn = world.chat_member();
    let mut read = send_message("first");
    read.extend(client_frame(0x2, b"\x00\x01"));
    world.receive(&mut conn, &read, world.at(5));
    let sent = frames(&take_output(&mut conn));
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].0, 0x8);
    assert_eq!(&sent[1].1[..2], &1003u16.to_be_bytes());
    assert!(
        conn.drained(),
        "our close is out: now FIN, and wait for the peer"
    );
    assert_eq!(
        conn.input_capacity(&world.config, world.t0),
        usize::MAX,
        "input is read and dropped"
    );
    world.drive(&mut conn, world.at(6), false, |core, cx| {
        core.peer_closed(cx)
    });
    assert_eq!(
        conn.ending().expect("it ended").reason,
        "binary frames are not accepted"
    );
}

#[test]
fn a_slow_consumer_is_cut_off_with_1008_and_nothing_more_is_queued() {
    let mut world = World::new();
    let mut conn = world.chat_member();
    let frame: Rc<[u8]> = crate::ws::text_frame(&[b'x'; 100]);
    let max_queue = 1_000;
    let mut offers = 0;
    while conn.offer(&frame, max_queue, world.at(1)) == Offer::Queued {
        offers += 1;
    }
    assert_eq!(offers, 9, "nine 102-byte frames fit in 1000 bytes");
    assert_eq!(conn.offer(&frame, max_queue, world.at(1)), Offer::Refused);
    let sent = frames(&take_output(&mut conn));
    assert_eq!(sent.len(), 1, "the unsent frames were dropped");
    assert_eq!(sent[0].0, 0x8);
    assert_eq!(&sent[0].1[..2], &1008u16.to_be_bytes());
    // If the peer never finishes the close, it is reset at the deadline.
    assert!(conn.drained());
    let deadline = conn
        .next_timeout(&world.config, world.t0)
        .expect("a timeout");
    assert_eq!(deadline, world.at(1) + CLOSE_TIMEOUT);
    world.timeout(&mut conn, deadline);
    let ending = conn.ending().expect("it ended");
    assert_eq!(ending.reason, "close handshake timed out");
    assert!(ending.abort, "a peer that does not read is reset");
}

#[test]
fn a_silent_client_is_pinged_then_dropped_and_an_answering_one_is_kept() {
    let mut world = World::new();
    let (interval, wait) = (world.config.ping_interval, world.config.pong_wait);
    let mut silent = world.chat_member();
    let first_ping = world.t0 + interval;
    assert_eq!(
        silent.next_timeout(&world.config, world.t0),
        Some(first_ping)
    );
    world.timeout(&mut silent, first_ping);
    assert_eq!(frames(&take_output(&mut silent)), [(0x9, vec![])]);
    let gone = first_ping + wait;
    assert_eq!(
        silent.next_timeout(&world.config, world.t0),
        Some(first_ping + interval)
    );
    world.timeout(&mut silent, first_ping + interval);
    world.timeout(&mut silent, gone);
    let ending = silent.ending().expect("it ended");
    assert_eq!(ending.reason, "heartbeat timeout: no pong");
    assert!(ending.abort);
    assert_eq!(world.metrics.heartbeat_timeouts, 1);

    let mut answering = world.chat_member();
    world.timeout(&mut answering, first_ping);
    take_output(&mut answering);
    world.receive(
        &mut answering,
        &client_frame(0xA, b""),
        first_ping + Duration::from_secs(1),
    );
    world.timeout(&mut answering, gone);
    assert!(answering.is_websocket(), "a pong keeps it");
    assert_eq!(
        frames(&take_output(&mut answering)),
        [(0x9, vec![])],
        "the next ping"
    );
    assert_eq!(
        answering.next_timeout(&world.config, world.t0),
        Some(gone + interval)
    );
}

#[test]
fn a_half_closed_http_client_gets_its_answer_then_ends() {
    let mut world = World::new();
    let mut conn = world.connect();
    world.receive(&mut conn, b"GET /healthz HTTP/1.1\r\n\r\n", world.t0);
    world.drive(&mut conn, world.at(1), false, |core, cx| {
        core.peer_closed(cx)
    });
    assert!(conn.ending().is_none(), "its answer is still queued");
    assert_eq!(status_lines(&take_output(&mut conn)), ["HTTP/1.1 200 OK"]);
    assert!(!conn.drained(), "finished once drained: no FIN wait");
    assert_eq!(conn.ending().expect("it ended").reason, "closed by client");
}

#[test]
fn shutdown_closes_websockets_with_1001() {
    let mut world = World::new();
    let mut conn = world.chat_member();
    world.drive(&mut conn, world.at(1), false, |core, cx| core.shut_down(cx));
    let sent = frames(&take_output(&mut conn));
    assert_eq!(sent[0].0, 0x8);
    assert_eq!(&sent[0].1[..2], &1001u16.to_be_bytes());
    let grace = world.at(1) + world.config.shutdown_grace;
    assert_eq!(conn.next_timeout(&world.config, world.t0), Some(grace));
}

#[test]
fn shutdown_sends_an_idle_http_client_our_fin_at_once_and_closes_it_cleanly() {
    let mut world = World::new();
    let mut conn = world.connect();
    world.receive(&mut conn, b"GET /healthz HTTP/1.1\r\n\r\n", world.t0);
    take_output(&mut conn);
    assert!(!conn.ends_on_flush(), "idle keep-alive: nothing to end");
    world.drive(&mut conn, world.at(1), false, |core, cx| core.shut_down(cx));
    assert!(!conn.has_output(), "an idle connection is owed nothing");
    // Nothing is queued, yet it must be flushed: that is where the FIN goes.
    assert!(conn.ends_on_flush());
    assert!(
        conn.drained(),
        "our FIN, now, not at the end of the grace period"
    );
    assert!(!conn.ends_on_flush(), "one FIN");
    // The client keeps its side open; the grace period's end closes it, and
    // a timeout at that same instant ends it no differently (not a reset).
    let grace = world.at(1) + world.config.shutdown_grace;
    assert_eq!(conn.next_timeout(&world.config, world.t0), Some(grace));
    world.timeout(&mut conn, grace);
    let ending = conn.ending().expect("it ended");
    assert_eq!(ending.reason, "shutdown grace period over");
    assert!(!ending.abort, "everything was said: a close, not a reset");
}

#[test]
fn at_the_end_of_the_grace_period_only_a_peer_still_owed_output_is_reset() {
    let mut world = World::new();
    let mut answered = world.chat_member();
    world.drive(&mut answered, world.at(1), false, |core, cx| {
        core.shut_down(cx)
    });
    take_output(&mut answered);
    assert!(answered.drained(), "close 1001 is out: our FIN");
    answered.grace_over();
    assert!(!answered.ending().expect("it ended").abort);

    let mut stuck = world.chat_member();
    world.drive(&mut stuck, world.at(1), false, |core, cx| {
        core.shut_down(cx)
    });
    assert!(stuck.has_output(), "close 1001 never left");
    stuck.grace_over();
    let ending = stuck.ending().expect("it ended");
    assert_eq!(ending.reason, "shutdown grace period over");
    assert!(ending.abort, "a peer that does not read is reset");
}

#[test]
fn a_member_over_its_event_budget_waits_and_loses_nothing() {
    let mut world = World::new();
    let mut conn = world.chat_member();
    let burst: Vec<u8> = (0..60)
        .flat_map(|i| send_message(&format!("m{i}")))
        .collect();
    world.receive(&mut conn, &burst, world.t0);
    let sent = frames(&take_output(&mut conn));
    let texts: Vec<String> = sent
        .iter()
        .map(|(_, payload)| String::from_utf8_lossy(payload).into_owned())
        .collect();
    assert_eq!(texts.len(), 51, "the burst of 50, then the warning");
    assert!(texts[49].contains(r#""message":"m49""#));
    assert!(texts[50].contains(r#""type":"error""#) && texts[50].contains("rate limit"));
    assert_eq!(
        conn.input_capacity(&world.config, world.t0),
        0,
        "input pauses"
    );
    // 20 a second: one more every 50 ms, and nothing is lost or reordered.
    let next = conn
        .next_timeout(&world.config, world.t0)
        .expect("a timeout");
    assert_eq!(next, world.at(50));
    world.timeout(&mut conn, next);
    let one = frames(&take_output(&mut conn));
    assert_eq!(one.len(), 1);
    assert!(String::from_utf8_lossy(&one[0].1).contains(r#""message":"m50""#));
    world.timeout(&mut conn, world.at(1_000));
    let rest = frames(&take_output(&mut conn));
    assert_eq!(rest.len(), 9, "m51 to m59, and no second warning");
    assert!(String::from_utf8_lossy(&rest[8].1).contains(r#""message":"m59""#));
    assert!(
        conn.input_capacity(&world.config, world.at(1_000)) > 0,
        "reading resumes"
    );
    assert_eq!(world.metrics.rate_limited, 1);
}

#[test]
fn pipelined_requests_wait_while_their_answers_are_unsent() {
    let mut world = World::new();
    let mut conn = world.connect();
    let pipeline = "GET /app.js HTTP/1.1\r\nHost: h\r\n\r\n".repeat(90);
    world.receive(&mut conn, pipeline.as_bytes(), world.t0);
    let queued = conn.outbound().queued_bytes();
    let file = std::fs::metadata(concat!(env!("CARGO_MANIFEST_DIR"), "/www/app.js"))
        .expect("www/app.js")
        .len() as usize;
    assert!(
        (MAX_UNSENT..MAX_UNSENT + file + 1024).contains(&queued),
        "{queued} bytes queued"
    );
    assert_eq!(conn.input_capacity(&world.config, world.t0), 0);
    let mut answered = status_lines(&take_output(&mut conn)).len();
    while answered < 90 {
        // As the loop does: once it drains, input may flow again.
        assert!(conn.input_capacity(&world.config, world.at(1)) > 0);
        world.drive(&mut conn, world.at(1), false, |core, cx| core.resume(cx));
        let more = status_lines(&take_output(&mut conn)).len();
        assert!(more > 0, "answers resume once the queue drains");
        answered += more;
    }
    assert_eq!(answered, 90);
}

#[test]
fn a_failed_login_answer_waits_while_failures_abound() {
    let mut world = World::new();
    for i in 0..100u32 {
        let ip = std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        let t0 = world.t0;
        world.site.limiter.record_failure(ip, t0);
    }
    let mut conn = world.connect();
    let body = r#"{"username":"percy","password":"nope"}"#;
    let login = format!(
        "POST /login HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    world.receive(&mut conn, login.as_bytes(), world.t0);
    assert!(take_output(&mut conn).is_empty(), "the 401 waits");
    assert_eq!(conn.input_capacity(&world.config, world.t0), 0);
    let due = conn
        .next_timeout(&world.config, world.t0)
        .expect("a timeout");
    assert_eq!(due, world.t0 + crate::auth::FAILURE_DELAY);
    world.timeout(&mut conn, due);
    assert_eq!(
        status_lines(&take_output(&mut conn)),
        ["HTTP/1.1 401 Unauthorized"]
    );
    // The right password is never slowed.
    let body = r#"{"username":"percy","password":"123"}"#;
    let login = format!(
        "POST /login HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    world.receive(&mut conn, login.as_bytes(), due);
    assert_eq!(status_lines(&take_output(&mut conn)), ["HTTP/1.1 200 OK"]);
}

#[test]
fn a_cut_off_drops_what_it_held() {
    let mut world = World::new();
    let mut http = world.connect();
    world.receive(&mut http, b"GET /app.js HTTP/1.1\r\n\r\nGET /ap", world.t0);
    let held = http.buffered_bytes();
    assert!(held > 14_000);
    assert_eq!(http.cut_off(world.at(1)), held);
    assert!(
        http.ending().expect("it ended").abort,
        "reset, not trickled out"
    );
    let mut member = world.chat_member();
    member.offer(&crate::ws::text_frame(&[b'x'; 1000]), 1 << 20, world.at(1));
    assert!(
        member.cut_off(world.at(1)) > 900,
        "the frame goes; a close frame comes"
    );
    let sent = frames(&take_output(&mut member));
    assert_eq!((sent.len(), sent[0].0), (1, 0x8), "only the close is left");
    assert_eq!(&sent[0].1[..2], &1008u16.to_be_bytes());
}

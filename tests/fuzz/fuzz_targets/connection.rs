//! (b) One connection, fed arbitrary bytes the way the server reads them.
//!
//! The first byte picks how the rest is cut into reads and whether the
//! upgrade lands on the chat or the echo route. HTTP requests are parsed out
//! of a growing buffer; a well-formed upgrade starts a `Session` with the
//! bytes behind the request head, and every later read is fed to it. Text
//! messages are decoded as chat events, and the replies the server would
//! queue for this client are queued.
//!
//! Checked: no panic; the HTTP buffer never holds more than one request's
//! limits; no message is longer than the limit; what is queued for the
//! client stays within a constant factor of what it sent; and what is queued
//! is well-formed server frames with nothing after a close frame (RFC 6455
//! 5.5.1: after sending a Close frame, an endpoint sends no more data).
//!
//! The replies are queued in the order `server.rs` (`on_websocket_bytes`)
//! queues them: what `Session::feed` writes (pongs) first, then the echo or
//! chat replies for the messages decoded in the same read, then the close
//! `Session::queue_close` holds back until those replies are queued.
#![no_main]

use std::rc::Rc;
use std::time::{Duration, Instant};

use chat_server::chat::{self, ClientEvent};
use chat_server::http::request::{self, MAX_BODY, MAX_HEAD};
use chat_server::outbound::Outbound;
use chat_server::ws::{self, Fed, Purpose, Session};
use libfuzzer_sys::fuzz_target;
use tungstenite::Message;

/// The server's defaults.
const CHAT_MAX_MESSAGE: usize = 512;
const ECHO_MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Read sizes to cut the input into (a real read returns anything from 1 byte).
const READS: [usize; 8] = [1, 2, 3, 7, 16, 64, 1500, 65536];

enum Phase {
    Http(Vec<u8>),
    WebSocket(Box<Session>),
    Closed,
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let read_size = READS[usize::from(flags & 7)];
    let purpose = if flags & 8 == 0 {
        Purpose::Chat
    } else {
        Purpose::Echo
    };
    let max_message = match purpose {
        Purpose::Chat => CHAT_MAX_MESSAGE,
        Purpose::Echo => ECHO_MAX_MESSAGE,
    };
    let start = Instant::now();
    let mut phase = Phase::Http(Vec::new());
    let mut out = Outbound::default();
    let mut inbox = Vec::new();
    // Bytes the client sent once it was a WebSocket; bytes written to it, and
    // how far they have been checked frame by frame.
    let mut ws_in = 0usize;
    let mut wire = Vec::new();
    let mut checked = Frames::default();

    for (i, read) in input.chunks(read_size).enumerate() {
        let now = start + Duration::from_millis(i as u64);
        if let Phase::Http(buffer) = &mut phase {
            buffer.extend_from_slice(read);
            loop {
                let Phase::Http(buffer) = &mut phase else {
                    break;
                };
                let (req, used) = match request::parse(buffer) {
                    Ok(Some(parsed)) => parsed,
                    Ok(None) => {
                        assert!(
                            buffer.len() <= MAX_HEAD + MAX_BODY,
                            "HTTP buffer grew to {}",
                            buffer.len()
                        );
                        break;
                    }
                    Err(_) => {
                        phase = Phase::Closed; // answered 4xx/5xx and closed
                        break;
                    }
                };
                buffer.drain(..used);
                let upgrade = matches!(req.path(), "/ws" | "/echo") && req.method == "GET";
                match (upgrade, ws::check_handshake(&req)) {
                    (true, Ok(_accept)) => {
                        let early = std::mem::take(buffer);
                        ws_in = early.len();
                        let session = Session::new(
                            purpose,
                            early,
                            "fuzz".into(),
                            Rc::from("general"),
                            max_message,
                            now,
                        );
                        phase = Phase::WebSocket(Box::new(session));
                        // The server feeds nothing once, to decode the early bytes.
                        feed(&mut phase, &[], &mut out, &mut inbox, now, max_message);
                    }
                    _ if !req.keep_alive() => phase = Phase::Closed,
                    _ => {}
                }
            }
        } else if let Phase::WebSocket(_) = phase {
            ws_in += read.len();
            feed(&mut phase, read, &mut out, &mut inbox, now, max_message);
        }
        out.write_to(&mut wire).expect("a Vec takes everything");
        checked.check(&wire);
        if matches!(phase, Phase::WebSocket(_)) || ws_in > 0 {
            let queued = wire.len();
            // Echo: each frame comes back no bigger than it arrived, plus a close.
            // Chat: a message comes back as JSON (escapes grow it up to 6x) in a frame.
            let bound = match purpose {
                Purpose::Echo => ws_in + 256,
                Purpose::Chat => 8 * ws_in + 1024,
            };
            assert!(
                queued <= bound,
                "{queued} bytes queued for {ws_in} bytes in"
            );
        }
        if matches!(phase, Phase::Closed) {
            break;
        }
    }
});

/// Feeds a session and queues what the server would queue in return.
fn feed(
    phase: &mut Phase,
    bytes: &[u8],
    out: &mut Outbound,
    inbox: &mut Vec<Message>,
    now: Instant,
    max_message: usize,
) {
    let Phase::WebSocket(session) = phase else {
        return;
    };
    let fed = session.feed(bytes, out, inbox, now);
    let purpose = session.purpose;
    for message in inbox.drain(..) {
        match message {
            Message::Text(text) => {
                assert!(
                    text.len() <= max_message,
                    "a {}-byte message passed the limit",
                    text.len()
                );
                match purpose {
                    Purpose::Echo => out.push(ws::data_frame(0x1, text.as_bytes())),
                    Purpose::Chat => match chat::decode(&text) {
                        Ok(ClientEvent::SendMessage { message }) => out.push(
                            chat::new_message_frame(&message, "fuzz", "2026-01-01T00:00:00.000Z"),
                        ),
                        Ok(ClientEvent::ChangeRoom { .. }) => {}
                        Err(why) => out.push(chat::error_frame(&why)),
                    },
                }
            }
            Message::Binary(data) => {
                assert_eq!(purpose, Purpose::Echo, "chat passed a binary message on");
                assert!(
                    data.len() <= max_message,
                    "a {}-byte message passed the limit",
                    data.len()
                );
                out.push(ws::data_frame(0x2, &data));
            }
            other => panic!("feed put a {other:?} in the inbox"),
        }
    }
    session.queue_close(out);
    if fed != Fed::Open {
        *phase = Phase::Closed; // the server discards input once closing
    }
}

/// Walks the bytes written to the client, frame by frame.
#[derive(Default)]
struct Frames {
    at: usize,
    close_seen: bool,
}

impl Frames {
    fn check(&mut self, wire: &[u8]) {
        while let Some((opcode, len)) = header(&wire[self.at..]) {
            let frame = &wire[self.at..self.at + len];
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

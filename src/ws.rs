//! A WebSocket's frame session: tungstenite driven over in-memory bytes, the
//! heartbeat decision, and the encoding of the frames the server sends.
//!
//! tungstenite never touches the socket. The connection core hands the bytes
//! it was given to `Session::feed`, and tungstenite's own writes (pong, close)
//! land in the connection's outbound queue through `Wire`, so every byte to
//! the client still leaves through that one queue. Broadcast frames are
//! encoded once by `text_frame` and shared, bypassing tungstenite entirely.
//! (The upgrade handshake that precedes a session is `http::upgrade`.)
//!
//! Most sessions are idle most of the time, and an idle tungstenite context
//! holds nothing but its configuration, yet costs 256 B plus its read
//! buffer. So a session keeps the context only while it holds something: a
//! partial frame or the fragments of a message. `FrameEdges` follows the
//! frame boundaries of the bytes handed to tungstenite to know when that is;
//! the next bytes start a fresh context.

use std::io::{self, Cursor, Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tungstenite::Message;
use tungstenite::error::Error as WsError;
use tungstenite::protocol::frame::coding::{CloseCode, OpCode};
use tungstenite::protocol::frame::{CloseFrame, FrameHeader, Utf8Bytes};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

use crate::outbound::Outbound;

/// A server ping with no payload.
pub const PING_FRAME: [u8; 2] = [0x89, 0x00];

/// Encodes an unmasked, final text frame around `payload`.
pub fn text_frame(payload: &[u8]) -> Rc<[u8]> {
    data_frame(0x1, payload)
}

/// The payload of a frame `data_frame` encoded.
pub fn frame_payload(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.get(header..).unwrap_or_default()
}

/// Encodes an unmasked, final data frame (opcode 1: text, 2: binary).
pub fn data_frame(opcode: u8, payload: &[u8]) -> Rc<[u8]> {
    let len = payload.len();
    let mut frame = Vec::with_capacity(len + 10);
    frame.push(0x80 | opcode);
    if len < 126 {
        frame.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        frame.push(126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(payload);
    Rc::from(frame)
}

/// tungstenite's view of the connection: reads from bytes already taken off
/// the socket (noting their frame boundaries), writes into the outbound queue.
struct Wire<'a, 'b> {
    input: &'a mut &'b [u8],
    edges: &'a mut FrameEdges,
    out: &'a mut Outbound,
}

impl Read for Wire<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.input.read(buf)?;
        self.edges.pass(&buf[..n]);
        Ok(n)
    }
}

impl Write for Wire<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.push_bytes(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// tungstenite's read buffer: it grows to a frame's size when one needs it.
const READ_BUFFER: usize = 64;

/// Per-connection buffers sized for many connections: tungstenite's default
/// 128 KiB read buffer is allocated up front, far too much per socket.
fn config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Where the bytes handed to tungstenite stand against frame boundaries.
#[derive(Default)]
struct FrameEdges {
    /// The start of a frame header that has not all arrived.
    header: [u8; FrameEdges::MAX_HEADER],
    header_len: u8,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// A data frame without FIN came, and the frame that ends its message has not.
    message_open: bool,
    /// A header did not parse: tungstenite refuses it too, and is never dropped.
    broken: bool,
}

impl FrameEdges {
    const MAX_HEADER: usize = 14;

    /// Follows `bytes`, the next ones of the stream.
    fn pass(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.broken {
            if self.payload_left > 0 {
                let skip = usize::try_from(self.payload_left)
                    .map_or(bytes.len(), |left| left.min(bytes.len()));
                self.payload_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            let held = usize::from(self.header_len);
            let taken = bytes.len().min(Self::MAX_HEADER - held);
            self.header[held..held + taken].copy_from_slice(&bytes[..taken]);
            let mut cursor = Cursor::new(&self.header[..held + taken]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, payload_len))) => {
                    bytes = &bytes[cursor.position() as usize - held..];
                    self.header_len = 0;
                    self.payload_left = payload_len;
                    if let OpCode::Data(_) = header.opcode {
                        self.message_open = !header.is_final;
                    }
                }
                Ok(None) => {
                    self.header_len = (held + taken) as u8;
                    bytes = &bytes[taken..];
                }
                Err(_) => self.broken = true,
            }
        }
    }

    /// Every frame passed so far is whole, and so is every message.
    fn at_rest(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0 && !self.message_open && !self.broken
    }
}

/// tungstenite's context and the boundaries of what it was given: kept only
/// while it holds part of a frame or of a message.
struct Decoder {
    ctx: WebSocketContext,
    edges: FrameEdges,
}

impl Decoder {
    fn new(early: Vec<u8>, max_message: usize) -> Box<Decoder> {
        let mut edges = FrameEdges::default();
        edges.pass(&early);
        let config = Some(config(max_message));
        let ctx = WebSocketContext::from_partially_read(early, Role::Server, config);
        Box::new(Decoder { ctx, edges })
    }

    /// The decoder `slot` holds, or a fresh one put there.
    fn held_or_new(slot: &mut Option<Box<Decoder>>, max_message: u32) -> &mut Decoder {
        slot.get_or_insert_with(|| Decoder::new(Vec::new(), max_message as usize))
    }

    /// The context, and the wire it reads `input` from and writes `out` to.
    fn wire<'a, 'b>(
        &'a mut self,
        input: &'a mut &'b [u8],
        out: &'a mut Outbound,
    ) -> (&'a mut WebSocketContext, Wire<'a, 'b>) {
        let Decoder { ctx, edges } = self;
        (ctx, Wire { input, edges, out })
    }
}

/// A WebSocket client's frame state: tungstenite's context (while it holds
/// anything) and the heartbeat.
pub struct Session {
    decoder: Option<Box<Decoder>>,
    /// The largest message (and frame) a new decoder accepts.
    max_message: u32,
    /// Binary messages are passed on (the echo route) or refused with 1003 (chat).
    accept_binary: bool,
    /// When the client last sent anything (a frame of any kind).
    pub last_heard: Instant,
    /// When the oldest ping still unanswered was sent.
    ping_outstanding: Option<Instant>,
    next_ping: Instant,
    /// The close `feed` decided on, queued by `queue_close` only after the
    /// replies to the messages read before it: nothing may follow a close frame.
    pending_close: Option<PendingClose>,
}

enum PendingClose {
    /// The peer closed; tungstenite holds our reply.
    Reply,
    /// The peer's stream ended: there is nothing to send.
    Gone,
    /// We close, with this code and reason.
    Send(CloseCode, &'static str),
}

impl PendingClose {
    fn verdict(&self) -> Fed {
        match self {
            PendingClose::Reply | PendingClose::Gone => Fed::Finished("client closed"),
            PendingClose::Send(_, reason) => Fed::Closing(reason),
        }
    }
}

/// What the heartbeat timer should do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Heartbeat {
    /// Send a ping; look again at the instant given.
    Ping(Instant),
    /// Nothing to do until the instant given.
    Wait(Instant),
    /// A ping went unanswered for the whole pong wait: drop the client.
    Dead,
}

/// The state of the session after feeding it.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    Open,
    /// We sent a close frame; the socket winds down and waits for the peer.
    Closing(&'static str),
    /// The peer closed and our reply is queued: drop the socket once it is sent.
    Finished(&'static str),
}

impl Session {
    /// Bytes of the context and buffers a session holds only mid-frame:
    /// tungstenite's context and the frame edges (boxed), and its read buffer.
    #[cfg(test)]
    pub const DECODER_SIZE: usize = std::mem::size_of::<Decoder>() + READ_BUFFER;

    /// Starts a session at `now`; `early` holds bytes the client sent behind
    /// its upgrade request. The first ping is due one `ping_interval` later.
    pub fn new(
        early: Vec<u8>,
        max_message: usize,
        accept_binary: bool,
        now: Instant,
        ping_interval: Duration,
    ) -> Session {
        Session {
            decoder: (!early.is_empty()).then(|| Decoder::new(early, max_message)),
            max_message: u32::try_from(max_message).unwrap_or(u32::MAX),
            accept_binary,
            last_heard: now,
            ping_outstanding: None,
            next_ping: now + ping_interval,
            pending_close: None,
        }
    }

    /// When `heartbeat` has something to do: the next ping, or the end of
    /// the wait for an unanswered one.
    pub fn next_heartbeat(&self, pong_wait: Duration) -> Instant {
        match self.ping_outstanding {
            Some(sent) if self.last_heard < sent => self.next_ping.min(sent + pong_wait),
            _ => self.next_ping,
        }
    }

    /// Decides the heartbeat at `now`. Anything heard from the client after a
    /// ping answers it; a ping unanswered for `pong_wait` means the client is gone.
    pub fn heartbeat(
        &mut self,
        now: Instant,
        interval: Duration,
        pong_wait: Duration,
    ) -> Heartbeat {
        if self
            .ping_outstanding
            .is_some_and(|sent| self.last_heard >= sent)
        {
            self.ping_outstanding = None;
        }
        if self
            .ping_outstanding
            .is_some_and(|sent| now >= sent + pong_wait)
        {
            return Heartbeat::Dead;
        }
        let ping_now = now >= self.next_ping;
        if ping_now {
            // A second ping does not restart the wait for the first one.
            self.ping_outstanding.get_or_insert(now);
            self.next_ping = now + interval;
        }
        let next = match self.ping_outstanding {
            Some(sent) => self.next_ping.min(sent + pong_wait),
            None => self.next_ping,
        };
        if ping_now {
            Heartbeat::Ping(next)
        } else {
            Heartbeat::Wait(next)
        }
    }

    /// Decodes frames from `input` (after any bytes tungstenite holds), pushing
    /// data messages to `inbox` until it holds `most` of them; tungstenite's
    /// replies go to `out`. What it did not read is left in `input`, and a
    /// message already buffered inside stays there for the next call.
    pub fn feed(
        &mut self,
        input: &mut &[u8],
        out: &mut Outbound,
        inbox: &mut Vec<Message>,
        most: usize,
        now: Instant,
    ) -> Fed {
        if let Some(pending) = &self.pending_close {
            return pending.verdict(); // decided already: nothing more is read
        }
        if input.is_empty() && self.decoder.is_none() {
            return Fed::Open; // nothing new, nothing held
        }
        let decoder = Decoder::held_or_new(&mut self.decoder, self.max_message);
        let (ctx, mut wire) = decoder.wire(input, out);
        while inbox.len() < most {
            let message = match ctx.read(&mut wire) {
                Ok(message) => message,
                Err(WsError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {
                    // Every complete frame is read: if no part of one is
                    // left, the context holds nothing worth its memory.
                    if wire.edges.at_rest() {
                        self.decoder = None;
                    }
                    return Fed::Open;
                }
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    return self.decide(PendingClose::Gone);
                }
                Err(err) => {
                    let (code, reason) = refusal(&err);
                    log::debug!("closing websocket: {err}");
                    return self.decide(PendingClose::Send(code, reason));
                }
            };
            self.last_heard = now;
            match message {
                Message::Text(_) => inbox.push(message),
                Message::Binary(_) if self.accept_binary => inbox.push(message),
                Message::Binary(_) => {
                    let reason = "binary frames are not accepted";
                    return self.decide(PendingClose::Send(CloseCode::Unsupported, reason));
                }
                Message::Close(_) => return self.decide(PendingClose::Reply),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        Fed::Open
    }

    fn decide(&mut self, pending: PendingClose) -> Fed {
        let verdict = pending.verdict();
        self.pending_close = Some(pending);
        verdict
    }

    /// Queues the close `feed` decided on, if it did, and says how the
    /// session ended; call after queueing the replies to the messages `feed`
    /// returned.
    pub fn queue_close(&mut self, out: &mut Outbound) -> Option<Fed> {
        let pending = self.pending_close.take()?;
        match pending {
            PendingClose::Send(code, reason) => self.close(out, code, reason),
            PendingClose::Reply => {
                if let Some(decoder) = &mut self.decoder {
                    let mut nothing: &[u8] = &[];
                    let (ctx, mut wire) = decoder.wire(&mut nothing, out);
                    let _ = ctx.flush(&mut wire);
                }
            }
            PendingClose::Gone => {}
        }
        Some(pending.verdict())
    }

    /// Queues a close frame with `code`; the session takes no more input after this.
    pub fn close(&mut self, out: &mut Outbound, code: CloseCode, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let mut nothing: &[u8] = &[];
        let decoder = Decoder::held_or_new(&mut self.decoder, self.max_message);
        let (ctx, mut wire) = decoder.wire(&mut nothing, out);
        let _ = ctx.close(&mut wire, Some(frame));
    }
}

/// The close code and reason for a frame-level error from tungstenite.
fn refusal(err: &WsError) -> (CloseCode, &'static str) {
    match err {
        WsError::Capacity(_) => (CloseCode::Size, "message too big"),
        WsError::Utf8(_) => (CloseCode::Invalid, "text is not UTF-8"),
        WsError::Protocol(_) => (CloseCode::Protocol, "protocol error"),
        _ => (CloseCode::Error, "internal error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_session(now: Instant) -> Session {
        Session::new(Vec::new(), 512, false, now, Duration::from_secs(9))
    }

    #[test]
    fn heartbeat_pings_then_gives_up_on_silence() {
        let t0 = Instant::now();
        let (interval, wait) = (Duration::from_secs(9), Duration::from_secs(10));
        let mut session = chat_session(t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        // First ping at 9 s; look again at 18 s (next ping comes before the 19 s deadline).
        assert_eq!(
            session.heartbeat(at(9), interval, wait),
            Heartbeat::Ping(at(18))
        );
        // Still silent at 18 s: ping again, but the deadline stays 19 s.
        assert_eq!(
            session.heartbeat(at(18), interval, wait),
            Heartbeat::Ping(at(19))
        );
        assert_eq!(session.heartbeat(at(19), interval, wait), Heartbeat::Dead);
    }

    #[test]
    fn heartbeat_keeps_a_client_that_answers() {
        let t0 = Instant::now();
        let (interval, wait) = (Duration::from_secs(9), Duration::from_secs(10));
        let mut session = chat_session(t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            session.heartbeat(at(9), interval, wait),
            Heartbeat::Ping(at(18))
        );
        session.last_heard = at(10); // the pong
        assert_eq!(
            session.heartbeat(at(18), interval, wait),
            Heartbeat::Ping(at(27))
        );
        session.last_heard = at(18);
        assert_eq!(
            session.heartbeat(at(27), interval, wait),
            Heartbeat::Ping(at(36))
        );
        assert_eq!(
            session.heartbeat(at(30), interval, wait),
            Heartbeat::Wait(at(36))
        );
    }

    /// A frame as a client sends it: masked.
    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = data_frame(opcode, payload).to_vec();
        let header_len = frame.len() - payload.len();
        frame[0] = opcode | if fin { 0x80 } else { 0 };
        frame[1] |= 0x80;
        let masked = payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]);
        frame.truncate(header_len);
        frame.extend_from_slice(&mask);
        frame.extend(masked);
        frame
    }

    /// Feeds `chunks` one call each, reading everything; returns the texts
    /// and whether the decoder was held after each chunk.
    fn feed_chunks(session: &mut Session, chunks: &[&[u8]]) -> (Vec<String>, Vec<bool>) {
        let (mut out, mut inbox, mut held) = (Outbound::default(), Vec::new(), Vec::new());
        for chunk in chunks {
            let mut input = *chunk;
            let fed = session.feed(&mut input, &mut out, &mut inbox, usize::MAX, Instant::now());
            assert_eq!(fed, Fed::Open);
            held.push(session.decoder.is_some());
        }
        let texts = inbox
            .into_iter()
            .filter_map(|m| m.into_text().ok())
            .map(|t| t.to_string());
        (texts.collect(), held)
    }

    #[test]
    fn the_decoder_is_held_exactly_while_a_frame_is_partial() {
        // Every length form: 7-bit, 16-bit and 64-bit (the limit is raised for it).
        for len in [5, 300, 70_000] {
            let text = "é".repeat(len / 2);
            let frame = client_frame(0x1, true, text.as_bytes());
            for cut in 1..frame.len().min(20) {
                let mut session = Session::new(
                    Vec::new(),
                    100_000,
                    false,
                    Instant::now(),
                    Duration::from_secs(9),
                );
                let (texts, held) = feed_chunks(&mut session, &[&frame[..cut], &frame[cut..]]);
                assert_eq!(texts, std::slice::from_ref(&text), "{len} B cut at {cut}");
                assert_eq!(held, [true, false], "{len} B cut at {cut}");
            }
        }
    }

    #[test]
    fn a_fragmented_message_keeps_its_decoder_until_its_last_fragment() {
        let mut session = chat_session(Instant::now());
        let first = client_frame(0x1, false, "hel".as_bytes());
        let ping = client_frame(0x9, true, b"p");
        let last = client_frame(0x0, true, "lo".as_bytes());
        let (texts, held) = feed_chunks(&mut session, &[&first, &ping, &last]);
        assert_eq!(texts, ["hello"]);
        assert_eq!(held, [true, true, false]);
    }

    #[test]
    fn a_message_left_unread_keeps_its_decoder() {
        let mut session = chat_session(Instant::now());
        let mut both = client_frame(0x1, true, b"one");
        both.extend(client_frame(0x1, true, b"two"));
        let (mut out, mut inbox) = (Outbound::default(), Vec::new());
        let mut input = &both[..];
        let now = Instant::now();
        assert_eq!(
            session.feed(&mut input, &mut out, &mut inbox, 1, now),
            Fed::Open
        );
        assert_eq!(inbox.len(), 1);
        assert!(
            session.decoder.is_some(),
            "the second message is buffered inside"
        );
        let mut rest = input;
        assert_eq!(
            session.feed(&mut rest, &mut out, &mut inbox, 10, now),
            Fed::Open
        );
        assert_eq!(inbox.len(), 2);
        assert!(session.decoder.is_none());
    }

    #[test]
    fn a_fresh_decoder_answers_pings_and_closes() {
        let mut session = chat_session(Instant::now());
        let (mut out, now) = (Outbound::default(), Instant::now());
        let mut ping = &client_frame(0x9, true, b"p")[..];
        let fed = session.feed(&mut ping, &mut out, &mut Vec::new(), 10, now);
        assert_eq!(fed, Fed::Open);
        assert!(
            session.decoder.is_none(),
            "a whole ping leaves nothing held"
        );
        let mut close = &client_frame(0x8, true, &1000u16.to_be_bytes())[..];
        let fed = session.feed(&mut close, &mut out, &mut Vec::new(), 10, now);
        assert_eq!(fed, Fed::Finished("client closed"));
        assert_eq!(session.queue_close(&mut out), Some(fed));
        let mut sent = Vec::new();
        out.write_to(&mut sent).expect("a Vec takes everything");
        assert_eq!(
            sent,
            [0x8a, 1, b'p', 0x88, 2, 0x03, 0xe8],
            "the pong, then the close echoed"
        );
    }

    #[test]
    fn frames_encode_every_length_form() {
        assert_eq!(&text_frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let medium = text_frame(&[b'a'; 300]);
        assert_eq!(&medium[..4], &[0x81, 126, 0x01, 0x2c]);
        let large = text_frame(&vec![b'a'; 70_000]);
        assert_eq!(&large[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }
}

//! The WebSocket side of a connection: the upgrade handshake, the Origin
//! check, and a session that drives tungstenite over in-memory bytes.
//!
//! tungstenite never touches the socket. The server reads the socket, hands
//! the bytes to `Session::feed`, and tungstenite's own writes (pong, close)
//! land in the connection's outbound queue through `Wire`, so every byte to
//! the client still leaves through that one queue. Broadcast frames are
//! encoded once by `text_frame` and shared, bypassing tungstenite entirely.

use std::io::{self, Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tungstenite::error::Error as WsError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::{CloseFrame, Utf8Bytes};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Message, handshake::derive_accept_key};

use crate::http::{Request, Response, Status};
use crate::outbound::Outbound;

/// A server ping with no payload.
pub const PING_FRAME: [u8; 2] = [0x89, 0x00];

/// Origins allowed to open a WebSocket (lowercase, no trailing slash).
#[derive(Debug, Clone)]
pub struct Origins {
    allowed: Vec<String>,
}

impl Origins {
    pub fn new(allowed: Vec<String>) -> Origins {
        let allowed = allowed
            .iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect();
        Origins { allowed }
    }

    /// The server's own origins for a listener on `port`.
    pub fn own(schemes: &[&str], hosts: &[String], port: u16) -> Vec<String> {
        let mut own = Vec::new();
        for scheme in schemes {
            for host in hosts {
                own.push(format!("{scheme}://{host}:{port}"));
            }
        }
        own
    }

    /// A request without Origin is not from a browser and is allowed.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(origin) => self.allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)),
        }
    }

    pub fn list(&self) -> &[String] {
        &self.allowed
    }
}

/// Checks the parts of an upgrade request that make it a WebSocket handshake
/// and returns the `Sec-WebSocket-Accept` value, or a 400 response.
pub fn check_handshake(request: &Request) -> Result<String, Response> {
    let bad = |why: &str| Err(Response::text(Status::BadRequest, why).closing());
    if request.method != "GET" || !request.http11 {
        return bad("a WebSocket upgrade is a GET over HTTP/1.1");
    }
    if !request.header_has_token("upgrade", "websocket") {
        return bad("missing 'Upgrade: websocket'");
    }
    if !request.header_has_token("connection", "upgrade") {
        return bad("missing 'Connection: Upgrade'");
    }
    if request.header("sec-websocket-version") != Some("13") {
        return Err(
            Response::text(Status::BadRequest, "unsupported Sec-WebSocket-Version")
                .header("Sec-WebSocket-Version", "13")
                .closing(),
        );
    }
    let key = request.header("sec-websocket-key").unwrap_or("");
    if !is_valid_key(key) {
        return bad("bad Sec-WebSocket-Key");
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// A key is 16 bytes in base64: 22 characters and "==".
fn is_valid_key(key: &str) -> bool {
    key.len() == 24
        && key.ends_with("==")
        && key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

pub fn switching_protocols(accept: String) -> Response {
    Response::new(Status::SwitchingProtocols)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Accept", accept)
}

/// Encodes an unmasked, final text frame around `payload`.
pub fn text_frame(payload: &[u8]) -> Rc<[u8]> {
    data_frame(0x1, payload)
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
/// the socket, writes into the outbound queue.
struct Wire<'a> {
    input: &'a [u8],
    out: &'a mut Outbound,
}

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.input.read(buf)?;
        Ok(n)
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.push_bytes(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Per-connection buffers sized for many connections: tungstenite's default
/// 128 KiB read buffer is allocated up front, far too much per socket.
fn config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(64)
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// What a WebSocket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A logged-in chat member: text events only.
    Chat,
    /// The conformance-test echo route: every message comes back as sent.
    Echo,
}

/// A WebSocket client: a logged-in chat member, or an echo test peer.
pub struct Session {
    pub purpose: Purpose,
    ctx: WebSocketContext,
    pub user: String,
    pub room: Rc<str>,
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
    /// We close, with this code and reason.
    Send(CloseCode, &'static str),
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
    Closing(String),
    /// The peer closed and our reply is queued: drop the socket once it is sent.
    Finished(String),
}

impl Session {
    /// Starts a session; `early` holds bytes the client sent behind its upgrade request.
    pub fn new(
        purpose: Purpose,
        early: Vec<u8>,
        user: String,
        room: Rc<str>,
        max_message: usize,
        now: Instant,
    ) -> Session {
        let ctx =
            WebSocketContext::from_partially_read(early, Role::Server, Some(config(max_message)));
        Session {
            purpose,
            ctx,
            user,
            room,
            last_heard: now,
            ping_outstanding: None,
            next_ping: now,
            pending_close: None,
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

    /// Decodes frames from `bytes` (plus any held back), pushing data messages
    /// to `inbox`; tungstenite's replies go to `out`. Chat takes text only.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        out: &mut Outbound,
        inbox: &mut Vec<Message>,
        now: Instant,
    ) -> Fed {
        let mut wire = Wire { input: bytes, out };
        loop {
            let message = match self.ctx.read(&mut wire) {
                Ok(message) => message,
                Err(WsError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {
                    return Fed::Open;
                }
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    return Fed::Finished("client closed".into());
                }
                Err(err) => {
                    let (code, reason) = refusal(&err);
                    log::debug!("closing websocket: {err}");
                    self.pending_close = Some(PendingClose::Send(code, reason));
                    return Fed::Closing(reason.to_string());
                }
            };
            self.last_heard = now;
            match message {
                Message::Text(_) => inbox.push(message),
                Message::Binary(_) if self.purpose == Purpose::Echo => inbox.push(message),
                Message::Binary(_) => {
                    let reason = "binary frames are not accepted";
                    self.pending_close = Some(PendingClose::Send(CloseCode::Unsupported, reason));
                    return Fed::Closing(reason.to_string());
                }
                Message::Close(_) => {
                    self.pending_close = Some(PendingClose::Reply);
                    return Fed::Finished("client closed".into());
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Queues the close `feed` decided on; call after queueing the replies to
    /// the messages `feed` returned.
    pub fn queue_close(&mut self, out: &mut Outbound) {
        match self.pending_close.take() {
            Some(PendingClose::Send(code, reason)) => {
                self.close(out, code, reason);
            }
            Some(PendingClose::Reply) => {
                let _ = self.ctx.flush(&mut Wire { input: &[], out });
            }
            None => {}
        }
    }

    /// Queues a close frame with `code`; the session takes no more input after this.
    pub fn close(&mut self, out: &mut Outbound, code: CloseCode, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = self.ctx.close(&mut Wire { input: &[], out }, Some(frame));
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

    fn upgrade(headers: &str) -> Request {
        let raw = format!("GET /ws?otp=x HTTP/1.1\r\nHost: h\r\n{headers}\r\n");
        crate::http::request::parse(raw.as_bytes())
            .unwrap()
            .unwrap()
            .0
    }

    const GOOD: &str = "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn accepts_the_rfc_example_key() {
        assert_eq!(
            check_handshake(&upgrade(GOOD)).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn refuses_malformed_upgrades() {
        for broken in [
            GOOD.replace("websocket", "h2c"),
            GOOD.replace("keep-alive, Upgrade", "keep-alive"),
            GOOD.replace("Version: 13", "Version: 8"),
            GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
        ] {
            let response = check_handshake(&upgrade(&broken)).unwrap_err();
            assert_eq!(response.status, Status::BadRequest, "{broken}");
        }
    }

    #[test]
    fn origins_match_exactly() {
        let origins = Origins::new(Origins::own(&["http"], &["localhost".into()], 8080));
        assert!(origins.allows(None));
        assert!(origins.allows(Some("http://localhost:8080")));
        assert!(origins.allows(Some("HTTP://LOCALHOST:8080")));
        assert!(!origins.allows(Some("null")));
        assert!(!origins.allows(Some("http://localhost:8080.evil.com")));
        assert!(!origins.allows(Some("http://localhost:8080@evil")));
        assert!(!origins.allows(Some("http://localhost:8081")));
    }

    fn chat_session(now: Instant) -> Session {
        Session::new(
            Purpose::Chat,
            Vec::new(),
            "percy".into(),
            Rc::from("general"),
            512,
            now,
        )
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

    #[test]
    fn frames_encode_every_length_form() {
        assert_eq!(&text_frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let medium = text_frame(&[b'a'; 300]);
        assert_eq!(&medium[..4], &[0x81, 126, 0x01, 0x2c]);
        let large = text_frame(&vec![b'a'; 70_000]);
        assert_eq!(&large[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }
}

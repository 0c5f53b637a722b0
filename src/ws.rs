//! A WebSocket's frame session: tungstenite driven over in-memory bytes, the
//! heartbeat decision, and the encoding of the frames the server sends.
//!
//! tungstenite never touches the socket. The connection core hands the bytes
//! it was given to `Session::feed`, and tungstenite's own writes (pong, close)
//! land in the connection's outbound queue through `Wire`, so every byte to
//! the client still leaves through that one queue. Broadcast frames are
//! encoded once by `text_frame` and shared, bypassing tungstenite entirely.
//! (The upgrade handshake that precedes a session is `http::upgrade`.)

use std::io::{self, Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tungstenite::Message;
use tungstenite::error::Error as WsError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::{CloseFrame, Utf8Bytes};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

use crate::outbound::Outbound;

/// A server ping with no payload.
pub const PING_FRAME: [u8; 2] = [0x89, 0x00];

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
struct Wire<'a, 'b> {
    input: &'a mut &'b [u8],
    out: &'a mut Outbound,
}

impl Read for Wire<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.input.read(buf)?;
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

/// Per-connection buffers sized for many connections: tungstenite's default
/// 128 KiB read buffer is allocated up front, far too much per socket.
fn config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(64)
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// A WebSocket client's frame state: tungstenite's context and the heartbeat.
pub struct Session {
    ctx: WebSocketContext,
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
    /// Starts a session at `now`; `early` holds bytes the client sent behind
    /// its upgrade request. The first ping is due one `ping_interval` later.
    pub fn new(
        early: Vec<u8>,
        max_message: usize,
        accept_binary: bool,
        now: Instant,
        ping_interval: Duration,
    ) -> Session {
        let ctx =
            WebSocketContext::from_partially_read(early, Role::Server, Some(config(max_message)));
        Session {
            ctx,
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
        let mut wire = Wire { input, out };
        while inbox.len() < most {
            let message = match self.ctx.read(&mut wire) {
                Ok(message) => message,
                Err(WsError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {
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
                let _ = self.ctx.flush(&mut Wire {
                    input: &mut &[][..],
                    out,
                });
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
        let wire = &mut Wire {
            input: &mut &[][..],
            out,
        };
        let _ = self.ctx.close(wire, Some(frame));
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

    #[test]
    fn frames_encode_every_length_form() {
        assert_eq!(&text_frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let medium = text_frame(&[b'a'; 300]);
        assert_eq!(&medium[..4], &[0x81, 126, 0x01, 0x2c]);
        let large = text_frame(&vec![b'a'; 70_000]);
        assert_eq!(&large[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }
}

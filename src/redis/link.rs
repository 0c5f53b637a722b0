//! One connection to Redis, non-blocking, in the server's own `Poll`.
//!
//! Commands are RESP2 arrays encoded into a bounded outbound buffer and
//! written when the socket takes them. Replies go through `Replies`, which
//! bounds them (`replies`), and come out decoded, in order.
//!
//! A link that fails goes down and comes back by itself: it reconnects after
//! a back-off that doubles from 100 ms up to 5 s, and the owner hears of each
//! change so it can fail what was in flight and replay what a fresh
//! connection needs (AUTH, SELECT, SUBSCRIBE...).

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use redis_protocol::resp2::types::OwnedFrame;
use rustls::ClientConfig;

use super::replies::Replies;
use super::stream::Stream;
use crate::config::RedisUrl;

/// The first wait before reconnecting, and the longest.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const LONGEST_BACKOFF: Duration = Duration::from_secs(5);

/// A command as its arguments, ready for `Link::send`.
pub(super) fn command(args: &[&str]) -> Vec<Vec<u8>> {
    args.iter().map(|arg| arg.as_bytes().to_vec()).collect()
}

/// What became of a link in one call.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change {
    Nothing,
    /// Connected: what it needs on a fresh connection must be sent now.
    Up,
    /// Lost (or never reached): everything in flight on it is gone.
    Down(String),
}

enum State {
    Down { retry_at: Instant },
    /// The TCP connect, then (with TLS) the handshake, under way.
    Connecting(Stream),
    Up(Stream),
}

pub(super) struct Link {
    /// "commands" or "subscriptions", for the log.
    name: &'static str,
    token: Token,
    target: RedisUrl,
    /// With `rediss://`: the TLS client settings.
    tls: Option<Arc<ClientConfig>>,
    state: State,
    backoff: Duration,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    out_written: usize,
    /// The most `out` may hold; past it commands are refused.
    out_max: usize,
    replies: Replies,
}

impl Link {
    pub(super) fn new(
        name: &'static str,
        token: Token,
        target: RedisUrl,
        tls: Option<Arc<ClientConfig>>,
        out_max: usize,
        now: Instant,
    ) -> Link {
        Link {
            name,
            token,
            target,
            tls,
            state: State::Down { retry_at: now },
            backoff: FIRST_BACKOFF,
            out: Vec::new(),
            out_written: 0,
            out_max,
            replies: Replies::new(),
        }
    }

    pub(super) fn is_up(&self) -> bool {
        matches!(self.state, State::Up(_))
    }

    pub(super) fn token(&self) -> Token {
        self.token
    }

    pub(super) fn target(&self) -> &RedisUrl {
        &self.target
    }

    /// When it next tries to connect, while it is down.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        match self.state {
            State::Down { retry_at } => Some(retry_at),
            _ => None,
        }
    }

    /// Starts connecting if it is down and its back-off has passed.
    pub(super) fn connect_if_due(&mut self, now: Instant, registry: &Registry) -> Change {
        match self.state {
            State::Down { retry_at } if retry_at <= now => {}
            _ => return Change::Nothing,
        }
        let connected = self
            .target
            .address()
            .and_then(TcpStream::connect)
            .and_then(|mut tcp| {
                registry.register(&mut tcp, self.token, Interest::READABLE | Interest::WRITABLE)?;
                Ok(tcp)
            })
            .map_err(|err| format!("cannot connect: {err}"))
            .and_then(|tcp| match &self.tls {
                Some(config) => Stream::tls(tcp, Arc::clone(config), &self.target.host),
                None => Ok(Stream::plain(tcp)),
            });
        match connected {
            Ok(stream) => {
                self.state = State::Connecting(stream);
                Change::Nothing
            }
            Err(why) => self.fail(&why, now, registry),
        }
    }

    /// Queues a command; false when the outbound buffer is full (the caller
    /// drops and counts it: the buffer toward Redis never grows without bound).
    pub(super) fn send(&mut self, args: &[Vec<u8>]) -> bool {
        let frame = OwnedFrame::Array(args.iter().cloned().map(OwnedFrame::BulkString).collect());
        let len = redis_protocol::resp2::types::Resp2Frame::encode_len(&frame, false);
        if !self.is_up() || self.out.len() - self.out_written + len > self.out_max {
            return false;
        }
        let start = self.out.len();
        self.out.resize(start + len, 0);
        match redis_protocol::resp2::encode::encode(&mut self.out[start..], &frame, false) {
            Ok(written) => {
                self.out.truncate(start + written);
                true
            }
            Err(_) => {
                self.out.truncate(start);
                false
            }
        }
    }

    /// Handles readiness: finishes a connect, reads everything there is,
    /// writes what is queued. Decoded frames go to `frames`, in order.
    pub(super) fn on_ready(
        &mut self,
        now: Instant,
        registry: &Registry,
        frames: &mut Vec<OwnedFrame>,
    ) -> Change {
        let mut change = Change::Nothing;
        if let State::Connecting(stream) = &mut self.state {
            let tcp = stream.tcp();
            match tcp.take_error() {
                Ok(None) if tcp.peer_addr().is_ok() => {}
                Ok(None) => return Change::Nothing, // still connecting
                Ok(Some(err)) | Err(err) => {
                    return self.fail(&format!("cannot connect: {err}"), now, registry);
                }
            }
            match stream.handshake() {
                Ok(true) => {}
                Ok(false) => return Change::Nothing, // the TLS handshake goes on
                Err(err) => {
                    // Said every time (once per back-off at most): a refused
                    // certificate is an operator's to fix, never a blip.
                    log::error!(
                        "redis {}: TLS with {}:{} failed: {err}",
                        self.name,
                        self.target.host,
                        self.target.port
                    );
                    return self.fail(&format!("TLS failed: {err}"), now, registry);
                }
            }
            let State::Connecting(stream) =
                std::mem::replace(&mut self.state, State::Down { retry_at: now })
            else {
                return Change::Nothing;
            };
            self.state = State::Up(stream);
            self.backoff = FIRST_BACKOFF;
            log::info!(
                "redis {}: connected to {}:{}{}",
                self.name,
                self.target.host,
                self.target.port,
                if self.tls.is_some() { " over TLS" } else { "" }
            );
            change = Change::Up;
        }
        if let Err(why) = self.read(frames) {
            return self.fail(&why, now, registry);
        }
        if let Err(err) = self.flush() {
            return self.fail(&format!("write failed: {err}"), now, registry);
        }
        change
    }

    /// Writes what is queued, as far as the socket takes it.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        let State::Up(stream) = &mut self.state else {
            return Ok(());
        };
        stream.send_pending()?;
        while self.out_written < self.out.len() {
            match stream.write(&self.out[self.out_written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_written += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        self.out.clear();
        self.out_written = 0;
        Ok(())
    }

    /// Reads until the socket would block, decoding every whole reply.
    fn read(&mut self, frames: &mut Vec<OwnedFrame>) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        loop {
            let State::Up(stream) = &mut self.state else {
                return Ok(());
            };
            match stream.read(&mut chunk) {
                Ok(0) => return Err("closed by redis".into()),
                Ok(n) => self.replies.feed(&chunk[..n], frames)?,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(format!("read failed: {err}")),
            }
        }
    }

    /// Points the link at `host:port` (where Sentinel says the master is,
    /// or the next sentinel) and connects there as soon as it is asked to:
    /// a connection elsewhere is closed first (returned: the caller fails
    /// what was in flight on it).
    pub(super) fn move_to(
        &mut self,
        host: &str,
        port: u16,
        now: Instant,
        registry: &Registry,
    ) -> Change {
        if self.target.host == host && self.target.port == port {
            return Change::Nothing;
        }
        let change = match self.state {
            State::Down { .. } => Change::Nothing,
            _ => self.fail(&format!("moving to {host}:{port}"), now, registry),
        };
        self.target.host = host.to_string();
        self.target.port = port;
        self.state = State::Down { retry_at: now };
        self.backoff = FIRST_BACKOFF;
        change
    }

    /// Takes the link down now (e.g. it stopped answering): it reconnects later.
    pub(super) fn reset(&mut self, why: &str, now: Instant, registry: &Registry) -> Change {
        self.fail(why, now, registry)
    }

    fn fail(&mut self, why: &str, now: Instant, registry: &Registry) -> Change {
        let was_up = self.is_up();
        if let State::Connecting(stream) | State::Up(stream) = &mut self.state {
            let _ = registry.deregister(stream.tcp());
        }
        self.state = State::Down {
            retry_at: now + self.backoff,
        };
        self.backoff = (self.backoff * 2).min(LONGEST_BACKOFF);
        self.out.clear();
        self.out_written = 0;
        self.replies.clear();
        let why = format!("redis {}: {why}", self.name);
        if was_up {
            log::warn!("{why}; reconnecting");
        } else {
            log::debug!("{why}; retrying");
        }
        Change::Down(why)
    }
}

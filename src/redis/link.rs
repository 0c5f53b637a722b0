//! One connection to Redis, non-blocking, in the server's own `Poll`.
//!
//! Commands are RESP2 arrays encoded into a bounded outbound buffer and
//! written when the socket takes them; replies are decoded from an input
//! buffer with `redis_protocol::resp2::decode`, which returns nothing for a
//! partial frame. A link that fails goes down and comes back by itself: it
//! reconnects after a back-off that doubles from 100 ms up to 5 s, and the
//! owner hears of each change so it can fail what was in flight and replay
//! what a fresh connection needs (AUTH, SELECT, SUBSCRIBE...).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;

/// The first wait before reconnecting, and the longest.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const LONGEST_BACKOFF: Duration = Duration::from_secs(5);
/// Bytes read per `read()` call.
const READ_CHUNK: usize = 64 * 1024;

/// Where Redis is, as `--redis redis://[user:password@]host:port[/db]` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or("must start with redis://")?;
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((credentials, rest)) => (Some(credentials), rest),
            None => (None, rest),
        };
        let (user, password) = match credentials {
            None => (None, None),
            Some(credentials) => match credentials.split_once(':') {
                Some(("", password)) => (None, Some(password.to_string())),
                Some((user, password)) => (Some(user.to_string()), Some(password.to_string())),
                None => (None, Some(credentials.to_string())),
            },
        };
        let (address, db) = match rest.split_once('/') {
            Some((address, "")) => (address, 0),
            Some((address, db)) => (address, db.parse().map_err(|_| "the db is a number")?),
            None => (rest, 0),
        };
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| "the port is a number")?),
            None => (address, 6379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("no host".into());
        }
        Ok(Target {
            host: host.to_string(),
            port,
            user,
            password,
            db,
        })
    }

    /// What to say first on a fresh connection: AUTH and SELECT as needed.
    pub fn handshake(&self) -> Vec<Vec<Vec<u8>>> {
        let mut commands = Vec::new();
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => commands.push(command(&["AUTH", user, password])),
            (None, Some(password)) => commands.push(command(&["AUTH", password])),
            _ => {}
        }
        if self.db != 0 {
            commands.push(command(&["SELECT", &self.db.to_string()]));
        }
        commands
    }

    /// Looks the host up (an address literal needs no lookup; a name blocks
    /// for its DNS lookup, which happens only while the link is down).
    fn address(&self) -> io::Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address for the host"))
    }
}

/// A command as its arguments, ready for `Link::send`.
pub fn command(args: &[&str]) -> Vec<Vec<u8>> {
    args.iter().map(|arg| arg.as_bytes().to_vec()).collect()
}

/// What became of a link in one call.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Nothing,
    /// Connected: what it needs on a fresh connection must be sent now.
    Up,
    /// Lost (or never reached): everything in flight on it is gone.
    Down(String),
}

enum State {
    Down { retry_at: Instant },
    Connecting(TcpStream),
    Up(TcpStream),
}

pub struct Link {
    /// "commands" or "subscriptions", for the log.
    name: &'static str,
    token: Token,
    target: Target,
    state: State,
    backoff: Duration,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    out_written: usize,
    /// The most `out` may hold; past it commands are refused.
    out_max: usize,
    input: Vec<u8>,
    /// Bytes of `input` already decoded.
    input_used: usize,
}

impl Link {
    pub fn new(
        name: &'static str,
        token: Token,
        target: Target,
        out_max: usize,
        now: Instant,
    ) -> Link {
        Link {
            name,
            token,
            target,
            state: State::Down { retry_at: now },
            backoff: FIRST_BACKOFF,
            out: Vec::new(),
            out_written: 0,
            out_max,
            input: Vec::new(),
            input_used: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up(_))
    }

    pub fn token(&self) -> Token {
        self.token
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// When it next tries to connect, while it is down.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.state {
            State::Down { retry_at } => Some(retry_at),
            _ => None,
        }
    }

    /// Starts connecting if it is down and its back-off has passed.
    pub fn connect_if_due(&mut self, now: Instant, registry: &Registry) -> Change {
        match self.state {
            State::Down { retry_at } if retry_at <= now => {}
            _ => return Change::Nothing,
        }
        let connected =
            self.target
                .address()
                .and_then(TcpStream::connect)
                .and_then(|mut stream| {
                    registry.register(
                        &mut stream,
                        self.token,
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    Ok(stream)
                });
        match connected {
            Ok(stream) => {
                self.state = State::Connecting(stream);
                Change::Nothing
            }
            Err(err) => self.fail(&format!("cannot connect: {err}"), now, registry),
        }
    }

    /// Queues a command; false when the outbound buffer is full (the caller
    /// drops and counts it: the buffer toward Redis never grows without bound).
    pub fn send(&mut self, args: &[Vec<u8>]) -> bool {
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
    pub fn on_ready(
        &mut self,
        now: Instant,
        registry: &Registry,
        frames: &mut Vec<OwnedFrame>,
    ) -> Change {
        let mut change = Change::Nothing;
        if let State::Connecting(stream) = &mut self.state {
            match stream.take_error() {
                Ok(None) if stream.peer_addr().is_ok() => {}
                Ok(None) => return Change::Nothing, // still connecting
                Ok(Some(err)) | Err(err) => {
                    return self.fail(&format!("cannot connect: {err}"), now, registry);
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
                "redis {}: connected to {}:{}",
                self.name,
                self.target.host,
                self.target.port
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
    pub fn flush(&mut self) -> io::Result<()> {
        let State::Up(stream) = &mut self.state else {
            return Ok(());
        };
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

    /// Reads until the socket would block, decoding every whole frame.
    fn read(&mut self, frames: &mut Vec<OwnedFrame>) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        let mut total = 0;
        loop {
            let State::Up(stream) = &mut self.state else {
                return Ok(());
            };
            match stream.read(&mut chunk) {
                Ok(0) => return Err("closed by redis".into()),
                Ok(n) => {
                    self.input.extend_from_slice(&chunk[..n]);
                    total += n;
                    if total >= READ_CHUNK {
                        // Decode what came so far before reading more.
                        self.decode(frames)?;
                        total = 0;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(format!("read failed: {err}")),
            }
        }
        self.decode(frames)
    }

    fn decode(&mut self, frames: &mut Vec<OwnedFrame>) -> Result<(), String> {
        loop {
            match decode(&self.input[self.input_used..]) {
                Ok(Some((frame, used))) => {
                    self.input_used += used;
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(err) => return Err(format!("unreadable reply: {err:?}")),
            }
        }
        self.input.drain(..self.input_used);
        self.input_used = 0;
        Ok(())
    }

    /// Takes the link down now (e.g. it stopped answering): it reconnects later.
    pub fn reset(&mut self, why: &str, now: Instant, registry: &Registry) -> Change {
        self.fail(why, now, registry)
    }

    fn fail(&mut self, why: &str, now: Instant, registry: &Registry) -> Change {
        let was_up = self.is_up();
        if let State::Connecting(stream) | State::Up(stream) = &mut self.state {
            let _ = registry.deregister(stream);
        }
        self.state = State::Down {
            retry_at: now + self.backoff,
        };
        self.backoff = (self.backoff * 2).min(LONGEST_BACKOFF);
        self.out.clear();
        self.out_written = 0;
        self.input.clear();
        self.input_used = 0;
        let why = format!("redis {}: {why}", self.name);
        if was_up {
            log::warn!("{why}; reconnecting");
        } else {
            log::debug!("{why}; retrying");
        }
        Change::Down(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_host_port_credentials_and_db() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6380").unwrap(),
            Target {
                host: "127.0.0.1".into(),
                port: 6380,
                user: None,
                password: None,
                db: 0,
            }
        );
        let full = Target::parse("redis://app:s3:cret@redis.internal:6379/2").unwrap();
        assert_eq!(full.user.as_deref(), Some("app"));
        assert_eq!(full.password.as_deref(), Some("s3:cret"));
        assert_eq!(
            (full.host.as_str(), full.port, full.db),
            ("redis.internal", 6379, 2)
        );
        let password_only = Target::parse("redis://:pw@[::1]:7000").unwrap();
        assert_eq!(
            (password_only.user, password_only.host.as_str()),
            (None, "::1")
        );
        assert_eq!(Target::parse("redis://localhost").unwrap().port, 6379);
        assert!(Target::parse("http://localhost").is_err());
        assert!(Target::parse("redis://:6379").is_err());
        assert!(Target::parse("redis://h:port").is_err());
    }

    #[test]
    fn the_handshake_says_auth_and_select_only_when_needed() {
        let plain = Target::parse("redis://h:1").unwrap();
        assert!(plain.handshake().is_empty());
        let full = Target::parse("redis://u:p@h:1/3").unwrap();
        let said: Vec<Vec<String>> = full
            .handshake()
            .iter()
            .map(|c| {
                c.iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .collect();
        assert_eq!(said, [vec!["AUTH", "u", "p"], vec!["SELECT", "3"]]);
    }
}

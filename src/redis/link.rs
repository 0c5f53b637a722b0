//! One connection to Redis, non-blocking, in the server's own `Poll`.
//!
//! Commands are RESP2 arrays encoded into a bounded outbound buffer and
//! written when the socket takes them. Replies are not trusted to be small or
//! shallow (`Replies`): a scanner of our own walks each reply's headers as its
//! bytes arrive, without recursion and without allocating what a length
//! claims, and only a reply that it has seen whole, at most `MAX_DEPTH` arrays
//! deep and `MAX_BYTES` long, goes to `redis_protocol::resp2::decode` (which
//! recurses once per level and has no limit of its own). A reply past a bound
//! fails the link like any other error.
//!
//! A link that fails goes down and comes back by itself: it reconnects after
//! a back-off that doubles from 100 ms up to 5 s, and the owner hears of each
//! change so it can fail what was in flight and replay what a fresh
//! connection needs (AUTH, SELECT, SUBSCRIBE...).

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
    replies: Replies,
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
            replies: Replies::new(),
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

/// Replies read from one connection to Redis, decoded as each one completes.
///
/// Bytes go in as they are read (`feed`); a reply is scanned as far as it
/// has come, from where the last read left off, so a reply that arrives in
/// many reads is walked once. Memory is bounded: the buffer holds at most
/// one unfinished reply of at most `MAX_BYTES` (plus one read), and a whole
/// reply holds at most `MAX_VALUES` values, so what `decode` builds from it
/// (two trees of a few dozen bytes per value) stays bounded too.
#[derive(Default)]
pub struct Replies {
    /// Bytes received and not yet decoded: the start of one unfinished
    /// reply, and briefly the whole replies the last read completed.
    input: Vec<u8>,
    /// How far the unfinished reply at the front of `input` was walked.
    scan: Scan,
}

impl Replies {
    /// The most bytes one reply may take, whole or while it arrives. The
    /// largest we ask for is a history replay: a room's whole stream, up to
    /// `--history` entries (100 by default, and `MAXLEN ~` may keep a hundred
    /// more) of one event each. An event is at most about 3.5 KiB (a 512-byte
    /// message whose every byte is escaped as `\u00XX`, and its JSON), so the
    /// default's largest reply is about 0.7 MiB; 16 MiB is twenty times that,
    /// and as much as `--history-max-bytes` lets all rooms keep by default.
    pub const MAX_BYTES: usize = 16 << 20;
    /// The deepest nesting of arrays in one reply. Ours go four deep (the
    /// replay: `[epoch, seq, [[id, [field, value]], ...]]`).
    pub const MAX_DEPTH: usize = 8;
    /// The most values one reply may hold, arrays included. Each of our
    /// values takes more than 16 bytes on average (a replayed entry is five
    /// values in at least a hundred bytes), so `MAX_BYTES` of real replies
    /// stay under it; values of 3 bytes (`+\r\n`) would otherwise make 5.6
    /// million of them out of 16 MiB.
    pub const MAX_VALUES: usize = Replies::MAX_BYTES / 16;
    /// Bytes taken into the buffer at a time: `feed` decodes between pieces,
    /// so the buffer never holds more than `MAX_BYTES` plus one piece.
    pub const PIECE: usize = 64 * 1024;
    /// Capacity kept when the buffer has emptied after a large reply.
    const KEEP: usize = 64 * 1024;

    pub fn new() -> Replies {
        Replies::default()
    }

    /// Takes bytes read from Redis and decodes every reply they complete into
    /// `frames`, in order. An error (a reply malformed, nested deeper than
    /// `MAX_DEPTH`, longer than `MAX_BYTES`, or with more than `MAX_VALUES`
    /// values) says why; nothing more can be read from that connection.
    pub fn feed(&mut self, bytes: &[u8], frames: &mut Vec<OwnedFrame>) -> Result<(), String> {
        for piece in bytes.chunks(Replies::PIECE) {
            self.reserve(piece.len());
            self.input.extend_from_slice(piece);
            self.decode(frames)?;
        }
        Ok(())
    }

    /// Bytes held for a reply still arriving.
    pub fn buffered(&self) -> usize {
        self.input.len()
    }

    /// Forgets everything (the connection is gone) and frees the buffer.
    pub fn clear(&mut self) {
        *self = Replies::default();
    }

    /// How long the reply at the start of `buf` is: `Ok(None)` while it is
    /// incomplete, an error as soon as it cannot be a reply we accept. Walks
    /// the headers only, with a counter per open array: no recursion, and no
    /// allocation whatever a length says.
    pub fn measure(buf: &[u8]) -> Result<Option<usize>, String> {
        Scan::default().resume(buf)
    }

    /// Grows the buffer for `more` bytes, doubling but never past the bound.
    fn reserve(&mut self, more: usize) {
        let needed = self.input.len() + more;
        if needed > self.input.capacity() {
            let target = (self.input.capacity() * 2)
                .min(Replies::MAX_BYTES + Replies::PIECE)
                .max(needed);
            self.input.reserve_exact(target - self.input.len());
        }
    }

    fn decode(&mut self, frames: &mut Vec<OwnedFrame>) -> Result<(), String> {
        let mut used = 0;
        let result = loop {
            let rest = &self.input[used..];
            match self.scan.resume(rest) {
                Ok(Some(len)) => {
                    self.scan = Scan::default();
                    match decode(&rest[..len]) {
                        Ok(Some((frame, n))) if n == len => {
                            frames.push(frame);
                            used += len;
                        }
                        Ok(_) => break Err("a reply misread (scanned whole, decoded not)".into()),
                        Err(err) => break Err(format!("unreadable reply: {err:?}")),
                    }
                }
                Ok(None) if rest.len() > Replies::MAX_BYTES => break Err(too_big()),
                Ok(None) => break Ok(()),
                Err(why) => break Err(why),
            }
        };
        self.input.drain(..used);
        if self.input.capacity() > Replies::KEEP && self.input.len() < self.input.capacity() / 4 {
            self.input
                .shrink_to(Replies::KEEP.max(self.input.len() * 2));
        }
        result
    }
}

/// How far the walk through one reply has come, so that the next read
/// resumes it. Positions count from the reply's first byte.
#[derive(Default)]
struct Scan {
    /// Where the next value starts.
    pos: usize,
    /// Where the search for the end of that value's line resumes.
    seek: usize,
    /// The values still owed by each open array, outermost first.
    open: [u64; Replies::MAX_DEPTH],
    depth: usize,
    /// Values begun so far, arrays included.
    values: usize,
}

/// The longest line a number may take: `-9223372036854775808`.
const NUMBER_LINE: usize = 20;

impl Scan {
    fn resume(&mut self, buf: &[u8]) -> Result<Option<usize>, String> {
        loop {
            let Some(&kind) = buf.get(self.pos) else {
                return Ok(None);
            };
            let line_start = self.pos + 1;
            let from = self.seek.max(line_start);
            let Some(line_end) = find_crlf(buf, from) else {
                // The CR may be the last byte: look at it again next time.
                self.seek = buf.len().saturating_sub(1).max(line_start);
                if buf.len() > Replies::MAX_BYTES {
                    return Err(too_big());
                }
                if kind != b'+' && kind != b'-' && buf.len() - line_start > NUMBER_LINE + 1 {
                    return Err(bad_header(kind));
                }
                return Ok(None);
            };
            self.seek = line_end;
            let line = &buf[line_start..line_end];
            let mut next = line_end + 2;
            let mut opens = 0;
            match kind {
                b'+' | b'-' => {}
                b':' => {
                    number(line).ok_or_else(|| bad_header(kind))?;
                }
                b'$' => match number(line).ok_or_else(|| bad_header(kind))? {
                    -1 => {}
                    len if len < -1 => return Err(bad_header(kind)),
                    len => {
                        let len = usize::try_from(len).map_err(|_| bad_header(kind))?;
                        let end = next
                            .checked_add(len)
                            .filter(|end| *end <= Replies::MAX_BYTES - 2)
                            .ok_or_else(too_big)?;
                        match buf.get(end..end + 2) {
                            None => return Ok(None),
                            Some(b"\r\n") => next = end + 2,
                            Some(_) => return Err("a bulk string without its CRLF".into()),
                        }
                    }
                },
                b'*' => match number(line).ok_or_else(|| bad_header(kind))? {
                    -1 => {} // a null, not an array
                    count if count < -1 => return Err(bad_header(kind)),
                    count => {
                        // An empty array is as deep as any.
                        if self.depth == Replies::MAX_DEPTH {
                            return Err(format!(
                                "a reply nested deeper than {} arrays",
                                Replies::MAX_DEPTH
                            ));
                        }
                        // Itself and what it says it holds.
                        if count as u64 >= (Replies::MAX_VALUES - self.values) as u64 {
                            return Err(too_many_values());
                        }
                        opens = count as u64;
                    }
                },
                other => {
                    return Err(format!(
                        "not a RESP2 reply: a value starts with {other:#04x}"
                    ));
                }
            }
            self.values += 1;
            if self.values > Replies::MAX_VALUES {
                return Err(too_many_values());
            }
            if next > Replies::MAX_BYTES {
                return Err(too_big());
            }
            self.pos = next;
            self.seek = next;
            if opens > 0 {
                self.open[self.depth] = opens;
                self.depth += 1;
                continue;
            }
            // A whole value: it completes its array, which may complete its own...
            loop {
                if self.depth == 0 {
                    return Ok(Some(self.pos));
                }
                self.open[self.depth - 1] -= 1;
                if self.open[self.depth - 1] > 0 {
                    break;
                }
                self.depth -= 1;
            }
        }
    }
}

/// The index of the first `\r\n` in `buf` at or after `from`.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    rest.windows(2).position(|w| w == b"\r\n").map(|i| from + i)
}

/// A number line as `redis_protocol` reads it (an `i64`), and no longer than one.
fn number(line: &[u8]) -> Option<i64> {
    if line.len() > NUMBER_LINE {
        return None;
    }
    std::str::from_utf8(line).ok()?.parse().ok()
}

fn bad_header(kind: u8) -> String {
    format!("not a RESP2 reply: a bad {} line", kind as char)
}

fn too_big() -> String {
    format!("a reply over {} bytes", Replies::MAX_BYTES)
}

fn too_many_values() -> String {
    format!("a reply of more than {} values", Replies::MAX_VALUES)
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

    /// `*1\r\n` `arrays` times around `:1\r\n`.
    fn nested(arrays: usize) -> Vec<u8> {
        let mut reply = b"*1\r\n".repeat(arrays);
        reply.extend_from_slice(b":1\r\n");
        reply
    }

    /// Replies of every kind, as Redis sends them (a replay last: four deep).
    fn samples() -> Vec<&'static [u8]> {
        vec![
            b"+OK\r\n",
            b"+\r\n",
            b"-ERR no\r\n",
            b":-42\r\n",
            b"$0\r\n\r\n",
            b"$5\r\nhe\r\no\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*3\r\n$7\r\nmessage\r\n$6\r\nchat:r\r\n$5\r\n1 {}x\r\n",
            b"*3\r\n$2\r\n17\r\n$1\r\n9\r\n*2\r\n*2\r\n$3\r\n8-1\r\n*2\r\n$1\r\ne\r\n$2\r\n{}\r\n*2\r\n$3\r\n9-1\r\n*0\r\n",
        ]
    }

    fn fed(bytes: &[u8], piece: usize) -> Result<Vec<OwnedFrame>, String> {
        let mut replies = Replies::new();
        let mut frames = Vec::new();
        for chunk in bytes.chunks(piece) {
            replies.feed(chunk, &mut frames)?;
        }
        Ok(frames)
    }

    #[test]
    fn a_whole_reply_measures_its_own_length_whatever_follows() {
        for sample in samples() {
            assert_eq!(Replies::measure(sample), Ok(Some(sample.len())));
            let mut padded = sample.to_vec();
            padded.extend_from_slice(b"+next\r\n");
            assert_eq!(Replies::measure(&padded), Ok(Some(sample.len())));
        }
    }

    #[test]
    fn every_cut_of_a_reply_is_incomplete_and_resumes_to_the_same_frame() {
        for sample in samples() {
            let (whole, _) = decode(sample).unwrap().unwrap();
            for cut in 0..sample.len() {
                assert_eq!(
                    Replies::measure(&sample[..cut]),
                    Ok(None),
                    "{sample:?} cut at {cut}"
                );
                // In two reads, cut there; and in one scan resumed there.
                let mut replies = Replies::new();
                let mut frames = Vec::new();
                replies.feed(&sample[..cut], &mut frames).unwrap();
                assert!(frames.is_empty());
                assert_eq!(replies.buffered(), cut);
                replies.feed(&sample[cut..], &mut frames).unwrap();
                assert_eq!(
                    frames,
                    std::slice::from_ref(&whole),
                    "{sample:?} cut at {cut}"
                );
                assert_eq!(replies.buffered(), 0);
            }
            assert_eq!(fed(sample, 1).unwrap(), [whole]);
        }
        // All of them back to back, a byte at a time: each once, in order.
        let all: Vec<u8> = samples().concat();
        let expected: Vec<OwnedFrame> = samples()
            .iter()
            .map(|s| decode(s).unwrap().unwrap().0)
            .collect();
        for piece in [1, 2, 3, 7, all.len()] {
            assert_eq!(fed(&all, piece).unwrap(), expected, "in pieces of {piece}");
        }
    }

    #[test]
    fn arrays_nest_up_to_the_limit_and_not_one_deeper() {
        let deepest = nested(Replies::MAX_DEPTH);
        assert_eq!(Replies::measure(&deepest), Ok(Some(deepest.len())));
        assert_eq!(fed(&deepest, 1).unwrap().len(), 1);
        let too_deep = nested(Replies::MAX_DEPTH + 1);
        let error = Replies::measure(&too_deep).unwrap_err();
        assert!(error.contains("nested deeper than 8"), "{error}");
        // Refused as soon as the header that goes too deep is whole.
        let header_end = 4 * (Replies::MAX_DEPTH + 1);
        assert_eq!(Replies::measure(&too_deep[..header_end - 1]), Ok(None));
        assert!(Replies::measure(&too_deep[..header_end]).is_err());
        // An empty array is one level too; a null is not an array.
        let empty_at = |arrays: usize, last: &[u8]| {
            let mut reply = b"*1\r\n".repeat(arrays);
            reply.extend_from_slice(last);
            Replies::measure(&reply).map(|_| ())
        };
        assert_eq!(empty_at(Replies::MAX_DEPTH - 1, b"*0\r\n"), Ok(()));
        assert!(empty_at(Replies::MAX_DEPTH, b"*0\r\n").is_err());
        assert_eq!(empty_at(Replies::MAX_DEPTH, b"*-1\r\n"), Ok(()));
        // Siblings do not add up: depth is nesting, not count.
        let wide = b"*2\r\n*1\r\n*1\r\n:1\r\n*1\r\n*1\r\n:2\r\n";
        assert_eq!(Replies::measure(wide), Ok(Some(wide.len())));
        // A hundred thousand levels: refused without recursion.
        assert!(fed(&nested(100_000), 4096).is_err());
    }

    #[test]
    fn huge_declared_lengths_are_refused_from_the_header_alone() {
        let max = Replies::MAX_BYTES;
        // The largest bulk string that fits, header and CRLF included.
        let header = format!("${}\r\n", max - 2 - 11);
        assert_eq!(header.len(), 11);
        assert_eq!(Replies::measure(header.as_bytes()), Ok(None));
        let over = format!("${}\r\n", max - 2 - 11 + 1);
        assert!(
            Replies::measure(over.as_bytes())
                .unwrap_err()
                .contains("over")
        );
        for header in [
            "$629145600\r\n",
            "$9223372036854775807\r\n",
            "*9223372036854775807\r\n",
            "*1048577\r\n",
        ] {
            assert!(Replies::measure(header.as_bytes()).is_err(), "{header}");
            assert!(fed(header.as_bytes(), 1).is_err(), "{header}");
        }
        // Numbers that are not one: too long, negative, not digits.
        for bad in [
            "$99999999999999999999\r\n",
            "$-2\r\n",
            "*-2\r\n",
            ":1x\r\n",
            "$\r\n",
            "*+-1\r\n",
            "$5\r\nhelloXY",
            "!3\r\nabc\r\n",
        ] {
            assert!(Replies::measure(bad.as_bytes()).is_err(), "{bad}");
        }
        // A number line that never ends is refused once it cannot be one.
        let endless = b"*1111111111111111111111111";
        assert_eq!(Replies::measure(&endless[..22]), Ok(None));
        assert!(Replies::measure(endless).is_err());
    }

    #[test]
    fn the_buffer_holds_one_reply_of_at_most_max_bytes() {
        let max = Replies::MAX_BYTES;
        // A bulk string exactly as long as a reply may be: taken, and freed.
        let len = max - 2 - 11;
        let mut replies = Replies::new();
        let mut frames = Vec::new();
        replies
            .feed(format!("${len}\r\n").as_bytes(), &mut frames)
            .unwrap();
        let body = vec![b'x'; Replies::PIECE];
        let mut left = len;
        while left > 0 {
            let n = left.min(body.len());
            replies.feed(&body[..n], &mut frames).unwrap();
            assert!(replies.buffered() <= max);
            left -= n;
        }
        replies.feed(b"\r\n", &mut frames).unwrap();
        assert_eq!(frames.len(), 1);
        assert!(matches!(&frames[0], OwnedFrame::BulkString(b) if b.len() == len));
        assert_eq!(replies.buffered(), 0);
        assert!(replies.input.capacity() <= Replies::KEEP);
        // A reply that does not say how long it is: refused past the bound.
        let mut bulk = b"$1015\r\n".to_vec();
        bulk.extend([b'x'; 1015]);
        bulk.extend(b"\r\n");
        for (head, unit) in [(&b"+"[..], &body[..1024]), (b"*100000\r\n", &bulk[..])] {
            assert_eq!(unit.len(), 1024);
            let mut replies = Replies::new();
            replies.feed(head, &mut frames).unwrap();
            let mut fed = head.len();
            let why = loop {
                if let Err(why) = replies.feed(unit, &mut frames) {
                    break why;
                }
                fed += unit.len();
                assert!(replies.buffered() <= max, "{head:?}");
                assert!(replies.input.capacity() <= max + Replies::PIECE);
            };
            assert!(why.contains("a reply over"), "{why}");
            assert!(
                fed <= max && fed + unit.len() > max,
                "{head:?}: refused at {fed}"
            );
        }
    }

    #[test]
    fn values_beyond_the_limit_are_refused() {
        let mut reply = format!("*{}\r\n", Replies::MAX_VALUES - 1).into_bytes();
        reply.extend(b"+\r\n".repeat(Replies::MAX_VALUES - 1));
        assert_eq!(Replies::measure(&reply), Ok(Some(reply.len())));
        let mut reply = b"*2\r\n".to_vec();
        reply.extend(format!("*{}\r\n", Replies::MAX_VALUES - 1).into_bytes());
        assert!(Replies::measure(&reply).unwrap_err().contains("values"));
    }
}

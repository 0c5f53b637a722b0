//! The client side: one `mio::Poll` loop driving every connection, from TCP
//! connect through `POST /login`, the upgrade, chat traffic and heartbeats to
//! the close handshake.
//!
//! Connection `i` has token `i` and stays at index `i` for the whole run, so a
//! scenario can name its members by number. With several servers, connection
//! `i` goes to server `i % servers` (login and upgrade alike): consecutive
//! members of a room are spread round-robin over the servers. Sends are scheduled by wall clock
//! (open loop): a slow server makes messages late, it never makes the load tool
//! send fewer of them.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::mem;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;

use crate::apipost::{self, ApiPoster};
use crate::ledger::Ledger;
use crate::presence::{Kind, Tally, Users, Watch};
use crate::sourceport::SourcePorts;
use crate::stream::{self, Stream, TlsTarget};
use crate::wire::{self, Masker};

/// Largest frame payload accepted from the server.
const MAX_SERVER_FRAME: usize = 1 << 20;
/// Bytes read per `read()` call (one buffer shared by every connection).
const READ_CHUNK: usize = 64 * 1024;
/// A handshake phase that sees no connection finish for this long gives up.
const HANDSHAKE_STALL: Duration = Duration::from_secs(20);

/// Where the server is and who to log in as.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port` as given in the URL, for the Host header.
    pub host: String,
    /// The Origin a page served by this server would send.
    pub origin: String,
    pub user: String,
    pub password: String,
    /// Set for `https://`: connections speak TLS, verifying the server.
    pub tls: Option<TlsTarget>,
}

/// `http://HOST[:PORT][/...]` or `https://...`: whether it is TLS, and
/// `HOST[:PORT]` as given.
pub fn split_url(url: &str) -> Result<(bool, &str), String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else {
        return Err(format!(
            "--url {url}: expected http://HOST:PORT or https://HOST:PORT"
        ));
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("--url {url}: no host"));
    }
    Ok((tls, host))
}

impl Target {
    /// `ca`: the client config trusting `--ca`, needed for `https://`.
    pub fn from_url(
        url: &str,
        user: &str,
        password: &str,
        ca: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Target, String> {
        let (https, host) = split_url(url)?;
        let host = host.to_string();
        let with_port = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.clone()
        } else if https {
            format!("{host}:443")
        } else {
            format!("{host}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|err| format!("--url {url}: {err}"))?
            .next()
            .ok_or_else(|| format!("--url {url}: no address"))?;
        let tls = if https {
            let config = ca.ok_or_else(|| format!("--url {url}: https:// needs --ca FILE"))?;
            Some(TlsTarget {
                config: config.clone(),
                name: stream::server_name(&host).map_err(|err| format!("--url {url}: {err}"))?,
            })
        } else {
            None
        };
        Ok(Target {
            addr,
            origin: format!("{}://{host}", if https { "https" } else { "http" }),
            host,
            user: user.to_string(),
            password: password.to_string(),
            tls,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting for a handshake slot.
    Pending,
    Connecting,
    Login,
    Upgrade,
    Open,
    /// Our close frame is out (or the server's came in); waiting for EOF.
    Closing,
    Done,
}

impl Stage {
    fn handshaking(self) -> bool {
        matches!(self, Stage::Connecting | Stage::Login | Stage::Upgrade)
    }
}

/// One client connection: small at rest (a few hundred bytes with its buffers).
struct Conn {
    stream: Option<Stream>,
    stage: Stage,
    /// Bytes of an incomplete HTTP response or frame.
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_at: usize,
    /// A fragmented message being reassembled: its opcode, then its bytes.
    frag: Vec<u8>,
    /// Sec-WebSocket-Key, during the upgrade only.
    key: Option<Box<str>>,
    room: u32,
    /// Which of the engine's targets this connection talks to.
    server: u16,
    sync_seen: u32,
    /// `d` messages seen (the resume flood's end-of-phase marker).
    marks: u32,
    pings: u32,
    dirty: bool,
    /// Dropped by a server going away and to be reconnected, or reconnecting:
    /// the first event in its room (or a pong) marks it back.
    awaiting_back: bool,
    /// Attempts left for a reconnect that fails.
    tries: u8,
    /// The session token of the cookie its login set (with `keep_sessions`).
    session: Option<Box<str>>,
    /// The id of the last `new_message` it saw (with `track_ids`).
    last_id: Option<Box<str>>,
    /// When its first connect attempt (of the setup, or of a reconnect)
    /// began, and when it was back in its room after a reconnect: ns since
    /// the engine's epoch, 0 for not yet.
    attempt_ns: u64,
    back_ns: u64,
    /// Its presence roster, from its first presence frame on.
    watch: Option<Box<Watch>>,
}

impl Conn {
    fn new(room: u32, server: u16) -> Conn {
        Conn {
            stream: None,
            stage: Stage::Pending,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_at: 0,
            frag: Vec::new(),
            key: None,
            room,
            server,
            sync_seen: 0,
            marks: 0,
            pings: 0,
            dirty: false,
            awaiting_back: false,
            tries: 0,
            session: None,
            last_id: None,
            attempt_ns: 0,
            back_ns: 0,
            watch: None,
        }
    }
}

/// Counts of what went wrong, by kind.
#[derive(Default, Debug)]
pub struct Errors {
    pub total: u64,
    pub kinds: BTreeMap<String, u64>,
}

impl Errors {
    pub fn add(&mut self, kind: String) {
        self.total += 1;
        *self.kinds.entry(kind).or_insert(0) += 1;
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.kinds
                .iter()
                .map(|(k, v)| (k.clone(), (*v).into()))
                .collect(),
        )
    }
}

/// Traffic of one measured step: what was sent, who should get it, what arrived.
pub struct Step {
    pub sent: u64,
    /// Deliveries owed: for each message, the members of its room when it was sent.
    pub expected: u64,
    pub delivered: u64,
    /// Sender to recipient, microseconds.
    pub latency: Histogram<u64>,
    /// How late the load tool itself was with each send, microseconds.
    pub lag: Histogram<u64>,
    /// Who got each message (with `Engine::each`).
    pub ledger: Option<Ledger>,
}

impl Step {
    fn new() -> Step {
        Step {
            sent: 0,
            expected: 0,
            delivered: 0,
            latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
            lag: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
            ledger: None,
        }
    }
}

/// The resume flood: `probe` sends a measured message every
/// `probe_interval` (as `run_load` does) while each of `resumers` sends the
/// event `request` (a `change_room` asking to resume) `resume_rate` times a
/// second, staggered, both open loop, for `duration`; with `ping`, each
/// sends a WebSocket ping instead (the same wake-ups, no resume).
pub struct Flood<'a> {
    pub probe: usize,
    pub probe_interval: Duration,
    pub resumers: &'a [usize],
    pub resume_rate: f64,
    pub request: &'a [u8],
    pub ping: bool,
    pub duration: Duration,
}

pub struct Engine {
    poll: Poll,
    events: Events,
    /// The servers, one or more; the same account on each.
    pub targets: Vec<Target>,
    /// The `POST /login` request for each target.
    logins: Vec<Vec<u8>>,
    conns: Vec<Conn>,
    /// Room names, by room number; room 0 is the server's default room.
    rooms: Vec<String>,
    /// Open members per room.
    room_sizes: Vec<u64>,
    scratch: Vec<u8>,
    json: Vec<u8>,
    dirty: Vec<usize>,
    /// Readiness of one poll: token, readable, writable, error, read side closed.
    ready: Vec<(usize, bool, bool, bool, bool)>,
    masker: Masker,
    /// Where connections to a loopback server come from (see `sourceport`).
    source_ports: SourcePorts,
    epoch: Instant,
    pending: VecDeque<usize>,
    handshaking: usize,
    concurrency: usize,
    last_progress: Instant,
    /// Connections that completed the upgrade, ever.
    pub opened: usize,
    /// The same, per target.
    pub opened_per_server: Vec<usize>,
    /// Connections open right now.
    pub open_now: usize,
    /// Connections lost after they were open (not closed by us).
    pub lost: usize,
    pub errors: Errors,
    pub steps: Vec<Step>,
    /// Text frames that were neither ours nor errors.
    pub other_events: u64,
    pub last_delivery: Instant,
    /// Measured deliveries seen, every step.
    delivered_total: u64,
    /// Chat messages sent, of every kind (room markers, warm-up, steps).
    pub chats_sent: u64,
    /// Messages whose text starts with `f` (the resume flood's fill), seen
    /// by any connection, and their frames' payload bytes.
    pub fill_seen: u64,
    pub fill_bytes: u64,
    /// `history_gap` events seen by any connection.
    pub gaps_seen: u64,
    /// When the first connection attempt started.
    pub connect_started: Option<Instant>,
    pub last_open: Option<Instant>,
    pad: Vec<u8>,
    /// Messages each sender sends per write (see `run_load`).
    pub batch: usize,
    /// A delivery later than this after its send is late (µs).
    pub late_us: u64,
    /// Keep a ledger of who got each measured message (see `ledger`).
    pub each: bool,
    /// Keep the session token each login's cookie carries.
    pub keep_sessions: bool,
    /// Get each OTP from `POST /session/otp` with the kept session, not
    /// from a password login.
    pub via_session: bool,
    /// Name the room in the upgrade (`/ws?otp=...&room=R`, and `&since=` the
    /// last id seen if there is one) instead of sending `change_room` after it.
    pub room_in_url: bool,
    /// Remember the id of the last `new_message` each connection saw (not on
    /// the measured-message hot path: markers and other messages only).
    pub track_ids: bool,
    /// The server is going away: an open connection closed by it is
    /// `dropped` (and kept for `reconnect`), not an error.
    pub expect_drop: bool,
    pub dropped: usize,
    /// Of the connections `reconnect` brought back: back in their rooms, and
    /// out of attempts.
    pub back: usize,
    pub gave_up: usize,
    /// Reconnect attempts that failed and were tried again, by why.
    pub retried: Errors,
    /// The connections the last `reconnect` tried to bring back.
    comeback: Vec<usize>,
    /// Join rooms watching presence (`"presence": true`, or `&presence=1`
    /// with `room_in_url`).
    pub presence: bool,
    /// Who each connection logs in as (see `set_users`).
    users: Users,
    /// Every presence frame seen, asked for or not (see `presence`).
    pub presence_tally: Tally,
    /// When the last presence frame came.
    pub last_presence: Option<Instant>,
    /// Per room: the run's users in it, for a roster to be complete (0:
    /// never complete).
    presence_expected: Vec<usize>,
    /// Measured messages go through the server API, not the senders'
    /// WebSockets (see `post_via_api`).
    api: Option<ApiPoster>,
}

impl Engine {
    /// `rooms` are the room names in use; the first is where connections start.
    /// Connections are spread round-robin over `targets` (at least one).
    pub fn new(
        targets: Vec<Target>,
        rooms: Vec<String>,
        concurrency: usize,
        message_size: usize,
    ) -> io::Result<Engine> {
        let now = Instant::now();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9)
            ^ u64::from(std::process::id());
        if targets.is_empty() || targets.len() > usize::from(u16::MAX) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "between 1 and 65535 servers",
            ));
        }
        let servers = targets.len();
        let first_user = targets[0].user.clone();
        let room_count = rooms.len();
        Ok(Engine {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            logins: targets
                .iter()
                .map(|t| wire::login_request(&t.host, &t.user, &t.password))
                .collect(),
            targets,
            conns: Vec::new(),
            room_sizes: vec![0; rooms.len()],
            rooms,
            scratch: vec![0; READ_CHUNK],
            json: Vec::with_capacity(1024),
            dirty: Vec::new(),
            ready: Vec::with_capacity(1024),
            masker: Masker::new(seed),
            source_ports: SourcePorts::new(seed),
            epoch: now,
            pending: VecDeque::new(),
            handshaking: 0,
            concurrency: concurrency.max(1),
            last_progress: now,
            opened: 0,
            opened_per_server: vec![0; servers],
            open_now: 0,
            lost: 0,
            errors: Errors::default(),
            steps: vec![Step::new()],
            other_events: 0,
            last_delivery: now,
            delivered_total: 0,
            chats_sent: 0,
            fill_seen: 0,
            fill_bytes: 0,
            gaps_seen: 0,
            connect_started: None,
            last_open: None,
            pad: vec![b'x'; message_size],
            batch: 1,
            late_us: 1_000_000,
            each: false,
            keep_sessions: false,
            via_session: false,
            room_in_url: false,
            track_ids: false,
            expect_drop: false,
            dropped: 0,
            back: 0,
            gave_up: 0,
            retried: Errors::default(),
            comeback: Vec::new(),
            presence: false,
            users: Users::new(&first_user, 0),
            presence_tally: Tally::default(),
            last_presence: None,
            presence_expected: vec![0; room_count],
            api: None,
        })
    }

    /// Connection `i` logs in as the account's user followed by `i mod
    /// count` (`u0` .. `u999` for `--user u`, every one with the same
    /// password: a users file the server was started with); 0: every
    /// connection as the user itself. Set before connecting.
    pub fn set_users(&mut self, count: usize) {
        self.users = Users::new(&self.targets[0].user, count);
    }

    pub fn users(&self) -> &Users {
        &self.users
    }

    /// From now on, each measured message is posted through the server API
    /// with `key` (see `apipost`) instead of sent on its sender's WebSocket:
    /// the same text, into the sender's room, from the sender's user, on a
    /// connection of the sender's own to the sender's server. The sender
    /// stays a member of its room and receives, as it does when it sends.
    pub fn post_via_api(&mut self, key: String) {
        self.api = Some(ApiPoster::new(key));
    }

    /// The API poster, when messages go through the API.
    pub fn api(&self) -> Option<&ApiPoster> {
        self.api.as_ref()
    }

    /// Rosters of `room` are complete when they hold `users` of the run's users.
    pub fn expect_presence(&mut self, room: u32, users: usize) {
        self.presence_expected[room as usize] = users;
    }

    /// When every open connection's roster became complete (ns on the
    /// engine's clock, the latest of them), if every one's is; none if one
    /// is not (or none is open).
    pub fn presence_complete(&self) -> Option<u64> {
        let mut latest = None;
        for conn in self.conns.iter().filter(|c| c.stage == Stage::Open) {
            let since = conn.watch.as_ref().map_or(0, |w| w.complete_since_ns);
            if since == 0 {
                return None;
            }
            latest = latest.max(Some(since));
        }
        latest
    }

    /// Open connections whose roster is not complete.
    pub fn presence_incomplete(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| c.stage == Stage::Open)
            .filter(|c| c.watch.as_ref().is_none_or(|w| w.complete_since_ns == 0))
            .count()
    }

    /// Starts counting every connection's presence frames from zero.
    pub fn reset_presence_frames(&mut self) {
        for watch in self.conns.iter_mut().filter_map(|c| c.watch.as_mut()) {
            watch.frames = [0; 4];
        }
    }

    /// Presence frames each connection got since the last reset: of one
    /// kind, or of every kind.
    pub fn presence_frames_each(&self, kind: Option<Kind>) -> Vec<u32> {
        let count = |w: &Watch| match kind {
            Some(kind) => w.frames[kind.index()],
            None => w.frames.iter().sum(),
        };
        self.conns
            .iter()
            .map(|c| c.watch.as_deref().map_or(0, count))
            .collect()
    }

    /// Drops the open connections among the first `count` at once, as a
    /// network cut would (the socket closed, no close frame), each kept for
    /// `reconnect`. Returns how many.
    pub fn cut(&mut self, count: usize) -> usize {
        let mut cut = 0;
        for index in 0..count.min(self.conns.len()) {
            if self.conns[index].stage == Stage::Open {
                self.drop_conn(index);
                self.conns[index].awaiting_back = true;
                cut += 1;
            }
        }
        self.dropped += cut;
        cut
    }

    /// Connections per second over the connect phase (login + upgrade).
    pub fn connect_rate(&self) -> f64 {
        match (self.connect_started, self.last_open) {
            (Some(first), Some(last)) => {
                let secs = (last - first).as_secs_f64();
                if secs > 0.0 {
                    self.opened as f64 / secs
                } else {
                    0.0
                }
            }
            _ => 0.0,
        }
    }

    /// Opens `count` more connections (room of each chosen by `room_of`) and
    /// runs the loop until each is open or has failed.
    pub fn connect(
        &mut self,
        count: usize,
        room_of: impl Fn(usize) -> u32,
        progress: bool,
    ) -> Duration {
        let started = Instant::now();
        self.connect_started.get_or_insert(started);
        let first = self.conns.len();
        let servers = self.targets.len();
        for i in first..first + count {
            self.conns.push(Conn::new(room_of(i), (i % servers) as u16));
            self.pending.push_back(i);
        }
        self.last_progress = Instant::now();
        let mut reported = Instant::now();
        while !self.pending.is_empty() || self.handshaking > 0 {
            self.turn(Some(Duration::from_millis(100)));
            let now = Instant::now();
            if now - self.last_progress > HANDSHAKE_STALL {
                self.abandon_handshakes();
                break;
            }
            if progress && now - reported >= Duration::from_secs(5) {
                reported = now;
                eprintln!(
                    "  ... {} open, {} failed, {} to go",
                    self.open_now,
                    self.errors.total,
                    self.pending.len() + self.handshaking
                );
            }
        }
        started.elapsed()
    }

    fn abandon_handshakes(&mut self) {
        let stuck: Vec<usize> = (0..self.conns.len())
            .filter(|&i| self.conns[i].stage.handshaking() || self.conns[i].stage == Stage::Pending)
            .collect();
        for index in stuck {
            self.fail(
                index,
                format!("handshake: no progress for {}s", HANDSHAKE_STALL.as_secs()),
            );
        }
        self.pending.clear();
    }

    /// Runs the loop until `done` holds or `timeout` passes; true if it held.
    pub fn wait_until(&mut self, timeout: Duration, done: impl Fn(&Engine) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.turn(Some((deadline - now).min(Duration::from_millis(50))));
        }
    }

    /// Runs the loop for `duration`, answering pings and reading whatever comes.
    pub fn idle(&mut self, duration: Duration) {
        self.wait_until(duration, |_| false);
    }

    /// Makes sure every open connection is in its room: the first member of
    /// each room sends a marker until every member has seen one (a member
    /// that sees its room's marker has had its `change_room` processed).
    pub fn sync_rooms(&mut self, attempts: u32) -> bool {
        for conn in &mut self.conns {
            conn.sync_seen = 0;
        }
        for round in 1..=attempts {
            let mut first_of_room: Vec<Option<usize>> = vec![None; self.rooms.len()];
            for (i, conn) in self.conns.iter().enumerate() {
                if conn.stage == Stage::Open && first_of_room[conn.room as usize].is_none() {
                    first_of_room[conn.room as usize] = Some(i);
                }
            }
            for sender in first_of_room.into_iter().flatten() {
                let marker = format!("s{round}");
                self.send_chat(sender, marker.as_bytes());
            }
            let all_seen = |engine: &Engine| {
                engine
                    .conns
                    .iter()
                    .all(|c| c.stage != Stage::Open || c.sync_seen >= round)
            };
            if self.wait_until(Duration::from_secs(2), all_seen) {
                return true;
            }
        }
        false
    }

    /// Starts a new measured step; messages sent from now on carry its number.
    pub fn begin_step(&mut self) -> usize {
        let mut step = Step::new();
        if self.each {
            step.ledger = Some(Ledger::new(self.conns.len(), self.late_us));
        }
        if let Some(api) = self.api.as_mut() {
            api.answer_time.reset(); // the step's own answers
        }
        self.steps.push(step);
        self.steps.len() - 1
    }

    /// Sends from every connection in `senders`, `rate` messages per second
    /// each, for `duration`, as part of `step`. Send times are fixed in
    /// advance and staggered across senders; with `batch` above 1 each
    /// sender sends that many messages at once (one write) every `batch`
    /// intervals, the same rate in fewer, larger writes.
    pub fn run_load(&mut self, senders: &[usize], rate: f64, duration: Duration, step: usize) {
        if senders.is_empty() || rate <= 0.0 {
            self.idle(duration);
            return;
        }
        let batch = self.batch.max(1);
        let interval = Duration::from_secs_f64(batch as f64 / rate);
        let start = Instant::now() + Duration::from_millis(5);
        let end = start + duration;
        let mut heap = BinaryHeap::with_capacity(senders.len());
        for (j, &sender) in senders.iter().enumerate() {
            let offset = interval.mul_f64(j as f64 / senders.len() as f64);
            heap.push(Reverse((start + offset, sender)));
        }
        let mut text = Vec::with_capacity(self.pad.len() + 32);
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            while let Some(&Reverse((due, sender))) = heap.peek() {
                if due > now {
                    break;
                }
                heap.pop();
                let next = due + interval;
                if next < end {
                    heap.push(Reverse((next, sender)));
                }
                let lag = now.duration_since(due).as_micros() as u64;
                for _ in 0..batch {
                    self.send_stamped(sender, step, lag, &mut text);
                }
            }
            let wake = heap
                .peek()
                .map(|Reverse((due, _))| *due)
                .unwrap_or(end)
                .min(end);
            let now = Instant::now();
            self.turn(Some(wake.saturating_duration_since(now)));
        }
    }

    /// Sends one measured message from `sender` as part of `step`, stamped
    /// with its send time; `lag`: how late the tool was with it (µs).
    fn send_stamped(&mut self, sender: usize, step: usize, lag: u64, text: &mut Vec<u8>) {
        self.steps[step].lag.saturating_record(lag.max(1));
        // Through the API, a post does not need its sender's WebSocket.
        if self.api.is_none() && self.conns[sender].stage != Stage::Open {
            return;
        }
        let room = self.conns[sender].room as usize;
        let recipients = self.room_sizes[room];
        let stats = &mut self.steps[step];
        let number = stats.ledger.as_mut().map(|ledger| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            ledger.sent(recipients, now)
        });
        stats.sent += 1;
        stats.expected += recipients;
        let sent_ns = Instant::now().duration_since(self.epoch).as_nanos() as u64;
        text.clear();
        text.extend_from_slice(format!("b{step} {sent_ns} ").as_bytes());
        if let Some(number) = number {
            text.extend_from_slice(format!("{number} ").as_bytes());
        }
        let pad = self.pad.len().saturating_sub(text.len());
        text.extend_from_slice(&self.pad[..pad]);
        if self.api.is_some() {
            self.post_through_api(sender, text);
        } else {
            self.send_chat(sender, text);
        }
    }

    /// Posts `text` through the API as `sender` would have sent it: into
    /// its room, from the user it logged in as (the server names a member's
    /// message after its login, so the frames are byte for byte the same).
    fn post_through_api(&mut self, sender: usize, text: &[u8]) {
        let Some(api) = self.api.as_mut() else {
            return;
        };
        let conn = &self.conns[sender];
        let from = if self.users.numbered() {
            self.users.name(self.users.of_connection(sender))
        } else {
            self.targets[0].user.clone()
        };
        let mut io = apipost::Io {
            registry: self.poll.registry(),
            ports: &mut self.source_ports,
            targets: &self.targets,
            errors: &mut self.errors,
        };
        let room = &self.rooms[conn.room as usize];
        api.post(sender, usize::from(conn.server), room, &from, text, &mut io);
        self.chats_sent += 1;
    }

    /// The resume flood (see `Flood`), its probe's messages part of `step`.
    /// Returns the requests sent and how late the tool was with them (µs).
    pub fn run_flood(&mut self, flood: &Flood, step: usize) -> (u64, Histogram<u64>) {
        let Flood {
            probe,
            probe_interval,
            resumers,
            resume_rate,
            request,
            ping,
            duration,
        } = *flood;
        let mut lag_hist = Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
        let start = Instant::now() + Duration::from_millis(5);
        let end = start + duration;
        // (due, connection, is the probe)
        let mut heap = BinaryHeap::with_capacity(resumers.len() + 1);
        heap.push(Reverse((start, probe, true)));
        let interval = Duration::from_secs_f64(1.0 / resume_rate.max(1e-9));
        for (j, &resumer) in resumers.iter().enumerate() {
            let offset = interval.mul_f64(j as f64 / resumers.len() as f64);
            heap.push(Reverse((start + offset, resumer, false)));
        }
        let mut text = Vec::with_capacity(self.pad.len() + 32);
        let mut sent = 0u64;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            while let Some(&Reverse((due, index, is_probe))) = heap.peek() {
                if due > now {
                    break;
                }
                heap.pop();
                let next = due + if is_probe { probe_interval } else { interval };
                if next < end {
                    heap.push(Reverse((next, index, is_probe)));
                }
                let lag = now.duration_since(due).as_micros() as u64;
                if is_probe {
                    self.send_stamped(index, step, lag, &mut text);
                } else if ping && self.is_open(index) {
                    let key = self.masker.next_key();
                    wire::push_frame(&mut self.conns[index].out, wire::OP_PING, b"k", key);
                    self.mark_dirty(index);
                    lag_hist.saturating_record(lag.max(1));
                    sent += 1;
                } else if !ping && self.send_event(index, request) {
                    lag_hist.saturating_record(lag.max(1));
                    sent += 1;
                }
            }
            let wake = heap
                .peek()
                .map(|Reverse((due, _, _))| *due)
                .unwrap_or(end)
                .min(end);
            let now = Instant::now();
            self.turn(Some(wake.saturating_duration_since(now)));
        }
        (sent, lag_hist)
    }

    /// Sends `text` (a chat message's text) from connection `index`; false
    /// if it is not open.
    pub fn send_text(&mut self, index: usize, text: &[u8]) -> bool {
        self.send_chat(index, text)
    }

    /// Sends one text frame carrying `event` (a whole JSON event) from
    /// connection `index`; false if it is not open.
    pub fn send_event(&mut self, index: usize, event: &[u8]) -> bool {
        if self.conns[index].stage != Stage::Open {
            return false;
        }
        let key = self.masker.next_key();
        wire::push_frame(&mut self.conns[index].out, wire::OP_TEXT, event, key);
        self.mark_dirty(index);
        true
    }

    /// `d` messages connection `index` has seen.
    pub fn marks(&self, index: usize) -> u32 {
        self.conns[index].marks
    }

    /// Whether connection `index` is open.
    pub fn is_open(&self, index: usize) -> bool {
        self.conns[index].stage == Stage::Open
    }

    /// The id of the last `new_message` connection `index` saw (with `track_ids`).
    pub fn last_id(&self, index: usize) -> Option<&str> {
        self.conns[index].last_id.as_deref()
    }

    /// Waits until `step` has all its deliveries or `timeout` passes.
    pub fn drain(&mut self, step: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |e| {
            e.steps[step].delivered >= e.steps[step].expected
        })
    }

    /// Waits until nothing has arrived for `quiet` (at most `timeout`).
    pub fn settle(&mut self, quiet: Duration, timeout: Duration) {
        self.last_delivery = Instant::now();
        self.wait_until(timeout, |e| e.last_delivery.elapsed() >= quiet);
    }

    /// Sends a close frame on every open connection and waits for the server
    /// to close them; what is left after `timeout` is dropped.
    pub fn close_all(&mut self, timeout: Duration) {
        // Posts through the API get their answers first (each is counted).
        self.wait_until(timeout, |e| {
            e.api.as_ref().is_none_or(|a| a.in_flight() == 0)
        });
        if let Some(api) = self.api.as_mut() {
            api.close_all(&mut self.errors, self.poll.registry());
        }
        for index in 0..self.conns.len() {
            match self.conns[index].stage {
                Stage::Open => {
                    let key = self.masker.next_key();
                    wire::push_frame(
                        &mut self.conns[index].out,
                        wire::OP_CLOSE,
                        &1001u16.to_be_bytes(),
                        key,
                    );
                    self.conns[index].stage = Stage::Closing;
                    self.open_now -= 1;
                    let room = self.conns[index].room as usize;
                    self.room_sizes[room] -= 1;
                    self.mark_dirty(index);
                }
                Stage::Pending | Stage::Connecting | Stage::Login | Stage::Upgrade => {
                    self.drop_conn(index)
                }
                Stage::Closing | Stage::Done => {}
            }
        }
        self.pending.clear();
        self.wait_until(timeout, |e| e.conns.iter().all(|c| c.stage == Stage::Done));
        for index in 0..self.conns.len() {
            self.drop_conn(index);
        }
    }

    /// Nanoseconds from the engine's epoch to `at` (the clock of every
    /// timestamp the engine keeps).
    pub fn ns_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// True when no connection is open or closing: the server has let go of
    /// every one (with `expect_drop`, each is `dropped` and kept for `reconnect`).
    pub fn all_down(&self) -> bool {
        self.open_now == 0 && self.conns.iter().all(|c| c.stage == Stage::Done)
    }

    /// Every connection without a kept session (with `keep_sessions`).
    pub fn without_session(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| c.stage == Stage::Open && c.session.is_none())
            .count()
    }

    /// Open connections that have seen no message id to resume from.
    pub fn without_id(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| c.stage == Stage::Open && c.last_id.is_none())
            .count()
    }

    /// Reconnects every connection the server dropped (see `expect_drop`),
    /// in order, `concurrency` at a time, each with at most `tries` attempts,
    /// and runs the loop until each is back in its room (its first event
    /// there: `history_gap` or a message, or the pong to a ping when it had
    /// no id to resume from) or out of attempts; or until `timeout` passes
    /// or nothing happens for a while. Returns how many it tried to bring back.
    pub fn reconnect(&mut self, tries: u8, timeout: Duration, progress: bool) -> usize {
        self.expect_drop = false;
        self.back = 0;
        self.gave_up = 0;
        self.retried = Errors::default();
        self.comeback.clear();
        for index in 0..self.conns.len() {
            let conn = &mut self.conns[index];
            if conn.stage == Stage::Done && conn.awaiting_back {
                conn.tries = tries.max(1);
                conn.attempt_ns = 0;
                conn.back_ns = 0;
                conn.stage = Stage::Pending;
                self.pending.push_back(index);
                self.comeback.push(index);
            }
        }
        let want = self.comeback.len();
        let deadline = Instant::now() + timeout;
        self.last_progress = Instant::now();
        let mut reported = Instant::now();
        while self.back + self.gave_up < want {
            let now = Instant::now();
            if now >= deadline || now - self.last_progress > HANDSHAKE_STALL {
                let why = if now >= deadline {
                    format!("reconnect: not back within {}s", timeout.as_secs_f64())
                } else {
                    format!("reconnect: no progress for {}s", HANDSHAKE_STALL.as_secs())
                };
                for at in 0..self.comeback.len() {
                    let index = self.comeback[at];
                    if self.conns[index].awaiting_back {
                        self.conns[index].tries = 0;
                        self.fail(index, why.clone());
                    }
                }
                self.pending.clear();
                break;
            }
            if progress && now - reported >= Duration::from_secs(5) {
                reported = now;
                eprintln!(
                    "  ... {} back, {} gave up, {} to go",
                    self.back,
                    self.gave_up,
                    want - self.back - self.gave_up
                );
            }
            self.turn(Some(Duration::from_millis(50)));
        }
        want
    }

    /// For each connection the last `reconnect` tried to bring back: when its
    /// first attempt began and when it was back (ns since the epoch; 0 if never).
    pub fn comebacks(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.comeback
            .iter()
            .map(|&i| (self.conns[i].attempt_ns, self.conns[i].back_ns))
    }

    /// Forgets the pings counted so far.
    pub fn reset_pings(&mut self) {
        for conn in &mut self.conns {
            conn.pings = 0;
        }
    }

    /// Heartbeat pings seen per open connection: (fewest, mean).
    pub fn pings(&self) -> (u32, f64) {
        let open: Vec<u32> = self
            .conns
            .iter()
            .filter(|c| c.stage == Stage::Open)
            .map(|c| c.pings)
            .collect();
        let min = open.iter().copied().min().unwrap_or(0);
        let mean = if open.is_empty() {
            0.0
        } else {
            open.iter().map(|&p| f64::from(p)).sum::<f64>() / open.len() as f64
        };
        (min, mean)
    }

    /// Connections open in each room.
    pub fn room_members(&self, room: u32) -> Vec<usize> {
        (0..self.conns.len())
            .filter(|&i| self.conns[i].room == room && self.conns[i].stage == Stage::Open)
            .collect()
    }

    // ---- the loop ----

    /// One iteration: flush, wait for readiness, act on it, start handshakes, flush.
    fn turn(&mut self, timeout: Option<Duration>) {
        self.flush_dirty();
        self.start_pending();
        if let Err(err) = self.poll.poll(&mut self.events, timeout) {
            if err.kind() != io::ErrorKind::Interrupted {
                self.errors.add(format!("poll: {err}"));
            }
            return;
        }
        let mut ready = mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.events.iter().map(|e| {
            (
                e.token().0,
                e.is_readable() || e.is_read_closed(),
                e.is_writable(),
                e.is_error(),
                e.is_read_closed(),
            )
        }));
        for &(index, readable, writable, error, closed) in &ready {
            if index >= apipost::TOKEN_BASE {
                if let Some(api) = self.api.as_mut() {
                    let mut io = apipost::Io {
                        registry: self.poll.registry(),
                        ports: &mut self.source_ports,
                        targets: &self.targets,
                        errors: &mut self.errors,
                    };
                    api.ready(index, readable || error, writable, &mut io);
                }
                continue;
            }
            if index >= self.conns.len() {
                continue;
            }
            if self.conns[index].stage == Stage::Connecting {
                self.check_connected(index);
            }
            if readable || error {
                self.read_all(index, closed);
            }
            if writable {
                self.mark_dirty(index);
            }
        }
        self.ready = ready;
        self.start_pending();
        self.flush_dirty();
    }

    fn start_pending(&mut self) {
        while self.handshaking < self.concurrency {
            let Some(index) = self.pending.pop_front() else {
                return;
            };
            let addr = self.targets[usize::from(self.conns[index].server)].addr;
            if self.conns[index].attempt_ns == 0 {
                self.conns[index].attempt_ns = self.ns_at(Instant::now()).max(1);
            }
            let tls = self.targets[usize::from(self.conns[index].server)]
                .tls
                .as_ref();
            match self
                .source_ports
                .connect(addr)
                .and_then(|tcp| Stream::new(tcp, tls))
            {
                Ok(mut stream) => {
                    let registered = self.poll.registry().register(
                        stream.tcp_mut(),
                        Token(index),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    let conn = &mut self.conns[index];
                    conn.stream = Some(stream);
                    conn.stage = Stage::Connecting;
                    self.handshaking += 1;
                    if let Err(err) = registered {
                        self.fail(index, format!("register: {err}"));
                    }
                }
                Err(err) => {
                    self.fail(index, format!("connect: {err}"));
                    self.last_progress = Instant::now();
                }
            }
        }
    }

    fn check_connected(&mut self, index: usize) {
        let Some(stream) = self.conns[index].stream.as_ref() else {
            return;
        };
        let stream = stream.tcp();
        match stream.take_error() {
            Ok(Some(err)) | Err(err) => {
                self.fail(index, format!("connect: {err}"));
                return;
            }
            Ok(None) => {}
        }
        match stream.peer_addr() {
            Ok(_) => {
                let _ = stream.set_nodelay(true);
                let conn = &mut self.conns[index];
                conn.stage = Stage::Login;
                let server = usize::from(conn.server);
                if !self.via_session {
                    if self.users.numbered() {
                        let target = &self.targets[server];
                        let user = self.users.name(self.users.of_connection(index));
                        let login = wire::login_request(&target.host, &user, &target.password);
                        conn.out.extend_from_slice(&login);
                    } else {
                        conn.out.extend_from_slice(&self.logins[server]);
                    }
                } else if let Some(token) = &conn.session {
                    let target = &self.targets[server];
                    let request = wire::session_otp_request(&target.host, &target.origin, token);
                    conn.out.extend_from_slice(&request);
                } else {
                    return self.fail(index, "session otp: the login set no session cookie".into());
                }
                self.mark_dirty(index);
            }
            Err(err) if err.kind() == io::ErrorKind::NotConnected => {}
            Err(err) => self.fail(index, format!("connect: {err}")),
        }
    }

    /// Reads until the socket is empty; `closed`: the peer's FIN is in too
    /// (read on to the EOF: no later edge will say so).
    fn read_all(&mut self, index: usize, closed: bool) {
        let mut scratch = mem::take(&mut self.scratch);
        loop {
            let conn = &mut self.conns[index];
            let Some(stream) = conn.stream.as_mut() else {
                break;
            };
            match stream.read(&mut scratch) {
                Ok(0) => {
                    self.on_eof(index);
                    break;
                }
                Ok(n) => {
                    // One clock reading per read() serves every frame in it:
                    // at millions of deliveries a second, a reading per
                    // delivery was a sixth of the load tool's CPU.
                    let now = Instant::now();
                    let now_ns = now.duration_since(self.epoch).as_nanos() as u64;
                    let delivered = self.delivered_total;
                    self.on_bytes(index, &scratch[..n], now_ns);
                    if self.delivered_total != delivered {
                        self.last_delivery = now;
                    }
                    // A short read from a TCP socket means its buffer is empty
                    // now; data arriving later raises a new edge. This saves
                    // the read that would only say WouldBlock. Unless the FIN
                    // came with the data: no later edge will report it.
                    if n < scratch.len()
                        && !closed
                        && self.conns[index]
                            .stream
                            .as_ref()
                            .is_some_and(Stream::short_read_drains)
                    {
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::NotConnected => break,
                Err(err) => {
                    let stage = self.conns[index].stage;
                    if stage == Stage::Closing {
                        self.finish(index);
                    } else {
                        // InvalidData is TLS refusing the peer (say, a
                        // certificate --ca does not vouch for): say why.
                        let why = if err.kind() == io::ErrorKind::InvalidData {
                            err.to_string()
                        } else {
                            err.kind().to_string()
                        };
                        self.fail(index, format!("{}: read: {why}", stage_name(stage)));
                    }
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    fn on_eof(&mut self, index: usize) {
        match self.conns[index].stage {
            Stage::Closing => self.finish(index),
            Stage::Done => {}
            stage => self.fail(
                index,
                format!("{}: connection closed by server", stage_name(stage)),
            ),
        }
    }

    fn on_bytes(&mut self, index: usize, bytes: &[u8], now_ns: u64) {
        match self.conns[index].stage {
            Stage::Login | Stage::Upgrade => {
                self.conns[index].inbuf.extend_from_slice(bytes);
                self.on_http(index, now_ns);
            }
            Stage::Open | Stage::Closing => self.on_frames(index, bytes, now_ns),
            _ => {}
        }
    }

    fn on_http(&mut self, index: usize, now_ns: u64) {
        let stage = self.conns[index].stage;
        let parsed = match wire::parse_response(&self.conns[index].inbuf) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return,
            Err(err) => return self.fail(index, format!("{}: {err}", stage_name(stage))),
        };
        if parsed.chunked {
            return self.fail(
                index,
                format!("{}: chunked response not supported", stage_name(stage)),
            );
        }
        if stage == Stage::Login {
            let total = parsed.head_len + parsed.content_length;
            if self.conns[index].inbuf.len() < total {
                return;
            }
            let what = if self.via_session {
                "session otp"
            } else {
                "login"
            };
            if parsed.status != 200 {
                return self.fail(index, format!("{what}: HTTP {}", parsed.status));
            }
            let otp = match wire::otp_from_body(&self.conns[index].inbuf[parsed.head_len..total]) {
                Ok(otp) => otp,
                Err(err) => return self.fail(index, format!("{what}: {err}")),
            };
            let key = generate_key();
            let conn = &self.conns[index];
            let mut query = String::new();
            if self.room_in_url {
                if conn.room != 0 {
                    query.push_str("&room=");
                    query.push_str(&self.rooms[conn.room as usize]);
                }
                if let Some(id) = &conn.last_id {
                    query.push_str("&since=");
                    query.push_str(id);
                }
                if self.presence && conn.room != 0 {
                    query.push_str("&presence=1");
                }
            }
            let target = &self.targets[usize::from(conn.server)];
            let request = wire::upgrade_request(&target.host, &target.origin, &otp, &key, &query);
            let conn = &mut self.conns[index];
            if self.keep_sessions
                && let Some(token) = parsed.session
            {
                conn.session = Some(token.into_boxed_str());
            }
            conn.inbuf.drain(..total);
            conn.key = Some(key.into_boxed_str());
            conn.out.extend_from_slice(&request);
            conn.stage = Stage::Upgrade;
            self.mark_dirty(index);
            return;
        }
        // The upgrade.
        if parsed.status != 101 {
            return self.fail(index, format!("upgrade: HTTP {}", parsed.status));
        }
        let conn = &mut self.conns[index];
        let expected = conn.key.take().map(|key| derive_accept_key(key.as_bytes()));
        if parsed.accept.is_none() || parsed.accept != expected {
            return self.fail(index, "upgrade: wrong Sec-WebSocket-Accept".into());
        }
        let early: Vec<u8> = conn.inbuf[parsed.head_len..].to_vec();
        conn.inbuf = Vec::new();
        conn.stage = Stage::Open;
        let room = conn.room as usize;
        self.handshaking -= 1;
        self.opened += 1;
        self.opened_per_server[usize::from(conn.server)] += 1;
        self.open_now += 1;
        self.room_sizes[room] += 1;
        let now = Instant::now();
        self.last_progress = now;
        self.last_open = Some(now);
        if self.conns[index].awaiting_back && self.conns[index].last_id.is_none() {
            // Nothing to resume from, so no history_gap will come: the pong
            // to this ping, answered after the upgrade, confirms it instead.
            let key = self.masker.next_key();
            wire::push_frame(&mut self.conns[index].out, wire::OP_PING, b"back", key);
            self.mark_dirty(index);
        }
        if room != 0 && !self.room_in_url {
            let event = change_room(&self.rooms[room], self.presence);
            let key = self.masker.next_key();
            wire::push_frame(
                &mut self.conns[index].out,
                wire::OP_TEXT,
                event.as_bytes(),
                key,
            );
            self.mark_dirty(index);
        }
        if !early.is_empty() {
            self.on_frames(index, &early, now_ns);
        }
    }

    fn on_frames(&mut self, index: usize, bytes: &[u8], now_ns: u64) {
        let mut inbuf = mem::take(&mut self.conns[index].inbuf);
        let from_inbuf = !inbuf.is_empty();
        if from_inbuf {
            inbuf.extend_from_slice(bytes);
        }
        let mut at = 0;
        {
            let buf: &[u8] = if from_inbuf { &inbuf } else { bytes };
            while self.conns[index].stage == Stage::Open
                || self.conns[index].stage == Stage::Closing
            {
                match wire::parse_frame(&buf[at..], MAX_SERVER_FRAME) {
                    Ok(Some(frame)) => {
                        at += frame.len;
                        self.on_frame(index, frame.fin, frame.opcode, frame.payload, now_ns);
                    }
                    Ok(None) => break,
                    Err(err) => {
                        self.fail(index, format!("protocol: {err}"));
                        return;
                    }
                }
            }
            if !from_inbuf {
                inbuf.extend_from_slice(&bytes[at..]);
                at = 0;
            }
        }
        inbuf.drain(..at);
        if inbuf.capacity() > 4 * READ_CHUNK && inbuf.len() < READ_CHUNK {
            inbuf.shrink_to(READ_CHUNK);
        }
        self.conns[index].inbuf = inbuf;
    }

    fn on_frame(&mut self, index: usize, fin: bool, opcode: u8, payload: &[u8], now_ns: u64) {
        match opcode {
            wire::OP_TEXT | wire::OP_BINARY if !fin => {
                let frag = &mut self.conns[index].frag;
                frag.clear();
                frag.push(opcode);
                frag.extend_from_slice(payload);
            }
            wire::OP_CONTINUATION => {
                let frag = &mut self.conns[index].frag;
                if frag.is_empty() {
                    return self.fail(index, "protocol: continuation without a start".into());
                }
                frag.extend_from_slice(payload);
                if fin {
                    let whole = mem::take(&mut self.conns[index].frag);
                    self.on_message(index, whole[0], &whole[1..], now_ns);
                }
            }
            wire::OP_TEXT | wire::OP_BINARY => self.on_message(index, opcode, payload, now_ns),
            wire::OP_PING => {
                self.conns[index].pings += 1;
                if self.conns[index].stage == Stage::Open {
                    let key = self.masker.next_key();
                    wire::push_frame(&mut self.conns[index].out, wire::OP_PONG, payload, key);
                    self.mark_dirty(index);
                }
            }
            wire::OP_PONG => {
                if self.conns[index].awaiting_back && self.conns[index].stage == Stage::Open {
                    self.mark_back(index, now_ns);
                }
            }
            wire::OP_CLOSE => {
                if self.conns[index].stage == Stage::Open {
                    if self.expect_drop {
                        self.dropped += 1;
                        self.conns[index].awaiting_back = true;
                    } else if self.conns[index].awaiting_back {
                        // Closed before it was back: a failed attempt.
                        let why = format!("closed by server: {}", wire::close_reason(payload));
                        return self.fail(index, why);
                    } else {
                        self.errors
                            .add(format!("closed by server: {}", wire::close_reason(payload)));
                        self.lost += 1;
                    }
                    self.open_now -= 1;
                    let room = self.conns[index].room as usize;
                    self.room_sizes[room] -= 1;
                    let code = if payload.len() >= 2 {
                        &payload[..2]
                    } else {
                        &[0x03, 0xE8][..]
                    };
                    let key = self.masker.next_key();
                    wire::push_frame(&mut self.conns[index].out, wire::OP_CLOSE, code, key);
                    self.conns[index].stage = Stage::Closing;
                    self.mark_dirty(index);
                }
            }
            other => self.fail(index, format!("protocol: opcode {other}")),
        }
    }

    fn on_message(&mut self, index: usize, opcode: u8, payload: &[u8], now_ns: u64) {
        if opcode != wire::OP_TEXT {
            self.errors.add("binary message from server".into());
            return;
        }
        if self.conns[index].awaiting_back {
            self.check_back(index, payload, now_ns);
        }
        // The hot path: a measured message, stamped by `run_load`.
        if let Some((step, sent_ns, rest)) = wire::load_stamp(payload) {
            self.on_measured(index, step, sent_ns, rest, now_ns);
            return;
        }
        let event = wire::event_message(payload);
        if self.track_ids && matches!(event, Some((b"new_message", _))) {
            self.note_id(index, payload);
        }
        match event {
            Some((b"new_message", text)) => match text.first() {
                Some(b'b') => {
                    let Some((step, sent_ns, rest)) = wire::stamp_fields(&text[1..]) else {
                        self.other_events += 1;
                        return;
                    };
                    self.on_measured(index, step, sent_ns, rest, now_ns);
                }
                Some(b's') => {
                    if let Some((round, _)) = wire::leading_number(&text[1..]) {
                        let conn = &mut self.conns[index];
                        conn.sync_seen = conn.sync_seen.max(round as u32);
                    }
                }
                Some(b'f') => {
                    self.fill_seen += 1;
                    self.fill_bytes += payload.len() as u64;
                }
                Some(b'd') => self.conns[index].marks += 1,
                _ => self.other_events += 1,
            },
            Some((b"error", text)) => {
                let text = String::from_utf8_lossy(text);
                let short: String = text.chars().take(80).collect();
                self.errors.add(format!("error event: {short}"));
            }
            _ => match wire::event_type(payload) {
                Some(b"history_gap") => self.gaps_seen += 1,
                Some(kind) => match Kind::of(kind) {
                    Some(kind) => self.on_presence(index, kind, payload, now_ns),
                    None => self.other_events += 1,
                },
                None => self.other_events += 1,
            },
        }
    }

    /// A presence frame: counted apart from chat (asked for or not: a
    /// connection that did not ask must never get one), and applied to the
    /// connection's roster.
    fn on_presence(&mut self, index: usize, kind: Kind, payload: &[u8], now_ns: u64) {
        self.last_presence = Some(Instant::now());
        let room = self.conns[index].room as usize;
        let watch = self.conns[index].watch.get_or_insert_with(Box::default);
        watch.apply(
            kind,
            payload,
            &self.rooms[room],
            &self.users,
            self.presence_expected[room],
            now_ns,
            &mut self.presence_tally,
        );
    }

    /// A measured message of `step`, sent at `sent_ns`, reached connection
    /// `index`; `rest` is its text after the stamp (its number first, with
    /// a ledger).
    fn on_measured(&mut self, index: usize, step: u64, sent_ns: u64, rest: &[u8], now_ns: u64) {
        let Some(stats) = self.steps.get_mut(step as usize) else {
            return;
        };
        stats.delivered += 1;
        let micros = now_ns.saturating_sub(sent_ns) / 1000;
        stats.latency.saturating_record(micros.max(1));
        if let Some(ledger) = stats.ledger.as_mut() {
            match wire::leading_number(rest) {
                Some((number, _)) => ledger.delivered(number, index, micros),
                None => ledger.strays += 1,
            }
        }
        self.delivered_total += 1;
    }

    /// A reconnecting member's event: the first `history_gap` for its room, or
    /// message (a replay, or live in its room), means it is back in its room.
    fn check_back(&mut self, index: usize, payload: &[u8], now_ns: u64) {
        let back = match wire::event_type(payload) {
            Some(b"history_gap") => {
                let room = self.rooms[self.conns[index].room as usize].as_bytes();
                wire::string_field(payload, "room") == Some(room)
            }
            Some(b"new_message") => true,
            Some(b"presence") => {
                let room = self.rooms[self.conns[index].room as usize].as_bytes();
                wire::string_field(payload, "room") == Some(room)
            }
            _ => false,
        };
        if back {
            self.mark_back(index, now_ns);
        }
    }

    fn mark_back(&mut self, index: usize, now_ns: u64) {
        let conn = &mut self.conns[index];
        conn.awaiting_back = false;
        conn.back_ns = now_ns.max(1);
        self.back += 1;
        self.last_progress = Instant::now();
    }

    /// Keeps the id of a `new_message` as the connection's last seen (ids
    /// that would need escaping in a URL are ignored).
    fn note_id(&mut self, index: usize, payload: &[u8]) {
        let Some(id) = wire::string_field(payload, "id") else {
            return;
        };
        let url_safe = id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if url_safe && !id.is_empty() {
            let id = String::from_utf8_lossy(id);
            let conn = &mut self.conns[index];
            if conn.last_id.as_deref() != Some(&*id) {
                conn.last_id = Some(id.into());
            }
        }
    }

    /// Sends one `send_message` with `text`; false if the connection is not open.
    fn send_chat(&mut self, index: usize, text: &[u8]) -> bool {
        if self.conns[index].stage != Stage::Open {
            return false;
        }
        let json = &mut self.json;
        json.clear();
        json.extend_from_slice(br#"{"type":"send_message","payload":{"message":""#);
        json.extend_from_slice(text);
        json.extend_from_slice(br#"","from":""#);
        json.extend_from_slice(self.targets[0].user.as_bytes());
        json.extend_from_slice(br#""}}"#);
        let key = self.masker.next_key();
        wire::push_frame(&mut self.conns[index].out, wire::OP_TEXT, json, key);
        self.mark_dirty(index);
        self.chats_sent += 1;
        true
    }

    fn mark_dirty(&mut self, index: usize) {
        let conn = &mut self.conns[index];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(index);
        }
    }

    fn flush_dirty(&mut self) {
        let list = mem::take(&mut self.dirty);
        for &index in &list {
            self.conns[index].dirty = false;
            self.flush(index);
        }
        let mut list = list;
        list.clear();
        if self.dirty.is_empty() {
            self.dirty = list;
        }
        if let Some(api) = self.api.as_mut() {
            api.flush(&mut self.errors, self.poll.registry());
        }
    }

    /// A write failed: the end of a connection that was closing anyway,
    /// else a failure named by its stage.
    fn write_failed(&mut self, index: usize, err: &io::Error) {
        let stage = self.conns[index].stage;
        if stage == Stage::Closing {
            self.finish(index);
        } else {
            self.fail(
                index,
                format!("{}: write: {}", stage_name(stage), err.kind()),
            );
        }
    }

    fn flush(&mut self, index: usize) {
        let conn = &mut self.conns[index];
        if matches!(conn.stage, Stage::Pending | Stage::Connecting | Stage::Done) {
            return;
        }
        let Some(stream) = conn.stream.as_mut() else {
            return;
        };
        while conn.out_at < conn.out.len() {
            match stream.write(&conn.out[conn.out_at..]) {
                Ok(0) => break,
                Ok(n) => conn.out_at += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return self.write_failed(index, &err),
            }
        }
        if let Err(err) = stream.flush_records() {
            return self.write_failed(index, &err);
        }
        conn.out.clear();
        conn.out_at = 0;
        if conn.out.capacity() > READ_CHUNK {
            conn.out.shrink_to(1024);
        }
    }

    /// A connection ends in error: or, dropped by a server going away (with
    /// `expect_drop`), waits for `reconnect`; or, reconnecting with attempts
    /// left, goes to the back of the queue to try again.
    fn fail(&mut self, index: usize, kind: String) {
        let stage = self.conns[index].stage;
        if stage == Stage::Done {
            return;
        }
        if stage == Stage::Open && self.expect_drop {
            self.dropped += 1;
            self.drop_conn(index);
            self.conns[index].awaiting_back = true;
            return;
        }
        if self.conns[index].awaiting_back {
            if self.conns[index].tries > 1 {
                self.retried.add(kind);
                self.drop_conn(index);
                let conn = &mut self.conns[index];
                conn.tries -= 1;
                conn.stage = Stage::Pending;
                self.pending.push_back(index);
                self.last_progress = Instant::now();
                return;
            }
            self.conns[index].awaiting_back = false;
            self.gave_up += 1;
            self.last_progress = Instant::now();
        }
        self.errors.add(kind);
        if stage == Stage::Open {
            self.lost += 1;
        }
        self.drop_conn(index);
    }

    /// A connection we were closing is closed.
    fn finish(&mut self, index: usize) {
        self.drop_conn(index);
    }

    fn drop_conn(&mut self, index: usize) {
        let conn = &mut self.conns[index];
        if conn.stage.handshaking() {
            self.handshaking -= 1;
            self.last_progress = Instant::now();
        }
        if conn.stage == Stage::Open {
            self.open_now -= 1;
            let room = conn.room as usize;
            self.room_sizes[room] -= 1;
        }
        if let Some(mut stream) = conn.stream.take() {
            let _ = self.poll.registry().deregister(stream.tcp_mut());
        }
        conn.stage = Stage::Done;
        conn.inbuf = Vec::new();
        conn.out = Vec::new();
        conn.out_at = 0;
        conn.frag = Vec::new();
        conn.key = None;
        if let Some(watch) = conn.watch.as_mut() {
            watch.forget();
        }
    }
}

/// The `change_room` event joining `room`, watching its presence if asked.
fn change_room(room: &str, presence: bool) -> String {
    let payload = if presence {
        serde_json::json!({"name": room, "presence": true})
    } else {
        serde_json::json!({"name": room})
    };
    serde_json::json!({"type": "change_room", "payload": payload}).to_string()
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Pending | Stage::Connecting => "connect",
        Stage::Login => "login",
        Stage::Upgrade => "upgrade",
        Stage::Open => "websocket",
        Stage::Closing => "close",
        Stage::Done => "done",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_room_asks_for_presence_only_when_told() {
        let plain: serde_json::Value = serde_json::from_str(&change_room("room-1", false)).unwrap();
        assert_eq!(plain["payload"], serde_json::json!({"name": "room-1"}));
        let watching: serde_json::Value =
            serde_json::from_str(&change_room("room-1", true)).unwrap();
        assert_eq!(watching["type"], "change_room");
        assert_eq!(watching["payload"]["name"], "room-1");
        assert_eq!(watching["payload"]["presence"], true);
    }

    #[test]
    fn urls_say_tls_by_their_scheme() {
        assert_eq!(
            split_url("http://127.0.0.1:8080"),
            Ok((false, "127.0.0.1:8080"))
        );
        assert_eq!(
            split_url("https://127.0.0.1:8443/"),
            Ok((true, "127.0.0.1:8443"))
        );
        assert_eq!(split_url("https://localhost/x"), Ok((true, "localhost")));
        assert!(split_url("https://").is_err());
        assert!(split_url("ws://127.0.0.1:1").is_err());
        assert!(split_url("127.0.0.1:1").is_err());
    }

    #[test]
    fn https_needs_a_ca_and_gets_an_https_origin() {
        let err = Target::from_url("https://127.0.0.1:8443", "u", "p", None).unwrap_err();
        assert!(err.contains("--ca"), "{err}");
        let plain = Target::from_url("http://127.0.0.1:8080", "u", "p", None).unwrap();
        assert!(plain.tls.is_none());
        assert_eq!(plain.origin, "http://127.0.0.1:8080");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let tls = Target::from_url("https://127.0.0.1", "u", "p", Some(&Arc::new(config))).unwrap();
        assert!(tls.tls.is_some());
        assert_eq!(tls.origin, "https://127.0.0.1");
        assert_eq!(tls.addr.port(), 443);
    }
}

//! Scale-out through Redis (`--redis`): several processes, on one host or
//! many, serve one chat.
//!
//! Two non-blocking connections in the loop's own `Poll` (`link`): one for
//! commands, pipelined, whose replies come back in the order they were sent,
//! and one for subscriptions. A process subscribes to `<prefix>room:<name>`
//! while it has a member in that room (changes batched per loop turn). A chat
//! message is published once, by one Lua script that also takes the room's
//! next sequence number and keeps it in the room's stream (`scripts`: the
//! keys and the scripts), so every process (the sender's too) delivers what
//! comes back from Redis in the one order Redis gave it. A process that sees
//! a room's numbering skip, or had to subscribe to it again, reads what it
//! missed from the room's stream before handing on newer messages
//! (`repair`); only what the stream no longer holds is a counted gap. The
//! SUBSCRIBE and the publishes travel on different connections, so a room's
//! posts wait until Redis has confirmed its subscription: otherwise the first
//! message in a room new to a process could be published before it listens,
//! and never come back. A resume's read of the room's stream waits likewise,
//! or what others publish between the read and the SUBSCRIBE would be in
//! neither; resumes are read once a loop turn, the members resuming in one
//! room sharing reads (`replays`).
//!
//! OTPs live in Redis too (`SET ... PX ttl NX` at login, `GETDEL` at the
//! upgrade), so a login on one process opens a WebSocket on any other, once.
//!
//! When Redis is unreachable nothing stops: messages reach local members
//! at once (logged once per outage, counted) and wait in their room's
//! outbox for the other processes, logins and `/healthz` answer 503, and
//! the links reconnect with back-off; when Redis is back the outboxes are
//! published, every active room is subscribed again, and what was
//! published meanwhile is read from its stream. With Sentinel
//! (`sentinel`), the links go wherever the sentinels say the master is.
//!
//! The files, by job. This one holds the `RedisBus` and wires it to the
//! `Backend` trait; each of the others adds the `impl RedisBus` of its job,
//! or is a part with no I/O that those use:
//! - `feeds`: rooms and their subscriptions, publishing (held posts until a
//!   subscription is confirmed), and what arrives from a room's channel;
//! - `reads`: reads of a room's stream through the read script, for repairs
//!   and resumes, and what comes of them;
//! - `store`: the OTP and session store (queries and their answers);
//! - `liveness`: the links going up and down, probes, and the outage log;
//! - `master`: that the server is the master, and which (its replication
//!   id, which the scripts number epochs by);
//! - `dispatch`: what each command reply answers (`Expect`), and where the
//!   replies and the subscription link's pushes go;
//! - `scripts`: a room's keys, the Lua scripts and their arguments and
//!   answers, and loading the scripts into Redis;
//! - `repair` (a room's numbering and its holes) and `replays` (shared reads
//!   for resumes): decisions, no I/O;
//! - `sentinel`: where the master is, asked of Redis Sentinel;
//! - `link` (one connection), `replies` (its bounded reply scanner) and
//!   `target` (the `redis://` URL).

mod control;
mod dispatch;
mod feeds;
mod inspect;
mod link;
mod liveness;
mod master;
mod presence;
mod reads;
mod repair;
mod replays;
mod replies;
mod scripts;
mod sentinel;
mod store;
mod stream;
mod target;
mod tls;

pub use sentinel::Watch as SentinelWatch;
pub use tls::client_config as tls_client_config;

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Registry, Token};
use redis_protocol::resp2::types::OwnedFrame;
use rustls::ClientConfig;

use crate::broker::{
    Arrival, Backend, Lost, MemberReplay, Post, PresenceNews, Refusal, ReplayTicket, Seats,
};
use crate::broker::{Control, OtpStore, StoreAnswer, StoreQuery};
use crate::config::RedisUrl;
use crate::history::Resume;
use crate::metrics::{Metrics, RedisStats};
use crate::slab::SlotId;
use dispatch::Expect;
use feeds::Feed;
use link::Link;
use sentinel::Sentinels;
#[cfg(feature = "testing")]
pub use replies::Replies;

/// Bytes of an unexpected reply written to the log, at most.
const LOGGED_REPLY: usize = 200;
/// Bytes queued toward Redis per link before commands are dropped (counted).
const OUT_MAX: usize = 8 << 20;

/// How much history the room streams keep, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct History {
    pub per_room: usize,
    pub ttl: Duration,
}

/// What the bus needs to reach Redis and to use it.
pub struct Settings {
    /// Where Redis is, and who to be there (with `sentinel`, only who: the
    /// sentinels say where).
    pub target: RedisUrl,
    pub sentinel: Option<SentinelWatch>,
    pub prefix: String,
    pub history: History,
    /// How long an OTP kept in Redis lives.
    pub otp_ttl: Duration,
    /// With `rediss://`: the TLS client settings (the sentinels' too).
    pub tls: Option<Arc<ClientConfig>>,
}

pub struct RedisBus {
    prefix: String,
    /// How long an OTP kept in Redis lives.
    otp_ttl: Duration,
    history: History,
    commands: Link,
    subscriptions: Link,
    /// With Sentinel: where the master is.
    sentinels: Option<Sentinels>,
    /// What each reply on `commands` answers, oldest first, with when it was sent.
    expected: VecDeque<(Instant, Expect)>,
    script_sha: Option<String>,
    /// The read script's, once loaded (reads come in bursts: a restart
    /// brings back every room at once, so the script does not travel with
    /// each).
    read_sha: Option<String>,
    rooms: HashMap<Rc<str>, Feed>,
    /// Rooms opened so far: the next feed's serial.
    feeds_opened: u64,
    /// (Un)subscriptions decided in this loop turn, sent together.
    to_subscribe: Vec<Rc<str>>,
    to_unsubscribe: Vec<Rc<str>>,
    /// Resumes to read this turn (their rooms subscribed).
    to_read: Vec<(Rc<str>, ReplayTicket, Resume)>,
    arrivals: Vec<Arrival>,
    /// Holes in rooms' numbering found by repairs, placed among `arrivals`.
    lost: Vec<Lost>,
    replays: Vec<MemberReplay>,
    answers: Vec<(SlotId, StoreAnswer)>,
    /// Posts that will reach nobody, for their senders.
    refusals: Vec<Refusal>,
    /// Bytes of posts kept in rooms' outboxes (`feeds`).
    outbox_bytes: usize,
    /// When the last probe went out on the subscription link, if unanswered.
    probe_sent: Option<Instant>,
    next_probe: Instant,
    /// An outage was logged (once per outage).
    outage_logged: bool,
    /// When the links last went down, while they are.
    down_since: Option<Instant>,
    /// The replication id of the command link's master on this connection
    /// ('' until it says): the scripts' hint (`master`).
    master: String,
    /// The last replication id heard, on any connection: a new one is a
    /// failover.
    last_master: String,
    /// Why the server turned out not to be the master, until both links
    /// are reconnected at the end of the turn.
    not_master: Option<String>,
    /// This process's id in Redis: random per run.
    process: Rc<str>,
    /// This process in the rooms' presence.
    roster: presence::Roster,
    /// Operators' calls heard from other processes, and bans read (`control`).
    controls: Vec<Control>,
    stats: RedisStats,
    frames: Vec<OwnedFrame>,
    now: Instant,
}

impl RedisBus {
    /// A bus on the sockets `tokens` (the data links' two, the sentinels' two).
    pub fn new(settings: Settings, tokens: [Token; 4], now: Instant) -> RedisBus {
        let Settings {
            target,
            sentinel,
            prefix,
            history,
            otp_ttl,
            tls,
        } = settings;
        let sentinels = sentinel
            .map(|watch| Sentinels::new(watch, tls.clone(), [tokens[2], tokens[3]], now));
        RedisBus {
            prefix,
            otp_ttl,
            history,
            commands: Link::new(
                "commands",
                tokens[0],
                target.clone(),
                tls.clone(),
                OUT_MAX,
                now,
            ),
            subscriptions: Link::new("subscriptions", tokens[1], target, tls, OUT_MAX, now),
            sentinels,
            expected: VecDeque::new(),
            script_sha: None,
            read_sha: None,
            rooms: HashMap::new(),
            feeds_opened: 0,
            to_subscribe: Vec::new(),
            to_unsubscribe: Vec::new(),
            to_read: Vec::new(),
            arrivals: Vec::new(),
            lost: Vec::new(),
            replays: Vec::new(),
            answers: Vec::new(),
            refusals: Vec::new(),
            outbox_bytes: 0,
            probe_sent: None,
            next_probe: now + liveness::PROBE_EVERY,
            outage_logged: false,
            down_since: None,
            master: String::new(),
            last_master: String::new(),
            not_master: None,
            process: process_id(),
            roster: presence::Roster::new(now),
            controls: Vec::new(),
            stats: RedisStats::default(),
            frames: Vec::new(),
            now,
        }
    }

    /// Both links are connected.
    pub fn is_up(&self) -> bool {
        self.commands.is_up() && self.subscriptions.is_up()
    }

    pub fn stats(&self) -> RedisStats {
        let target = self.commands.target();
        let master = match self.master_address_known() {
            true => format!("{}:{}", target.host, target.port),
            false => "unknown".to_string(),
        };
        RedisStats {
            up: self.is_up(),
            subscriptions: self.rooms.len(),
            master,
            ..self.stats.clone()
        }
    }
}

/// A random id for this process (64 bits, hex).
fn process_id() -> Rc<str> {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Ids only need to differ: the pid and the clock will do.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (nanos ^ u64::from(std::process::id())).to_le_bytes();
    }
    Rc::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

impl RedisBus {
    /// This process's id in Redis.
    fn process_id(&self) -> &str {
        &self.process
    }

    /// Where the master is is known: always without Sentinel, once a
    /// sentinel has said with it.
    fn master_address_known(&self) -> bool {
        self.sentinels
            .as_ref()
            .is_none_or(|sentinels| sentinels.master().is_some())
    }

    /// Sentinel says the master is at `host:port`: both links go there.
    fn move_links(&mut self, host: &str, port: u16, registry: &Registry) {
        let change = self.commands.move_to(host, port, self.now, registry);
        self.on_command_link(change);
        let change = self.subscriptions.move_to(host, port, self.now, registry);
        self.on_subscription_link(change);
    }
}

impl Backend for RedisBus {
    /// Asks Redis about an OTP for connection `asker`; the answer comes out of
    /// `take_answers` (at once, `Unavailable`, when Redis is down).
    fn ask(&mut self, asker: SlotId, query: StoreQuery) {
        self.query_store(asker, query);
    }

    /// OTP answers ready for their connections.
    fn take_answers(&mut self, into: &mut Vec<(SlotId, StoreAnswer)>) {
        into.append(&mut self.answers);
    }

    /// Handles readiness on link `token`.
    fn on_ready(&mut self, token: Token, now: Instant, registry: &Registry) {
        self.now = now;
        if let Some(sentinels) = &mut self.sentinels
            && sentinels.owns(token)
        {
            if let Some((host, port)) = sentinels.on_ready(token, now, registry) {
                self.move_links(&host, port, registry);
            }
            return;
        }
        let mut frames = std::mem::take(&mut self.frames);
        if token == self.commands.token() {
            let change = self.commands.on_ready(now, registry, &mut frames);
            for frame in frames.drain(..) {
                self.on_reply(frame);
            }
            self.on_command_link(change);
        } else {
            let change = self.subscriptions.on_ready(now, registry, &mut frames);
            for frame in frames.drain(..) {
                self.on_push(frame);
            }
            self.on_subscription_link(change);
        }
        self.frames = frames;
    }

    /// Once per loop turn: reconnects what is due, probes, sends this turn's
    /// (un)subscriptions, and flushes both links.
    fn end_turn(&mut self, now: Instant, registry: &Registry) {
        self.now = now;
        if self.master_address_known() {
            let change = self.commands.connect_if_due(now, registry);
            self.on_command_link(change);
            let change = self.subscriptions.connect_if_due(now, registry);
            self.on_subscription_link(change);
        }
        self.check_liveness(now, registry);
        if self.not_master.take().is_some() {
            let change = self.commands.reset("not the master", now, registry);
            self.on_command_link(change);
            let change = self.subscriptions.reset("not the master", now, registry);
            self.on_subscription_link(change);
        }
        if let Some(sentinels) = &mut self.sentinels {
            sentinels.end_turn(now, registry);
        }
        self.beat_if_due();
        self.send_subscription_changes();
        self.send_reads();
        // A failed write ends the link as a failed read does: what was in
        // flight on it is answered or repaired, never left to be matched
        // with the replies of the next connection.
        if let Err(err) = self.commands.flush() {
            let change = self.commands.reset(&format!("write failed: {err}"), now, registry);
            self.on_command_link(change);
        }
        if let Err(err) = self.subscriptions.flush() {
            let change = (self.subscriptions).reset(&format!("write failed: {err}"), now, registry);
            self.on_subscription_link(change);
        }
    }

    /// When the loop must wake for a reconnect, a probe, or a replay.
    fn next_deadline(&self) -> Option<Instant> {
        [
            self.commands.retry_at(),
            self.subscriptions.retry_at(),
            Some(self.probe_due()),
            self.replays_due(),
            self.sentinels.as_ref().and_then(Sentinels::next_deadline),
            self.commands.is_up().then(|| self.roster.next_beat()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn otp_store(&self) -> OtpStore {
        OtpStore::Shared { up: self.is_up() }
    }

    fn begin_turn(&mut self, now: Instant) {
        self.now = now;
    }

    fn report(&self, metrics: &mut Metrics) {
        metrics.redis = Some(self.stats());
    }

    fn publish(&mut self, room: &Rc<str>, post: Post) {
        self.post(room, post);
    }

    fn room_opened(&mut self, room: &Rc<str>) {
        self.open_feed(room);
    }

    fn room_closed(&mut self, room: &Rc<str>) {
        self.close_feed(room);
    }

    fn replay(&mut self, room: &Rc<str>, ticket: ReplayTicket, resume: Resume) {
        self.ask_replay(room, ticket, resume);
    }

    fn presence(&mut self, room: &Rc<str>, users: Seats) {
        self.presence_changed(room, users);
    }

    fn take_arrivals(
        &mut self,
        ready: &mut Vec<Arrival>,
        lost: &mut Vec<Lost>,
        presence: &mut Vec<PresenceNews>,
    ) {
        self.hand_arrivals(ready, lost, presence);
    }

    fn take_replays(&mut self, ready: &mut Vec<MemberReplay>) {
        self.hand_replays(ready);
    }

    fn take_refusals(&mut self, into: &mut Vec<Refusal>) {
        into.append(&mut self.refusals);
    }

    fn announce(&mut self, control: Control) {
        self.announce_control(control);
    }

    fn take_controls(&mut self, into: &mut Vec<Control>) {
        into.append(&mut self.controls);
    }
}

#[cfg(test)]
mod tests;

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
//! (`repair`); only what the stream no longer holds is a counted gap. The SUBSCRIBE and the publishes
//! travel on different connections, so a room's posts wait until Redis has
//! confirmed its subscription: otherwise the first message in a room new to
//! a process could be published before it listens, and never come back. A
//! resume's read of the room's stream waits likewise, or what others publish
//! between the read and the SUBSCRIBE would be in neither; resumes are read
//! once a loop turn, the members resuming in one room sharing reads
//! (`replays`).
//!
//! OTPs live in Redis too (`SET ... PX ttl NX` at login, `GETDEL` at the
//! upgrade), so a login on one process opens a WebSocket on any other, once.
//!
//! When Redis is unreachable nothing stops: messages reach local members
//! only (logged once per outage, counted), logins and `/healthz` answer 503,
//! and the links reconnect with back-off; when Redis is back every active
//! room is subscribed again, and what was published meanwhile is read from
//! its stream.

mod link;
mod repair;
mod replays;
mod replies;
mod scripts;
mod target;

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::{Registry, Token};
use redis_protocol::resp2::types::OwnedFrame;

use crate::broker::{Arrival, Backend, Lost, MemberReplay, Post, ReplayTicket};
use crate::broker::{OtpStore, StoreAnswer, StoreQuery};
use crate::chat;
use crate::history::{Replay, Resume, parse_id};
use crate::logging::Truncated;
use crate::metrics::{Metrics, RedisStats};
use crate::slab::SlotId;
use link::{Change, Link, command};
use repair::{Fetch, Sequence};
pub use replies::Replies;
use scripts::{Read, RoomKeys};
pub use target::Target;

/// A session's OTP, stored unless the session was ended: KEYS[1] the
/// session's revocation, KEYS[2] the OTP; ARGV[1] the user, ARGV[2] its
/// lifetime in ms. 0 when revoked, else what SET answers.
const SESSION_OTP_SCRIPT: &str = "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end \
     return redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2], 'NX')";
/// Bytes of an unexpected reply written to the log, at most.
const LOGGED_REPLY: usize = 200;
/// Bytes queued toward Redis per link before commands are dropped (counted).
const OUT_MAX: usize = 8 << 20;
/// Channels per SUBSCRIBE when a whole set is (re)subscribed.
const SUBSCRIBE_BATCH: usize = 500;
/// How often the subscription link is asked to prove it still delivers, and
/// how long it may take to answer before it is reconnected.
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_WAIT: Duration = Duration::from_secs(3);
/// A command reply later than this means the command link is stuck.
const REPLY_WAIT: Duration = Duration::from_secs(5);

/// What a reply on the command link answers.
enum Expect {
    /// AUTH or SELECT on a fresh connection.
    Handshake,
    /// SCRIPT LOAD of the publish script (false) or the read script (true).
    ScriptLoad {
        read: bool,
    },
    /// A chat message; kept to send again as EVAL if the script is gone.
    /// `local`: already delivered to this process's members (unnumbered,
    /// the subscription link being down), so its numbered copy is not.
    Publish {
        room: String,
        event: Vec<u8>,
        refresh: bool,
        local: bool,
    },
    /// What this process's members of `room` missed (a hole in its
    /// numbering), for the room as opened `serial`-th (a room closed and
    /// opened again since has other members: the read is not theirs).
    /// `where_from`: only where the room stands (`repair::Sequence::stood`).
    Repair {
        room: Rc<str>,
        serial: u64,
        where_from: bool,
        read: Read,
    },
    /// What members resuming in `room` missed: one read shared by them.
    Replays {
        room: Rc<str>,
        read: Read,
        members: Vec<replays::Asked<ReplayTicket>>,
    },
    Otp {
        asker: SlotId,
        query: StoreQuery,
    },
}

/// A room this process has members in: the last message seen, and
/// whether Redis has confirmed its subscription. Until it has, a message
/// published from here could reach Redis before the SUBSCRIBE (they travel on
/// two connections) and never come back to this process's members, so local
/// posts wait in `held` (whole events) for the confirmation. So do resumes:
/// a replay read from the stream before the SUBSCRIBE takes effect would
/// miss what others publish in between, which would not come live either.
#[derive(Default)]
struct Feed {
    /// Which opening of the room this is (`RedisBus::feeds_opened`).
    serial: u64,
    /// Where the room's numbering stands here, and the repair of its holes.
    sequence: Sequence,
    subscribed: bool,
    held: Vec<Vec<u8>>,
    /// Resumes asked before the subscription was confirmed: read then, so
    /// that what the stream has not got yet comes live.
    resumes: Vec<(ReplayTicket, Resume)>,
    /// When this process last refreshed the lifetime of the room's keys
    /// (once a quarter ttl is enough: see publish.lua).
    refreshed: Option<Instant>,
}

/// Posts held for one room's subscription at most; past it they go at once.
const MAX_HELD_POSTS: usize = 256;

/// How much history the room streams keep, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct History {
    pub per_room: usize,
    pub ttl: Duration,
}

pub struct RedisBus {
    prefix: String,
    /// How long an OTP kept in Redis lives.
    otp_ttl: Duration,
    history: History,
    commands: Link,
    subscriptions: Link,
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
    /// When the last probe went out on the subscription link, if unanswered.
    probe_sent: Option<Instant>,
    next_probe: Instant,
    /// An outage was logged (once per outage).
    outage_logged: bool,
    stats: RedisStats,
    frames: Vec<OwnedFrame>,
    now: Instant,
}

impl RedisBus {
    pub fn new(
        target: Target,
        prefix: String,
        history: History,
        otp_ttl: Duration,
        tokens: [Token; 2],
        now: Instant,
    ) -> RedisBus {
        RedisBus {
            prefix,
            otp_ttl,
            history,
            commands: Link::new("commands", tokens[0], target.clone(), OUT_MAX, now),
            subscriptions: Link::new("subscriptions", tokens[1], target, OUT_MAX, now),
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
            probe_sent: None,
            next_probe: now + PROBE_EVERY,
            outage_logged: false,
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
        RedisStats {
            up: self.is_up(),
            subscriptions: self.rooms.len(),
            ..self.stats
        }
    }

    fn on_command_link(&mut self, change: Change) {
        match change {
            Change::Nothing => {}
            Change::Up => {
                for handshake in self.commands.target().handshake() {
                    if self.commands.send(&handshake) {
                        self.expected.push_back((self.now, Expect::Handshake));
                    }
                }
                self.load_script(false);
                self.load_script(true);
                self.came_up();
            }
            Change::Down(why) => {
                self.stats.reconnects += 1;
                self.script_sha = None;
                self.read_sha = None;
                for (_, expect) in std::mem::take(&mut self.expected) {
                    match expect {
                        Expect::Otp { asker, .. } => {
                            self.answers.push((asker, StoreAnswer::Unavailable));
                        }
                        Expect::Publish { .. } => {
                            log::debug!("a message in flight to redis is lost: {why}");
                        }
                        expect @ (Expect::Repair { .. } | Expect::Replays { .. }) => {
                            self.read_failed(expect);
                        }
                        Expect::Handshake | Expect::ScriptLoad { .. } => {}
                    }
                }
                self.went_down(&why);
            }
        }
    }

    fn on_subscription_link(&mut self, change: Change) {
        match change {
            Change::Nothing => {}
            Change::Up => {
                for handshake in self.subscriptions.target().handshake() {
                    self.subscriptions.send(&handshake);
                }
                // Every active room, again, in batches.
                for feed in self.rooms.values_mut() {
                    feed.subscribed = false;
                }
                let rooms: Vec<Rc<str>> = self.rooms.keys().cloned().collect();
                for batch in rooms.chunks(SUBSCRIBE_BATCH) {
                    self.subscribe(batch, "SUBSCRIBE");
                }
                self.to_subscribe.clear();
                self.probe_sent = None;
                self.next_probe = self.now + PROBE_EVERY;
                self.came_up();
            }
            Change::Down(why) => {
                self.stats.reconnects += 1;
                self.probe_sent = None;
                self.went_down(&why);
                self.release_all_held();
            }
        }
    }

    /// The subscription link is down: what waited for a confirmation goes as
    /// any post does now (to local members, and to Redis if commands reach it).
    fn release_all_held(&mut self) {
        let rooms: Vec<Rc<str>> = self.rooms.keys().cloned().collect();
        for room in rooms {
            self.release_held(&room);
            self.release_resumes(&room);
        }
    }

    fn came_up(&mut self) {
        if self.is_up() {
            if self.outage_logged {
                log::info!("redis is back: cross-process chat resumes");
            }
            self.outage_logged = false;
        }
    }

    fn went_down(&mut self, why: &str) {
        if !self.outage_logged {
            log::warn!(
                "redis unreachable ({why}): messages reach this process's members only; \
                 logins answer 503 until it is back"
            );
            self.outage_logged = true;
        }
    }

    /// A reply on the command link answers the oldest command in flight.
    fn on_reply(&mut self, frame: OwnedFrame) {
        let Some((_, expect)) = self.expected.pop_front() else {
            log::warn!(
                "redis commands: a reply nobody asked for: {}",
                Truncated(&frame, LOGGED_REPLY)
            );
            return;
        };
        match (expect, frame) {
            (Expect::Handshake, OwnedFrame::Error(err)) => {
                log::error!("redis: the handshake failed: {err}");
            }
            (Expect::Handshake, _) => {}
            (Expect::ScriptLoad { read }, OwnedFrame::BulkString(sha)) => {
                let sha = String::from_utf8(sha).ok();
                match read {
                    true => self.read_sha = sha,
                    false => self.script_sha = sha,
                }
            }
            (Expect::ScriptLoad { .. }, other) => {
                log::error!(
                    "redis: cannot load a script: {}",
                    Truncated(&other, LOGGED_REPLY)
                );
            }
            (Expect::Publish { room, local, .. }, OwnedFrame::BulkString(id)) => {
                self.stats.published += 1;
                if local
                    && let Some(feed) = self.rooms.get_mut(room.as_str())
                    && let Some((epoch, seq)) = std::str::from_utf8(&id).ok().and_then(parse_id)
                {
                    feed.sequence.delivered_here(epoch, seq);
                }
            }
            (
                Expect::Publish {
                    room,
                    event,
                    refresh,
                    local,
                },
                OwnedFrame::Error(err),
            ) if err.starts_with("NOSCRIPT") => {
                // The script cache was flushed: send the script itself, and load it again.
                self.script_sha = None;
                self.eval(room, event, refresh, local);
                self.load_script(false);
            }
            (Expect::Publish { .. }, other) => {
                log::warn!("redis: publish failed: {}", Truncated(&other, LOGGED_REPLY))
            }
            (expect @ (Expect::Repair { .. } | Expect::Replays { .. }), OwnedFrame::Error(err))
                if err.starts_with("NOSCRIPT") =>
            {
                // The script cache was flushed: the same read with the script
                // itself, and the script loaded again.
                self.read_sha = None;
                let (room, read) = match &expect {
                    Expect::Repair { room, read, .. } | Expect::Replays { room, read, .. } => {
                        (Rc::clone(room), read.clone())
                    }
                    _ => return,
                };
                match self.commands.send(&self.read_command(&room, &read)) {
                    true => self.expected.push_back((self.now, expect)),
                    false => self.read_failed(expect),
                }
                self.load_script(true);
            }
            (
                Expect::Repair {
                    room,
                    serial,
                    where_from,
                    ..
                },
                frame,
            ) => {
                let read = scripts::parse_read(frame)
                    .map_err(|why| log::warn!("redis: room {room:?}: {why}"))
                    .ok();
                self.read_done(&room, serial, where_from, read);
            }
            (
                Expect::Replays {
                    room,
                    read,
                    members,
                },
                frame,
            ) => {
                let answer = scripts::parse_read(frame)
                    .map_err(|why| log::warn!("redis: room {room:?}: {why}"))
                    .ok();
                let (mut done, mut alone) = (Vec::new(), Vec::new());
                replays::answer(&read, answer, members, &mut done, &mut alone);
                for (ticket, replay) in done {
                    self.replays.push(MemberReplay {
                        ticket,
                        room: Rc::clone(&room),
                        replay,
                    });
                }
                for (ticket, resume) in alone {
                    self.to_read.push((Rc::clone(&room), ticket, resume));
                }
            }
            (Expect::Otp { asker, query }, frame) => {
                let answer = match (query, frame) {
                    (
                        StoreQuery::Store { .. } | StoreQuery::StoreForSession { .. },
                        OwnedFrame::SimpleString(_),
                    ) => StoreAnswer::Stored,
                    (
                        StoreQuery::Store { .. } | StoreQuery::StoreForSession { .. },
                        OwnedFrame::Null,
                    ) => StoreAnswer::Exists,
                    (StoreQuery::StoreForSession { .. }, OwnedFrame::Integer(0)) => {
                        StoreAnswer::Revoked
                    }
                    (StoreQuery::Revoke { .. }, OwnedFrame::SimpleString(_)) => StoreAnswer::Done,
                    (StoreQuery::Take { .. }, OwnedFrame::BulkString(user)) => {
                        StoreAnswer::Taken(String::from_utf8(user).ok())
                    }
                    (StoreQuery::Take { .. }, OwnedFrame::Null) => StoreAnswer::Taken(None),
                    (_, other) => {
                        log::warn!(
                            "redis: an OTP command failed: {}",
                            Truncated(&other, LOGGED_REPLY)
                        );
                        StoreAnswer::Unavailable
                    }
                };
                self.answers.push((asker, answer));
            }
        }
    }

    /// A push on the subscription link: a room's message, a (un)subscribe
    /// confirmation, or the answer to a probe.
    fn on_push(&mut self, frame: OwnedFrame) {
        let mut parts = match frame {
            OwnedFrame::Array(parts) => parts,
            // With no subscription, PING answers as a plain command does.
            OwnedFrame::SimpleString(pong) if pong == b"PONG" => {
                self.probe_sent = None;
                return;
            }
            OwnedFrame::Error(err) => {
                log::error!("redis subscriptions: {err}");
                return;
            }
            _ => return, // AUTH/SELECT replies
        };
        let kind = match parts.first() {
            Some(OwnedFrame::BulkString(kind)) => kind.clone(),
            _ => return,
        };
        match kind.as_slice() {
            b"message" if parts.len() == 3 => {
                let payload = match parts.pop() {
                    Some(OwnedFrame::BulkString(payload)) => payload,
                    _ => return,
                };
                let channel = match parts.pop() {
                    Some(OwnedFrame::BulkString(channel)) => channel,
                    _ => return,
                };
                self.on_message(&channel, &payload);
            }
            b"pong" => self.probe_sent = None,
            b"subscribe" => {
                if let Some(OwnedFrame::BulkString(channel)) = parts.into_iter().nth(1) {
                    self.on_subscribed(&channel);
                }
            }
            _ => {} // unsubscribe confirmations
        }
    }

    /// Redis confirmed a room's subscription: its held posts go now, and
    /// what they publish will come back here.
    fn on_subscribed(&mut self, channel: &[u8]) {
        let Some(room) = self.room_of(channel) else {
            return; // closed meanwhile
        };
        let mut fetch = None;
        if let Some(feed) = self.rooms.get_mut(&room) {
            feed.subscribed = true;
            // After a loss, what was published meanwhile is read; the first
            // time, where the room stands (`repair`).
            fetch = Some(feed.sequence.subscribed());
        }
        if let Some(fetch) = fetch {
            self.fetch(&room, fetch);
        }
        self.release_held(&room);
        self.release_resumes(&room);
    }

    /// The active room whose channel this is (`<prefix>room:<name>`).
    fn room_of(&self, channel: &[u8]) -> Option<Rc<str>> {
        let name = channel
            .strip_prefix(self.prefix.as_bytes())?
            .strip_prefix(b"room:")?;
        let name = std::str::from_utf8(name).ok()?;
        self.rooms
            .get_key_value(name)
            .map(|(room, _)| Rc::clone(room))
    }

    /// Sends on the posts `room` held for its subscription.
    fn release_held(&mut self, room: &Rc<str>) {
        let held = match self.rooms.get_mut(room) {
            Some(feed) => std::mem::take(&mut feed.held),
            None => return,
        };
        for event in held {
            self.send_post(room, event);
        }
    }

    /// Reads the replays `room`'s resumes waited for (its subscription, or
    /// the subscription link gone: then live messages cannot come anyway).
    fn release_resumes(&mut self, room: &Rc<str>) {
        let resumes = match self.rooms.get_mut(room) {
            Some(feed) => std::mem::take(&mut feed.resumes),
            None => return,
        };
        for (ticket, resume) in resumes {
            self.to_read.push((Rc::clone(room), ticket, resume));
        }
    }

    /// A room's message: "<epoch>-<seq> <event JSON>". Framed once here,
    /// delivered by the hub to every local member.
    fn on_message(&mut self, channel: &[u8], payload: &[u8]) {
        let Some(room) = self.room_of(channel) else {
            return; // unsubscribed meanwhile
        };
        let Some((epoch, seq, event)) = scripts::parse_published(payload) else {
            log::warn!("redis: room {room:?}: a message out of shape");
            return;
        };
        let Some(feed) = self.rooms.get_mut(&room) else {
            return;
        };
        self.stats.received += 1;
        let arrival = Arrival {
            epoch: feed.sequence.epoch_for(epoch),
            room: Rc::clone(&room),
            seq,
            frame: crate::ws::text_frame(event),
        };
        if let Some(fetch) = feed.sequence.heard(arrival, &mut self.arrivals) {
            self.fetch(&room, fetch);
        }
    }

    /// Reads a hole in `room`'s numbering from its stream (or where it stands).
    fn fetch(&mut self, room: &Rc<str>, fetch: Fetch) {
        let read = match fetch.where_from {
            true => Read::Last(0),
            false => Read::After {
                epoch: fetch.epoch.to_string(),
                seq: fetch.after,
            },
        };
        let expect = Expect::Repair {
            room: Rc::clone(room),
            serial: self.rooms.get(room).map_or(0, |feed| feed.serial),
            where_from: fetch.where_from,
            read,
        };
        self.send_read(expect);
    }

    /// A read of `room`'s stream for a repair came back (`None`: it failed).
    fn read_done(
        &mut self,
        room: &Rc<str>,
        serial: u64,
        where_from: bool,
        read: Option<scripts::RoomRead>,
    ) {
        let Some(feed) = self.rooms.get_mut(room).filter(|f| f.serial == serial) else {
            return;
        };
        match where_from {
            true => feed.sequence.stood(read),
            false => {
                let (lost, recovered) = feed.sequence.read_done(room, read, &mut self.arrivals);
                self.stats.gaps += lost;
                self.stats.recovered += recovered;
                for hole in feed.sequence.holes.drain(..) {
                    self.lost.push(Lost {
                        room: Rc::clone(room),
                        next: format!("{}-{}", hole.epoch, hole.next),
                        before: hole.before,
                    });
                }
            }
        }
    }

    /// Probes the subscription link, and resets a link that stopped answering.
    fn check_liveness(&mut self, now: Instant, registry: &Registry) {
        if let Some(sent) = self.probe_sent
            && now >= sent + PROBE_WAIT
        {
            let change = self
                .subscriptions
                .reset("no answer to a probe", now, registry);
            self.on_subscription_link(change);
        } else if self.probe_sent.is_none() && now >= self.next_probe && self.subscriptions.is_up()
        {
            if self.subscriptions.send(&command(&["PING"])) {
                self.probe_sent = Some(now);
            }
            self.next_probe = now + PROBE_EVERY;
        }
        if let Some((sent, _)) = self.expected.front()
            && now >= *sent + REPLY_WAIT
        {
            let change = self.commands.reset("no reply in time", now, registry);
            self.on_command_link(change);
        }
    }

    fn send_subscription_changes(&mut self) {
        if !self.subscriptions.is_up() {
            // Everything active is subscribed again when it comes back.
            self.to_subscribe.clear();
            self.to_unsubscribe.clear();
            return;
        }
        let subscribe = std::mem::take(&mut self.to_subscribe);
        for batch in subscribe.chunks(SUBSCRIBE_BATCH) {
            self.subscribe(batch, "SUBSCRIBE");
        }
        let unsubscribe = std::mem::take(&mut self.to_unsubscribe);
        for batch in unsubscribe.chunks(SUBSCRIBE_BATCH) {
            self.subscribe(batch, "UNSUBSCRIBE");
        }
    }

    fn subscribe(&mut self, rooms: &[Rc<str>], verb: &str) {
        let mut args = vec![verb.as_bytes().to_vec()];
        args.extend(
            rooms
                .iter()
                .map(|room| scripts::channel(&self.prefix, room).into_bytes()),
        );
        if !self.subscriptions.send(&args) {
            self.stats.dropped += 1;
        }
    }

    /// Publishes `event` (JSON without its closing `}}`) to `room` through
    /// the script; `refresh`: the room's keys get their lifetime again;
    /// `local`: this process's members already have it.
    fn eval(&mut self, room: String, event: Vec<u8>, refresh: bool, local: bool) {
        let verb_and_script = match &self.script_sha {
            Some(sha) => [b"EVALSHA".to_vec(), sha.as_bytes().to_vec()],
            None => [b"EVAL".to_vec(), scripts::PUBLISH.as_bytes().to_vec()],
        };
        let args = scripts::publish_args(
            verb_and_script,
            RoomKeys::new(&self.prefix, &room),
            scripts::channel(&self.prefix, &room),
            &event,
            self.history.per_room,
            self.history.ttl.as_millis(),
            refresh,
        );
        match self.commands.send(&args) {
            true => {
                let expect = Expect::Publish {
                    room,
                    event,
                    refresh,
                    local,
                };
                self.expected.push_back((self.now, expect));
            }
            false => self.stats.dropped += 1,
        }
    }

    /// Whether this publish should refresh the room's keys' lifetime: at
    /// most once a quarter ttl per room and process (noted as done).
    fn refresh_due(&mut self, room: &str) -> bool {
        let (now, every) = (self.now, self.history.ttl / 4);
        match self.rooms.get_mut(room) {
            Some(feed) if feed.refreshed.is_some_and(|at| now < at + every) => false,
            Some(feed) => {
                feed.refreshed = Some(now);
                true
            }
            None => true,
        }
    }
}

impl RedisBus {
    /// Sends a post's event on: to local members at once if Redis cannot
    /// bring it back, and through the script if commands reach Redis.
    fn send_post(&mut self, room: &Rc<str>, event: Vec<u8>) {
        let local = !self.subscriptions.is_up();
        if local {
            // Redis cannot bring it back here: this process's members hear it now.
            self.stats.local_only += 1;
            self.arrivals.push(Arrival {
                room: Rc::clone(room),
                epoch: Rc::from(""),
                seq: 0,
                frame: crate::ws::text_frame(&event),
            });
        }
        if self.commands.is_up() {
            // The script closes the JSON, adding the id it assigns.
            let open = event.strip_suffix(b"}}").unwrap_or(&event).to_vec();
            let refresh = self.refresh_due(room);
            self.eval(room.to_string(), open, refresh, local);
        }
    }

    /// Sends the read a repair or replays wait for (failing them at once
    /// when it cannot go).
    fn send_read(&mut self, expect: Expect) {
        let (Expect::Repair { room, read, .. } | Expect::Replays { room, read, .. }) = &expect
        else {
            return;
        };
        match self.commands.send(&self.read_command(room, read)) {
            true => self.expected.push_back((self.now, expect)),
            false => self.read_failed(expect),
        }
    }

    /// The read script's command for `read` of `room`.
    fn read_command(&self, room: &str, read: &Read) -> Vec<Vec<u8>> {
        let verb_and_script = match &self.read_sha {
            Some(sha) => [b"EVALSHA".to_vec(), sha.as_bytes().to_vec()],
            None => [b"EVAL".to_vec(), scripts::READ.as_bytes().to_vec()],
        };
        scripts::read_args(verb_and_script, RoomKeys::new(&self.prefix, room), read)
    }

    /// A read that will not be answered: the repair goes on without it, and
    /// the members resuming are told of a gap (what they missed cannot be known).
    fn read_failed(&mut self, expect: Expect) {
        match expect {
            Expect::Repair {
                room,
                serial,
                where_from,
                ..
            } => self.read_done(&room, serial, where_from, None),
            Expect::Replays { room, members, .. } => {
                for (ticket, _) in members {
                    self.replays.push(MemberReplay {
                        ticket,
                        room: Rc::clone(&room),
                        replay: Replay::unknown(),
                    });
                }
            }
            _ => {}
        }
    }

    /// Loads the publish script (or, `read`, the read script) into Redis's
    /// cache, so that calls name it by its SHA.
    fn load_script(&mut self, read: bool) {
        let script = if read {
            scripts::READ
        } else {
            scripts::PUBLISH
        };
        if self.commands.send(&command(&["SCRIPT", "LOAD", script])) {
            self.expected
                .push_back((self.now, Expect::ScriptLoad { read }));
        }
    }

    /// Reads what the members resuming this turn missed: one read per
    /// room and kind of request (`replays`).
    fn send_reads(&mut self) {
        if self.to_read.is_empty() {
            return;
        }
        let mut by_room: HashMap<Rc<str>, Vec<replays::Asked<ReplayTicket>>> = HashMap::new();
        for (room, ticket, resume) in std::mem::take(&mut self.to_read) {
            by_room.entry(room).or_default().push((ticket, resume));
        }
        for (room, asked) in by_room {
            for (read, members) in replays::group(asked) {
                let expect = Expect::Replays {
                    room: Rc::clone(&room),
                    read,
                    members,
                };
                self.send_read(expect);
            }
        }
    }
}

impl Backend for RedisBus {
    /// Asks Redis about an OTP for connection `asker`; the answer comes out of
    /// `take_answers` (at once, `Unavailable`, when Redis is down).
    fn ask(&mut self, asker: SlotId, query: StoreQuery) {
        let otp_ttl = self.otp_ttl;
        let sent = match &query {
            StoreQuery::Store { otp, user } => {
                let key = format!("{}otp:{otp}", self.prefix);
                let ttl = otp_ttl.as_millis().to_string();
                self.commands
                    .send(&command(&["SET", &key, user, "PX", &ttl, "NX"]))
            }
            StoreQuery::StoreForSession { otp, user, session } => {
                let revoked = format!("{}revoked:{session}", self.prefix);
                let key = format!("{}otp:{otp}", self.prefix);
                let ttl = otp_ttl.as_millis().to_string();
                let args = ["EVAL", SESSION_OTP_SCRIPT, "2", &revoked, &key, user, &ttl];
                self.commands.send(&command(&args))
            }
            StoreQuery::Take { otp } => {
                let key = format!("{}otp:{otp}", self.prefix);
                self.commands.send(&command(&["GETDEL", &key]))
            }
            StoreQuery::Revoke { session, until } => {
                let key = format!("{}revoked:{session}", self.prefix);
                let until = until.to_string();
                self.commands
                    .send(&command(&["SET", &key, "1", "EXAT", &until]))
            }
        };
        match sent {
            true => self
                .expected
                .push_back((self.now, Expect::Otp { asker, query })),
            false => self.answers.push((asker, StoreAnswer::Unavailable)),
        }
    }

    /// OTP answers ready for their connections.
    fn take_answers(&mut self, into: &mut Vec<(SlotId, StoreAnswer)>) {
        into.append(&mut self.answers);
    }

    /// Handles readiness on link `token`.
    fn on_ready(&mut self, token: Token, now: Instant, registry: &Registry) {
        self.now = now;
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
        let change = self.commands.connect_if_due(now, registry);
        self.on_command_link(change);
        let change = self.subscriptions.connect_if_due(now, registry);
        self.on_subscription_link(change);
        self.check_liveness(now, registry);
        self.send_subscription_changes();
        self.send_reads();
        for link in [&mut self.commands, &mut self.subscriptions] {
            if let Err(err) = link.flush() {
                let change = link.reset(&format!("write failed: {err}"), now, registry);
                log::debug!("{change:?}");
            }
        }
    }

    /// When the loop must wake for a reconnect or a probe.
    fn next_deadline(&self) -> Option<Instant> {
        let probe = match self.probe_sent {
            Some(sent) => sent + PROBE_WAIT,
            None => self.next_probe,
        };
        // A replay held back for its room's live messages (not for a repair,
        // whose answer wakes the loop) goes to the hub next turn.
        let replay = self
            .replays
            .iter()
            .any(|r| {
                !self
                    .rooms
                    .get(&r.room)
                    .is_some_and(|feed| feed.sequence.repairing())
            })
            .then_some(self.now);
        [
            self.commands.retry_at(),
            self.subscriptions.retry_at(),
            Some(probe),
            replay,
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
        let event = chat::new_message_json(&post.message, &post.from, &post.sent, None);
        if self.subscriptions.is_up()
            && let Some(feed) = self.rooms.get_mut(room)
            && !feed.subscribed
            && feed.held.len() < MAX_HELD_POSTS
        {
            feed.held.push(event); // until Redis confirms the room's subscription
            return;
        }
        self.send_post(room, event);
    }

    fn room_opened(&mut self, room: &Rc<str>) {
        self.feeds_opened += 1;
        let feed = Feed {
            serial: self.feeds_opened,
            ..Feed::default()
        };
        self.rooms.insert(Rc::clone(room), feed);
        self.to_unsubscribe.retain(|r| r != room);
        self.to_subscribe.push(Rc::clone(room));
    }

    fn room_closed(&mut self, room: &Rc<str>) {
        self.release_held(room); // other processes may still have members there
        self.rooms.remove(room);
        self.to_subscribe.retain(|r| r != room);
        self.to_unsubscribe.push(Rc::clone(room));
    }

    fn replay(&mut self, room: &Rc<str>, ticket: ReplayTicket, resume: Resume) {
        if self.subscriptions.is_up()
            && let Some(feed) = self.rooms.get_mut(room)
            && !feed.subscribed
        {
            // Were it read now, what others publish before the SUBSCRIBE
            // takes effect would be in neither the read nor the live messages.
            feed.resumes.push((ticket, resume));
            return;
        }
        self.to_read.push((Rc::clone(room), ticket, resume));
    }

    fn take_arrivals(&mut self, ready: &mut Vec<Arrival>, lost: &mut Vec<Lost>) {
        // Holes are placed by index in this batch: take them together.
        let base = ready.len();
        ready.append(&mut self.arrivals);
        lost.extend(self.lost.drain(..).map(|hole| Lost {
            before: base + hole.before,
            ..hole
        }));
    }

    /// A replay waits while live messages of its room are in this process
    /// and not yet with the hub (held for a repair of the room, or ready in
    /// this batch, which the hub takes after the replays): the hub must see
    /// them first, as it sees any live message of a member catching up, or
    /// it would take them for messages that came too late.
    fn take_replays(&mut self, ready: &mut Vec<MemberReplay>) {
        if self.replays.is_empty() {
            return;
        }
        let busy: HashSet<&Rc<str>> = self.arrivals.iter().map(|a| &a.room).collect();
        let rooms = &self.rooms;
        let (go, wait): (Vec<MemberReplay>, Vec<MemberReplay>) =
            self.replays.drain(..).partition(|replay| {
                !busy.contains(&replay.room)
                    && !rooms
                        .get(&replay.room)
                        .is_some_and(|feed| feed.sequence.repairing())
            });
        ready.extend(go);
        self.replays = wait;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus() -> RedisBus {
        let target = Target::parse("redis://127.0.0.1:1").unwrap();
        let history = History {
            per_room: 100,
            ttl: Duration::from_secs(600),
        };
        RedisBus::new(
            target,
            "p:".into(),
            history,
            Duration::from_secs(5),
            [Token(1), Token(2)],
            Instant::now(),
        )
    }

    fn message(channel: &str, payload: &str) -> OwnedFrame {
        OwnedFrame::Array(vec![
            OwnedFrame::BulkString(b"message".to_vec()),
            OwnedFrame::BulkString(channel.as_bytes().to_vec()),
            OwnedFrame::BulkString(payload.as_bytes().to_vec()),
        ])
    }

    #[test]
    fn room_messages_are_framed_once_in_order_and_gaps_are_counted() {
        let mut bus = bus();
        bus.room_opened(&Rc::from("x"));
        for seq in [1, 2, 5] {
            bus.on_push(message("p:room:x", &format!("e-{seq} {{\"n\":{seq}}}")));
        }
        bus.on_push(message("p:room:elsewhere", "e-1 {}"));
        let mut ready = Vec::new();
        bus.take_arrivals(&mut ready, &mut Vec::new());
        let payloads: Vec<&[u8]> = ready.iter().map(|a| &a.frame[2..]).collect();
        assert_eq!(payloads, [&b"{\"n\":1}"[..], b"{\"n\":2}", b"{\"n\":5}"]);
        assert!(ready.iter().all(|a| &*a.room == "x"));
        assert_eq!(bus.stats().gaps, 2, "3 and 4 never came");
        assert_eq!(bus.stats().received, 3);
    }

    #[test]
    fn while_redis_is_away_messages_reach_local_members_and_otps_are_refused() {
        let mut bus = bus();
        bus.room_opened(&Rc::from("x"));
        let post = Post {
            message: "hi".into(),
            from: Rc::from("percy"),
            sent: "2026-01-01T00:00:00.000Z".into(),
        };
        bus.publish(&Rc::from("x"), post);
        let mut ready = Vec::new();
        bus.take_arrivals(&mut ready, &mut Vec::new());
        assert_eq!(ready.len(), 1);
        assert_eq!(bus.stats().local_only, 1);
        let id = crate::slab::Slab::new().insert(());
        bus.ask(id, StoreQuery::Take { otp: "x".into() });
        let mut answers = Vec::new();
        bus.take_answers(&mut answers);
        assert_eq!(answers, [(id, StoreAnswer::Unavailable)]);
    }

    #[test]
    fn a_probe_is_answered_subscribed_or_not() {
        let mut bus = bus();
        bus.probe_sent = Some(Instant::now());
        bus.on_push(OwnedFrame::SimpleString(b"PONG".to_vec()));
        assert_eq!(bus.probe_sent, None);
        bus.probe_sent = Some(Instant::now());
        bus.on_push(OwnedFrame::Array(vec![
            OwnedFrame::BulkString(b"pong".to_vec()),
            OwnedFrame::BulkString(Vec::new()),
        ]));
        assert_eq!(bus.probe_sent, None);
    }
}

//! The rooms this process has members in, as the bus follows them: their
//! subscriptions (batched per loop turn), the posts published to them
//! (held until Redis confirms a new subscription), and the messages that
//! arrive on their channels, in the order Redis numbered them.

use std::rc::Rc;
use std::time::Instant;

use redis_protocol::resp2::types::OwnedFrame;

use super::dispatch::{Expect, Outgoing};
use super::presence::Following;
use super::repair::Sequence;
use super::scripts;
use super::{LOGGED_REPLY, RedisBus};
use crate::broker::{Arrival, Lost, Post, PresenceNews, Refusal, ReplayTicket};
use crate::chat;
use crate::history::{Resume, parse_id};
use crate::logging::Truncated;

/// Channels per SUBSCRIBE when a whole set is (re)subscribed.
const SUBSCRIBE_BATCH: usize = 500;
/// Posts held for one room's subscription at most; past it they go at once.
const MAX_HELD_POSTS: usize = 256;
/// Posts kept per room while no command link reaches Redis, at most (and
/// `super::OUT_MAX` bytes in all): past it they stay this process's.
const MAX_OUTBOX: usize = 4096;

/// A room this process has members in: the last message seen, and
/// whether Redis has confirmed its subscription. Until it has, a message
/// published from here could reach Redis before the SUBSCRIBE (they travel on
/// two connections) and never come back to this process's members, so local
/// posts wait in `held` (whole events) for the confirmation. So do resumes:
/// a replay read from the stream before the SUBSCRIBE takes effect would
/// miss what others publish in between, which would not come live either.
#[derive(Default)]
pub(super) struct Feed {
    /// Which opening of the room this is (`RedisBus::feeds_opened`).
    pub(super) serial: u64,
    /// Where the room's numbering stands here, and the repair of its holes.
    pub(super) sequence: Sequence,
    pub(super) subscribed: bool,
    held: Vec<Outgoing>,
    /// Posts delivered here while no command link reached Redis (without
    /// their closing `}}`), published when one does: the other processes
    /// get them late rather than never.
    outbox: Vec<Outgoing>,
    /// Resumes asked before the subscription was confirmed: read then, so
    /// that what the stream has not got yet comes live.
    pub(super) resumes: Vec<(ReplayTicket, Resume)>,
    /// When this process last refreshed the lifetime of the room's keys
    /// (once a quarter ttl is enough: see publish.lua).
    refreshed: Option<Instant>,
    /// Who is in the room, as heard (`presence`).
    pub(super) presence: Following,
}

impl RedisBus {
    /// A post in `room`: held while the room's subscription is unconfirmed
    /// (and the subscription link up), else sent on at once.
    pub(super) fn post(&mut self, room: &Rc<str>, post: Post) {
        let event = chat::new_message_json(&post.message, &post.from, &post.sent, None);
        let outgoing = Outgoing {
            event,
            sender: post.sender,
            retry: false,
            local: false,
        };
        if self.subscriptions.is_up()
            && let Some(feed) = self.rooms.get_mut(room)
            && !feed.subscribed
            && feed.held.len() < MAX_HELD_POSTS
        {
            feed.held.push(outgoing); // until Redis confirms the room's subscription
            return;
        }
        self.send_post(room, outgoing);
    }

    pub(super) fn open_feed(&mut self, room: &Rc<str>) {
        self.feeds_opened += 1;
        let feed = Feed {
            serial: self.feeds_opened,
            ..Feed::default()
        };
        self.rooms.insert(Rc::clone(room), feed);
        self.to_unsubscribe.retain(|r| r != room);
        self.to_subscribe.push(Rc::clone(room));
        if !self.is_up() {
            self.stand_in(room); // its presence is read when Redis is back
        }
    }

    pub(super) fn close_feed(&mut self, room: &Rc<str>) {
        self.release_held(room); // other processes may still have members there
        self.rooms.remove(room);
        self.to_subscribe.retain(|r| r != room);
        self.to_unsubscribe.push(Rc::clone(room));
    }

    /// The subscription link is (back) up: every active room, again, in batches.
    pub(super) fn subscribe_all_again(&mut self) {
        for feed in self.rooms.values_mut() {
            feed.subscribed = false;
        }
        let rooms: Vec<Rc<str>> = self.rooms.keys().cloned().collect();
        for batch in rooms.chunks(SUBSCRIBE_BATCH) {
            self.subscribe(batch, "SUBSCRIBE");
        }
        self.to_subscribe.clear();
        let control = self.control_channel().into_bytes();
        if !self.subscriptions.send(&[b"SUBSCRIBE".to_vec(), control]) {
            self.stats.dropped += 1;
        }
    }

    pub(super) fn send_subscription_changes(&mut self) {
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

    /// Redis confirmed a room's subscription: its held posts go now, and
    /// what they publish will come back here.
    pub(super) fn on_subscribed(&mut self, channel: &[u8]) {
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
        self.read_presence(&room);
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
        for outgoing in held {
            self.send_post(room, outgoing);
        }
    }

    /// The subscription link is down: what waited for a confirmation goes as
    /// any post does now (to local members, and to Redis if commands reach it).
    pub(super) fn release_all_held(&mut self) {
        let rooms: Vec<Rc<str>> = self.rooms.keys().cloned().collect();
        for room in rooms {
            self.release_held(&room);
            self.release_resumes(&room);
        }
    }

    /// Sends a post's event on: to local members at once if Redis cannot
    /// bring it back (either link down: without the command link it is not
    /// published at all), and through the script if commands reach Redis.
    fn send_post(&mut self, room: &Rc<str>, outgoing: Outgoing) {
        let Outgoing { event, sender, .. } = outgoing;
        let local = !self.subscriptions.is_up() || !self.commands.is_up();
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
        // The script closes the JSON, adding the id it assigns.
        let open = Outgoing {
            event: event.strip_suffix(b"}}").unwrap_or(&event).to_vec(),
            sender,
            retry: false,
            local,
        };
        match self.commands.is_up() {
            true => self.publish(room, open),
            false => self.keep_for_later(room, open),
        }
    }

    /// Publishes a post (its event without the closing `}}`); one delivered
    /// here already (`local`) must not be delivered here again.
    fn publish(&mut self, room: &Rc<str>, post: Outgoing) {
        // (A retry's copy is known by its content since its first try.)
        if post.local
            && !post.retry
            && let Some(feed) = self.rooms.get_mut(room)
        {
            feed.sequence.sent_here(post.event.clone());
        }
        let refresh = self.refresh_due(room);
        self.eval(room.to_string(), post, refresh);
    }

    /// A post delivered here while no command link reaches Redis: kept to
    /// publish when one does (`send_outboxes`), within bounds.
    fn keep_for_later(&mut self, room: &Rc<str>, post: Outgoing) {
        let size = post.event.len();
        if let Some(feed) = self.rooms.get_mut(room)
            && feed.outbox.len() < MAX_OUTBOX
            && self.outbox_bytes + size <= super::OUT_MAX
        {
            self.outbox_bytes += size;
            feed.outbox.push(post);
        }
    }

    /// Posts whose publish went unanswered (the command link failed), in
    /// the order they were sent: tried again first thing on the next
    /// connection, before what is said meanwhile (the outboxes are empty
    /// while the command link is up, so these go first). Only with history
    /// kept: the retry looks for the post in the room's stream, lest it be
    /// published twice.
    pub(super) fn retry_later(&mut self, unanswered: Vec<(String, Outgoing)>) {
        self.stats.unconfirmed += unanswered.len() as u64;
        if self.history.per_room == 0 {
            return;
        }
        for (room, post) in unanswered {
            let Some(feed) = self.rooms.get_mut(room.as_str()) else {
                continue; // nobody here is in the room any more
            };
            self.outbox_bytes += post.event.len();
            feed.outbox.push(Outgoing { retry: true, ..post });
        }
    }

    /// The command link is back, its script loaded: what was said here
    /// meanwhile is published, each room's in order.
    pub(super) fn send_outboxes(&mut self) {
        if self.outbox_bytes == 0 {
            return;
        }
        self.outbox_bytes = 0;
        let rooms: Vec<Rc<str>> = self.rooms.keys().cloned().collect();
        for room in rooms {
            let outbox = match self.rooms.get_mut(&room) {
                Some(feed) => std::mem::take(&mut feed.outbox),
                None => continue,
            };
            for post in outbox {
                self.stats.published_late += u64::from(post.local && !post.retry);
                self.publish(&room, post);
            }
        }
    }

    /// Publishes a post (its event without the closing `}}`) to `room`
    /// through the script; `refresh`: the room's keys get their lifetime
    /// again.
    fn eval(&mut self, room: String, post: Outgoing, refresh: bool) {
        let verb_and_script = match &self.script_sha {
            Some(sha) => [b"EVALSHA".to_vec(), sha.as_bytes().to_vec()],
            None => [b"EVAL".to_vec(), scripts::PUBLISH.as_bytes().to_vec()],
        };
        let args = scripts::publish_args(
            verb_and_script,
            (&self.prefix, &room),
            &post,
            self.history,
            refresh,
            &self.master,
        );
        match self.commands.send(&args) {
            true => {
                let expect = Expect::Publish {
                    room,
                    post,
                    refresh,
                };
                self.expected.push_back((self.now, expect));
            }
            false => {
                self.stats.dropped += 1;
                self.refuse(&room, &post, "the server is overloaded");
            }
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

    /// The publish script answered for a post: its id, or why not (the
    /// script gone from Redis's cache: the post goes again with the script).
    pub(super) fn published(
        &mut self,
        room: String,
        post: Outgoing,
        refresh: bool,
        frame: OwnedFrame,
    ) {
        match frame {
            OwnedFrame::BulkString(id) => {
                self.stats.published += 1;
                if post.local
                    && let Some(feed) = self.rooms.get_mut(room.as_str())
                    && let Some((epoch, seq)) = std::str::from_utf8(&id).ok().and_then(parse_id)
                {
                    feed.sequence.numbered_here(&post.event, epoch, seq);
                }
            }
            OwnedFrame::Error(err) if err.starts_with("NOSCRIPT") => {
                // The script cache was flushed: send the script itself, and load it again.
                self.script_sha = None;
                self.eval(room, post, refresh);
                self.load_script(false);
            }
            OwnedFrame::Error(err) if err.starts_with("READONLY") => {
                log::warn!("redis: a publish was refused: {err}");
                self.not_master("the server refused a write");
                self.refuse(&room, &post, "Redis is failing over, send it again");
            }
            other => {
                log::warn!("redis: publish failed: {}", Truncated(&other, LOGGED_REPLY));
                let why = match &other {
                    OwnedFrame::Error(err) if err.starts_with("OOM") => "Redis is out of memory",
                    _ => "Redis refused it",
                };
                self.refuse(&room, &post, why);
            }
        }
    }

    /// A post that will reach nobody: its sender is told (unless its own
    /// process's members have it already, `local`).
    fn refuse(&mut self, room: &str, post: &Outgoing, why: &'static str) {
        if post.local {
            return;
        }
        if let Some((room, _)) = self.rooms.get_key_value(room) {
            self.refusals.push(Refusal {
                sender: post.sender,
                room: Rc::clone(room),
                why,
            });
        }
    }

    /// A room's message: "<epoch>-<seq> <event JSON>". Framed once here,
    /// delivered by the hub to every local member.
    pub(super) fn on_message(&mut self, channel: &[u8], payload: &[u8]) {
        let Some(room) = self.room_of(channel) else {
            return; // unsubscribed meanwhile
        };
        if payload.first() == Some(&b'~') {
            self.on_presence(&room, payload);
            return;
        }
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

    /// The messages ready for the hub, the holes among them, and the news
    /// of who is in the rooms.
    pub(super) fn hand_arrivals(
        &mut self,
        ready: &mut Vec<Arrival>,
        lost: &mut Vec<Lost>,
        presence: &mut Vec<PresenceNews>,
    ) {
        // Holes and news are placed by index in this batch: taken together.
        let base = ready.len();
        self.hand_presence(base, presence);
        ready.append(&mut self.arrivals);
        lost.extend(self.lost.drain(..).map(|hole| Lost {
            before: base + hole.before,
            ..hole
        }));
    }
}

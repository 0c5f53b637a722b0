//! The chat hub: what a chat member's events do. It decodes each event, keeps
//! the room table, and fans a room's messages out into its members' outbound
//! queues, encoding each message once.
//!
//! Who is in each room, for the members that watch it, is `presence`'s job.
//!
//! How a message is ordered and reaches its room is the broker's job. The
//! local broker here delivers at once, in the order messages arrive; a
//! cross-process broker publishes and delivers what comes back, in the order
//! it comes back. Either way the hub delivers only what the broker hands it.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::rc::Rc;
use std::time::{Instant, SystemTime};

use crate::broker::{
    Arrival, Backend, Lost, MemberId, MemberReplay, Post, PresenceNews, Refusal, ReplayTicket,
};
use crate::chat::{self, ClientEvent};
use crate::datetime::rfc3339_utc;
use crate::history::{Entry, Replay, Resume};
use crate::logging::Escaped;
use crate::metrics::Metrics;
use presence::{Audience, Presence};

pub use presence::Limits as PresenceLimits;

mod presence;

/// The sender of what no member sent (the server API's posts): never a
/// member, so never told of a refusal.
const NOBODY: MemberId = MemberId::MAX;

/// The room every new member starts in.
pub const DEFAULT_ROOM: &str = chat::DEFAULT_ROOM;

/// How a frame reaches a member: the connection table implements this.
pub trait Mailboxes {
    /// Queues `frame` for `member`. Returns true when this delivery cut the
    /// member off as a slow consumer.
    fn deliver(&mut self, member: MemberId, frame: &Rc<[u8]>, kind: Delivery) -> bool;
    /// Closes `member`'s WebSocket with 1008 and `reason` (an operator's call).
    fn close(&mut self, member: MemberId, reason: &'static str);
}

/// What kind of frame is being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A room's message: may wait to share a write (`--write-delay`).
    Broadcast,
    /// An answer to this member alone: leaves this loop iteration.
    Reply,
}

/// A member catching up in its current room: it dies when the member moves
/// on or leaves, so nothing of it outlives the room it was for.
struct CatchUp {
    room: Rc<str>,
    ticket: ReplayTicket,
    /// Asked for the last K messages: every live message held is the
    /// member's, even one older than those K (it goes first). Asked `since`
    /// an id: held messages up to it are ones the member already has.
    keeps_older: bool,
    stage: Stage,
}

enum Stage {
    /// The replay is on its way: the room's live messages wait for it, so
    /// none reaches the member before what it missed. `overflowed`: some did
    /// not fit (the member is told of a gap).
    Waiting {
        held: Vec<Arrival>,
        overflowed: bool,
    },
    /// The replay was delivered: what the member has of the room now.
    Replayed(Replayed),
}

/// What a member that was given its replay has of the room's epoch, so a
/// live message that reaches it afterwards is delivered only if it is new.
/// Through Redis the replay and the live messages travel on different
/// connections, so a live copy of a replayed message may still come.
struct Replayed {
    epoch: Rc<str>,
    /// The newest number given (or, after `since`, that the member had).
    given: u64,
    /// The newest number the replay covers: a live message past it ends the
    /// catching up.
    through: u64,
    /// Numbers the member asked for that it was not given (the history no
    /// longer held them when the replay was read): a live one comes too late
    /// to keep the order, so the member is told of a gap instead.
    missing: Range<u64>,
}

/// What to do with a live message for a member that was given its replay.
enum Admit {
    Deliver,
    /// Deliver it, and stop catching up: nothing older can come any more.
    Past,
    /// A copy, or older than what was asked for.
    Drop,
    /// Asked for, not given, too late now: tell the member of a gap.
    Gap,
}

impl Replayed {
    /// The state after `replay` was delivered. `keeps_older`: it answered a
    /// request for the last K, and `older` is the newest held live message
    /// from before those that was given first.
    fn after(replay: &Replay, keeps_older: bool, older: Option<u64>) -> Replayed {
        let given = match (keeps_older, replay.frames.is_empty()) {
            (true, true) => older.unwrap_or(0),
            _ => replay.through,
        };
        let missing = match keeps_older {
            true => 1..replay.from,
            false => replay.after + 1..replay.from,
        };
        Replayed {
            epoch: Rc::clone(&replay.epoch),
            given,
            through: replay.through,
            missing,
        }
    }

    fn admit(&mut self, arrival: &Arrival) -> Admit {
        if arrival.seq == 0 || arrival.epoch != self.epoch {
            return Admit::Deliver; // unnumbered, or a straggler of another epoch
        }
        if arrival.seq <= self.given {
            return match self.missing.contains(&arrival.seq) {
                true => Admit::Gap,
                false => Admit::Drop,
            };
        }
        self.given = arrival.seq;
        match arrival.seq > self.through {
            true => Admit::Past,
            false => Admit::Deliver,
        }
    }
}

/// Live messages held per member catching up, at most (more means the replay
/// is hopelessly late; the member is told of a gap instead).
const MAX_HELD: usize = 4096;

/// A chat member: who it is, its room, and where it sits in that room's list.
struct Member {
    user: Rc<str>,
    room: Rc<str>,
    at: u32,
    /// It asked for history in this room: it is told of messages lost.
    opted_in: bool,
    watch: Watch,
}

/// Whether a member watches its room's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    Off,
    /// It asked, and waits for its snapshot.
    Asked,
    On,
}

#[derive(Default)]
pub struct Hub {
    rooms: Rooms,
    /// Indexed by `MemberId`; `None` for connections that are not chat members.
    members: Vec<Option<Member>>,
    /// Each logged-in name once, however many connections use it.
    users: HashSet<Rc<str>>,
    /// Names whose connection left this turn: forgotten once nothing uses
    /// them any more (presence told the leave).
    departed: HashSet<Rc<str>>,
    /// Members catching up in their current room.
    catching_up: HashMap<MemberId, CatchUp>,
    /// Resume requests made so far: the next ticket's serial.
    tickets: u64,
    /// Reused lists of arrivals, holes and replays being delivered.
    arrivals: Vec<Arrival>,
    lost: Vec<Lost>,
    replays: Vec<MemberReplay>,
    refusals: Vec<Refusal>,
    presence_news: Vec<PresenceNews>,
    presence: Presence,
    /// The wall clock this loop turn (messages are stamped with it), and
    /// that stamp once a message of the turn needed it: formatted once a
    /// turn, not once a message.
    wall: Option<SystemTime>,
    stamp: Option<String>,
    now: Option<Instant>,
}

impl Hub {
    pub fn new(limits: PresenceLimits) -> Hub {
        Hub {
            presence: Presence::new(limits),
            ..Hub::default()
        }
    }

    /// Bytes the hub keeps per connection slot (a member's entry).
    #[cfg(test)]
    pub const MEMBER_SIZE: usize = std::mem::size_of::<Option<Member>>();

    /// A loop turn starts at `now`, `wall` on the calendar (the hub never
    /// reads a clock).
    pub fn begin_turn(&mut self, now: Instant, wall: SystemTime) {
        self.now = Some(now);
        self.wall = Some(wall);
        self.stamp = None;
    }

    /// A chat WebSocket opened for `user`: it joins its first room (the
    /// default one unless it named another) and is given what it asked of
    /// that room's history.
    pub fn join(
        &mut self,
        member: MemberId,
        user: &str,
        entry: Entry,
        mail: &mut dyn Mailboxes,
        broker: &mut dyn Backend,
        metrics: &mut Metrics,
    ) {
        if self.members.len() <= member {
            self.members.resize_with(member + 1, || None);
        }
        let user = match self.users.get(user) {
            Some(name) => Rc::clone(name),
            None => {
                let name: Rc<str> = Rc::from(user);
                self.users.insert(Rc::clone(&name));
                name
            }
        };
        let name = entry.room.as_deref().unwrap_or(DEFAULT_ROOM);
        let (room, at) = self.enter(name, member, &user, broker);
        let opted_in = entry.resume.is_some();
        if let Some(resume) = entry.resume {
            self.ask_replay(&room, member, resume, broker);
        }
        let watch = self.start_watching(&room, entry.presence);
        self.members[member] = Some(Member {
            user,
            room,
            at,
            opted_in,
            watch,
        });
        self.deliver_arrivals(mail, broker, metrics);
    }

    /// The member's connection is gone.
    pub fn leave(&mut self, member: MemberId, broker: &mut dyn Backend) {
        self.catching_up.remove(&member);
        if let Some(left) = self.members.get_mut(member).and_then(Option::take) {
            self.stop_watching(&left.room, left.watch);
            self.exit(&left.room, left.at, &left.user, broker);
            // Presence holds the name until this leave is told.
            self.departed.insert(left.user);
        }
    }

    /// The members logged in as `user` (an operator disconnects them).
    pub fn members_of(&self, user: &str) -> Vec<MemberId> {
        (self.members.iter().enumerate())
            .filter(|(_, m)| m.as_ref().is_some_and(|m| &*m.user == user))
            .map(|(id, _)| id)
            .collect()
    }

    /// A message the server API posts, `(room, message, from)`: ordered,
    /// numbered and delivered like any member's.
    pub fn post_as(
        &mut self,
        (room, message, from): (&str, String, &str),
        mail: &mut dyn Mailboxes,
        broker: &mut dyn Backend,
        metrics: &mut Metrics,
    ) {
        let post = Post {
            message,
            from: Rc::from(from),
            sent: self.stamp(),
            sender: NOBODY,
        };
        broker.publish(&Rc::from(room), post);
        self.deliver_arrivals(mail, broker, metrics);
    }

    /// This turn's date for a message, formatted once a turn.
    fn stamp(&mut self) -> String {
        let wall = self.wall.unwrap_or(SystemTime::UNIX_EPOCH);
        self.stamp.get_or_insert_with(|| rfc3339_utc(wall)).clone()
    }

    /// The user a member logged in as.
    pub fn user(&self, member: MemberId) -> Option<&str> {
        self.member(member).map(|m| &*m.user)
    }

    /// The room a member is in.
    #[cfg(test)]
    pub fn room_of(&self, member: MemberId) -> Option<&str> {
        self.member(member).map(|m| &*m.room)
    }

    pub fn room_count(&self) -> usize {
        self.rooms.count()
    }

    /// Acts on one text message from `member`, then delivers whatever the
    /// broker has ready.
    pub fn handle(
        &mut self,
        member: MemberId,
        text: &str,
        mail: &mut dyn Mailboxes,
        broker: &mut dyn Backend,
        metrics: &mut Metrics,
    ) {
        let Some(sender) = self.member(member) else {
            return;
        };
        match chat::decode(text) {
            Ok(ClientEvent::SendMessage { message }) => {
                metrics.messages_received += 1;
                let (from, room) = (Rc::clone(&sender.user), Rc::clone(&sender.room));
                let sent = self.stamp();
                let post = Post {
                    message,
                    from,
                    sent,
                    sender: member,
                };
                broker.publish(&room, post);
            }
            Ok(ClientEvent::ChangeRoom {
                name,
                resume,
                presence,
            }) => {
                let (user, from, to) =
                    (Escaped(&sender.user), Escaped(&sender.room), Escaped(&name));
                log::debug!("{user} moves from {from} to {to}");
                let moved = self.change_room(member, &name, broker);
                if moved {
                    // What it was catching up on belongs to the room it left.
                    self.catching_up.remove(&member);
                }
                if let Some(Some(m)) = self.members.get_mut(member)
                    && (moved || resume.is_some())
                {
                    m.opted_in = resume.is_some();
                }
                if let Some(Some(m)) = self.members.get(member)
                    && (moved || presence || m.watch != Watch::Off)
                {
                    let (room, was) = (Rc::clone(&m.room), m.watch);
                    if !moved {
                        self.stop_watching(&room, was);
                    }
                    let watch = self.start_watching(&room, presence);
                    if let Some(Some(m)) = self.members.get_mut(member) {
                        m.watch = watch;
                    }
                }
                if let Some(resume) = resume
                    && let Some(Some(moved)) = self.members.get(member)
                {
                    let room = Rc::clone(&moved.room);
                    self.ask_replay(&room, member, resume, broker);
                }
            }
            Err(why) => {
                log::debug!("{}: bad event: {}", Escaped(&sender.user), Escaped(&why));
                if mail.deliver(member, &chat::error_frame(&why), Delivery::Reply) {
                    metrics.slow_consumer_disconnects += 1;
                }
            }
        }
        self.deliver_arrivals(mail, broker, metrics);
    }

    /// Fans every message the broker has ready out to its room's members.
    pub fn deliver_arrivals(
        &mut self,
        mail: &mut dyn Mailboxes,
        broker: &mut dyn Backend,
        metrics: &mut Metrics,
    ) {
        // Replays first: what a member missed comes before what is new.
        broker.take_replays(&mut self.replays);
        let mut replays = std::mem::take(&mut self.replays);
        for replay in replays.drain(..) {
            self.deliver_replay(replay, mail, metrics);
        }
        self.replays = replays;
        broker.take_refusals(&mut self.refusals);
        let mut refusals = std::mem::take(&mut self.refusals);
        for refusal in refusals.drain(..) {
            let still_there = self
                .member(refusal.sender)
                .is_some_and(|m| m.room == refusal.room);
            if still_there {
                let frame = chat::error_frame(&format!("message not delivered: {}", refusal.why));
                if mail.deliver(refusal.sender, &frame, Delivery::Reply) {
                    metrics.slow_consumer_disconnects += 1;
                }
            }
        }
        self.refusals = refusals;
        broker.take_arrivals(&mut self.arrivals, &mut self.lost, &mut self.presence_news);
        let mut lost = std::mem::take(&mut self.lost);
        let mut holes = lost.drain(..).peekable();
        let mut news = std::mem::take(&mut self.presence_news);
        let mut presence = news.drain(..).peekable();
        for (index, arrival) in self.arrivals.drain(..).enumerate() {
            while let Some(hole) = holes.next_if(|hole| hole.before <= index) {
                tell_lost(&self.rooms, &self.members, &hole, mail, metrics);
            }
            while let Some(news) = presence.next_if(|news| news.before <= index) {
                self.presence.apply(news);
            }
            if let Some(now) = self.now
                && self.presence.has_news(&arrival.room)
            {
                // Who came and left before this message is told first.
                let (rooms, members) = (&self.rooms, &mut self.members);
                self.presence.flush_room(&arrival.room, now, &mut |room, audience, frame| {
                    tell_watchers(rooms, members, room, audience, frame, mail, metrics);
                });
            }
            let members = self.rooms.members(&arrival.room);
            for &member in members {
                if !self.catching_up.is_empty()
                    && let Some(catch_up) = self.catching_up.get_mut(&member)
                    && catch_up.room == arrival.room
                {
                    match &mut catch_up.stage {
                        Stage::Waiting { held, overflowed } => {
                            match held.len() < MAX_HELD {
                                true => held.push(arrival.share()),
                                false => *overflowed = true,
                            }
                            continue;
                        }
                        Stage::Replayed(replayed) => match replayed.admit(&arrival) {
                            Admit::Deliver => {}
                            Admit::Past => {
                                self.catching_up.remove(&member);
                            }
                            Admit::Drop => continue,
                            Admit::Gap => {
                                let oldest = format!("{}-{}", arrival.epoch, replayed.missing.end);
                                let gap = chat::history_gap_frame(&arrival.room, Some(&oldest));
                                if mail.deliver(member, &gap, Delivery::Reply) {
                                    metrics.slow_consumer_disconnects += 1;
                                }
                                continue;
                            }
                        },
                    }
                }
                if mail.deliver(member, &arrival.frame, Delivery::Broadcast) {
                    metrics.slow_consumer_disconnects += 1;
                }
            }
            metrics.messages_delivered += members.len() as u64;
        }
        for hole in holes {
            tell_lost(&self.rooms, &self.members, &hole, mail, metrics);
        }
        self.lost = lost;
        for news in presence {
            self.presence.apply(news);
        }
        self.presence_news = news;
    }

    /// Asks the broker for what `member` missed in `room`; live messages of
    /// the room wait for it. A request made while an earlier one in the same
    /// room is still on its way keeps what the earlier one held.
    fn ask_replay(
        &mut self,
        room: &Rc<str>,
        member: MemberId,
        resume: Resume,
        broker: &mut dyn Backend,
    ) {
        self.tickets += 1;
        let ticket = ReplayTicket::new(member, self.tickets);
        let stage = match self.catching_up.remove(&member) {
            Some(CatchUp {
                room: earlier,
                stage: stage @ Stage::Waiting { .. },
                ..
            }) if earlier == *room => stage,
            _ => Stage::Waiting {
                held: Vec::new(),
                overflowed: false,
            },
        };
        let catch_up = CatchUp {
            room: Rc::clone(room),
            ticket,
            keeps_older: matches!(resume, Resume::Last(_)),
            stage,
        };
        self.catching_up.insert(member, catch_up);
        broker.replay(room, ticket, resume);
    }

    /// A member's replay: the gap (if any), what it missed, then the live
    /// messages held meanwhile that the replay did not already include. A
    /// replay for a request the member no longer has is dropped.
    fn deliver_replay(
        &mut self,
        MemberReplay {
            ticket,
            room,
            replay,
        }: MemberReplay,
        mail: &mut dyn Mailboxes,
        metrics: &mut Metrics,
    ) {
        let member = ticket.member;
        let current = self
            .catching_up
            .get(&member)
            .is_some_and(|c| c.ticket == ticket && c.room == room);
        if !current {
            return;
        }
        let Some(CatchUp {
            stage: Stage::Waiting { held, overflowed },
            keeps_older,
            ..
        }) = self.catching_up.remove(&member)
        else {
            return; // already answered
        };
        let same_epoch = |a: &Arrival| a.seq != 0 && a.epoch == replay.epoch;
        // Asked for the last K: live messages held from before those K are
        // the member's too, and go first.
        let older = |a: &Arrival| keeps_older && same_epoch(a) && a.seq <= replay.after;
        // Held messages the replay should have carried but the history no
        // longer kept when it was read: a gap, as is a hold that overflowed.
        let lost = held
            .iter()
            .any(|a| !older(a) && same_epoch(a) && a.seq > replay.after && a.seq < replay.from);
        let gap = match (replay.gap.clone(), overflowed || lost) {
            (Some(oldest), _) => Some(oldest),
            (None, true) => Some(
                (replay.from <= replay.through)
                    .then(|| format!("{}-{}", replay.epoch, replay.from)),
            ),
            (None, false) => None,
        };
        let mut frames: Vec<&Rc<[u8]>> = Vec::new();
        let gap_frame = gap.map(|oldest| chat::history_gap_frame(&room, oldest.as_deref()));
        frames.extend(&gap_frame);
        let older_held = held.iter().filter(|a| older(a));
        let given = older_held.clone().map(|a| a.seq).max();
        frames.extend(older_held.map(|a| &a.frame));
        frames.extend(&replay.frames);
        let mut replayed = Replayed::after(&replay, keeps_older, given);
        for arrival in held.iter().filter(|a| !older(a)) {
            if let Admit::Deliver | Admit::Past = replayed.admit(arrival) {
                frames.push(&arrival.frame);
            }
        }
        for frame in frames {
            if mail.deliver(member, frame, Delivery::Reply) {
                metrics.slow_consumer_disconnects += 1;
            }
        }
        let catch_up = CatchUp {
            room,
            ticket,
            keeps_older,
            stage: Stage::Replayed(replayed),
        };
        self.catching_up.insert(member, catch_up);
    }

    /// Moves `member` to room `name`; false when it was already there.
    fn change_room(&mut self, member: MemberId, name: &str, broker: &mut dyn Backend) -> bool {
        let Some(Some(current)) = self.members.get(member) else {
            return false;
        };
        if &*current.room == name {
            return false;
        }
        let (old_room, old_at, user) = (Rc::clone(&current.room), current.at, Rc::clone(&current.user));
        self.stop_watching(&old_room, current.watch);
        self.exit(&old_room, old_at, &user, broker);
        let (room, at) = self.enter(name, member, &user, broker);
        if let Some(Some(moved)) = self.members.get_mut(member) {
            moved.room = room;
            moved.at = at;
        }
        true
    }

    /// Adds `member`, logged in as `user`, to `room`, telling the broker
    /// about a room new here.
    fn enter(
        &mut self,
        room: &str,
        member: MemberId,
        user: &Rc<str>,
        broker: &mut dyn Backend,
    ) -> (Rc<str>, u32) {
        let (name, at, opened) = self.rooms.join(room, member);
        if opened {
            self.presence.opened(&name);
            broker.room_opened(&name);
        }
        self.presence.entered(&name, user);
        (name, at)
    }

    /// Takes whoever sits at `at` (logged in as `user`) out of `room`; the
    /// member moved into that seat learns its new place.
    fn exit(&mut self, room: &Rc<str>, at: u32, user: &Rc<str>, broker: &mut dyn Backend) {
        let (moved, closed) = self.rooms.leave(room, at);
        if let Some(Some(member)) = moved.and_then(|m| self.members.get_mut(m)) {
            member.at = at;
        }
        self.presence.exited(room, user);
        if closed {
            self.presence.closed(room);
            broker.room_closed(room);
        }
    }

    /// A member in `room` that `asked` watches its presence from now on.
    fn start_watching(&mut self, room: &Rc<str>, asked: bool) -> Watch {
        match asked {
            true => {
                self.presence.watch(room);
                Watch::Asked
            }
            false => Watch::Off,
        }
    }

    fn stop_watching(&mut self, room: &Rc<str>, watch: Watch) {
        if watch != Watch::Off {
            self.presence.unwatch(room, watch == Watch::On);
        }
    }

    /// This turn's changes of who is here wait to go to the back end.
    pub fn presence_unpublished(&self) -> bool {
        self.presence.unpublished()
    }

    /// Hands this turn's changes of who is here to the back end.
    pub fn publish_presence(&mut self, broker: &mut dyn Backend) {
        self.presence.publish(broker);
    }

    /// Tells the members watching each room what changed in it this turn.
    pub fn flush_presence(&mut self, now: Instant, mail: &mut dyn Mailboxes, metrics: &mut Metrics) {
        let (rooms, members) = (&self.rooms, &mut self.members);
        self.presence.flush(now, &mut |room, audience, frame| {
            tell_watchers(rooms, members, room, audience, frame, mail, metrics);
        });
        // The table's and `departed`'s: nobody else uses the name now.
        for name in self.departed.drain() {
            if Rc::strong_count(&name) == 2 {
                self.users.remove(&name);
            }
        }
    }

    /// When a room's count, held for its interval, is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.presence.next_deadline()
    }

    fn member(&self, member: MemberId) -> Option<&Member> {
        self.members.get(member).and_then(Option::as_ref)
    }
}

/// Sends `frame` to the members of `room` that watch its presence and are
/// in `audience`; those given a snapshot watch from now on.
fn tell_watchers(
    rooms: &Rooms,
    members: &mut [Option<Member>],
    room: &Rc<str>,
    audience: Audience,
    frame: &Rc<[u8]>,
    mail: &mut dyn Mailboxes,
    metrics: &mut Metrics,
) {
    for &id in rooms.members(room) {
        let Some(Some(member)) = members.get_mut(id) else {
            continue;
        };
        let wanted = match (audience, member.watch) {
            (_, Watch::Off) => false,
            (Audience::Watching, watch) => watch == Watch::On,
            (Audience::Newcomers, watch) => watch == Watch::Asked,
            (Audience::All, _) => true,
        };
        if !wanted {
            continue;
        }
        if audience != Audience::Watching {
            member.watch = Watch::On;
        }
        if mail.deliver(id, frame, Delivery::Broadcast) {
            metrics.slow_consumer_disconnects += 1;
        }
    }
}

/// Tells the members of a room that opted in to history of messages lost
/// for good; the others (the tutorial's page) never see a new event type.
fn tell_lost(
    rooms: &Rooms,
    members: &[Option<Member>],
    hole: &Lost,
    mail: &mut dyn Mailboxes,
    metrics: &mut Metrics,
) {
    let mut frame = None;
    for &member in rooms.members(&hole.room) {
        if members
            .get(member)
            .and_then(Option::as_ref)
            .is_some_and(|m| m.opted_in)
        {
            let frame =
                frame.get_or_insert_with(|| chat::history_gap_frame(&hole.room, Some(&hole.next)));
            if mail.deliver(member, frame, Delivery::Reply) {
                metrics.slow_consumer_disconnects += 1;
            }
        }
    }
}

/// Room name -> its members. Members hold the same `Rc<str>` name as the
/// table, so a room's name is stored once however many join it, and each
/// member knows its seat, so leaving is a swap with the last seat: O(1).
#[derive(Default)]
struct Rooms {
    members: HashMap<Rc<str>, Vec<MemberId>>,
}

impl Rooms {
    /// Seats `member` in `room`: the room's shared name, the seat, and
    /// whether the room was empty before.
    fn join(&mut self, room: &str, member: MemberId) -> (Rc<str>, u32, bool) {
        if let Some(seats) = self.members.get_mut(room) {
            seats.push(member);
            // Seats never outnumber connections, far below 2^32.
            let at = u32::try_from(seats.len() - 1).unwrap_or(u32::MAX);
            if let Some((name, _)) = self.members.get_key_value(room) {
                return (Rc::clone(name), at, false);
            }
        }
        let name: Rc<str> = Rc::from(room);
        self.members.insert(Rc::clone(&name), vec![member]);
        (name, 0, true)
    }

    /// Empties seat `at`: the member moved into it (if any), and whether the
    /// room is now empty (and forgotten).
    fn leave(&mut self, room: &str, at: u32) -> (Option<MemberId>, bool) {
        let Some(seats) = self.members.get_mut(room) else {
            return (None, false);
        };
        let at = at as usize;
        if at >= seats.len() {
            return (None, false);
        }
        seats.swap_remove(at);
        let moved = seats.get(at).copied();
        if seats.is_empty() {
            self.members.remove(room);
            return (None, true);
        }
        (moved, false)
    }

    fn members(&self, room: &str) -> &[MemberId] {
        self.members.get(room).map(Vec::as_slice).unwrap_or(&[])
    }

    fn count(&self) -> usize {
        self.members.len()
    }
}

#[cfg(test)]
mod tests;

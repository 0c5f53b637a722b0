//! Who is in each room, shared through Redis.
//!
//! Each process owns its entries in a room's presence hash
//! (`<prefix>{room:<name>}:presence`: its users' connections, and the
//! version of its last news there), and changes them once a turn per room
//! that changed, with one script that also publishes the news on the
//! room's channel: so every process hears them in order with the room's
//! messages, its own included. A process that opens a room reads the hash
//! once the room's subscription is confirmed; news heard before the read
//! is answered waits, and the versions tell which of it the read already
//! holds.
//!
//! Every process refreshes a heartbeat key (`<prefix>process:<id>`) each
//! `HEARTBEAT`, which lives two beats, and checks the keys of the processes
//! in its rooms: one whose key is gone has died (or was cut off), and its
//! entries are taken out of each room with news of it, so a killed process
//! leaves no ghosts after three beats at most. A process that finds its own
//! key gone, or comes back after an outage, publishes its whole lists again.
//! While no command link reaches Redis, this process's news is heard here
//! at once, as its messages are; the rooms are read again when it is back.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;

use super::dispatch::Expect;
use super::{LOGGED_REPLY, RedisBus, scripts};
use crate::broker::{PresenceChange, PresenceNews, Seats};
use crate::logging::Truncated;

/// How often a process refreshes its heartbeat key and checks the others'.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a heartbeat key lives unrefreshed.
const HEARTBEAT_TTL: Duration = Duration::from_secs(2);
/// How long a room's presence hash lives after its last change; each
/// process publishes its whole list again every quarter of it.
const HASH_TTL: Duration = Duration::from_secs(3600);
/// News held per room while its hash is read, at most.
const MAX_WAITING: usize = 4096;
/// Updates to a room that finds this script's text each time (short, and
/// sent once a turn per changed room at most).
const PRESENCE: &str = include_str!("presence.lua");
const GONE: &str = include_str!("presence_gone.lua");

/// This process in the rooms' presence.
pub(super) struct Roster {
    /// The version of this process's last news.
    version: u64,
    /// This process's users per room as last published, and when the whole
    /// list last went.
    mine: HashMap<Rc<str>, Mine>,
    news: Vec<PresenceNews>,
    next_beat: Instant,
}

struct Mine {
    users: HashMap<Rc<str>, u32>,
    whole_at: Instant,
}

/// A room's presence as this process follows it (one per feed).
#[derive(Default)]
pub(super) struct Following {
    /// The hash was read: news is handed on as it comes.
    loaded: bool,
    /// Redis was away before the hash could be read: the room was handed
    /// on with this process's users only, until it is read.
    stood_in: bool,
    /// News heard before the read was answered.
    waiting: Vec<Heard>,
    /// The newest version heard of each process in the room.
    versions: HashMap<Rc<str>, u64>,
}

/// News heard on a room's channel.
#[derive(Debug, PartialEq, Eq)]
enum Heard {
    News {
        process: Rc<str>,
        version: u64,
        whole: bool,
        users: Seats,
    },
    Gone(Rc<str>),
}

impl Roster {
    pub(super) fn new(now: Instant) -> Roster {
        Roster {
            version: 0,
            mine: HashMap::new(),
            news: Vec::new(),
            next_beat: now,
        }
    }

    pub(super) fn next_beat(&self) -> Instant {
        self.next_beat
    }
}

impl RedisBus {
    /// This process's users in `room` changed: published, and heard here at
    /// once if Redis cannot bring the news back.
    pub(super) fn presence_changed(&mut self, room: &Rc<str>, users: Seats) {
        let now = self.now;
        let mine = (self.roster.mine.entry(Rc::clone(room))).or_insert_with(|| Mine {
            users: HashMap::new(),
            // Its first news sets the hash's lifetime.
            whole_at: now,
        });
        for (user, connections) in &users {
            match connections {
                0 => mine.users.remove(user),
                n => mine.users.insert(Rc::clone(user), *n),
            };
        }
        if mine.users.is_empty() {
            self.roster.mine.remove(room);
        }
        self.roster.version += 1;
        if !self.subscriptions.is_up() || !self.commands.is_up() {
            let change = PresenceChange::Process {
                process: Rc::clone(&self.process),
                users: users.clone(),
                whole: false,
            };
            self.hear_presence(room, change);
        }
        if self.commands.is_up() {
            self.send_presence(room, &users, false);
        }
    }

    fn hear_presence(&mut self, room: &Rc<str>, change: PresenceChange) {
        self.roster.news.push(PresenceNews {
            room: Rc::clone(room),
            before: self.arrivals.len(),
            change,
        });
    }

    fn send_presence(&mut self, room: &Rc<str>, users: &Seats, whole: bool) {
        let keys = scripts::RoomKeys::new(&self.prefix, room);
        let mut args = vec![
            b"EVAL".to_vec(),
            PRESENCE.as_bytes().to_vec(),
            b"1".to_vec(),
            keys.presence.into_bytes(),
            scripts::channel(&self.prefix, room).into_bytes(),
            self.process.as_bytes().to_vec(),
            self.roster.version.to_string().into_bytes(),
            if whole { b"1".to_vec() } else { b"0".to_vec() },
            HASH_TTL.as_millis().to_string().into_bytes(),
        ];
        for (user, connections) in users {
            args.push(user.as_bytes().to_vec());
            args.push(connections.to_string().into_bytes());
        }
        self.command(args, Expect::Presence);
    }

    /// Sends a command whose answer is `expect`; counted if it cannot go.
    fn command(&mut self, args: Vec<Vec<u8>>, expect: Expect) {
        match self.commands.send(&args) {
            true => self.expected.push_back((self.now, expect)),
            false => self.stats.dropped += 1,
        }
    }

    /// Publishes this process's whole list in `room` (a new version).
    fn send_whole(&mut self, room: &Rc<str>) {
        let users: Seats = match self.roster.mine.get_mut(room) {
            Some(mine) => {
                mine.whole_at = self.now;
                mine.users.iter().map(|(u, n)| (Rc::clone(u), *n)).collect()
            }
            None => Vec::new(),
        };
        self.roster.version += 1;
        self.send_presence(room, &users, true);
    }

    /// Redis is away: rooms whose hash was not read yet are handed on with
    /// this process's users only (so their watchers are not kept waiting
    /// for the whole outage), once; they are read when Redis is back.
    pub(super) fn presence_went_down(&mut self) {
        let unread: Vec<Rc<str>> = (self.rooms.iter())
            .filter(|(_, feed)| !feed.presence.loaded && !feed.presence.stood_in)
            .map(|(room, _)| Rc::clone(room))
            .collect();
        for room in unread {
            self.stand_in(&room);
        }
    }

    /// Hands `room` on with this process's users only.
    pub(super) fn stand_in(&mut self, room: &Rc<str>) {
        if let Some(feed) = self.rooms.get_mut(room) {
            feed.presence.stood_in = true;
        }
        let users = match self.roster.mine.get(room) {
            Some(mine) => mine.users.iter().map(|(u, n)| (Rc::clone(u), *n)).collect(),
            None => Vec::new(),
        };
        let processes = vec![(Rc::clone(&self.process), users)];
        self.hear_presence(room, PresenceChange::Snapshot { processes });
    }

    /// The command link is (back) up: the heartbeat first, then every
    /// room's whole list (what changed while Redis was away was heard only
    /// here), and the reads of rooms whose read was lost with the link.
    pub(super) fn presence_came_up(&mut self) {
        self.beat(true);
        let rooms: Vec<Rc<str>> = self.roster.mine.keys().cloned().collect();
        for room in rooms {
            self.send_whole(&room);
        }
        let unread: Vec<Rc<str>> = (self.rooms.iter())
            .filter(|(_, feed)| feed.subscribed && !feed.presence.loaded)
            .map(|(room, _)| Rc::clone(room))
            .collect();
        for room in unread {
            self.read_presence(&room);
        }
    }

    /// Refreshes this process's heartbeat key (`SET ... GET`: an answer of
    /// nil says it had expired); `after_outage`: the whole lists go anyway.
    fn beat(&mut self, after_outage: bool) {
        let args = [
            b"SET".to_vec(),
            format!("{}process:{}", self.prefix, self.process).into_bytes(),
            b"1".to_vec(),
            b"PX".to_vec(),
            HEARTBEAT_TTL.as_millis().to_string().into_bytes(),
            b"GET".to_vec(),
        ];
        self.command(args.to_vec(), Expect::Heartbeat { after_outage });
        self.roster.next_beat = self.now + HEARTBEAT;
    }

    /// Each beat: the heartbeat, a check of every other process heard of in
    /// the rooms, and the whole list of rooms whose hash needs its lifetime.
    pub(super) fn beat_if_due(&mut self) {
        if self.now < self.roster.next_beat || !self.commands.is_up() {
            return;
        }
        self.beat(false);
        let others: HashSet<Rc<str>> = (self.rooms.values())
            .flat_map(|feed| feed.presence.versions.keys())
            .filter(|process| **process != self.process)
            .cloned()
            .collect();
        for process in others {
            let key = format!("{}process:{process}", self.prefix);
            self.command(vec![b"EXISTS".to_vec(), key.into_bytes()], Expect::Alive { process });
        }
        let due = self.now.checked_sub(HASH_TTL / 4);
        let stale: Vec<Rc<str>> = (self.roster.mine.iter())
            .filter(|(_, mine)| due.is_some_and(|due| mine.whole_at <= due))
            .map(|(room, _)| Rc::clone(room))
            .collect();
        for room in stale {
            self.send_whole(&room);
        }
    }

    /// The heartbeat's answer: nil if the key had expired, so others may
    /// have taken this process's users out: they go again.
    pub(super) fn beat_answered(&mut self, after_outage: bool, frame: OwnedFrame) {
        match frame {
            OwnedFrame::Null if !after_outage && !self.roster.mine.is_empty() => {
                log::warn!("redis: this process's heartbeat had expired: its users are published again");
                let rooms: Vec<Rc<str>> = self.roster.mine.keys().cloned().collect();
                for room in rooms {
                    self.send_whole(&room);
                }
            }
            OwnedFrame::Error(err) => log::warn!("redis: heartbeat refused: {err}"),
            _ => {}
        }
    }

    /// Whether `process`'s heartbeat key exists: if not, its users are
    /// taken out of every room this process follows them in.
    pub(super) fn alive_answered(&mut self, process: Rc<str>, frame: OwnedFrame) {
        if frame != OwnedFrame::Integer(0) {
            return;
        }
        let rooms: Vec<Rc<str>> = (self.rooms.iter())
            .filter(|(_, feed)| feed.presence.versions.contains_key(&process))
            .map(|(room, _)| Rc::clone(room))
            .collect();
        log::info!(
            "redis: process {process} stopped its heartbeat: its users leave {} room(s)",
            rooms.len()
        );
        for room in rooms {
            let keys = scripts::RoomKeys::new(&self.prefix, &room);
            let args = vec![
                b"EVAL".to_vec(),
                GONE.as_bytes().to_vec(),
                b"1".to_vec(),
                keys.presence.into_bytes(),
                scripts::channel(&self.prefix, &room).into_bytes(),
                process.as_bytes().to_vec(),
            ];
            self.command(args, Expect::Presence);
            // Heard back on the channel; until then it is not checked again.
            if let Some(feed) = self.rooms.get_mut(&room) {
                feed.presence.versions.remove(&process);
            }
        }
    }

    /// A presence script's answer: only a refusal says anything.
    pub(super) fn presence_answered(&mut self, frame: OwnedFrame) {
        if let OwnedFrame::Error(err) = frame {
            log::warn!("redis: presence not recorded: {err}");
        }
    }

    /// `room`'s subscription is confirmed (again): its hash is read, and
    /// news heard until the answer waits for it.
    pub(super) fn read_presence(&mut self, room: &Rc<str>) {
        let Some(feed) = self.rooms.get_mut(room) else {
            return;
        };
        feed.presence = Following::default();
        let keys = scripts::RoomKeys::new(&self.prefix, room);
        let serial = feed.serial;
        let args = vec![b"HGETALL".to_vec(), keys.presence.into_bytes()];
        let room = Rc::clone(room);
        self.command(args, Expect::PresenceRead { room, serial });
    }

    /// The room's hash, read: with the news heard meanwhile that it does not
    /// hold yet, everyone in the room, handed on as one snapshot.
    pub(super) fn presence_read(&mut self, room: Rc<str>, serial: u64, frame: OwnedFrame) {
        let Some(feed) = self.rooms.get_mut(&room).filter(|f| f.serial == serial) else {
            return; // closed (and maybe opened again) meanwhile
        };
        let mut read = match parse_hash(frame) {
            Ok(read) => read,
            Err(why) => {
                log::warn!("redis: room {room:?}: presence unreadable: {why}");
                HashMap::new()
            }
        };
        let following = &mut feed.presence;
        following.versions = read.iter().map(|(p, (v, _))| (Rc::clone(p), *v)).collect();
        for heard in std::mem::take(&mut following.waiting) {
            if let Some(change) = following.admit(heard) {
                apply(&mut read, change);
            }
        }
        following.loaded = true;
        let processes = read
            .into_iter()
            .map(|(process, (_, users))| (process, users.into_iter().collect()))
            .collect();
        self.hear_presence(&room, PresenceChange::Snapshot { processes });
    }

    /// News on a room's channel (`~p ...` or `~gone ...`).
    pub(super) fn on_presence(&mut self, room: &Rc<str>, payload: &[u8]) {
        let Some(heard) = parse_heard(payload) else {
            log::warn!(
                "redis: room {room:?}: presence news out of shape: {}",
                Truncated(&String::from_utf8_lossy(payload), LOGGED_REPLY)
            );
            return;
        };
        let Some(feed) = self.rooms.get_mut(room) else {
            return;
        };
        let following = &mut feed.presence;
        if !following.loaded {
            if following.waiting.len() < MAX_WAITING {
                following.waiting.push(heard);
            }
            return;
        }
        if let Some(change) = following.admit(heard) {
            self.hear_presence(room, change);
        }
    }

    /// The news ready for the hub, placed among the arrivals taken with it.
    pub(super) fn hand_presence(&mut self, base: usize, into: &mut Vec<PresenceNews>) {
        into.extend(self.roster.news.drain(..).map(|news| PresenceNews {
            before: base + news.before,
            ..news
        }));
    }
}

impl Following {
    /// What `heard` changes, unless the room's read (or earlier news)
    /// already holds it.
    fn admit(&mut self, heard: Heard) -> Option<PresenceChange> {
        match heard {
            Heard::News {
                process,
                version,
                whole,
                users,
            } => {
                let known = self.versions.entry(Rc::clone(&process)).or_default();
                if version <= *known {
                    return None;
                }
                *known = version;
                Some(PresenceChange::Process {
                    process,
                    users,
                    whole,
                })
            }
            Heard::Gone(process) => {
                self.versions.remove(&process);
                Some(PresenceChange::Process {
                    process,
                    users: Vec::new(),
                    whole: true,
                })
            }
        }
    }
}

/// A room's hash as read: each process's version and users.
type Read = HashMap<Rc<str>, (u64, HashMap<Rc<str>, u32>)>;

/// Applies news to a read hash (news heard while it was read).
fn apply(read: &mut Read, change: PresenceChange) {
    let PresenceChange::Process {
        process,
        users,
        whole,
    } = change
    else {
        return;
    };
    let (_, entries) = read.entry(process).or_default();
    if whole {
        entries.clear();
    }
    for (user, connections) in users {
        match connections {
            0 => entries.remove(&user),
            n => entries.insert(user, n),
        };
    }
}

/// `HGETALL`'s answer: "<process>" -> version, "<process>:<user>" -> connections.
fn parse_hash(frame: OwnedFrame) -> Result<Read, String> {
    let OwnedFrame::Array(parts) = frame else {
        return Err(format!("not an array: {}", Truncated(&frame, LOGGED_REPLY)));
    };
    let mut read = Read::new();
    let mut parts = parts.into_iter();
    while let (Some(field), Some(value)) = (parts.next(), parts.next()) {
        let (OwnedFrame::BulkString(field), OwnedFrame::BulkString(value)) = (field, value) else {
            return Err("a field or value that is not a string".into());
        };
        let (Ok(field), Some(number)) = (
            String::from_utf8(field),
            std::str::from_utf8(&value).ok().and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue; // not ours to read
        };
        match field.split_once(':') {
            None => read.entry(Rc::from(field)).or_default().0 = number,
            Some((process, user)) => {
                let connections = u32::try_from(number).unwrap_or(u32::MAX);
                let (_, users) = read.entry(Rc::from(process)).or_default();
                users.insert(Rc::from(user), connections);
            }
        }
    }
    Ok(read)
}

/// `~p <process> <version> <whole>` and `<connections> <user>` lines, or
/// `~gone <process>`.
fn parse_heard(payload: &[u8]) -> Option<Heard> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut lines = text.split('\n');
    let mut head = lines.next()?.split(' ');
    match head.next()? {
        "~gone" => Some(Heard::Gone(Rc::from(head.next()?))),
        "~p" => {
            let process = Rc::from(head.next()?);
            let version = head.next()?.parse().ok()?;
            let whole = head.next()? == "1";
            let mut users = Vec::new();
            for line in lines {
                let (connections, user) = line.split_once(' ')?;
                users.push((Rc::from(user), connections.parse().ok()?));
            }
            Some(Heard::News {
                process,
                version,
                whole,
                users,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn news(process: &str, version: u64, users: &[(&str, u32)]) -> Heard {
        Heard::News {
            process: Rc::from(process),
            version,
            whole: false,
            users: users.iter().map(|(u, n)| (Rc::from(*u), *n)).collect(),
        }
    }

    #[test]
    fn news_is_read_back_as_the_script_writes_it() {
        let heard = parse_heard(b"~p ab12 7 0\n2 ann\n0 bob smith");
        assert_eq!(heard, Some(news("ab12", 7, &[("ann", 2), ("bob smith", 0)])));
        assert_eq!(parse_heard(b"~gone ab12"), Some(Heard::Gone(Rc::from("ab12"))));
        assert_eq!(parse_heard(b"~p ab12 x 0"), None);
        assert_eq!(parse_heard(b"~p ab12 7 0\nann"), None);
        assert_eq!(parse_heard(b"1-2 {}"), None);
    }

    #[test]
    fn news_the_read_already_holds_is_dropped() {
        let mut following = Following::default();
        following.versions.insert(Rc::from("ab"), 5);
        assert!(following.admit(news("ab", 4, &[("ann", 1)])).is_none());
        assert!(following.admit(news("ab", 5, &[("ann", 1)])).is_none());
        assert!(following.admit(news("ab", 6, &[("ann", 0)])).is_some());
        assert!(following.admit(news("cd", 1, &[("bob", 1)])).is_some());
    }

    #[test]
    fn a_hash_is_read_by_process() {
        let bulk = |s: &str| OwnedFrame::BulkString(s.as_bytes().to_vec());
        let frame = OwnedFrame::Array(
            ["ab", "3", "ab:ann", "2", "cd:bob", "1", "cd", "9"]
                .map(bulk)
                .to_vec(),
        );
        let read = parse_hash(frame).expect("read");
        assert_eq!(read[&Rc::from("ab")].0, 3);
        assert_eq!(read[&Rc::from("ab")].1[&Rc::from("ann")], 2);
        assert_eq!(read[&Rc::from("cd")].0, 9);
        assert_eq!(read[&Rc::from("cd")].1[&Rc::from("bob")], 1);
    }
}

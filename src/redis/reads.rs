//! Reads of a room's stream through the read script: for a repair (a hole
//! in the room's numbering here, or where the room stands) and for members
//! resuming, and what comes of each, failed reads included.
//!
//! What to read and what a read means are decided without I/O (`repair`,
//! `replays`); this is where the reads are sent and their answers taken.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Instant;

use redis_protocol::resp2::types::OwnedFrame;

use super::dispatch::Expect;
use super::repair::Fetch;
use super::scripts::{self, Read, RoomKeys};
use super::{RedisBus, replays};
use crate::broker::{Lost, MemberReplay, ReplayTicket};
use crate::history::{Replay, Resume};

impl RedisBus {
    /// A member asks what it missed in `room`: read this turn, or once the
    /// room's subscription is confirmed.
    pub(super) fn ask_replay(&mut self, room: &Rc<str>, ticket: ReplayTicket, resume: Resume) {
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

    /// Reads the replays `room`'s resumes waited for (its subscription, or
    /// the subscription link gone: then live messages cannot come anyway).
    pub(super) fn release_resumes(&mut self, room: &Rc<str>) {
        let resumes = match self.rooms.get_mut(room) {
            Some(feed) => std::mem::take(&mut feed.resumes),
            None => return,
        };
        for (ticket, resume) in resumes {
            self.to_read.push((Rc::clone(room), ticket, resume));
        }
    }

    /// Reads what the members resuming this turn missed: one read per
    /// room and kind of request (`replays`).
    pub(super) fn send_reads(&mut self) {
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

    /// Reads a hole in `room`'s numbering from its stream (or where it stands).
    pub(super) fn fetch(&mut self, room: &Rc<str>, fetch: Fetch) {
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
        let keys = RoomKeys::new(&self.prefix, room);
        scripts::read_args(verb_and_script, keys, read, &self.master)
    }

    /// The read script answered `expect` (a repair's or replays' read).
    pub(super) fn read_answered(&mut self, expect: Expect, frame: OwnedFrame) {
        match (expect, frame) {
            (expect, OwnedFrame::Error(err)) if err.starts_with("NOSCRIPT") => {
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
                let read = parsed_read(&room, frame);
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
                let answer = parsed_read(&room, frame);
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
            _ => {}
        }
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

    /// A read that will not be answered: the repair goes on without it, and
    /// the members resuming are told of a gap (what they missed cannot be known).
    pub(super) fn read_failed(&mut self, expect: Expect) {
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

    /// Whether a replay is held back for its room's live messages (not for
    /// a repair, whose answer wakes the loop): it goes to the hub next turn.
    pub(super) fn replays_due(&self) -> Option<Instant> {
        self.replays
            .iter()
            .any(|r| {
                !self
                    .rooms
                    .get(&r.room)
                    .is_some_and(|feed| feed.sequence.repairing())
            })
            .then_some(self.now)
    }

    /// A replay waits while live messages of its room are in this process
    /// and not yet with the hub (held for a repair of the room, or ready in
    /// this batch, which the hub takes after the replays): the hub must see
    /// them first, as it sees any live message of a member catching up, or
    /// it would take them for messages that came too late.
    pub(super) fn hand_replays(&mut self, ready: &mut Vec<MemberReplay>) {
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

/// The read script's answer for `room`, or nothing (logged) if it is not one.
fn parsed_read(room: &str, frame: OwnedFrame) -> Option<scripts::RoomRead> {
    scripts::parse_read(frame)
        .map_err(|why| log::warn!("redis: room {room:?}: {why}"))
        .ok()
}

//! What each reply on the command link answers, and where the replies and
//! the subscription link's pushes go.
//!
//! Commands are pipelined: their replies come back in the order they were
//! sent, so each command sent leaves an `Expect` in `RedisBus::expected`,
//! and a reply answers the oldest. The job that sent the command takes the
//! answer (`feeds`, `reads`, `store`, `scripts`).

use std::rc::Rc;

use redis_protocol::resp2::types::OwnedFrame;

use super::inspect::RoomsWalk;
use super::scripts::Read;
use super::{LOGGED_REPLY, RedisBus, replays, store};
use crate::broker::inspect::ApiRead;
use crate::broker::{MemberId, ReplayTicket, StoreQuery};
use crate::logging::Truncated;
use crate::slab::SlotId;

/// A post on its way to Redis: its event JSON (whole while held; without
/// its closing `}}` once sent, as the script closes it with the id), who
/// sent it, to be told if it cannot go, and whether it is a retry (sent
/// once, unanswered: published again only if Redis does not hold it).
pub(super) struct Outgoing {
    pub(super) event: Vec<u8>,
    pub(super) sender: MemberId,
    pub(super) retry: bool,
    /// Delivered to this process's members already (while Redis was away).
    pub(super) local: bool,
}

/// What a reply on the command link answers.
pub(super) enum Expect {
    /// AUTH or SELECT on a fresh connection.
    Handshake,
    /// `INFO replication`: whether the server is the master, and which.
    Role,
    /// SCRIPT LOAD of the publish script (false) or the read script (true).
    ScriptLoad {
        read: bool,
    },
    /// A chat message; kept to send again as EVAL if the script is gone
    /// (or on the next connection, if no answer comes).
    Publish {
        room: String,
        post: Outgoing,
        refresh: bool,
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
    /// A presence script (this process's users, or a dead process's out).
    Presence,
    /// What `room`'s presence hash holds, for the room as opened `serial`-th.
    PresenceRead {
        room: Rc<str>,
        serial: u64,
    },
    /// This process's heartbeat (`presence`).
    Heartbeat {
        after_outage: bool,
    },
    /// Whether `process`'s heartbeat key still exists.
    Alive {
        process: Rc<str>,
    },
    /// A ban kept or lifted, or a call published (`control`).
    Control,
    /// The bans kept in Redis.
    Bans,
    /// A server API call's look (`inspect`), for connection `asker`.
    Look {
        asker: SlotId,
        read: ApiRead,
    },
    /// A step of a walk through the rooms (`inspect`), for `asker`.
    Rooms {
        asker: SlotId,
        walk: RoomsWalk,
    },
}

impl RedisBus {
    /// A reply on the command link answers the oldest command in flight.
    pub(super) fn on_reply(&mut self, frame: OwnedFrame) {
        let Some((_, expect)) = self.expected.pop_front() else {
            log::warn!(
                "redis commands: a reply nobody asked for: {}",
                Truncated(&frame, LOGGED_REPLY)
            );
            return;
        };
        match expect {
            Expect::Handshake => {
                if let OwnedFrame::Error(err) = frame {
                    log::error!("redis: the handshake failed: {err}");
                }
            }
            Expect::Role => self.role_answered(frame),
            Expect::ScriptLoad { read } => self.script_loaded(read, frame),
            Expect::Publish {
                room,
                post,
                refresh,
            } => self.published(room, post, refresh, frame),
            expect @ (Expect::Repair { .. } | Expect::Replays { .. }) => {
                self.read_answered(expect, frame);
            }
            Expect::Otp { asker, query } => {
                self.answers.push((asker, store::answer(query, frame)));
            }
            Expect::Presence => self.presence_answered(frame),
            Expect::PresenceRead { room, serial } => self.presence_read(room, serial, frame),
            Expect::Heartbeat { after_outage } => self.beat_answered(after_outage, frame),
            Expect::Alive { process } => self.alive_answered(process, frame),
            Expect::Control => self.control_answered(frame),
            Expect::Bans => self.bans_read(frame),
            Expect::Look { asker, read } => self.looked(asker, read, frame),
            Expect::Rooms { asker, walk } => self.rooms_walked(asker, walk, frame),
        }
    }

    /// A push on the subscription link: a room's message, a (un)subscribe
    /// confirmation, or the answer to a probe.
    pub(super) fn on_push(&mut self, frame: OwnedFrame) {
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
                match channel == self.control_channel().as_bytes() {
                    true => self.on_control(&payload),
                    false => self.on_message(&channel, &payload),
                }
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
}

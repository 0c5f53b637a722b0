//! The back end's contract: everything the loop and the hub need from
//! whatever orders rooms' messages and keeps what must be shared, in one
//! trait. `local::LocalBroker` is one process on its own; `crate::redis`'s
//! broker shares rooms, OTPs and sessions with every process on a Redis.
//! The server holds a `Box<dyn Backend>` and never asks which one it is.
//!
//! Each turn of the loop the server calls, in order: `begin_turn`, then the
//! chat and store calls its connections cause (and `on_ready` for readiness
//! on the back end's own sockets), then `end_turn`; and it sleeps no longer
//! than `next_deadline`.

use std::rc::Rc;
use std::time::Instant;

use mio::{Registry, Token};

use crate::history::{Replay, Resume};
use inspect::{ApiRead, ApiView};
use crate::metrics::Metrics;
use crate::slab::SlotId;

pub mod inspect;
pub mod local;

pub use local::LocalBroker;

/// A member is named by its connection's slot index.
pub type MemberId = usize;

/// A chat message as its sender posted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    pub message: String,
    pub from: Rc<str>,
    /// RFC 3339 UTC, stamped when the server accepted it.
    pub sent: String,
    /// The member who sent it, to be told if it cannot be delivered.
    pub sender: MemberId,
}

/// A post the back end could not send on (Redis refused it, or could not
/// take it): its sender is told with an `error` event, since nobody else
/// will ever see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub sender: MemberId,
    /// The room it was sent to: a sender who has left it since is not told.
    pub room: Rc<str>,
    pub why: &'static str,
}

/// A room's message, encoded and ready for every local member.
pub struct Arrival {
    pub room: Rc<str>,
    /// The run of the room's numbering it belongs to (empty when not numbered).
    pub epoch: Rc<str>,
    /// Its number in the room (0: not numbered, e.g. delivered locally while
    /// Redis is away).
    pub seq: u64,
    pub frame: Rc<[u8]>,
}

/// Messages of a room lost for good (neither delivered here nor kept
/// anywhere): members that opted in to history are told with
/// `history_gap`, before the arrival at index `before` of the batch it was
/// taken with (its end, if none follows).
pub struct Lost {
    pub room: Rc<str>,
    /// The id of the first message after the hole.
    pub next: String,
    pub before: usize,
}

/// A room's users on one process: each one's connections there.
pub type Seats = Vec<(Rc<str>, u32)>;

/// News of who is in a room, from the back end, placed among the room's
/// messages (before the arrival at index `before` of the batch it was
/// taken with), so a user's leave never overtakes its last message.
pub struct PresenceNews {
    pub room: Rc<str>,
    pub before: usize,
    pub change: PresenceChange,
}

pub enum PresenceChange {
    /// Process `process`'s users in the room now: each listed user's
    /// connections there (0: none left); with `whole`, every user not
    /// listed has none there either.
    Process {
        process: Rc<str>,
        users: Seats,
        whole: bool,
    },
    /// Everyone in the room, by process, as the back end knows it: replaces
    /// all that was known. Sent once a room is opened here, and again
    /// after the back end was away.
    Snapshot { processes: Vec<(Rc<str>, Seats)> },
}

/// Names one resume request of one member. A replay comes back with the
/// ticket it was asked with, and is dropped unless that is still the
/// member's current request (it has not asked again, moved on or left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplayTicket {
    pub member: MemberId,
    serial: u64,
}

impl ReplayTicket {
    /// The `serial`th resume request (of all members) made by `member`.
    pub fn new(member: MemberId, serial: u64) -> ReplayTicket {
        ReplayTicket { member, serial }
    }
}

impl Arrival {
    /// Another handle on the same message (the frame is shared, not copied).
    pub fn share(&self) -> Arrival {
        Arrival {
            room: Rc::clone(&self.room),
            epoch: Rc::clone(&self.epoch),
            seq: self.seq,
            frame: Rc::clone(&self.frame),
        }
    }
}

/// What one member missed in a room, ready to send it.
pub struct MemberReplay {
    pub ticket: ReplayTicket,
    pub room: Rc<str>,
    pub replay: Replay,
}

/// An operator's call that concerns every process (`/api/users/...`),
/// passed on by the back end to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Close every WebSocket of `user` and end its sessions.
    Disconnect { user: String },
    /// The same, and refuse `user` until `until` (Unix seconds).
    Ban { user: String, until: u64 },
    Unban { user: String },
}

/// A question only the shared store can answer (`--redis`): OTPs and
/// ended sessions, which every process must see alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreQuery {
    /// Keep `otp` for `user` for the OTP lifetime, unless it exists already.
    Store { otp: String, user: String },
    /// The same for a session's OTP, unless the session was ended.
    StoreForSession {
        otp: String,
        user: String,
        session: String,
    },
    /// Take `otp` out: whose it was, if it was anyone's (once, cluster-wide).
    Take { otp: String },
    /// End `session` everywhere until `until` (Unix seconds), when its token
    /// expires anyway.
    Revoke { session: String, until: u64 },
    /// A server API call's look at rooms, members or history.
    Api(ApiRead),
}

/// The shared store's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreAnswer {
    Stored,
    /// The OTP exists already (never, with 128 random bits; refused anyway).
    Exists,
    /// The session was ended (nothing was stored).
    Revoked,
    Taken(Option<String>),
    /// A revocation is recorded.
    Done,
    /// What an API read saw.
    Api(ApiView),
    /// The store could not be asked.
    Unavailable,
}

/// Where one-time passwords and ended sessions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtpStore {
    /// In this process (without `--redis`).
    Local,
    /// In Redis, shared by every process; `up` while it can be reached.
    Shared { up: bool },
}

/// Orders each room's messages, numbers them, keeps their history and
/// brings them back for local delivery; keeps what logins share; and takes
/// its turn in the loop for its own sockets and timers.
pub trait Backend {
    /// Sends `post` on its way to every member of `room`, on every process.
    fn publish(&mut self, room: &Rc<str>, post: Post);
    /// This process has its first member in `room`.
    fn room_opened(&mut self, _room: &Rc<str>) {}
    /// This process's last member left `room`.
    fn room_closed(&mut self, _room: &Rc<str>) {}
    /// A member, now in `room`, asks for what it missed; the answer comes
    /// out of `take_replays` with the same ticket, and no live message of
    /// the room reaches the member before it.
    fn replay(&mut self, room: &Rc<str>, ticket: ReplayTicket, resume: Resume);
    /// This process's users in `room` changed this turn: each changed
    /// user's connections here now (0: none left). Comes back, for every
    /// process, as `PresenceNews` among the room's messages.
    fn presence(&mut self, room: &Rc<str>, users: Seats);
    /// Moves the messages ready for local delivery into `ready`, each room's
    /// in order, the holes found among them (messages lost for good) into
    /// `lost`, and the news of who is in the rooms into `presence`.
    fn take_arrivals(
        &mut self,
        ready: &mut Vec<Arrival>,
        lost: &mut Vec<Lost>,
        presence: &mut Vec<PresenceNews>,
    );
    /// Moves the replays ready into `ready`.
    fn take_replays(&mut self, ready: &mut Vec<MemberReplay>);
    /// Moves the posts refused since the last call into `into`.
    fn take_refusals(&mut self, _into: &mut Vec<Refusal>) {}

    /// Tells every other process of an operator's call (and keeps a ban
    /// where a process started later finds it).
    fn announce(&mut self, _control: Control) {}
    /// Moves the calls other processes announced (and bans kept) into `into`.
    fn take_controls(&mut self, _into: &mut Vec<Control>) {}

    /// Where OTPs and ended sessions are kept, and whether it can be reached.
    fn otp_store(&self) -> OtpStore {
        OtpStore::Local
    }
    /// Asks the shared store on behalf of connection `asker`; the answer
    /// comes out of `take_answers`.
    fn ask(&mut self, asker: SlotId, query: StoreQuery);
    /// Moves the store's answers ready into `into`.
    fn take_answers(&mut self, into: &mut Vec<(SlotId, StoreAnswer)>);

    /// A loop turn starts at `now` (the back end never reads the clock).
    fn begin_turn(&mut self, _now: Instant) {}
    /// One of the back end's own sockets (registered with the tokens it was
    /// given) is ready.
    fn on_ready(&mut self, _token: Token, _now: Instant, _registry: &Registry) {}
    /// The turn's work is done: run timers, (re)connect, flush.
    fn end_turn(&mut self, _now: Instant, _registry: &Registry) {}
    /// When `end_turn` has work next, if it is waiting for time.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
    /// Sets the gauges of what the back end keeps.
    fn report(&self, _metrics: &mut Metrics) {}
}

//! Each room's recent messages, kept as the frames already encoded for live
//! delivery (shared bytes: a replay re-serialises nothing), so a member who
//! comes back, or joins, can be given what it missed.
//!
//! Messages are numbered per room; an id is `<epoch>-<seq>`. The epoch names
//! one run of a room's numbering: a room whose history was freed starts a new
//! one, so an id from before can never be mistaken for a newer message.
//!
//! Memory is bounded three ways: `--history` messages per room; a room that
//! empties keeps its history for `--history-ttl`, then frees it; and
//! `--history-max-bytes` in all, past which the least recently used empty
//! room's history goes first (and, if every room is busy, the oldest
//! messages of the least recently active one).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Where a member wants its replay to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Everything after this id.
    Since(String),
    /// The last this many messages.
    Last(usize),
}

/// Where a new member starts: a room (the default one if none), and what it
/// asks to be given of what was said there before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub room: Option<String>,
    pub resume: Option<Resume>,
    /// It watches the room's presence (`&presence=1`).
    pub presence: bool,
}

/// What a member is given when it asks to resume.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// The id asked for is no longer kept (or from another epoch): the oldest
    /// kept, if any (`history_gap` tells the member before the replay).
    pub gap: Option<Option<String>>,
    /// The frames to send, oldest first.
    pub frames: Vec<Rc<[u8]>>,
    /// The epoch the room's messages were read in (empty: the room has none).
    pub epoch: Rc<str>,
    /// The plan's `after`: messages up to it were not asked for.
    pub after: u64,
    /// The number of the first frame (`through + 1` when there is none).
    /// Messages after `after` and before it were asked for but are no
    /// longer kept.
    pub from: u64,
    /// The last message the replay covers: its last frame's number, or
    /// `after` when it has none. A live message of the same epoch up to it
    /// is a copy of one replayed or was not asked for; those after it follow
    /// the replay.
    pub through: u64,
}

impl Replay {
    /// The replay `plan` makes of a room's kept messages (oldest first),
    /// each made a frame by `frame`: for the in-memory history and Redis alike.
    pub fn planned<'a, T: 'a>(
        plan: &Plan,
        epoch: &str,
        kept: impl IntoIterator<Item = &'a (u64, T)>,
        frame: impl Fn(&T) -> Rc<[u8]>,
    ) -> Replay {
        let (mut from, mut through, mut frames) = (None, plan.after, Vec::new());
        for (seq, item) in kept {
            if *seq > plan.after {
                from.get_or_insert(*seq);
                through = *seq;
                frames.push(frame(item));
            }
        }
        Replay {
            gap: plan
                .gap
                .map(|oldest| oldest.map(|seq| format!("{epoch}-{seq}"))),
            frames,
            epoch: Rc::from(epoch),
            after: plan.after,
            from: from.unwrap_or(through + 1),
            through,
        }
    }

    /// Nothing could be read (the room's messages are out of reach): the
    /// member is told of a gap, and live messages follow.
    pub fn unknown() -> Replay {
        Replay {
            gap: Some(None),
            ..Replay::default()
        }
    }
}

/// What a resume decision needs to know of a room's kept messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomView<'a> {
    pub epoch: &'a str,
    /// The number of the newest message (0: none yet).
    pub newest: u64,
    /// The number of the oldest message still kept, if any.
    pub oldest_kept: Option<u64>,
}

/// A resume decision: whether the member must first hear of a gap, and
/// which kept messages it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// `Some(oldest kept)`: what was asked for is no longer (or never was)
    /// kept in this epoch; `history_gap` comes first.
    pub gap: Option<Option<u64>>,
    /// Every kept message numbered after this one is replayed.
    pub after: u64,
}

/// The one resume decision, for the in-memory history and for Redis alike.
pub fn plan(view: &RoomView, resume: &Resume) -> Plan {
    match resume {
        Resume::Last(count) => Plan {
            gap: None,
            after: view.newest.saturating_sub(*count as u64),
        },
        Resume::Since(id) => match parse_id(id) {
            Some((epoch, seq)) if epoch == view.epoch && seq <= view.newest => {
                // Complete if nothing between `seq` and the oldest kept was dropped.
                let complete =
                    seq >= view.newest || view.oldest_kept.is_some_and(|oldest| seq + 1 >= oldest);
                match complete {
                    true => Plan {
                        gap: None,
                        after: seq,
                    },
                    false => Plan {
                        gap: Some(view.oldest_kept),
                        after: 0,
                    },
                }
            }
            _ => Plan {
                gap: Some(view.oldest_kept),
                after: 0,
            },
        },
    }
}

/// A room's kept messages: (seq, frame), oldest first.
pub type Kept = VecDeque<(u64, Rc<[u8]>)>;

struct RoomLog {
    epoch: Rc<str>,
    /// The number the next message gets.
    next_seq: u64,
    kept: Kept,
    /// Everything this room holds: its own cost and its frames'.
    bytes: usize,
    /// Members here now (a room with none may be freed after the ttl).
    members: usize,
    /// When it last had a message or lost its last member.
    touched: Instant,
}

impl RoomLog {
    fn view(&self) -> RoomView<'_> {
        RoomView {
            epoch: &self.epoch,
            newest: self.next_seq.saturating_sub(1),
            oldest_kept: self.kept.front().map(|(seq, _)| *seq),
        }
    }
}

/// What a room's history costs before its first message: its entry in the
/// table, its name and epoch, and their reference counts.
fn room_cost(name: &str, epoch: &str) -> usize {
    std::mem::size_of::<(Rc<str>, RoomLog)>() + name.len() + epoch.len() + 2 * RC_COUNTS
}

/// What a kept frame costs beside its bytes: its slot and reference counts.
const FRAME_COST: usize = std::mem::size_of::<(u64, Rc<[u8]>)>() + RC_COUNTS;
const RC_COUNTS: usize = 2 * std::mem::size_of::<usize>();

pub struct History {
    rooms: HashMap<Rc<str>, RoomLog>,
    /// Rooms that emptied, in the order they did (a room that filled again
    /// since is skipped when its turn comes): first to expire, first to go.
    emptied: VecDeque<(Instant, Rc<str>)>,
    per_room: usize,
    ttl: Duration,
    max_bytes: usize,
    bytes: usize,
    /// This process's part of every epoch, and how many epochs it has begun.
    process_epoch: String,
    epochs_begun: u64,
}

impl History {
    pub fn new(per_room: usize, ttl: Duration, max_bytes: usize) -> History {
        let mut random = [0u8; 4];
        let _ = getrandom::fill(&mut random); // zeros still work: the counter keeps epochs apart
        History {
            rooms: HashMap::new(),
            emptied: VecDeque::new(),
            per_room,
            ttl,
            max_bytes,
            bytes: 0,
            process_epoch: random.iter().map(|b| format!("{b:02x}")).collect(),
            epochs_begun: 0,
        }
    }

    /// Bytes held for every room's history: the frames and each room's own cost.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Rooms with a history (members or not).
    #[cfg(test)]
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// The epoch and number the next message in `room` gets (the caller
    /// puts its id into the frame, then `keep`s the frame under it).
    pub fn next_id(&mut self, room: &Rc<str>, now: Instant) -> (Rc<str>, u64) {
        let log = self.log(room, now);
        (Rc::clone(&log.epoch), log.next_seq)
    }

    /// Keeps `frame` as message `seq` of `room`.
    pub fn keep(&mut self, room: &Rc<str>, seq: u64, frame: &Rc<[u8]>, now: Instant) {
        let per_room = self.per_room;
        let log = self.log(room, now);
        log.next_seq = log.next_seq.max(seq + 1);
        log.touched = now;
        let nobody_here = log.members == 0;
        if per_room > 0 {
            log.kept.push_back((seq, Rc::clone(frame)));
            let added = frame.len() + FRAME_COST;
            let mut freed = 0;
            while log.kept.len() > per_room {
                if let Some((_, old)) = log.kept.pop_front() {
                    freed += old.len() + FRAME_COST;
                }
            }
            log.bytes = log.bytes + added - freed;
            self.bytes = self.bytes + added - freed;
        }
        if nobody_here {
            // Kept while nobody is here (a message relayed from elsewhere):
            // its turn to expire starts now.
            self.queue_empty(room, now);
        }
        self.enforce_bound();
    }

    /// A room gained a member here.
    pub fn room_opened(&mut self, room: &Rc<str>, now: Instant) {
        self.log(room, now).members += 1;
        self.enforce_bound();
    }

    /// A room lost its last member here: its history waits `--history-ttl`.
    pub fn room_closed(&mut self, room: &Rc<str>, now: Instant) {
        if let Some(log) = self.rooms.get_mut(room) {
            log.members = log.members.saturating_sub(1);
            log.touched = now;
            if log.members == 0 {
                self.queue_empty(room, now);
            }
        }
        self.enforce_bound();
    }

    /// What a member resuming in `room` is given.
    pub fn replay(&self, room: &str, resume: &Resume) -> Replay {
        let Some(log) = self.rooms.get(room) else {
            return Replay {
                gap: matches!(resume, Resume::Since(_)).then_some(None),
                ..Replay::default()
            };
        };
        Replay::planned(&plan(&log.view(), resume), &log.epoch, &log.kept, Rc::clone)
    }

    /// Where `room`'s numbering stands and the frames it keeps, oldest
    /// first, for the server API; `None` when it has no history.
    pub fn look(&self, room: &str) -> Option<(RoomView<'_>, &Kept)> {
        let log = self.rooms.get(room)?;
        Some((log.view(), &log.kept))
    }

    /// When the next empty room's history is due to be freed.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.emptied.front().map(|(at, _)| *at + self.ttl)
    }

    /// Frees the histories of rooms empty for longer than the ttl. An entry
    /// of a room that filled again since is only dropped: each room's turn
    /// counts from when it last emptied.
    pub fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.emptied.front() {
            if now < *at + self.ttl {
                break;
            }
            if let Some((at, name)) = self.emptied.pop_front()
                && self.still_empty_since(&name, at)
            {
                self.free(&name);
            }
        }
    }

    /// Frees the history of the room that emptied first and is still empty;
    /// false when there is none.
    fn free_oldest_empty(&mut self) -> bool {
        while let Some((at, name)) = self.emptied.pop_front() {
            if self.still_empty_since(&name, at) {
                self.free(&name);
                return true;
            }
        }
        false
    }

    /// True when `name` has been empty ever since `at` (its entry is current).
    fn still_empty_since(&self, name: &str, at: Instant) -> bool {
        empty_since(&self.rooms, name, at)
    }

    fn free(&mut self, name: &str) {
        if let Some(log) = self.rooms.remove(name) {
            self.bytes -= log.bytes;
        }
    }

    /// Queues `room`, empty since `now`, for expiry. Entries of rooms that
    /// filled again wait for their turn to be dropped; once they outnumber
    /// the rooms, the queue is compacted, so members moving back and forth
    /// cannot grow it.
    fn queue_empty(&mut self, room: &Rc<str>, now: Instant) {
        self.emptied.push_back((now, Rc::clone(room)));
        if self.emptied.len() > 2 * self.rooms.len() + 64 {
            let rooms = &self.rooms;
            self.emptied
                .retain(|(at, name)| empty_since(rooms, name, *at));
        }
    }

    /// The room's log, begun (with a fresh epoch) if it has none.
    fn log(&mut self, room: &Rc<str>, now: Instant) -> &mut RoomLog {
        if !self.rooms.contains_key(room) {
            self.epochs_begun += 1;
            let epoch: Rc<str> = Rc::from(format!("{}{:x}", self.process_epoch, self.epochs_begun));
            let bytes = room_cost(room, &epoch);
            self.bytes += bytes;
            let log = RoomLog {
                epoch,
                next_seq: 1,
                kept: VecDeque::new(),
                bytes,
                members: 0,
                touched: now,
            };
            self.rooms.insert(Rc::clone(room), log);
        }
        self.rooms
            .get_mut(room)
            .expect("the room's log was just made")
    }

    /// Past `--history-max-bytes`: empty rooms go first, least recently used
    /// first; then the oldest messages of the least recently active room.
    fn enforce_bound(&mut self) {
        while self.bytes > self.max_bytes {
            if self.free_oldest_empty() {
                continue;
            }
            let busy = self
                .rooms
                .iter_mut()
                .filter(|(_, log)| !log.kept.is_empty())
                .min_by_key(|(_, log)| log.touched)
                .map(|(_, log)| log);
            let Some(log) = busy else {
                break;
            };
            if let Some((_, old)) = log.kept.pop_front() {
                log.bytes -= old.len() + FRAME_COST;
                self.bytes -= old.len() + FRAME_COST;
            }
        }
    }
}

/// True when room `name` has been empty ever since `at`: an entry of the
/// emptied queue made then is still current.
fn empty_since(rooms: &HashMap<Rc<str>, RoomLog>, name: &str, at: Instant) -> bool {
    rooms
        .get(name)
        .is_some_and(|log| log.members == 0 && log.touched == at)
}

/// `<epoch>-<seq>` into its parts.
pub fn parse_id(id: &str) -> Option<(&str, u64)> {
    let (epoch, seq) = id.rsplit_once('-')?;
    Some((epoch, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> Rc<[u8]> {
        Rc::from(format!("frame {n}").into_bytes())
    }

    /// A room with messages 1..=count kept (at most `per_room`).
    fn room_with(per_room: usize, count: u64) -> (History, Rc<str>, Vec<String>) {
        let now = Instant::now();
        let mut history = History::new(per_room, Duration::from_secs(600), 1 << 20);
        let room: Rc<str> = Rc::from("r");
        history.room_opened(&room, now);
        let ids = (1..=count)
            .map(|_| {
                let (epoch, seq) = history.next_id(&room, now);
                history.keep(&room, seq, &frame(seq), now);
                format!("{epoch}-{seq}")
            })
            .collect();
        (history, room, ids)
    }

    fn texts(replay: &Replay) -> Vec<String> {
        replay
            .frames
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    }

    #[test]
    fn resuming_at_the_boundaries() {
        let (history, room, ids) = room_with(5, 8); // keeps 4..=8
        let newest = history.replay(&room, &Resume::Since(ids[7].clone()));
        assert_eq!(
            (newest.gap, newest.frames.len()),
            (None, 0),
            "since the newest: nothing"
        );
        let oldest = history.replay(&room, &Resume::Since(ids[3].clone()));
        assert_eq!(oldest.gap, None);
        assert_eq!(texts(&oldest), ["frame 5", "frame 6", "frame 7", "frame 8"]);
        let just_before = history.replay(&room, &Resume::Since(ids[2].clone()));
        assert_eq!(
            just_before.gap, None,
            "3 was the last seen: 4.. is all kept"
        );
        assert_eq!(just_before.frames.len(), 5);
        let too_old = history.replay(&room, &Resume::Since(ids[1].clone()));
        assert_eq!(too_old.gap, Some(Some(ids[3].clone())), "3 is gone");
        assert_eq!(too_old.frames.len(), 5, "then everything kept");
        let elsewhere = history.replay(&room, &Resume::Since("otherepoch-7".into()));
        assert_eq!(elsewhere.gap, Some(Some(ids[3].clone())));
        let garbage = history.replay(&room, &Resume::Since("not an id".into()));
        assert!(garbage.gap.is_some());
        let last_two = history.replay(&room, &Resume::Last(2));
        assert_eq!(last_two.gap, None);
        assert_eq!(texts(&last_two), ["frame 7", "frame 8"]);
        assert_eq!(last_two.through, 8);
    }

    #[test]
    fn an_unknown_room_or_a_future_id_is_a_gap() {
        let (history, room, ids) = room_with(5, 3);
        let future = format!("{}-{}", ids[0].rsplit_once('-').unwrap().0, 99);
        assert!(history.replay(&room, &Resume::Since(future)).gap.is_some());
        assert_eq!(
            history
                .replay("nowhere", &Resume::Since(ids[0].clone()))
                .gap,
            Some(None)
        );
        assert_eq!(
            history.replay("nowhere", &Resume::Last(5)),
            Replay::default()
        );
    }

    #[test]
    fn an_empty_room_is_freed_after_the_ttl_and_restarts_with_a_new_epoch() {
        let (mut history, room, ids) = room_with(5, 3);
        let t0 = Instant::now();
        history.room_closed(&room, t0);
        assert_eq!(history.next_expiry(), Some(t0 + Duration::from_secs(600)));
        history.expire(t0 + Duration::from_secs(599));
        assert_eq!(history.rooms(), 1);
        history.expire(t0 + Duration::from_secs(601));
        assert_eq!((history.rooms(), history.bytes()), (0, 0));
        let (epoch, _) = history.next_id(&room, t0);
        assert_ne!(&*epoch, ids[0].rsplit_once('-').unwrap().0);
        assert!(
            history
                .replay(&room, &Resume::Since(ids[2].clone()))
                .gap
                .is_some()
        );
    }

    #[test]
    fn past_the_byte_bound_empty_rooms_go_first_least_recently_used_first() {
        let t0 = Instant::now();
        let big: Rc<[u8]> = Rc::from(vec![0u8; 40]);
        // Each room costs `one`: the bound holds two and a half.
        let epoch_len = History::new(1, Duration::ZERO, 0)
            .next_id(&Rc::from("x"), t0)
            .0
            .len();
        let one = room_cost("a", &"e".repeat(epoch_len)) + big.len() + FRAME_COST;
        let mut history = History::new(100, Duration::from_secs(600), 2 * one + one / 2);
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let room: Rc<str> = Rc::from(*name);
            let at = t0 + Duration::from_secs(i as u64);
            history.room_opened(&room, at);
            let (_, seq) = history.next_id(&room, at);
            history.keep(&room, seq, &big, at);
            if *name != "c" {
                history.room_closed(&room, at);
            }
        }
        assert_eq!(
            history.bytes(),
            2 * one,
            "a went when c came: the oldest empty room"
        );
        assert!(history.replay("a", &Resume::Last(5)).frames.is_empty());
        assert_eq!(history.replay("b", &Resume::Last(5)).frames.len(), 1);
        assert_eq!(history.replay("c", &Resume::Last(5)).frames.len(), 1);
    }

    #[test]
    fn thousands_of_rooms_stay_under_the_bound() {
        let t0 = Instant::now();
        let mut history = History::new(100, Duration::from_secs(600), 64 * 1024);
        for n in 0..10_000 {
            let room: Rc<str> = Rc::from(format!("room {n}"));
            history.room_opened(&room, t0);
            for _ in 0..3 {
                let (epoch, seq) = history.next_id(&room, t0);
                let id = format!("{epoch}-{seq}");
                history.keep(&room, seq, &Rc::from(id.into_bytes()), t0);
            }
            history.room_closed(&room, t0);
            assert!(history.bytes() <= 64 * 1024);
        }
        history.expire(t0 + Duration::from_secs(601));
        assert_eq!((history.rooms(), history.bytes()), (0, 0));
    }

    #[test]
    fn history_off_still_numbers_messages() {
        let (history, room, ids) = room_with(0, 3);
        assert!(ids[2].ends_with("-3"));
        let epoch = ids[0].rsplit_once('-').unwrap().0;
        assert_eq!(history.bytes(), room_cost(&room, epoch), "no frame kept");
        let replay = history.replay(&room, &Resume::Since(ids[1].clone()));
        assert!(replay.gap.is_some() && replay.frames.is_empty());
        assert_eq!(
            history.replay(&room, &Resume::Since(ids[2].clone())).gap,
            None
        );
    }

    #[test]
    fn a_room_that_filled_again_does_not_shorten_the_next_rooms_ttl() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut history = History::new(5, ttl, 1 << 20);
        let (a, b): (Rc<str>, Rc<str>) = (Rc::from("a"), Rc::from("b"));
        history.room_opened(&a, t0);
        history.room_closed(&a, t0);
        history.room_opened(&a, t0 + Duration::from_secs(1)); // a's entry is stale
        history.room_opened(&b, t0);
        let (_, seq) = history.next_id(&b, t0);
        history.keep(&b, seq, &frame(seq), t0);
        history.room_closed(&b, t0 + Duration::from_secs(5));
        history.expire(t0 + ttl + Duration::from_secs(1));
        assert_eq!(history.replay(&b, &Resume::Last(5)).frames.len(), 1);
        history.expire(t0 + Duration::from_secs(5) + ttl);
        assert!(history.replay(&b, &Resume::Last(5)).frames.is_empty());
        assert_eq!(history.rooms(), 1, "a, which has a member, stays");
    }

    #[test]
    fn empty_rooms_without_messages_are_bounded_too_and_the_queue_stays_small() {
        let t0 = Instant::now();
        let mut history = History::new(100, Duration::from_secs(600), 16 * 1024);
        for n in 0..10_000 {
            let room: Rc<str> = Rc::from(format!("a room with no message {n}"));
            history.room_opened(&room, t0);
            history.room_closed(&room, t0);
            assert!(history.bytes() <= 16 * 1024);
        }
        assert!(history.rooms() < 200, "{} rooms kept", history.rooms());
        // A member going back and forth between two rooms.
        let (a, b): (Rc<str>, Rc<str>) = (Rc::from("a"), Rc::from("b"));
        history.room_opened(&a, t0);
        for n in 0..10_000u64 {
            let at = t0 + Duration::from_millis(n);
            let (from, to) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
            history.room_opened(to, at);
            history.room_closed(from, at);
        }
        assert!(history.emptied.len() <= 2 * history.rooms() + 65);
    }
}

//! Presence as a watcher sees it: which frames are presence events, and
//! each watcher's idea of who is in its room (its roster), kept from the
//! snapshot and the batched joins and leaves that follow it.
//!
//! A watcher's frames are counted apart from chat deliveries: they never
//! reach the latency histogram or the ledger. The roster is what makes a
//! join storm measurable from outside: the storm has settled for a watcher
//! when its roster holds every member of the room again, and the frames it
//! took to get there, against the joins they carried, say whether the
//! server batches (one frame per watcher per loop turn) or sends one frame
//! per join. The server's events are untrusted input: a frame that does not
//! parse is counted as malformed, never unwrapped.

use serde_json::{Value, json};

/// The four presence events (see the presence protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `presence`: the snapshot a watcher gets first (and again when a big
    /// room shrinks back under the server's limit).
    Snapshot,
    /// `presence_join`: users whose first connection entered the room.
    Join,
    /// `presence_leave`: users whose last connection left it.
    Leave,
    /// `presence_count`: a big room's count, instead of joins and leaves.
    Count,
}

impl Kind {
    /// The kind of an event by its `type`.
    pub fn of(event_type: &[u8]) -> Option<Kind> {
        match event_type {
            b"presence" => Some(Kind::Snapshot),
            b"presence_join" => Some(Kind::Join),
            b"presence_leave" => Some(Kind::Leave),
            b"presence_count" => Some(Kind::Count),
            _ => None,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The run's user names: `USER` followed by a number below `count`
/// (`u0` .. `u999`), or `USER` alone (number 0) when `count` is 0.
#[derive(Clone, Debug)]
pub struct Users {
    prefix: String,
    count: usize,
}

impl Users {
    pub fn new(prefix: &str, count: usize) -> Users {
        Users {
            prefix: prefix.to_string(),
            count,
        }
    }

    /// Whether names carry a number (`--user-count` above 0), so each
    /// connection has a login of its own.
    pub fn numbered(&self) -> bool {
        self.count > 0
    }

    /// Distinct users (at least one).
    pub fn len(&self) -> usize {
        self.count.max(1)
    }

    /// The user connection `index` logs in as.
    pub fn of_connection(&self, index: usize) -> usize {
        index % self.len()
    }

    pub fn name(&self, number: usize) -> String {
        if self.count == 0 {
            self.prefix.clone()
        } else {
            format!("{}{number}", self.prefix)
        }
    }

    /// The number of one of the run's users; none for anyone else.
    pub fn number(&self, name: &str) -> Option<usize> {
        let rest = name.strip_prefix(self.prefix.as_str())?;
        if self.count == 0 {
            return rest.is_empty().then_some(0);
        }
        // No sign, no leading zero: "u07" is not u7.
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if rest.len() > 1 && rest.starts_with('0') {
            return None;
        }
        rest.parse().ok().filter(|&n| n < self.count)
    }
}

/// What the frames said that a correct server would not have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Oddities {
    /// A join for a user already on the roster (a second tab is not a join).
    pub joins_of_present: u64,
    /// A leave for a user not on the roster.
    pub leaves_of_absent: u64,
    /// Names that are not the run's users (someone else in the room).
    pub strangers: u64,
    /// A frame for another room than the watcher's.
    pub wrong_room: u64,
    /// A frame that does not parse as its event.
    pub malformed: u64,
}

impl Oddities {
    fn minus(&self, before: &Oddities) -> Oddities {
        Oddities {
            joins_of_present: self.joins_of_present - before.joins_of_present,
            leaves_of_absent: self.leaves_of_absent - before.leaves_of_absent,
            strangers: self.strangers - before.strangers,
            wrong_room: self.wrong_room - before.wrong_room,
            malformed: self.malformed - before.malformed,
        }
    }
}

/// Every watcher's presence frames together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Frames by kind (`Kind::ALL` order).
    pub frames: [u64; 4],
    /// Names carried by joins and by leaves.
    pub names_joined: u64,
    pub names_left: u64,
    /// Users listed by snapshots.
    pub snapshot_users: u64,
    /// Payload bytes of every presence frame.
    pub bytes: u64,
    pub odd: Oddities,
}

impl Tally {
    pub fn total(&self) -> u64 {
        self.frames.iter().sum()
    }

    pub fn of(&self, kind: Kind) -> u64 {
        self.frames[kind.index()]
    }

    /// What came in since `before` (an earlier copy of this tally).
    pub fn minus(&self, before: &Tally) -> Tally {
        let mut frames = [0; 4];
        for (i, f) in frames.iter_mut().enumerate() {
            *f = self.frames[i] - before.frames[i];
        }
        Tally {
            frames,
            names_joined: self.names_joined - before.names_joined,
            names_left: self.names_left - before.names_left,
            snapshot_users: self.snapshot_users - before.snapshot_users,
            bytes: self.bytes - before.bytes,
            odd: self.odd.minus(&before.odd),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "frames": self.total(),
            "snapshots": self.of(Kind::Snapshot),
            "joins": self.of(Kind::Join),
            "leaves": self.of(Kind::Leave),
            "counts": self.of(Kind::Count),
            "names_joined": self.names_joined,
            "names_left": self.names_left,
            "snapshot_users": self.snapshot_users,
            "bytes": self.bytes,
            "joins_of_present": self.odd.joins_of_present,
            "leaves_of_absent": self.odd.leaves_of_absent,
            "strangers": self.odd.strangers,
            "wrong_room": self.odd.wrong_room,
            "malformed": self.odd.malformed,
        })
    }
}

/// One watcher: its roster, the frames it got, and since when its roster
/// has been complete.
#[derive(Debug, Default)]
pub struct Watch {
    /// One bit per user number, set while the user is on the roster.
    bits: Vec<u64>,
    present: usize,
    /// The last count the server told (snapshot or `presence_count`).
    count: Option<u64>,
    /// The last snapshot had no `users`: a big room, counts only.
    count_only: bool,
    /// Frames by kind since the engine last reset them.
    pub frames: [u32; 4],
    /// When the roster became complete (ns on the engine's clock), 0 while
    /// it is not.
    pub complete_since_ns: u64,
}

impl Watch {
    /// Users on the roster.
    #[cfg(test)]
    pub fn present(&self) -> usize {
        self.present
    }

    #[cfg(test)]
    pub fn count(&self) -> Option<u64> {
        self.count
    }

    /// Whether the roster holds exactly `expected` of the run's users (a
    /// big room: whether the server's count says so).
    pub fn complete(&self, expected: usize) -> bool {
        if self.count_only {
            self.count == Some(expected as u64)
        } else {
            expected > 0 && self.present == expected
        }
    }

    /// The connection is gone: nothing is known until the next snapshot.
    pub fn forget(&mut self) {
        self.bits.clear();
        self.present = 0;
        self.count = None;
        self.count_only = false;
        self.complete_since_ns = 0;
    }

    fn set(&mut self, user: usize, on: bool) -> bool {
        let (word, bit) = (user / 64, 1u64 << (user % 64));
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        let was = self.bits[word] & bit != 0;
        if on {
            self.bits[word] |= bit;
        } else {
            self.bits[word] &= !bit;
        }
        match (was, on) {
            (false, true) => self.present += 1,
            (true, false) => self.present -= 1,
            _ => {}
        }
        was
    }

    /// Applies one presence frame (`event`: the whole JSON event) for a
    /// watcher of `room`; counts it in `tally`. `expected`: the room's
    /// users, for completeness; `now_ns`: when it arrived.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        kind: Kind,
        event: &[u8],
        room: &str,
        users: &Users,
        expected: usize,
        now_ns: u64,
        tally: &mut Tally,
    ) {
        self.frames[kind.index()] += 1;
        tally.frames[kind.index()] += 1;
        tally.bytes += event.len() as u64;
        let parsed: Option<Value> = serde_json::from_slice(event).ok();
        let Some(payload) = parsed.as_ref().and_then(|v| v.get("payload")) else {
            tally.odd.malformed += 1;
            return;
        };
        if payload.get("room").and_then(Value::as_str) != Some(room) {
            tally.odd.wrong_room += 1;
            return;
        }
        let count = payload.get("count").and_then(Value::as_u64);
        let names = |key: &str| -> Option<Vec<&str>> {
            payload
                .get(key)?
                .as_array()?
                .iter()
                .map(|n| match key {
                    "users" => n.get("name").and_then(Value::as_str),
                    _ => n.as_str(),
                })
                .collect()
        };
        match kind {
            Kind::Snapshot => {
                let listed = payload.get("users").map(|_| names("users"));
                self.forget();
                self.count = count;
                match listed {
                    None => self.count_only = true,
                    Some(None) => tally.odd.malformed += 1,
                    Some(Some(listed)) => {
                        tally.snapshot_users += listed.len() as u64;
                        for name in listed {
                            match users.number(name) {
                                Some(user) => {
                                    self.set(user, true);
                                }
                                None => tally.odd.strangers += 1,
                            }
                        }
                    }
                }
                if count.is_none() {
                    tally.odd.malformed += 1;
                }
            }
            Kind::Join | Kind::Leave => {
                let Some(list) = names("names") else {
                    tally.odd.malformed += 1;
                    return;
                };
                let join = kind == Kind::Join;
                if join {
                    tally.names_joined += list.len() as u64;
                } else {
                    tally.names_left += list.len() as u64;
                }
                for name in list {
                    let Some(user) = users.number(name) else {
                        tally.odd.strangers += 1;
                        continue;
                    };
                    let was = self.set(user, join);
                    if join && was {
                        tally.odd.joins_of_present += 1;
                    } else if !join && !was {
                        tally.odd.leaves_of_absent += 1;
                    }
                }
            }
            Kind::Count => match count {
                Some(count) => self.count = Some(count),
                None => tally.odd.malformed += 1,
            },
        }
        if self.complete(expected) {
            if self.complete_since_ns == 0 {
                self.complete_since_ns = now_ns.max(1);
            }
        } else {
            self.complete_since_ns = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, payload: &str) -> Vec<u8> {
        format!(r#"{{"type":"{kind}","payload":{payload}}}"#).into_bytes()
    }

    #[test]
    fn kinds_and_user_names() {
        assert_eq!(Kind::of(b"presence_join"), Some(Kind::Join));
        assert_eq!(Kind::of(b"presence_count"), Some(Kind::Count));
        assert_eq!(Kind::of(b"new_message"), None);
        assert_eq!(Kind::of(b"presence"), Some(Kind::Snapshot));
        assert_eq!(Kind::of(b"presence_leave"), Some(Kind::Leave));
        let users = Users::new("u", 1000);
        assert_eq!(users.name(7), "u7");
        assert_eq!(users.number("u7"), Some(7));
        assert_eq!(users.number("u999"), Some(999));
        assert_eq!(users.number("u1000"), None);
        assert_eq!(users.number("u07"), None);
        assert_eq!(users.number("u-1"), None);
        assert_eq!(users.number("u"), None);
        assert_eq!(users.number("percy"), None);
        assert_eq!(users.of_connection(1003), 3);
        assert!(users.numbered());
        let single = Users::new("u", 1);
        assert_eq!(
            (single.len(), single.name(single.of_connection(5))),
            (1, "u0".to_string())
        );
        let one = Users::new("percy", 0);
        assert!(!one.numbered());
        assert_eq!((one.len(), one.name(5)), (1, "percy".to_string()));
        assert_eq!(one.number("percy"), Some(0));
        assert_eq!(one.number("percy2"), None);
    }

    #[test]
    fn a_roster_follows_snapshot_joins_and_leaves() {
        let users = Users::new("u", 10);
        let mut tally = Tally::default();
        let mut w = Watch::default();
        let snap = event(
            "presence",
            r#"{"room":"R","users":[{"name":"u1","connections":2},{"name":"zed","connections":1}],"count":2}"#,
        );
        w.apply(Kind::Snapshot, &snap, "R", &users, 3, 10, &mut tally);
        assert_eq!((w.present(), w.count(), w.complete(3)), (1, Some(2), false));
        let join = event("presence_join", r#"{"room":"R","names":["u2","u3"]}"#);
        w.apply(Kind::Join, &join, "R", &users, 3, 20, &mut tally);
        assert!(w.complete(3));
        assert_eq!(w.complete_since_ns, 20);
        // A join of someone present and a leave of someone absent are odd.
        w.apply(Kind::Join, &join, "R", &users, 3, 30, &mut tally);
        assert_eq!(w.complete_since_ns, 20);
        let leave = event("presence_leave", r#"{"room":"R","names":["u2","u9"]}"#);
        w.apply(Kind::Leave, &leave, "R", &users, 3, 40, &mut tally);
        assert_eq!((w.present(), w.complete_since_ns), (2, 0));
        assert_eq!(w.frames, [1, 2, 1, 0]);
        assert_eq!(tally.total(), 4);
        assert_eq!((tally.of(Kind::Join), tally.of(Kind::Leave)), (2, 1));
        assert_eq!((tally.names_joined, tally.names_left), (4, 2));
        let odd = &tally.odd;
        assert_eq!((odd.joins_of_present, odd.leaves_of_absent), (2, 1));
        assert_eq!((odd.strangers, odd.malformed), (1, 0));
        let before = tally.clone();
        w.apply(
            Kind::Join,
            b"{\"type\":\"presence_join\"",
            "R",
            &users,
            3,
            50,
            &mut tally,
        );
        let other = event("presence_join", r#"{"room":"S","names":["u4"]}"#);
        w.apply(Kind::Join, &other, "R", &users, 3, 60, &mut tally);
        let names_not_strings = event("presence_join", r#"{"room":"R","names":[1]}"#);
        w.apply(
            Kind::Join,
            &names_not_strings,
            "R",
            &users,
            3,
            70,
            &mut tally,
        );
        let since = tally.minus(&before);
        assert_eq!(
            (since.total(), since.odd.malformed, since.odd.wrong_room),
            (3, 2, 1)
        );
        assert_eq!(w.present(), 2);
    }

    #[test]
    fn a_big_room_is_counted() {
        let users = Users::new("u", 10);
        let mut tally = Tally::default();
        let mut w = Watch::default();
        let snap = event("presence", r#"{"room":"R","count":4}"#);
        w.apply(Kind::Snapshot, &snap, "R", &users, 5, 1, &mut tally);
        assert_eq!((w.present(), w.complete(5)), (0, false));
        let count = event("presence_count", r#"{"room":"R","count":5}"#);
        w.apply(Kind::Count, &count, "R", &users, 5, 2, &mut tally);
        assert_eq!(w.complete_since_ns, 2);
        assert_eq!(tally.odd, Oddities::default());
        w.forget();
        assert!(!w.complete(5));
        assert_eq!(tally.to_json()["counts"], 1);
    }
}

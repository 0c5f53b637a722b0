//! The server API's looks through Redis (`GET /api/rooms...`), so they see
//! the whole cluster: every room from the presence hashes (`rooms.lua`, a
//! step of a SCAN at a time, so Redis is never held long), a
//! room's members from its presence hash and where its numbering stands
//! from the read script, and its history through the read script as a
//! resuming member's.

use std::collections::BTreeMap;
use std::rc::Rc;

use redis_protocol::resp2::types::OwnedFrame;

use super::dispatch::Expect;
use super::scripts::{self, Read, RoomKeys, RoomRead, parse_read};
use super::{LOGGED_REPLY, RedisBus};
use crate::broker::inspect::{ApiRead, ApiView, HistoryPage, RoomCount, RoomInfo, sum_seats};
use crate::broker::StoreAnswer;
use crate::history::{Resume, parse_id};
use crate::logging::Truncated;
use crate::slab::SlotId;

const ROOMS: &str = include_str!("rooms.lua");

/// A room's read (as `read.lua`, `last 0`: where its numbering stands) and
/// its presence hash, in one step: KEYS[1] and KEYS[2] the read's, KEYS[3]
/// the presence hash.
fn room_script() -> String {
    format!(
        "local function read()\n{}\nend\nreturn {{read(), redis.call('HGETALL', KEYS[3])}}",
        scripts::READ
    )
}

/// The rooms found so far by a walk for `GET /api/rooms`.
#[derive(Debug, Default)]
pub(super) struct RoomsWalk {
    /// By name: SCAN may return a key more than once.
    found: BTreeMap<String, RoomCount>,
}

impl RedisBus {
    /// Sends what `read` needs for connection `asker`; the answer goes to
    /// `answers` when the reply comes (at once, `Unavailable`, when it
    /// cannot go).
    pub(super) fn look(&mut self, asker: SlotId, read: ApiRead) {
        let args = match &read {
            ApiRead::Rooms => return self.walk_rooms(asker, "0", RoomsWalk::default()),
            ApiRead::Room { room } => {
                let keys = RoomKeys::new(&self.prefix, room);
                let script = room_script().into_bytes();
                let mut args = scripts::read_args(
                    [b"EVAL".to_vec(), script],
                    RoomKeys::new(&self.prefix, room),
                    &Read::Last(0),
                    &self.master,
                );
                // Three keys: the read's two and the presence hash after them.
                args[2] = b"3".to_vec();
                args.insert(5, keys.presence.into_bytes());
                args
            }
            ApiRead::History { room, since, limit } => {
                let read = match ApiRead::resume(since, *limit) {
                    Resume::Since(id) => match parse_id(&id) {
                        Some((epoch, seq)) => Read::After {
                            epoch: epoch.to_string(),
                            seq,
                        },
                        None => Read::Last(usize::MAX >> 1),
                    },
                    Resume::Last(count) => Read::Last(count),
                };
                let script = [b"EVAL".to_vec(), scripts::READ.as_bytes().to_vec()];
                scripts::read_args(script, RoomKeys::new(&self.prefix, room), &read, &self.master)
            }
        };
        match self.commands.send(&args) {
            true => (self.expected).push_back((self.now, Expect::Look { asker, read })),
            false => self.answers.push((asker, StoreAnswer::Unavailable)),
        }
    }

    /// The walk's next step, from `cursor`.
    fn walk_rooms(&mut self, asker: SlotId, cursor: &str, walk: RoomsWalk) {
        let pattern = format!("{}{{room:*}}:presence", glob_escaped(&self.prefix));
        let args = [b"EVAL".as_slice(), ROOMS.as_bytes(), b"0", pattern.as_bytes(), cursor.as_bytes()];
        match self.commands.send(&args.map(<[u8]>::to_vec)) {
            true => (self.expected).push_back((self.now, Expect::Rooms { asker, walk })),
            false => self.answers.push((asker, StoreAnswer::Unavailable)),
        }
    }

    /// A step of the walk answered: the next one, or the answer.
    pub(super) fn rooms_walked(&mut self, asker: SlotId, mut walk: RoomsWalk, frame: OwnedFrame) {
        match rooms_step(&self.prefix, frame) {
            Ok((cursor, rooms)) => {
                walk.found.extend(rooms.into_iter().map(|room| (room.room.clone(), room)));
                match cursor.as_str() {
                    "0" => {
                        let rooms = walk.found.into_values().collect();
                        self.answers.push((asker, StoreAnswer::Api(ApiView::Rooms(rooms))));
                    }
                    cursor => self.walk_rooms(asker, cursor, walk),
                }
            }
            Err(why) => {
                log::warn!("redis: an API look failed: {why}");
                self.answers.push((asker, StoreAnswer::Unavailable));
            }
        }
    }

    /// Redis answered `read`, asked for `asker`.
    pub(super) fn looked(&mut self, asker: SlotId, read: ApiRead, frame: OwnedFrame) {
        let seen = match read {
            ApiRead::Rooms => Err("a walk's step answered as a look".to_string()),
            ApiRead::Room { .. } => room(frame).map(ApiView::Room),
            ApiRead::History { since, limit, .. } => parse_read(frame).map(|read| {
                let page =
                    HistoryPage::read(&read.view(), &read.entries, &since, limit, Vec::as_slice);
                ApiView::History(page)
            }),
        };
        let answer = match seen {
            Ok(view) => StoreAnswer::Api(view),
            Err(why) => {
                log::warn!("redis: an API look failed: {why}");
                StoreAnswer::Unavailable
            }
        };
        self.answers.push((asker, answer));
    }
}

/// `text` as a SCAN pattern that matches only itself.
fn glob_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn text(frame: OwnedFrame) -> Option<String> {
    match frame {
        OwnedFrame::BulkString(bytes) => String::from_utf8(bytes).ok(),
        _ => None,
    }
}

fn number(frame: &OwnedFrame) -> Option<u64> {
    match frame {
        OwnedFrame::Integer(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// What a step of `rooms.lua` answered: the next cursor, and the rooms found.
fn rooms_step(prefix: &str, frame: OwnedFrame) -> Result<(String, Vec<RoomCount>), String> {
    let shape = |frame: &OwnedFrame| format!("rooms: {}", Truncated(frame, LOGGED_REPLY));
    let OwnedFrame::Array(parts) = frame else {
        return Err(shape(&frame));
    };
    let [cursor, found] = <[OwnedFrame; 2]>::try_from(parts)
        .map_err(|_| "rooms answered out of shape".to_string())?;
    let cursor = text(cursor).ok_or_else(|| "rooms answered out of shape".to_string())?;
    Ok((cursor, rooms(prefix, found)?))
}

/// The rooms of a step: each with its name taken from its key.
fn rooms(prefix: &str, frame: OwnedFrame) -> Result<Vec<RoomCount>, String> {
    let OwnedFrame::Array(found) = frame else {
        return Err(format!("rooms: {}", Truncated(&frame, LOGGED_REPLY)));
    };
    let head = format!("{prefix}{{room:");
    let mut rooms = Vec::new();
    for entry in found {
        let OwnedFrame::Array(parts) = entry else {
            return Err("rooms answered out of shape".into());
        };
        let [key, users, connections] = <[OwnedFrame; 3]>::try_from(parts)
            .map_err(|_| "rooms answered out of shape".to_string())?;
        let name = text(key).and_then(|key| {
            let name = key.strip_prefix(&head)?.strip_suffix("}:presence")?;
            Some(name.to_string())
        });
        if let (Some(room), Some(users), Some(connections)) =
            (name, number(&users), number(&connections))
        {
            let users = usize::try_from(users).unwrap_or(usize::MAX);
            rooms.push(RoomCount {
                room,
                users,
                connections,
            });
        }
    }
    Ok(rooms)
}

/// What the room script answered: the read, then the presence hash.
fn room(frame: OwnedFrame) -> Result<RoomInfo, String> {
    let OwnedFrame::Array(parts) = frame else {
        return Err(format!("a room: {}", Truncated(&frame, LOGGED_REPLY)));
    };
    let [read, presence] =
        <[OwnedFrame; 2]>::try_from(parts).map_err(|_| "a room answered out of shape")?;
    let read: RoomRead = parse_read(read)?;
    let OwnedFrame::Array(fields) = presence else {
        return Err("a room's presence is not a hash".into());
    };
    let mut pairs = Vec::new();
    let mut fields = fields.into_iter();
    while let (Some(field), Some(value)) = (fields.next(), fields.next()) {
        // "<process>:<user>" -> connections; "<process>" -> its version.
        let user = text(field).and_then(|f| f.split_once(':').map(|(_, user)| user.to_string()));
        let connections = text(value).and_then(|v| v.parse::<u64>().ok());
        if let (Some(user), Some(connections)) = (user, connections) {
            pairs.push((Rc::<str>::from(user), connections));
        }
    }
    let users = sum_seats(pairs.iter().map(|(user, n)| (&**user, *n)));
    Ok(RoomInfo::new(users, &read.view()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_matched_as_itself() {
        assert_eq!(glob_escaped("chat:"), "chat:");
        assert_eq!(glob_escaped("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn rooms_are_named_from_their_keys() {
        let entry = |key: &str, users, connections| {
            OwnedFrame::Array(vec![
                OwnedFrame::BulkString(key.as_bytes().to_vec()),
                OwnedFrame::Integer(users),
                OwnedFrame::Integer(connections),
            ])
        };
        let frame = OwnedFrame::Array(vec![
            entry("p:{room:news}:presence", 2, 3),
            entry("p:{room:a}b}:presence", 1, 1),
            entry("other:{room:x}:presence", 1, 1),
        ]);
        let rooms = rooms("p:", frame).expect("rooms");
        let names: Vec<&str> = rooms.iter().map(|r| r.room.as_str()).collect();
        assert_eq!(names, ["news", "a}b"]);
        assert_eq!((rooms[0].users, rooms[0].connections), (2, 3));
    }
}

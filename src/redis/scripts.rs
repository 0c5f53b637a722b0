//! A room's keys in Redis, the Lua scripts that use them, and what their
//! answers mean.
//!
//! Room `<name>` under the prefix `P` is (the `{room:<name>}` hash tag keeps
//! a room's keys in one Redis Cluster slot):
//! - `P{room:<name>}:epoch`, a string `<epoch> <master>`: the room's current
//!   epoch, the run of its numbering (a room whose keys expired starts a
//!   new one, at 1), and the replication id of the master that numbers it
//!   (a failover starts a new one too: `publish.lua`);
//! - `P{room:<name>}:log`, a stream: message `n` of the epoch is the entry
//!   `<epoch>-<n-1>`, field `e` its event JSON without its closing `}}` and
//!   id (added when read). The stream is also the room's counter: Redis
//!   takes the next entry id itself (`publish.lua`);
//! - the channel `Proom:<name>`, where each message is published as
//!   `<epoch>-<seq> <event JSON>`, the id first so that a subscriber reads
//!   it without parsing JSON.
//!
//! Both keys always share one lifetime: `--history-ttl` after the room's
//! last message (at least; up to 1.25 times that), the longest any process
//! asks for.
//!
//! The scripts are loaded into Redis's script cache on each fresh command
//! connection, and called by their SHA once it is known (by their text
//! until then, or when Redis has lost them).

use redis_protocol::resp2::types::OwnedFrame;

use super::dispatch::{Expect, Outgoing};
use super::link::command;
use super::{History, LOGGED_REPLY, RedisBus};
use crate::history::RoomView;
use crate::logging::Truncated;

/// Numbers, keeps and publishes one message (see the script's header).
pub const PUBLISH: &str = include_str!("publish.lua");
/// Reads what a resume or a repair needs of a room (see the script's header).
pub const READ: &str = include_str!("read.lua");

/// The keys of one room.
pub struct RoomKeys {
    pub epoch: String,
    pub log: String,
    /// Who is in the room, by process (see presence.lua).
    pub presence: String,
}

impl RoomKeys {
    pub fn new(prefix: &str, room: &str) -> RoomKeys {
        RoomKeys {
            epoch: format!("{prefix}{{room:{room}}}:epoch"),
            log: format!("{prefix}{{room:{room}}}:log"),
            presence: format!("{prefix}{{room:{room}}}:presence"),
        }
    }
}

/// The channel of a room.
pub fn channel(prefix: &str, room: &str) -> String {
    format!("{prefix}room:{room}")
}

/// The arguments of one publish of `event` to `room`: `EVALSHA <sha>` (or
/// `EVAL <script>`) and the rest (see publish.lua).
pub fn publish_args(
    verb_and_script: [Vec<u8>; 2],
    (prefix, room): (&str, &str),
    post: &Outgoing,
    history: History,
    refresh: bool,
    master: &str,
) -> Vec<Vec<u8>> {
    let flag = |on: bool| if on { b"1".to_vec() } else { b"0".to_vec() };
    let [verb, script] = verb_and_script;
    let keys = RoomKeys::new(prefix, room);
    vec![
        verb,
        script,
        b"2".to_vec(),
        keys.epoch.into_bytes(),
        keys.log.into_bytes(),
        channel(prefix, room).into_bytes(),
        post.event.clone(),
        history.per_room.to_string().into_bytes(),
        history.ttl.as_millis().to_string().into_bytes(),
        flag(refresh),
        master.as_bytes().to_vec(),
        flag(post.retry),
    ]
}

/// What to read of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The messages after `seq` if it is of `epoch` and not past the newest,
    /// else everything kept.
    After { epoch: String, seq: u64 },
    /// The last this many.
    Last(usize),
}

/// The arguments of one read: `EVALSHA <sha>` (or `EVAL <script>`) and the
/// rest; `master`: the replication id of the master this process believes
/// it talks to ('' if unknown).
pub fn read_args(
    verb_and_script: [Vec<u8>; 2],
    keys: RoomKeys,
    read: &Read,
    master: &str,
) -> Vec<Vec<u8>> {
    let [verb, script] = verb_and_script;
    let mut args = vec![
        verb,
        script,
        b"2".to_vec(),
        keys.epoch.into_bytes(),
        keys.log.into_bytes(),
        master.as_bytes().to_vec(),
    ];
    match read {
        Read::After { epoch, seq } => args.extend([
            b"after".to_vec(),
            epoch.as_bytes().to_vec(),
            seq.to_string().into_bytes(),
        ]),
        Read::Last(count) => args.extend([b"last".to_vec(), count.to_string().into_bytes()]),
    }
    args
}

/// What the read script answered.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RoomRead {
    /// Empty when the room has no keys.
    pub epoch: String,
    /// The newest message's number (0: none).
    pub newest: u64,
    pub oldest_kept: Option<u64>,
    /// (number, whole event JSON with its id), oldest first.
    pub entries: Vec<(u64, Vec<u8>)>,
}

impl RoomRead {
    pub fn view(&self) -> RoomView<'_> {
        RoomView {
            epoch: &self.epoch,
            newest: self.newest,
            oldest_kept: self.oldest_kept,
        }
    }
}

/// The read script's answer, `[epoch, newest, oldest, [[id, ["e", event]],
/// ...]]`; entries of another epoch or out of shape are skipped.
pub fn parse_read(frame: OwnedFrame) -> Result<RoomRead, String> {
    let OwnedFrame::Array(parts) = frame else {
        return Err(format!("a read failed: {}", Truncated(&frame, 200)));
    };
    let mut parts = parts.into_iter();
    let (Some(epoch), Some(newest), Some(oldest), Some(OwnedFrame::Array(entries))) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("a read answered out of shape".into());
    };
    let epoch = match epoch {
        OwnedFrame::BulkString(bytes) => String::from_utf8(bytes).map_err(|_| "a bad epoch")?,
        _ => return Err("a read answered out of shape".into()),
    };
    let number = |frame: &OwnedFrame| match frame {
        OwnedFrame::Integer(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    let newest = number(&newest).unwrap_or(0);
    let oldest_kept = number(&oldest).filter(|&n| n > 0);
    let entries = entries
        .into_iter()
        .filter_map(|entry| entry_of(&epoch, entry))
        .collect();
    Ok(RoomRead {
        epoch,
        newest,
        oldest_kept,
        entries,
    })
}

/// One stream entry `[id, ["e", event]]` as (number, whole event JSON).
fn entry_of(epoch: &str, entry: OwnedFrame) -> Option<(u64, Vec<u8>)> {
    let OwnedFrame::Array(entry) = entry else {
        return None;
    };
    let mut entry = entry.into_iter();
    let (Some(OwnedFrame::BulkString(id)), Some(OwnedFrame::Array(fields))) =
        (entry.next(), entry.next())
    else {
        return None;
    };
    let id = std::str::from_utf8(&id).ok()?;
    let (of, index) = id.split_once('-')?;
    if of != epoch {
        return None;
    }
    let seq = index.parse::<u64>().ok()?.checked_add(1)?;
    let event = match fields.into_iter().nth(1)? {
        OwnedFrame::BulkString(event) => event,
        _ => return None,
    };
    Some((seq, close_event(&event, epoch, seq)))
}

/// An event JSON without its closing `}}`, closed with its id.
pub fn close_event(open: &[u8], epoch: &str, seq: u64) -> Vec<u8> {
    let mut event = Vec::with_capacity(open.len() + epoch.len() + 32);
    event.extend_from_slice(open);
    event.extend_from_slice(format!(",\"id\":\"{epoch}-{seq}\"}}}}").as_bytes());
    event
}

/// A script's SHA1 in hex: the name Redis's script cache gives it.
pub fn sha1_hex(script: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, script.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A published message, `<epoch>-<seq> <event JSON>`: its epoch, number and event.
pub fn parse_published(payload: &[u8]) -> Option<(&str, u64, &[u8])> {
    let space = payload.iter().position(|&b| b == b' ')?;
    let id = std::str::from_utf8(&payload[..space]).ok()?;
    let (epoch, seq) = id.rsplit_once('-')?;
    let seq = seq.parse().ok().filter(|&seq| seq > 0)?;
    Some((epoch, seq, &payload[space + 1..]))
}

impl RedisBus {
    /// Loads the publish script (or, `read`, the read script) into Redis's
    /// cache, so that calls name it by its SHA: at once, since Redis runs
    /// what follows on the connection after the load (its answer only
    /// confirms the SHA; a call that finds the script gone goes again with
    /// its text).
    pub(super) fn load_script(&mut self, read: bool) {
        let script = if read { READ } else { PUBLISH };
        if self.commands.send(&command(&["SCRIPT", "LOAD", script])) {
            self.expected
                .push_back((self.now, Expect::ScriptLoad { read }));
            let sha = Some(sha1_hex(script));
            match read {
                true => self.read_sha = sha,
                false => self.script_sha = sha,
            }
        }
    }

    /// Redis answered a SCRIPT LOAD: the script's SHA, or why not.
    pub(super) fn script_loaded(&mut self, read: bool, frame: OwnedFrame) {
        match frame {
            OwnedFrame::BulkString(sha) => {
                let sha = String::from_utf8(sha).ok();
                match read {
                    true => self.read_sha = sha,
                    false => self.script_sha = sha,
                }
            }
            other => {
                log::error!(
                    "redis: cannot load a script: {}",
                    Truncated(&other, LOGGED_REPLY)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> OwnedFrame {
        OwnedFrame::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn a_room_keeps_its_keys_under_one_hash_tag() {
        let keys = RoomKeys::new("chat:", "rust");
        assert_eq!(keys.epoch, "chat:{room:rust}:epoch");
        assert_eq!(keys.log, "chat:{room:rust}:log");
        assert_eq!(channel("chat:", "rust"), "chat:room:rust");
    }

    #[test]
    fn a_read_gives_whole_events_numbered_from_their_entry_ids() {
        let entry = |id: &str, event: &str| {
            OwnedFrame::Array(vec![
                bulk(id),
                OwnedFrame::Array(vec![bulk("e"), bulk(event)]),
            ])
        };
        let frame = OwnedFrame::Array(vec![
            bulk("17"),
            OwnedFrame::Integer(9),
            OwnedFrame::Integer(8),
            OwnedFrame::Array(vec![
                entry("17-7", r#"{"type":"new_message","payload":{"message":"a""#),
                entry("16-8", "{\"other epoch\""),
                OwnedFrame::Integer(3),
                entry("17-8", r#"{"payload":{"m":"b""#),
            ]),
        ]);
        let read = parse_read(frame).unwrap();
        assert_eq!((read.epoch.as_str(), read.newest), ("17", 9));
        assert_eq!(read.oldest_kept, Some(8));
        let entries: Vec<(u64, String)> = read
            .entries
            .iter()
            .map(|(seq, event)| (*seq, String::from_utf8_lossy(event).into_owned()))
            .collect();
        assert_eq!(
            entries,
            [
                (
                    8,
                    r#"{"type":"new_message","payload":{"message":"a","id":"17-8"}}"#.to_string()
                ),
                (9, r#"{"payload":{"m":"b","id":"17-9"}}"#.to_string()),
            ]
        );
        let parsed: serde_json::Value = serde_json::from_slice(&read.entries[0].1).unwrap();
        assert_eq!(parsed["payload"]["id"], "17-8");
        assert!(parse_read(OwnedFrame::Error("ERR".into())).is_err());
        assert!(parse_read(OwnedFrame::Array(vec![bulk("1")])).is_err());
    }

    #[test]
    fn a_scripts_sha_is_the_one_redis_names_it_by() {
        // `redis-cli SCRIPT LOAD "return 1"`
        assert_eq!(sha1_hex("return 1"), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    }

    #[test]
    fn a_published_message_is_read_without_parsing_json() {
        let (epoch, seq, event) = parse_published(b"1796-42 {\"a\":1}").unwrap();
        assert_eq!((epoch, seq, event), ("1796", 42, &b"{\"a\":1}"[..]));
        assert_eq!(parse_published(b"nospace"), None);
        assert_eq!(parse_published(b"e-x {}"), None);
        assert_eq!(parse_published(b"e-0 {}"), None, "0 is no number");
    }
}

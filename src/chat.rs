//! The chat protocol's words: JSON events in and out.
//!
//! Every event is `{"type": ..., "payload": {...}}`. Outgoing events are
//! serialised once and framed once (`ws::text_frame`); the hub hands the same
//! bytes to every member of a room.

use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::history::Resume;
use crate::ws::text_frame;

/// The room every new connection starts in.
pub const DEFAULT_ROOM: &str = "general";
/// Longest room name accepted, in bytes.
pub const MAX_ROOM_NAME: usize = 64;

/// What a client can ask for.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEvent {
    SendMessage {
        message: String,
    },
    /// Move to room `name`; with `resume`, first get what was said there
    /// (after an id, or the last few), then live messages; with `presence`,
    /// who is there, and then who comes and goes.
    ChangeRoom {
        name: String,
        resume: Option<Resume>,
        presence: bool,
    },
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: serde_json::Value,
}

/// `from` may be sent by clients (the tutorial's page does); it is ignored.
#[derive(Deserialize)]
struct SendMessagePayload {
    message: String,
}

#[derive(Deserialize)]
struct ChangeRoomPayload {
    name: String,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    history: Option<u32>,
    #[serde(default)]
    presence: bool,
}

/// Decodes one text frame; the error is the message for an `error` event.
pub fn decode(text: &str) -> Result<ClientEvent, String> {
    let envelope: Envelope = serde_json::from_str(text)
        .map_err(|_| "invalid event: expected {\"type\": \"...\", \"payload\": {...}}")?;
    match envelope.kind.as_str() {
        "send_message" => {
            let payload: SendMessagePayload = serde_json::from_value(envelope.payload)
                .map_err(|_| "send_message needs a payload like {\"message\": \"text\"}")?;
            if payload.message.trim().is_empty() {
                return Err("message is empty".into());
            }
            Ok(ClientEvent::SendMessage {
                message: payload.message,
            })
        }
        "change_room" => {
            let payload: ChangeRoomPayload = serde_json::from_value(envelope.payload)
                .map_err(|_| {
                    "change_room needs a payload like {\"name\": \"room\"} \
                     (optional: \"since\": \"ID\", \"history\": N, \"presence\": true)"
                })?;
            check_room_name(&payload.name)?;
            let resume = match (payload.since, payload.history) {
                (Some(since), _) => Some(Resume::Since(since)),
                (None, Some(count)) => Some(Resume::Last(count as usize)),
                (None, None) => None,
            };
            Ok(ClientEvent::ChangeRoom {
                name: payload.name,
                resume,
                presence: payload.presence,
            })
        }
        other => Err(format!("unknown event type {other:?}")),
    }
}

#[derive(Serialize)]
struct Outgoing<'a, P: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    payload: P,
}

/// A room name a client may ask for: 1 to 64 bytes, not blank.
pub fn check_room_name(name: &str) -> Result<(), String> {
    match name.trim().is_empty() || name.len() > MAX_ROOM_NAME {
        true => Err(format!(
            "room name must be 1 to {MAX_ROOM_NAME} bytes, not blank"
        )),
        false => Ok(()),
    }
}

#[derive(Serialize)]
struct NewMessage<'a> {
    message: &'a str,
    from: &'a str,
    sent: &'a str,
    /// `<epoch>-<seq>`: increasing within a room (absent where not yet assigned).
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

#[derive(Serialize)]
struct HistoryGap<'a> {
    room: &'a str,
    oldest: Option<&'a str>,
}

#[derive(Serialize)]
struct ErrorPayload<'a> {
    message: &'a str,
}

fn event_json<P: Serialize>(kind: &str, payload: P) -> Vec<u8> {
    // Serialising plain strings into a Vec cannot fail.
    serde_json::to_vec(&Outgoing { kind, payload }).unwrap_or_default()
}

fn event_frame<P: Serialize>(kind: &str, payload: P) -> Rc<[u8]> {
    text_frame(&event_json(kind, payload))
}

/// The `new_message` event as JSON (what a broker carries between processes).
pub fn new_message_json(message: &str, from: &str, sent: &str, id: Option<&str>) -> Vec<u8> {
    event_json(
        "new_message",
        NewMessage {
            message,
            from,
            sent,
            id,
        },
    )
}

/// The `new_message` frame, built once per broadcast.
pub fn new_message_frame(message: &str, from: &str, sent: &str, id: Option<&str>) -> Rc<[u8]> {
    text_frame(&new_message_json(message, from, sent, id))
}

/// `history_gap`: what the member asked to resume from is no longer kept;
/// `oldest` is the oldest message that is (sent only to members who asked).
pub fn history_gap_frame(room: &str, oldest: Option<&str>) -> Rc<[u8]> {
    event_frame("history_gap", HistoryGap { room, oldest })
}

/// One user in a `presence` snapshot.
#[derive(Serialize)]
pub struct PresentUser<'a> {
    pub name: &'a str,
    pub connections: u32,
}

#[derive(Serialize)]
struct PresenceSnapshot<'a> {
    room: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    users: Option<&'a [PresentUser<'a>]>,
    count: usize,
}

#[derive(Serialize)]
struct PresenceNames<'a> {
    room: &'a str,
    names: &'a [&'a str],
}

#[derive(Serialize)]
struct PresenceCount<'a> {
    room: &'a str,
    count: usize,
}

/// `presence`: who is in `room` (`users`, sorted by name; `None` in a room
/// too big to list) and how many they are.
pub fn presence_frame(room: &str, users: Option<&[PresentUser]>, count: usize) -> Rc<[u8]> {
    event_frame("presence", PresenceSnapshot { room, users, count })
}

/// `presence_join` or `presence_leave` (`kind`): users whose first
/// connection entered `room`, or whose last one left it, in one loop turn.
pub fn presence_names_frame(kind: &str, room: &str, names: &[&str]) -> Rc<[u8]> {
    event_frame(kind, PresenceNames { room, names })
}

/// `presence_count`: how many users a room too big to list has.
pub fn presence_count_frame(room: &str, count: usize) -> Rc<[u8]> {
    event_frame("presence_count", PresenceCount { room, count })
}

/// An `error` event for one client.
pub fn error_frame(message: &str) -> Rc<[u8]> {
    event_frame("error", ErrorPayload { message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_tutorial_events() {
        assert_eq!(
            decode(r#"{"type":"send_message","payload":{"message":"hi","from":"mallory"}}"#),
            Ok(ClientEvent::SendMessage {
                message: "hi".into()
            })
        );
        assert_eq!(
            decode(r#"{"type":"change_room","payload":{"name":"rust"}}"#),
            Ok(ClientEvent::ChangeRoom {
                name: "rust".into(),
                resume: None,
                presence: false
            })
        );
        assert_eq!(
            decode(r#"{"type":"change_room","payload":{"name":"rust","since":"e1-4"}}"#),
            Ok(ClientEvent::ChangeRoom {
                name: "rust".into(),
                resume: Some(Resume::Since("e1-4".into())),
                presence: false
            })
        );
        assert_eq!(
            decode(r#"{"type":"change_room","payload":{"name":"rust","history":20}}"#),
            Ok(ClientEvent::ChangeRoom {
                name: "rust".into(),
                resume: Some(Resume::Last(20)),
                presence: false
            })
        );
    }

    #[test]
    fn presence_is_asked_with_change_room() {
        assert_eq!(
            decode(r#"{"type":"change_room","payload":{"name":"rust","presence":true}}"#),
            Ok(ClientEvent::ChangeRoom {
                name: "rust".into(),
                resume: None,
                presence: true
            })
        );
        let not_a_flag = r#"{"type":"change_room","payload":{"name":"rust","presence":1}}"#;
        assert!(decode(not_a_flag).unwrap_err().contains("presence"));
    }

    #[test]
    fn explains_what_is_wrong() {
        assert!(decode("not json").unwrap_err().starts_with("invalid event"));
        assert!(
            decode(r#"{"type":"dance","payload":{}}"#)
                .unwrap_err()
                .contains("unknown event type")
        );
        assert!(
            decode(r#"{"type":"send_message","payload":{"msg":1}}"#)
                .unwrap_err()
                .contains("send_message needs")
        );
        assert_eq!(
            decode(r#"{"type":"send_message","payload":{"message":" "}}"#).unwrap_err(),
            "message is empty"
        );
        assert!(
            decode(r#"{"type":"change_room","payload":{"name":""}}"#)
                .unwrap_err()
                .contains("1 to 64")
        );
        assert!(
            decode(r#"{"type":"change_room","payload":{"name":"  "}}"#)
                .unwrap_err()
                .contains("not blank")
        );
        let long = format!(
            r#"{{"type":"change_room","payload":{{"name":"{}"}}}}"#,
            "r".repeat(65)
        );
        assert!(decode(&long).is_err());
    }

    #[test]
    fn new_message_is_one_text_frame_of_json() {
        let frame = new_message_frame("a \"quote\"", "percy", "2026-01-01T00:00:00.000Z", None);
        assert_eq!(frame[0], 0x81);
        let json: serde_json::Value = serde_json::from_slice(&frame[2..]).unwrap();
        assert_eq!(json["type"], "new_message");
        assert_eq!(json["payload"]["message"], "a \"quote\"");
        assert_eq!(json["payload"]["from"], "percy");
    }
}

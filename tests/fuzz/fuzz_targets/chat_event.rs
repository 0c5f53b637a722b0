//! (c) The chat event decoder: any text, decoded; accepted events respect the
//! protocol's rules and survive the trip back out as JSON.
#![no_main]

use chat_server::chat::{self, ClientEvent, MAX_ROOM_NAME};
use chat_server::history::Resume;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match chat::decode(text) {
        Ok(ClientEvent::SendMessage { message }) => {
            assert!(!message.trim().is_empty());
            let id = Some("e1f2-7");
            let frame = chat::new_message_frame(&message, "percy", "2026-01-01T00:00:00.000Z", id);
            let json: serde_json::Value =
                serde_json::from_slice(payload(&frame)).expect("frame is JSON");
            assert_eq!(json["type"], "new_message");
            assert_eq!(json["payload"]["message"].as_str(), Some(message.as_str()));
            assert_eq!(json["payload"]["id"].as_str(), id);
        }
        Ok(ClientEvent::ChangeRoom {
            name,
            resume,
            presence,
        }) => {
            assert!(
                !name.trim().is_empty() && name.len() <= MAX_ROOM_NAME,
                "{name:?}"
            );
            // Presence is watched only when the client asked for it.
            assert!(!presence || text.contains("presence") || text.contains('\\'));
            // A resume is only ever what the client asked for, never invented.
            match resume {
                Some(Resume::Since(id)) => {
                    assert!(text.contains(&*id) || id.is_empty() || text.contains('\\'))
                }
                Some(Resume::Last(count)) => assert!(count <= u32::MAX as usize),
                None => {}
            }
        }
        Err(why) => {
            let frame = chat::error_frame(&why);
            let json: serde_json::Value =
                serde_json::from_slice(payload(&frame)).expect("frame is JSON");
            assert_eq!(json["payload"]["message"].as_str(), Some(why.as_str()));
        }
    }
});

/// The payload of an unmasked server frame.
fn payload(frame: &[u8]) -> &[u8] {
    match frame[1] {
        126 => &frame[4..],
        127 => &frame[10..],
        _ => &frame[2..],
    }
}

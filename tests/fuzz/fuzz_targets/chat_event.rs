//! (c) The chat event decoder: any text, decoded; accepted events respect the
//! protocol's rules and survive the trip back out as JSON.
#![no_main]

use chat_server::chat::{self, ClientEvent, MAX_ROOM_NAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match chat::decode(text) {
        Ok(ClientEvent::SendMessage { message }) => {
            assert!(!message.trim().is_empty());
            let frame = chat::new_message_frame(&message, "percy", "2026-01-01T00:00:00.000Z");
            let json: serde_json::Value =
                serde_json::from_slice(payload(&frame)).expect("frame is JSON");
            assert_eq!(json["type"], "new_message");
            assert_eq!(json["payload"]["message"].as_str(), Some(message.as_str()));
        }
        Ok(ClientEvent::ChangeRoom { name }) => {
            assert!(
                !name.trim().is_empty() && name.len() <= MAX_ROOM_NAME,
                "{name:?}"
            );
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

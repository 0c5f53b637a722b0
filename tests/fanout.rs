//! Many clients, many rooms: every member gets exactly its room's messages, in
//! order; with a write delay, a client's messages share one write.

mod support;

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{TestServer, Ws, next_event, send_event};
use tungstenite::Message;

const ROOMS: usize = 10;
const PER_ROOM: usize = 20;
const MESSAGES: usize = 20;

/// Reads events until `done` says stop; returns the chat messages seen (other than markers).
fn read_until(ws: &mut Ws, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let event = next_event(ws);
        assert_eq!(event["type"], "new_message", "unexpected event {event}");
        let text = event["payload"]["message"]
            .as_str()
            .expect("message")
            .to_string();
        if done(&text) {
            return seen;
        }
        if !text.starts_with("join:") {
            seen.push(text);
        }
    }
}

#[test]
fn two_hundred_clients_in_ten_rooms_get_exactly_their_rooms_messages() {
    let server = TestServer::start();
    let clients: Vec<(usize, Ws)> = (0..ROOMS * PER_ROOM)
        .map(|id| (id, server.connect()))
        .collect();
    let barrier = Arc::new(Barrier::new(clients.len()));
    let workers: Vec<_> = clients
        .into_iter()
        .map(|(id, mut ws)| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let room = id % ROOMS;
                send_event(
                    &mut ws,
                    "change_room",
                    json!({"name": format!("room-{room}")}),
                );
                // Our own marker coming back proves we are in the room.
                let marker = format!("join:{id}");
                send_event(&mut ws, "send_message", json!({"message": marker}));
                read_until(&mut ws, |text| text == marker);
                barrier.wait();

                for seq in 0..MESSAGES {
                    send_event(
                        &mut ws,
                        "send_message",
                        json!({"message": format!("{id}:{seq}")}),
                    );
                }
                let expected = PER_ROOM * MESSAGES;
                let mut got = Vec::new();
                while got.len() < expected {
                    let event = next_event(&mut ws);
                    let text = event["payload"]["message"]
                        .as_str()
                        .expect("message")
                        .to_string();
                    if !text.starts_with("join:") {
                        got.push(text);
                    }
                }
                barrier.wait();
                let end = format!("end:{id}");
                send_event(&mut ws, "send_message", json!({"message": end}));
                let mut ends = 0;
                let mut extra = read_until(&mut ws, |text| {
                    ends += usize::from(text.starts_with("end:"));
                    ends == PER_ROOM
                });
                extra.retain(|text| !text.starts_with("end:"));
                (id, got, extra)
            })
        })
        .collect();

    for worker in workers {
        let (id, got, extra) = worker.join().expect("client thread");
        let room = id % ROOMS;
        assert!(
            extra.is_empty(),
            "client {id} got unexpected messages {extra:?}"
        );
        let mut by_sender: HashMap<usize, Vec<usize>> = HashMap::new();
        for text in &got {
            let (sender, seq) = text.split_once(':').expect("id:seq");
            let sender: usize = sender.parse().expect("sender id");
            assert_eq!(
                sender % ROOMS,
                room,
                "client {id} in room {room} got {text}"
            );
            by_sender
                .entry(sender)
                .or_default()
                .push(seq.parse().expect("seq"));
        }
        assert_eq!(
            by_sender.len(),
            PER_ROOM,
            "client {id} heard from {} senders",
            by_sender.len()
        );
        for (sender, seqs) in by_sender {
            assert_eq!(
                seqs,
                (0..MESSAGES).collect::<Vec<_>>(),
                "client {id}: sender {sender} out of order or lost"
            );
        }
    }
}

#[test]
fn a_write_delay_sends_a_rooms_messages_to_each_client_in_one_write() {
    let server = TestServer::start_with(&["--write-delay", "400ms"]);
    let mut listener = server.connect();
    let mut sender = server.connect();
    let sent = Instant::now();
    send_event(&mut sender, "send_message", json!({ "message": "one" }));
    thread::sleep(Duration::from_millis(100));
    send_event(&mut sender, "send_message", json!({ "message": "two" }));

    // Raw bytes under the WebSocket: the first read must hold both frames.
    let stream = listener.get_mut();
    let mut bytes = vec![0u8; 4096];
    let n = stream.read(&mut bytes).expect("the held messages");
    let waited = sent.elapsed();
    let text = String::from_utf8_lossy(&bytes[..n]);
    assert!(
        text.contains("\"one\"") && text.contains("\"two\""),
        "one write should carry both messages, got {text}"
    );
    assert!(waited >= Duration::from_millis(350), "not held: {waited:?}");

    // Replies to the sender alone (an error here) are never held.
    let asked = Instant::now();
    sender.send(Message::text("not json")).expect("send");
    loop {
        let event = next_event(&mut sender);
        if event["type"] == "error" {
            break;
        }
    }
    assert!(
        asked.elapsed() < Duration::from_millis(300),
        "the error waited {:?}",
        asked.elapsed()
    );
}

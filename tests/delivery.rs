//! Nothing lost, nothing twice, without Redis: a member's catch-up after a
//! resume dies with the room it was for, `--history-ttl` is honoured for
//! every room, and rooms with no messages count against
//! `--history-max-bytes`. Each test here failed on the server before the
//! fix (issue 22, findings 1, 4 and 5).

mod support;

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{TestServer, Ws, next_event, send_event};

fn say(ws: &mut Ws, text: &str) {
    send_event(ws, "send_message", json!({ "message": text }));
}

fn message_of(event: &Value) -> &str {
    event["payload"]["message"].as_str().unwrap_or("")
}

/// A member of `room`.
fn member(server: &TestServer, room: &str) -> Ws {
    let mut ws = server.connect();
    send_event(&mut ws, "change_room", json!({ "name": room }));
    ws
}

/// Says `count` messages and returns their ids as the sender receives them.
fn said(ws: &mut Ws, prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|n| {
            let text = format!("{prefix} {n}");
            say(ws, &text);
            let event = next_event(ws);
            assert_eq!(message_of(&event), text);
            event["payload"]["id"].as_str().expect("an id").to_string()
        })
        .collect()
}

/// Events up to and including the one whose message is `last`.
fn events_through(ws: &mut Ws, last: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let event = next_event(ws);
        let done = message_of(&event) == last;
        events.push(event);
        if done {
            return events;
        }
    }
}

fn metric(server: &TestServer, name: &str) -> f64 {
    let text = server.request("GET", "/metrics", &[], b"").text();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

/// Finding 1: after a resume, the member's marker of the last replayed
/// number outlived the room's numbering. Once the room's history expired
/// and it restarted at 1, live messages up to that number were dropped for
/// that member, its own included (5 of 7 never came back).
#[test]
fn a_member_that_resumed_hears_everything_after_the_room_starts_a_new_epoch() {
    let server = TestServer::start_with(&["--history-ttl", "300ms"]);
    let mut other = member(&server, "r");
    let old = said(&mut other, &"x".repeat(300), 5);
    let mut ws = server.connect();
    send_event(&mut ws, "change_room", json!({ "name": "r", "history": 5 }));
    let replayed: Vec<String> = (0..5)
        .map(|_| next_event(&mut ws)["payload"]["id"].to_string())
        .collect();
    assert_eq!(replayed.len(), old.len());
    // The room empties (no live message reached it after the replay) and its
    // history is freed after the ttl.
    let kept = metric(&server, "chat_history_bytes");
    send_event(&mut ws, "change_room", json!({ "name": "elsewhere" }));
    drop(other);
    let start = Instant::now();
    while metric(&server, "chat_history_bytes") > kept - 1000.0 {
        assert!(start.elapsed() < Duration::from_secs(10), "r never freed");
        thread::sleep(Duration::from_millis(50));
    }
    // Back in r, numbered from 1 again: every message comes back.
    send_event(&mut ws, "change_room", json!({ "name": "r" }));
    for n in 0..7 {
        say(&mut ws, &format!("new {n}"));
    }
    let got: Vec<String> = events_through(&mut ws, "new 6")
        .iter()
        .map(|event| message_of(event).to_string())
        .collect();
    let sent: Vec<String> = (0..7).map(|n| format!("new {n}")).collect();
    assert_eq!(got, sent, "every message after the room's new epoch");
}

/// Finding 4: when a stale entry in the list of emptied rooms (a room that
/// filled again) came due, the next still-empty room was freed, however
/// recently it emptied.
#[test]
fn an_empty_room_keeps_its_history_for_the_whole_ttl() {
    const TTL: Duration = Duration::from_secs(3);
    let server = TestServer::start_with(&["--history-ttl", "3s"]);
    // Room a empties, then fills again: its entry in the queue is stale. (It
    // waits in a lobby that never empties, so nothing else enters the queue.)
    // Every client starts in general and leaves it: those entries go first.
    let mut b = member(&server, "b");
    let _lobby = member(&server, "lobby");
    let mut a = member(&server, "a");
    said(&mut a, "in a", 1);
    let a_emptied = Instant::now();
    send_event(&mut a, "change_room", json!({ "name": "lobby" }));
    send_event(&mut a, "change_room", json!({ "name": "a" }));
    said(&mut a, "back in a", 1);
    // Room b empties half a ttl later.
    thread::sleep(TTL / 2);
    let ids = said(&mut b, "in b", 3);
    send_event(&mut b, "change_room", json!({ "name": "elsewhere" }));
    said(&mut b, "left b", 1);
    let b_emptied = Instant::now();
    // Past a's stale due time, well before b's.
    let check_at = a_emptied + TTL + Duration::from_millis(500);
    thread::sleep(check_at.saturating_duration_since(Instant::now()));
    send_event(
        &mut b,
        "change_room",
        json!({ "name": "b", "since": ids[0] }),
    );
    say(&mut b, "marker");
    let events = events_through(&mut b, "marker");
    assert!(
        b_emptied.elapsed() < TTL - Duration::from_millis(300),
        "the check came too late to tell ({:?} after b emptied)",
        b_emptied.elapsed()
    );
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    let texts: Vec<&str> = events.iter().map(message_of).collect();
    assert_eq!(
        kinds,
        ["new_message"; 3],
        "no history_gap: b emptied {:?} ago",
        b_emptied.elapsed()
    );
    assert_eq!(texts, ["in b 1", "in b 2", "marker"]);
}

/// Finding 5: a room with no messages counted 0 bytes, so the bound never
/// freed it and each stayed for the whole ttl (8,000 names gave +3.2 MB
/// with the bound at 64 KiB).
#[test]
fn rooms_without_messages_count_against_the_history_bound() {
    const ROOMS: usize = 20_000;
    const BOUND: f64 = 65_536.0;
    let server = TestServer::start_with(&[
        "--event-rate",
        "1000000",
        "--event-burst",
        "1000000",
        "--history-max-bytes",
        "65536",
        "--history-ttl",
        "10m",
    ]);
    let mut ws = server.connect();
    // One message first, so the allocator's first growth is behind us.
    said(&mut ws, "warm", 1);
    let rss_before = server.status_kb("VmRSS");
    for room in 0..ROOMS {
        let name = format!("a room with a long name, number {room}");
        send_event(&mut ws, "change_room", json!({ "name": name }));
    }
    send_event(&mut ws, "change_room", json!({ "name": "done" }));
    said(&mut ws, "finished", 1);
    let held = metric(&server, "chat_history_bytes");
    assert!(
        held > 0.0 && held <= BOUND,
        "history counts {held} bytes (bound {BOUND})"
    );
    let grown = server.status_kb("VmRSS").saturating_sub(rss_before);
    assert!(grown < 2048, "RSS grew {grown} kB for {ROOMS} empty rooms");
}

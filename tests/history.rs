//! History and resume, over the real server: message ids, resuming at the
//! window's boundaries, `history_gap`, replay racing live traffic, joining a
//! room straight from the upgrade, memory under thousands of rooms, and the
//! tutorial's protocol unchanged for clients that never ask.

mod support;

use std::collections::HashSet;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{TestServer, Ws, next_event, send_event};

fn member(server: &TestServer, room: &str) -> Ws {
    let mut ws = server.connect();
    send_event(&mut ws, "change_room", json!({ "name": room }));
    ws
}

fn say(ws: &mut Ws, text: &str) {
    send_event(ws, "send_message", json!({ "message": text }));
}

/// The next event that is not a ping.
fn next(ws: &mut Ws) -> Value {
    next_event(ws)
}

fn message_of(event: &Value) -> &str {
    event["payload"]["message"].as_str().unwrap_or("")
}

/// Sends `count` messages into `room` from `ws` and returns their ids, as the
/// sender itself receives them.
fn said(ws: &mut Ws, prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|n| {
            say(ws, &format!("{prefix} {n}"));
            let mut event = next(ws);
            while message_of(&event).starts_with("marker") {
                event = next(ws); // another client's, said where this one was
            }
            assert_eq!(message_of(&event), format!("{prefix} {n}"));
            event["payload"]["id"].as_str().expect("an id").to_string()
        })
        .collect()
}

/// Moves `ws` to `room` asking to resume after `since`; returns the events
/// that come before the marker `ws` then sends itself.
fn resume(ws: &mut Ws, room: &str, resume: Value) -> Vec<Value> {
    let mut payload = json!({ "name": room });
    if let (Some(payload), Some(resume)) = (payload.as_object_mut(), resume.as_object()) {
        payload.extend(resume.clone());
    }
    send_event(ws, "change_room", payload);
    let marker = format!("marker for {room}");
    say(ws, &marker);
    let mut before = Vec::new();
    loop {
        let event = next(ws);
        if message_of(&event) == marker {
            return before;
        }
        before.push(event);
    }
}

fn texts(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| message_of(e).to_string()).collect()
}

#[test]
fn ids_increase_within_a_room_and_the_tutorial_protocol_is_unchanged() {
    let server = TestServer::start();
    let mut ws = member(&server, "plain");
    say(&mut ws, "hello");
    let event = next(&mut ws);
    let payload = event["payload"].as_object().expect("payload object");
    let keys: HashSet<&str> = payload.keys().map(String::as_str).collect();
    assert_eq!(keys, HashSet::from(["message", "from", "sent", "id"]));
    let ids = said(&mut ws, "n", 3);
    let seqs: Vec<u64> = ids
        .iter()
        .map(|id| id.rsplit_once('-').unwrap().1.parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    // A client that never asks sees no new event type.
    send_event(&mut ws, "change_room", json!({ "name": "plain" }));
    say(&mut ws, "still plain");
    assert_eq!(next(&mut ws)["type"], "new_message");
}

/// Each case in a fresh room where m 0 ..= m 7 were said and the window
/// (`--history 5`) keeps m 3 ..= m 7: the reader resumes there, then sends a
/// marker of its own, which ends the replay it is given.
#[test]
fn resuming_at_the_edges_of_the_window() {
    let server = TestServer::start_with(&["--history", "5"]);
    let mut writer = server.connect();
    let mut reader = server.connect();
    let mut case = 0;
    let mut resume_in_fresh_room = |resume_with: &dyn Fn(&[String]) -> Value| {
        case += 1;
        let room = format!("w{case}");
        send_event(&mut writer, "change_room", json!({ "name": room }));
        let ids = said(&mut writer, "m", 8);
        let events = resume(&mut reader, &room, resume_with(&ids));
        (ids, events)
    };

    let (_, newest) = resume_in_fresh_room(&|ids| json!({ "since": ids[7] }));
    assert!(newest.is_empty(), "since the newest: nothing, {newest:?}");

    let (_, from_oldest) = resume_in_fresh_room(&|ids| json!({ "since": ids[3] }));
    assert_eq!(texts(&from_oldest), ["m 4", "m 5", "m 6", "m 7"]);

    let (_, just_before) = resume_in_fresh_room(&|ids| json!({ "since": ids[2] }));
    assert_eq!(
        texts(&just_before),
        ["m 3", "m 4", "m 5", "m 6", "m 7"],
        "no gap"
    );

    let (ids, gap) = resume_in_fresh_room(&|ids| json!({ "since": ids[1] }));
    assert_eq!(gap[0]["type"], "history_gap", "{gap:?}");
    assert_eq!(gap[0]["payload"]["room"], "w4");
    assert_eq!(gap[0]["payload"]["oldest"], ids[3].as_str());
    assert_eq!(texts(&gap[1..]), ["m 3", "m 4", "m 5", "m 6", "m 7"]);

    let (_, other_epoch) = resume_in_fresh_room(&|_| json!({ "since": "someotherrun-3" }));
    assert_eq!(other_epoch[0]["type"], "history_gap");
    assert_eq!(other_epoch.len(), 6, "the gap, then all five kept");

    let (_, last_two) = resume_in_fresh_room(&|_| json!({ "history": 2 }));
    assert_eq!(texts(&last_two), ["m 6", "m 7"]);
}

#[test]
fn replay_racing_live_traffic_delivers_every_message_once_in_order() {
    let server = TestServer::start_with(&["--event-rate", "1000", "--event-burst", "1000"]);
    let mut writer = member(&server, "race");
    let first = said(&mut writer, "r", 1);
    let addr = server.addr;
    let otp = server.login("percy", "123");
    let sender = thread::spawn(move || {
        for n in 1..300 {
            say(&mut writer, &format!("r {n}"));
            thread::sleep(Duration::from_micros(300));
        }
        writer
    });
    // Resume mid-stream, straight from the upgrade.
    thread::sleep(Duration::from_millis(20));
    let url = format!("ws://{addr}/ws?otp={otp}&room=race&since={}", first[0]);
    let request = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    let mut reader = support::connect_ws(addr, request).expect("upgrade");
    let mut writer = sender.join().unwrap();
    say(&mut writer, "end");
    let mut seen = Vec::new();
    loop {
        let event = next(&mut reader);
        let text = message_of(&event).to_string();
        if text == "end" {
            break;
        }
        seen.push(text);
    }
    let expected: Vec<String> = (1..300).map(|n| format!("r {n}")).collect();
    assert_eq!(seen, expected, "every message once, in order, none twice");
}

#[test]
fn a_resuming_client_never_passes_through_general() {
    let server = TestServer::start();
    let mut in_general = server.connect(); // stays in general
    let mut writer = member(&server, "direct");
    let ids = said(&mut writer, "d", 2);
    let otp = server.login("percy", "123");
    let url = format!(
        "ws://{}/ws?otp={otp}&room=direct&since={}",
        server.addr, ids[0]
    );
    let request = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    let mut resumed = support::connect_ws(server.addr, request).expect("upgrade");
    assert_eq!(
        message_of(&next(&mut resumed)),
        "d 1",
        "the replay comes first"
    );
    say(&mut resumed, "from the resumed client");
    assert_eq!(message_of(&next(&mut writer)), "from the resumed client");
    // General heard nothing of it.
    say(&mut in_general, "general's own");
    assert_eq!(message_of(&next(&mut in_general)), "general's own");
    // A room name that is not one is refused before anything happens.
    let otp = server.login("percy", "123");
    let bad = format!("ws://{}/ws?otp={otp}&room=%FF", server.addr);
    let request = tungstenite::client::IntoClientRequest::into_client_request(bad).unwrap();
    assert_eq!(support::connect_ws(server.addr, request).err(), Some(400));
}

#[test]
fn thousands_of_rooms_stay_under_the_memory_bound_and_are_freed_after_the_ttl() {
    const ROOMS: usize = 10_000;
    let server = TestServer::start_with(&[
        "--event-rate",
        "1000000",
        "--event-burst",
        "1000000",
        "--history-max-bytes",
        "1048576",
        "--history-ttl",
        "2s",
        "--log-level",
        "info",
    ]);
    let mut ws = server.connect();
    let rss_before = server.status_kb("VmRSS");
    // The sender is each room's only member: its own messages come back, read
    // by a thread of their own until the marker that follows them all.
    let reader = {
        let mut stream = ws.get_ref().try_clone().unwrap();
        thread::spawn(move || {
            let (mut sink, mut tail) = (vec![0u8; 1 << 16], Vec::new());
            loop {
                match std::io::Read::read(&mut stream, &mut sink) {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => {
                        tail.extend_from_slice(&sink[..n]);
                        if tail.windows(15).any(|w| w == b"finished-marker") {
                            return true;
                        }
                        let keep = tail.len().saturating_sub(16);
                        tail.drain(..keep);
                    }
                }
            }
        })
    };
    for room in 0..ROOMS {
        send_event(
            &mut ws,
            "change_room",
            json!({ "name": format!("room {room}") }),
        );
        for n in 0..3 {
            say(&mut ws, &format!("{room}/{n} {}", "x".repeat(100)));
        }
    }
    send_event(&mut ws, "change_room", json!({ "name": "done" }));
    say(&mut ws, "finished-marker");
    assert!(reader.join().unwrap(), "the marker came back");
    let history = |server: &TestServer| -> f64 {
        let text = server.request("GET", "/metrics", &[], b"").text();
        text.lines()
            .find_map(|l| l.strip_prefix("chat_history_bytes "))
            .and_then(|v| v.parse().ok())
            .expect("chat_history_bytes")
    };
    // Every room was written to and left; the total stays under the bound.
    let held = history(&server);
    assert!(
        held > 0.0 && held <= 1_048_576.0,
        "history holds {held} bytes"
    );
    let grown = server.status_kb("VmRSS").saturating_sub(rss_before);
    assert!(grown < 32 * 1024, "RSS grew {grown} kB");
    // Once every room is empty, their histories are freed after the ttl.
    drop(ws);
    let start = Instant::now();
    while history(&server) > 0.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "history never freed"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

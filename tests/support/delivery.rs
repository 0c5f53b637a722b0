//! What tests of delivery through Redis share: chat processes on a test's
//! Redis, members, and what they saw (ids in order, each once).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{RedisServer, TestServer, Ws, event_within, next_event, send_event, wait_for_health};

/// Senders in these tests go faster than a person types.
pub const FAST: [&str; 4] = ["--event-rate", "1000", "--event-burst", "1000"];

/// A chat server on Redis at `url` with the test's key prefix.
pub fn process(url: &str, prefix: &str, extra: &[&str]) -> TestServer {
    let mut args = vec!["--redis", url, "--redis-prefix", prefix];
    args.extend_from_slice(extra);
    let server = TestServer::start_with(&args);
    wait_for_health(&server, 200);
    server
}

/// Polls `condition` every 10 ms until it holds, or panics after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < timeout, "waited {timeout:?} for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

pub fn redis_addr(redis: &RedisServer) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], redis.port))
}

/// A member of `room` on `server`.
pub fn member(server: &TestServer, room: &str) -> Ws {
    let mut ws = server.connect();
    send_event(&mut ws, "change_room", json!({ "name": room }));
    ws
}

pub fn say(ws: &mut Ws, text: &str) {
    send_event(ws, "send_message", json!({ "message": text }));
}

/// Reads everything until `quiet` passes with nothing.
pub fn drain(ws: &mut Ws, quiet: Duration) {
    while event_within(ws, quiet).is_some() {}
}

/// A room's message as a member saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub text: String,
    pub epoch: String,
    pub seq: u64,
}

/// Reads events until the `new_message` saying `last`; every event before
/// it must be a `new_message` (history gaps included, they fail the test).
pub fn messages_until(ws: &mut Ws, last: &str) -> Vec<Seen> {
    let mut seen = Vec::new();
    loop {
        let event = next_event(ws);
        assert_eq!(event["type"], "new_message", "unexpected {event}");
        let text = event["payload"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let id = event["payload"]["id"].as_str().unwrap_or("");
        let (epoch, seq) = id.rsplit_once('-').unwrap_or(("", "0"));
        let seen_one = Seen {
            text: text.clone(),
            epoch: epoch.to_string(),
            seq: seq.parse().unwrap_or(0),
        };
        seen.push(seen_one);
        if text == last {
            return seen;
        }
    }
}

pub fn texts(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(|s| s.text.clone()).collect()
}

/// Within each epoch the ids strictly increase with no hole, and no id
/// comes twice.
pub fn assert_in_order_once(seen: &[Seen]) {
    let mut ids = HashSet::new();
    for pair in seen.windows(2) {
        if pair[0].epoch == pair[1].epoch {
            assert_eq!(
                pair[1].seq,
                pair[0].seq + 1,
                "ids out of order or with a hole: {pair:?}\nall: {seen:?}"
            );
        }
    }
    for s in seen {
        assert!(
            ids.insert((s.epoch.clone(), s.seq)),
            "{s:?} came twice\nall: {seen:?}"
        );
    }
}

/// A WebSocket on `server` that starts in `room`, with `query` (e.g.
/// `since=ID` or `history=K`).
pub fn resume_on(server: &TestServer, room: &str, query: &str) -> Ws {
    let otp = server.login("percy", "123");
    let url = format!("ws://{}/ws?otp={otp}&room={room}&{query}", server.addr);
    let request = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    super::connect_ws(server.addr, request).expect("upgrade")
}

/// An unlabelled sample of the server's /metrics.
pub fn metric(server: &TestServer, name: &str) -> f64 {
    let text = server.request("GET", "/metrics", &[], b"").text();
    super::sample(&text, name).unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// No id names two messages among everything `seen` by anyone.
pub fn assert_one_message_per_id<'a>(seen: impl IntoIterator<Item = &'a Seen>) {
    let mut named: HashMap<(String, u64), String> = HashMap::new();
    for s in seen {
        let before = named.insert((s.epoch.clone(), s.seq), s.text.clone());
        if let Some(before) = before {
            assert_eq!(
                before, s.text,
                "id {}-{} names two messages",
                s.epoch, s.seq
            );
        }
    }
}

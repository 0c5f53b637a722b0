//! A flood: 2,000 WebSockets in 10 rooms held open for 30 s with heartbeats
//! while messages flow. None may be dropped and none may miss a message.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{TestServer, Ws, send_event};
use tungstenite::Message;

const CLIENTS: usize = 2_000;
const ROOMS: usize = 10;
/// Clients with `id / ROOMS < SENDERS_PER_ROOM` send; everyone reads.
const SENDERS_PER_ROOM: usize = 5;
const HOLD: Duration = Duration::from_secs(30);
const SEND_EVERY: Duration = Duration::from_secs(1);

struct Outcome {
    id: usize,
    pings: usize,
    /// sender id -> sequence numbers received, in arrival order
    heard: HashMap<usize, Vec<usize>>,
    sent: usize,
    /// Kept open until the checks are done, so the server log shows no drops.
    _ws: Ws,
}

/// Waits until `counter` reaches CLIENTS, reading meanwhile so pings are answered.
fn wait_for_all(ws: &mut Ws, counter: &AtomicUsize, pings: &mut usize) {
    while counter.load(Ordering::SeqCst) < CLIENTS {
        match ws.read() {
            Ok(Message::Ping(_)) => *pings += 1,
            Ok(other) => panic!("unexpected {other:?} while waiting"),
            Err(tungstenite::Error::Io(err)) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => panic!("dropped while waiting: {err}"),
        }
    }
}

fn run_client(id: usize, mut ws: Ws, ready: Arc<AtomicUsize>, done: Arc<AtomicUsize>) -> Outcome {
    let room = id % ROOMS;
    let sender = id / ROOMS < SENDERS_PER_ROOM;
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // A round trip proves the server has processed our change_room.
    send_event(
        &mut ws,
        "change_room",
        json!({"name": format!("flood-{room}")}),
    );
    send_event(&mut ws, "change_room", json!({"name": ""}));
    let mut pings = 0;
    let mut heard: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut sent = 0;
    loop {
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(Message::Text(text)) => {
                assert!(text.contains("\"error\""), "client {id}: unexpected {text}");
                break;
            }
            Ok(other) => panic!("client {id}: unexpected {other:?}"),
            Err(tungstenite::Error::Io(err)) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => panic!("client {id} dropped: {err}"),
        }
    }
    ready.fetch_add(1, Ordering::SeqCst);
    wait_for_all(&mut ws, &ready, &mut pings);
    let begin = Instant::now();
    let mut next_send = begin + Duration::from_millis(500 + (id as u64 * 7) % 500);
    let mut ended = false;
    let mut ends = 0;
    let mut end_sent = false;
    while !ended {
        let now = Instant::now();
        if sender && now >= next_send && now - begin < HOLD {
            let text = format!("{id}:{sent}");
            send_event(&mut ws, "send_message", json!({"message": text}));
            sent += 1;
            next_send += SEND_EVERY;
        }
        if sender && now - begin >= HOLD && !end_sent {
            // Mark the end of the run for our room: a final message per sender.
            send_event(
                &mut ws,
                "send_message",
                json!({"message": format!("{id}:end")}),
            );
            end_sent = true;
        }
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(Message::Text(text)) => {
                let event: serde_json::Value = serde_json::from_str(&text).unwrap();
                let message = event["payload"]["message"].as_str().unwrap();
                let (from, seq) = message.split_once(':').unwrap();
                let from: usize = from.parse().unwrap();
                assert_eq!(
                    from % ROOMS,
                    room,
                    "client {id} got a message from room {}",
                    from % ROOMS
                );
                if seq == "end" {
                    ends += 1;
                    ended = ends == SENDERS_PER_ROOM;
                } else {
                    heard.entry(from).or_default().push(seq.parse().unwrap());
                }
            }
            Ok(other) => panic!("client {id}: unexpected {other:?}"),
            Err(tungstenite::Error::Io(err)) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => panic!("client {id} dropped: {err}"),
        }
        assert!(
            begin.elapsed() < HOLD + Duration::from_secs(60),
            "client {id} never saw the end"
        );
    }
    done.fetch_add(1, Ordering::SeqCst);
    wait_for_all(&mut ws, &done, &mut pings);
    Outcome {
        id,
        pings,
        heard,
        sent,
        _ws: ws,
    }
}

#[test]
fn two_thousand_connections_hold_for_thirty_seconds_without_loss() {
    let server = TestServer::start_with(&[
        "--ping-interval",
        "2s",
        "--pong-wait",
        "3s",
        "--log-level",
        "info",
        // 2,000 clients from one address: past the default per-address cap.
        "--max-connections-per-ip",
        "0",
    ]);
    let ready = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::with_capacity(CLIENTS);
    for id in 0..CLIENTS {
        let ws = server.connect();
        let (ready, done) = (Arc::clone(&ready), Arc::clone(&done));
        let worker = thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || run_client(id, ws, ready, done))
            .expect("spawn client thread");
        workers.push(worker);
    }
    let outcomes: Vec<Outcome> = workers
        .into_iter()
        .map(|w| w.join().expect("client"))
        .collect();

    let sent: HashMap<usize, usize> = outcomes.iter().map(|o| (o.id, o.sent)).collect();
    for outcome in &outcomes {
        assert!(
            outcome.pings >= 10,
            "client {} saw only {} pings in 30 s",
            outcome.id,
            outcome.pings
        );
        for sender in
            (0..CLIENTS).filter(|s| s % ROOMS == outcome.id % ROOMS && s / ROOMS < SENDERS_PER_ROOM)
        {
            let heard = outcome.heard.get(&sender).cloned().unwrap_or_default();
            assert_eq!(
                heard,
                (0..sent[&sender]).collect::<Vec<_>>(),
                "client {} from sender {sender}",
                outcome.id
            );
        }
    }
    let logs = server.logs();
    assert!(
        !logs.contains("heartbeat timeout"),
        "a client was dropped for heartbeats"
    );
    assert!(!logs.contains("slow consumer"));
    assert_eq!(
        logs.matches("closed: ").count(),
        CLIENTS,
        "only the logins' HTTP connections closed"
    );
}

//! Issue 25, presence: who is in a room, from outside. A member that asks
//! (`change_room {"presence": true}` or `&presence=1`) gets a `presence`
//! snapshot, then `presence_join` / `presence_leave` when a user's first
//! connection enters and its last one leaves; a room past
//! `--presence-max-users` gets `presence_count` instead. Members that do not
//! ask (the tutorial's page) see no new event type. With `--redis` the
//! same holds across processes, and a process that dies leaves no ghosts.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::delivery::{FAST, metric, process, redis_addr, say, wait_for};
use support::proxy::Proxy;
use support::{
    RedisServer, TempFile, TestServer, Ws, cheap_users_file, connect_ws, event_within, next_event,
    send_event, unique_prefix,
};

const USERS: [(&str, &str); 5] = [
    ("wat", "pw"),
    ("ann", "pw"),
    ("bob", "pw"),
    ("cat", "pw"),
    ("dan", "pw"),
];

fn users_file(tag: &str) -> TempFile {
    cheap_users_file(tag, &USERS)
}

/// A connection of `user` that starts in `room`; `query` adds to `/ws?`
/// (e.g. `presence=1`).
fn tab(server: &TestServer, user: &str, room: &str, query: &str) -> Ws {
    let otp = server.login(user, "pw");
    let url = format!("ws://{}/ws?otp={otp}&room={room}&{query}", server.addr);
    let request = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    connect_ws(server.addr, request).expect("upgrade")
}

/// A connection of `user` watching `room`'s presence, asked with
/// `change_room`; returns it with its snapshot.
fn watcher(server: &TestServer, user: &str, room: &str) -> (Ws, Value) {
    let mut ws = tab(server, user, "general", "");
    send_event(
        &mut ws,
        "change_room",
        json!({ "name": room, "presence": true }),
    );
    let snapshot = next_of(&mut ws, "presence");
    (ws, snapshot)
}

/// The next event, which must be of type `kind`: its payload.
fn next_of(ws: &mut Ws, kind: &str) -> Value {
    let event = next_event(ws);
    assert_eq!(event["type"], kind, "expected {kind}, got {event}");
    event["payload"].clone()
}

fn names(payload: &Value) -> Vec<String> {
    let list = payload["names"].as_array().expect("names");
    list.iter()
        .map(|n| n.as_str().unwrap_or("").to_string())
        .collect()
}

/// Names from `kind` events until there are `count` of them, sorted (one
/// turn's changes come in one event, several turns' in several).
fn gather(ws: &mut Ws, kind: &str, count: usize) -> Vec<String> {
    let mut all = Vec::new();
    while all.len() < count {
        all.extend(names(&next_of(ws, kind)));
    }
    all.sort();
    all
}

/// The snapshot's users as (name, connections), in its order.
fn listed(snapshot: &Value) -> Vec<(String, u64)> {
    let list = snapshot["users"].as_array().expect("users");
    list.iter()
        .map(|u| {
            let name = u["name"].as_str().unwrap_or("").to_string();
            (name, u["connections"].as_u64().unwrap_or(0))
        })
        .collect()
}

/// Closes `ws` and waits until the server has closed it too.
fn close(mut ws: Ws) {
    ws.close(None).expect("close");
    while ws.read().is_ok() {}
}

#[test]
fn a_second_tab_is_not_a_join_and_closing_one_of_two_is_not_a_leave() {
    let accounts = users_file("tabs");
    let server = TestServer::start_with(&["--users", accounts.path_str()]);
    let (mut wat, snapshot) = watcher(&server, "wat", "lobby");
    assert_eq!(snapshot["room"], "lobby");
    assert_eq!(listed(&snapshot), [("wat".to_string(), 1)], "{snapshot}");
    assert_eq!(snapshot["count"], 1);

    let first = tab(&server, "ann", "lobby", "");
    assert_eq!(names(&next_of(&mut wat, "presence_join")), ["ann"]);
    let mut second = tab(&server, "ann", "lobby", "");
    say(&mut second, "from the second tab");
    // Had the second tab been a join, it would have come first.
    assert_eq!(
        next_of(&mut wat, "new_message")["message"],
        "from the second tab"
    );

    close(first);
    say(&mut second, "still here");
    assert_eq!(next_of(&mut wat, "new_message")["message"], "still here");
    // bob enters after the first tab is gone: a leave of ann's would be first.
    let bob = tab(&server, "bob", "lobby", "");
    assert_eq!(names(&next_of(&mut wat, "presence_join")), ["bob"]);

    close(second);
    assert_eq!(names(&next_of(&mut wat, "presence_leave")), ["ann"]);
    close(bob);
    assert_eq!(names(&next_of(&mut wat, "presence_leave")), ["bob"]);
}

#[test]
fn the_snapshot_names_each_user_once_with_its_connections() {
    let accounts = users_file("snapshot");
    let server = TestServer::start_with(&["--users", accounts.path_str()]);
    let _ann = [
        tab(&server, "ann", "lobby", ""),
        tab(&server, "ann", "lobby", ""),
    ];
    let _bob = tab(&server, "bob", "lobby", "");
    let _cat_elsewhere = tab(&server, "cat", "kitchen", "");
    // Asked on the upgrade this time.
    let mut wat = tab(&server, "wat", "lobby", "presence=1");
    let snapshot = next_of(&mut wat, "presence");
    let expected = [("ann", 2), ("bob", 1), ("wat", 1)].map(|(n, c)| (n.to_string(), c));
    assert_eq!(listed(&snapshot), expected, "{snapshot}");
    assert_eq!(snapshot["count"], 3);
}

#[test]
fn a_users_last_message_comes_before_its_leave() {
    let accounts = users_file("order");
    let server = TestServer::start_with(&["--users", accounts.path_str()]);
    let (mut wat, _) = watcher(&server, "wat", "lobby");
    let mut ann = tab(&server, "ann", "lobby", "");
    assert_eq!(names(&next_of(&mut wat, "presence_join")), ["ann"]);
    say(&mut ann, "goodbye");
    close(ann);
    assert_eq!(next_of(&mut wat, "new_message")["message"], "goodbye");
    assert_eq!(names(&next_of(&mut wat, "presence_leave")), ["ann"]);
}

#[test]
fn members_that_do_not_ask_see_no_presence_event() {
    let accounts = users_file("quiet");
    let server = TestServer::start_with(&["--users", accounts.path_str()]);
    let mut quiet = tab(&server, "wat", "lobby", "");
    let (mut watching, _) = watcher(&server, "dan", "lobby");
    let ann = tab(&server, "ann", "lobby", "");
    close(ann);
    assert_eq!(names(&next_of(&mut watching, "presence_join")), ["ann"]);
    assert_eq!(names(&next_of(&mut watching, "presence_leave")), ["ann"]);
    // A member that moves on without asking again stops watching.
    send_event(&mut watching, "change_room", json!({ "name": "lobby" }));
    let mut bob = tab(&server, "bob", "lobby", "");
    say(&mut bob, "the end");
    for ws in [&mut quiet, &mut watching] {
        assert_eq!(next_of(ws, "new_message")["message"], "the end");
    }
}

#[test]
fn a_big_room_gets_its_count_at_most_every_interval() {
    let accounts = users_file("count");
    let server = TestServer::start_with(&[
        "--users",
        accounts.path_str(),
        "--presence-max-users",
        "3",
        "--presence-count-interval",
        "400ms",
    ]);
    let (mut wat, _) = watcher(&server, "wat", "hall");
    let ann = tab(&server, "ann", "hall", "");
    let bob = tab(&server, "bob", "hall", "");
    assert_eq!(gather(&mut wat, "presence_join", 2), ["ann", "bob"]);
    // A fourth user: the room is past the limit, names give way to a count.
    let cat = tab(&server, "cat", "hall", "");
    let count = next_of(&mut wat, "presence_count");
    assert_eq!(count, json!({ "room": "hall", "count": 4 }));
    let started = std::time::Instant::now();
    let dan = tab(&server, "dan", "hall", "");
    let count = next_of(&mut wat, "presence_count");
    assert_eq!(count["count"], 5);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "a second count within the interval: {:?}",
        started.elapsed()
    );
    // A newcomer's snapshot in a big room has only the count.
    let (_late, snapshot) = watcher(&server, "ann", "hall");
    assert_eq!(snapshot, json!({ "room": "hall", "count": 5 }));
    // Back under the limit: the names again, in full.
    close(dan);
    close(cat);
    let snapshot = next_of(&mut wat, "presence");
    let expected = [("ann", 2), ("bob", 1), ("wat", 1)].map(|(n, c)| (n.to_string(), c));
    assert_eq!(listed(&snapshot), expected, "{snapshot}");
    drop((ann, bob));
}

#[test]
fn a_bad_presence_flag_is_an_error_event() {
    let accounts = users_file("bad");
    let server = TestServer::start_with(&["--users", accounts.path_str()]);
    let mut wat = tab(&server, "wat", "lobby", "");
    send_event(
        &mut wat,
        "change_room",
        json!({ "name": "lobby", "presence": "yes" }),
    );
    assert!(
        next_of(&mut wat, "error")["message"]
            .as_str()
            .unwrap_or("")
            .contains("change_room")
    );
    let refused = {
        let otp = server.login("wat", "pw");
        let url = format!("ws://{}/ws?otp={otp}&presence=maybe", server.addr);
        let request = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
        connect_ws(server.addr, request).err()
    };
    assert_eq!(refused, Some(400));
    assert!(event_within(&mut wat, Duration::from_millis(100)).is_none());
}

// --- across processes (`--redis`) -------------------------------------------

/// Two processes on one Redis with the test's prefix and users.
fn two_processes(redis: &RedisServer, accounts: &TempFile, tag: &str) -> [TestServer; 2] {
    let prefix = unique_prefix(tag);
    let mut extra = vec!["--users", accounts.path_str()];
    extra.extend_from_slice(&FAST);
    [0, 1].map(|_| process(&redis.url(), &prefix, &extra))
}

#[test]
fn joins_and_leaves_are_seen_on_every_process_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let accounts = users_file("redis-tabs");
    let [a, b] = two_processes(&redis, &accounts, "presence-tabs");
    let (mut on_a, _) = watcher(&a, "wat", "lobby");
    let (mut on_b, snapshot) = watcher(&b, "dan", "lobby");
    // b's watcher may or may not see wat yet; it will, once.
    let wat_seen = listed(&snapshot).iter().any(|(n, _)| n == "wat");
    if !wat_seen {
        assert_eq!(names(&next_of(&mut on_b, "presence_join")), ["wat"]);
    }
    assert_eq!(names(&next_of(&mut on_a, "presence_join")), ["dan"]);

    let mut ann_a = tab(&a, "ann", "lobby", "");
    // Said at once: the join and the message may reach b together; the
    // join still comes first.
    say(&mut ann_a, "hello");
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(names(&next_of(ws, "presence_join")), ["ann"]);
        assert_eq!(next_of(ws, "new_message")["message"], "hello");
    }
    // ann's second tab, on the other process: not a join.
    let mut ann_b = tab(&b, "ann", "lobby", "");
    say(&mut ann_b, "two tabs");
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(next_of(ws, "new_message")["message"], "two tabs");
    }
    close(ann_a);
    say(&mut ann_b, "one tab");
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(next_of(ws, "new_message")["message"], "one tab");
    }
    // The last message before the leave, on both.
    say(&mut ann_b, "bye");
    close(ann_b);
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(next_of(ws, "new_message")["message"], "bye");
        assert_eq!(names(&next_of(ws, "presence_leave")), ["ann"]);
    }
}

#[test]
fn a_killed_process_leaves_no_ghosts() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let accounts = users_file("redis-kill");
    let [a, mut b] = two_processes(&redis, &accounts, "presence-kill");
    let (mut on_a, _) = watcher(&a, "wat", "lobby");
    let _ann = tab(&b, "ann", "lobby", "");
    let _bob = [tab(&b, "bob", "lobby", ""), tab(&b, "bob", "lobby", "")];
    assert_eq!(gather(&mut on_a, "presence_join", 2), ["ann", "bob"]);

    b.kill();
    let killed = std::time::Instant::now();
    assert_eq!(gather(&mut on_a, "presence_leave", 2), ["ann", "bob"]);
    // Three heartbeats of 1 s, and a little for the loop.
    let took = killed.elapsed();
    assert!(took < Duration::from_millis(3500), "ghosts for {took:?}");
    // Once: nothing more comes, and a newcomer's snapshot has no ghost.
    let (_late, snapshot) = watcher(&a, "cat", "lobby");
    let present: Vec<String> = listed(&snapshot).into_iter().map(|(n, _)| n).collect();
    assert!(!present.contains(&"ann".to_string()), "{snapshot}");
    assert!(!present.contains(&"bob".to_string()), "{snapshot}");
    assert_eq!(names(&next_of(&mut on_a, "presence_join")), ["cat"]);
}

#[test]
fn a_newcomer_process_gets_the_rooms_presence_from_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let accounts = users_file("redis-snapshot");
    let [a, b] = two_processes(&redis, &accounts, "presence-snapshot");
    let _ann = [tab(&a, "ann", "lobby", ""), tab(&a, "ann", "lobby", "")];
    let _bob = tab(&a, "bob", "lobby", "");
    // b has nobody in lobby yet: its first watcher's snapshot comes from Redis.
    let expected = vec![("ann".to_string(), 2), ("bob".to_string(), 1)];
    wait_for("a's users in Redis", Duration::from_secs(5), || {
        let (_w, snapshot) = watcher(&b, "wat", "lobby");
        let seen: Vec<(String, u64)> = listed(&snapshot)
            .into_iter()
            .filter(|(n, _)| n != "wat")
            .collect();
        seen == expected
    });
}

#[test]
fn a_process_that_shuts_down_tells_its_leaves_at_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let accounts = users_file("redis-term");
    let [a, mut b] = two_processes(&redis, &accounts, "presence-term");
    let (mut on_a, _) = watcher(&a, "wat", "lobby");
    let mut ann = tab(&b, "ann", "lobby", "");
    assert_eq!(names(&next_of(&mut on_a, "presence_join")), ["ann"]);
    b.signal("TERM");
    assert_eq!(support::expect_close(&mut ann), 1001);
    // Answers the close and closes the socket, as a browser does.
    let _ = ann.flush();
    drop(ann);
    let closed = std::time::Instant::now();
    assert_eq!(names(&next_of(&mut on_a, "presence_leave")), ["ann"]);
    // Not by the heartbeat's expiry (a second at the earliest): b said so.
    let took = closed.elapsed();
    assert!(took < Duration::from_millis(800), "the leave took {took:?}");
    assert_eq!(b.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn during_an_outage_presence_is_local_and_a_full_snapshot_follows_it() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let accounts = users_file("redis-outage");
    let prefix = unique_prefix("presence-outage");
    let proxy = Proxy::start(redis_addr(&redis));
    let mut extra = vec!["--users", accounts.path_str()];
    extra.extend_from_slice(&FAST);
    let a = process(&proxy.url(), &prefix, &extra);
    let b = process(&redis.url(), &prefix, &extra);
    let _dan = tab(&b, "dan", "lobby", "");
    let mut wat = tab(&a, "wat", "lobby", "presence=1");
    wait_for("dan on a", Duration::from_secs(5), || {
        let event = next_event(&mut wat);
        event["type"] == "presence_join" && names(&event["payload"]) == ["dan"]
            || event["type"] == "presence"
                && listed(&event["payload"]).iter().any(|(n, _)| n == "dan")
    });

    // No login works without Redis: ann connects before, elsewhere.
    let mut ann = tab(&a, "ann", "general", "");
    proxy.cut();
    wait_for("a to notice", Duration::from_secs(10), || {
        metric(&a, "chat_redis_up") == 0.0
    });
    // Redis is away: a's own users are still told, at once.
    send_event(&mut ann, "change_room", json!({ "name": "lobby" }));
    assert_eq!(names(&next_of(&mut wat, "presence_join")), ["ann"]);

    proxy.restore();
    // Back: the whole room again, as Redis has it, everyone included.
    let snapshot = loop {
        let event = next_event(&mut wat);
        if event["type"] == "presence" {
            break event["payload"].clone();
        }
    };
    let expected = [("ann", 1), ("dan", 1), ("wat", 1)].map(|(n, c)| (n.to_string(), c));
    assert_eq!(listed(&snapshot), expected, "{snapshot}");
}

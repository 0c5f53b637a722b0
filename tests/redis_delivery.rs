//! "Nothing lost, nothing twice" through Redis (issue 22): real server
//! processes, a real redis-server of each test's own, real WebSocket
//! clients, and faults (delay, cuts) injected between a process and Redis by
//! `support::proxy`. Tests wait for conditions with deadlines; none sleeps
//! to let a race settle.

mod support;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::delivery::*;
use support::proxy::{Direction, Link, Proxy};
use support::resp::{Reply, redis_call};
use support::{
    RedisServer, TestServer, Ws, event_within, next_event, send_event, unique_prefix, until_heard,
    wait_for_health,
};

/// A Redis, a fault proxy in front of it, process A on Redis through the
/// proxy and process B on Redis directly, all with the test's key prefix.
fn through_proxy(
    prefix: &str,
    flags: &[&str],
) -> Option<(RedisServer, Proxy, TestServer, TestServer)> {
    let redis = RedisServer::start()?;
    let proxy = Proxy::start(redis_addr(&redis));
    let a = process(&proxy.url(), prefix, flags);
    let b = process(&redis.url(), prefix, flags);
    Some((redis, proxy, a, b))
}

/// `through_proxy`, with ann and carl on A and bob on B in `room`, the
/// room live between the processes and every member's queue drained.
struct Trio {
    _redis: RedisServer,
    proxy: Proxy,
    a: TestServer,
    b: TestServer,
    ann: Ws,
    carl: Ws,
    bob: Ws,
}

fn trio(test: &str, room: &str) -> Option<Trio> {
    let (_redis, proxy, a, b) = through_proxy(&unique_prefix(test), &FAST)?;
    let (mut ann, mut carl) = (member(&a, room), member(&a, room));
    let mut bob = member(&b, room);
    until_heard(&mut ann, &mut bob, "before");
    for ws in [&mut ann, &mut carl, &mut bob] {
        drain(ws, Duration::from_millis(200));
    }
    Some(Trio {
        _redis,
        proxy,
        a,
        b,
        ann,
        carl,
        bob,
    })
}

/// Cuts A's links to Redis and waits until A has noticed.
fn cut(proxy: &Proxy, a: &TestServer) {
    proxy.cut();
    wait_for("A to notice", Duration::from_secs(10), || {
        metric(a, "chat_redis_up") == 0.0
    });
}

/// A sender thread: `count` messages "`tag` n" (n from 1) every `every`,
/// then "end". Tells `progress` after each.
fn send_in_background(
    mut ws: Ws,
    tag: &'static str,
    count: usize,
    every: Duration,
) -> (thread::JoinHandle<Ws>, mpsc::Receiver<usize>) {
    let (progress, heard) = mpsc::channel();
    let handle = thread::spawn(move || {
        for n in 1..=count {
            say(&mut ws, &format!("{tag} {n}"));
            let _ = progress.send(n);
            thread::sleep(every); // the pace of the traffic, not a wait for anything
        }
        say(&mut ws, "end");
        ws
    });
    (handle, heard)
}

// --- looking at (and tampering with) keys ---------------------------------------

/// The keys matching `pattern`.
fn keys(redis: &RedisServer, pattern: &str) -> Vec<String> {
    match redis_call(redis, &["KEYS", pattern]) {
        Reply::Array(keys) => keys
            .into_iter()
            .filter_map(|k| match k {
                Reply::Bulk(Some(k)) => String::from_utf8(k).ok(),
                _ => None,
            })
            .collect(),
        other => panic!("KEYS answered {other:?}"),
    }
}

fn key_type(redis: &RedisServer, key: &str) -> String {
    match redis_call(redis, &["TYPE", key]) {
        Reply::Simple(kind) => kind,
        other => panic!("TYPE answered {other:?}"),
    }
}

// --- finding 3 --------------------------------------------------------------

/// Finding 3: a resume into a room new to a process must not read the
/// stream before the room's subscription exists. With the subscription link
/// 300 ms slow, what others publish between the read and the SUBSCRIBE
/// would be in neither the replay nor the live messages: a silent hole.
#[test]
fn a_resume_into_a_room_new_to_a_process_waits_for_its_subscription() {
    let prefix = unique_prefix("subfirst");
    let Some((_redis, proxy, a, b)) = through_proxy(&prefix, &FAST) else {
        return;
    };
    let mut writer = member(&b, "late");
    let mut watcher = member(&b, "late");
    let since = until_heard(&mut writer, &mut watcher, "start");
    drain(&mut writer, Duration::from_millis(100));
    proxy.delay_both(Link::Subscriptions, Duration::from_millis(300));

    let (sender, progress) = send_in_background(writer, "m", 150, Duration::from_millis(5));
    // Resume while the room is busy: a few messages are already out.
    while progress.recv().is_ok_and(|n| n < 5) {}
    let mut resumed = resume_on(&a, "late", &format!("since={since}"));
    let _writer = sender.join().unwrap();
    let seen = messages_until(&mut resumed, "end");
    let expected: Vec<String> = (1..=150)
        .map(|n| format!("m {n}"))
        .chain(["end".to_string()])
        .collect();
    assert_eq!(texts(&seen), expected, "every message after since, once");
    assert_in_order_once(&seen);
    assert!(
        proxy.connections(Link::Subscriptions) >= 1,
        "the delay applied"
    );
}

// --- finding 6 --------------------------------------------------------------

/// Finding 6: a resume fetches from the stream only what it needs, not the
/// room's whole stream: `history: 0` reads no message, `since` the newest
/// but two reads about two. A `since` from another epoch still gets
/// `history_gap` and then everything kept.
#[test]
fn a_resume_reads_only_what_it_needs_from_the_stream() {
    let prefix = unique_prefix("fetch");
    let Some((_redis, proxy, a, b)) = through_proxy(&prefix, &FAST) else {
        return;
    };
    let mut writer = member(&b, "big");
    let filler = "x".repeat(400);
    let mut ids = Vec::new();
    for n in 1..=100 {
        say(&mut writer, &format!("{n} {filler}"));
    }
    for event in messages_until(&mut writer, &format!("100 {filler}")) {
        ids.push(format!("{}-{}", event.epoch, event.seq));
    }
    assert_eq!(ids.len(), 100);
    let mut reader = a.connect();
    drain(&mut reader, Duration::from_millis(50));

    // Bytes Redis sends on A's command link for one resume and one message
    // (each mark is a message of the room too, replayed by later resumes).
    let mut marks = 0;
    let mut read_for = |reader: &mut Ws, resume: Value, expect: usize| -> u64 {
        marks += 1;
        let before = proxy.bytes(Link::Commands, Direction::Down);
        let mut payload = json!({ "name": "big" });
        for (key, value) in resume.as_object().unwrap() {
            payload[key] = value.clone();
        }
        send_event(reader, "change_room", payload);
        say(reader, &format!("mark {marks}"));
        let seen = messages_until(reader, &format!("mark {marks}"));
        assert_eq!(seen.len(), expect + 1, "{:?}", texts(&seen));
        // Leave, so the next resume is into a room new to A again.
        send_event(reader, "change_room", json!({ "name": "elsewhere" }));
        say(reader, &format!("left {marks}"));
        messages_until(reader, &format!("left {marks}"));
        proxy.bytes(Link::Commands, Direction::Down) - before
    };
    let nothing = read_for(&mut reader, json!({ "history": 0 }), 0);
    // Since message 98: 99, 100 and mark 1.
    let three = read_for(&mut reader, json!({ "since": ids[97] }), 3);
    // 100, mark 1, mark 2.
    let last_three = read_for(&mut reader, json!({ "history": 3 }), 3);
    // The whole stream is over 40 KB; a message about 480 B.
    assert!(nothing < 2_000, "history 0 read {nothing} B");
    assert!(three < 3_500, "since the newest but three read {three} B");
    assert!(last_three < 3_500, "history 3 read {last_three} B");

    // Another epoch's id: the gap, then everything kept.
    send_event(
        &mut reader,
        "change_room",
        json!({ "name": "big", "since": "1-5" }),
    );
    let gap = next_event(&mut reader);
    assert_eq!(gap["type"], "history_gap", "{gap}");
    say(&mut reader, "mark 4");
    let seen = messages_until(&mut reader, "mark 4");
    assert!(seen.len() > 100, "everything kept: {}", seen.len());
    let oldest = format!("{}-{}", seen[0].epoch, seen[0].seq);
    assert_eq!(gap["payload"]["oldest"], oldest.as_str());
    assert_eq!(seen[seen.len() - 2].text, "mark 3");
    assert_in_order_once(&seen);
}

/// Finding 6, shared: members resuming in one room at once (a restart
/// brings them back together) share one read of the stream. The room's
/// SUBSCRIBE is held at the proxy so all ten resumes wait for it; once it
/// goes, the command link brings back about one read's worth, not ten, and
/// each member gets exactly what it missed.
#[test]
fn members_resuming_in_one_room_at_once_share_one_read() {
    let prefix = unique_prefix("share");
    let Some((_redis, proxy, a, b)) = through_proxy(&prefix, &FAST) else {
        return;
    };
    let mut writer = member(&b, "many");
    let filler = "y".repeat(400);
    for n in 1..=20 {
        say(&mut writer, &format!("{n} {filler}"));
    }
    let written = messages_until(&mut writer, &format!("20 {filler}"));
    let since = format!("{}-{}", written[4].epoch, written[4].seq);

    proxy.hold(Link::Subscriptions, Direction::Up);
    let otps: Vec<String> = (0..10).map(|_| a.login("percy", "123")).collect();
    let before = proxy.bytes(Link::Commands, Direction::Down);
    let mut resumed: Vec<Ws> = otps
        .iter()
        .map(|otp| {
            let url = format!("ws://{}/ws?otp={otp}&room=many&since={since}", a.addr);
            let request = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
            support::connect_ws(a.addr, request).expect("upgrade")
        })
        .collect();
    proxy.release(Link::Subscriptions, Direction::Up);
    let expected: Vec<String> = (6..=20).map(|n| format!("{n} {filler}")).collect();
    for ws in &mut resumed {
        let seen = messages_until(ws, &format!("20 {filler}"));
        assert_eq!(texts(&seen), expected);
    }
    let read = proxy.bytes(Link::Commands, Direction::Down) - before;
    // One read of 15 messages is about 7.5 KB (ten: 75 KB); the OTPs' few
    // bytes each come on top.
    assert!(read < 12_000, "the command link brought {read} B");
}

/// The scripts are called by their SHA; a Redis whose script cache was
/// flushed (SCRIPT FLUSH, a restart) gets them again, and nothing is lost:
/// the publish and the read sent meanwhile are sent again with the script.
#[test]
fn a_flushed_script_cache_loses_neither_a_message_nor_a_replay() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = process(&redis.url(), &unique_prefix("flush"), &[]);
    let mut writer = member(&a, "f");
    for n in 1..=3 {
        say(&mut writer, &format!("m {n}"));
    }
    messages_until(&mut writer, "m 3");
    redis_call(&redis, &["SCRIPT", "FLUSH"]);
    let mut reader = a.connect();
    send_event(
        &mut reader,
        "change_room",
        json!({ "name": "f", "history": 2 }),
    );
    assert_eq!(texts(&messages_until(&mut reader, "m 3")), ["m 2", "m 3"]);
    redis_call(&redis, &["SCRIPT", "FLUSH"]);
    say(&mut writer, "m 4");
    assert_eq!(texts(&messages_until(&mut reader, "m 4")), ["m 4"]);
}

// --- finding 7 --------------------------------------------------------------

/// Finding 7: processes with different `--history` / `--history-ttl` must
/// not make a room's counter expire before its stream: the publish script
/// would then fail after taking a number, for every message until the
/// counter passes the stream's top. Every message must arrive.
#[test]
fn different_history_flags_never_mute_a_room() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("mute");
    let a = process(
        &redis.url(),
        &prefix,
        &["--history", "0", "--history-ttl", "300ms"],
    );
    let b = process(&redis.url(), &prefix, &["--history-ttl", "2s"]);
    let mut on_a = member(&a, "mute");
    let mut on_b = member(&b, "mute");
    until_heard(&mut on_b, &mut on_a, "ready");
    until_heard(&mut on_a, &mut on_b, "ready too");
    drain(&mut on_a, Duration::from_millis(100));
    drain(&mut on_b, Duration::from_millis(100));
    for n in 1..=5 {
        say(&mut on_b, &format!("b {n}"));
    }
    messages_until(&mut on_a, "b 5");
    say(&mut on_a, "a 1");
    messages_until(&mut on_b, "a 1");
    drain(&mut on_a, Duration::from_millis(50));
    // A quiet spell until some key of the room has expired.
    let pattern = format!("{prefix}*mute*");
    let before = keys(&redis, &pattern).len();
    wait_for(
        "a key of the room to expire",
        Duration::from_secs(10),
        || keys(&redis, &pattern).len() < before,
    );
    for n in 1..=7 {
        say(&mut on_b, &format!("after {n}"));
    }
    let seen = messages_until(&mut on_a, "after 7");
    let expected: Vec<String> = (1..=7).map(|n| format!("after {n}")).collect();
    assert_eq!(
        texts(&seen),
        expected,
        "every message after the quiet spell"
    );
    assert_in_order_once(&seen);
}

/// Finding 7, by eviction: the room's counter (every key of the room that
/// is not its stream) goes, the stream stays. The room must go on.
#[test]
fn a_room_whose_counter_is_evicted_is_not_muted() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("evict");
    let a = process(&redis.url(), &prefix, &[]);
    let mut ws = member(&a, "evict");
    say(&mut ws, "ready");
    messages_until(&mut ws, "ready");
    for n in 1..=5 {
        say(&mut ws, &format!("m {n}"));
    }
    messages_until(&mut ws, "m 5");
    let room_keys = keys(&redis, &format!("{prefix}*evict*"));
    let mut evicted = 0;
    for key in &room_keys {
        if key_type(&redis, key) != "stream" {
            redis_call(&redis, &["DEL", key]);
            evicted += 1;
        }
    }
    assert!(evicted > 0, "the room's counter: {room_keys:?}");
    for n in 1..=7 {
        say(&mut ws, &format!("after {n}"));
    }
    let seen = messages_until(&mut ws, "after 7");
    let expected: Vec<String> = (1..=7).map(|n| format!("after {n}")).collect();
    assert_eq!(texts(&seen), expected);
}

// --- finding 8 --------------------------------------------------------------

/// Finding 8: a process that loses Redis for about a second gets, once its
/// links are back, what another process published meanwhile (the stream
/// holds it), in order and once, as ordinary `new_message` events to a
/// member that never asked for history; none of it is a counted gap.
#[test]
fn a_process_that_loses_redis_for_a_moment_gets_what_others_published() {
    let prefix = unique_prefix("cut");
    let Some((_redis, proxy, a, b)) = through_proxy(&prefix, &FAST) else {
        return;
    };
    let mut on_a = member(&a, "cut");
    let mut writer = member(&b, "cut");
    until_heard(&mut writer, &mut on_a, "before");
    drain(&mut on_a, Duration::from_millis(100));
    drain(&mut writer, Duration::from_millis(100));
    say(&mut writer, "last before");
    messages_until(&mut on_a, "last before");

    cut(&proxy, &a);
    for n in 1..=10 {
        say(&mut writer, &format!("during {n}"));
    }
    messages_until(&mut writer, "during 10"); // published: B heard it back
    proxy.restore();
    wait_for_health(&a, 200);
    say(&mut writer, "after");
    let seen = messages_until(&mut on_a, "after");
    let expected: Vec<String> = (1..=10)
        .map(|n| format!("during {n}"))
        .chain(["after".to_string()])
        .collect();
    assert_eq!(
        texts(&seen),
        expected,
        "what was published meanwhile, then live"
    );
    assert_in_order_once(&seen);
    assert!(
        event_within(&mut on_a, Duration::from_millis(300)).is_none(),
        "nothing more"
    );
    assert_eq!(metric(&a, "chat_redis_sequence_gaps_total"), 0.0);
    // The ten, and "after" too if it was published before A subscribed again.
    let recovered = metric(&a, "chat_redis_recovered_total");
    assert!((10.0..=11.0).contains(&recovered), "recovered {recovered}");
}

/// What a member says while its process cannot reach Redis reaches its
/// process's members at once, and the other processes' when Redis is back
/// (late, not never), each once: the speaker's process does not deliver the
/// published copy again, even when that copy comes live before Redis's
/// answer to the publish (A's answers half a second late at the proxy).
#[test]
fn what_is_said_while_redis_is_away_reaches_the_other_processes_when_it_is_back() {
    let Some(Trio {
        _redis,
        proxy,
        a,
        b: _b, // B stays up
        mut ann,
        mut carl,
        mut bob,
    }) = trio("outbox", "away")
    else {
        return;
    };

    cut(&proxy, &a);
    for n in 1..=3 {
        say(&mut ann, &format!("away {n}"));
    }
    for ws in [&mut ann, &mut carl] {
        let heard_here = messages_until(ws, "away 3");
        assert_eq!(texts(&heard_here), ["away 1", "away 2", "away 3"]);
    }
    proxy.delay(Link::Commands, Direction::Down, Duration::from_millis(500));
    proxy.restore();
    let heard_there = messages_until(&mut bob, "away 3");
    assert_eq!(texts(&heard_there), ["away 1", "away 2", "away 3"]);
    assert_in_order_once(&heard_there);
    wait_for_health(&a, 200);
    say(&mut bob, "after");
    for ws in [&mut ann, &mut carl] {
        let rest = messages_until(ws, "after");
        let texts = texts(&rest);
        assert_eq!(texts, ["after"], "said here, then heard again");
    }
    assert_eq!(metric(&a, "chat_redis_published_late_total"), 3.0);
}

/// Finding 8 meeting a resume: a member asks for the last 3 messages while
/// its process is still reading what it missed during a cut (the command
/// link's replies held at the proxy, so the repair's read and then the
/// replay's come back together). The member gets the last 3 as of its
/// replay, then live ones, with no `history_gap` (the hub must see the
/// repaired messages before the replay, as live messages held for the
/// member); the member that stayed gets everything once, in order.
#[test]
fn a_resume_while_a_room_is_being_repaired_gets_its_replay_whole() {
    let prefix = unique_prefix("repairresume");
    let Some((redis, proxy, a, b)) = through_proxy(&prefix, &FAST) else {
        return;
    };
    let mut stayed = member(&a, "cut");
    let mut resumer = member(&a, "lobby");
    let mut writer = member(&b, "cut");
    until_heard(&mut writer, &mut stayed, "before");
    drain(&mut stayed, Duration::from_millis(100));
    drain(&mut resumer, Duration::from_millis(100));
    drain(&mut writer, Duration::from_millis(100));

    cut(&proxy, &a);
    for n in 1..=5 {
        say(&mut writer, &format!("during {n}"));
    }
    messages_until(&mut writer, "during 5");
    proxy.hold(Link::Commands, Direction::Down);
    proxy.restore();
    wait_for_health(&a, 200);
    let channel = format!("{prefix}room:cut");
    wait_for("A to subscribe again", Duration::from_secs(10), || {
        redis_numsub(&redis, &channel) == 2
    });
    for n in 1..=3 {
        say(&mut writer, &format!("after {n}"));
    }
    messages_until(&mut writer, "after 3");
    send_event(
        &mut resumer,
        "change_room",
        json!({ "name": "cut", "history": 3 }),
    );
    a.wait_for_log("moves from \"lobby\" to \"cut\"", Duration::from_secs(10));
    proxy.release(Link::Commands, Direction::Down);
    say(&mut writer, "live");

    // Every event a new_message (no history_gap), ending with the last 3
    // and the live one; what the hub held for the member since it moved in
    // (the repaired messages) may come first.
    let seen = messages_until(&mut resumer, "live");
    assert!(
        texts(&seen).ends_with(&[
            "after 1".to_string(),
            "after 2".to_string(),
            "after 3".to_string(),
            "live".to_string()
        ]),
        "{:?}",
        texts(&seen)
    );
    assert_in_order_once(&seen);
    let seen = messages_until(&mut stayed, "live");
    let expected: Vec<String> = (1..=5)
        .map(|n| format!("during {n}"))
        .chain((1..=3).map(|n| format!("after {n}")))
        .chain(["live".to_string()])
        .collect();
    assert_eq!(texts(&seen), expected);
    assert_in_order_once(&seen);
}

/// Finding 8, in a room where nothing was said yet: the process has not
/// heard a single number of the room when its links are cut, and must still
/// deliver what another process published meanwhile.
#[test]
fn a_cut_before_a_rooms_first_message_loses_nothing_either() {
    let prefix = unique_prefix("cutfirst");
    let Some((redis, proxy, a, b)) = through_proxy(&prefix, &FAST) else {
        return;
    };
    let mut on_a = member(&a, "new");
    wait_for(
        "A to subscribe to the room",
        Duration::from_secs(10),
        || redis_numsub(&redis, &format!("{prefix}room:new")) == 1,
    );
    let mut writer = member(&b, "new");
    cut(&proxy, &a);
    for n in 1..=5 {
        say(&mut writer, &format!("during {n}"));
    }
    messages_until(&mut writer, "during 5");
    proxy.restore();
    wait_for_health(&a, 200);
    say(&mut writer, "after");
    let seen = messages_until(&mut on_a, "after");
    let expected: Vec<String> = (1..=5)
        .map(|n| format!("during {n}"))
        .chain(["after".to_string()])
        .collect();
    assert_eq!(texts(&seen), expected);
    assert_in_order_once(&seen);
}

/// How many subscribers `channel` has.
fn redis_numsub(redis: &RedisServer, channel: &str) -> i64 {
    match redis_call(redis, &["PUBSUB", "NUMSUB", channel]) {
        Reply::Array(parts) => match parts.get(1) {
            Some(Reply::Int(n)) => *n,
            other => panic!("NUMSUB answered {other:?}"),
        },
        other => panic!("NUMSUB answered {other:?}"),
    }
}

/// Only the subscription link lost, the command link fine: a member's post
/// is delivered to its process's members at once (Redis cannot bring it
/// back yet) and published; when the link is back and the room is repaired
/// from its stream, that post is not delivered a second time.
#[test]
fn a_post_delivered_while_the_subscription_link_was_down_comes_once() {
    let prefix = unique_prefix("half");
    let Some((_redis, proxy, a, b)) = through_proxy(&prefix, &FAST) else {
        return;
    };
    let mut poster = member(&a, "half");
    let mut listener = member(&a, "half");
    let mut writer = member(&b, "half");
    until_heard(&mut writer, &mut listener, "before");
    drain(&mut poster, Duration::from_millis(100));
    drain(&mut listener, Duration::from_millis(100));
    drain(&mut writer, Duration::from_millis(100));

    proxy.cut_link(Link::Subscriptions);
    wait_for("A to notice", Duration::from_secs(10), || {
        metric(&a, "chat_redis_up") == 0.0
    });
    say(&mut poster, "while half");
    // Published all the same: B's member hears it, numbered.
    let heard = messages_until(&mut writer, "while half");
    assert_eq!(heard.len(), 1);
    proxy.restore();
    wait_for_health(&a, 200);
    say(&mut writer, "after");
    // Once, whether it went to A's members at once (the link was down when
    // it was posted, as it almost always is here) or, had A's link been
    // between two attempts to connect, by the repair.
    for ws in [&mut listener, &mut poster] {
        assert_eq!(texts(&messages_until(ws, "after")), ["while half", "after"]);
    }
}

// --- findings 1 and 2 (fixed in the hub), end to end with Redis -----------------

/// Finding 1: a member that resumed stays in a room whose keys expire after
/// a quiet spell; the room's numbering starts again at 1 in a new epoch, and
/// every new message reaches it, its own included.
#[test]
fn a_resumed_member_gets_every_message_of_the_rooms_next_epoch() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("epoch");
    let a = process(&redis.url(), &prefix, &["--history-ttl", "500ms"]);
    let mut other = member(&a, "quiet");
    for n in 1..=3 {
        say(&mut other, &format!("old {n}"));
    }
    let old = messages_until(&mut other, "old 3");
    let mut resumed = a.connect();
    send_event(
        &mut resumed,
        "change_room",
        json!({ "name": "quiet", "history": 3 }),
    );
    let replayed = messages_until(&mut resumed, "old 3");
    assert_eq!(texts(&replayed), ["old 1", "old 2", "old 3"]);
    // The quiet spell: the room's history keys expire (who is in the room
    // is kept while anyone is).
    let pattern = format!("{prefix}*quiet*");
    wait_for("the room's keys to expire", Duration::from_secs(10), || {
        let left = keys(&redis, &pattern);
        left.iter().all(|key| key.ends_with(":presence"))
    });
    for n in 1..=3 {
        say(&mut resumed, &format!("mine {n}"));
    }
    let mut seen = messages_until(&mut resumed, "mine 3");
    for n in 1..=3 {
        say(&mut other, &format!("theirs {n}"));
    }
    seen.extend(messages_until(&mut resumed, "theirs 3"));
    assert_eq!(
        texts(&seen),
        [
            "mine 1", "mine 2", "mine 3", "theirs 1", "theirs 2", "theirs 3"
        ]
    );
    assert_ne!(seen[0].epoch, old[0].epoch, "a new epoch");
    assert_eq!(
        seen.iter().map(|s| s.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
}

/// Finding 2: with the command link slow (150 ms each way), a member resumes
/// in room A and moves on to B, resuming there too, before A's replay comes
/// back; B is busy. What it then gets in B: ids strictly increasing, with no
/// hole and none twice.
#[test]
fn moving_on_before_a_replay_arrives_keeps_ids_in_order_once() {
    let prefix = unique_prefix("move");
    let Some((_redis, proxy, a, b)) = through_proxy(&prefix, &FAST) else {
        return;
    };
    let mut writer = member(&b, "room-b");
    let mut in_a = member(&b, "room-a");
    for n in 1..=3 {
        say(&mut writer, &format!("b old {n}"));
        say(&mut in_a, &format!("a old {n}"));
    }
    messages_until(&mut writer, "b old 3");
    messages_until(&mut in_a, "a old 3");
    let mut mover = a.connect();
    drain(&mut mover, Duration::from_millis(50));
    proxy.delay_both(Link::Commands, Duration::from_millis(150));

    let (sender, progress) = send_in_background(writer, "b", 100, Duration::from_millis(5));
    while progress.recv().is_ok_and(|n| n < 3) {}
    send_event(
        &mut mover,
        "change_room",
        json!({ "name": "room-a", "history": 2 }),
    );
    send_event(
        &mut mover,
        "change_room",
        json!({ "name": "room-b", "history": 2 }),
    );
    let _writer = sender.join().unwrap();
    let seen = messages_until(&mut mover, "end");
    assert!(
        seen.iter().all(|s| !s.text.starts_with("a ")),
        "nothing of room A: {:?}",
        texts(&seen)
    );
    assert_in_order_once(&seen);
}

/// Finding 8's last part: what the stream no longer holds is lost, and a
/// member that opted in to history is told so with a `history_gap` before
/// the next message, while a member that never asked (the tutorial's page)
/// sees only ordinary messages. With `--history 0` nothing is kept, so what
/// was published during the cut is lost for good.
#[test]
fn what_the_stream_no_longer_holds_is_a_history_gap_for_members_that_opted_in() {
    let prefix = unique_prefix("lost");
    let flags = [FAST.as_slice(), &["--history", "0"]].concat();
    let Some((_redis, proxy, a, b)) = through_proxy(&prefix, &flags) else {
        return;
    };
    let mut plain = member(&a, "lost");
    let mut opted = a.connect();
    send_event(
        &mut opted,
        "change_room",
        json!({ "name": "lost", "history": 0 }),
    );
    let mut writer = member(&b, "lost");
    until_heard(&mut writer, &mut plain, "before");
    say(&mut writer, "last before");
    messages_until(&mut plain, "last before");
    let mut before_cut = Vec::new();
    loop {
        let event = next_event(&mut opted);
        let done = event["payload"]["message"] == "last before";
        before_cut.push(event);
        if done {
            break;
        }
    }

    cut(&proxy, &a);
    for n in 1..=5 {
        say(&mut writer, &format!("during {n}"));
    }
    messages_until(&mut writer, "during 5");
    proxy.restore();
    wait_for_health(&a, 200);
    // Until A has subscribed again, what B publishes is lost too (nothing
    // is kept): B writes until A's member hears something.
    let mut first = None;
    for n in 1..=100 {
        say(&mut writer, &format!("after {n}"));
        if let Some(event) = event_within(&mut plain, Duration::from_millis(200)) {
            first = Some(event);
            break;
        }
    }
    let first = first.expect("A's member hears B again");
    assert_eq!(
        first["type"], "new_message",
        "the tutorial's page: no new event type"
    );
    let first_text = first["payload"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(first_text.starts_with("after "), "{first}");
    let gap = next_event(&mut opted);
    assert_eq!(
        gap["type"], "history_gap",
        "told before the next message: {gap}"
    );
    assert_eq!(gap["payload"]["room"], "lost");
    let next = next_event(&mut opted);
    assert_eq!(next["payload"]["message"], first_text.as_str());
    assert_eq!(
        gap["payload"]["oldest"], next["payload"]["id"],
        "the gap names the first message after it"
    );
    assert!(metric(&a, "chat_redis_sequence_gaps_total") >= 5.0);
}

/// A Redis out of memory (maxmemory, noeviction) refuses a message: that
/// message is lost, but the room's history must not be. The publish script
/// took any refused XADD for a broken stream and started a new epoch, whose
/// DEL of the stream is allowed under OOM: each message posted while memory
/// was short wiped what the room had kept. A member resuming afterwards from
/// an id before the outage must get the rest of the history, not a gap.
#[test]
fn a_redis_out_of_memory_keeps_the_rooms_history() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("oom");
    let a = process(&redis.url(), &prefix, &[]);
    let mut ws = member(&a, "oom");
    say(&mut ws, "ready");
    let kept = messages_until(&mut ws, "ready");
    for n in 1..=3 {
        say(&mut ws, &format!("m {n}"));
    }
    messages_until(&mut ws, "m 3");

    redis_call(&redis, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis_call(&redis, &["CONFIG", "SET", "maxmemory", "1"]);
    say(&mut ws, "refused");
    // Redis has answered the publish once it is refused (logged) or heard.
    let asked = Instant::now();
    while !a.logs().contains("publish failed") {
        if event_within(&mut ws, Duration::from_millis(20))
            .is_some_and(|event| event["payload"]["message"] == "refused")
        {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "redis never answered the publish:\n{}",
            a.logs()
        );
    }
    redis_call(&redis, &["CONFIG", "SET", "maxmemory", "0"]);
    say(&mut ws, "after");
    messages_until(&mut ws, "after");

    let first = &kept[0];
    let since = format!("since={}-{}", first.epoch, first.seq);
    let mut resumed = resume_on(&a, "oom", &since);
    let seen = messages_until(&mut resumed, "after");
    assert_eq!(texts(&seen), ["m 1", "m 2", "m 3", "after"]);
    assert_in_order_once(&seen);
}

/// A message Redis refuses (out of memory) reaches nobody: its sender is
/// told with an `error` event, and no one else hears anything of it.
#[test]
fn a_message_redis_refuses_is_reported_to_its_sender() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("refused");
    let a = process(&redis.url(), &prefix, &[]);
    let (mut ann, mut bob) = (member(&a, "full"), member(&a, "full"));
    until_heard(&mut ann, &mut bob, "ready");
    drain(&mut ann, Duration::from_millis(300));

    redis_call(&redis, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis_call(&redis, &["CONFIG", "SET", "maxmemory", "1"]);
    say(&mut ann, "refused");
    let told = next_event(&mut ann);
    assert_eq!(told["type"], "error", "{told}");
    let why = told["payload"]["message"].as_str().unwrap_or("");
    assert!(
        why.contains("not delivered") && why.contains("out of memory"),
        "{why}"
    );
    assert_eq!(event_within(&mut bob, Duration::from_millis(300)), None);

    redis_call(&redis, &["CONFIG", "SET", "maxmemory", "0"]);
    say(&mut ann, "after");
    assert_eq!(texts(&messages_until(&mut bob, "after")), ["after"]);
}

/// A message whose publish never reached Redis (held at the proxy when the
/// link was cut) is sent again when the link is back: everyone gets it,
/// once. Before, it reached nobody, not even its own process's members.
#[test]
fn a_message_whose_publish_never_reached_redis_is_sent_again() {
    let Some(Trio {
        _redis,
        proxy,
        a,
        b: _b, // B stays up
        mut ann,
        mut carl,
        mut bob,
    }) = trio("retry", "retry")
    else {
        return;
    };
    proxy.hold(Link::Commands, Direction::Up);
    let sent = proxy.bytes_read(Link::Commands, Direction::Up);
    say(&mut ann, "unanswered");
    wait_for(
        "the publish to reach the proxy",
        Duration::from_secs(5),
        || proxy.bytes_read(Link::Commands, Direction::Up) > sent,
    );
    cut(&proxy, &a);
    proxy.release(Link::Commands, Direction::Up); // into a closed connection
    proxy.restore();
    wait_for_health(&a, 200);
    say(&mut bob, "after");
    for ws in [&mut ann, &mut carl, &mut bob] {
        let seen = messages_until(ws, "after");
        assert_eq!(texts(&seen), ["unanswered", "after"]);
        assert_in_order_once(&seen);
    }
    assert_eq!(metric(&a, "chat_redis_unconfirmed_total"), 1.0);
}

/// A message Redis published whose answer never came (held at the proxy
/// when the link was cut) is not published again: the retry finds it in
/// the room's stream.
#[test]
fn a_message_redis_published_but_never_answered_is_not_sent_twice() {
    let Some(Trio {
        _redis,
        proxy,
        a,
        b: _b, // B stays up
        mut ann,
        mut carl,
        mut bob,
    }) = trio("answered", "twice")
    else {
        return;
    };
    proxy.hold(Link::Commands, Direction::Down);
    say(&mut ann, "published");
    for ws in [&mut ann, &mut carl, &mut bob] {
        assert_eq!(texts(&messages_until(ws, "published")), ["published"]);
    }
    cut(&proxy, &a);
    proxy.release(Link::Commands, Direction::Down);
    proxy.restore();
    wait_for_health(&a, 200);
    say(&mut bob, "after");
    for ws in [&mut ann, &mut carl, &mut bob] {
        assert_eq!(texts(&messages_until(ws, "after")), ["after"]);
    }
    assert_eq!(metric(&a, "chat_redis_unconfirmed_total"), 1.0);
}

/// The same for a message said while only the subscription link was down:
/// its process's members hear it at once, and when its publish went
/// unanswered too, the retry brings it to the other processes, and not
/// back to its own.
#[test]
fn a_message_said_during_a_half_outage_whose_publish_went_unanswered_reaches_everyone_once() {
    let Some(Trio {
        _redis,
        proxy,
        a,
        b: _b, // B stays up
        mut ann,
        mut carl,
        mut bob,
    }) = trio("half", "half")
    else {
        return;
    };
    proxy.cut_link(Link::Subscriptions);
    wait_for("A to notice", Duration::from_secs(10), || {
        metric(&a, "chat_redis_up") == 0.0
    });
    proxy.hold(Link::Commands, Direction::Up);
    let sent = proxy.bytes_read(Link::Commands, Direction::Up);
    say(&mut ann, "half");
    for ws in [&mut ann, &mut carl] {
        assert_eq!(texts(&messages_until(ws, "half")), ["half"]);
    }
    wait_for(
        "the publish to reach the proxy",
        Duration::from_secs(5),
        || proxy.bytes_read(Link::Commands, Direction::Up) > sent,
    );
    proxy.cut();
    proxy.release(Link::Commands, Direction::Up); // into a closed connection
    proxy.restore();
    wait_for_health(&a, 200);
    assert_eq!(texts(&messages_until(&mut bob, "half")), ["half"]);
    say(&mut bob, "after");
    for ws in [&mut ann, &mut carl, &mut bob] {
        assert_eq!(texts(&messages_until(ws, "after")), ["after"]);
    }
}

//! Redis failing over (issue 24): a replica promoted in the master's place
//! may lack the last messages the master numbered, and every id must still
//! name one message. Real redis-server processes of each test's own (a
//! master and a replica, or Sentinel), real chat processes and WebSocket
//! clients; the processes reach Redis through `support::proxy` where the
//! test moves them itself.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use support::delivery::*;
use support::proxy::Proxy;
use support::resp::{Reply, redis_call};
use support::{RedisServer, Ws, event_within, free_port, unique_prefix, until_heard};

/// A replica of `master` on a free port, once it has synced (from the
/// socket: nothing written to disk).
fn replica_of(master: &RedisServer) -> RedisServer {
    let port = free_port();
    let replica = RedisServer::launch(
        port,
        &[
            "--port",
            &port.to_string(),
            "--replicaof",
            "127.0.0.1",
            &master.port.to_string(),
            "--repl-diskless-load",
            "on-empty-db",
        ],
    );
    wait_for("the replica to sync", Duration::from_secs(10), || {
        replica.ping() && info_field(&replica, "master_link_status").as_deref() == Some("up")
    });
    replica
}

/// One field of `INFO replication`.
fn info_field(redis: &RedisServer, field: &str) -> Option<String> {
    let Reply::Bulk(Some(info)) = redis_call(redis, &["INFO", "replication"]) else {
        return None;
    };
    String::from_utf8_lossy(&info).lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == field).then(|| value.trim().to_string())
    })
}

/// Waits until `replica` has applied everything `master` has written.
fn wait_replicated(master: &RedisServer, replica: &RedisServer) {
    wait_for("the replica to catch up", Duration::from_secs(10), || {
        info_field(master, "master_repl_offset") == info_field(replica, "master_repl_offset")
    });
}

/// Every message event a member receives until `quiet` passes with none,
/// and the types of the other events.
fn everything(ws: &mut Ws, quiet: Duration) -> (Vec<Seen>, Vec<String>) {
    let (mut seen, mut others) = (Vec::new(), Vec::new());
    while let Some(event) = event_within(ws, quiet) {
        if event["type"] != "new_message" {
            others.push(event["type"].as_str().unwrap_or("").to_string());
            continue;
        }
        seen.push(seen_of(&event));
    }
    (seen, others)
}

fn seen_of(event: &Value) -> Seen {
    let id = event["payload"]["id"].as_str().unwrap_or("");
    let (epoch, seq) = id.rsplit_once('-').unwrap_or(("", "0"));
    Seen {
        text: event["payload"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        epoch: epoch.to_string(),
        seq: seq.parse().unwrap_or(0),
    }
}

/// No id names two messages among everything `seen` by anyone.
fn assert_one_message_per_id<'a>(seen: impl IntoIterator<Item = &'a Seen>) {
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

/// The master numbers m4 and m5 after its replica stopped following it;
/// then it dies and the replica takes its place (the processes' proxy moves
/// to it, as Sentinel would move them). The replica's stream ends at m3:
/// numbering on from there would give m4's and m5's ids to new messages,
/// which members already holding m4 and m5 would drop as copies. A member
/// resuming from m5 right after the failover must not get m1..m3 again.
#[test]
fn a_promoted_replica_that_missed_messages_never_reuses_their_ids() {
    let Some(master) = RedisServer::start() else {
        return;
    };
    let replica = replica_of(&master);
    let proxy = Proxy::start(redis_addr(&master));
    let prefix = unique_prefix("promoted");
    let a = process(&proxy.url(), &prefix, &FAST);
    let b = process(&proxy.url(), &prefix, &FAST);
    let (mut ann, mut bob) = (member(&a, "r"), member(&b, "r"));
    let mut carol = member(&a, "r");
    until_heard(&mut ann, &mut bob, "live");
    drain(&mut ann, Duration::from_millis(300));
    drain(&mut carol, Duration::from_millis(300));
    for text in ["m1", "m2", "m3"] {
        say(&mut ann, text);
    }
    let mut seen_by_bob = messages_until(&mut bob, "m3");
    wait_replicated(&master, &replica);

    // The replica stops following; the master numbers two more.
    redis_call(&replica, &["REPLICAOF", "NO", "ONE"]);
    say(&mut ann, "m4");
    say(&mut ann, "m5");
    seen_by_bob.extend(messages_until(&mut bob, "m5"));
    let seen_by_carol = messages_until(&mut carol, "m5");
    let m5 = seen_by_carol.last().cloned().expect("carol heard m5");
    drop(carol);

    // The master dies; its replica takes its place.
    proxy.retarget(redis_addr(&replica));
    drop(master);
    for server in [&a, &b] {
        server.wait_for_log("reconnecting", Duration::from_secs(10));
        support::wait_for_health(server, 200);
    }
    let mut carol = resume_on(&a, "r", &format!("since={}-{}", m5.epoch, m5.seq));
    let (resumed, others) = everything(&mut carol, Duration::from_millis(500));
    let again: Vec<&Seen> = resumed.iter().filter(|s| s.text.starts_with('m')).collect();
    assert!(
        again.is_empty(),
        "a resume from m5 gave already seen messages again: {again:?} (and {others:?})"
    );

    say(&mut ann, "m6");
    say(&mut bob, "m7");
    seen_by_bob.extend(messages_until(&mut bob, "m7"));
    let seen_by_ann = [
        messages_until(&mut ann, "m5"),
        messages_until(&mut ann, "m7"),
    ]
    .concat();
    let carol_after = messages_until(&mut carol, "m7");
    for seen in [&seen_by_ann, &seen_by_bob] {
        let texts: Vec<String> = texts(seen)
            .into_iter()
            .filter(|t| t.starts_with('m'))
            .collect();
        assert_eq!(texts, ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]);
        assert_in_order_once(seen);
    }
    assert_eq!(texts(&carol_after), ["m6", "m7"]);
    assert_one_message_per_id(
        seen_by_ann
            .iter()
            .chain(&seen_by_bob)
            .chain(&seen_by_carol)
            .chain(&resumed)
            .chain(&carol_after),
    );
}

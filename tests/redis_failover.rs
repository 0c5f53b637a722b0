//! Redis failing over (issue 24): a replica promoted in the master's place
//! may lack the last messages the master numbered, and every id must still
//! name one message. Real redis-server processes of each test's own (a
//! master and a replica, or Sentinel), real chat processes and WebSocket
//! clients; the processes reach Redis through `support::proxy` where the
//! test moves them itself.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::delivery::*;
use support::proxy::{Direction, Link, Proxy};
use support::resp::{Reply, redis_call, try_redis_call};
use support::{RedisServer, TestServer, Ws, event_within, free_port, unique_prefix, until_heard};

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
    let Ok(Reply::Bulk(Some(info))) = try_redis_call(redis, &["INFO", "replication"]) else {
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

/// Two processes on a master through a proxy, members ann (on A), bob (on
/// B) and carol (on A) in room "r", and a replica that stopped following
/// the master after m1..m3: the master numbered m4 and m5 alone.
struct Diverged {
    master: RedisServer,
    replica: RedisServer,
    proxy: Proxy,
    a: TestServer,
    b: TestServer,
    ann: Ws,
    bob: Ws,
    carol: Ws,
    /// m1..m5 (and the probes before them) as ann and bob saw them.
    seen_by_ann: Vec<Seen>,
    seen_by_bob: Vec<Seen>,
}

fn diverged(test: &str) -> Option<Diverged> {
    let master = RedisServer::start()?;
    let replica = replica_of(&master);
    let proxy = Proxy::start(redis_addr(&master));
    let prefix = unique_prefix(test);
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
    redis_call(&replica, &["REPLICAOF", "NO", "ONE"]);
    say(&mut ann, "m4");
    say(&mut ann, "m5");
    seen_by_bob.extend(messages_until(&mut bob, "m5"));
    // Both processes have delivered m5 (a message the replica lacks, still
    // on its way to a process when the master dies, is lost to that
    // process's members: nothing in the cluster holds it any more).
    let seen_by_ann = messages_until(&mut ann, "m5");
    Some(Diverged {
        master,
        replica,
        proxy,
        a,
        b,
        ann,
        bob,
        carol,
        seen_by_ann,
        seen_by_bob,
    })
}

impl Diverged {
    /// The master dies and its replica takes its place (the proxy moves to
    /// it, as Sentinel would move the processes); `replies_late`: the new
    /// master's replies on the command links come that much late.
    fn fail_over(&mut self, replies_late: Duration) {
        self.proxy
            .delay(Link::Commands, Direction::Down, replies_late);
        self.proxy.retarget(redis_addr(&self.replica));
        self.master.stop();
    }
}

/// m6 from ann and m7 from bob after the failover: both members get m1..m7
/// in order, once each, and no id names two messages among `also`.
fn chat_goes_on(d: &mut Diverged, also: &[&Seen]) {
    say(&mut d.ann, "m6");
    d.seen_by_bob.extend(messages_until(&mut d.bob, "m6"));
    say(&mut d.bob, "m7");
    d.seen_by_bob.extend(messages_until(&mut d.bob, "m7"));
    d.seen_by_ann.extend(messages_until(&mut d.ann, "m7"));
    for (who, seen) in [("ann", &d.seen_by_ann), ("bob", &d.seen_by_bob)] {
        let texts: Vec<String> = texts(seen)
            .into_iter()
            .filter(|t| t.starts_with('m'))
            .collect();
        assert_eq!(
            texts,
            ["m1", "m2", "m3", "m4", "m5", "m6", "m7"],
            "{who} saw {seen:?}\nA's log:\n{}\nB's log:\n{}",
            d.a.logs(),
            d.b.logs()
        );
        assert_in_order_once(seen);
    }
    assert_one_message_per_id(
        d.seen_by_ann
            .iter()
            .chain(&d.seen_by_bob)
            .chain(also.iter().copied()),
    );
}

/// The replica's stream ends at m3: numbering on from there would give m4's
/// and m5's ids to new messages, which members already holding m4 and m5
/// would drop as copies. A member resuming from m5 right after the
/// failover, before anything new is said, must not get m1..m3 again.
#[test]
fn a_promoted_replica_that_missed_messages_never_reuses_their_ids() {
    let Some(mut d) = diverged("promoted") else {
        return;
    };
    let seen_by_carol = messages_until(&mut d.carol, "m5");
    let m5 = seen_by_carol.last().cloned().expect("carol heard m5");
    d.carol = d.a.connect(); // carol leaves the room
    d.fail_over(Duration::ZERO);
    for server in [&d.a, &d.b] {
        server.wait_for_log("reconnecting", Duration::from_secs(10));
        support::wait_for_health(server, 200);
    }
    let mut carol = resume_on(&d.a, "r", &format!("since={}-{}", m5.epoch, m5.seq));
    let (resumed, others) = everything(&mut carol, Duration::from_millis(500));
    let again: Vec<&Seen> = resumed.iter().filter(|s| s.text.starts_with('m')).collect();
    assert!(
        again.is_empty(),
        "a resume from m5 gave already seen messages again: {again:?} (and {others:?})"
    );
    let also: Vec<&Seen> = seen_by_carol.iter().chain(&resumed).collect();
    chat_goes_on(&mut d, &also);
    assert_eq!(texts(&messages_until(&mut carol, "m7")), ["m6", "m7"]);
}

/// A process publishes before it has heard which master the new one is
/// (its replies come a second late): the message must not be numbered on
/// in the old master's epoch, as if nothing had changed.
#[test]
fn a_message_sent_before_the_new_master_is_known_takes_no_old_id() {
    let Some(mut d) = diverged("early") else {
        return;
    };
    d.fail_over(Duration::from_secs(1));
    d.a.wait_for_log("reconnecting", Duration::from_secs(10));
    support::wait_for_health(&d.a, 200);
    chat_goes_on(&mut d, &[]);
}

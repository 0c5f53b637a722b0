//! Redis Sentinel (issue 24): a master, a replica and three sentinels of
//! the test's own (`redis-server FILE --sentinel`, down after 1 s, failover
//! timeout 2 s), two chat processes that find the master through the
//! sentinels, real WebSocket members. The master is killed mid-chat.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::delivery::*;
use support::resp::{Reply, try_redis_call};
use support::{RedisServer, TestServer, free_port, unique_prefix, until_heard};

const MASTER_NAME: &str = "chatmaster";

/// A sentinel watching the master on `master_port`, with a config file of
/// its own (a sentinel rewrites it), removed when dropped.
struct Sentinel {
    server: RedisServer,
    config: PathBuf,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.server.stop();
        let _ = std::fs::remove_file(&self.config);
    }
}

fn sentinel(master_port: u16) -> Sentinel {
    let port = free_port();
    let config = std::env::temp_dir().join(format!("chat-sentinel-{port}.conf"));
    let text = format!(
        "sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
         sentinel failover-timeout {MASTER_NAME} 2000\n"
    );
    std::fs::write(&config, text).expect("write the sentinel's config");
    let server = RedisServer::launch(
        port,
        &[
            &config.to_string_lossy(),
            "--sentinel",
            "--port",
            &port.to_string(),
        ],
    );
    Sentinel { server, config }
}

/// The length of an array reply (0 for anything else).
fn count(reply: Result<Reply, String>) -> usize {
    match reply {
        Ok(Reply::Array(items)) => items.len(),
        _ => 0,
    }
}

/// A master, a replica in sync, and three sentinels that know both and
/// each other (so two of them can agree the master is down).
struct Cluster {
    master: RedisServer,
    _replica: RedisServer,
    sentinels: Vec<Sentinel>,
}

fn cluster() -> Option<Cluster> {
    let master = RedisServer::start()?;
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
    let sentinels: Vec<Sentinel> = (0..3).map(|_| sentinel(master.port)).collect();
    wait_for(
        "the sentinels to know everyone",
        Duration::from_secs(30),
        || {
            sentinels.iter().all(|s| {
                s.server.ping()
                    && count(try_redis_call(
                        &s.server,
                        &["SENTINEL", "replicas", MASTER_NAME],
                    )) == 1
                    && count(try_redis_call(
                        &s.server,
                        &["SENTINEL", "sentinels", MASTER_NAME],
                    )) == 2
            })
        },
    );
    Some(Cluster {
        master,
        _replica: replica,
        sentinels,
    })
}

impl Cluster {
    /// `--redis-sentinel` for each sentinel, after one nobody runs (a
    /// process must move on from a sentinel it cannot reach).
    fn flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--redis-sentinel".to_string(),
            format!("127.0.0.1:{}", free_port()),
        ];
        for s in &self.sentinels {
            flags.extend([
                "--redis-sentinel".into(),
                format!("127.0.0.1:{}", s.server.port),
            ]);
        }
        flags.extend(["--redis-master".into(), MASTER_NAME.into()]);
        flags
    }

    /// Where every sentinel says the master is now, if they agree.
    fn master_port(&self) -> Option<u16> {
        let ports: Vec<Option<u16>> = self.sentinels.iter().map(Self::master_port_by).collect();
        ports
            .windows(2)
            .all(|pair| pair[0] == pair[1])
            .then(|| ports[0])
            .flatten()
    }

    fn master_port_by(sentinel: &Sentinel) -> Option<u16> {
        let Ok(Reply::Array(address)) = try_redis_call(
            &sentinel.server,
            &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
        ) else {
            return None;
        };
        match address.get(1) {
            Some(Reply::Bulk(Some(port))) => std::str::from_utf8(port).ok()?.parse().ok(),
            _ => None,
        }
    }
}

/// A chat process on the sentinels, ready.
fn on_sentinels(cluster: &Cluster, prefix: &str) -> TestServer {
    let mut args = cluster.flags();
    args.extend(["--redis-prefix".into(), prefix.into()]);
    args.extend(FAST.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = TestServer::start_with(&args);
    support::wait_for_health(&server, 200);
    server
}

fn login_works(server: &TestServer) -> bool {
    let body = support::login_body("percy", "123");
    server
        .request("POST", "/login", &[], body.as_bytes())
        .status
        == 200
}

#[test]
fn a_sentinel_failover_mid_chat_keeps_both_processes_chatting() {
    let Some(mut cluster) = cluster() else {
        return;
    };
    let old_port = cluster.master.port;
    let prefix = unique_prefix("sentinel");
    let a = on_sentinels(&cluster, &prefix);
    let b = on_sentinels(&cluster, &prefix);
    let (mut ann, mut bob) = (member(&a, "r"), member(&b, "r"));
    until_heard(&mut ann, &mut bob, "live");
    drain(&mut ann, Duration::from_millis(300));
    for text in ["m1", "m2", "m3"] {
        say(&mut ann, text);
    }
    let mut seen_by_bob = messages_until(&mut bob, "m3");
    let mut seen_by_ann = messages_until(&mut ann, "m3");

    // The master dies mid-chat; ann speaks while Redis is away.
    cluster.master.stop();
    let killed = Instant::now();
    a.wait_for_log("reconnecting", Duration::from_secs(10));
    say(&mut ann, "o1");
    seen_by_ann.extend(messages_until(&mut ann, "o1"));
    wait_for("logins on both processes", Duration::from_secs(15), || {
        login_works(&a) && login_works(&b)
    });
    let back_after = killed.elapsed();
    eprintln!("logins answered 200 again {back_after:?} after the master was killed");
    wait_for(
        "the sentinels to agree on the new master",
        Duration::from_secs(10),
        || cluster.master_port().is_some_and(|port| port != old_port),
    );
    assert!(
        back_after < Duration::from_secs(5),
        "logins came back only after {back_after:?}\nA's log:\n{}",
        a.logs()
    );

    say(&mut ann, "m4");
    seen_by_bob.extend(messages_until(&mut bob, "m4"));
    say(&mut bob, "m5");
    seen_by_ann.extend(messages_until(&mut ann, "m5"));

    // The old master comes back; the sentinels make it a replica of the
    // new one. Nothing changes for the processes.
    let old = RedisServer::start_on(old_port);
    let reconnects = (
        metric(&a, "chat_redis_reconnects_total"),
        metric(&b, "chat_redis_reconnects_total"),
    );
    wait_for(
        "the old master to become a replica",
        Duration::from_secs(15),
        || {
            let Ok(Reply::Bulk(Some(info))) = try_redis_call(&old, &["INFO", "replication"]) else {
                return false;
            };
            String::from_utf8_lossy(&info).contains("role:slave")
        },
    );
    say(&mut bob, "m6");
    seen_by_ann.extend(messages_until(&mut ann, "m6"));
    seen_by_bob.extend(messages_until(&mut bob, "m6"));
    assert_eq!(
        reconnects,
        (
            metric(&a, "chat_redis_reconnects_total"),
            metric(&b, "chat_redis_reconnects_total")
        ),
        "the old master's return moved a process"
    );

    let only_chat = |seen: &[Seen]| -> Vec<String> {
        texts(seen)
            .into_iter()
            .filter(|t| !t.starts_with("live"))
            .collect()
    };
    assert_eq!(
        only_chat(&seen_by_ann),
        ["m1", "m2", "m3", "o1", "m4", "m5", "m6"]
    );
    assert_eq!(
        only_chat(&seen_by_bob),
        ["m1", "m2", "m3", "m4", "m5", "m6"]
    );
    for seen in [&seen_by_ann, &seen_by_bob] {
        let numbered: Vec<Seen> = seen.iter().filter(|s| s.seq > 0).cloned().collect();
        assert_in_order_once(&numbered);
    }
    assert_one_message_per_id(seen_by_ann.iter().chain(&seen_by_bob));
    for server in [&a, &b] {
        assert_eq!(metric(server, "chat_redis_failovers_total"), 1.0);
        assert!(metric(server, "chat_redis_last_outage_seconds") > 0.5);
    }
}

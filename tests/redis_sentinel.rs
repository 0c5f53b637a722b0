//! Redis Sentinel (issue 24): a master, a replica and three sentinels of
//! the test's own (`redis-server FILE --sentinel`, down after 1 s, failover
//! timeout 2 s), two chat processes that find the master through the
//! sentinels, real WebSocket members. The master is killed mid-chat.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::delivery::*;
use support::resp::{Reply, try_redis_call};
use support::{RedisServer, TestServer, free_port, unique_prefix, until_heard};

const MASTER_NAME: &str = "chatmaster";

/// With TLS: the certificate (its own CA) every server and sentinel uses.
type Tls<'a> = Option<&'a Path>;

/// The flags that make a server (or, `sentinel`, the lines that make a
/// sentinel) also listen with TLS on `tls_port`, and speak TLS to the
/// servers it replicates from or watches. The plain port stays, for the
/// test's own client.
fn tls_settings(certs: &Path, tls_port: u16) -> Vec<(String, String)> {
    let cert = certs.join("cert.pem").to_string_lossy().into_owned();
    let key = certs.join("key.pem").to_string_lossy().into_owned();
    [
        ("tls-port", tls_port.to_string()),
        ("tls-cert-file", cert.clone()),
        ("tls-key-file", key),
        ("tls-ca-cert-file", cert),
        ("tls-auth-clients", "no".to_string()),
        ("tls-replication", "yes".to_string()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect()
}

/// A redis-server that can be stopped and started again with the same
/// settings: `server.port` is its plain port (the test's), `port` the one
/// the chat processes and the other servers use (its TLS port with TLS).
struct Node {
    server: RedisServer,
    args: Vec<String>,
    port: u16,
}

impl Node {
    fn start(extra: &[String], tls: Tls) -> Node {
        let plain = free_port();
        let mut args = vec!["--port".to_string(), plain.to_string()];
        let mut port = plain;
        if let Some(certs) = tls {
            port = free_port();
            for (name, value) in tls_settings(certs, port) {
                args.extend([format!("--{name}"), value]);
            }
        }
        args.extend_from_slice(extra);
        let server = Node::launch(plain, &args);
        Node { server, args, port }
    }

    fn launch(plain: u16, args: &[String]) -> RedisServer {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = RedisServer::launch(plain, &args);
        wait_for("redis-server to answer", Duration::from_secs(10), || {
            server.ping()
        });
        server
    }

    /// Starts it again, as it was (a master that comes back).
    fn restart(&mut self) {
        self.server = Node::launch(self.server.port, &self.args);
    }
}

/// A sentinel watching the master at `master_port`, with a config file of
/// its own (a sentinel rewrites it), removed when dropped.
struct Sentinel {
    server: RedisServer,
    /// Where the chat processes reach it (its TLS port with TLS).
    port: u16,
    config: PathBuf,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.server.stop();
        let _ = std::fs::remove_file(&self.config);
    }
}

fn sentinel(master_port: u16, tls: Tls) -> Sentinel {
    sentinel_with(master_port, tls, "")
}

/// A sentinel with `extra` lines in its config.
fn sentinel_with(master_port: u16, tls: Tls, extra: &str) -> Sentinel {
    let plain = free_port();
    let config = std::env::temp_dir().join(format!("chat-sentinel-{plain}.conf"));
    let mut text = format!(
        "port {plain}\n\
         sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
         sentinel failover-timeout {MASTER_NAME} 2000\n\
         {extra}"
    );
    let mut port = plain;
    if let Some(certs) = tls {
        port = free_port();
        for (name, value) in tls_settings(certs, port) {
            text.push_str(&format!("{name} {value}\n"));
        }
    }
    std::fs::write(&config, text).expect("write the sentinel's config");
    let server = RedisServer::launch(plain, &[&config.to_string_lossy(), "--sentinel"]);
    Sentinel {
        server,
        port,
        config,
    }
}

/// The length of an array reply (0 for anything else).
fn count(reply: Result<Reply, String>) -> usize {
    match reply {
        Ok(Reply::Array(items)) => items.len(),
        _ => 0,
    }
}

/// A master, a replica in sync, and three sentinels that know both and
/// each other (so two of them can agree the master is down); with `tls`,
/// all of them speak TLS to each other and to the chat processes.
struct Cluster {
    master: Node,
    _replica: Node,
    sentinels: Vec<Sentinel>,
    /// The CA file, with TLS.
    ca: Option<PathBuf>,
}

fn cluster(tls: Tls) -> Option<Cluster> {
    if !support::redis_installed() {
        return None;
    }
    let master = Node::start(&[], tls);
    let replica = Node::start(
        &[
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port.to_string(),
            "--repl-diskless-load".into(),
            "on-empty-db".into(),
        ],
        tls,
    );
    let sentinels: Vec<Sentinel> = (0..3).map(|_| sentinel(master.port, tls)).collect();
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
        ca: tls.map(|certs| certs.join("cert.pem")),
    })
}

impl Cluster {
    /// `--redis-sentinel` for each sentinel, after one nobody runs (a
    /// process must move on from a sentinel it cannot reach); with TLS,
    /// `--redis rediss://` and the CA.
    fn flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--redis-sentinel".to_string(),
            format!("127.0.0.1:{}", free_port()),
        ];
        for s in &self.sentinels {
            flags.extend(["--redis-sentinel".into(), format!("127.0.0.1:{}", s.port)]);
        }
        flags.extend(["--redis-master".into(), MASTER_NAME.into()]);
        if let Some(ca) = &self.ca {
            flags.extend(["--redis".into(), "rediss://master".into()]);
            flags.extend(["--redis-ca".into(), ca.to_string_lossy().into_owned()]);
        }
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
    failover_mid_chat(None);
}

/// The same with TLS everywhere: to the sentinels, to the master, and
/// between the servers.
#[test]
fn a_sentinel_failover_over_tls_keeps_both_processes_chatting() {
    let certs = support::make_certificate();
    failover_mid_chat(Some(&certs));
}

/// Ann on A and bob on B chat; the master is SIGKILLed; logins come back
/// within 5 s on both, chat goes on with no id twice, what ann said during
/// the outage reached her at once and bob once A was back, and the old
/// master's return moves nobody.
fn failover_mid_chat(tls: Tls) {
    let Some(mut cluster) = cluster(tls) else {
        return;
    };
    let old_port = cluster.master.port;
    let prefix = unique_prefix("sentinel");
    let a = on_sentinels(&cluster, &prefix);
    let b = on_sentinels(&cluster, &prefix);
    if tls.is_some() {
        let sentinel = format!(
            "redis sentinel: connected to 127.0.0.1:{} over TLS",
            cluster.sentinels[0].port
        );
        let master = format!("redis commands: connected to 127.0.0.1:{old_port} over TLS");
        for needle in [sentinel, master] {
            assert!(
                a.logs().contains(&needle),
                "no {needle:?} in:\n{}",
                a.logs()
            );
        }
    }
    let (mut ann, mut bob) = (member(&a, "r"), member(&b, "r"));
    until_heard(&mut ann, &mut bob, "live");
    drain(&mut ann, Duration::from_millis(300));
    for text in ["m1", "m2", "m3"] {
        say(&mut ann, text);
    }
    let mut seen_by_bob = messages_until(&mut bob, "m3");
    let mut seen_by_ann = messages_until(&mut ann, "m3");

    // The master dies mid-chat; ann speaks while Redis is away.
    cluster.master.server.stop();
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

    // What ann said during the outage reaches bob once A is back: late,
    // not never.
    seen_by_bob.extend(messages_until(&mut bob, "o1"));
    say(&mut ann, "m4");
    seen_by_bob.extend(messages_until(&mut bob, "m4"));
    say(&mut bob, "m5");
    seen_by_ann.extend(messages_until(&mut ann, "m5"));

    // The old master comes back; the sentinels make it a replica of the
    // new one. Nothing changes for the processes.
    cluster.master.restart();
    let old = &cluster.master.server;
    let reconnects = (
        metric(&a, "chat_redis_reconnects_total"),
        metric(&b, "chat_redis_reconnects_total"),
    );
    wait_for(
        "the old master to become a replica",
        Duration::from_secs(15),
        || {
            let Ok(Reply::Bulk(Some(info))) = try_redis_call(old, &["INFO", "replication"]) else {
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
        ["m1", "m2", "m3", "o1", "m4", "m5", "m6"]
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

/// Passwords: the master's, from `--redis` (of which only the password, db
/// and scheme count with sentinels), and the sentinels' own
/// (`--redis-sentinel-password`). A wrong sentinel password is an error in
/// the log and `/healthz` 503, never a crash.
#[test]
fn the_master_and_the_sentinels_each_take_their_own_password() {
    if !support::redis_installed() {
        return;
    }
    let port = free_port();
    let _master = RedisServer::launch(
        port,
        &["--port", &port.to_string(), "--requirepass", "master-pw"],
    );
    let extra = format!("sentinel auth-pass {MASTER_NAME} master-pw\nrequirepass sentinel-pw\n");
    let sentinel = sentinel_with(port, None, &extra);
    for listening in [port, sentinel.port] {
        wait_for("redis-server to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", listening)).is_ok()
        });
    }
    let with = |password: &str| {
        let address = format!("127.0.0.1:{}", sentinel.port);
        TestServer::start_with(&[
            "--redis",
            "redis://:master-pw@ignored/0",
            "--redis-sentinel",
            &address,
            "--redis-master",
            MASTER_NAME,
            "--redis-sentinel-password",
            password,
            "--redis-prefix",
            &unique_prefix("passwords"),
        ])
    };
    let right = with("sentinel-pw");
    support::wait_for_health(&right, 200);
    assert!(login_works(&right));
    let wrong = with("not-it");
    wrong.wait_for_log("AUTH failed", Duration::from_secs(10));
    assert_eq!(wrong.request("GET", "/healthz", &[], b"").status, 503);
    assert!(!login_works(&wrong));
}

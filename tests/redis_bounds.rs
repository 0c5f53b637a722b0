//! Replies from Redis are not trusted to be small or shallow. A fake Redis of
//! the test's own (a listener on 127.0.0.1:0, no redis-server needed) answers
//! the server's commands, and when the test says so answers the SCRIPT LOAD
//! of the command link with a hostile reply: arrays nested 100,000 deep (the
//! decoder recurses per level: enough to overflow the stack), a bulk string
//! that claims 600 MiB and streams 96 MiB of it, or an array of small bulk
//! strings that goes on for 96 MiB. The server must drop that link with one
//! warning, stay up with bounded memory (its peak RSS), and reconnect.

mod support;

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::TestServer;

/// What the fake sends once, in place of the first SCRIPT LOAD reply after
/// the test arms it.
#[derive(Clone)]
enum Poison {
    /// `*1\r\n` this many times, then `:1\r\n`.
    Nested(usize),
    /// `head`, then `unit` again and again up to `streamed` bytes in all (or
    /// until the server hangs up): a reply that never ends.
    Stream {
        head: Vec<u8>,
        unit: Vec<u8>,
        streamed: usize,
    },
}

struct FakeRedis {
    url: String,
    armed: Arc<AtomicBool>,
    /// Set once the poison went out whole (or the server hung up on it).
    poison_done: Arc<AtomicBool>,
    /// SCRIPT LOADs answered with a sha.
    loads: Arc<Mutex<usize>>,
}

impl FakeRedis {
    fn start(poison: Poison) -> FakeRedis {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake redis");
        let url = format!("redis://{}", listener.local_addr().expect("address"));
        let armed = Arc::new(AtomicBool::new(false));
        let poison_done = Arc::new(AtomicBool::new(false));
        let loads = Arc::new(Mutex::new(0));
        let poison_left = Arc::new(AtomicBool::new(true));
        let (a, d, l) = (armed.clone(), poison_done.clone(), loads.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (a, d, l, p) = (a.clone(), d.clone(), l.clone(), poison_left.clone());
                let poison = poison.clone();
                thread::spawn(move || {
                    let _ = serve(stream, &poison, &a, &d, &l, &p);
                });
            }
        });
        FakeRedis {
            url,
            armed,
            poison_done,
            loads,
        }
    }
}

/// Reads one command (a RESP array of bulk strings, as the server sends).
fn read_command(reader: &mut impl BufRead) -> io::Result<Vec<Vec<u8>>> {
    let header = |reader: &mut dyn BufRead, kind: u8| -> io::Result<usize> {
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line)?;
        if line.first() != Some(&kind) || !line.ends_with(b"\r\n") {
            return Err(io::Error::other(format!("not a command: {line:?}")));
        }
        std::str::from_utf8(&line[1..line.len() - 2])
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| io::Error::other("bad length"))
    };
    let count = header(reader, b'*')?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let len = header(reader, b'$')?;
        let mut arg = vec![0; len + 2];
        reader.read_exact(&mut arg)?;
        arg.truncate(len);
        args.push(arg);
    }
    Ok(args)
}

fn bulk(bytes: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", bytes.len()).into_bytes();
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
    out
}

fn serve(
    stream: TcpStream,
    poison: &Poison,
    armed: &AtomicBool,
    poison_done: &AtomicBool,
    loads: &Mutex<usize>,
    poison_left: &AtomicBool,
) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let args = read_command(&mut reader)?;
        let name = args
            .first()
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default();
        match name.as_str() {
            "SCRIPT" => {
                // Hold the reply until the test has its baseline, then poison it once.
                while !armed.load(Ordering::SeqCst) {
                    thread::park_timeout(Duration::from_millis(5));
                }
                if poison_left.swap(false, Ordering::SeqCst) {
                    let result = send_poison(&mut writer, poison);
                    poison_done.store(true, Ordering::SeqCst);
                    result?;
                } else {
                    writer.write_all(&bulk(&[b'f'; 40]))?;
                    *loads.lock().unwrap() += 1;
                }
            }
            "PING" => writer.write_all(b"+PONG\r\n")?,
            "SUBSCRIBE" | "UNSUBSCRIBE" => {
                let kind = name.to_ascii_lowercase();
                for (i, channel) in args[1..].iter().enumerate() {
                    let mut reply = b"*3\r\n".to_vec();
                    reply.extend(bulk(kind.as_bytes()));
                    reply.extend(bulk(channel));
                    reply.extend(format!(":{}\r\n", i + 1).into_bytes());
                    writer.write_all(&reply)?;
                }
            }
            _ => writer.write_all(b"+OK\r\n")?,
        }
    }
}

fn send_poison(writer: &mut TcpStream, poison: &Poison) -> io::Result<()> {
    match poison {
        Poison::Nested(depth) => {
            let mut reply = b"*1\r\n".repeat(*depth);
            reply.extend_from_slice(b":1\r\n");
            writer.write_all(&reply)
        }
        Poison::Stream {
            head,
            unit,
            streamed,
        } => {
            writer.write_all(head)?;
            let chunk = unit.repeat((1 << 20) / unit.len());
            let mut sent = head.len();
            while sent < *streamed {
                let n = chunk.len().min(streamed - sent);
                writer.write_all(&chunk[..n])?;
                sent += n;
            }
            Ok(())
        }
    }
}

/// Polls `condition` every 10 ms until it holds, or fails after `timeout`.
fn wait_until(
    server: &mut TestServer,
    what: &str,
    timeout: Duration,
    condition: impl Fn(&TestServer) -> bool,
) {
    let start = Instant::now();
    loop {
        if let Some(status) = server.exit_status() {
            panic!(
                "the server died ({status}) while waiting for {what}; logs:\n{}",
                server.logs()
            );
        }
        if condition(server) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}; logs:\n{}",
            server.logs()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn healthy(server: &TestServer) -> bool {
    server.request("GET", "/healthz", &[], b"").status == 200
}

/// Lines of the log that say the command link was dropped.
fn resets(server: &TestServer) -> Vec<String> {
    server
        .logs()
        .lines()
        .filter(|l| l.contains("redis commands:") && l.contains("reconnecting"))
        .map(str::to_string)
        .collect()
}

/// Starts a server on a fake Redis that will send `poison`, waits until both
/// links are up, and returns them with the server's peak RSS (kB) so far.
fn start(poison: Poison) -> (FakeRedis, TestServer, u64) {
    let fake = FakeRedis::start(poison);
    let mut server = TestServer::start_with(&["--redis", &fake.url]);
    wait_until(
        &mut server,
        "both links up",
        Duration::from_secs(10),
        healthy,
    );
    let baseline = server.status_kb("VmHWM");
    fake.armed.store(true, Ordering::SeqCst);
    (fake, server, baseline)
}

/// After the poison: one warning, the link back (a sha loaded on the fresh
/// connection, /healthz 200 again), the process alive.
fn recovers(fake: &FakeRedis, server: &mut TestServer, about: &str) {
    wait_until(server, "the link reset", Duration::from_secs(20), |s| {
        !resets(s).is_empty()
    });
    wait_until(server, "the link back", Duration::from_secs(20), |s| {
        *fake.loads.lock().unwrap() > 0 && healthy(s)
    });
    let resets = resets(server);
    assert_eq!(resets.len(), 1, "one reset, logged once: {resets:#?}");
    assert!(
        resets[0].contains("WARN") && resets[0].contains(about),
        "the warning says why: {resets:#?}"
    );
}

#[test]
fn a_reply_nested_too_deep_resets_the_link_and_nothing_else() {
    let (fake, mut server, _) = start(Poison::Nested(100_000));
    recovers(&fake, &mut server, "nested");
    assert!(fake.poison_done.load(Ordering::SeqCst));
}

/// Streams `poison` (tens of MiB of a reply that never ends) and checks
/// that the server's peak RSS did not follow.
fn memory_stays_bounded(poison: Poison) {
    let Poison::Stream { streamed, .. } = poison else {
        unreachable!("a stream")
    };
    let (fake, mut server, baseline) = start(poison);
    // Today's server reads all of it and keeps it; a bounded one hangs up
    // early. Either way, then see how far its memory went.
    wait_until(
        &mut server,
        "the reply refused or streamed",
        Duration::from_secs(30),
        |s| !resets(s).is_empty() || fake.poison_done.load(Ordering::SeqCst),
    );
    let grown_mib = server.status_kb("VmHWM").saturating_sub(baseline) / 1024;
    eprintln!("peak RSS grew {grown_mib} MiB");
    assert!(
        grown_mib < 40,
        "peak RSS grew {grown_mib} MiB for a reply of {} MiB sent; logs:\n{}",
        streamed >> 20,
        server.logs()
    );
    recovers(&fake, &mut server, "a reply over");
}

/// A bulk string that claims 600 MiB: refused from its header.
#[test]
fn a_reply_that_claims_too_much_resets_the_link_before_it_is_buffered() {
    memory_stays_bounded(Poison::Stream {
        head: format!("${}\r\n", 600u64 << 20).into_bytes(),
        unit: b"x".to_vec(),
        streamed: 96 << 20,
    });
}

/// An array whose parts are each small and whose count is not absurd, but
/// that goes on past any real reply: refused once it has filled the buffer.
#[test]
fn a_reply_that_grows_too_big_resets_the_link_at_the_bound() {
    let mut unit = b"$1018\r\n".to_vec();
    unit.extend([b'x'; 1018]);
    unit.extend(b"\r\n");
    memory_stays_bounded(Poison::Stream {
        head: b"*100000\r\n".to_vec(),
        unit,
        streamed: 96 << 20,
    });
}

//! A TCP proxy that injects faults between a chat server and its Redis:
//! delay per link and direction, and cuts. Plain std threads, no runtime.
//!
//! The server opens both of its Redis links to the one address it is given,
//! so the proxy tells them apart by what each says first: a connection whose
//! first command is `SUBSCRIBE` or `PING` is the subscription link (the
//! command link never sends either), anything else the command link. Rules
//! are looked up for every chunk as it is read, so a delay set before the
//! link says its first word applies from its first byte.
//!
//! A delayed chunk leaves `delay` after it was read, never before a chunk
//! read earlier (one writer thread per direction keeps the order); a held
//! link's bytes wait until it is released. A cut
//! closes every open connection and closes new ones at once until
//! `restore`: to the server it looks like Redis going away and coming back.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Which of the server's two Redis links a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    Commands,
    Subscriptions,
}

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Server to Redis.
    Up,
    /// Redis to server.
    Down,
}

#[derive(Default)]
struct Rules {
    delays: HashMap<(Link, Direction), Duration>,
    /// Links and directions whose bytes wait, in order, until released.
    held: Vec<(Link, Direction)>,
    cut: bool,
    /// Where new connections go (`retarget` moves it).
    target: Option<SocketAddr>,
    /// Links cut on their own (`cut_link`).
    cut_links: Vec<Link>,
    /// Every connection still open (both ends, and which link it is once
    /// known), to close on a cut.
    open: Vec<(TcpStream, TcpStream, Arc<OnceLock<Link>>)>,
    /// Bytes forwarded per link and direction.
    bytes: HashMap<(Link, Direction), u64>,
    /// Bytes read per link and direction, held or delayed ones too.
    read: HashMap<(Link, Direction), u64>,
    /// Connections seen per link (once classified).
    seen: HashMap<Link, usize>,
}

struct Shared {
    rules: Mutex<Rules>,
    stop: AtomicBool,
}

pub struct Proxy {
    /// Where the server should connect (`redis://{addr}`).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// A proxy on 127.0.0.1:0 forwarding to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            rules: Mutex::new(Rules {
                target: Some(target),
                ..Rules::default()
            }),
            stop: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let target = {
                    let rules = accepting.rules.lock().unwrap();
                    rules.target.filter(|_| !rules.cut)
                };
                let Some(target) = target else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let Ok(server) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                open_pair(&accepting, client, server);
            }
        });
        Proxy { addr, shared }
    }

    /// A `redis://` URL for the server, through the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Delays every chunk on `link` going `direction` by `delay` from now on.
    pub fn delay(&self, link: Link, direction: Direction, delay: Duration) {
        self.shared
            .rules
            .lock()
            .unwrap()
            .delays
            .insert((link, direction), delay);
    }

    /// Delays `link` both ways.
    pub fn delay_both(&self, link: Link, delay: Duration) {
        self.delay(link, Direction::Up, delay);
        self.delay(link, Direction::Down, delay);
    }

    /// Holds every byte on `link` going `direction` (in order) until `release`.
    pub fn hold(&self, link: Link, direction: Direction) {
        self.shared
            .rules
            .lock()
            .unwrap()
            .held
            .push((link, direction));
    }

    /// Lets what `hold` kept go on.
    pub fn release(&self, link: Link, direction: Direction) {
        self.shared
            .rules
            .lock()
            .unwrap()
            .held
            .retain(|held| *held != (link, direction));
    }

    /// Closes every connection, and every new one, until `restore`.
    pub fn cut(&self) {
        let mut rules = self.shared.rules.lock().unwrap();
        rules.cut = true;
        for (client, server, _) in rules.open.drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }

    /// Closes `link`'s connections, and every new one that turns out to be
    /// that link (by its first command), until `restore`.
    pub fn cut_link(&self, link: Link) {
        let mut rules = self.shared.rules.lock().unwrap();
        rules.cut_links.push(link);
        rules.open.retain(|(client, server, of)| {
            if of.get() != Some(&link) {
                return true;
            }
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            false
        });
    }

    /// Sends new connections to `target` from now on (a failover, as a
    /// client that names its Redis by one address sees it); open ones stay.
    pub fn retarget(&self, target: SocketAddr) {
        self.shared.rules.lock().unwrap().target = Some(target);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        let mut rules = self.shared.rules.lock().unwrap();
        rules.cut = false;
        rules.cut_links.clear();
    }

    /// Bytes forwarded so far on `link` going `direction`.
    pub fn bytes(&self, link: Link, direction: Direction) -> u64 {
        let rules = self.shared.rules.lock().unwrap();
        rules.bytes.get(&(link, direction)).copied().unwrap_or(0)
    }

    /// Bytes read so far on `link` going `direction`, forwarded or not.
    pub fn bytes_read(&self, link: Link, direction: Direction) -> u64 {
        let rules = self.shared.rules.lock().unwrap();
        rules.read.get(&(link, direction)).copied().unwrap_or(0)
    }

    /// Connections seen so far on `link` (counted once classified).
    pub fn connections(&self, link: Link) -> usize {
        let rules = self.shared.rules.lock().unwrap();
        rules.seen.get(&link).copied().unwrap_or(0)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect(self.addr); // wakes the accepting thread
    }
}

fn open_pair(shared: &Arc<Shared>, client: TcpStream, server: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let link: Arc<OnceLock<Link>> = Arc::new(OnceLock::new());
    shared
        .rules
        .lock()
        .unwrap()
        .open
        .push((client_copy, server_copy, Arc::clone(&link)));
    for (from, to, direction) in [
        (client.try_clone(), server.try_clone(), Direction::Up),
        (server.try_clone(), client.try_clone(), Direction::Down),
    ] {
        let (Ok(from), Ok(to)) = (from, to) else {
            return;
        };
        pump(Arc::clone(shared), Arc::clone(&link), from, to, direction);
    }
}

/// Forwards `from` to `to`: a reader thread stamps each chunk with when it
/// may leave, a writer thread sends them in order.
fn pump(
    shared: Arc<Shared>,
    link: Arc<OnceLock<Link>>,
    mut from: TcpStream,
    mut to: TcpStream,
    direction: Direction,
) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer_shared = Arc::clone(&shared);
    let writer_link = Arc::clone(&link);
    thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            let held = || {
                let link = writer_link.get().copied();
                let rules = writer_shared.rules.lock().unwrap();
                link.is_some_and(|link| rules.held.contains(&(link, direction)))
            };
            while held() {
                thread::sleep(Duration::from_millis(2)); // polled: a test's fault, not a wait for it
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
            if let Some(link) = writer_link.get() {
                let mut rules = writer_shared.rules.lock().unwrap();
                *rules.bytes.entry((*link, direction)).or_default() += chunk.len() as u64;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = buffer[..n].to_vec();
            if direction == Direction::Up && link.get().is_none() {
                let kind = classify(&chunk);
                if link.set(kind).is_ok() {
                    let mut rules = shared.rules.lock().unwrap();
                    *rules.seen.entry(kind).or_default() += 1;
                    if rules.cut_links.contains(&kind) {
                        let _ = from.shutdown(Shutdown::Both);
                        break; // the writer half-closes the other end
                    }
                }
            }
            let delay = link
                .get()
                .and_then(|link| {
                    let mut rules = shared.rules.lock().unwrap();
                    *rules.read.entry((*link, direction)).or_default() += n as u64;
                    rules.delays.get(&(*link, direction)).copied()
                })
                .unwrap_or_default();
            if tx.send((Instant::now() + delay, chunk)).is_err() {
                break;
            }
        }
        // The writer sends what is queued, then half-closes its side.
    });
}

/// The link a connection is, from its first bytes: a RESP array whose first
/// element names the command.
fn classify(first: &[u8]) -> Link {
    let name = std::str::from_utf8(first)
        .ok()
        .and_then(|text| text.split("\r\n").nth(2))
        .unwrap_or("")
        .to_ascii_uppercase();
    match name.as_str() {
        "SUBSCRIBE" | "PING" => Link::Subscriptions,
        _ => Link::Commands,
    }
}

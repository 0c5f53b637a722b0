//! Where the master is, by Redis Sentinel (`--redis-sentinel`,
//! `--redis-master`).
//!
//! Two links to the sentinels, non-blocking in the loop's own `Poll` like
//! the data links:
//! - `ask` sends `SENTINEL get-master-addr-by-name NAME`: on each fresh
//!   connection, and whenever the bus asks again (a data link failed, or
//!   the server it reached is no master);
//! - `watch` is subscribed to `+switch-master`, so a failover moves the data
//!   links as soon as the sentinels decide it, not at their next failure.
//!
//! A sentinel that cannot be reached, does not know the master, or fails a
//! link, is left for the next one in the list. What a sentinel says is only
//! ever an address: that the server there is the master, the data link
//! checks itself (`master`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use mio::{Registry, Token};
use redis_protocol::resp2::types::OwnedFrame;
use rustls::ClientConfig;

use super::LOGGED_REPLY;
use super::link::{Change, Link, command};
use crate::config::RedisUrl;
use crate::logging::Truncated;

/// Bytes queued toward a sentinel, at most (a few small commands).
const OUT_MAX: usize = 64 << 10;

/// Where to find the master: its name and the sentinels that watch it.
#[derive(Debug, Clone)]
pub struct Watch {
    pub master_name: String,
    /// Each sentinel's address, with its password and TLS.
    pub sentinels: Vec<RedisUrl>,
}

/// What a reply on the `ask` link answers.
enum Asked {
    Handshake,
    Master,
}

pub(super) struct Sentinels {
    name: String,
    sentinels: Vec<RedisUrl>,
    ask: Link,
    watch: Link,
    /// The sentinel each link is at (an index into `sentinels`).
    ask_at: usize,
    watch_at: usize,
    expected: VecDeque<Asked>,
    /// The question is to be sent (once `ask` is up).
    wanted: bool,
    /// Where the master is, as last heard.
    master: Option<(String, u16)>,
    /// Sentinels that failed the `ask` link in a row; past all of them, an
    /// outage is logged (once, until one answers).
    failed_in_a_row: usize,
    outage_logged: bool,
    frames: Vec<OwnedFrame>,
}

impl Sentinels {
    pub(super) fn new(
        watch: Watch,
        tls: Option<Arc<ClientConfig>>,
        tokens: [Token; 2],
        now: Instant,
    ) -> Sentinels {
        let first = watch.sentinels[0].clone();
        Sentinels {
            name: watch.master_name,
            ask: Link::new("sentinel", tokens[0], first.clone(), tls.clone(), OUT_MAX, now),
            watch: Link::new("sentinel watch", tokens[1], first, tls, OUT_MAX, now),
            sentinels: watch.sentinels,
            ask_at: 0,
            watch_at: 0,
            expected: VecDeque::new(),
            wanted: true,
            master: None,
            failed_in_a_row: 0,
            outage_logged: false,
            frames: Vec::new(),
        }
    }

    pub(super) fn owns(&self, token: Token) -> bool {
        token == self.ask.token() || token == self.watch.token()
    }

    /// Where the master is, as last heard.
    pub(super) fn master(&self) -> Option<&(String, u16)> {
        self.master.as_ref()
    }

    /// Asks the sentinels again where the master is.
    pub(super) fn ask_again(&mut self) {
        self.wanted = true;
    }

    /// Handles readiness on one of the links; returns where the master has
    /// moved, if a sentinel just said it is somewhere new.
    pub(super) fn on_ready(
        &mut self,
        token: Token,
        now: Instant,
        registry: &Registry,
    ) -> Option<(String, u16)> {
        let mut frames = std::mem::take(&mut self.frames);
        let mut moved = None;
        if token == self.ask.token() {
            let change = self.ask.on_ready(now, registry, &mut frames);
            for frame in frames.drain(..) {
                moved = self.answered(frame, now, registry).or(moved);
            }
            self.on_ask_link(change, now, registry);
        } else {
            let change = self.watch.on_ready(now, registry, &mut frames);
            for frame in frames.drain(..) {
                moved = self.pushed(frame).or(moved);
            }
            self.on_watch_link(change, now, registry);
        }
        self.frames = frames;
        moved
    }

    /// Once per loop turn: connects what is due, asks if asked to, flushes.
    pub(super) fn end_turn(&mut self, now: Instant, registry: &Registry) {
        let change = self.ask.connect_if_due(now, registry);
        self.on_ask_link(change, now, registry);
        let change = self.watch.connect_if_due(now, registry);
        self.on_watch_link(change, now, registry);
        if self.wanted && self.ask.is_up() && self.expected.is_empty() {
            let question = command(&["SENTINEL", "get-master-addr-by-name", &self.name]);
            if self.ask.send(&question) {
                self.expected.push_back(Asked::Master);
                self.wanted = false;
            }
        }
        if let Err(err) = self.ask.flush() {
            let change = self.ask.reset(&format!("write failed: {err}"), now, registry);
            self.on_ask_link(change, now, registry);
        }
        if let Err(err) = self.watch.flush() {
            let change = self.watch.reset(&format!("write failed: {err}"), now, registry);
            self.on_watch_link(change, now, registry);
        }
    }

    /// When either link next tries to connect.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [self.ask.retry_at(), self.watch.retry_at()]
            .into_iter()
            .flatten()
            .min()
    }

    fn on_ask_link(&mut self, change: Change, now: Instant, registry: &Registry) {
        match change {
            Change::Nothing => {}
            Change::Up => {
                for handshake in self.ask.target().handshake() {
                    if self.ask.send(&handshake) {
                        self.expected.push_back(Asked::Handshake);
                    }
                }
                self.wanted = true;
            }
            Change::Down(why) => {
                self.expected.clear();
                self.wanted = true;
                self.failed_in_a_row += 1;
                if self.failed_in_a_row >= self.sentinels.len() && !self.outage_logged {
                    let all: Vec<String> = (self.sentinels.iter())
                        .map(|s| format!("{}:{}", s.host, s.port))
                        .collect();
                    log::warn!(
                        "redis: no sentinel answers ({}; the last: {why}): asking them again",
                        all.join(", ")
                    );
                    self.outage_logged = true;
                }
                self.ask_at = (self.ask_at + 1) % self.sentinels.len();
                let next = &self.sentinels[self.ask_at];
                self.ask.move_to(&next.host, next.port, now, registry);
            }
        }
    }

    fn on_watch_link(&mut self, change: Change, now: Instant, registry: &Registry) {
        match change {
            Change::Nothing => {}
            Change::Up => {
                for handshake in self.watch.target().handshake() {
                    self.watch.send(&handshake);
                }
                self.watch.send(&command(&["SUBSCRIBE", "+switch-master"]));
                // A switch while no sentinel was watched would go unheard.
                self.wanted = true;
            }
            Change::Down(_) => {
                self.watch_at = (self.watch_at + 1) % self.sentinels.len();
                let next = &self.sentinels[self.watch_at];
                self.watch.move_to(&next.host, next.port, now, registry);
            }
        }
    }

    /// A reply on the `ask` link.
    fn answered(
        &mut self,
        frame: OwnedFrame,
        now: Instant,
        registry: &Registry,
    ) -> Option<(String, u16)> {
        let sentinel = self.ask.target();
        let at = format!("{}:{}", sentinel.host, sentinel.port);
        match (self.expected.pop_front()?, frame) {
            (Asked::Handshake, OwnedFrame::Error(err)) => {
                log::error!("redis sentinel {at}: AUTH failed: {err}");
                None
            }
            (Asked::Handshake, _) => None,
            (Asked::Master, frame) => match master_address(&frame) {
                Some(address) => {
                    if self.outage_logged {
                        log::info!("redis sentinel {at} answers again");
                    }
                    (self.failed_in_a_row, self.outage_logged) = (0, false);
                    self.heard(address, &at)
                }
                None => {
                    log::warn!(
                        "redis sentinel {at}: no address for master {:?}: {}; asking the next",
                        self.name,
                        Truncated(&frame, LOGGED_REPLY)
                    );
                    let change = self.ask.reset("no master address", now, registry);
                    self.on_ask_link(change, now, registry);
                    None
                }
            },
        }
    }

    /// A push on the `watch` link: `+switch-master` says
    /// `<name> <old host> <old port> <new host> <new port>`.
    fn pushed(&mut self, frame: OwnedFrame) -> Option<(String, u16)> {
        let parts = match frame {
            OwnedFrame::Array(parts) => parts,
            OwnedFrame::Error(err) => {
                // AUTH or SUBSCRIBE refused: this link will hear no switch.
                let watched = self.watch.target();
                log::error!(
                    "redis sentinel watch {}:{}: {err}",
                    watched.host,
                    watched.port
                );
                return None;
            }
            _ => return None,
        };
        let [kind, channel, payload] = parts.as_slice() else {
            return None;
        };
        let (OwnedFrame::BulkString(kind), OwnedFrame::BulkString(channel)) = (kind, channel) else {
            return None;
        };
        if kind != b"message" || channel != b"+switch-master" {
            return None;
        }
        let OwnedFrame::BulkString(payload) = payload else {
            return None;
        };
        let text = String::from_utf8_lossy(payload);
        let fields: Vec<&str> = text.split(' ').collect();
        let [name, _, _, host, port] = fields.as_slice() else {
            return None;
        };
        if *name != self.name {
            return None;
        }
        let port = port.parse().ok()?;
        let watched = self.watch.target();
        let at = format!("{}:{} (+switch-master)", watched.host, watched.port);
        self.heard((host.to_string(), port), &at)
    }

    /// A sentinel said where the master is: returned if that is news.
    fn heard(&mut self, address: (String, u16), from: &str) -> Option<(String, u16)> {
        if self.master.as_ref() == Some(&address) {
            return None;
        }
        log::info!(
            "redis sentinel {from}: master {:?} is at {}:{}",
            self.name,
            address.0,
            address.1
        );
        self.master = Some(address.clone());
        Some(address)
    }
}

/// `SENTINEL get-master-addr-by-name`'s answer: `[host, port]`, or nil.
fn master_address(frame: &OwnedFrame) -> Option<(String, u16)> {
    let OwnedFrame::Array(parts) = frame else {
        return None;
    };
    let [OwnedFrame::BulkString(host), OwnedFrame::BulkString(port)] = parts.as_slice() else {
        return None;
    };
    let host = String::from_utf8(host.clone()).ok()?;
    let port = std::str::from_utf8(port).ok()?.parse().ok()?;
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> OwnedFrame {
        OwnedFrame::BulkString(text.as_bytes().to_vec())
    }

    fn sentinels() -> Sentinels {
        let watch = Watch {
            master_name: "mymaster".into(),
            sentinels: vec![RedisUrl::parse("redis://127.0.0.1:1").unwrap()],
        };
        Sentinels::new(watch, None, [Token(1), Token(2)], Instant::now())
    }

    #[test]
    fn the_masters_address_is_read_from_the_answer() {
        let answer = OwnedFrame::Array(vec![bulk("10.0.0.7"), bulk("6380")]);
        assert_eq!(master_address(&answer), Some(("10.0.0.7".into(), 6380)));
        assert_eq!(master_address(&OwnedFrame::Null), None);
        let bad_port = OwnedFrame::Array(vec![bulk("h"), bulk("x")]);
        assert_eq!(master_address(&bad_port), None);
    }

    #[test]
    fn a_switch_of_this_master_moves_it_and_others_are_ignored() {
        let mut sentinels = sentinels();
        let switch = |payload: &str| {
            OwnedFrame::Array(vec![bulk("message"), bulk("+switch-master"), bulk(payload)])
        };
        assert_eq!(
            sentinels.pushed(switch("mymaster 127.0.0.1 6379 127.0.0.1 6380")),
            Some(("127.0.0.1".into(), 6380))
        );
        assert_eq!(sentinels.master(), Some(&("127.0.0.1".into(), 6380)));
        assert_eq!(
            sentinels.pushed(switch("mymaster 127.0.0.1 6379 127.0.0.1 6380")),
            None,
            "no news"
        );
        assert_eq!(
            sentinels.pushed(switch("other 127.0.0.1 1 127.0.0.1 2")),
            None
        );
        assert_eq!(sentinels.pushed(switch("mymaster short")), None);
    }
}

//! One client connection and the table of all of them.
//!
//! A connection is `Http` (reading requests, answering them, keep-alive and
//! pipelining) until a 101 makes it `WebSocket`. Either can be *closing*: its
//! input is discarded, its queue is flushed, then our side sends FIN and the
//! connection waits for the peer's EOF or its close deadline.
//!
//! Readiness is edge-triggered. Every socket is registered for reading; write
//! interest is added only while a flush is blocked (the socket buffer is full)
//! and dropped once the queue drains, so the interest always follows the state.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use tungstenite::protocol::frame::coding::CloseCode;

use crate::outbound::{Flushed, Outbound};
use crate::slab::{Slab, SlotId};
use crate::transport::Transport;
use crate::ws::Session;

pub enum Phase {
    /// Bytes of a request head (and body) not yet complete.
    Http(Vec<u8>),
    WebSocket(Box<Session>),
}

pub struct Conn {
    pub transport: Transport,
    pub peer: SocketAddr,
    pub phase: Phase,
    pub out: Outbound,
    /// The HTTP header/idle deadline, or the close deadline once closing.
    pub deadline: Option<Instant>,
    /// When the earliest deadline timer still pending for this connection is
    /// due. A deadline moved later reuses it (it re-arms when it fires), so
    /// keep-alive and request turns do not pile up timers.
    pub deadline_timer: Option<Instant>,
    /// Why the connection is winding down; set once.
    pub closing: Option<String>,
    /// Our FIN has been sent.
    write_closed: bool,
    /// HTTP responses sent so far (0: the client has not finished a request yet).
    pub responses: u32,
    /// Nothing more is expected from the peer: drop the socket once flushed.
    pub finished: bool,
    /// Registered for writable readiness (only while a flush is blocked).
    pub write_interest: bool,
    /// Not read while its outbound queue is over the bound (backpressure).
    pub input_paused: bool,
    /// Listed to be read again next iteration (its read budget ran out).
    pub read_again: bool,
    /// Already listed for this iteration's flush.
    flush_listed: bool,
    /// Holding deliveries for a later flush (see `Connections::deliver`).
    flush_held: bool,
}

impl Conn {
    pub fn new(transport: Transport, peer: SocketAddr) -> Conn {
        Conn {
            transport,
            peer,
            phase: Phase::Http(Vec::new()),
            out: Outbound::default(),
            deadline: None,
            deadline_timer: None,
            closing: None,
            write_closed: false,
            responses: 0,
            finished: false,
            write_interest: false,
            input_paused: false,
            read_again: false,
            flush_listed: false,
            flush_held: false,
        }
    }

    pub fn session_mut(&mut self) -> Option<&mut Session> {
        match &mut self.phase {
            Phase::WebSocket(session) if self.closing.is_none() => Some(session),
            _ => None,
        }
    }

    /// Starts winding down (the first reason given is the one kept).
    pub fn begin_closing(&mut self, reason: impl Into<String>) {
        if self.closing.is_none() {
            self.closing = Some(reason.into());
            self.deadline = None;
            if let Phase::Http(buffer) = &mut self.phase {
                *buffer = Vec::new();
            }
        }
    }

    /// Winds down with nothing left to wait for but our own output.
    pub fn finish(&mut self, reason: impl Into<String>) {
        self.begin_closing(reason);
        self.finished = true;
    }

    /// Sends a WebSocket close frame with `code`, then winds down.
    pub fn close_websocket(&mut self, code: CloseCode, reason: &'static str) {
        if let (Phase::WebSocket(session), None) = (&mut self.phase, &self.closing) {
            session.close(&mut self.out, code, reason);
        }
        self.begin_closing(reason);
    }

    /// Writes what is queued; once a closing connection has nothing left, sends FIN.
    /// Returns true when everything queued has left.
    pub fn flush(&mut self) -> io::Result<bool> {
        let transport_done = self.transport.flush_buffered()?;
        let drained = transport_done && self.out.write_to(&mut self.transport)? == Flushed::All;
        if drained && self.closing.is_some() && !self.write_closed {
            self.transport.shutdown_write();
            self.write_closed = true;
        }
        Ok(drained)
    }
}

/// Every connection, by slot, plus the lists of those with output to flush:
/// now (this iteration), or later (deliveries held back to share a write).
pub struct Connections {
    slab: Slab<Conn>,
    flush_list: Vec<usize>,
    /// Connections holding deliveries, by when they must be flushed. Every
    /// hold is equally long, so arrival order is deadline order.
    held: VecDeque<(Instant, SlotId)>,
    /// Outbound bytes one client may have queued before it is cut off.
    max_queue: usize,
}

impl Connections {
    pub fn new(max_queue: usize) -> Connections {
        Connections {
            slab: Slab::new(),
            flush_list: Vec::new(),
            held: VecDeque::new(),
            max_queue,
        }
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    pub fn insert(&mut self, conn: Conn) -> SlotId {
        self.slab.insert(conn)
    }

    pub fn get_mut(&mut self, index: usize) -> Option<&mut Conn> {
        self.slab.get_mut(index)
    }

    pub fn get_live_mut(&mut self, id: SlotId) -> Option<&mut Conn> {
        self.slab.get_live_mut(id)
    }

    pub fn id_of(&self, index: usize) -> Option<SlotId> {
        self.slab.id_of(index)
    }

    pub fn remove(&mut self, index: usize) -> Option<Conn> {
        self.slab.remove(index)
    }

    pub fn indices(&self) -> Vec<usize> {
        self.slab.indices()
    }

    /// Lists `index` for this iteration's flush.
    pub fn mark_for_flush(&mut self, index: usize) {
        if let Some(conn) = self.slab.get_mut(index)
            && !conn.flush_listed
        {
            conn.flush_listed = true;
            self.flush_list.push(index);
        }
    }

    /// Takes the flush list, with every held connection due by `now` added
    /// (the caller hands the Vec back with `return_flush_list`).
    pub fn take_flush_list(&mut self, now: Instant) -> Vec<usize> {
        while let Some(&(due, id)) = self.held.front() {
            if due > now {
                break;
            }
            self.held.pop_front();
            if let Some(conn) = self.slab.get_live_mut(id) {
                conn.flush_held = false;
                self.mark_for_flush(id.index());
            }
        }
        let list = std::mem::take(&mut self.flush_list);
        for &index in &list {
            if let Some(conn) = self.slab.get_mut(index) {
                conn.flush_listed = false;
            }
        }
        list
    }

    /// When the first held delivery must be flushed.
    pub fn next_held_flush(&self) -> Option<Instant> {
        self.held.front().map(|&(due, _)| due)
    }

    pub fn return_flush_list(&mut self, mut list: Vec<usize>) {
        list.clear();
        if self.flush_list.is_empty() {
            self.flush_list = list;
        }
    }

    /// Queues a shared frame for a WebSocket client, written this iteration,
    /// or with `hold_until` set, at that instant together with whatever else
    /// reaches the client until then (one write instead of several). A client
    /// whose queue would pass the bound is a slow consumer: its unsent frames
    /// are dropped and it gets close 1008 instead, at once, so it never holds
    /// memory or others back. Returns true when this delivery cut the client off.
    pub fn deliver(&mut self, index: usize, frame: &Rc<[u8]>, hold_until: Option<Instant>) -> bool {
        let max_queue = self.max_queue;
        let Some(conn) = self.slab.get_mut(index) else {
            return false;
        };
        if conn.session_mut().is_none() {
            return false;
        }
        let mut cut_off = false;
        if conn.out.queued_bytes() + frame.len() > max_queue {
            log::warn!(
                "{}: slow consumer, {} bytes queued",
                conn.peer,
                conn.out.queued_bytes()
            );
            conn.out.discard_unstarted();
            conn.close_websocket(CloseCode::Policy, "slow consumer");
            cut_off = true;
        } else {
            conn.out.push(Rc::clone(frame));
            if let Some(due) = hold_until {
                if !conn.flush_listed && !conn.flush_held {
                    conn.flush_held = true;
                    if let Some(id) = self.slab.id_of(index) {
                        self.held.push_back((due, id));
                    }
                }
                return false;
            }
        }
        self.mark_for_flush(index);
        cut_off
    }
}

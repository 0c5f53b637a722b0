//! The table of open connections, and the I/O done on them.
//!
//! Each slot pairs a socket (`Transport`) with its connection core. The table
//! moves bytes between the two: reads sized by what the core will take now,
//! one vectored write of its queue per flush. After every step it re-derives
//! what the socket needs from the core's state, in one place (`after`): a
//! flush, its one timer in the wheel, another read once input may flow
//! again, or removal. Connections that end are only listed here; the loop
//! removes them at the end of its turn, so no handler ever runs on a
//! connection freed under it.
//!
//! The hub reaches members' queues through this table (`Mailboxes`), which
//! is also where `--write-delay` holds broadcasts back to share a write.
//!
//! It keeps the total of every byte buffered for clients (queued output,
//! input not acted on yet). Past `--max-memory` the connections holding the
//! most are cut off first, until the total is back under seven eighths of it.

use std::collections::VecDeque;
use std::io::{self, Read as _};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::{Interest, Registry, Token};

use crate::broker::MemberId;
use crate::config::Config;
use crate::conn::{Connection, Context, Offer};
use crate::http::Role;
use crate::hub::{Delivery, Mailboxes};
use crate::metrics::Metrics;
use crate::outbound::Flushed;
use crate::slab::{Slab, SlotId};
use crate::timer::TimerWheel;
use crate::transport::Transport;

const TIMER_TICK: Duration = Duration::from_millis(10);
const TIMER_SLOTS: usize = 1024;
/// Deliveries into members' queues per loop turn. Past it, no more input is
/// read this turn: what was queued is flushed first, and other rooms keep
/// their latency however busy one room is.
pub const DELIVERIES_PER_TURN: usize = 50_000;

/// One socket and its core.
struct Conn {
    transport: Transport,
    core: Connection,
    /// The wheel tick its one pending timer fires at (0: none pending).
    timer_tick: u64,
    /// Registered for writable readiness (only while a flush is blocked).
    write_interest: bool,
    /// Reading stopped with input possibly waiting (the core paused it):
    /// read again as soon as it will take more.
    read_stalled: bool,
    /// Listed to be read again next turn.
    read_listed: bool,
    /// Listed for this turn's flush.
    flush_listed: bool,
    /// Holding deliveries for a later flush (`--write-delay`).
    flush_held: bool,
    /// Listed for removal.
    ended_listed: bool,
    /// Counted among `websockets`.
    websocket_counted: bool,
    /// Its share of `buffered`, as last counted.
    accounted: u32,
}

/// What one read from a socket gave.
pub enum Read {
    Bytes(usize),
    /// The peer will send nothing more.
    Eof,
    /// The socket has nothing more now.
    Blocked,
    /// The core takes nothing now; it is read again when it will.
    Paused,
    Failed(io::Error),
}

pub struct Connections {
    slab: Slab<Conn>,
    /// One pending timer per connection, keyed by its slot id.
    wheel: TimerWheel<SlotId>,
    flush_list: Vec<usize>,
    /// Connections holding deliveries, by when they must be flushed. Every
    /// hold is equally long, so arrival order is deadline order.
    held: VecDeque<(Instant, SlotId)>,
    read_again: Vec<usize>,
    ended: Vec<usize>,
    /// The time of this loop turn.
    now: Instant,
    /// Bytes buffered for all clients together.
    buffered: usize,
    /// Connections that became WebSockets and have not been removed.
    websockets: usize,
    /// Deliveries made in this loop turn.
    delivered: usize,
    max_queue: usize,
    write_delay: Duration,
    /// The settings every core is driven with.
    config: Config,
}

impl Connections {
    pub fn new(now: Instant, config: &Config) -> Connections {
        Connections {
            slab: Slab::new(),
            wheel: TimerWheel::new(now, TIMER_TICK, TIMER_SLOTS),
            flush_list: Vec::new(),
            held: VecDeque::new(),
            read_again: Vec::new(),
            ended: Vec::new(),
            now,
            buffered: 0,
            websockets: 0,
            delivered: 0,
            max_queue: config.max_queue,
            write_delay: config.write_delay,
            config: config.clone(),
        }
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    pub fn id_of(&self, index: usize) -> Option<SlotId> {
        self.slab.id_of(index)
    }

    pub fn is_live(&self, id: SlotId) -> bool {
        self.slab.id_of(id.index()) == Some(id)
    }

    pub fn indices(&self) -> Vec<usize> {
        self.slab.indices()
    }

    /// Starts a loop turn at `now`.
    pub fn begin_turn(&mut self, now: Instant) {
        self.now = now;
        self.delivered = 0;
    }

    /// This turn's deliveries are spent: read no more input until the next.
    pub fn deliveries_spent(&self) -> bool {
        self.delivered >= DELIVERIES_PER_TURN
    }

    /// Bytes buffered for all clients together.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Open connections that are WebSockets (counted from their upgrade to
    /// their removal).
    pub fn websockets(&self) -> usize {
        self.websockets
    }

    /// Takes a new socket into the table and the poll.
    pub fn insert(
        &mut self,
        transport: Transport,
        peer: SocketAddr,
        role: Role,
        registry: &Registry,
    ) -> io::Result<SlotId> {
        let secure = matches!(transport, Transport::Tls(_));
        let core = Connection::new(peer, role, secure, self.now, &self.config);
        let id = self.slab.insert(Conn {
            transport,
            core,
            timer_tick: 0,
            write_interest: false,
            read_stalled: false,
            read_listed: false,
            flush_listed: false,
            flush_held: false,
            ended_listed: false,
            websocket_counted: false,
            accounted: 0,
        });
        let registered = match self.slab.get_mut(id.index()) {
            Some(conn) => {
                registry.register(conn.transport.tcp(), Token(id.index()), Interest::READABLE)
            }
            None => Err(io::ErrorKind::NotFound.into()),
        };
        if let Err(err) = registered {
            self.slab.remove(id.index());
            return Err(err);
        }
        self.after(id.index());
        Ok(id)
    }

    /// Reads what the core will take now, at most `buf.len()` bytes.
    pub fn read(&mut self, index: usize, buf: &mut [u8]) -> Read {
        let Some(conn) = self.slab.get_mut(index) else {
            return Read::Blocked;
        };
        let want = conn
            .core
            .input_capacity(&self.config, self.now)
            .min(buf.len());
        if want == 0 {
            conn.read_stalled = true;
            return Read::Paused;
        }
        loop {
            match conn.transport.read(&mut buf[..want]) {
                Ok(0) => {
                    // Send what is owed before the core decides how to end.
                    let _ = flush_socket(conn);
                    return Read::Eof;
                }
                Ok(n) => return Read::Bytes(n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Read::Blocked,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Read::Failed(err),
            }
        }
    }

    /// The most connection `index` is read in one loop turn.
    pub fn read_budget(&self, index: usize) -> usize {
        self.slab
            .get(index)
            .map_or(0, |conn| conn.core.read_budget())
    }

    /// The read budget ran out: read it again next turn.
    pub fn read_later(&mut self, index: usize) {
        if let Some(conn) = self.slab.get_mut(index)
            && !std::mem::replace(&mut conn.read_listed, true)
        {
            self.read_again.push(index);
        }
    }

    pub fn take_read_again(&mut self) -> Vec<usize> {
        let list = std::mem::take(&mut self.read_again);
        for &index in &list {
            if let Some(conn) = self.slab.get_mut(index) {
                conn.read_listed = false;
            }
        }
        list
    }

    pub fn wants_reading(&self) -> bool {
        !self.read_again.is_empty()
    }

    /// Runs `step` on connection `index`'s core, then derives what its socket needs.
    pub fn drive(
        &mut self,
        index: usize,
        cx: &mut Context,
        step: impl FnOnce(&mut Connection, &mut Context),
    ) {
        let Some(conn) = self.slab.get_mut(index) else {
            return;
        };
        cx.handshaking = conn.transport.is_handshaking();
        step(&mut conn.core, cx);
        self.after(index);
    }

    /// Queues the close its core decided on while reading, now that the hub
    /// has handled what was read before it.
    pub fn settle(&mut self, index: usize) {
        if let Some(conn) = self.slab.get_mut(index) {
            conn.core.settle(&self.config, self.now);
            self.after(index);
        }
    }

    /// The socket failed: the connection ends this turn.
    pub fn fail(&mut self, index: usize, reason: String) {
        if let Some(conn) = self.slab.get_mut(index) {
            conn.core.fail(reason);
            self.after(index);
        }
    }

    /// Moves every connection whose timer is due now into `due` (stale timers
    /// of connections gone are dropped).
    pub fn due_timers(&mut self, now: Instant, due: &mut Vec<SlotId>) {
        let mut fired = Vec::new();
        self.wheel.expire(now, &mut fired);
        for id in fired {
            let Some(conn) = self.slab.get_live_mut(id) else {
                continue;
            };
            if conn.timer_tick <= self.wheel.done_tick() {
                conn.timer_tick = 0; // this one fired
            }
            due.push(id);
        }
    }

    /// When the loop must wake for a timer or a held flush.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let timer = self.wheel.next_timeout(now).map(|wait| now + wait);
        let held = self.held.front().map(|&(due, _)| due);
        match (timer, held) {
            (Some(timer), Some(held)) => Some(timer.min(held)),
            (timer, held) => timer.or(held),
        }
    }

    /// Lists `index` for this turn's flush.
    pub fn mark_for_flush(&mut self, index: usize) {
        if let Some(conn) = self.slab.get_mut(index)
            && !std::mem::replace(&mut conn.flush_listed, true)
        {
            self.flush_list.push(index);
        }
    }

    /// Writes every connection listed for flushing (and every held one now
    /// due), once each.
    pub fn flush_all(&mut self, registry: &Registry, metrics: &mut Metrics) {
        while let Some(&(due, id)) = self.held.front() {
            if due > self.now {
                break;
            }
            self.held.pop_front();
            if let Some(conn) = self.slab.get_live_mut(id) {
                conn.flush_held = false;
                self.mark_for_flush(id.index());
            }
        }
        let mut list = std::mem::take(&mut self.flush_list);
        for &index in &list {
            self.flush(index, registry, metrics);
        }
        list.clear();
        if self.flush_list.is_empty() {
            self.flush_list = list;
        }
    }

    fn flush(&mut self, index: usize, registry: &Registry, metrics: &mut Metrics) {
        let Some(conn) = self.slab.get_mut(index) else {
            return;
        };
        conn.flush_listed = false;
        if conn.core.ending().is_some() {
            return;
        }
        let queued = conn.core.outbound().queued_bytes();
        let flushed = flush_socket(conn);
        let sent = queued - conn.core.outbound().queued_bytes();
        metrics.bytes_sent += sent as u64;
        match flushed {
            Err(err) => conn.core.fail(format!("write failed: {err}")),
            Ok(drained) => {
                if drained && conn.core.drained() {
                    conn.transport.shutdown_write();
                }
                // Write interest only while output is stuck: otherwise every ACK
                // that frees send-buffer space would wake the loop for nothing.
                if conn.write_interest == drained {
                    let interest = match drained {
                        true => Interest::READABLE,
                        false => Interest::READABLE | Interest::WRITABLE,
                    };
                    let token = Token(index);
                    match registry.reregister(conn.transport.tcp(), token, interest) {
                        Ok(()) => conn.write_interest = !drained,
                        Err(err) => conn
                            .core
                            .fail(format!("cannot change poll interest: {err}")),
                    }
                }
            }
        }
        match conn.core.is_websocket() {
            true => self.after_websocket_flush(index, sent),
            false => self.after(index),
        }
    }

    /// What a flush changes for a WebSocket that stays open: its share of
    /// the buffered bytes, and whether input paused on its output may go on.
    /// Its deadlines do not move, so unlike `after` this leaves the boxed
    /// phase alone unless input is paused: that is a cache miss saved on
    /// every delivery at moderate rates.
    fn after_websocket_flush(&mut self, index: usize, sent: usize) {
        let Some(conn) = self.slab.get_mut(index) else {
            return;
        };
        match &conn.transport {
            Transport::Plain(_) => {
                let sent = u32::try_from(sent).unwrap_or(u32::MAX).min(conn.accounted);
                conn.accounted -= sent;
                self.buffered -= sent as usize;
            }
            // Sent bytes became records, some of them still held here.
            Transport::Tls(stream) => {
                let holds = conn.core.buffered_bytes() + stream.held_bytes();
                let holds = u32::try_from(holds).unwrap_or(u32::MAX);
                self.buffered = self.buffered + holds as usize - conn.accounted as usize;
                conn.accounted = holds;
            }
        }
        self.resume_reading_if_room(index);
        if self
            .slab
            .get(index)
            .is_some_and(|conn| conn.core.has_output())
        {
            self.mark_for_flush(index);
        }
    }

    /// Lists connection `index` to be read again if its input was paused and
    /// its core will now take more.
    fn resume_reading_if_room(&mut self, index: usize) {
        let Some(conn) = self.slab.get_mut(index) else {
            return;
        };
        if conn.read_stalled && conn.core.input_capacity(&self.config, self.now) > 0 {
            conn.read_stalled = false;
            if !std::mem::replace(&mut conn.read_listed, true) {
                self.read_again.push(index);
            }
        }
    }

    /// Past the memory budget, cuts off the connections holding the most until
    /// the total is under seven eighths of it; returns how many were cut off
    /// and the bytes freed.
    pub fn enforce_memory_budget(&mut self, max_memory: usize) -> Option<(usize, usize)> {
        if self.buffered <= max_memory {
            return None;
        }
        let target = max_memory / 8 * 7;
        let mut holders: Vec<(usize, usize)> = self
            .slab
            .indices()
            .into_iter()
            .filter_map(|index| {
                let conn = self.slab.get_mut(index)?;
                (conn.accounted > 0 && conn.core.ending().is_none())
                    .then_some((conn.accounted as usize, index))
            })
            .collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        let (mut cut, mut freed) = (0, 0);
        for (_, index) in holders {
            if self.buffered <= target {
                break;
            }
            let Some(conn) = self.slab.get_mut(index) else {
                continue;
            };
            log::debug!(
                "{}: cut off: holds {} bytes over the memory budget",
                conn.core.peer(),
                conn.accounted
            );
            freed += conn.core.cut_off(self.now);
            cut += 1;
            self.after(index);
        }
        Some((cut, freed))
    }

    /// Takes the next connection that ended out of the table and the poll.
    pub fn pop_ended(&mut self, registry: &Registry) -> Option<(usize, Connection)> {
        while let Some(index) = self.ended.pop() {
            let Some(mut conn) = self.slab.remove(index) else {
                continue;
            };
            let _ = registry.deregister(conn.transport.tcp());
            self.buffered -= conn.accounted as usize;
            self.websockets -= usize::from(conn.websocket_counted);
            if conn.core.ending().is_some_and(|ending| ending.abort) {
                conn.transport.abort();
            }
            return Some((index, conn.core));
        }
        None
    }

    /// Re-derives what connection `index`'s socket needs from its core's state.
    fn after(&mut self, index: usize) {
        let Some(id) = self.slab.id_of(index) else {
            return;
        };
        let Some(conn) = self.slab.get_mut(index) else {
            return;
        };
        // One connection holds less than 4 GiB: its queue is bounded by
        // --max-queue plus one message, its input by one request, and its
        // TLS records by a chunk and a handshake message.
        let holds = conn.core.buffered_bytes() + conn.transport.held_bytes();
        let holds = u32::try_from(holds).unwrap_or(u32::MAX);
        self.buffered = self.buffered + holds as usize - conn.accounted as usize;
        conn.accounted = holds;
        if !conn.websocket_counted && conn.core.is_websocket() {
            conn.websocket_counted = true;
            self.websockets += 1;
        }
        if conn.core.ending().is_some() {
            if !std::mem::replace(&mut conn.ended_listed, true) {
                self.ended.push(index);
            }
            return;
        }
        if let Some(due) = conn.core.next_timeout(&self.config, self.now) {
            let tick = self.wheel.tick_for(due);
            if conn.timer_tick == 0 || tick < conn.timer_tick {
                conn.timer_tick = self.wheel.insert(due, id);
            }
        }
        let flush = conn.core.has_output() || conn.core.ends_on_flush();
        self.resume_reading_if_room(index);
        if flush {
            self.mark_for_flush(index);
        }
    }
}

impl Mailboxes for Connections {
    /// Queues a shared frame for a member: written this turn, or with
    /// `--write-delay`, a broadcast waits until the hold ends together with
    /// whatever else reaches the member until then (one write, not several).
    fn deliver(&mut self, member: MemberId, frame: &Rc<[u8]>, kind: Delivery) -> bool {
        let Some(conn) = self.slab.get_mut(member) else {
            return false;
        };
        self.delivered += 1;
        match conn.core.offer(frame, self.max_queue, self.now) {
            Offer::Refused => false,
            Offer::CutOff => {
                self.after(member);
                true
            }
            Offer::Queued => {
                let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                conn.accounted = conn.accounted.saturating_add(len);
                self.buffered += len as usize;
                self.schedule_flush(member, kind);
                false
            }
        }
    }

    fn close(&mut self, member: MemberId, reason: &'static str) {
        self.close_member(member, reason);
    }
}

impl Connections {
    /// Closes a member's WebSocket for an operator: its close frame goes
    /// with this turn's flush.
    fn close_member(&mut self, member: MemberId, reason: &'static str) {
        if let Some(conn) = self.slab.get_mut(member) {
            conn.core.disconnect(reason, self.now);
            self.after(member);
        }
    }

    /// A delivery was queued for `member`: flush it this turn, or with
    /// `--write-delay`, hold a broadcast until the hold ends.
    fn schedule_flush(&mut self, member: MemberId, kind: Delivery) {
        let Some(conn) = self.slab.get_mut(member) else {
            return;
        };
        match kind {
            Delivery::Broadcast if !self.write_delay.is_zero() => {
                if !conn.flush_listed && !conn.flush_held {
                    conn.flush_held = true;
                    if let Some(id) = self.slab.id_of(member) {
                        self.held.push_back((self.now + self.write_delay, id));
                    }
                }
            }
            _ => self.mark_for_flush(member),
        }
    }
}

/// Writes what the transport and the core's queue hold; true when all is out.
fn flush_socket(conn: &mut Conn) -> io::Result<bool> {
    if !conn.transport.flush_buffered()? {
        return Ok(false);
    }
    let flushed = conn.core.outbound().write_to(&mut conn.transport)?;
    // A TLS write takes the plaintext whole and may keep some of its records
    // for later: those are output too, so write interest stays until they go.
    Ok(flushed == Flushed::All && conn.transport.flush_buffered()?)
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use super::*;
    use crate::hub::Hub;
    use crate::outbound::Outbound;
    use crate::tls_stream::TlsStream;
    use crate::ws::Session;

    /// Where an idle WebSocket's bytes go: what it keeps for as long as it is
    /// open (`cargo test --lib sizes -- --nocapture` prints the table). The
    /// bound makes a change that grows it fail here rather than in a bench.
    #[test]
    fn sizes_of_an_idle_websocket() {
        let malloc_header = 16;
        let rows = [
            (
                "slab slot (socket, core, timer tick, accounting, flags)",
                size_of::<(u32, Option<Conn>)>(),
            ),
            ("  of which the connection core", size_of::<Connection>()),
            ("  of which its outbound queue", size_of::<Outbound>()),
            (
                "  of which the socket (plain or TLS)",
                size_of::<Transport>(),
            ),
            (
                "WebSocket phase, boxed (+ malloc header)",
                Connection::WEBSOCKET_PHASE_SIZE + malloc_header,
            ),
            ("  of which the frame session", size_of::<Session>()),
            ("timer node", TimerWheel::<SlotId>::NODE_SIZE),
            (
                "hub: member entry and its seat in a room",
                Hub::MEMBER_SIZE + size_of::<usize>(),
            ),
        ];
        let total: usize = rows
            .iter()
            .filter(|(name, _)| !name.starts_with(' '))
            .map(|(_, size)| size)
            .sum();
        for (name, size) in rows {
            eprintln!("{name:<58} {size:>4} B");
        }
        eprintln!("{:<58} {total:>4} B", "total kept per idle WebSocket");
        let mid_frame = Session::DECODER_SIZE + 2 * malloc_header;
        let name = "only mid-frame: tungstenite's context and read buffer";
        eprintln!("{name:<58} {mid_frame:>4} B");
        // Over TLS, the socket's box: a TLS 1.3 session after its handshake
        // (`tls_records`: secrets, keys, record numbers; nothing on the heap
        // besides, as tests/tls_session_size.rs counts) and three buffers,
        // empty when idle. A TLS 1.2 session stays with rustls, whose
        // connection is boxed apart (about 3.4 KB with its heap).
        let tls = size_of::<TlsStream>() + malloc_header;
        let name = "over TLS: the stream, boxed (TLS 1.3 session, buffers)";
        eprintln!("{name:<58} {tls:>4} B");
        assert!(tls <= 344, "an idle TLS stream keeps {tls} B in its box");
        assert!(total <= 344, "an idle WebSocket keeps {total} B");
    }
}

//! One client connection as a state machine that never touches a socket.
//!
//! The loop reads bytes and hands them to `receive`, tells it the time with
//! `timeout`, and asks it what to write (`outbound`), how much it will read
//! now (`input_capacity`), when to wake it (`next_timeout`) and whether it is
//! over (`ending`). Everything a connection decides on its own is decided
//! here: answers to HTTP requests, the upgrade, WebSocket replies, pings,
//! closes and their order. It is driven from outside, the way rustls'
//! `ServerConnection` and quinn-proto's `Connection` are, so tests and fuzz
//! targets run it with synthetic bytes and synthetic time.
//!
//! What it cannot act on alone (a chat member joined, a chat message arrived)
//! comes out as an `Event` for the hub; `settle` is called once those are
//! handled, so a close decided while reading leaves after the replies to what
//! was read before it.
//!
//! The lifecycle is one enum: `Http` (requests, keep-alive, pipelining) ->
//! `WebSocket` (after a 101) -> `Closing` (our output drains, then FIN, then
//! the peer's EOF or the close deadline) -> `Finished` (the loop removes it
//! at the end of its turn).

mod budget;
mod http;
mod websocket;

pub use http::MAX_REQUEST;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use tungstenite::Message;
use tungstenite::protocol::frame::Utf8Bytes;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::broker::{OtpStore, StoreAnswer, StoreQuery};
use crate::config::Config;
use crate::history::Entry;
use crate::http::api::Action;
use crate::http::{Role, Site};
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::slab::SlotId;
use http::HttpPhase;
use websocket::WebSocketPhase;

/// How long a closing connection may take to finish its close handshake.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a connection may consult and change while it handles input or time.
pub struct Context<'a> {
    pub now: Instant,
    pub config: &'a Config,
    pub site: &'a mut Site,
    pub metrics: &'a mut Metrics,
    /// Events for the hub, in the order they happened.
    pub events: &'a mut Vec<Event>,
    /// Reused list of messages decoded in one read.
    pub inbox: &'a mut Vec<Message>,
    /// Questions for the shared OTP store, each with the connection asking.
    pub queries: &'a mut Vec<(SlotId, StoreQuery)>,
    /// The connection being driven (the login queue names it).
    pub id: SlotId,
    /// A password check granted to this connection for this call.
    pub login_turn: bool,
    /// Its transport is still in its TLS handshake (for the timeout's reason).
    pub handshaking: bool,
    /// Where OTPs and ended sessions are kept, and whether it can be reached.
    pub store: OtpStore,
    /// The wall clock this turn (for dates in headers and tokens).
    pub wall: SystemTime,
}

/// What the hub must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A chat WebSocket opened for this user, to start as `entry` says.
    Joined { user: String, entry: Entry },
    /// A chat member sent this text message.
    Text(Utf8Bytes),
    /// A server API call asked for this.
    Api(Action),
}

/// Why a connection ended, for the log and for how its socket is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub reason: String,
    /// Reset rather than close: whatever the kernel still holds for this
    /// peer is dropped at once instead of trickling out.
    pub abort: bool,
}

/// What became of a frame offered to a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// It would have passed the queue bound: the client is cut off instead.
    CutOff,
    /// Not an open WebSocket: nothing was queued.
    Refused,
}

/// Each phase's state lives in a box of its own, so a connection costs in
/// every phase only what that phase needs (most of them are idle WebSockets).
enum State {
    Http(Box<HttpPhase>),
    WebSocket(Box<WebSocketPhase>),
    Closing(Box<Closing>),
    Finished(Box<Ending>),
}

/// Winding down: input is discarded, output drains, then our FIN.
struct Closing {
    reason: String,
    /// When it is given up on (and reset).
    deadline: Instant,
    /// Nothing more will come from the peer: finished once our output is out.
    peer_done: bool,
    fin_sent: bool,
    websocket: bool,
    /// Closed by the server's shutdown: its deadline is the end of the grace
    /// period, and passing it ends it as `grace_over` does, not as a timed-out
    /// close handshake (see there).
    shutdown: bool,
}

pub struct Connection {
    peer: SocketAddr,
    state: State,
    out: Outbound,
}

impl Connection {
    /// Bytes of the boxed state an open WebSocket keeps.
    #[cfg(test)]
    pub const WEBSOCKET_PHASE_SIZE: usize = std::mem::size_of::<WebSocketPhase>();

    /// A fresh connection on a listener with `role`, over TLS when `secure`:
    /// it has `header_timeout` to send its first request.
    pub fn new(
        peer: SocketAddr,
        role: Role,
        secure: bool,
        now: Instant,
        config: &Config,
    ) -> Connection {
        let deadline = now + config.header_timeout;
        Connection {
            peer,
            state: State::Http(Box::new(HttpPhase::new(role, secure, deadline))),
            out: Outbound::default(),
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// An open WebSocket (not closing).
    pub fn is_websocket(&self) -> bool {
        matches!(self.state, State::WebSocket(_))
    }

    /// Why it is over, once it is.
    pub fn ending(&self) -> Option<&Ending> {
        match &self.state {
            State::Finished(ending) => Some(ending),
            _ => None,
        }
    }

    /// Bytes of input held, not yet acted on (a partial HTTP request, or
    /// frames waiting for a member's event budget).
    pub fn input_buffered(&self) -> usize {
        match &self.state {
            State::Http(http) => http.buffered(),
            State::WebSocket(ws) => ws.backlog_bytes(),
            _ => 0,
        }
    }

    /// Every byte held for this client: queued output and input not yet acted on.
    pub fn buffered_bytes(&self) -> usize {
        self.out.queued_bytes() + self.input_buffered()
    }

    /// Something is queued for the peer.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Closing with nothing (left) to send and its end not yet acted on: the
    /// next flush sends our FIN, or ends it if the peer is done. An idle HTTP
    /// connection closed by the shutdown queues nothing, so without this it
    /// would never be flushed, and would get no FIN until the grace period
    /// ran out.
    pub fn ends_on_flush(&self) -> bool {
        matches!(&self.state, State::Closing(closing) if !closing.fin_sent) && self.out.is_empty()
    }

    /// What is queued for the peer; the loop writes it.
    pub fn outbound(&mut self) -> &mut Outbound {
        &mut self.out
    }

    /// How many bytes it will take now; 0 pauses reading.
    pub fn input_capacity(&self, config: &Config, now: Instant) -> usize {
        match &self.state {
            State::Http(http) => http.capacity(self.out.queued_bytes()),
            State::WebSocket(ws) => ws.capacity(&self.out, config, now),
            // Read and discard, so the peer's EOF is seen.
            State::Closing(_) => usize::MAX,
            State::Finished(_) => 0,
        }
    }

    /// The most it should be read in one loop turn: an HTTP client one
    /// request's worth, so a client pipelining cheap requests gets its turn
    /// like everyone else but cannot fill a whole turn with them.
    pub fn read_budget(&self) -> usize {
        match self.state {
            State::Http(_) => MAX_REQUEST,
            _ => usize::MAX,
        }
    }

    /// Handles bytes read from the peer.
    pub fn receive(&mut self, bytes: &[u8], cx: &mut Context) {
        match self.state {
            State::Http(_) => self.receive_http(bytes, cx),
            State::WebSocket(_) => self.receive_frames(bytes, cx),
            State::Closing(_) | State::Finished(_) => {} // winding down: input is discarded
        }
    }

    /// Carries on with whatever waited: buffered requests (a login turn, room
    /// in the output queue) or held frames.
    pub fn resume(&mut self, cx: &mut Context) {
        match self.state {
            State::Http(_) => self.serve_requests(cx),
            State::WebSocket(_) => self.receive_frames(&[], cx),
            State::Closing(_) | State::Finished(_) => {}
        }
    }

    /// The shared store answered what this connection asked.
    pub fn answer(&mut self, answer: StoreAnswer, cx: &mut Context) {
        if let State::Http(_) = self.state {
            self.answer_http(answer, cx);
        }
    }

    /// Queues what reading decided on (a close, a warning), now that the
    /// events read before it have been handled.
    pub fn settle(&mut self, config: &Config, now: Instant) {
        if let State::WebSocket(_) = self.state {
            self.settle_websocket(config, now);
        }
    }

    /// The peer will send nothing more. An HTTP client that half-closed still
    /// gets the answers it is owed (within the idle timeout); a WebSocket ends.
    pub fn peer_closed(&mut self, cx: &mut Context) {
        match &mut self.state {
            State::Http(http) => {
                http.peer_done = true;
                self.serve_requests(cx);
            }
            State::WebSocket(_) => self.finish("vanished without a close frame", false),
            State::Closing(closing) if closing.websocket || self.out.is_empty() => {
                let reason = std::mem::take(&mut closing.reason);
                self.finish(reason, false);
            }
            State::Closing(closing) => {
                closing.peer_done = true;
                closing.deadline = cx.now + cx.config.idle_timeout;
            }
            State::Finished(_) => {}
        }
    }

    /// When `timeout` should next be called.
    pub fn next_timeout(&self, config: &Config, now: Instant) -> Option<Instant> {
        match &self.state {
            State::WebSocket(ws) => Some(ws.next_timeout(config, now)),
            State::Http(http) => Some(http.next_timeout()),
            State::Closing(closing) => Some(closing.deadline),
            State::Finished(_) => None,
        }
    }

    /// Acts on the time: deadlines, heartbeats, held work coming due.
    pub fn timeout(&mut self, cx: &mut Context) {
        match &self.state {
            State::WebSocket(_) => return self.websocket_timeout(cx),
            State::Http(http) if http.answer_due().is_some_and(|at| at <= cx.now) => {
                return self.serve_requests(cx);
            }
            _ => {}
        }
        let deadline = match &self.state {
            State::Http(http) => http.deadline,
            State::Closing(closing) => closing.deadline,
            State::WebSocket(_) | State::Finished(_) => return,
        };
        if deadline > cx.now {
            return;
        }
        let (reason, abort) = match &self.state {
            State::Closing(closing) if closing.shutdown => return self.grace_over(),
            State::Closing(_) => ("close handshake timed out", true),
            State::Http(_) if cx.handshaking => ("TLS handshake timeout", false),
            State::Http(http) if http.is_idle() => ("idle timeout", false),
            State::Http(_) => ("request head timeout", false),
            State::WebSocket(_) | State::Finished(_) => return,
        };
        self.finish(reason, abort);
    }

    /// Everything queued has been written. True when our FIN should go now.
    pub fn drained(&mut self) -> bool {
        let State::Closing(closing) = &mut self.state else {
            return false;
        };
        if closing.peer_done {
            let reason = std::mem::take(&mut closing.reason);
            self.finish(reason, false);
            return false;
        }
        !std::mem::replace(&mut closing.fin_sent, true)
    }

    /// Queues a shared frame for an open WebSocket. A client whose queue would
    /// pass `max_queue` is a slow consumer: its unsent frames are dropped and
    /// it gets close 1008 instead, at once, so it never holds memory or
    /// others back.
    pub fn offer(&mut self, frame: &Rc<[u8]>, max_queue: usize, now: Instant) -> Offer {
        if !self.is_websocket() {
            return Offer::Refused;
        }
        if self.out.queued_bytes() + frame.len() > max_queue {
            log::warn!(
                "{}: slow consumer, {} bytes queued",
                self.peer,
                self.out.queued_bytes()
            );
            self.out.discard_unstarted();
            self.close_websocket(CloseCode::Policy, "slow consumer", now + CLOSE_TIMEOUT);
            return Offer::CutOff;
        }
        self.out.push(Rc::clone(frame));
        Offer::Queued
    }

    /// An operator disconnected this WebSocket's user (close 1008 with
    /// `reason`); anything else is left alone.
    pub fn disconnect(&mut self, reason: &'static str, now: Instant) {
        if let State::WebSocket(_) = self.state {
            self.close_websocket(CloseCode::Policy, reason, now + CLOSE_TIMEOUT);
        }
    }

    /// The server is over its memory budget and this client holds the most:
    /// what it has not been sent is dropped, and it ends (a WebSocket with
    /// close 1008). Returns the bytes freed.
    pub fn cut_off(&mut self, now: Instant) -> usize {
        let before = self.buffered_bytes();
        self.out.discard_unstarted();
        let reason = "over the server's memory budget";
        match &mut self.state {
            State::WebSocket(_) => {
                self.close_websocket(CloseCode::Policy, reason, now + CLOSE_TIMEOUT)
            }
            State::Http(_) => {
                self.out = Outbound::default();
                self.finish(reason, true);
            }
            State::Closing(_) => {
                self.out = Outbound::default();
                self.finish(reason, true);
            }
            State::Finished(_) => {}
        }
        before.saturating_sub(self.buffered_bytes())
    }

    /// The server is stopping: WebSockets get close 1001, HTTP connections
    /// finish what they are sending; all within `--shutdown-grace`.
    pub fn shut_down(&mut self, cx: &mut Context) {
        let by = cx.now + cx.config.shutdown_grace;
        match self.state {
            State::WebSocket(_) => {
                self.close_websocket(CloseCode::Away, "server shutting down", by)
            }
            State::Http(_) => self.close("server shutting down", false, false, by),
            State::Closing(_) | State::Finished(_) => return,
        }
        if let State::Closing(closing) = &mut self.state {
            closing.shutdown = true;
        }
    }

    /// The shutdown's grace period is over: it ends now, whatever its state.
    /// The loop ends every connection this way at the end of the grace
    /// period, and a connection the shutdown closed times out at that very
    /// instant too; both must end it alike, or which of the two comes first
    /// in a loop turn (timer-wheel rounding, a late wake-up under load)
    /// decides between a FIN and a reset.
    ///
    /// Reset only if our output is still queued: the peer is not reading,
    /// and a close would leave the kernel trickling it out after we exit.
    /// Otherwise everything we had to say is out (with our FIN, which
    /// `ends_on_flush` sent at once); the peer merely has not closed its
    /// side, as an idle keep-alive client or a WebSocket client that does
    /// not answer the close need not, and a reset would turn the clean end
    /// of stream it already has into ECONNRESET.
    pub fn grace_over(&mut self) {
        if let State::Finished(_) = self.state {
            return;
        }
        let abort = !self.out.is_empty();
        self.finish("shutdown grace period over", abort);
    }

    /// The socket failed: nothing more can be sent or received.
    pub fn fail(&mut self, reason: String) {
        if let State::Finished(_) = self.state {
            return;
        }
        self.finish(reason, false);
    }

    /// Sends close `code` on an open WebSocket, then winds down.
    fn close_websocket(&mut self, code: CloseCode, reason: &'static str, by: Instant) {
        if let State::WebSocket(ws) = &mut self.state {
            ws.close(&mut self.out, code, reason);
            self.close(reason, false, true, by);
        }
    }

    fn close(&mut self, reason: impl Into<String>, peer_done: bool, websocket: bool, by: Instant) {
        self.state = State::Closing(Box::new(Closing {
            reason: reason.into(),
            deadline: by,
            peer_done,
            fin_sent: false,
            websocket,
            shutdown: false,
        }));
    }

    fn finish(&mut self, reason: impl Into<String>, abort: bool) {
        self.state = State::Finished(Box::new(Ending {
            reason: reason.into(),
            abort,
        }));
    }
}

#[cfg(test)]
mod tests;

//! The HTTP phase of a connection: request bytes in, answers out, in order.
//!
//! Requests are parsed one at a time from a buffer that never holds more than
//! one request head and body; the site decides each answer. A complete
//! request that has to wait (for its turn to check a password, for a delayed
//! answer, or for the answers already queued to drain) stops reading: the
//! client's further bytes stay in its socket, not in our memory.

use std::mem;
use std::net::SocketAddr;
use std::time::Instant;

use super::{CLOSE_TIMEOUT, Connection, Context, Event, State};
use crate::broker::StoreAnswer;
use crate::http::request::{self, MAX_BODY, MAX_HEAD};
use crate::http::{Awaiting, Outcome, Purpose, Response, Role, Site, Upgrade, Visit};
use crate::logging::Escaped;
use crate::ws::Session;

/// The most a connection buffers in the HTTP phase: one request head and body.
pub const MAX_REQUEST: usize = MAX_HEAD + MAX_BODY;
/// Pipelined requests are not parsed while more than this of their answers is
/// unsent (a client that asks and never reads holds no more than this).
pub const MAX_UNSENT: usize = 64 * 1024;

pub(super) struct HttpPhase {
    role: Role,
    /// It came over TLS.
    secure: bool,
    /// The header deadline while a request comes in; the idle one between requests.
    pub(super) deadline: Instant,
    /// Bytes of requests not yet answered.
    buffer: Vec<u8>,
    /// Answers queued so far (0: the client has not finished a request yet).
    responses: u32,
    /// A complete request waits: nothing more is read until it is answered.
    waiting: Option<Wait>,
    /// The client half-closed: answer what it sent, then end.
    pub(super) peer_done: bool,
}

/// What a complete request waits for.
enum Wait {
    /// Its turn to check a password (it is queued for one).
    LoginTurn,
    /// The answers already queued to drain below `MAX_UNSENT`.
    Output,
    /// Its answer's time (a failed login, slowed down).
    Until(Box<Delayed>),
    /// The shared store's answer (`--redis`).
    Answer(Box<Asked>),
}

struct Asked {
    then: Awaiting,
    keep_alive: bool,
}

struct Delayed {
    at: Instant,
    response: Response,
    keep_alive: bool,
}

impl HttpPhase {
    pub(super) fn new(role: Role, secure: bool, deadline: Instant) -> HttpPhase {
        HttpPhase {
            role,
            secure,
            deadline,
            buffer: Vec::new(),
            responses: 0,
            waiting: None,
            peer_done: false,
        }
    }

    /// What to read now, with `unsent` bytes of answers still queued.
    pub(super) fn capacity(&self, unsent: usize) -> usize {
        let waits = match &self.waiting {
            Some(Wait::LoginTurn | Wait::Until(_) | Wait::Answer(_)) => true,
            Some(Wait::Output) => unsent >= MAX_UNSENT,
            None => false,
        };
        match waits || self.peer_done {
            true => 0,
            false => MAX_REQUEST.saturating_sub(self.buffer.len()),
        }
    }

    pub(super) fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Between requests, after at least one answer.
    pub(super) fn is_idle(&self) -> bool {
        self.buffer.is_empty() && self.responses > 0
    }

    /// When a delayed answer is due.
    pub(super) fn answer_due(&self) -> Option<Instant> {
        match &self.waiting {
            Some(Wait::Until(delayed)) => Some(delayed.at),
            _ => None,
        }
    }

    /// The deadline, or a delayed answer due before it.
    pub(super) fn next_timeout(&self) -> Instant {
        self.answer_due()
            .map_or(self.deadline, |due| due.min(self.deadline))
    }
}

/// Asks the site something for this connection (`peer`, over `http`), now.
fn consult(
    peer: SocketAddr,
    http: &HttpPhase,
    cx: &mut Context,
    ask: impl FnOnce(&mut Site, &mut Visit) -> Outcome,
) -> Outcome {
    let mut visit = Visit {
        peer,
        secure: http.secure,
        role: http.role,
        now: cx.now,
        id: cx.id,
        login_turn: &mut cx.login_turn,
        metrics: cx.metrics,
        store: cx.store,
        wall: cx.wall,
    };
    ask(cx.site, &mut visit)
}

impl Connection {
    pub(super) fn receive_http(&mut self, bytes: &[u8], cx: &mut Context) {
        let State::Http(http) = &mut self.state else {
            return;
        };
        if http.buffer.is_empty() {
            http.deadline = cx.now + cx.config.header_timeout;
        }
        http.buffer.extend_from_slice(bytes);
        self.serve_requests(cx);
    }

    /// Answers every complete request buffered, in order, until one has to wait.
    pub(super) fn serve_requests(&mut self, cx: &mut Context) {
        loop {
            let State::Http(http) = &mut self.state else {
                return;
            };
            match http.waiting.take() {
                Some(Wait::LoginTurn) if !cx.login_turn => {
                    http.waiting = Some(Wait::LoginTurn); // still queued for its turn
                    return;
                }
                Some(Wait::Until(delayed)) if delayed.at > cx.now => {
                    http.waiting = Some(Wait::Until(delayed));
                    return;
                }
                Some(Wait::Until(delayed)) => {
                    self.respond(delayed.response, delayed.keep_alive, cx);
                    continue;
                }
                Some(Wait::Answer(asked)) => {
                    http.waiting = Some(Wait::Answer(asked)); // `answer_http` goes on
                    return;
                }
                Some(Wait::LoginTurn | Wait::Output) | None => {}
            }
            if self.out.queued_bytes() >= MAX_UNSENT {
                http.waiting = Some(Wait::Output);
                return;
            }
            let (request, used) = match request::parse(&http.buffer) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(refusal) => {
                    log::info!(
                        "{}: bad request: {} ({})",
                        self.peer,
                        refusal.why,
                        refusal.status.code()
                    );
                    let response = Response::text(refusal.status, refusal.why).closing();
                    return self.respond(response, false, cx);
                }
            };
            let outcome = consult(self.peer, http, cx, |site, visit| {
                site.route(&request, visit)
            });
            if let Outcome::AwaitTurn = outcome {
                http.waiting = Some(Wait::LoginTurn);
                return;
            }
            http.buffer.drain(..used);
            let keep_alive = request.keep_alive();
            match outcome {
                Outcome::Respond(response) => {
                    log::debug!(
                        "{}: {} {} -> {}",
                        self.peer,
                        Escaped(&request.method),
                        Escaped(request.path()),
                        response.status.code()
                    );
                    self.respond(response, keep_alive, cx);
                }
                Outcome::Ask { query, then } => {
                    cx.queries.push((cx.id, query));
                    let asked = Asked { then, keep_alive };
                    http.waiting = Some(Wait::Answer(Box::new(asked)));
                    return;
                }
                Outcome::RespondAfter { response, at } => {
                    http.waiting = Some(Wait::Until(Box::new(Delayed {
                        at,
                        response,
                        keep_alive,
                    })));
                    return;
                }
                Outcome::Act { action, response } => {
                    cx.events.push(Event::Api(action));
                    self.respond(response, keep_alive, cx);
                }
                Outcome::Upgrade(upgrade) => return self.upgrade(upgrade, cx),
                Outcome::AwaitTurn => return,
            }
        }
        self.between_requests(cx);
    }

    /// The shared store answered: the waiting request gets its answer, and
    /// the requests behind it are served.
    pub(super) fn answer_http(&mut self, answer: StoreAnswer, cx: &mut Context) {
        let State::Http(http) = &mut self.state else {
            return;
        };
        let Some(Wait::Answer(asked)) = http.waiting.take() else {
            return; // an answer nobody waits for (a connection reusing a slot)
        };
        let then = asked.then;
        match consult(self.peer, http, cx, |site, visit| {
            site.answered(then, answer, visit)
        }) {
            Outcome::Upgrade(upgrade) => return self.upgrade(upgrade, cx),
            Outcome::Respond(response) => self.respond(response, asked.keep_alive, cx),
            other => log::error!("{}: an answer led to {other:?}", self.peer),
        }
        self.serve_requests(cx);
    }

    /// After the last complete request: wait idle for the next one, or end
    /// once a half-closed client has its answers.
    fn between_requests(&mut self, cx: &mut Context) {
        let State::Http(http) = &mut self.state else {
            return;
        };
        if http.peer_done {
            let by = cx.now + cx.config.idle_timeout;
            match self.out.is_empty() {
                true => self.finish("closed by client", false),
                false => self.close("closed by client", true, false, by),
            }
        } else if http.buffer.is_empty() && http.responses > 0 {
            http.deadline = cx.now + cx.config.idle_timeout;
        }
    }

    fn respond(&mut self, response: Response, keep_alive: bool, cx: &mut Context) {
        let State::Http(http) = &mut self.state else {
            return;
        };
        let response = match keep_alive {
            true => response,
            false => response.closing(),
        };
        http.responses += 1;
        self.out.push_bytes(&response.to_bytes(cx.wall));
        if response.close {
            let reason = format!("HTTP {} with Connection: close", response.status.code());
            self.close(reason, false, false, cx.now + CLOSE_TIMEOUT);
        }
    }

    /// Answers 101 and becomes a WebSocket; the bytes behind the request head
    /// are its first frames.
    fn upgrade(&mut self, upgrade: Upgrade, cx: &mut Context) {
        let Upgrade {
            response,
            user,
            purpose,
            entry,
        } = upgrade;
        let State::Http(http) = &mut self.state else {
            return;
        };
        self.out.push_bytes(&response.to_bytes(cx.wall));
        // Should the client be cut off before reading this far, it must still
        // see the 101 before any frame.
        self.out.pin_all();
        // The buffer's spare capacity (the size of the whole request) goes: it
        // would otherwise become the session's read buffer for good.
        let mut early = mem::take(&mut http.buffer);
        early.shrink_to_fit();
        log::info!("{}: websocket open for {}", self.peer, Escaped(&user));
        let (max_message, binary) = match purpose {
            Purpose::Chat => (cx.config.max_message, false),
            Purpose::Echo => (cx.config.echo_max_message, true),
        };
        let session = Session::new(early, max_message, binary, cx.now, cx.config.ping_interval);
        self.become_websocket(session, purpose, cx.now);
        if purpose == Purpose::Chat {
            cx.events.push(Event::Joined { user, entry });
        }
        self.receive_frames(&[], cx);
    }
}

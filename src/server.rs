//! The event loop: one `mio::Poll` for the listeners, every connection and
//! the shutdown signals, one timer wheel for every deadline.
//!
//! Each iteration: wait for readiness (no longer than the wheel's next tick),
//! read every readable socket until it would block and act on what arrived,
//! fire due timers, then flush every connection that has output, so all the
//! frames queued for one socket in this iteration leave in one write.

use std::io::{self, Read};
use std::mem;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::auth::{Accounts, LoginLimiter, Otps};
use crate::chat::{self, ClientEvent, DEFAULT_ROOM, Rooms};
use crate::config::Config;
use crate::conn::{Conn, Connections, Phase};
use crate::datetime::rfc3339_utc;
use crate::http::files::WebRoot;
use crate::http::{Outcome, Response, Site, Status, request};
use crate::metrics::{Gauges, Metrics};
use crate::slab::SlotId;
use crate::timer::TimerWheel;
use crate::tls;
use crate::transport::Transport;
use crate::ws::{self, Fed, Heartbeat, Origins, PING_FRAME, Purpose, Session};

const SIGNALS: Token = Token(usize::MAX);
/// Listener `i` has token `LISTENER_BASE - i`.
const LISTENER_BASE: usize = usize::MAX - 1;

const TIMER_TICK: Duration = Duration::from_millis(10);
const TIMER_SLOTS: usize = 1024;
/// How long a closing connection may take to finish its close handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to stop accepting after the process runs out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Logins (each an argon2 hash of a few milliseconds) handled per loop
/// iteration; more wait for the next iteration, after everyone is flushed.
const LOGINS_PER_ITERATION: usize = 4;
/// Bytes read from a socket per `read()` call, and per connection per loop
/// iteration: a client that sends faster than that is read again on the next
/// iteration, after everyone's output has been flushed. Without this budget
/// one fast sender would be read for as long as it keeps writing, nothing
/// would be flushed meanwhile, and every reader's queue would overflow.
const READ_CHUNK: usize = 64 * 1024;

/// Everything the wheel can wake the loop for (small and `Copy`: the wheel
/// holds one per connection).
#[derive(Clone, Copy)]
enum TimerKey {
    /// A connection's `deadline` may have passed.
    Deadline(SlotId),
    /// A WebSocket's ping is due, or its unanswered ping has waited long enough.
    Heartbeat(SlotId),
    /// Some OTP expires now: sweep the expired ones.
    OtpSweep,
    ResumeAccept,
    ShutdownDeadline,
}

type TlsConfig = Arc<rustls::ServerConfig>;

struct Listener {
    socket: TcpListener,
    /// Present when this listener speaks TLS.
    tls: Option<TlsConfig>,
}

pub struct Server {
    poll: Poll,
    listeners: Vec<Listener>,
    signals: Signals,
    conns: Connections,
    rooms: Rooms,
    site: Site,
    wheel: TimerWheel<TimerKey>,
    config: Config,
    /// Reused read buffer: sockets are read into it, never into per-connection memory.
    scratch: Vec<u8>,
    /// Reused list of data messages decoded in one read.
    inbox: Vec<Message>,
    /// Connections that used their read budget and still have input waiting
    /// (edge-triggered readiness will not report them again).
    read_again: Vec<usize>,
    metrics: Metrics,
    /// Password checks done in this iteration (see LOGINS_PER_ITERATION).
    logins_this_iteration: usize,
    accepting: bool,
    shutting_down: bool,
    /// When the last "out of file descriptors" warning was logged.
    last_emfile_warning: Option<Instant>,
}

impl Server {
    /// Binds the listener and prepares everything; errors are for the operator.
    pub fn new(config: Config) -> Result<Server, String> {
        let poll = Poll::new().map_err(|err| format!("cannot create poll: {err}"))?;
        let mut listeners = Vec::new();
        let mut own_origins = Vec::new();
        for (i, (addr, tls)) in listener_plan(&config)?.into_iter().enumerate() {
            let mut socket =
                bind_listener(addr).map_err(|err| format!("cannot listen on {addr}: {err}"))?;
            let local = socket
                .local_addr()
                .map_err(|err| format!("listener address: {err}"))?;
            poll.registry()
                .register(&mut socket, Token(LISTENER_BASE - i), Interest::READABLE)
                .map_err(|err| format!("cannot register listener: {err}"))?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            if !local.ip().is_unspecified() && !local.ip().is_loopback() {
                hosts.push(local.ip().to_string());
            }
            own_origins.extend(Origins::own(&[scheme], &hosts, local.port()));
            log::info!("listening on {scheme}://{local}");
            listeners.push(Listener { socket, tls });
        }
        let mut signals = Signals::new([SIGINT, SIGTERM])
            .map_err(|err| format!("cannot install signal handlers: {err}"))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|err| format!("cannot register signals: {err}"))?;

        let origins = if config.allowed_origins.is_empty() {
            own_origins
        } else {
            config.allowed_origins.clone()
        };
        let accounts = match &config.users {
            Some(path) => Accounts::load(path)?,
            None => {
                log::warn!("no --users file: the demo account percy / 123 is enabled");
                Accounts::demo()?
            }
        };
        let site = Site {
            root: WebRoot::open(&config.www)?,
            origins: Origins::new(origins),
            accounts,
            otps: Otps::default(),
            otp_ttl: config.otp_ttl,
            echo_path: config.echo_path.clone(),
            limiter: LoginLimiter::default(),
        };
        if let Some(path) = &config.echo_path {
            log::warn!("echo route {path} is on: unauthenticated, for conformance tests only");
        }
        log::info!("allowed origins: {}", site.origins.list().join(", "));
        Ok(Server {
            poll,
            listeners,
            signals,
            conns: Connections::new(config.max_queue),
            rooms: Rooms::default(),
            site,
            wheel: TimerWheel::new(Instant::now(), TIMER_TICK, TIMER_SLOTS),
            config,
            scratch: vec![0; READ_CHUNK],
            inbox: Vec::new(),
            read_again: Vec::new(),
            metrics: Metrics::default(),
            logins_this_iteration: 0,
            accepting: true,
            shutting_down: false,
            last_emfile_warning: None,
        })
    }

    /// Runs until a shutdown signal has been handled.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = match self.read_again.is_empty() {
                true => self.next_timeout(Instant::now()),
                false => Some(Duration::ZERO),
            };
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            let now = Instant::now();
            self.logins_this_iteration = 0;
            for index in mem::take(&mut self.read_again) {
                let Some(conn) = self.conns.get_mut(index) else {
                    continue;
                };
                conn.read_again = false;
                // Requests already buffered (deferred logins) first, then the socket.
                if matches!(&conn.phase, Phase::Http(buffer) if !buffer.is_empty()) {
                    self.on_http_bytes(index, &[], now);
                }
                self.on_readable(index, now);
                self.conns.mark_for_flush(index);
            }
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signal(now),
                    Token(token) if token > LISTENER_BASE - self.listeners.len() => {
                        self.accept_all(LISTENER_BASE - token, now);
                    }
                    Token(index) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(index, now);
                        }
                        // Writable or not, a flush attempt is cheap and catches
                        // TLS records produced while reading.
                        self.conns.mark_for_flush(index);
                    }
                }
            }
            self.fire_timers(now);
            self.flush_all(now);
            self.metrics.loop_iterations += 1;
            self.metrics.longest_loop_pause = self.metrics.longest_loop_pause.max(now.elapsed());
            if self.shutting_down && self.conns.is_empty() {
                log::info!("all connections closed; exiting");
                return Ok(());
            }
        }
    }

    fn accept_all(&mut self, listener: usize, now: Instant) {
        while self.accepting && !self.shutting_down {
            let (stream, peer) = match self.listeners[listener].socket.accept() {
                Ok(accepted) => accepted,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if is_out_of_descriptors(&err) => {
                    self.pause_accepting(&err, now);
                    return;
                }
                Err(err) => {
                    log::debug!("accept failed: {err}");
                    continue;
                }
            };
            if self.conns.len() >= self.config.max_connections {
                refuse_busy(stream, peer);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let transport = match &self.listeners[listener].tls {
                None => Transport::Plain(stream),
                Some(tls) => match rustls::ServerConnection::new(Arc::clone(tls)) {
                    Ok(session) => Transport::tls(session, stream),
                    Err(err) => {
                        log::error!("{peer}: cannot start TLS: {err}");
                        continue;
                    }
                },
            };
            let id = self.conns.insert(Conn::new(transport, peer));
            let Some(conn) = self.conns.get_mut(id.index()) else {
                continue;
            };
            let registered = self.poll.registry().register(
                conn.transport.tcp(),
                Token(id.index()),
                Interest::READABLE,
            );
            if let Err(err) = registered {
                log::error!("{peer}: cannot register connection: {err}");
                self.conns.remove(id.index());
                continue;
            }
            log::info!("{peer}: connected ({} open)", self.conns.len());
            self.set_deadline(id.index(), now + self.config.header_timeout);
        }
    }

    /// Out of descriptors: stop accepting for a moment instead of spinning on
    /// a listener that stays readable.
    fn pause_accepting(&mut self, err: &io::Error, now: Instant) {
        let quiet = self
            .last_emfile_warning
            .is_some_and(|at| now - at < Duration::from_secs(5));
        if !quiet {
            log::warn!(
                "accept failed: {err}; pausing accepts ({} open)",
                self.conns.len()
            );
            self.last_emfile_warning = Some(now);
        }
        self.accepting = false;
        self.wheel
            .insert(now + ACCEPT_BACKOFF, TimerKey::ResumeAccept);
    }

    /// Reads until the socket would block or the read budget is spent,
    /// acting on each chunk as it comes.
    fn on_readable(&mut self, index: usize, now: Instant) {
        let mut scratch = mem::take(&mut self.scratch);
        let mut budget = READ_CHUNK;
        while let Some(conn) = self.conns.get_mut(index) {
            if conn.out.queued_bytes() >= self.config.max_queue {
                // Backpressure: read no more until the client takes its output.
                conn.input_paused = true;
                self.conns.mark_for_flush(index);
                break;
            }
            if budget == 0 {
                if !mem::replace(&mut conn.read_again, true) {
                    self.read_again.push(index);
                }
                break;
            }
            match conn.transport.read(&mut scratch[..budget]) {
                Ok(0) => {
                    self.on_peer_eof(index, now);
                    break;
                }
                Ok(n) => {
                    budget -= n;
                    self.metrics.bytes_received += n as u64;
                    self.on_bytes(index, &scratch[..n], now);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    self.remove(index, &format!("read failed: {err}"));
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    fn on_bytes(&mut self, index: usize, bytes: &[u8], now: Instant) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        if conn.closing.is_some() {
            return; // winding down: input is discarded
        }
        match conn.phase {
            Phase::Http(_) => self.on_http_bytes(index, bytes, now),
            Phase::WebSocket(_) => self.on_websocket_bytes(index, bytes, now),
        }
    }

    /// The peer will send nothing more. An HTTP client that half-closed still
    /// gets the answers already queued (within the idle timeout); otherwise
    /// the connection ends now.
    fn on_peer_eof(&mut self, index: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        let reason = match (&conn.closing, &conn.phase) {
            (Some(reason), _) => reason.clone(),
            (None, Phase::WebSocket(_)) => "vanished without a close frame".to_string(),
            (None, Phase::Http(_)) => "closed by client".to_string(),
        };
        let drained = conn.flush().unwrap_or(true);
        if drained || matches!(conn.phase, Phase::WebSocket(_)) {
            self.remove(index, &reason);
        } else if !conn.finished {
            conn.finish(reason);
            self.set_deadline(index, now + self.config.idle_timeout);
            self.conns.mark_for_flush(index);
        }
    }

    fn on_http_bytes(&mut self, index: usize, bytes: &[u8], now: Instant) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        let Phase::Http(buffer) = &mut conn.phase else {
            return;
        };
        let starts_request = buffer.is_empty();
        buffer.extend_from_slice(bytes);
        if starts_request {
            self.set_deadline(index, now + self.config.header_timeout);
        }
        loop {
            let Some(conn) = self.conns.get_mut(index) else {
                return;
            };
            if conn.closing.is_some() {
                return;
            }
            if conn.out.queued_bytes() >= self.config.max_queue {
                // Pipelined requests wait, unparsed, until the answers drain.
                conn.input_paused = true;
                return;
            }
            let Phase::Http(buffer) = &mut conn.phase else {
                return;
            };
            let (request, used) = match request::parse(buffer) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(refusal) => {
                    log::info!(
                        "{}: bad request: {} ({})",
                        conn.peer,
                        refusal.why,
                        refusal.status.code()
                    );
                    let response = Response::text(refusal.status, refusal.why).closing();
                    conn.out.push_bytes(&response.to_bytes(SystemTime::now()));
                    conn.begin_closing(refusal.why);
                    return;
                }
            };
            if request.path() == "/login" && self.logins_this_iteration >= LOGINS_PER_ITERATION {
                // Password hashing is the one slow thing the loop does: a burst
                // of logins is spread over iterations so chat never waits long.
                if !mem::replace(&mut conn.read_again, true) {
                    self.read_again.push(index);
                }
                return;
            }
            if request.path() == "/login" {
                self.logins_this_iteration += 1;
            }
            buffer.drain(..used);
            let peer = conn.peer;
            let keep_alive = request.keep_alive();
            match self.site.route(&request, peer, now) {
                Outcome::Respond(response) => {
                    if request.path() == "/login" {
                        match response.status {
                            Status::Unauthorized => self.metrics.logins_failed += 1,
                            Status::TooManyRequests => self.metrics.logins_rate_limited += 1,
                            _ => {}
                        }
                    }
                    log::debug!(
                        "{peer}: {} {} -> {}",
                        request.method,
                        request.path(),
                        response.status.code()
                    );
                    self.respond(index, response, keep_alive);
                }
                Outcome::LoggedIn { response, expires } => {
                    self.metrics.logins_succeeded += 1;
                    self.wheel.insert(expires, TimerKey::OtpSweep);
                    self.respond(index, response, keep_alive);
                }
                Outcome::Metrics => {
                    let gauges = Gauges {
                        connections: self.conns.len(),
                        rooms: self.rooms.count(),
                        otps_outstanding: self.site.otps.outstanding(),
                    };
                    let text = self.metrics.render(&gauges).into_bytes();
                    let response = Response::new(Status::Ok)
                        .body("text/plain; version=0.0.4; charset=utf-8", text)
                        .header("Cache-Control", "no-store");
                    self.respond(index, response, keep_alive);
                }
                Outcome::Upgrade {
                    response,
                    user,
                    purpose,
                } => {
                    self.upgrade(index, response, user, purpose, now);
                    return;
                }
            }
        }
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        if matches!(&conn.phase, Phase::Http(buffer) if buffer.is_empty()) {
            self.set_deadline(index, now + self.config.idle_timeout);
        }
    }

    fn respond(&mut self, index: usize, response: Response, keep_alive: bool) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        let response = if keep_alive {
            response
        } else {
            response.closing()
        };
        conn.responses += 1;
        conn.out.push_bytes(&response.to_bytes(SystemTime::now()));
        if response.close {
            conn.begin_closing(format!(
                "HTTP {} with Connection: close",
                response.status.code()
            ));
        }
        self.conns.mark_for_flush(index);
    }

    /// Answers 101 and turns the connection into a chat member in `general`.
    fn upgrade(
        &mut self,
        index: usize,
        response: Response,
        user: String,
        purpose: Purpose,
        now: Instant,
    ) {
        let max_message = match purpose {
            Purpose::Chat => self.config.max_message,
            Purpose::Echo => self.config.echo_max_message,
        };
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        conn.out.push_bytes(&response.to_bytes(SystemTime::now()));
        let Phase::Http(buffer) = &mut conn.phase else {
            return;
        };
        // Bytes behind the request head are the client's first frames. The
        // buffer's spare capacity (the size of the whole request) goes: it
        // would otherwise become the session's read buffer for good.
        let mut early = mem::take(buffer);
        early.shrink_to_fit();
        log::info!("{}: websocket open for {user:?}", conn.peer);
        self.metrics.websocket_connections += 1;
        let room = match purpose {
            Purpose::Chat => self.rooms.join(DEFAULT_ROOM, index),
            Purpose::Echo => Rc::from(""),
        };
        let session = Session::new(purpose, early, user, room, max_message, now);
        conn.phase = Phase::WebSocket(Box::new(session));
        conn.deadline = None;
        self.conns.mark_for_flush(index);
        if let Some(id) = self.conns.id_of(index) {
            self.wheel
                .insert(now + self.config.ping_interval, TimerKey::Heartbeat(id));
        }
        self.on_websocket_bytes(index, &[], now);
    }

    fn on_websocket_bytes(&mut self, index: usize, bytes: &[u8], now: Instant) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        let Phase::WebSocket(session) = &mut conn.phase else {
            return;
        };
        let mut inbox = mem::take(&mut self.inbox);
        let fed = session.feed(bytes, &mut conn.out, &mut inbox, now);
        if session.purpose == Purpose::Echo {
            for message in inbox.drain(..) {
                match message {
                    Message::Text(text) => conn.out.push(ws::data_frame(0x1, text.as_bytes())),
                    Message::Binary(data) => conn.out.push(ws::data_frame(0x2, &data)),
                    _ => {}
                }
            }
        }
        if !conn.out.is_empty() {
            self.conns.mark_for_flush(index);
        }
        for message in inbox.drain(..) {
            if let Message::Text(text) = message {
                self.on_chat_event(index, &text, now);
            }
        }
        self.inbox = inbox;
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        if let Phase::WebSocket(session) = &mut conn.phase {
            session.queue_close(&mut conn.out);
        }
        match fed {
            Fed::Open => return,
            Fed::Closing(reason) => conn.begin_closing(reason),
            Fed::Finished(reason) => conn.finish(reason),
        }
        self.conns.mark_for_flush(index);
    }

    fn on_chat_event(&mut self, index: usize, text: &str, now: Instant) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        let peer = conn.peer;
        let Some(session) = conn.session_mut() else {
            return;
        };
        match chat::decode(text) {
            Ok(ClientEvent::SendMessage { message }) => {
                let sent = rfc3339_utc(SystemTime::now());
                let frame = chat::new_message_frame(&message, &session.user, &sent);
                let room = Rc::clone(&session.room);
                self.metrics.messages_received += 1;
                let hold_until = match self.config.write_delay {
                    Duration::ZERO => None,
                    delay => Some(now + delay),
                };
                for &member in self.rooms.members(&room) {
                    if self.conns.deliver(member, &frame, hold_until) {
                        self.metrics.slow_consumer_disconnects += 1;
                    }
                }
                self.metrics.messages_delivered += self.rooms.members(&room).len() as u64;
            }
            Ok(ClientEvent::ChangeRoom { name }) => {
                log::debug!(
                    "{peer}: {:?} moves from {:?} to {name:?}",
                    session.user,
                    session.room
                );
                self.rooms.leave(&session.room, index);
                session.room = self.rooms.join(&name, index);
            }
            Err(why) => {
                log::debug!("{peer}: bad event: {why}");
                if self.conns.deliver(index, &chat::error_frame(&why), None) {
                    self.metrics.slow_consumer_disconnects += 1;
                }
            }
        }
    }

    /// How long the loop may sleep: until the next timer or held flush.
    fn next_timeout(&self, now: Instant) -> Option<Duration> {
        let held = self
            .conns
            .next_held_flush()
            .map(|due| due.saturating_duration_since(now));
        match (self.wheel.next_timeout(now), held) {
            (Some(timer), Some(held)) => Some(timer.min(held)),
            (timer, held) => timer.or(held),
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        let mut fired = Vec::new();
        self.wheel.expire(now, &mut fired);
        for key in fired {
            match key {
                TimerKey::Deadline(id) => self.on_deadline(id, now),
                TimerKey::Heartbeat(id) => self.on_heartbeat(id, now),
                TimerKey::OtpSweep => {
                    let unused = self.site.otps.sweep(now);
                    if unused > 0 {
                        log::debug!(
                            "{unused} unused OTP(s) expired ({} outstanding)",
                            self.site.otps.outstanding()
                        );
                    }
                }
                TimerKey::ResumeAccept => {
                    self.accepting = true;
                    for listener in 0..self.listeners.len() {
                        self.accept_all(listener, now);
                    }
                }
                TimerKey::ShutdownDeadline => {
                    for index in self.conns.indices() {
                        self.remove(index, "shutdown grace period over");
                    }
                }
            }
        }
    }

    fn on_deadline(&mut self, id: SlotId, now: Instant) {
        let Some(conn) = self.conns.get_live_mut(id) else {
            return;
        };
        if conn.deadline_timer.is_some_and(|due| due <= now) {
            conn.deadline_timer = None; // this one
        }
        match conn.deadline {
            None => return,
            Some(later) if later > now => {
                // Moved since this timer was set: look again then.
                if conn.deadline_timer.is_none() {
                    conn.deadline_timer = Some(later);
                    self.wheel.insert(later, TimerKey::Deadline(id));
                }
                return;
            }
            Some(_) => {}
        }
        let reason = match (&conn.closing, &conn.phase) {
            (Some(_), _) => "close handshake timed out",
            (None, _) if conn.transport.is_handshaking() => "TLS handshake timeout",
            (None, Phase::Http(buffer)) if buffer.is_empty() && conn.responses > 0 => {
                "idle timeout"
            }
            (None, _) => "request head timeout",
        };
        self.remove(id.index(), reason);
    }

    /// One timer per WebSocket drives both pinging and the pong deadline.
    fn on_heartbeat(&mut self, id: SlotId, now: Instant) {
        let (interval, pong_wait) = (self.config.ping_interval, self.config.pong_wait);
        let Some(conn) = self.conns.get_live_mut(id) else {
            return;
        };
        let Some(session) = conn.session_mut() else {
            return;
        };
        match session.heartbeat(now, interval, pong_wait) {
            Heartbeat::Dead => {
                self.metrics.heartbeat_timeouts += 1;
                self.remove(id.index(), "heartbeat timeout: no pong");
            }
            Heartbeat::Wait(next) => self.wheel.insert(next, TimerKey::Heartbeat(id)),
            Heartbeat::Ping(next) => {
                conn.out.push_bytes(&PING_FRAME);
                self.conns.mark_for_flush(id.index());
                self.wheel.insert(next, TimerKey::Heartbeat(id));
            }
        }
    }

    /// Sets a connection's deadline and the timer that checks it.
    fn set_deadline(&mut self, index: usize, deadline: Instant) {
        let Some(id) = self.conns.id_of(index) else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(index) {
            conn.deadline = Some(deadline);
            if conn.deadline_timer.is_none_or(|due| due > deadline) {
                conn.deadline_timer = Some(deadline);
                self.wheel.insert(deadline, TimerKey::Deadline(id));
            }
        }
    }

    /// Writes every connection listed for flushing, once each.
    fn flush_all(&mut self, now: Instant) {
        let list = self.conns.take_flush_list(now);
        for &index in &list {
            let Some(conn) = self.conns.get_mut(index) else {
                continue;
            };
            let queued = conn.out.queued_bytes();
            let flushed = conn.flush();
            self.metrics.bytes_sent += (queued - conn.out.queued_bytes()) as u64;
            let drained = match flushed {
                Ok(drained) => drained,
                Err(err) => {
                    self.remove(index, &format!("write failed: {err}"));
                    continue;
                }
            };
            // Write interest only while output is stuck: otherwise every ACK
            // that frees send-buffer space would wake the loop for nothing.
            if conn.write_interest == drained {
                let interest = match drained {
                    true => Interest::READABLE,
                    false => Interest::READABLE | Interest::WRITABLE,
                };
                if let Err(err) =
                    self.poll
                        .registry()
                        .reregister(conn.transport.tcp(), Token(index), interest)
                {
                    self.remove(index, &format!("cannot change poll interest: {err}"));
                    continue;
                }
                conn.write_interest = !drained;
            }
            if conn.input_paused && conn.out.queued_bytes() < self.config.max_queue {
                conn.input_paused = false;
                if !mem::replace(&mut conn.read_again, true) {
                    self.read_again.push(index);
                }
            }
            if drained && conn.finished {
                let reason = conn.closing.clone().unwrap_or_default();
                self.remove(index, &reason);
                continue;
            }
            if conn.closing.is_some() && conn.deadline.is_none() {
                let close_by = if self.shutting_down {
                    self.config.shutdown_grace
                } else {
                    CLOSE_TIMEOUT
                };
                self.set_deadline(index, now + close_by);
            }
        }
        self.conns.return_flush_list(list);
    }

    fn on_signal(&mut self, now: Instant) {
        let signals: Vec<i32> = self.signals.pending().collect();
        if signals.is_empty() || self.shutting_down {
            return;
        }
        log::info!(
            "signal {}: shutting down ({} connections)",
            signals[0],
            self.conns.len()
        );
        self.shutting_down = true;
        for listener in &mut self.listeners {
            let _ = self.poll.registry().deregister(&mut listener.socket);
        }
        for index in self.conns.indices() {
            let Some(conn) = self.conns.get_mut(index) else {
                continue;
            };
            match conn.phase {
                Phase::WebSocket(_) => {
                    conn.close_websocket(CloseCode::Away, "server shutting down")
                }
                Phase::Http(_) => conn.begin_closing("server shutting down"),
            }
            self.conns.mark_for_flush(index);
        }
        self.wheel
            .insert(now + self.config.shutdown_grace, TimerKey::ShutdownDeadline);
    }

    /// The one place a connection ends: poll, room and slot are all released here.
    fn remove(&mut self, index: usize, reason: &str) {
        let Some(mut conn) = self.conns.remove(index) else {
            return;
        };
        let _ = self.poll.registry().deregister(conn.transport.tcp());
        let who = match &conn.phase {
            Phase::WebSocket(session) => {
                self.metrics.websocket_connections -= 1;
                self.rooms.leave(&session.room, index);
                format!(" ({:?})", session.user)
            }
            Phase::Http(_) => String::new(),
        };
        log::info!(
            "{}{who}: closed: {reason} ({} open)",
            conn.peer,
            self.conns.len()
        );
    }
}

/// Which addresses to listen on, and which of them speak TLS:
/// no certificate: `--listen` is plain; a certificate alone: `--listen` speaks
/// TLS; a certificate and `--tls-listen`: `--listen` plain, `--tls-listen` TLS.
fn listener_plan(config: &Config) -> Result<Vec<(SocketAddr, Option<TlsConfig>)>, String> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::load_config(cert, key)?),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key must be given together".into()),
    };
    Ok(match (tls, config.tls_listen) {
        (None, Some(_)) => return Err("--tls-listen needs --tls-cert and --tls-key".into()),
        (None, None) => vec![(config.listen, None)],
        (Some(tls), None) => vec![(config.listen, Some(tls))],
        (Some(tls), Some(tls_addr)) => vec![(config.listen, None), (tls_addr, Some(tls))],
    })
}

/// Listen backlog: connections the kernel holds for us while the loop is busy
/// or out of descriptors (std and mio use 128, which overflows under bursts).
const LISTEN_BACKLOG: i32 = 1024;

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

fn is_out_of_descriptors(err: &io::Error) -> bool {
    // EMFILE (24): this process; ENFILE (23): the whole system.
    matches!(err.raw_os_error(), Some(23) | Some(24))
}

/// Past --max-connections: a best-effort 503, then the socket is dropped.
fn refuse_busy(mut stream: TcpStream, peer: SocketAddr) {
    log::warn!("{peer}: refused: connection limit reached");
    let response = Response::text(Status::ServiceUnavailable, "server busy").closing();
    let _ = io::Write::write(&mut stream, &response.to_bytes(SystemTime::now()));
    // Drain what the client already sent so close() sends FIN rather than RST.
    let mut sink = [0u8; 1024];
    let _ = stream.read(&mut sink);
}

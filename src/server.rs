//! The event loop: one `mio::Poll` for the listeners, every connection and
//! the shutdown signals. The loop only moves bytes and time; what they mean
//! is decided by each connection's core (`conn`) and, for chat, the hub.
//!
//! Each turn: wait for readiness (no longer than the next deadline), give
//! waiting logins their turns, read every readable socket within its budget
//! and hand the bytes to its core, fire due timers, flush every connection
//! with output (all the frames queued for one socket in this turn leave in
//! one write), then remove the connections that ended, in one place.

use std::io;
use std::mem;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use tungstenite::Message;

use crate::auth::{Accounts, LoginLimiter, LoginTurns, Otps};
use crate::auth::{StoreAnswer, StoreQuery};
use crate::config::Config;
use crate::conn::{Connection, Context, Event};
use crate::connections::{Connections, Read};
use crate::history::History;
use crate::http::OtpStore;
use crate::http::files::WebRoot;
use crate::http::{Origins, Site};
use crate::hub::{Broker, Hub, LocalBroker};
use crate::listen::{self, Listeners};
use crate::logging::{Escaped, LogThrottle, held_back};
use crate::metrics::Metrics;
use crate::peers::AddressCounts;
use crate::redis::{RedisBus, Target};
use crate::sessions::Sessions;
use crate::slab::SlotId;

const SIGNALS: Token = Token(usize::MAX);
const SHUTDOWN: Token = Token(usize::MAX - 1);
const REDIS_COMMANDS: Token = Token(usize::MAX - 2);
const REDIS_SUBSCRIPTIONS: Token = Token(usize::MAX - 3);
/// Listener `i` has token `LISTENER_BASE - i`.
const LISTENER_BASE: usize = usize::MAX - 4;

/// How chat messages reach their rooms: within this process, or through Redis.
enum Bus {
    Local(Box<LocalBroker>),
    Redis(Box<RedisBus>),
}

impl Bus {
    fn broker(&mut self) -> &mut dyn Broker {
        match self {
            Bus::Local(local) => local.as_mut(),
            Bus::Redis(redis) => redis.as_mut(),
        }
    }
}

/// Bytes read from a socket per `read()` call, and per connection per loop
/// turn: a client that sends faster than that is read again next turn,
/// after everyone's output has been flushed. Without this budget one fast
/// sender would be read for as long as it keeps writing, nothing would be
/// flushed meanwhile, and every reader's queue would overflow.
const READ_CHUNK: usize = 64 * 1024;

pub struct Server {
    poll: Poll,
    listeners: Listeners,
    signals: Signals,
    /// Woken by a `ShutdownHandle` from another thread.
    shutdown: Arc<Waker>,
    conns: Connections,
    hub: Hub,
    bus: Bus,
    /// Questions for the shared OTP store, and its answers, waiting to be passed on.
    queries: Vec<(SlotId, StoreQuery)>,
    answers: Vec<(SlotId, StoreAnswer)>,
    site: Site,
    metrics: Metrics,
    config: Config,
    /// Reused read buffer: sockets are read into it, never into per-connection memory.
    scratch: Vec<u8>,
    /// Reused lists: a core's events for the hub, and messages decoded in one read.
    events: Vec<Event>,
    inbox: Vec<Message>,
    /// Set once a shutdown signal arrived: when the grace period ends.
    shutdown_deadline: Option<Instant>,
    /// Open connections per client address, under `--max-connections-per-ip`.
    per_address: AddressCounts,
    /// Refusals at the door can come by the thousand.
    refusal_log: LogThrottle,
}

impl Server {
    /// Binds the listeners and prepares everything; errors are for the operator.
    pub fn new(config: Config) -> Result<Server, String> {
        let listeners = Listeners::bind(&config)?;
        Server::with_listeners(config, listeners)
    }

    /// A server on listeners already bound (a test may bind its own).
    pub fn with_listeners(mut config: Config, mut listeners: Listeners) -> Result<Server, String> {
        // Resolved once: 0 asks for as many as the file limit allows.
        config.max_connections = config.effective_max_connections();
        let poll = Poll::new().map_err(|err| format!("cannot create poll: {err}"))?;
        let own_origins = listeners.register(poll.registry(), |i| Token(LISTENER_BASE - i))?;
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
            .map_err(|err| format!("cannot install signal handlers: {err}"))?;
        poll.registry()
            .register(&mut signals, SIGNALS, mio::Interest::READABLE)
            .map_err(|err| format!("cannot register signals: {err}"))?;
        let shutdown = Waker::new(poll.registry(), SHUTDOWN)
            .map_err(|err| format!("cannot create a waker: {err}"))?;
        let mut site = open_site(&config, own_origins)?;
        site.metrics_elsewhere = listeners.has_metrics_listener();
        let now = Instant::now();
        let bus = open_bus(&config, now)?;
        if let Bus::Redis(_) = bus {
            site.otp_store = OtpStore::Shared { up: false };
        }
        let max_per_address = config.max_connections_per_ip;
        Ok(Server {
            poll,
            listeners,
            signals,
            shutdown: Arc::new(shutdown),
            conns: Connections::new(now, &config),
            hub: Hub::default(),
            bus,
            queries: Vec::new(),
            answers: Vec::new(),
            site,
            metrics: Metrics::default(),
            config,
            scratch: vec![0; READ_CHUNK],
            events: Vec::new(),
            inbox: Vec::new(),
            shutdown_deadline: None,
            per_address: AddressCounts::new(max_per_address),
            refusal_log: LogThrottle::new(Duration::from_secs(5)),
        })
    }

    /// A handle that stops the server from another thread, as SIGTERM does.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(Arc::clone(&self.shutdown))
    }

    /// Runs until a shutdown signal has been handled.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            match self.poll.poll(&mut events, self.sleep_time(Instant::now())) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                result => result?,
            }
            let now = Instant::now();
            self.begin_turn(now);
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signals(now),
                    SHUTDOWN => self.shut_down("shutdown requested", now),
                    REDIS_COMMANDS | REDIS_SUBSCRIPTIONS => self.on_redis(event.token(), now),
                    Token(token) if token > LISTENER_BASE - self.listeners.len() => {
                        self.accept_all(LISTENER_BASE - token, now);
                    }
                    Token(index) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(index, now);
                        }
                        // Writable or not, a flush attempt is cheap and catches
                        // TLS records produced while reading.
                        self.conns.mark_for_flush(index);
                    }
                }
            }
            self.on_time(now);
            self.redis_turn(now);
            self.conns
                .flush_all(self.poll.registry(), &mut self.metrics);
            self.keep_memory_budget();
            self.remove_ended();
            self.metrics.loop_iterations += 1;
            self.metrics.longest_loop_pause = self.metrics.longest_loop_pause.max(now.elapsed());
            if self.shutdown_deadline.is_some() && self.conns.is_empty() {
                log::info!("all connections closed; exiting");
                return Ok(());
            }
        }
    }

    /// How long the loop may sleep: not at all while work waits, else until
    /// the next deadline of any kind.
    fn sleep_time(&self, now: Instant) -> Option<Duration> {
        if self.conns.wants_reading() || self.site.turns.waiting() > 0 {
            return Some(Duration::ZERO);
        }
        [
            self.conns.next_deadline(now),
            self.listeners.paused_until(),
            self.site.otps.next_expiry(),
            self.shutdown_deadline,
            match &self.bus {
                Bus::Redis(redis) => redis.next_deadline(),
                Bus::Local(local) => local.history().next_expiry(),
            },
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|due| due.saturating_duration_since(now))
    }

    /// Work left over from the last turn goes first: logins granted their
    /// turn, then connections with input still waiting.
    fn begin_turn(&mut self, now: Instant) {
        self.conns.begin_turn(now);
        if let Bus::Local(local) = &mut self.bus {
            local.set_now(now);
        }
        self.site.turns.new_iteration();
        while let Some(id) = self.site.turns.grant(|id| self.conns.is_live(id)) {
            self.drive(id.index(), now, true, |core, cx| core.resume(cx));
        }
        for index in self.conns.take_read_again() {
            self.drive(index, now, false, |core, cx| core.resume(cx));
            self.read(index, now);
        }
    }

    fn accept_all(&mut self, listener: usize, now: Instant) {
        while self.shutdown_deadline.is_none() {
            let open = self.conns.len();
            let Some((transport, peer, role)) = self.listeners.accept(listener, now, open) else {
                return;
            };
            if open >= self.config.max_connections {
                log::warn!("{peer}: refused: connection limit reached");
                listen::refuse(transport, "server busy");
                continue;
            }
            if !self.per_address.admit(peer.ip()) {
                self.metrics.refused_per_address += 1;
                if let Some(quiet) = self.refusal_log.admit(now) {
                    let quiet = held_back(quiet);
                    log::warn!("{peer}: refused: too many connections from its address{quiet}");
                }
                listen::refuse(transport, "too many connections from your address");
                continue;
            }
            match self
                .conns
                .insert(transport, peer, role, self.poll.registry())
            {
                Ok(_) => log::info!("{peer}: connected ({} open)", self.conns.len()),
                Err(err) => {
                    self.per_address.release(peer.ip());
                    log::error!("{peer}: cannot register connection: {err}");
                }
            }
            self.metrics.connections = self.conns.len();
        }
    }

    /// Reads until the socket would block, the core pauses input, or the
    /// read budget is spent, handing each chunk to the core as it comes.
    fn read(&mut self, index: usize, now: Instant) {
        let mut scratch = mem::take(&mut self.scratch);
        let mut budget = self.conns.read_budget(index).min(READ_CHUNK);
        loop {
            if budget == 0 || self.conns.deliveries_spent() {
                self.conns.read_later(index);
                break;
            }
            match self.conns.read(index, &mut scratch[..budget]) {
                Read::Bytes(n) => {
                    budget -= n;
                    self.metrics.bytes_received += n as u64;
                    self.drive(index, now, false, |core, cx| {
                        core.receive(&scratch[..n], cx)
                    });
                }
                Read::Eof => {
                    self.drive(index, now, false, |core, cx| core.peer_closed(cx));
                    break;
                }
                Read::Blocked | Read::Paused => break,
                Read::Failed(err) => {
                    self.conns.fail(index, format!("read failed: {err}"));
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Runs one step of connection `index`'s core, lets the hub act on the
    /// chat events it produced, then settles the core.
    fn drive(
        &mut self,
        index: usize,
        now: Instant,
        login_turn: bool,
        step: impl FnOnce(&mut Connection, &mut Context),
    ) {
        let Some(id) = self.conns.id_of(index) else {
            return;
        };
        let mut cx = Context {
            now,
            config: &self.config,
            site: &mut self.site,
            metrics: &mut self.metrics,
            events: &mut self.events,
            inbox: &mut self.inbox,
            queries: &mut self.queries,
            id,
            login_turn,
            handshaking: false,
        };
        self.conns.drive(index, &mut cx, step);
        let broker = self.bus.broker();
        for event in self.events.drain(..) {
            match event {
                Event::Joined { user, entry } => {
                    let (mail, metrics) = (&mut self.conns, &mut self.metrics);
                    self.hub.join(index, &user, entry, mail, broker, metrics)
                }
                Event::Text(text) => {
                    self.hub
                        .handle(index, &text, &mut self.conns, broker, &mut self.metrics)
                }
            }
        }
        self.conns.settle(index);
        self.ask_store();
    }

    /// Passes the cores' OTP questions to the shared store.
    fn ask_store(&mut self) {
        for (asker, query) in self.queries.drain(..) {
            match &mut self.bus {
                Bus::Redis(redis) => redis.ask(asker, query, self.config.otp_ttl),
                Bus::Local(_) => self.answers.push((asker, StoreAnswer::Unavailable)),
            }
        }
    }

    /// Readiness on a Redis link: replies, room messages, OTP answers.
    fn on_redis(&mut self, token: Token, now: Instant) {
        let Bus::Redis(redis) = &mut self.bus else {
            return;
        };
        redis.on_ready(token, now, self.poll.registry());
        self.hub
            .deliver_arrivals(&mut self.conns, redis.as_mut(), &mut self.metrics);
        self.pass_answers(now);
    }

    /// Once a turn with Redis: reconnect, (un)subscribe, flush, and tell the
    /// site whether shared OTPs can be reached.
    fn redis_turn(&mut self, now: Instant) {
        let Bus::Redis(redis) = &mut self.bus else {
            return;
        };
        redis.before_sleep(now, self.poll.registry());
        self.hub
            .deliver_arrivals(&mut self.conns, redis.as_mut(), &mut self.metrics);
        self.site.otp_store = OtpStore::Shared { up: redis.is_up() };
        self.metrics.redis = Some(redis.stats());
        self.pass_answers(now);
    }

    /// Gives each waiting connection the shared store's answer.
    fn pass_answers(&mut self, now: Instant) {
        if let Bus::Redis(redis) = &mut self.bus {
            redis.take_answers(&mut self.answers);
        }
        for (asker, answer) in std::mem::take(&mut self.answers) {
            if self.conns.is_live(asker) {
                self.drive(asker.index(), now, false, |core, cx| {
                    core.answer(answer, cx)
                });
            }
        }
    }

    fn on_time(&mut self, now: Instant) {
        let mut due = Vec::new();
        self.conns.due_timers(now, &mut due);
        for id in due {
            self.drive(id.index(), now, false, |core, cx| core.timeout(cx));
        }
        if self.site.otps.next_expiry().is_some_and(|at| at <= now) {
            let unused = self.site.otps.sweep(now);
            if unused > 0 {
                let left = self.site.otps.outstanding();
                log::debug!("{unused} unused OTP(s) expired ({left} outstanding)");
            }
        }
        if let Bus::Local(local) = &mut self.bus {
            local.expire(now);
            self.metrics.history_bytes = local.history().bytes();
        }
        if self.listeners.resume(now) {
            for listener in 0..self.listeners.len() {
                self.accept_all(listener, now);
            }
        }
        if self.shutdown_deadline.is_some_and(|at| at <= now) {
            for index in self.conns.indices() {
                self.drive(index, now, false, |core, _| core.grace_over());
            }
        }
    }

    /// SIGHUP re-reads the accounts file; SIGINT and SIGTERM stop the server.
    fn on_signals(&mut self, now: Instant) {
        let signals: Vec<i32> = self.signals.pending().collect();
        for signal in signals {
            match signal {
                SIGHUP => self.reload_accounts(),
                _ => self.shut_down(&format!("signal {signal}"), now),
            }
        }
    }

    /// Re-reads `--users`: new passwords take effect, and a user no longer
    /// in the file loses its sessions. A file that does not parse changes nothing.
    fn reload_accounts(&mut self) {
        let Some(path) = &self.config.users else {
            log::info!("SIGHUP: no --users file to re-read");
            return;
        };
        match Accounts::load(path) {
            Ok(accounts) => {
                self.site.accounts = accounts;
                self.site.sessions.bind(self.site.accounts.credentials());
                log::info!("SIGHUP: accounts re-read from {}", path.display());
            }
            Err(err) => log::error!("SIGHUP: {err}; the accounts stay as they were"),
        }
    }

    /// Stops accepting and closes every connection within the grace period.
    fn shut_down(&mut self, why: &str, now: Instant) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        log::info!("{why}: shutting down ({} connections)", self.conns.len());
        self.shutdown_deadline = Some(now + self.config.shutdown_grace);
        self.listeners.deregister(self.poll.registry());
        for index in self.conns.indices() {
            self.drive(index, now, false, |core, cx| core.shut_down(cx));
        }
    }

    /// Past `--max-memory`, the connections holding the most are cut off.
    fn keep_memory_budget(&mut self) {
        let buffered = self.conns.buffered();
        if let Some((cut, freed)) = self.conns.enforce_memory_budget(self.config.max_memory) {
            self.metrics.memory_cutoffs += cut as u64;
            log::warn!(
                "memory budget of {} bytes passed ({buffered} buffered): \
                 cut off the {cut} connection(s) holding the most, {freed} bytes",
                self.config.max_memory
            );
        }
        self.metrics.buffered_bytes = self.conns.buffered();
    }

    /// The one place connections are freed: socket, poll and room membership.
    fn remove_ended(&mut self) {
        while let Some((index, core)) = self.conns.pop_ended(self.poll.registry()) {
            let Some(ending) = core.ending() else {
                continue;
            };
            if ending.websocket {
                self.metrics.websocket_connections -= 1;
            }
            self.per_address.release(core.peer().ip());
            let who = match self.hub.user(index) {
                Some(user) => format!(" ({})", Escaped(user)),
                None => String::new(),
            };
            self.hub.leave(index, self.bus.broker());
            log::info!(
                "{}{who}: closed: {} ({} open)",
                core.peer(),
                ending.reason,
                self.conns.len()
            );
        }
        self.metrics.connections = self.conns.len();
        self.metrics.rooms = self.hub.room_count();
    }
}

/// Stops a running server from any thread (it finishes as on SIGTERM).
#[derive(Clone)]
pub struct ShutdownHandle(Arc<Waker>);

impl ShutdownHandle {
    pub fn shut_down(&self) {
        if let Err(err) = self.0.wake() {
            log::error!("cannot wake the server to shut down: {err}");
        }
    }
}

/// Where chat messages go: this process's own broker, or Redis's.
fn open_bus(config: &Config, now: Instant) -> Result<Bus, String> {
    let Some(url) = &config.redis else {
        let history = History::new(config.history, config.history_ttl, config.history_max_bytes);
        return Ok(Bus::Local(Box::new(LocalBroker::new(history))));
    };
    let target = Target::parse(url).map_err(|why| format!("--redis {url}: {why}"))?;
    log::info!(
        "redis: rooms and logins shared through {}:{} (prefix {:?})",
        target.host,
        target.port,
        config.redis_prefix
    );
    let history = crate::redis::History {
        per_room: config.history,
        ttl: config.history_ttl,
    };
    let tokens = [REDIS_COMMANDS, REDIS_SUBSCRIPTIONS];
    let prefix = config.redis_prefix.clone();
    let bus = RedisBus::new(target, prefix, history, tokens, now);
    Ok(Bus::Redis(Box::new(bus)))
}

/// Sessions signed with the key file, or with a key of this process's own.
fn open_sessions(config: &Config) -> Result<Sessions, String> {
    if config.session_key.is_none() {
        log::warn!(
            "no --session-key file: sessions are signed with a random key and end when this process does"
        );
    }
    Sessions::open(config.session_key.as_deref(), config.session_ttl)
}

/// The HTTP site: web root, accounts, OTPs and the origins allowed.
fn open_site(config: &Config, own_origins: Vec<String>) -> Result<Site, String> {
    let origins = match config.allowed_origins.is_empty() {
        true => own_origins,
        false => config.allowed_origins.clone(),
    };
    let accounts = match &config.users {
        Some(path) => Accounts::load(path)?,
        None => {
            log::warn!("no --users file: the demo account percy / 123 is enabled");
            Accounts::demo()?
        }
    };
    if let Some(path) = &config.echo_path {
        log::warn!("echo route {path} is on: unauthenticated, for conformance tests only");
    }
    let site = Site {
        root: WebRoot::open(&config.www)?,
        origins: Origins::new(origins),
        accounts,
        otps: Otps::default(),
        otp_ttl: config.otp_ttl,
        echo_path: config.echo_path.clone(),
        limiter: LoginLimiter::default(),
        turns: LoginTurns::default(),
        sessions: open_sessions(config)?,
        metrics_elsewhere: false,
        refusal_log: LogThrottle::new(Duration::from_secs(5)),
        flood_log: LogThrottle::new(Duration::from_secs(5)),
        otp_store: OtpStore::Local,
    };
    let mut site = site;
    site.sessions.bind(site.accounts.credentials());
    log::info!("allowed origins: {}", site.origins.list().join(", "));
    Ok(site)
}

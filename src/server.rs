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
use std::time::{Duration, Instant, SystemTime};

use mio::{Events, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::auth::Accounts;
use crate::broker::{Backend, LocalBroker, StoreAnswer};
use crate::config::Config;
use crate::conn::{Connection, Context};
use crate::connections::{Connections, Read};
use crate::listen::{self, Listeners};
use crate::logging::{Escaped, LogThrottle, held_back};
use crate::peers::AddressCounts;
use crate::config::RedisUrl;
use crate::redis::{self, RedisBus};
use crate::slab::SlotId;
use crate::world::World;

const SIGNALS: Token = Token(usize::MAX);
const SHUTDOWN: Token = Token(usize::MAX - 1);
/// The back end's own sockets: tokens `BACKEND_FIRST - i` for `i` below
/// `BACKEND_TOKENS`.
const BACKEND_FIRST: usize = usize::MAX - 2;
const BACKEND_TOKENS: usize = 8;
/// Listener `i` has token `LISTENER_BASE - i`.
const LISTENER_BASE: usize = BACKEND_FIRST - BACKEND_TOKENS;

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
    /// The site, the hub, the back end, the metrics: what connections share.
    world: World,
    /// The store's answers waiting to be passed on.
    answers: Vec<(SlotId, StoreAnswer)>,
    /// Reused read buffer: sockets are read into it, never into per-connection memory.
    scratch: Vec<u8>,
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
        let now = Instant::now();
        let backend = open_backend(&config, now)?;
        let max_per_address = config.max_connections_per_ip;
        let conns = Connections::new(now, &config);
        let metrics_elsewhere = listeners.has_metrics_listener();
        let world = World::open(config, own_origins, metrics_elsewhere, backend)?;
        Ok(Server {
            poll,
            listeners,
            signals,
            shutdown: Arc::new(shutdown),
            conns,
            world,
            answers: Vec::new(),
            scratch: vec![0; READ_CHUNK],
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
                    Token(token) if token > LISTENER_BASE => self.on_backend(event.token(), now),
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
            self.end_turn(now);
            self.conns
                .flush_all(self.poll.registry(), &mut self.world.metrics);
            self.keep_memory_budget();
            self.remove_ended();
            self.world.metrics.loop_iterations += 1;
            self.world.metrics.longest_loop_pause =
                self.world.metrics.longest_loop_pause.max(now.elapsed());
            // The last leaves go to the other processes before the exit.
            if self.shutdown_deadline.is_some()
                && self.conns.is_empty()
                && !self.world.hub.presence_unpublished()
            {
                log::info!("all connections closed; exiting");
                return Ok(());
            }
        }
    }

    /// How long the loop may sleep: not at all while work waits, else until
    /// the next deadline of any kind.
    fn sleep_time(&self, now: Instant) -> Option<Duration> {
        if self.conns.wants_reading()
            || self.world.site.turns.waiting() > 0
            || self.world.hub.presence_unpublished()
        {
            return Some(Duration::ZERO);
        }
        [
            self.conns.next_deadline(now),
            self.listeners.paused_until(),
            self.world.site.otps.next_expiry(),
            self.shutdown_deadline,
            self.world.backend.next_deadline(),
            self.world.hub.next_deadline(),
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
        self.world.begin_turn(now, SystemTime::now());
        self.world.site.turns.new_iteration();
        while let Some(id) = self.world.site.turns.grant(|id| self.conns.is_live(id)) {
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
            if open >= self.world.config.max_connections {
                log::warn!("{peer}: refused: connection limit reached");
                listen::refuse(transport, "server busy", SystemTime::now());
                continue;
            }
            if !self.per_address.admit(peer.ip()) {
                self.world.metrics.refused_per_address += 1;
                if let Some(quiet) = self.refusal_log.admit(now) {
                    let quiet = held_back(quiet);
                    log::warn!("{peer}: refused: too many connections from its address{quiet}");
                }
                listen::refuse(
                    transport,
                    "too many connections from your address",
                    SystemTime::now(),
                );
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
            self.world.metrics.connections = self.conns.len();
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
                    self.world.metrics.bytes_received += n as u64;
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
        let mut cx = self.world.context(id, now, login_turn);
        self.conns.drive(index, &mut cx, step);
        self.world.dispatch(index, &mut self.conns);
        self.conns.settle(index);
        self.world.ask_store();
    }

    /// Readiness on one of the back end's sockets: replies, room messages,
    /// store answers.
    fn on_backend(&mut self, token: Token, now: Instant) {
        self.world
            .backend
            .on_ready(token, now, self.poll.registry());
        self.world.deliver_arrivals(&mut self.conns);
        self.world.heed_controls(&mut self.conns);
        self.pass_answers(now);
    }

    /// The back end's turn, once the connections have had theirs: its
    /// timers, links and flushes; then what it brought is delivered.
    fn end_turn(&mut self, now: Instant) {
        self.world.publish_presence();
        self.world.backend.end_turn(now, self.poll.registry());
        self.world.deliver_arrivals(&mut self.conns);
        self.world.flush_presence(now, &mut self.conns);
        self.world.backend.report(&mut self.world.metrics);
        self.pass_answers(now);
    }

    /// Gives each waiting connection the store's answer.
    fn pass_answers(&mut self, now: Instant) {
        self.world.backend.take_answers(&mut self.answers);
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
        if self
            .world
            .site
            .otps
            .next_expiry()
            .is_some_and(|at| at <= now)
        {
            let unused = self.world.site.otps.sweep(now);
            if unused > 0 {
                let left = self.world.site.otps.outstanding();
                log::debug!("{unused} unused OTP(s) expired ({left} outstanding)");
            }
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
        let Some(path) = &self.world.config.users else {
            log::info!("SIGHUP: no --users file to re-read");
            return;
        };
        match Accounts::load(path) {
            Ok(accounts) => {
                self.world.site.replace_accounts(accounts);
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
        self.shutdown_deadline = Some(now + self.world.config.shutdown_grace);
        self.listeners.deregister(self.poll.registry());
        for index in self.conns.indices() {
            self.drive(index, now, false, |core, cx| core.shut_down(cx));
        }
    }

    /// Past `--max-memory`, the connections holding the most are cut off.
    fn keep_memory_budget(&mut self) {
        let buffered = self.conns.buffered();
        if let Some((cut, freed)) = self
            .conns
            .enforce_memory_budget(self.world.config.max_memory)
        {
            self.world.metrics.memory_cutoffs += cut as u64;
            log::warn!(
                "memory budget of {} bytes passed ({buffered} buffered): \
                 cut off the {cut} connection(s) holding the most, {freed} bytes",
                self.world.config.max_memory
            );
        }
        self.world.metrics.buffered_bytes = self.conns.buffered();
    }

    /// The one place connections are freed: socket, poll and room membership.
    fn remove_ended(&mut self) {
        while let Some((index, core)) = self.conns.pop_ended(self.poll.registry()) {
            let Some(ending) = core.ending() else {
                continue;
            };
            self.per_address.release(core.peer().ip());
            let who = match self.world.hub.user(index) {
                Some(user) => format!(" ({})", Escaped(user)),
                None => String::new(),
            };
            self.world.hub.leave(index, self.world.backend.as_mut());
            log::info!(
                "{}{who}: closed: {} ({} open)",
                core.peer(),
                ending.reason,
                self.conns.len()
            );
        }
        self.world.metrics.connections = self.conns.len();
        self.world.metrics.websocket_connections = self.conns.websockets() as u64;
        self.world.metrics.rooms = self.world.hub.room_count();
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

/// The back end: this process on its own, or every process on a Redis.
fn open_backend(config: &Config, now: Instant) -> Result<Box<dyn Backend>, String> {
    let Some(settings) = redis_settings(config)? else {
        return Ok(Box::new(LocalBroker::for_config(config, now)));
    };
    let tokens = [0, 1, 2, 3].map(|i| Token(BACKEND_FIRST - i));
    Ok(Box::new(RedisBus::new(settings, tokens, now)))
}

/// What the Redis back end needs, from `--redis` and the `--redis-*` flags
/// (None: no Redis).
fn redis_settings(config: &Config) -> Result<Option<redis::Settings>, String> {
    let sentinel = !config.redis_sentinels.is_empty();
    let target = match (&config.redis, sentinel) {
        (None, false) => return Ok(None),
        (Some(url), _) => RedisUrl::parse(url).map_err(|why| format!("--redis {url}: {why}"))?,
        (None, true) => RedisUrl::parse("redis://sentinel").map_err(|why| why.to_string())?,
    };
    // The flags' combinations were checked with the flags (`config`).
    let tls = match target.tls {
        true => Some(redis::tls_client_config(
            config.redis_ca.as_deref(),
            config.redis_cert.as_deref(),
            config.redis_key.as_deref(),
        )?),
        false => None,
    };
    let sentinel = match (sentinel, &config.redis_master) {
        (true, Some(name)) => {
            let sentinels = config
                .redis_sentinels
                .iter()
                .map(|address| {
                    let scheme = if target.tls { "rediss" } else { "redis" };
                    let password = match &config.redis_sentinel_password {
                        Some(password) => format!(":{password}@"),
                        None => String::new(),
                    };
                    RedisUrl::parse(&format!("{scheme}://{password}{address}"))
                        .map_err(|why| format!("--redis-sentinel {address}: {why}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            log::info!(
                "redis: rooms and logins shared through master {name:?}, as the sentinels {} say (prefix {:?})",
                config.redis_sentinels.join(", "),
                config.redis_prefix
            );
            Some(redis::SentinelWatch {
                master_name: name.clone(),
                sentinels,
            })
        }
        _ => None,
    };
    if sentinel.is_none() {
        log::info!(
            "redis: rooms and logins shared through {}:{} (prefix {:?})",
            target.host,
            target.port,
            config.redis_prefix
        );
    }
    Ok(Some(redis::Settings {
        target,
        sentinel,
        prefix: config.redis_prefix.clone(),
        history: redis::History {
            per_room: config.history,
            ttl: config.history_ttl,
        },
        otp_ttl: config.otp_ttl,
        tls,
    }))
}

//! The listening sockets: which addresses, which of them speak TLS, binding
//! them, the origins they make the server's own, and accepting, with a pause
//! when the process runs out of descriptors.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use crate::config::Config;
use crate::http::{Origins, Response, Role, Status};
use crate::tls;
use crate::transport::Transport;

pub type TlsConfig = Arc<rustls::ServerConfig>;

/// How long to stop accepting after the process runs out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Listen backlog: connections the kernel holds for us while the loop is busy
/// or out of descriptors (std and mio use 128, which overflows under bursts).
const LISTEN_BACKLOG: i32 = 1024;

struct Listener {
    socket: TcpListener,
    /// Present when this listener speaks TLS.
    tls: Option<TlsConfig>,
    role: Role,
}

pub struct Listeners {
    list: Vec<Listener>,
    /// Accepting is paused until then (out of descriptors).
    paused_until: Option<Instant>,
    /// When the last "out of file descriptors" warning was logged.
    last_warning: Option<Instant>,
}

impl Listeners {
    /// Binds every address the configuration asks for.
    pub fn bind(config: &Config) -> Result<Listeners, String> {
        let mut listeners = Listeners::from_bound(Vec::new());
        for (addr, tls) in listener_plan(config)? {
            let socket = bind_listener(addr, config.reuse_port)
                .map_err(|err| format!("cannot listen on {addr}: {err}"))?;
            listeners.add(socket, tls, Role::Public);
        }
        if let Some(addr) = config.metrics_listen {
            let socket = bind_listener(addr, config.reuse_port)
                .map_err(|err| format!("cannot listen on {addr}: {err}"))?;
            listeners.add(socket, None, Role::Metrics);
        }
        Ok(listeners)
    }

    /// Public listeners already bound (and listening) elsewhere, e.g. by a test.
    pub fn from_bound(bound: Vec<(std::net::TcpListener, Option<TlsConfig>)>) -> Listeners {
        let mut listeners = Listeners {
            list: Vec::new(),
            paused_until: None,
            last_warning: None,
        };
        for (socket, tls) in bound {
            listeners.add(socket, tls, Role::Public);
        }
        listeners
    }

    fn add(&mut self, socket: std::net::TcpListener, tls: Option<TlsConfig>, role: Role) {
        let _ = socket.set_nonblocking(true);
        self.list.push(Listener {
            socket: TcpListener::from_std(socket),
            tls,
            role,
        });
    }

    /// True when `/metrics` has a listener of its own.
    pub fn has_metrics_listener(&self) -> bool {
        self.list.iter().any(|l| l.role == Role::Metrics)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Registers listener `i` with token `token(i)`, logs where each listens,
    /// and returns the origins that are the server's own on the public ones.
    pub fn register(
        &mut self,
        registry: &Registry,
        token: impl Fn(usize) -> Token,
    ) -> Result<Vec<String>, String> {
        let mut own_origins = Vec::new();
        for (i, listener) in self.list.iter_mut().enumerate() {
            let local = listener
                .socket
                .local_addr()
                .map_err(|err| format!("listener address: {err}"))?;
            registry
                .register(&mut listener.socket, token(i), Interest::READABLE)
                .map_err(|err| format!("cannot register listener: {err}"))?;
            if listener.role == Role::Metrics {
                log::info!("metrics on http://{local}");
                continue;
            }
            let scheme = if listener.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            if !local.ip().is_unspecified() && !local.ip().is_loopback() {
                hosts.push(local.ip().to_string());
            }
            own_origins.extend(Origins::own(&[scheme], &hosts, local.port()));
            log::info!("listening on {scheme}://{local}");
        }
        Ok(own_origins)
    }

    /// Stops listening (at shutdown).
    pub fn deregister(&mut self, registry: &Registry) {
        for listener in &mut self.list {
            let _ = registry.deregister(&mut listener.socket);
        }
    }

    /// When a pause in accepting ends.
    pub fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Ends a pause whose time has come; true when one ended.
    pub fn resume(&mut self, now: Instant) -> bool {
        match self.paused_until {
            Some(until) if until <= now => {
                self.paused_until = None;
                true
            }
            _ => false,
        }
    }

    /// The next connection waiting on listener `i`, or None once there is
    /// none (or accepting is paused).
    pub fn accept(
        &mut self,
        i: usize,
        now: Instant,
        open: usize,
    ) -> Option<(Transport, SocketAddr, Role)> {
        while self.paused_until.is_none() {
            let listener = self.list.get(i)?;
            let (stream, peer) = match listener.socket.accept() {
                Ok(accepted) => accepted,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return None,
                Err(err) if is_out_of_descriptors(&err) => {
                    self.pause(&err, now, open);
                    return None;
                }
                Err(err) => {
                    log::debug!("accept failed: {err}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let role = listener.role;
            match &listener.tls {
                None => return Some((Transport::Plain(stream), peer, role)),
                Some(tls) => match rustls::server::UnbufferedServerConnection::new(Arc::clone(tls)) {
                    Ok(session) => return Some((Transport::tls(session, stream), peer, role)),
                    Err(err) => log::error!("{peer}: cannot start TLS: {err}"),
                },
            }
        }
        None
    }

    /// Out of descriptors: stop accepting for a moment instead of spinning on
    /// a listener that stays readable.
    fn pause(&mut self, err: &io::Error, now: Instant, open: usize) {
        let quiet = self
            .last_warning
            .is_some_and(|at| now - at < Duration::from_secs(5));
        if !quiet {
            log::warn!("accept failed: {err}; pausing accepts ({open} open)");
            self.last_warning = Some(now);
        }
        self.paused_until = Some(now + ACCEPT_BACKOFF);
    }
}

/// A connection refused at the door (a limit reached): a best-effort 503 on a
/// plain socket, then it is dropped. The caller logs it.
pub fn refuse(transport: Transport, why: &str, wall: SystemTime) {
    if let Transport::Plain(mut stream) = transport {
        answer_503(&mut stream, why, wall);
    }
}

fn answer_503(stream: &mut TcpStream, why: &str, wall: SystemTime) {
    let response = Response::text(Status::ServiceUnavailable, why).closing();
    let _ = stream.write(&response.to_bytes(wall));
    // Drain what the client already sent so close() sends FIN rather than RST.
    let mut sink = [0u8; 1024];
    let _ = stream.read(&mut sink);
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

/// With `reuse_port` (SO_REUSEPORT), every process listening on the address
/// gets a share of its connections from the kernel.
fn bind_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

fn is_out_of_descriptors(err: &io::Error) -> bool {
    // EMFILE (24): this process; ENFILE (23): the whole system.
    matches!(err.raw_os_error(), Some(23) | Some(24))
}

//! Every setting the server has: its default, its command-line flag and its
//! environment variable, each flag declared once.
//!
//! One table, `FLAGS`, holds each flag's name, value placeholder and help,
//! the function that applies a value to a [`Config`] and the function that
//! shows the flag's field, which `--help` calls on `Config::default()`. The
//! parser, `--help` and the environment are all read off that table, so
//! they cannot drift: a flag in it is parsed, listed with its real default,
//! and settable as `CHAT_` + its name in upper snake case (`--max-message`
//! is `CHAT_MAX_MESSAGE`), for a container or a systemd unit. The command
//! line wins over the environment.
//!
//! The table is written by hand rather than with a parser crate (clap): it
//! is all the parsing three dozen `--name value` flags need, a parser crate
//! would be one more runtime dependency and grow the release binary of a
//! daemon meant for small hosts by hundreds of KiB, and one table is at once
//! the parser, the help and the environment.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use redis_url::RedisUrl;

mod redis_url;

/// The resolved configuration of one server run.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub www: PathBuf,
    /// Explicit `--allowed-origin` values; empty means "the server's own origins".
    pub allowed_origins: Vec<String>,
    pub max_message: usize,
    pub ping_interval: Duration,
    pub pong_wait: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub otp_ttl: Duration,
    pub max_queue: usize,
    /// How long a chat delivery may wait for others to share its write.
    pub write_delay: Duration,
    /// Open connections allowed; 0: as many as the file limit allows
    /// (`effective_max_connections`).
    pub max_connections: usize,
    /// Connections one address (an IPv6 /64) may hold; 0: no limit.
    pub max_connections_per_ip: usize,
    /// Bytes buffered for all clients together before the largest are cut off.
    pub max_memory: usize,
    /// Chat events a client may send per second, and in one burst.
    pub event_rate: usize,
    pub event_burst: usize,
    /// A separate listener for `/metrics`, which the public ones then refuse.
    pub metrics_listen: Option<SocketAddr>,
    /// `redis://[user:password@]host:port[/db]`: rooms and logins shared
    /// with every process using the same Redis and prefix.
    pub redis: Option<String>,
    pub redis_prefix: String,
    /// With `rediss://`: the CA that signed Redis's certificate (else the
    /// system's roots), and a client certificate if Redis asks for one.
    pub redis_ca: Option<PathBuf>,
    pub redis_cert: Option<PathBuf>,
    pub redis_key: Option<PathBuf>,
    /// Sentinels (`host:port`) that say where the master named
    /// `redis_master` is; then `redis`, if given, says only who to be there.
    pub redis_sentinels: Vec<String>,
    pub redis_master: Option<String>,
    pub redis_sentinel_password: Option<String>,
    /// Listen with SO_REUSEPORT, so several processes share one port.
    pub reuse_port: bool,
    /// The key that signs session tokens; without it, a random one per process.
    pub session_key: Option<PathBuf>,
    pub session_ttl: Duration,
    /// Messages kept per room for members who resume (0: none).
    pub history: usize,
    /// How long an empty room keeps its history.
    pub history_ttl: Duration,
    /// Bytes of history kept in all, before empty rooms' go.
    pub history_max_bytes: usize,
    /// Users a room may have before watchers see only its count.
    pub presence_max_users: usize,
    /// How often, at most, a big room's count is sent.
    pub presence_count_interval: Duration,
    /// The server API's key (`/api/...` is off without it).
    pub api_key: Option<PathBuf>,
    pub shutdown_grace: Duration,
    pub echo_path: Option<String>,
    pub echo_max_message: usize,
    pub users: Option<PathBuf>,
    pub tls_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub log_level: log::LevelFilter,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            www: PathBuf::from("www"),
            allowed_origins: Vec::new(),
            max_message: 512,
            ping_interval: Duration::from_secs(9),
            pong_wait: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            otp_ttl: Duration::from_secs(5),
            max_queue: 1 << 20,
            write_delay: Duration::ZERO,
            max_connections: 0,
            max_connections_per_ip: 256,
            max_memory: 64 << 20,
            event_rate: 20,
            event_burst: 50,
            metrics_listen: None,
            redis: None,
            redis_ca: None,
            redis_cert: None,
            redis_key: None,
            redis_sentinels: Vec::new(),
            redis_master: None,
            redis_sentinel_password: None,
            redis_prefix: "chat:".to_string(),
            reuse_port: false,
            session_key: None,
            session_ttl: Duration::from_secs(12 * 60 * 60),
            history: 100,
            history_ttl: Duration::from_secs(600),
            history_max_bytes: 16 << 20,
            presence_max_users: 1000,
            presence_count_interval: Duration::from_secs(5),
            api_key: None,
            shutdown_grace: Duration::from_secs(2),
            echo_path: None,
            echo_max_message: 16 << 20,
            users: None,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            log_level: log::LevelFilter::Info,
        }
    }
}

impl Config {
    /// `max_connections` with 0 resolved: as many as the process's file
    /// limit allows, less headroom for listeners, Redis links, logs and files.
    pub fn effective_max_connections(&self) -> usize {
        match self.max_connections {
            0 => connections_the_file_limit_allows(),
            limit => limit,
        }
    }
}

/// File descriptors kept back from connections under the file limit.
const FILE_HEADROOM: usize = 64;

/// The soft file limit minus `FILE_HEADROOM` (1024 when the limit is unknown).
fn connections_the_file_limit_allows() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|value| value.parse::<usize>().ok())
        .unwrap_or(1024);
    soft.saturating_sub(FILE_HEADROOM).max(1)
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Serve(Box<Config>),
    Help,
    /// Read a password from stdin and print its hash for a users file.
    HashPassword,
    /// End every session of `user` issued until now, for every server that
    /// signs sessions with `session_key`.
    Revoke {
        user: String,
        session_key: PathBuf,
    },
}

/// A word on the command line that asks for something else than serving.
struct Subcommand {
    name: &'static str,
    help: &'static str,
    /// Builds the command from the arguments after the name.
    parse: fn(Vec<String>) -> Result<Command, String>,
}

const SUBCOMMANDS: &[Subcommand] = &[
    Subcommand {
        name: "hash-password",
        help: "reads a password on stdin, prints its hash",
        parse: |_| Ok(Command::HashPassword),
    },
    Subcommand {
        name: "revoke",
        help: "USER --session-key FILE: ends every session of USER issued until now",
        parse: parse_revoke,
    },
];

/// `revoke USER --session-key FILE` (the flag before or after the name).
fn parse_revoke(args: Vec<String>) -> Result<Command, String> {
    let (mut user, mut session_key) = (None, None);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if let Some(value) = arg.strip_prefix("--session-key=") {
            session_key = Some(PathBuf::from(value));
        } else if arg == "--session-key" {
            let value = args.next().ok_or("--session-key needs a value")?;
            session_key = Some(PathBuf::from(value));
        } else if arg.starts_with('-') {
            return Err(format!("revoke: unknown argument '{arg}'"));
        } else if user.is_none() {
            user = Some(arg);
        } else {
            return Err(format!(
                "revoke: one user at a time ('{arg}' is one too many)"
            ));
        }
    }
    match (user, session_key) {
        (Some(user), Some(session_key)) => Ok(Command::Revoke { user, session_key }),
        (None, _) => Err("revoke: which user? (chat-server revoke USER --session-key FILE)".into()),
        (_, None) => Err(
            "revoke: --session-key FILE is needed (the key file the servers sign sessions with)"
                .into(),
        ),
    }
}

/// What a flag takes after its name.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Takes {
    /// Nothing: a switch. Its variable takes 1/true/yes or 0/false/no/empty.
    Nothing,
    /// One value; given twice, the last wins.
    One(&'static str),
    /// One value per use, repeatable; its variable takes a comma-separated list.
    Many(&'static str),
}

/// One flag, declared once: the parser, `--help` and the environment read it.
struct Flag {
    name: &'static str,
    takes: Takes,
    help: &'static str,
    /// Sets the flag's field from one value (`""` for a switch).
    apply: fn(&mut Config, &str) -> Result<(), String>,
    /// The flag's field as a value its variable accepts (a repeatable flag's
    /// comma-separated); `None` while unset.
    show: fn(&Config) -> Option<String>,
    /// The default `--help` shows when `show` finds the field unset: off, or
    /// what the server works out at run time.
    unset: &'static str,
}

impl Flag {
    /// `CHAT_` and the name in upper snake case: `--max-message` is `CHAT_MAX_MESSAGE`.
    fn env_var(&self) -> String {
        let bare = self.name.trim_start_matches('-');
        format!("CHAT_{}", bare.to_ascii_uppercase().replace('-', "_"))
    }

    fn placeholder(&self) -> &'static str {
        match self.takes {
            Takes::Nothing => "",
            Takes::One(placeholder) | Takes::Many(placeholder) => placeholder,
        }
    }

    /// The default as `--help` prints it, from `defaults`.
    fn default_text(&self, defaults: &Config) -> String {
        (self.show)(defaults).unwrap_or_else(|| self.unset.to_string())
    }

    /// Applies the flag's environment variable, if it is set and not empty.
    fn apply_env(
        &self,
        config: &mut Config,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), String> {
        let var = self.env_var();
        let Some(value) = env(&var) else {
            return Ok(());
        };
        let applied = match self.takes {
            Takes::Nothing => switch_value(&value).and_then(|on| match on {
                true => (self.apply)(config, ""),
                false => Ok(()),
            }),
            Takes::One(_) if value.is_empty() => Ok(()),
            Takes::One(_) => (self.apply)(config, &value),
            Takes::Many(_) => value
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .try_for_each(|item| (self.apply)(config, item)),
        };
        applied.map_err(|why| format!("{var}={value}: {why}"))
    }
}

/// A switch's variable: on or off, never a guess.
fn switch_value(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" | "" => Ok(false),
        _ => Err("expected 1, true or yes (on), or 0, false, no or nothing (off)".into()),
    }
}

/// Stores a parsed value in its field.
fn set<T>(field: &mut T, value: Result<T, String>) -> Result<(), String> {
    *field = value?;
    Ok(())
}

fn path(value: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(value))
}

fn address(value: &str, example: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("not an address like {example}"))
}

fn shown_path(path: &Option<PathBuf>) -> Option<String> {
    path.as_ref().map(|path| path.display().to_string())
}

const FLAGS: &[Flag] = &[
    Flag {
        name: "--listen",
        takes: Takes::One("ADDR"),
        help: "address to listen on (port 0 picks a free one)",
        apply: |c, v| set(&mut c.listen, address(v, "127.0.0.1:8080")),
        show: |c| Some(c.listen.to_string()),
        unset: "",
    },
    Flag {
        name: "--www",
        takes: Takes::One("DIR"),
        help: "web root served at /",
        apply: |c, v| set(&mut c.www, path(v)),
        show: |c| Some(c.www.display().to_string()),
        unset: "",
    },
    Flag {
        name: "--allowed-origin",
        takes: Takes::Many("ORIGIN"),
        help: "Origin allowed to open /ws, repeatable; replaces the default",
        apply: |c, v| {
            let origin = v.trim_end_matches('/').to_ascii_lowercase();
            c.allowed_origins.push(origin);
            Ok(())
        },
        show: |c| (!c.allowed_origins.is_empty()).then(|| c.allowed_origins.join(",")),
        unset: "the server's own: http(s)://localhost:PORT and http(s)://127.0.0.1:PORT",
    },
    Flag {
        name: "--max-message",
        takes: Takes::One("BYTES"),
        help: "largest WebSocket message accepted",
        apply: |c, v| set(&mut c.max_message, parse_message_size(v)),
        show: |c| Some(c.max_message.to_string()),
        unset: "",
    },
    Flag {
        name: "--ping-interval",
        takes: Takes::One("DURATION"),
        help: "time between server pings",
        apply: |c, v| set(&mut c.ping_interval, parse_duration(v)),
        show: |c| Some(show_duration(c.ping_interval)),
        unset: "",
    },
    Flag {
        name: "--pong-wait",
        takes: Takes::One("DURATION"),
        help: "silence after a ping before a client is dropped",
        apply: |c, v| set(&mut c.pong_wait, parse_duration(v)),
        show: |c| Some(show_duration(c.pong_wait)),
        unset: "",
    },
    Flag {
        name: "--header-timeout",
        takes: Takes::One("DURATION"),
        help: "time allowed to send an HTTP request head",
        apply: |c, v| set(&mut c.header_timeout, parse_duration(v)),
        show: |c| Some(show_duration(c.header_timeout)),
        unset: "",
    },
    Flag {
        name: "--idle-timeout",
        takes: Takes::One("DURATION"),
        help: "keep-alive idle time before an HTTP connection is closed",
        apply: |c, v| set(&mut c.idle_timeout, parse_duration(v)),
        show: |c| Some(show_duration(c.idle_timeout)),
        unset: "",
    },
    Flag {
        name: "--otp-ttl",
        takes: Takes::One("DURATION"),
        help: "lifetime of a one-time password",
        apply: |c, v| set(&mut c.otp_ttl, parse_duration(v)),
        show: |c| Some(show_duration(c.otp_ttl)),
        unset: "",
    },
    Flag {
        name: "--max-queue",
        takes: Takes::One("BYTES"),
        help: "outbound bytes queued for one client before it is cut off as a slow consumer",
        apply: |c, v| set(&mut c.max_queue, parse_positive(v)),
        show: |c| Some(c.max_queue.to_string()),
        unset: "",
    },
    Flag {
        name: "--write-delay",
        takes: Takes::One("DURATION"),
        help: "hold chat messages this long so a client's messages share one write: less CPU, more latency",
        apply: |c, v| set(&mut c.write_delay, parse_delay(v)),
        show: |c| Some(show_duration(c.write_delay)),
        unset: "",
    },
    Flag {
        name: "--max-connections",
        takes: Takes::One("N"),
        help: "open connections allowed; 0: as many as the file limit allows",
        apply: |c, v| set(&mut c.max_connections, parse_whole(v)),
        show: |c| (c.max_connections != 0).then(|| c.max_connections.to_string()),
        unset: "the process's file limit minus 64",
    },
    Flag {
        name: "--max-connections-per-ip",
        takes: Takes::One("N"),
        help: "connections one address (IPv6: one /64) may hold; 0: no limit",
        apply: |c, v| set(&mut c.max_connections_per_ip, parse_whole(v)),
        show: |c| Some(c.max_connections_per_ip.to_string()),
        unset: "",
    },
    Flag {
        name: "--max-memory",
        takes: Takes::One("BYTES"),
        help: "bytes buffered for all clients together (queued output, partial requests); past it the largest are cut off",
        apply: |c, v| set(&mut c.max_memory, parse_positive(v)),
        show: |c| Some(c.max_memory.to_string()),
        unset: "",
    },
    Flag {
        name: "--event-rate",
        takes: Takes::One("N"),
        help: "chat events one client may send per second; past it its input pauses",
        apply: |c, v| {
            set(
                &mut c.event_rate,
                parse_positive(v).map(|n| n.min(MAX_EVENT_RATE)),
            )
        },
        show: |c| Some(c.event_rate.to_string()),
        unset: "",
    },
    Flag {
        name: "--event-burst",
        takes: Takes::One("N"),
        help: "chat events one client may send in a burst above --event-rate",
        apply: |c, v| set(&mut c.event_burst, parse_positive(v)),
        show: |c| Some(c.event_burst.to_string()),
        unset: "",
    },
    Flag {
        name: "--metrics-listen",
        takes: Takes::One("ADDR"),
        help: "serve /metrics on this separate plain-HTTP address only",
        apply: |c, v| {
            set(
                &mut c.metrics_listen,
                address(v, "127.0.0.1:9090").map(Some),
            )
        },
        show: |c| c.metrics_listen.map(|address| address.to_string()),
        unset: "on every listener",
    },
    Flag {
        name: "--redis",
        takes: Takes::One("URL"),
        help: "redis://[user:password@]host:port[/db] (rediss:// for TLS): share rooms and logins with every process on it",
        apply: |c, v| {
            RedisUrl::parse(v)?;
            c.redis = Some(v.to_string());
            Ok(())
        },
        show: |c| c.redis.clone(),
        unset: "off",
    },
    Flag {
        name: "--redis-prefix",
        takes: Takes::One("PREFIX"),
        help: "prefix of every Redis key and channel",
        apply: |c, v| set(&mut c.redis_prefix, Ok(v.to_string())),
        show: |c| Some(c.redis_prefix.clone()),
        unset: "",
    },
    Flag {
        name: "--redis-ca",
        takes: Takes::One("FILE"),
        help: "with rediss://: PEM CA certificates that Redis's certificate must chain to",
        apply: |c, v| set(&mut c.redis_ca, path(v).map(Some)),
        show: |c| shown_path(&c.redis_ca),
        unset: "the system's roots",
    },
    Flag {
        name: "--redis-cert",
        takes: Takes::One("FILE"),
        help: "with rediss://: a PEM client certificate chain, for a Redis that asks for one (with --redis-key)",
        apply: |c, v| set(&mut c.redis_cert, path(v).map(Some)),
        show: |c| shown_path(&c.redis_cert),
        unset: "none",
    },
    Flag {
        name: "--redis-key",
        takes: Takes::One("FILE"),
        help: "PEM private key for --redis-cert",
        apply: |c, v| set(&mut c.redis_key, path(v).map(Some)),
        show: |c| shown_path(&c.redis_key),
        unset: "none",
    },
    Flag {
        name: "--redis-sentinel",
        takes: Takes::Many("HOST:PORT"),
        help: "a Redis Sentinel that says where the master (--redis-master) is, repeatable; --redis then gives only the password, db and TLS",
        apply: |c, v| {
            RedisUrl::parse(&format!("redis://{v}"))
                .ok()
                .filter(|url| url.user.is_none() && url.password.is_none() && url.db == 0)
                .ok_or("expected HOST:PORT")?;
            c.redis_sentinels.push(v.to_string());
            Ok(())
        },
        show: |c| (!c.redis_sentinels.is_empty()).then(|| c.redis_sentinels.join(",")),
        unset: "none",
    },
    Flag {
        name: "--redis-master",
        takes: Takes::One("NAME"),
        help: "with --redis-sentinel: the name the sentinels know the master by",
        apply: |c, v| set(&mut c.redis_master, Ok(Some(v.to_string()))),
        show: |c| c.redis_master.clone(),
        unset: "none",
    },
    Flag {
        name: "--redis-sentinel-password",
        takes: Takes::One("PASSWORD"),
        help: "with --redis-sentinel: the sentinels' password (requirepass), if they ask for one",
        apply: |c, v| set(&mut c.redis_sentinel_password, Ok(Some(v.to_string()))),
        show: |c| {
            c.redis_sentinel_password
                .as_ref()
                .map(|_| "(set)".to_string())
        },
        unset: "none",
    },
    Flag {
        name: "--reuse-port",
        takes: Takes::Nothing,
        help: "listen with SO_REUSEPORT, so several processes share one port",
        apply: |c, _| set(&mut c.reuse_port, Ok(true)),
        show: |c| c.reuse_port.then(|| "on".to_string()),
        unset: "off",
    },
    Flag {
        name: "--session-key",
        takes: Takes::One("FILE"),
        help: "32 or more secret bytes that sign session tokens, so sessions outlive a restart",
        apply: |c, v| set(&mut c.session_key, path(v).map(Some)),
        show: |c| shown_path(&c.session_key),
        unset: "a random key per process",
    },
    Flag {
        name: "--session-ttl",
        takes: Takes::One("DURATION"),
        help: "how long a login's session lasts",
        apply: |c, v| set(&mut c.session_ttl, parse_duration(v)),
        show: |c| Some(show_duration(c.session_ttl)),
        unset: "",
    },
    Flag {
        name: "--history",
        takes: Takes::One("N"),
        help: "messages kept per room for members who resume or join; 0 keeps none",
        apply: |c, v| set(&mut c.history, parse_whole(v)),
        show: |c| Some(c.history.to_string()),
        unset: "",
    },
    Flag {
        name: "--history-ttl",
        takes: Takes::One("DURATION"),
        help: "how long an empty room keeps its history",
        apply: |c, v| set(&mut c.history_ttl, parse_duration(v)),
        show: |c| Some(show_duration(c.history_ttl)),
        unset: "",
    },
    Flag {
        name: "--history-max-bytes",
        takes: Takes::One("BYTES"),
        help: "history kept in all rooms together; past it empty rooms' goes first",
        apply: |c, v| set(&mut c.history_max_bytes, parse_positive(v)),
        show: |c| Some(c.history_max_bytes.to_string()),
        unset: "",
    },
    Flag {
        name: "--presence-max-users",
        takes: Takes::One("N"),
        help: "users a room may have before presence watchers see only its count",
        apply: |c, v| set(&mut c.presence_max_users, parse_whole(v)),
        show: |c| Some(c.presence_max_users.to_string()),
        unset: "",
    },
    Flag {
        name: "--presence-count-interval",
        takes: Takes::One("DURATION"),
        help: "how often, at most, a big room's presence_count is sent",
        apply: |c, v| set(&mut c.presence_count_interval, parse_duration(v)),
        show: |c| Some(show_duration(c.presence_count_interval)),
        unset: "",
    },
    Flag {
        name: "--api-key",
        takes: Takes::One("FILE"),
        help: "turn on the server API (/api/...): its bearer token, 32 or more characters",
        apply: |c, v| set(&mut c.api_key, Ok(Some(PathBuf::from(v)))),
        show: |c| c.api_key.as_ref().map(|p| p.display().to_string()),
        unset: "off",
    },
    Flag {
        name: "--shutdown-grace",
        takes: Takes::One("DURATION"),
        help: "time to flush close frames on SIGINT/SIGTERM",
        apply: |c, v| set(&mut c.shutdown_grace, parse_duration(v)),
        show: |c| Some(show_duration(c.shutdown_grace)),
        unset: "",
    },
    Flag {
        name: "--echo-path",
        takes: Takes::One("PATH"),
        help: "serve an unauthenticated echo WebSocket here, for conformance tests only",
        apply: |c, v| match v.starts_with('/') {
            true => set(&mut c.echo_path, Ok(Some(v.to_string()))),
            false => Err("must start with /".into()),
        },
        show: |c| c.echo_path.clone(),
        unset: "off",
    },
    Flag {
        name: "--echo-max-message",
        takes: Takes::One("BYTES"),
        help: "largest message on the echo route",
        apply: |c, v| set(&mut c.echo_max_message, parse_message_size(v)),
        show: |c| Some(c.echo_max_message.to_string()),
        unset: "",
    },
    Flag {
        name: "--users",
        takes: Takes::One("FILE"),
        help: "accounts file, one 'name:hash' per line",
        apply: |c, v| set(&mut c.users, path(v).map(Some)),
        show: |c| shown_path(&c.users),
        unset: "none; demo account percy/123",
    },
    Flag {
        name: "--tls-cert",
        takes: Takes::One("FILE"),
        help: "PEM certificate chain; with --tls-key, --listen speaks HTTPS/WSS",
        apply: |c, v| set(&mut c.tls_cert, path(v).map(Some)),
        show: |c| shown_path(&c.tls_cert),
        unset: "none",
    },
    Flag {
        name: "--tls-key",
        takes: Takes::One("FILE"),
        help: "PEM private key for --tls-cert",
        apply: |c, v| set(&mut c.tls_key, path(v).map(Some)),
        show: |c| shown_path(&c.tls_key),
        unset: "none",
    },
    Flag {
        name: "--tls-listen",
        takes: Takes::One("ADDR"),
        help: "a separate HTTPS/WSS address; --listen then stays plain HTTP",
        apply: |c, v| set(&mut c.tls_listen, address(v, "127.0.0.1:8443").map(Some)),
        show: |c| c.tls_listen.map(|address| address.to_string()),
        unset: "none",
    },
    Flag {
        name: "--log-level",
        takes: Takes::One("LEVEL"),
        help: "off, error, warn, info, debug or trace",
        apply: |c, v| {
            set(
                &mut c.log_level,
                v.parse().map_err(|_| "not a log level".into()),
            )
        },
        show: |c| Some(c.log_level.as_str().to_ascii_lowercase()),
        unset: "",
    },
];

/// The text printed for `--help`, every default shown from `Config::default()`.
pub fn help_text() -> String {
    let defaults = Config::default();
    let mut text = String::from(
        "chat-server: a WebSocket chat server on one event loop\n\nUSAGE:\n    chat-server [FLAGS]\n",
    );
    for subcommand in SUBCOMMANDS {
        let _ = writeln!(
            text,
            "    chat-server {:<15} ({})",
            subcommand.name, subcommand.help
        );
    }
    text.push_str("\nFLAGS:\n");
    for flag in FLAGS {
        let left = format!("{} {}", flag.name, flag.placeholder());
        let _ = writeln!(
            text,
            "    {:<28} {} [default: {}] [env: {}]",
            left.trim_end(),
            flag.help,
            flag.default_text(&defaults),
            flag.env_var()
        );
    }
    text.push_str("    --help                       print this help\n\n");
    text.push_str(
        "Durations take a unit: 300ms, 9s, 1m, 12h (at most 24h).\n\
         Each flag may instead be set by its environment variable (the command line\n\
         wins); an empty variable is unset. A switch's variable takes 1, true or yes\n\
         for on and 0, false or no for off; a repeatable flag's, a comma-separated list.\n",
    );
    text
}

/// Parses the command line (without the program name), then, for each flag
/// the command line did not give, its environment variable read by `env`
/// (`|name| std::env::var(name).ok()` in the binary; a test passes its own).
pub fn parse_args<I>(args: I, env: impl Fn(&str) -> Option<String>) -> Result<Command, String>
where
    I: IntoIterator<Item = String>,
{
    let mut config = Config::default();
    let mut given = [false; FLAGS.len()];
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--help" || arg == "-h" {
            return Ok(Command::Help);
        }
        if let Some(subcommand) = SUBCOMMANDS.iter().find(|sub| sub.name == arg) {
            return (subcommand.parse)(args.collect());
        }
        let (name, inline_value) = match arg.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (arg.clone(), None),
        };
        let Some(index) = FLAGS.iter().position(|flag| flag.name == name) else {
            return Err(format!("unknown argument '{arg}' (see --help)"));
        };
        let flag = &FLAGS[index];
        given[index] = true;
        let value = match (flag.takes, inline_value) {
            (Takes::Nothing, Some(_)) => return Err(format!("{name} takes no value")),
            (Takes::Nothing, None) => String::new(),
            (_, Some(value)) => value,
            (_, None) => args.next().ok_or_else(|| format!("{name} needs a value"))?,
        };
        (flag.apply)(&mut config, &value).map_err(|why| format!("{name} {value}: {why}"))?;
    }
    for (flag, given) in FLAGS.iter().zip(given) {
        if !given {
            flag.apply_env(&mut config, &env)?;
        }
    }
    check_redis_flags(&config)?;
    Ok(Command::Serve(Box::new(config)))
}

/// The `--redis*` flags that only mean something together.
fn check_redis_flags(config: &Config) -> Result<(), String> {
    let sentinel = !config.redis_sentinels.is_empty();
    if sentinel && config.redis_master.is_none() {
        return Err("--redis-sentinel needs --redis-master NAME".into());
    }
    if !sentinel && config.redis_master.is_some() {
        return Err("--redis-master needs --redis-sentinel".into());
    }
    if !sentinel && config.redis_sentinel_password.is_some() {
        return Err("--redis-sentinel-password needs --redis-sentinel".into());
    }
    let tls = config
        .redis
        .as_deref()
        .is_some_and(|url| url.starts_with("rediss://"));
    let tls_files = [&config.redis_ca, &config.redis_cert, &config.redis_key];
    if !tls && tls_files.iter().any(|file| file.is_some()) {
        return Err("--redis-ca, --redis-cert and --redis-key need a rediss:// --redis URL".into());
    }
    Ok(())
}

/// Past a million events a second the limit means nothing (and one event's
/// interval, a microsecond, is the finest the rate limiter keeps).
const MAX_EVENT_RATE: usize = 1_000_000;

/// A message size: positive and at most 1 GiB (a frame's bytes are counted in 32 bits).
fn parse_message_size(value: &str) -> Result<usize, String> {
    match parse_positive(value)? {
        size if size <= 1 << 30 => Ok(size),
        _ => Err("must be at most 1073741824 (1 GiB)".into()),
    }
}

fn parse_positive(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) | Err(_) => Err("must be a positive whole number".into()),
        Ok(n) => Ok(n),
    }
}

fn parse_whole(value: &str) -> Result<usize, String> {
    value.parse().map_err(|_| "not a whole number".into())
}

/// Parses `300ms`, `9s`, `1m` (a number and a unit; the unit is required).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let duration = parse_delay(value)?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

/// The longest duration any setting takes: deadlines are `now + duration`,
/// which must not overflow.
const LONGEST: Duration = Duration::from_secs(24 * 60 * 60);

/// A duration like `250ms`, `9s`, `2m` or `12h`; zero allowed, at most a day.
pub fn parse_delay(value: &str) -> Result<Duration, String> {
    parse_span(value, LONGEST).map_err(|why| why.replace("{longest}", "24 hours"))
}

/// The longest ban.
const LONGEST_BAN: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How long a ban lasts: like `parse_delay`, also in days (`7d`), longer
/// than zero and at most a year.
pub fn parse_ban_length(value: &str) -> Result<Duration, String> {
    match parse_span(value, LONGEST_BAN).map_err(|why| why.replace("{longest}", "365 days"))? {
        length if length.is_zero() => Err("must be longer than zero".into()),
        length => Ok(length),
    }
}

/// A number and a unit (`ms`, `s`, `m`, `h`, `d`) of at most `longest`.
fn parse_span(value: &str, longest: Duration) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| "expected a number with a unit, like 9s")?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        "d" if longest > LONGEST => number.checked_mul(86_400_000),
        _ if longest > LONGEST => return Err("unit must be ms, s, m, h or d".into()),
        _ => return Err("unit must be ms, s, m or h".into()),
    };
    match millis.map(Duration::from_millis) {
        Some(duration) if duration <= longest => Ok(duration),
        _ => Err("must be at most {longest}".into()),
    }
}

/// A duration as `parse_delay` reads it, in the largest unit that is exact.
fn show_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if millis.is_multiple_of(size) && (millis > 0 || unit == "s") {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

#[cfg(test)]
mod tests;

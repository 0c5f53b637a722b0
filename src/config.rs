//! Every setting the server has, with its default and its command-line flag.
//!
//! Parsing is by hand (a dozen flags do not need a parser crate); `--help` is
//! generated from the same table the parser uses, so the two cannot drift.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
            redis_prefix: "chat:".to_string(),
            reuse_port: false,
            session_key: None,
            session_ttl: Duration::from_secs(12 * 60 * 60),
            history: 100,
            history_ttl: Duration::from_secs(600),
            history_max_bytes: 16 << 20,
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
}

/// One flag: its name, its value's placeholder, and its help text (default included).
struct Flag {
    name: &'static str,
    value: &'static str,
    help: &'static str,
}

const FLAGS: &[Flag] = &[
    Flag {
        name: "--listen",
        value: "ADDR",
        help: "address to listen on [default: 127.0.0.1:8080]",
    },
    Flag {
        name: "--www",
        value: "DIR",
        help: "web root served at / [default: www]",
    },
    Flag {
        name: "--allowed-origin",
        value: "ORIGIN",
        help: "Origin allowed to open /ws, repeatable [default: http(s)://localhost:PORT and http(s)://127.0.0.1:PORT]",
    },
    Flag {
        name: "--max-message",
        value: "BYTES",
        help: "largest WebSocket message accepted [default: 512]",
    },
    Flag {
        name: "--ping-interval",
        value: "DURATION",
        help: "time between server pings [default: 9s]",
    },
    Flag {
        name: "--pong-wait",
        value: "DURATION",
        help: "silence after a ping before a client is dropped [default: 10s]",
    },
    Flag {
        name: "--header-timeout",
        value: "DURATION",
        help: "time allowed to send an HTTP request head [default: 10s]",
    },
    Flag {
        name: "--idle-timeout",
        value: "DURATION",
        help: "keep-alive idle time before an HTTP connection is closed [default: 60s]",
    },
    Flag {
        name: "--otp-ttl",
        value: "DURATION",
        help: "lifetime of a one-time password [default: 5s]",
    },
    Flag {
        name: "--max-queue",
        value: "BYTES",
        help: "outbound bytes queued for one client before it is cut off as a slow consumer [default: 1048576]",
    },
    Flag {
        name: "--write-delay",
        value: "DURATION",
        help: "hold chat messages this long so a client's messages share one write: less CPU, more latency [default: 0s]",
    },
    Flag {
        name: "--max-connections",
        value: "N",
        help: "open connections allowed; 0: as many as the file limit allows [default: the process's file limit minus 64]",
    },
    Flag {
        name: "--max-connections-per-ip",
        value: "N",
        help: "connections one address (IPv6: one /64) may hold; 0 for no limit [default: 256]",
    },
    Flag {
        name: "--max-memory",
        value: "BYTES",
        help: "bytes buffered for all clients together (queued output, partial requests); past it the largest are cut off [default: 67108864]",
    },
    Flag {
        name: "--event-rate",
        value: "N",
        help: "chat events one client may send per second; past it its input pauses [default: 20]",
    },
    Flag {
        name: "--event-burst",
        value: "N",
        help: "chat events one client may send in a burst above --event-rate [default: 50]",
    },
    Flag {
        name: "--metrics-listen",
        value: "ADDR",
        help: "serve /metrics on this separate plain-HTTP address only [default: on every listener]",
    },
    Flag {
        name: "--redis",
        value: "URL",
        help: "redis://[user:password@]host:port[/db]: share rooms and logins with every process on it [default: off]",
    },
    Flag {
        name: "--redis-prefix",
        value: "PREFIX",
        help: "prefix of every Redis key and channel [default: chat:]",
    },
    Flag {
        name: "--reuse-port",
        value: "",
        help: "listen with SO_REUSEPORT, so several processes share one port [default: off]",
    },
    Flag {
        name: "--session-key",
        value: "FILE",
        help: "32 or more secret bytes that sign session tokens, so sessions outlive a restart [default: a random key per process]",
    },
    Flag {
        name: "--session-ttl",
        value: "DURATION",
        help: "how long a login's session lasts [default: 12h]",
    },
    Flag {
        name: "--history",
        value: "N",
        help: "messages kept per room for members who resume or join; 0 keeps none [default: 100]",
    },
    Flag {
        name: "--history-ttl",
        value: "DURATION",
        help: "how long an empty room keeps its history [default: 10m]",
    },
    Flag {
        name: "--history-max-bytes",
        value: "BYTES",
        help: "history kept in all rooms together; past it empty rooms' goes first [default: 16777216]",
    },
    Flag {
        name: "--shutdown-grace",
        value: "DURATION",
        help: "time to flush close frames on SIGINT/SIGTERM [default: 2s]",
    },
    Flag {
        name: "--echo-path",
        value: "PATH",
        help: "serve an unauthenticated echo WebSocket here, for conformance tests only [default: off]",
    },
    Flag {
        name: "--echo-max-message",
        value: "BYTES",
        help: "largest message on the echo route [default: 16777216]",
    },
    Flag {
        name: "--users",
        value: "FILE",
        help: "accounts file, one 'name:hash' per line [default: none; demo account percy/123]",
    },
    Flag {
        name: "--tls-cert",
        value: "FILE",
        help: "PEM certificate chain; with --tls-key, --listen speaks HTTPS/WSS [default: none]",
    },
    Flag {
        name: "--tls-key",
        value: "FILE",
        help: "PEM private key for --tls-cert [default: none]",
    },
    Flag {
        name: "--tls-listen",
        value: "ADDR",
        help: "a separate HTTPS/WSS address; --listen then stays plain HTTP [default: none]",
    },
    Flag {
        name: "--log-level",
        value: "LEVEL",
        help: "off, error, warn, info, debug or trace [default: info]",
    },
];

/// The text printed for `--help`.
pub fn help_text() -> String {
    let mut text = String::from(
        "chat-server: a WebSocket chat server on one event loop\n\n\
         USAGE:\n    chat-server [FLAGS]\n    chat-server hash-password   (reads a password on stdin, prints its hash)\n\n\
         FLAGS:\n",
    );
    for flag in FLAGS {
        let left = format!("{} {}", flag.name, flag.value);
        let left = left.trim_end();
        text.push_str(&format!("    {left:<28} {}\n", flag.help));
    }
    text.push_str("    --help                       print this help\n\n");
    text.push_str("Durations take a unit: 300ms, 9s, 1m, 12h (at most 24h).\n");
    text
}

/// Parses the command line (without the program name).
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut config = Config::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--help" || arg == "-h" {
            return Ok(Command::Help);
        }
        if arg == "hash-password" {
            return Ok(Command::HashPassword);
        }
        let (name, inline_value) = match arg.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (arg.clone(), None),
        };
        let Some(flag) = FLAGS.iter().find(|flag| flag.name == name) else {
            return Err(format!("unknown argument '{arg}' (see --help)"));
        };
        if flag.value.is_empty() {
            // A switch: no value.
            if inline_value.is_some() {
                return Err(format!("{name} takes no value"));
            }
            apply(&mut config, &name, "")?;
            continue;
        }
        let value = match inline_value.or_else(|| args.next()) {
            Some(value) => value,
            None => return Err(format!("{name} needs a value")),
        };
        apply(&mut config, &name, &value).map_err(|why| format!("{name} {value}: {why}"))?;
    }
    Ok(Command::Serve(Box::new(config)))
}

fn apply(config: &mut Config, name: &str, value: &str) -> Result<(), String> {
    match name {
        "--listen" => {
            config.listen = value
                .parse()
                .map_err(|_| "not an address like 127.0.0.1:8080")?
        }
        "--www" => config.www = PathBuf::from(value),
        "--allowed-origin" => config
            .allowed_origins
            .push(value.trim_end_matches('/').to_ascii_lowercase()),
        "--max-message" => config.max_message = parse_message_size(value)?,
        "--ping-interval" => config.ping_interval = parse_duration(value)?,
        "--pong-wait" => config.pong_wait = parse_duration(value)?,
        "--header-timeout" => config.header_timeout = parse_duration(value)?,
        "--idle-timeout" => config.idle_timeout = parse_duration(value)?,
        "--otp-ttl" => config.otp_ttl = parse_duration(value)?,
        "--max-queue" => config.max_queue = parse_positive(value)?,
        "--write-delay" => config.write_delay = parse_delay(value)?,
        "--max-connections" => {
            config.max_connections = value.parse().map_err(|_| "not a whole number")?
        }
        "--max-connections-per-ip" => {
            config.max_connections_per_ip = value.parse().map_err(|_| "not a whole number")?
        }
        "--max-memory" => config.max_memory = parse_positive(value)?,
        "--event-rate" => config.event_rate = parse_positive(value)?.min(MAX_EVENT_RATE),
        "--event-burst" => config.event_burst = parse_positive(value)?,
        "--metrics-listen" => {
            config.metrics_listen = Some(
                value
                    .parse()
                    .map_err(|_| "not an address like 127.0.0.1:9090")?,
            )
        }
        "--shutdown-grace" => config.shutdown_grace = parse_duration(value)?,
        "--echo-path" if value.starts_with('/') => config.echo_path = Some(value.to_string()),
        "--echo-path" => return Err("must start with /".into()),
        "--echo-max-message" => config.echo_max_message = parse_message_size(value)?,
        "--users" => config.users = Some(PathBuf::from(value)),
        "--tls-listen" => {
            config.tls_listen = Some(
                value
                    .parse()
                    .map_err(|_| "not an address like 127.0.0.1:8443")?,
            )
        }
        "--tls-cert" => config.tls_cert = Some(PathBuf::from(value)),
        "--tls-key" => config.tls_key = Some(PathBuf::from(value)),
        "--log-level" => config.log_level = value.parse().map_err(|_| "not a log level")?,
        "--redis" => {
            crate::redis::Target::parse(value)?;
            config.redis = Some(value.to_string());
        }
        "--redis-prefix" => config.redis_prefix = value.to_string(),
        "--reuse-port" => config.reuse_port = true,
        "--session-key" => config.session_key = Some(PathBuf::from(value)),
        "--session-ttl" => config.session_ttl = parse_duration(value)?,
        "--history" => config.history = value.parse().map_err(|_| "not a whole number")?,
        "--history-ttl" => config.history_ttl = parse_duration(value)?,
        "--history-max-bytes" => config.history_max_bytes = parse_positive(value)?,
        _ => return Err("unknown flag".into()),
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
        _ => return Err("unit must be ms, s, m or h".into()),
    };
    match millis.map(Duration::from_millis) {
        Some(duration) if duration <= LONGEST => Ok(duration),
        _ => Err("must be at most 24 hours".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("9s"), Ok(Duration::from_secs(9)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("9").is_err());
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_delay("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_delay("24m"), Ok(Duration::from_secs(24 * 60)));
        assert!(parse_delay("1441m").is_err(), "over a day");
        assert!(parse_delay("18446744073709551615m").is_err(), "overflows");
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn flags_override_defaults() {
        let Ok(Command::Serve(config)) = parse(&[
            "--listen",
            "0.0.0.0:9000",
            "--max-message=1024",
            "--allowed-origin",
            "https://Example.com/",
            "--allowed-origin",
            "http://a.test",
        ]) else {
            panic!("expected serve");
        };
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.max_message, 1024);
        assert_eq!(
            config.allowed_origins,
            vec!["https://example.com", "http://a.test"]
        );
        assert_eq!(config.ping_interval, Duration::from_secs(9));
    }

    #[test]
    fn bad_flags_are_reported() {
        assert!(parse(&["--nope"]).unwrap_err().contains("unknown argument"));
        assert!(
            parse(&["--max-message"])
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(parse(&["--max-message", "0"]).is_err());
        assert!(parse(&["--listen", "nowhere"]).is_err());
    }

    #[test]
    fn zero_connections_means_the_file_limit() {
        let defaults = Config::default();
        assert_eq!(defaults.max_connections, 0);
        assert!(
            defaults.effective_max_connections() > 0,
            "the default server admits"
        );
        let Ok(Command::Serve(five)) = parse(&["--max-connections", "5"]) else {
            panic!("expected serve");
        };
        assert_eq!(five.effective_max_connections(), 5);
        assert!(parse(&["--max-connections", "0"]).is_ok());
    }

    #[test]
    fn help_lists_every_flag() {
        let help = help_text();
        for flag in FLAGS {
            assert!(help.contains(flag.name), "{} missing from help", flag.name);
        }
        assert!(matches!(parse(&["--help"]), Ok(Command::Help)));
    }
}

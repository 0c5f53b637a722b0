//! What a Redis says about itself (`--redis`): `INFO cpu commandstats stats`,
//! read over a short blocking connection of its own before and after each
//! measured step, so a step's PUBLISHes can be counted against the messages it
//! sent, Redis's CPU per message known to the microsecond, and the bytes it
//! wrote to its clients counted.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Longest wait for Redis to connect or answer.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Largest INFO reply accepted.
const MAX_REPLY: usize = 1 << 20;

/// A Redis to ask: its address, and AUTH arguments if the URL carries them.
#[derive(Clone, Debug)]
pub struct RedisInfo {
    pub url: String,
    addr: SocketAddr,
    auth: Vec<String>,
}

/// One reading: calls per command and the microseconds Redis spent in them
/// (`cmdstat_<name>:calls=N,usec=U`), and the CPU seconds Redis reports for
/// itself (`used_cpu_user`, `used_cpu_sys`), and the bytes it has written to
/// every client (`total_net_output_bytes`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    pub calls: BTreeMap<String, (u64, u64)>,
    pub cpu: Option<(f64, f64)>,
    pub net_output: Option<u64>,
    /// Bytes of the INFO reply this reading came in: Redis counts them in
    /// `total_net_output_bytes` once written, so in the next reading's.
    pub reply_bytes: u64,
}

impl Reading {
    /// Calls of `command` since `before`.
    pub fn calls_since(&self, before: &Reading, command: &str) -> u64 {
        let get = |r: &Reading| r.calls.get(command).map_or(0, |c| c.0);
        get(self).saturating_sub(get(before))
    }

    /// Microseconds Redis spent executing `command` since `before`.
    pub fn usec_since(&self, before: &Reading, command: &str) -> u64 {
        let get = |r: &Reading| r.calls.get(command).map_or(0, |c| c.1);
        get(self).saturating_sub(get(before))
    }

    /// Bytes Redis wrote to its clients since `before`, less the reply that
    /// carried `before` itself (the tool's own INFO; an AUTH's `+OK`, 5
    /// bytes, is not subtracted).
    pub fn output_since(&self, before: &Reading) -> Option<u64> {
        let (after, earlier) = self.net_output.zip(before.net_output)?;
        Some(
            after
                .saturating_sub(earlier)
                .saturating_sub(before.reply_bytes),
        )
    }
}

impl RedisInfo {
    /// `redis://[[user]:password@]host:port[/db]` (the database does not
    /// matter to INFO).
    pub fn parse(url: &str) -> Result<RedisInfo, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("--redis {url}: expected redis://HOST:PORT"))?;
        let rest = rest.split('/').next().unwrap_or("");
        let (auth, host) = match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let auth = match userinfo.split_once(':') {
                    Some(("", password)) => vec![password.to_string()],
                    Some((user, password)) => vec![user.to_string(), password.to_string()],
                    None => vec![userinfo.to_string()],
                };
                (auth, host)
            }
            None => (Vec::new(), rest),
        };
        let with_port = if host.rsplit_once(':').is_some() {
            host.to_string()
        } else {
            format!("{host}:6379")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|err| format!("--redis {url}: {err}"))?
            .next()
            .ok_or_else(|| format!("--redis {url}: no address"))?;
        Ok(RedisInfo {
            url: url.to_string(),
            addr,
            auth,
        })
    }

    /// Asks Redis for `INFO cpu commandstats stats`.
    pub fn read(&self) -> Result<Reading, String> {
        let fail = |what: &str, err: std::io::Error| format!("redis {}: {what}: {err}", self.url);
        let mut stream =
            TcpStream::connect_timeout(&self.addr, TIMEOUT).map_err(|e| fail("connect", e))?;
        stream
            .set_read_timeout(Some(TIMEOUT))
            .map_err(|e| fail("connect", e))?;
        let _ = stream.set_nodelay(true);
        let mut request = Vec::new();
        if !self.auth.is_empty() {
            let mut args = vec!["AUTH"];
            args.extend(self.auth.iter().map(String::as_str));
            request.extend(command(&args));
        }
        request.extend(command(&["INFO", "cpu", "commandstats", "stats"]));
        stream.write_all(&request).map_err(|e| fail("write", e))?;
        let mut reader = BufReader::new(stream);
        if !self.auth.is_empty() {
            let line = read_line(&mut reader).map_err(|e| fail("read", e))?;
            if !line.starts_with('+') {
                return Err(format!("redis {}: AUTH: {line}", self.url));
            }
        }
        let head = read_line(&mut reader).map_err(|e| fail("read", e))?;
        let len: usize = match head.strip_prefix('$').map(str::parse) {
            Some(Ok(len)) if len <= MAX_REPLY => len,
            _ => return Err(format!("redis {}: INFO answered {head:?}", self.url)),
        };
        let mut body = vec![0; len + 2];
        reader.read_exact(&mut body).map_err(|e| fail("read", e))?;
        body.truncate(len);
        let mut reading = parse_info(&String::from_utf8_lossy(&body));
        // `$LEN\r\n`, the body, `\r\n`.
        reading.reply_bytes = (head.len() + 2 + len + 2) as u64;
        Ok(reading)
    }
}

/// A command as a RESP array of bulk strings.
fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend(format!("${}\r\n{arg}\r\n", arg.len()).into_bytes());
    }
    out
}

fn read_line(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end().to_string())
}

/// The lines of an INFO reply that matter here.
fn parse_info(text: &str) -> Reading {
    let mut reading = Reading::default();
    let (mut user, mut system) = (None, None);
    for line in text.lines() {
        let Some((key, value)) = line.trim_end().split_once(':') else {
            continue;
        };
        if let Some(name) = key.strip_prefix("cmdstat_") {
            let field = |prefix: &str| {
                value
                    .split(',')
                    .find_map(|field| field.strip_prefix(prefix))
                    .and_then(|n| n.parse::<u64>().ok())
            };
            if let Some(calls) = field("calls=") {
                let usec = field("usec=").unwrap_or(0);
                reading.calls.insert(name.to_string(), (calls, usec));
            }
        } else if key == "used_cpu_user" {
            user = value.parse().ok();
        } else if key == "used_cpu_sys" {
            system = value.parse().ok();
        } else if key == "total_net_output_bytes" {
            reading.net_output = value.parse().ok();
        }
    }
    reading.cpu = user.zip(system);
    reading
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let r = RedisInfo::parse("redis://127.0.0.1:6380").unwrap();
        assert_eq!(r.addr.port(), 6380);
        assert!(r.auth.is_empty());
        let r = RedisInfo::parse("redis://bob:pw@127.0.0.1:6380/2").unwrap();
        assert_eq!(r.auth, ["bob", "pw"]);
        let r = RedisInfo::parse("redis://:pw@127.0.0.1").unwrap();
        assert_eq!(
            (r.auth.as_slice(), r.addr.port()),
            (&["pw".to_string()][..], 6379)
        );
        assert!(RedisInfo::parse("http://127.0.0.1:6379").is_err());
    }

    #[test]
    fn info_is_read_for_calls_and_cpu() {
        let text = "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:0.250000\r\n\
                    used_cpu_sys_children:0.000000\r\n\r\n# Commandstats\r\n\
                    cmdstat_publish:calls=12,usec=4,usec_per_call=0.33,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_evalsha:calls=10,usec=124,usec_per_call=12.40,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_script|load:calls=1,usec=54,usec_per_call=54.00\r\n\
                    # Stats\r\ntotal_net_input_bytes:900\r\ntotal_net_output_bytes:25000\r\n\
                    total_net_repl_output_bytes:0\r\n";
        let mut after = parse_info(text);
        assert_eq!(after.cpu, Some((0.25, 1.5)));
        assert_eq!(after.net_output, Some(25000));
        assert_eq!(after.calls["script|load"], (1, 54));
        let mut before = Reading::default();
        before.calls.insert("publish".into(), (2, 1));
        assert_eq!(after.calls_since(&before, "publish"), 10);
        assert_eq!(after.usec_since(&before, "publish"), 3);
        assert_eq!(after.calls_since(&before, "evalsha"), 10);
        assert_eq!(after.usec_since(&before, "evalsha"), 124);
        assert_eq!(after.calls_since(&before, "eval"), 0);
        assert_eq!(after.output_since(&before), None);
        before.net_output = Some(10000);
        before.reply_bytes = 3000;
        assert_eq!(after.output_since(&before), Some(12000));
        after.net_output = Some(11000);
        assert_eq!(after.output_since(&before), Some(0));
    }

    #[test]
    fn commands_are_resp_arrays() {
        assert_eq!(
            command(&["INFO", "cpu"]),
            b"*2\r\n$4\r\nINFO\r\n$3\r\ncpu\r\n"
        );
    }
}

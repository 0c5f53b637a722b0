//! A server's own Prometheus metrics (`GET /metrics`, chat-server's), read
//! once on a short connection of their own: what only the server can say,
//! such as how many bytes of room history it keeps.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);
/// Largest response read.
const MAX_RESPONSE: u64 = 4 << 20;

/// Every sample (`name{labels}` -> value) of the metrics at each URL, summed
/// over the URLs (one per process).
pub fn read_all(urls: &[String]) -> Result<BTreeMap<String, f64>, String> {
    let mut all = BTreeMap::new();
    for url in urls {
        for (name, value) in read(url)? {
            *all.entry(name).or_insert(0.0) += value;
        }
    }
    Ok(all)
}

fn read(url: &str) -> Result<Vec<(String, f64)>, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--metrics {url}: expected http://HOST:PORT/PATH"))?;
    let (host, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/metrics"),
    };
    let addr = host
        .to_socket_addrs()
        .map_err(|err| format!("--metrics {url}: {err}"))?
        .next()
        .ok_or_else(|| format!("--metrics {url}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|err| format!("--metrics {url}: {err}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|err| format!("--metrics {url}: {err}"))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|err| format!("--metrics {url}: {err}"))?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .map_err(|err| format!("--metrics {url}: {err}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("--metrics {url}: no complete response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        let status = head.lines().next().unwrap_or("");
        return Err(format!("--metrics {url}: {status}"));
    }
    Ok(parse(body))
}

/// The samples of a Prometheus text exposition (comments skipped).
pub fn parse(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.trim().to_string(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_their_labels() {
        let text = "# HELP chat_rooms Rooms.\n# TYPE chat_rooms gauge\nchat_rooms 10\n\
                    chat_connections{phase=\"websocket\"} 1000\nchat_history_bytes 231400\nbad line x\n";
        let samples = parse(text);
        assert_eq!(
            samples,
            vec![
                ("chat_rooms".to_string(), 10.0),
                ("chat_connections{phase=\"websocket\"}".to_string(), 1000.0),
                ("chat_history_bytes".to_string(), 231400.0),
            ]
        );
        assert!(read("127.0.0.1:1/metrics").is_err());
    }
}

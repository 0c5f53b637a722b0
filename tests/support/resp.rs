//! A small Redis client for tests: one command on a connection of its
//! own, and its reply, for looking at (and tampering with) a test's Redis.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use super::RedisServer;

/// A RESP reply, as far as these tests need one.
#[derive(Debug)]
pub enum Reply {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

fn read_reply(reader: &mut BufReader<TcpStream>) -> Result<Reply, String> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|err| format!("no reply: {err}"))?;
    let line = line.trim_end();
    if line.is_empty() {
        return Err("closed without a reply".into());
    }
    let (kind, rest) = line.split_at(1);
    let number = |text: &str| text.parse::<i64>().map_err(|_| format!("bad reply {line}"));
    Ok(match kind {
        "+" => Reply::Simple(rest.to_string()),
        "-" => return Err(format!("redis error: {rest}")),
        ":" => Reply::Int(number(rest)?),
        "$" => {
            let Ok(len) = usize::try_from(number(rest)?) else {
                return Ok(Reply::Bulk(None));
            };
            let mut bytes = vec![0u8; len + 2];
            std::io::Read::read_exact(reader, &mut bytes)
                .map_err(|err| format!("a short reply: {err}"))?;
            bytes.truncate(len);
            Reply::Bulk(Some(bytes))
        }
        "*" => {
            let len = number(rest)?.max(0);
            let items = (0..len).map(|_| read_reply(reader));
            Reply::Array(items.collect::<Result<_, _>>()?)
        }
        _ => return Err(format!("unexpected reply {line}")),
    })
}

/// One command to `redis`, on a connection of its own; its reply, or why
/// not (an error reply, or the connection refused or closed: a sentinel
/// reconfiguring a server closes its clients).
pub fn try_redis_call(redis: &RedisServer, args: &[&str]) -> Result<Reply, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", redis.port))
        .map_err(|err| format!("cannot connect: {err}"))?;
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream
        .write_all(command.as_bytes())
        .map_err(|err| format!("cannot send: {err}"))?;
    read_reply(&mut BufReader::new(stream))
}

/// One command to `redis` that must succeed; its reply.
pub fn redis_call(redis: &RedisServer, args: &[&str]) -> Reply {
    try_redis_call(redis, args).unwrap_or_else(|why| panic!("{args:?}: {why}"))
}

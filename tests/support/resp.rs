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

pub fn read_reply(reader: &mut BufReader<TcpStream>) -> Reply {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a redis reply");
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" => Reply::Simple(rest.to_string()),
        "-" => panic!("redis error: {rest}"),
        ":" => Reply::Int(rest.parse().unwrap()),
        "$" => {
            let len: i64 = rest.parse().unwrap();
            if len < 0 {
                return Reply::Bulk(None);
            }
            let mut bytes = vec![0u8; len as usize + 2];
            std::io::Read::read_exact(reader, &mut bytes).unwrap();
            bytes.truncate(len as usize);
            Reply::Bulk(Some(bytes))
        }
        "*" => {
            let len: i64 = rest.parse().unwrap();
            Reply::Array((0..len.max(0)).map(|_| read_reply(reader)).collect())
        }
        other => panic!("unexpected reply {other}{rest}"),
    }
}

/// One command to `redis`, on a connection of its own; its reply.
pub fn redis_call(redis: &RedisServer, args: &[&str]) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(command.as_bytes()).unwrap();
    read_reply(&mut BufReader::new(stream))
}

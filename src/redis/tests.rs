//! The bus without Redis: what arrives on a room's channel, what happens
//! while Redis is away, and probes. (The bus against a real Redis is in
//! `tests/redis*.rs`.)

use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::Token;
use redis_protocol::resp2::types::OwnedFrame;

use super::{History, RedisBus, Settings};
use crate::config::RedisUrl;
use crate::broker::{Backend, Post, StoreAnswer, StoreQuery};

fn bus() -> RedisBus {
    let target = RedisUrl::parse("redis://127.0.0.1:1").unwrap();
    let history = History {
        per_room: 100,
        ttl: Duration::from_secs(600),
    };
    let settings = Settings {
        target,
        sentinel: None,
        prefix: "p:".into(),
        history,
        otp_ttl: Duration::from_secs(5),
        tls: None,
    };
    RedisBus::new(settings, [1, 2, 3, 4].map(Token), Instant::now())
}

fn message(channel: &str, payload: &str) -> OwnedFrame {
    OwnedFrame::Array(vec![
        OwnedFrame::BulkString(b"message".to_vec()),
        OwnedFrame::BulkString(channel.as_bytes().to_vec()),
        OwnedFrame::BulkString(payload.as_bytes().to_vec()),
    ])
}

#[test]
fn room_messages_are_framed_once_in_order_and_gaps_are_counted() {
    let mut bus = bus();
    bus.room_opened(&Rc::from("x"));
    for seq in [1, 2, 5] {
        bus.on_push(message("p:room:x", &format!("e-{seq} {{\"n\":{seq}}}")));
    }
    bus.on_push(message("p:room:elsewhere", "e-1 {}"));
    let mut ready = Vec::new();
    bus.take_arrivals(&mut ready, &mut Vec::new(), &mut Vec::new());
    let payloads: Vec<&[u8]> = ready.iter().map(|a| &a.frame[2..]).collect();
    assert_eq!(payloads, [&b"{\"n\":1}"[..], b"{\"n\":2}", b"{\"n\":5}"]);
    assert!(ready.iter().all(|a| &*a.room == "x"));
    assert_eq!(bus.stats().gaps, 2, "3 and 4 never came");
    assert_eq!(bus.stats().received, 3);
}

#[test]
fn while_redis_is_away_messages_reach_local_members_and_otps_are_refused() {
    let mut bus = bus();
    bus.room_opened(&Rc::from("x"));
    let post = Post {
        message: "hi".into(),
        from: Rc::from("percy"),
        sent: "2026-01-01T00:00:00.000Z".into(),
        sender: 0,
    };
    bus.publish(&Rc::from("x"), post);
    let mut ready = Vec::new();
    bus.take_arrivals(&mut ready, &mut Vec::new(), &mut Vec::new());
    assert_eq!(ready.len(), 1);
    assert_eq!(bus.stats().local_only, 1);
    let id = crate::slab::Slab::new().insert(());
    bus.ask(id, StoreQuery::Take { otp: "x".into() });
    let mut answers = Vec::new();
    bus.take_answers(&mut answers);
    assert_eq!(answers, [(id, StoreAnswer::Unavailable)]);
}

#[test]
fn a_probe_is_answered_subscribed_or_not() {
    let mut bus = bus();
    bus.probe_sent = Some(Instant::now());
    bus.on_push(OwnedFrame::SimpleString(b"PONG".to_vec()));
    assert_eq!(bus.probe_sent, None);
    bus.probe_sent = Some(Instant::now());
    bus.on_push(OwnedFrame::Array(vec![
        OwnedFrame::BulkString(b"pong".to_vec()),
        OwnedFrame::BulkString(Vec::new()),
    ]));
    assert_eq!(bus.probe_sent, None);
}

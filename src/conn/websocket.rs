//! The WebSocket phase of a connection: frames in, replies and chat events
//! out, the heartbeat, and the order in which a close follows the replies.

use std::time::Instant;

use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

use super::{CLOSE_TIMEOUT, Connection, Context, Event, State};
use crate::config::Config;
use crate::http::Purpose;
use crate::outbound::Outbound;
use crate::ws::{self, Fed, Heartbeat, PING_FRAME, Session};

pub(super) struct WebSocketPhase {
    session: Session,
    purpose: Purpose,
    /// How reading ended, applied by `settle` once the events read before
    /// it are handled.
    ended: Option<Fed>,
}

impl WebSocketPhase {
    /// Nothing is read while the client's own output is over the bound: it
    /// must take what it is sent before it may send more.
    pub(super) fn capacity(&self, out: &Outbound, config: &Config) -> usize {
        match out.queued_bytes() >= config.max_queue {
            true => 0,
            false => usize::MAX,
        }
    }

    pub(super) fn next_timeout(&self, config: &Config) -> Instant {
        self.session.next_heartbeat(config.pong_wait)
    }

    pub(super) fn close(&mut self, out: &mut Outbound, code: CloseCode, reason: &'static str) {
        self.session.close(out, code, reason);
    }
}

impl Connection {
    pub(super) fn become_websocket(&mut self, session: Session, purpose: Purpose) {
        self.state = State::WebSocket(Box::new(WebSocketPhase {
            session,
            purpose,
            ended: None,
        }));
        self.deadline = None;
    }

    /// Decodes what arrived: tungstenite's own replies (pongs) are queued
    /// first, then echoes, and chat messages become events for the hub.
    pub(super) fn receive_frames(&mut self, bytes: &[u8], cx: &mut Context) {
        let State::WebSocket(ws) = &mut self.state else {
            return;
        };
        let mut input = bytes;
        let fed = ws
            .session
            .feed(&mut input, &mut self.out, cx.inbox, usize::MAX, cx.now);
        for message in cx.inbox.drain(..) {
            match (ws.purpose, message) {
                (Purpose::Echo, Message::Text(text)) => {
                    self.out.push(ws::data_frame(0x1, text.as_bytes()))
                }
                (Purpose::Echo, Message::Binary(data)) => self.out.push(ws::data_frame(0x2, &data)),
                (Purpose::Chat, Message::Text(text)) => cx.events.push(Event::Text(text)),
                _ => {}
            }
        }
        if fed != Fed::Open {
            ws.ended = Some(fed);
        }
    }

    /// Queues the close reading decided on, after the replies to what came before it.
    pub(super) fn settle_websocket(&mut self, now: Instant) {
        let State::WebSocket(ws) = &mut self.state else {
            return;
        };
        let Some(fed) = ws.ended.take() else {
            return;
        };
        ws.session.queue_close(&mut self.out);
        let by = now + CLOSE_TIMEOUT;
        match fed {
            Fed::Open => {}
            Fed::Closing(reason) => self.close(reason, false, true, by),
            Fed::Finished(reason) => self.close(reason, true, true, by),
        }
    }

    /// One timer drives both pinging and the wait for an answer.
    pub(super) fn websocket_timeout(&mut self, cx: &mut Context) {
        let State::WebSocket(ws) = &mut self.state else {
            return;
        };
        let (interval, wait) = (cx.config.ping_interval, cx.config.pong_wait);
        match ws.session.heartbeat(cx.now, interval, wait) {
            Heartbeat::Dead => {
                cx.metrics.heartbeat_timeouts += 1;
                self.finish("heartbeat timeout: no pong", true, true);
            }
            Heartbeat::Ping(_) => self.out.push_bytes(&PING_FRAME),
            Heartbeat::Wait(_) => {}
        }
    }
}

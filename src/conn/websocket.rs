//! The WebSocket phase of a connection: frames in, replies and chat events
//! out, the heartbeat, each member's event budget, and the order in which a
//! close follows the replies.
//!
//! A chat member that sends faster than its budget is not cut off: it gets
//! one `error` event saying so, and its input pauses (what it already sent
//! waits, decoded or not, and nothing is read from its socket) until the
//! budget refills. Nothing it sent is lost; it is just served at the rate.

use std::mem;
use std::time::Instant;

use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

use super::budget::{EventBudget, Rate};
use super::{CLOSE_TIMEOUT, Connection, Context, Event, State};
use crate::chat;
use crate::config::Config;
use crate::http::Purpose;
use crate::logging::held_back;
use crate::outbound::Outbound;
use crate::ws::{self, Fed, Heartbeat, PING_FRAME, Session};

/// Frame header bytes around one message, at most (for sizing reads).
const FRAME_OVERHEAD: usize = 14;

pub(super) struct WebSocketPhase {
    session: Session,
    purpose: Purpose,
    budget: EventBudget,
    /// What waits for the budget to refill (only while it does).
    backlog: Option<Box<Backlog>>,
    /// The member was told it passed the budget (once until it is full again).
    warned: bool,
    /// The telling waits until the events read before it are delivered.
    warning_due: bool,
}

/// Input a throttled member already sent.
#[derive(Default)]
struct Backlog {
    /// A message decoded past the budget.
    message: Option<Message>,
    /// Bytes read but not decoded yet.
    bytes: Vec<u8>,
}

impl WebSocketPhase {
    /// How much to read now. Nothing while the client's own output is over
    /// the bound (it must take what it is sent before it may send more) or
    /// while a chat member's budget is spent; otherwise, for chat, no more
    /// than the messages its budget allows could fill.
    pub(super) fn capacity(&self, out: &Outbound, config: &Config, now: Instant) -> usize {
        if out.queued_bytes() >= config.max_queue || self.backlog.is_some() {
            return 0;
        }
        match self.purpose {
            Purpose::Echo => usize::MAX,
            Purpose::Chat => {
                let events = self.budget.available(now, &Rate::of(config));
                events.saturating_mul(config.max_message + FRAME_OVERHEAD)
            }
        }
    }

    pub(super) fn next_timeout(&self, config: &Config, now: Instant) -> Instant {
        let heartbeat = self.session.next_heartbeat(config.pong_wait);
        let rate = Rate::of(config);
        let waiting = self.backlog.is_some() || self.budget.available(now, &rate) == 0;
        match self.purpose == Purpose::Chat && waiting {
            true => heartbeat.min(self.budget.next_allowed(&rate)),
            false => heartbeat,
        }
    }

    /// Bytes held for the client beyond its outbound queue.
    pub(super) fn backlog_bytes(&self) -> usize {
        self.backlog
            .as_ref()
            .map_or(0, |backlog| backlog.bytes.len())
    }

    pub(super) fn close(&mut self, out: &mut Outbound, code: CloseCode, reason: &'static str) {
        self.session.close(out, code, reason);
    }
}

impl Connection {
    pub(super) fn become_websocket(&mut self, session: Session, purpose: Purpose, now: Instant) {
        self.state = State::WebSocket(Box::new(WebSocketPhase {
            session,
            purpose,
            budget: EventBudget::new(now),
            backlog: None,
            warned: false,
            warning_due: false,
        }));
    }

    /// Decodes what arrived (and what waited): tungstenite's own replies
    /// (pongs) are queued first, then echoes, and chat messages become
    /// events for the hub, as many as the member's budget allows.
    pub(super) fn receive_frames(&mut self, bytes: &[u8], cx: &mut Context) {
        let State::WebSocket(ws) = &mut self.state else {
            return;
        };
        let rate = Rate::of(cx.config);
        let chat = ws.purpose == Purpose::Chat;
        if ws.budget.is_full(cx.now) {
            ws.warned = false;
        }
        let mut backlog = ws.backlog.take().unwrap_or_default();
        let mut allowed = match chat {
            true => ws.budget.available(cx.now, &rate),
            false => usize::MAX,
        };
        if let Some(message) = backlog.message.take() {
            if allowed == 0 {
                backlog.message = Some(message);
                ws.backlog = Some(backlog);
                return;
            }
            cx.inbox.push(message);
            allowed -= 1;
        }
        let queued_before = cx.inbox.len();
        let mut held = mem::take(&mut backlog.bytes);
        if !held.is_empty() {
            held.extend_from_slice(bytes);
        }
        let mut input = match held.is_empty() {
            true => bytes,
            false => &held[..],
        };
        // One message more than allowed shows whether the member is over its budget.
        let most = queued_before + allowed.saturating_add(1);
        let fed = ws
            .session
            .feed(&mut input, &mut self.out, cx.inbox, most, cx.now);
        let unread = input.to_vec();
        if cx.inbox.len() > queued_before + allowed {
            backlog.message = cx.inbox.pop();
        }
        for message in cx.inbox.drain(..) {
            match (ws.purpose, message) {
                (Purpose::Echo, Message::Text(text)) => {
                    self.out.push(ws::data_frame(0x1, text.as_bytes()))
                }
                (Purpose::Echo, Message::Binary(data)) => self.out.push(ws::data_frame(0x2, &data)),
                (Purpose::Chat, Message::Text(text)) => {
                    ws.budget.take(cx.now, &rate);
                    cx.events.push(Event::Text(text));
                }
                _ => {}
            }
        }
        if fed != Fed::Open {
            return; // `settle` closes, after the events read before it
        }
        backlog.bytes = unread;
        if backlog.message.is_some() || !backlog.bytes.is_empty() {
            ws.backlog = Some(backlog);
            if !mem::replace(&mut ws.warned, true) {
                ws.warning_due = true;
                cx.metrics.rate_limited += 1;
                if let Some(quiet) = cx.site.flood_log.admit(cx.now) {
                    let quiet = held_back(quiet);
                    log::info!("{}: over its event budget: input paused{quiet}", self.peer);
                }
            }
        }
    }

    /// Queues what reading decided on, after the replies to what came before
    /// it: the warning of a member over its budget, or the close.
    pub(super) fn settle_websocket(&mut self, config: &Config, now: Instant) {
        let State::WebSocket(ws) = &mut self.state else {
            return;
        };
        if mem::take(&mut ws.warning_due) {
            let (rate, burst) = (config.event_rate, config.event_burst);
            let text = format!(
                "rate limit: at most {rate} events a second (bursts of {burst}); \
                 the rest wait their turn"
            );
            self.out.push(chat::error_frame(&text));
        }
        let Some(fed) = ws.session.queue_close(&mut self.out) else {
            return;
        };
        let by = now + CLOSE_TIMEOUT;
        match fed {
            Fed::Open => {}
            Fed::Closing(reason) => self.close(reason, false, true, by),
            Fed::Finished(reason) => self.close(reason, true, true, by),
        }
    }

    /// One timer drives pinging, the wait for an answer, and a budget refilling.
    pub(super) fn websocket_timeout(&mut self, cx: &mut Context) {
        let State::WebSocket(ws) = &mut self.state else {
            return;
        };
        let (interval, wait) = (cx.config.ping_interval, cx.config.pong_wait);
        match ws.session.heartbeat(cx.now, interval, wait) {
            Heartbeat::Dead => {
                cx.metrics.heartbeat_timeouts += 1;
                return self.finish("heartbeat timeout: no pong", true);
            }
            Heartbeat::Ping(_) => self.out.push_bytes(&PING_FRAME),
            Heartbeat::Wait(_) => {}
        }
        let refilled = ws.budget.available(cx.now, &Rate::of(cx.config)) > 0;
        if ws.backlog.is_some() && refilled {
            self.receive_frames(&[], cx);
        }
    }
}

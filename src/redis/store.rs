//! The OTP and session store in Redis: queries sent on the command link, and
//! what their replies mean.
//!
//! An OTP is `<prefix>otp:<otp>`, set with `PX ttl NX` at login and taken
//! with `GETDEL` at the upgrade, so a login on one process opens a WebSocket
//! on any other, once. An ended session is `<prefix>revoked:<session>`, kept
//! until the session would have expired; a session's OTP is stored only
//! while its session has not been ended (one script, so nothing comes in
//! between).

use redis_protocol::resp2::types::OwnedFrame;

use super::dispatch::Expect;
use super::link::command;
use super::{LOGGED_REPLY, RedisBus};
use crate::broker::{StoreAnswer, StoreQuery};
use crate::logging::Truncated;
use crate::slab::SlotId;

/// A session's OTP, stored unless the session was ended: KEYS[1] the
/// session's revocation, KEYS[2] the OTP; ARGV[1] the user, ARGV[2] its
/// lifetime in ms. 0 when revoked, else what SET answers.
const SESSION_OTP_SCRIPT: &str = "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end \
     return redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2], 'NX')";

impl RedisBus {
    /// Sends `query` for connection `asker`; its answer goes to `answers`
    /// when the reply comes (at once, `Unavailable`, when it cannot go).
    pub(super) fn query_store(&mut self, asker: SlotId, query: StoreQuery) {
        let otp_ttl = self.otp_ttl;
        let sent = match &query {
            StoreQuery::Store { otp, user } => {
                let key = format!("{}otp:{otp}", self.prefix);
                let ttl = otp_ttl.as_millis().to_string();
                self.commands
                    .send(&command(&["SET", &key, user, "PX", &ttl, "NX"]))
            }
            StoreQuery::StoreForSession { otp, user, session } => {
                let revoked = format!("{}revoked:{session}", self.prefix);
                let key = format!("{}otp:{otp}", self.prefix);
                let ttl = otp_ttl.as_millis().to_string();
                let args = ["EVAL", SESSION_OTP_SCRIPT, "2", &revoked, &key, user, &ttl];
                self.commands.send(&command(&args))
            }
            StoreQuery::Take { otp } => {
                let key = format!("{}otp:{otp}", self.prefix);
                self.commands.send(&command(&["GETDEL", &key]))
            }
            StoreQuery::Revoke { session, until } => {
                let key = format!("{}revoked:{session}", self.prefix);
                let until = until.to_string();
                self.commands
                    .send(&command(&["SET", &key, "1", "EXAT", &until]))
            }
        };
        match sent {
            true => self
                .expected
                .push_back((self.now, Expect::Otp { asker, query })),
            false => self.answers.push((asker, StoreAnswer::Unavailable)),
        }
    }
}

/// What Redis's reply to `query` means for the connection that asked.
pub(super) fn answer(query: StoreQuery, frame: OwnedFrame) -> StoreAnswer {
    match (query, frame) {
        (
            StoreQuery::Store { .. } | StoreQuery::StoreForSession { .. },
            OwnedFrame::SimpleString(_),
        ) => StoreAnswer::Stored,
        (StoreQuery::Store { .. } | StoreQuery::StoreForSession { .. }, OwnedFrame::Null) => {
            StoreAnswer::Exists
        }
        (StoreQuery::StoreForSession { .. }, OwnedFrame::Integer(0)) => StoreAnswer::Revoked,
        (StoreQuery::Revoke { .. }, OwnedFrame::SimpleString(_)) => StoreAnswer::Done,
        (StoreQuery::Take { .. }, OwnedFrame::BulkString(user)) => {
            StoreAnswer::Taken(String::from_utf8(user).ok())
        }
        (StoreQuery::Take { .. }, OwnedFrame::Null) => StoreAnswer::Taken(None),
        (_, other) => {
            log::warn!(
                "redis: an OTP command failed: {}",
                Truncated(&other, LOGGED_REPLY)
            );
            StoreAnswer::Unavailable
        }
    }
}

//! The OTP and session store in Redis: queries sent on the command link, and
//! what their replies mean.
//!
//! An OTP is `<prefix>otp:<otp>`, set with `PX ttl NX` at login and taken
//! with `GETDEL` at the upgrade, so a login on one process opens a WebSocket
//! on any other, once. An ended session is
//! `<prefix>{session:<id>}:revoked`, kept until the session would have
//! expired; a session's OTP is stored only while its session has not been
//! ended (one script, so nothing comes in between). Its OTP, `<id>.<random>`,
//! is `<prefix>{session:<id>}:otp:<otp>`: the script's two keys share a hash
//! tag, so on Redis Cluster they are in one slot, and `GETDEL` finds the key
//! from the OTP alone.

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
            StoreQuery::Api(read) => return self.look(asker, read.clone()),
            StoreQuery::Store { otp, user } => {
                let key = otp_key(&self.prefix, otp);
                let ttl = otp_ttl.as_millis().to_string();
                self.commands
                    .send(&command(&["SET", &key, user, "PX", &ttl, "NX"]))
            }
            StoreQuery::StoreForSession { otp, user, session } => {
                let revoked = revoked_key(&self.prefix, session);
                let key = otp_key(&self.prefix, otp);
                let ttl = otp_ttl.as_millis().to_string();
                let args = ["EVAL", SESSION_OTP_SCRIPT, "2", &revoked, &key, user, &ttl];
                self.commands.send(&command(&args))
            }
            StoreQuery::Take { otp } => {
                let key = otp_key(&self.prefix, otp);
                self.commands.send(&command(&["GETDEL", &key]))
            }
            StoreQuery::Revoke { session, until } => {
                let key = revoked_key(&self.prefix, session);
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

/// Where `otp` is kept: beside its session's revocation for a session's
/// OTP (`<session>.<random>`), else in a slot of its own.
fn otp_key(prefix: &str, otp: &str) -> String {
    match otp.split_once('.') {
        Some((session, _)) => format!("{prefix}{{session:{session}}}:otp:{otp}"),
        None => format!("{prefix}otp:{otp}"),
    }
}

/// Where an ended session is kept.
fn revoked_key(prefix: &str, session: &str) -> String {
    format!("{prefix}{{session:{session}}}:revoked")
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What Redis Cluster hashes: the first `{...}` with something in it.
    fn hash_tag(key: &str) -> &str {
        key.split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(tag, _)| tag)
            .filter(|tag| !tag.is_empty())
            .unwrap_or(key)
    }

    #[test]
    fn a_sessions_otp_shares_a_slot_with_its_revocation() {
        let (session, otp) = ("5e55", "5e55.0123abcd");
        assert_eq!(
            hash_tag(&otp_key("chat:", otp)),
            hash_tag(&revoked_key("chat:", session))
        );
        assert_eq!(otp_key("chat:", "0123abcd"), "chat:otp:0123abcd");
        assert_ne!(
            hash_tag(&otp_key("chat:", "0123abcd")),
            hash_tag(&revoked_key("chat:", session))
        );
    }
}

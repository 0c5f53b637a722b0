//! Operators' calls that concern every process (`/api/users/...`: a
//! disconnect, a ban, an unban), passed on through Redis.
//!
//! A call is published on `<prefix>control`, which every process listens
//! to, as `<process> <kind> ...` (the caller's own process already did it,
//! and skips it); a ban is also kept in the hash `<prefix>bans` (user ->
//! the Unix second it ends), which a process reads when it connects, so
//! one started later (or back from an outage) knows the bans too.

use redis_protocol::resp2::types::OwnedFrame;

use super::dispatch::Expect;
use super::{LOGGED_REPLY, RedisBus};
use crate::broker::Control;
use crate::logging::Truncated;

const BANS: &str = include_str!("bans.lua");

impl RedisBus {
    /// The channel every process hears operators' calls on.
    pub(super) fn control_channel(&self) -> String {
        format!("{}control", self.prefix)
    }

    fn bans_key(&self) -> String {
        format!("{}bans", self.prefix)
    }

    /// Tells every other process of `control`, and keeps a ban in Redis.
    pub(super) fn announce_control(&mut self, control: Control) {
        if !self.commands.is_up() {
            log::warn!("redis unreachable: {control:?} holds on this process only");
            return;
        }
        let key = self.bans_key();
        let store = match &control {
            Control::Ban { user, until } => Some(vec![
                b"HSET".to_vec(),
                key.into_bytes(),
                user.as_bytes().to_vec(),
                until.to_string().into_bytes(),
            ]),
            Control::Unban { user } => Some(vec![
                b"HDEL".to_vec(),
                key.into_bytes(),
                user.as_bytes().to_vec(),
            ]),
            Control::Disconnect { .. } => None,
        };
        if let Some(args) = store {
            self.send_control(args);
        }
        let message = match &control {
            Control::Disconnect { user } => format!("disconnect {user}"),
            Control::Ban { user, until } => format!("ban {until} {user}"),
            Control::Unban { user } => format!("unban {user}"),
        };
        let args = vec![
            b"PUBLISH".to_vec(),
            self.control_channel().into_bytes(),
            format!("{} {message}", self.process_id()).into_bytes(),
        ];
        self.send_control(args);
    }

    fn send_control(&mut self, args: Vec<Vec<u8>>) {
        match self.commands.send(&args) {
            true => self.expected.push_back((self.now, Expect::Control)),
            false => self.stats.dropped += 1,
        }
    }

    /// A control command's answer: only a refusal says anything.
    pub(super) fn control_answered(&mut self, frame: OwnedFrame) {
        if let OwnedFrame::Error(err) = frame {
            log::warn!("redis: an operator's call not passed on: {err}");
        }
    }

    /// The command link is (back) up: the bans kept in Redis are read.
    pub(super) fn read_bans(&mut self) {
        let args = vec![
            b"EVAL".to_vec(),
            BANS.as_bytes().to_vec(),
            b"1".to_vec(),
            self.bans_key().into_bytes(),
        ];
        match self.commands.send(&args) {
            true => self.expected.push_back((self.now, Expect::Bans)),
            false => self.stats.dropped += 1,
        }
    }

    /// The bans kept in Redis: each heard as a ban.
    pub(super) fn bans_read(&mut self, frame: OwnedFrame) {
        let OwnedFrame::Array(parts) = frame else {
            log::warn!("redis: bans unreadable: {}", Truncated(&frame, LOGGED_REPLY));
            return;
        };
        let text = |frame: OwnedFrame| match frame {
            OwnedFrame::BulkString(bytes) => String::from_utf8(bytes).ok(),
            _ => None,
        };
        let mut parts = parts.into_iter();
        while let (Some(user), Some(until)) = (parts.next(), parts.next()) {
            let until = text(until).and_then(|u| u.parse().ok());
            if let (Some(user), Some(until)) = (text(user), until) {
                self.controls.push(Control::Ban { user, until });
            }
        }
    }

    /// A call heard on the control channel; the caller's own is skipped.
    pub(super) fn on_control(&mut self, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload);
        let Some(control) = parse_control(&text, self.process_id()) else {
            return;
        };
        self.controls.push(control);
    }
}

/// `<process> disconnect <user>`, `<process> ban <until> <user>` or
/// `<process> unban <user>`; None for this process's own (`own`) or an
/// unreadable one (logged).
fn parse_control(text: &str, own: &str) -> Option<Control> {
    let (process, rest) = text.split_once(' ')?;
    if process == own {
        return None;
    }
    let (kind, rest) = rest.split_once(' ')?;
    let control = match kind {
        "disconnect" => Control::Disconnect { user: rest.into() },
        "unban" => Control::Unban { user: rest.into() },
        "ban" => {
            let (until, user) = rest.split_once(' ')?;
            Control::Ban {
                user: user.into(),
                until: until.parse().ok()?,
            }
        }
        _ => {
            log::warn!("redis: an operator's call out of shape: {}", Truncated(&text, LOGGED_REPLY));
            return None;
        }
    };
    Some(control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_read_back_as_published_and_ones_own_are_skipped() {
        assert_eq!(
            parse_control("ab ban 1700000000 ann smith", "cd"),
            Some(Control::Ban {
                user: "ann smith".into(),
                until: 1_700_000_000
            })
        );
        assert_eq!(
            parse_control("ab disconnect ann", "cd"),
            Some(Control::Disconnect { user: "ann".into() })
        );
        assert_eq!(parse_control("cd disconnect ann", "cd"), None);
        assert_eq!(parse_control("ab ban soon ann", "cd"), None);
        assert_eq!(parse_control("ab dance ann", "cd"), None);
    }
}

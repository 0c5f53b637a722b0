//! That the server the links talk to is the master, and which master it is.
//!
//! The command link asks `INFO replication` on every fresh connection and
//! with every probe. A server that answers as a replica, or refuses a write
//! with `READONLY` (a master demoted in a failover keeps its clients), has
//! both links reconnected. A master's replication id is the hint the
//! scripts are given: an epoch is numbered by one master, and a room whose
//! epoch another master numbered starts a new epoch (`publish.lua`), since
//! a replica promoted in a failover may lack the last messages its old
//! master numbered. The hint only spares the scripts an `INFO` call: they
//! check it whenever it does not match the room's, so a missing one costs
//! time, never a wrong id. A stale one could: a room numbered by the old
//! master carries the old id, which a stale hint would match. So the hint
//! holds for one connection only, from the answer to its first command on.

use redis_protocol::resp2::types::OwnedFrame;

use super::dispatch::Expect;
use super::link::command;
use super::{LOGGED_REPLY, RedisBus};
use crate::logging::Truncated;

/// What a server said it is.
#[derive(Debug, PartialEq, Eq)]
enum Role {
    /// A master, with its replication id.
    Master(String),
    /// A replica (or a sentinel, or anything else that takes no writes).
    Other(String),
}

impl RedisBus {
    /// Asks the command link's server what it is.
    pub(super) fn ask_role(&mut self) {
        if self.commands.send(&command(&["INFO", "replication"])) {
            self.expected.push_back((self.now, Expect::Role));
        }
    }

    /// The server's answer to `ask_role`.
    pub(super) fn role_answered(&mut self, frame: OwnedFrame) {
        match role_of(&frame) {
            Some(Role::Master(id)) => {
                if self.last_master != id {
                    if !self.last_master.is_empty() {
                        self.stats.failovers += 1;
                        log::warn!(
                            "redis: the master changed (replication id {} to {id}): rooms start \
                             new epochs as they publish",
                            self.last_master
                        );
                    }
                    self.last_master.clone_from(&id);
                }
                self.master = id;
            }
            Some(Role::Other(role)) => self.not_master(&format!("the server is a {role}")),
            None => log::warn!(
                "redis: INFO replication answered out of shape: {}",
                Truncated(&frame, LOGGED_REPLY)
            ),
        }
    }

    /// The command link is down: whichever server it reaches next, its
    /// replication id is unknown until it says.
    pub(super) fn forget_master(&mut self) {
        self.master.clear();
    }

    /// The server takes no writes: both links go to where the master is
    /// now, at the end of this turn.
    pub(super) fn not_master(&mut self, why: &str) {
        if self.not_master.is_none() {
            log::error!("redis: {why}, not a master: reconnecting");
            self.not_master = Some(why.to_string());
        }
        if let Some(sentinels) = &mut self.sentinels {
            sentinels.ask_again();
        }
    }
}

/// A server's role from its `INFO replication`.
fn role_of(frame: &OwnedFrame) -> Option<Role> {
    let OwnedFrame::BulkString(info) = frame else {
        return None;
    };
    let info = std::str::from_utf8(info).ok()?;
    let field = |name: &str| {
        info.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key == name).then(|| value.trim())
        })
    };
    match field("role")? {
        "master" => Some(Role::Master(field("master_replid")?.to_string())),
        other => Some(Role::Other(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(text: &str) -> OwnedFrame {
        OwnedFrame::BulkString(text.replace('\n', "\r\n").into_bytes())
    }

    #[test]
    fn the_role_is_read_from_info_replication() {
        let master = info("# Replication\nrole:master\nconnected_slaves:0\nmaster_replid:49b5\n");
        assert_eq!(role_of(&master), Some(Role::Master("49b5".into())));
        let replica = info("# Replication\nrole:slave\nmaster_host:127.0.0.1\n");
        assert_eq!(role_of(&replica), Some(Role::Other("slave".into())));
        assert_eq!(role_of(&info("role:master\n")), None, "no id");
        assert_eq!(role_of(&OwnedFrame::Error("NOAUTH".into())), None);
    }
}

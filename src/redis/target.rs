//! What a connection to Redis says first (AUTH, SELECT) to be where the
//! `--redis` URL points, and the address it connects to.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

use super::link::command;
use crate::config::RedisUrl;

impl RedisUrl {
    /// What to say first on a fresh connection: AUTH and SELECT as needed.
    pub(super) fn handshake(&self) -> Vec<Vec<Vec<u8>>> {
        let mut commands = Vec::new();
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => commands.push(command(&["AUTH", user, password])),
            (None, Some(password)) => commands.push(command(&["AUTH", password])),
            _ => {}
        }
        if self.db != 0 {
            commands.push(command(&["SELECT", &self.db.to_string()]));
        }
        commands
    }

    /// Looks the host up (an address literal needs no lookup; a name blocks
    /// for its DNS lookup, which happens only while the link is down).
    pub(super) fn address(&self) -> io::Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address for the host"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_says_auth_and_select_only_when_needed() {
        let plain = RedisUrl::parse("redis://h:1").unwrap();
        assert!(plain.handshake().is_empty());
        let full = RedisUrl::parse("redis://u:p@h:1/3").unwrap();
        let said: Vec<Vec<String>> = full
            .handshake()
            .iter()
            .map(|c| {
                c.iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .collect();
        assert_eq!(said, [vec!["AUTH", "u", "p"], vec!["SELECT", "3"]]);
    }
}

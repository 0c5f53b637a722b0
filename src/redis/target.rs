//! Where Redis is: the `redis://` URL `--redis` takes, and what a fresh
//! connection must say first (AUTH, SELECT) to be where the URL points.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

use super::link::command;

/// Where Redis is, as `--redis redis://[user:password@]host:port[/db]` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    pub(super) db: u32,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or("must start with redis://")?;
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((credentials, rest)) => (Some(credentials), rest),
            None => (None, rest),
        };
        let (user, password) = match credentials {
            None => (None, None),
            Some(credentials) => match credentials.split_once(':') {
                Some(("", password)) => (None, Some(password.to_string())),
                Some((user, password)) => (Some(user.to_string()), Some(password.to_string())),
                None => (None, Some(credentials.to_string())),
            },
        };
        let (address, db) = match rest.split_once('/') {
            Some((address, "")) => (address, 0),
            Some((address, db)) => (address, db.parse().map_err(|_| "the db is a number")?),
            None => (rest, 0),
        };
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| "the port is a number")?),
            None => (address, 6379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("no host".into());
        }
        Ok(Target {
            host: host.to_string(),
            port,
            user,
            password,
            db,
        })
    }

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
    fn urls_name_host_port_credentials_and_db() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6380").unwrap(),
            Target {
                host: "127.0.0.1".into(),
                port: 6380,
                user: None,
                password: None,
                db: 0,
            }
        );
        let full = Target::parse("redis://app:s3:cret@redis.internal:6379/2").unwrap();
        assert_eq!(full.user.as_deref(), Some("app"));
        assert_eq!(full.password.as_deref(), Some("s3:cret"));
        assert_eq!(
            (full.host.as_str(), full.port, full.db),
            ("redis.internal", 6379, 2)
        );
        let password_only = Target::parse("redis://:pw@[::1]:7000").unwrap();
        assert_eq!(
            (password_only.user, password_only.host.as_str()),
            (None, "::1")
        );
        assert_eq!(Target::parse("redis://localhost").unwrap().port, 6379);
        assert!(Target::parse("http://localhost").is_err());
        assert!(Target::parse("redis://:6379").is_err());
        assert!(Target::parse("redis://h:port").is_err());
    }

    #[test]
    fn the_handshake_says_auth_and_select_only_when_needed() {
        let plain = Target::parse("redis://h:1").unwrap();
        assert!(plain.handshake().is_empty());
        let full = Target::parse("redis://u:p@h:1/3").unwrap();
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

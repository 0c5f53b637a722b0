//! The `redis://` URL `--redis` takes: where Redis is and who to be there.
//! Parsed when the flag is read, so a bad URL stops start-up with its reason;
//! what a connection does with it belongs to `crate::redis`.

/// Where Redis is, as `--redis redis://[user:password@]host:port[/db]` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) db: u32,
    /// `rediss://`: TLS to Redis.
    pub tls: bool,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let (tls, rest) = match (url.strip_prefix("rediss://"), url.strip_prefix("redis://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => return Err("must start with redis:// (or rediss:// for TLS)".into()),
        };
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
        Ok(RedisUrl {
            host: host.to_string(),
            port,
            user,
            password,
            db,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_host_port_credentials_and_db() {
        assert_eq!(
            RedisUrl::parse("redis://127.0.0.1:6380").unwrap(),
            RedisUrl {
                host: "127.0.0.1".into(),
                port: 6380,
                user: None,
                password: None,
                db: 0,
                tls: false,
            }
        );
        let full = RedisUrl::parse("redis://app:s3:cret@redis.internal:6379/2").unwrap();
        assert_eq!(full.user.as_deref(), Some("app"));
        assert_eq!(full.password.as_deref(), Some("s3:cret"));
        assert_eq!(
            (full.host.as_str(), full.port, full.db),
            ("redis.internal", 6379, 2)
        );
        let password_only = RedisUrl::parse("redis://:pw@[::1]:7000").unwrap();
        assert_eq!(
            (password_only.user, password_only.host.as_str()),
            (None, "::1")
        );
        assert_eq!(RedisUrl::parse("redis://localhost").unwrap().port, 6379);
        assert!(RedisUrl::parse("http://localhost").is_err());
        let secure = RedisUrl::parse("rediss://redis.internal:6380").unwrap();
        assert!(secure.tls && secure.port == 6380);
        assert!(!RedisUrl::parse("redis://h").unwrap().tls);
        assert!(RedisUrl::parse("redis://:6379").is_err());
        assert!(RedisUrl::parse("redis://h:port").is_err());
    }
}

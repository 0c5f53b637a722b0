//! Sessions: log in once, come back without the password.
//!
//! A successful login also gets a session cookie. The token in it carries its
//! own claims (the user, when it expires, a random session id, and a short
//! MAC of the user's password hash, so a changed password or a removed user
//! ends the user's sessions once the accounts are re-read) and an
//! HMAC-SHA256 over them, so the server keeps no table of sessions: any
//! process with the same key (`--session-key FILE`) accepts it, after a
//! restart too. Checking one is a hash of a few dozen bytes, not a password
//! hash, so a reconnect costs microseconds.
//!
//! What the token cannot say itself is kept beside it: sessions ended by
//! `/logout` (revoked until they would have expired anyway; in Redis with
//! `--redis`, so a logout holds on every process; with a key file, also in
//! `<key>.revoked`, so it holds after a restart), and users no longer in the
//! accounts file (checked on every use). Each session may get at most a
//! burst of OTPs and then a few a second, which costs a table lookup.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use ring::hmac;

pub use revocations::revoke_user;
use revocations::{Revocations, unix_seconds};

mod revocations;

/// The cookie's name over plain HTTP.
const COOKIE: &str = "chat_session";
/// Its name over TLS. Cookies ignore ports, so a neighbour on the same host
/// could set `chat_session`; a browser accepts a `__Host-` cookie only from
/// a secure origin, with `Secure`, `Path=/` and no `Domain`: only this host.
const HOST_COOKIE: &str = "__Host-chat_session";

/// The session cookie's name on a plain or a TLS listener.
fn cookie_name(secure: bool) -> &'static str {
    if secure { HOST_COOKIE } else { COOKIE }
}
/// The shortest key file accepted.
const MIN_KEY_BYTES: usize = 32;
/// OTPs one session may get in a burst, and one more every this long.
const OTP_BURST: f64 = 10.0;
const OTP_REFILL: Duration = Duration::from_secs(2);
/// OTP budgets remembered at most (as many as revocations); past it the
/// oldest goes first (a forgotten budget is a fresh burst). The order is kept
/// beside the table, so a full table takes a new entry in O(1).
const MAX_TRACKED: usize = revocations::MAX_TRACKED;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Random, names the session for revocation.
    pub id: String,
    pub user: String,
    /// Seconds since the Unix epoch.
    pub expires: u64,
}

/// Why a token is refused (for the log; the client just gets 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Malformed,
    BadSignature,
    Expired,
    /// The user's password changed (or the user left) since it was issued.
    CredentialsChanged,
}

pub struct Sessions {
    key: hmac::Key,
    ttl: Duration,
    /// Sessions ended before they expire (and users all of whose sessions were).
    revocations: Revocations,
    /// OTP budgets by session id.
    budgets: HashMap<String, (f64, Instant)>,
    /// `budgets`' ids in the order they came; may name ids since removed
    /// (by `revoke`), which are skipped, and compacted past twice the bound.
    budget_order: VecDeque<String>,
    /// Per user, a short MAC of their credentials under the session key (see
    /// `bind`): a token carries its user's at issue and must still match, so
    /// a password change ends old sessions with no state kept.
    bound: HashMap<String, String>,
}

impl Sessions {
    /// With `key_file`, tokens outlive the process; without, a random key
    /// (sessions end when the process does).
    pub fn open(key_file: Option<&Path>, ttl: Duration) -> Result<Sessions, String> {
        let secret = match key_file {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|err| format!("session key {}: {err}", path.display()))?;
                if bytes.len() < MIN_KEY_BYTES {
                    return Err(format!(
                        "session key {}: {} bytes; at least {MIN_KEY_BYTES} (head -c 32 /dev/urandom)",
                        path.display(),
                        bytes.len()
                    ));
                }
                bytes
            }
            None => {
                let mut bytes = vec![0u8; MIN_KEY_BYTES];
                getrandom::fill(&mut bytes).map_err(|err| format!("no randomness: {err}"))?;
                bytes
            }
        };
        Ok(Sessions {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            ttl,
            revocations: Revocations::open(
                key_file.map(revocations::file_beside),
                ttl,
                SystemTime::now(),
            ),
            budgets: HashMap::new(),
            budget_order: VecDeque::new(),
            bound: HashMap::new(),
        })
    }


    /// Binds sessions to these accounts' credentials (at start and on every
    /// re-read of the accounts file).
    pub fn bind<'a>(&mut self, credentials: impl Iterator<Item = (&'a str, Vec<u8>)>) {
        self.bound = credentials
            .map(|(user, secret)| {
                let mut input = b"credentials\n".to_vec();
                input.extend_from_slice(&secret);
                let tag = hmac::sign(&self.key, &input);
                (user.to_string(), hex(&tag.as_ref()[..8]))
            })
            .collect();
    }

    /// The credential MAC a token of `user` carries ("-": none bound).
    fn bound_to(&self, user: &str) -> &str {
        self.bound.get(user).map_or("-", String::as_str)
    }

    /// A new session for `user`: its token and what it says.
    pub fn issue(&self, user: &str, now: SystemTime) -> Result<(String, Claims), String> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|err| format!("no randomness: {err}"))?;
        let claims = Claims {
            id: hex(&id),
            user: user.to_string(),
            expires: unix_seconds(now) + self.ttl.as_secs(),
        };
        let payload = format!(
            "v2\n{}\n{}\n{}\n{}",
            claims.id,
            claims.expires,
            self.bound_to(user),
            claims.user
        );
        let tag = hmac::sign(&self.key, payload.as_bytes());
        Ok((
            format!("{}.{}", hex(payload.as_bytes()), hex(tag.as_ref())),
            claims,
        ))
    }

    /// What `token` says, if this server signed it and it has not expired.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, Refused> {
        let (payload, tag) = token.split_once('.').ok_or(Refused::Malformed)?;
        let payload = unhex(payload).ok_or(Refused::Malformed)?;
        let tag = unhex(tag).ok_or(Refused::Malformed)?;
        hmac::verify(&self.key, &payload, &tag).map_err(|_| Refused::BadSignature)?;
        let payload = String::from_utf8(payload).map_err(|_| Refused::Malformed)?;
        let mut parts = payload.splitn(5, '\n');
        let (Some("v2"), Some(id), Some(expires), Some(bound), Some(user)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Refused::Malformed);
        };
        let expires: u64 = expires.parse().map_err(|_| Refused::Malformed)?;
        if unix_seconds(now) >= expires {
            return Err(Refused::Expired);
        }
        if bound != self.bound_to(user) {
            return Err(Refused::CredentialsChanged);
        }
        Ok(Claims {
            id: id.to_string(),
            user: user.to_string(),
            expires,
        })
    }

    /// Ends a session here until its token would have expired anyway.
    pub fn revoke(&mut self, claims: &Claims, now: SystemTime) {
        self.budgets.remove(&claims.id);
        self.revocations
            .end_session(&claims.id, claims.expires, now);
    }

    /// Ends every session of `user` issued until `now`, here (and, with a
    /// key file, for every process reading its revocations).
    pub fn end_user(&mut self, user: &str, now: SystemTime) {
        self.revocations.end_user(user, now);
    }

    /// True when the session, or every session of its user, was ended.
    pub fn is_revoked(&self, claims: &Claims) -> bool {
        self.revocations
            .contains(&claims.id, &claims.user, claims.expires)
    }

    /// Reads in revocations another writer added beside the key file (the
    /// `revoke` command, another process): one `stat` when nothing changed.
    pub fn refresh_revocations(&mut self, now: SystemTime) {
        self.revocations.refresh(now);
    }

    /// Takes one OTP from the session's budget; false when it is spent.
    pub fn take_otp(&mut self, claims: &Claims, now: Instant) -> bool {
        if !self.budgets.contains_key(&claims.id) {
            while self.budgets.len() >= MAX_TRACKED {
                let Some(id) = self.budget_order.pop_front() else {
                    break;
                };
                self.budgets.remove(&id);
            }
            if self.budget_order.len() >= 2 * MAX_TRACKED {
                // Ids removed by `revoke`: once per MAX_TRACKED new budgets.
                let budgets = &self.budgets;
                self.budget_order.retain(|id| budgets.contains_key(id));
            }
            self.budget_order.push_back(claims.id.clone());
        }
        let (tokens, at) = self
            .budgets
            .entry(claims.id.clone())
            .or_insert((OTP_BURST, now));
        refill(tokens, at, now);
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }

    /// The `Set-Cookie` value that hands the client its session.
    pub fn cookie(&self, token: &str, secure: bool) -> String {
        set_cookie(secure, token, self.ttl.as_secs())
    }

    /// The `Set-Cookie` value that removes it.
    pub fn clear_cookie(secure: bool) -> String {
        set_cookie(secure, "", 0)
    }
}

fn set_cookie(secure: bool, token: &str, max_age: u64) -> String {
    let name = cookie_name(secure);
    let flag = if secure { "; Secure" } else { "" };
    format!("{name}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{flag}")
}

/// The session token among a request's cookies, if any: over TLS only the
/// `__Host-` cookie counts.
pub fn token_in(cookie_header: Option<&str>, secure: bool) -> Option<&str> {
    let wanted = cookie_name(secure);
    cookie_header?
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == wanted)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

fn refill(tokens: &mut f64, at: &mut Instant, now: Instant) {
    let earned = now.saturating_duration_since(*at).as_secs_f64() / OTP_REFILL.as_secs_f64();
    *tokens = (*tokens + earned).min(OTP_BURST);
    *at = (*at).max(now);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::open(None, Duration::from_secs(3600)).unwrap()
    }

    #[test]
    fn a_token_says_who_and_until_when_and_nothing_else_passes() {
        let sessions = sessions();
        let now = SystemTime::now();
        let (token, claims) = sessions.issue("percy", now).unwrap();
        assert_eq!(sessions.verify(&token, now), Ok(claims.clone()));
        assert_eq!(claims.user, "percy");
        let later = now + Duration::from_secs(3600);
        assert_eq!(sessions.verify(&token, later), Err(Refused::Expired));
        let (payload, tag) = token.split_once('.').unwrap();
        let forged_user = hex(&String::from_utf8(unhex(payload).unwrap())
            .unwrap()
            .replace("percy", "admin")
            .into_bytes());
        assert_eq!(
            sessions.verify(&format!("{forged_user}.{tag}"), now),
            Err(Refused::BadSignature)
        );
        assert_eq!(sessions.verify("garbage", now), Err(Refused::Malformed));
        assert_eq!(sessions.verify("zz.zz", now), Err(Refused::Malformed));
        let other_key = Sessions::open(None, Duration::from_secs(3600)).unwrap();
        assert_eq!(other_key.verify(&token, now), Err(Refused::BadSignature));
    }

    #[test]
    fn a_key_file_makes_tokens_outlive_the_process() {
        let path = std::env::temp_dir().join(format!("session-key-{}", std::process::id()));
        std::fs::write(&path, [7u8; 32]).unwrap();
        let first = Sessions::open(Some(&path), Duration::from_secs(60)).unwrap();
        let (token, _) = first.issue("percy", SystemTime::now()).unwrap();
        let second = Sessions::open(Some(&path), Duration::from_secs(60)).unwrap();
        assert!(second.verify(&token, SystemTime::now()).is_ok());
        std::fs::write(&path, [7u8; 8]).unwrap();
        assert!(Sessions::open(Some(&path), Duration::from_secs(60)).is_err());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn revoked_sessions_and_spent_budgets_are_refused() {
        let mut sessions = sessions();
        let now = SystemTime::now();
        let (_, claims) = sessions.issue("percy", now).unwrap();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(sessions.take_otp(&claims, t0));
        }
        assert!(!sessions.take_otp(&claims, t0), "the burst is spent");
        assert!(sessions.take_otp(&claims, t0 + OTP_REFILL));
        assert!(!sessions.is_revoked(&claims));
        sessions.revoke(&claims, now);
        assert!(sessions.is_revoked(&claims));
    }

    /// A full table takes a new entry by dropping its oldest, never by
    /// growing or by sweeping every entry on each call.
    #[test]
    fn full_tables_stay_bounded_and_drop_their_oldest() {
        let mut sessions = sessions();
        let now = SystemTime::now();
        let t0 = Instant::now();
        let claims = |i: usize| Claims {
            id: format!("s{i}"),
            user: "percy".to_string(),
            expires: unix_seconds(now) + 3600,
        };
        for i in 0..MAX_TRACKED {
            sessions.revoke(&claims(i), now);
            assert!(sessions.take_otp(&claims(MAX_TRACKED + i), t0));
        }
        assert_eq!(sessions.revocations.len(), MAX_TRACKED);
        assert_eq!(sessions.budgets.len(), MAX_TRACKED);
        for extra in 0..3 {
            let i = 2 * MAX_TRACKED + extra;
            sessions.revoke(&claims(i), now);
            assert!(sessions.is_revoked(&claims(i)));
            assert!(sessions.take_otp(&claims(3 * MAX_TRACKED + extra), t0));
            assert!(
                sessions.revocations.len() <= MAX_TRACKED,
                "revocations grew"
            );
            assert!(sessions.budgets.len() <= MAX_TRACKED, "budgets grew");
        }
        // The oldest went first; the newer ones are all still there.
        assert!(!sessions.is_revoked(&claims(0)));
        assert!(sessions.is_revoked(&claims(3)));
        assert!(sessions.is_revoked(&claims(MAX_TRACKED - 1)));
        assert!(!sessions.budgets.contains_key("s100000"));
        assert!(
            sessions
                .budgets
                .contains_key(&format!("s{}", 2 * MAX_TRACKED - 1))
        );
    }

    #[test]
    fn logouts_are_read_back_from_beside_the_key_and_bad_lines_are_skipped() {
        let path = std::env::temp_dir().join(format!("session-key-rev-{}", std::process::id()));
        std::fs::write(&path, [7u8; 32]).unwrap();
        let revoked =
            std::env::temp_dir().join(format!("session-key-rev-{}.revoked", std::process::id()));
        std::fs::write(&revoked, "not a line\nzz 12\n").unwrap();
        let now = SystemTime::now();
        let mut first = Sessions::open(Some(&path), Duration::from_secs(60)).unwrap();
        let (_, claims) = first.issue("percy", now).unwrap();
        first.revoke(&claims, now);
        let second = Sessions::open(Some(&path), Duration::from_secs(60)).unwrap();
        assert!(second.is_revoked(&claims), "read back after a restart");
        let kept = std::fs::read_to_string(&revoked).unwrap();
        assert_eq!(kept.lines().count(), 1, "compacted to the live one: {kept}");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&revoked);
    }

    #[test]
    fn cookies_carry_the_flags() {
        let sessions = sessions();
        let cookie = sessions.cookie("abc", false);
        assert_eq!(
            cookie,
            "chat_session=abc; HttpOnly; SameSite=Strict; Path=/; Max-Age=3600"
        );
        let secure = sessions.cookie("abc", true);
        assert!(secure.starts_with("__Host-chat_session=abc;"), "{secure}");
        assert!(secure.ends_with("; Secure"));
        assert!(Sessions::clear_cookie(false).contains("Max-Age=0"));
        assert!(Sessions::clear_cookie(true).starts_with("__Host-chat_session=;"));
        let both = Some("a=1; chat_session=t0k; __Host-chat_session=s3c; b=2");
        assert_eq!(token_in(both, false), Some("t0k"));
        assert_eq!(token_in(both, true), Some("s3c"));
        assert_eq!(token_in(Some("chat_session=t0k"), true), None);
        assert_eq!(token_in(Some("chat_session="), false), None);
        assert_eq!(token_in(None, false), None);
    }
}

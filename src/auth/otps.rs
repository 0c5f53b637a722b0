//! One-time passwords: issued after a login, redeemed once by an upgrade,
//! swept when they expire, and capped in number.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Instant;

/// Outstanding OTPs allowed at once by default: past this `/login` answers
/// 429, so a login flood cannot grow memory.
pub const MAX_OUTSTANDING_OTPS: usize = 10_000;

/// Outstanding one-time passwords.
pub struct Otps {
    live: HashMap<Rc<str>, Otp>,
    /// Every OTP issued and not yet swept, oldest first. All live equally long,
    /// so issue order is expiry order; redeemed ones are skipped when swept.
    by_expiry: VecDeque<(Instant, Rc<str>)>,
    limit: usize,
}

impl Default for Otps {
    fn default() -> Self {
        Otps::with_limit(MAX_OUTSTANDING_OTPS)
    }
}

struct Otp {
    user: String,
    expires: Instant,
}

impl Otps {
    pub fn with_limit(limit: usize) -> Otps {
        Otps {
            live: HashMap::new(),
            by_expiry: VecDeque::new(),
            limit,
        }
    }

    /// True when no more OTPs may be issued until some are used or expire.
    pub fn is_full(&self) -> bool {
        self.live.len() >= self.limit
    }

    /// A new random OTP: 128 bits, hex.
    pub fn fresh() -> Result<String, String> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|err| format!("no randomness: {err}"))?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Issues a fresh OTP for `user`, valid until `expires` (which must not be
    /// earlier than that of any OTP issued before).
    pub fn issue(&mut self, user: &str, expires: Instant) -> Result<String, String> {
        let otp = Otps::fresh()?;
        let key: Rc<str> = Rc::from(otp.as_str());
        self.live.insert(
            Rc::clone(&key),
            Otp {
                user: user.to_string(),
                expires,
            },
        );
        self.by_expiry.push_back((expires, key));
        Ok(otp)
    }

    /// Consumes `otp`: the user it was issued to, if it is live and not expired.
    pub fn redeem(&mut self, otp: &str, now: Instant) -> Option<String> {
        let entry = self.live.remove(otp)?;
        (now < entry.expires).then_some(entry.user)
    }

    /// Drops every OTP expired at `now`; returns how many were never used.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let mut unused = 0;
        while let Some((expires, _)) = self.by_expiry.front() {
            if now < *expires {
                break;
            }
            if let Some((_, otp)) = self.by_expiry.pop_front() {
                unused += usize::from(self.live.remove(&otp).is_some());
            }
        }
        if self.by_expiry.is_empty() {
            self.by_expiry = VecDeque::new();
        }
        unused
    }

    pub fn outstanding(&self) -> usize {
        self.live.len()
    }

    /// When the earliest OTP not yet swept expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_expiry.front().map(|(expires, _)| *expires)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn otps_are_single_use_and_expire() {
        let now = Instant::now();
        let mut otps = Otps::default();
        let otp = otps.issue("percy", now + Duration::from_secs(5)).unwrap();
        assert_eq!(otp.len(), 32);
        assert_eq!(otps.redeem(&otp, now), Some("percy".to_string()));
        assert_eq!(otps.redeem(&otp, now), None);

        let late = otps.issue("percy", now + Duration::from_secs(5)).unwrap();
        assert_eq!(otps.redeem(&late, now + Duration::from_secs(5)), None);

        let _unused = otps.issue("percy", now + Duration::from_secs(5)).unwrap();
        assert_eq!(otps.sweep(now + Duration::from_secs(1)), 0);
        assert_eq!(otps.outstanding(), 1);
        let later = otps.issue("percy", now + Duration::from_secs(7)).unwrap();
        assert_eq!(
            otps.sweep(now + Duration::from_secs(6)),
            1,
            "only the unused one counts"
        );
        assert_eq!(otps.outstanding(), 1, "a later OTP outlives the sweep");
        assert_eq!(
            otps.redeem(&later, now + Duration::from_secs(6)),
            Some("percy".to_string())
        );
    }
}

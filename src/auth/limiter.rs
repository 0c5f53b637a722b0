//! The failed-login limiter: token buckets per client address, and one for
//! everyone that slows answers instead of refusing them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::peers::address_key;

/// Failed logins per client address (an IPv6 /64), as token buckets: each
/// failure takes a token, tokens come back at a steady rate, and an empty
/// bucket means 429. One more bucket counts every failure from everywhere:
/// while it is empty, each failure is answered only after `FAILURE_DELAY`.
/// That slows a guesser spread over many addresses without ever refusing a
/// right password, so nobody can lock a named account out.
pub struct LoginLimiter {
    buckets: HashMap<IpAddr, Bucket>,
    everyone: Bucket,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Failures allowed in a burst from one address.
const BURST: f64 = 10.0;
/// One failure forgiven every this many seconds.
const REFILL_SECS: f64 = 6.0;
/// Failures allowed in a burst from all addresses together.
const GLOBAL_BURST: f64 = 100.0;
/// Failures forgiven per second, from all addresses together.
const GLOBAL_REFILL_PER_SEC: f64 = 20.0;
/// How long a failed login's answer waits while the global budget is spent.
pub const FAILURE_DELAY: Duration = Duration::from_secs(1);
/// Addresses remembered before full buckets are forgotten.
const MAX_TRACKED: usize = 10_000;

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter {
            buckets: HashMap::new(),
            everyone: Bucket {
                tokens: GLOBAL_BURST,
                updated: Instant::now(),
            },
        }
    }
}

impl LoginLimiter {
    /// Seconds to wait before trying again, if `ip` has no failures left.
    pub fn retry_after(&mut self, ip: IpAddr, now: Instant) -> Option<u64> {
        let bucket = self.buckets.get_mut(&address_key(ip))?;
        bucket.refill(now, BURST, 1.0 / REFILL_SECS);
        (bucket.tokens < 1.0).then(|| ((1.0 - bucket.tokens) * REFILL_SECS).ceil() as u64)
    }

    /// Counts a failure from `ip`; returns how long its answer must wait.
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.buckets.len() >= MAX_TRACKED {
            self.buckets.retain(|_, bucket| {
                bucket.refill(now, BURST, 1.0 / REFILL_SECS);
                bucket.tokens < BURST
            });
        }
        let bucket = self.buckets.entry(address_key(ip)).or_insert(Bucket {
            tokens: BURST,
            updated: now,
        });
        bucket.refill(now, BURST, 1.0 / REFILL_SECS);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        self.everyone
            .refill(now, GLOBAL_BURST, GLOBAL_REFILL_PER_SEC);
        let spent = self.everyone.tokens < 1.0;
        self.everyone.tokens = (self.everyone.tokens - 1.0).max(0.0);
        spent.then_some(FAILURE_DELAY)
    }
}

impl Bucket {
    fn refill(&mut self, now: Instant, burst: f64, per_sec: f64) {
        let earned = now.saturating_duration_since(self.updated).as_secs_f64() * per_sec;
        self.tokens = (self.tokens + earned).min(burst);
        self.updated = self.updated.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_logins_run_out_and_come_back() {
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let mut limiter = LoginLimiter::default();
        for _ in 0..10 {
            assert_eq!(limiter.retry_after(ip, t0), None);
            limiter.record_failure(ip, t0);
        }
        assert_eq!(limiter.retry_after(ip, t0), Some(6));
        assert_eq!(
            limiter.retry_after(other, t0),
            None,
            "other addresses are not affected"
        );
        assert_eq!(limiter.retry_after(ip, t0 + Duration::from_secs(6)), None);
    }

    #[test]
    fn failures_are_limited_per_slash_64() {
        let t0 = Instant::now();
        let mut limiter = LoginLimiter::default();
        for host in 0..10 {
            let ip: IpAddr = format!("2001:db8::{host:x}").parse().unwrap();
            limiter.record_failure(ip, t0);
        }
        let neighbour: IpAddr = "2001:db8::ffff".parse().unwrap();
        assert_eq!(
            limiter.retry_after(neighbour, t0),
            Some(6),
            "same /64, same bucket"
        );
        let elsewhere: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert_eq!(limiter.retry_after(elsewhere, t0), None);
    }

    #[test]
    fn failures_from_everywhere_are_slowed_once_the_global_budget_is_spent() {
        let t0 = Instant::now();
        let mut limiter = LoginLimiter::default();
        let delays: Vec<Option<Duration>> = (0..110u32)
            .map(|i| {
                let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
                limiter.record_failure(ip, t0)
            })
            .collect();
        assert!(
            delays[..100].iter().all(Option::is_none),
            "the burst passes"
        );
        assert!(delays[100..].iter().all(|d| *d == Some(FAILURE_DELAY)));
        let ip: IpAddr = "10.1.0.0".parse().unwrap();
        assert_eq!(
            limiter.retry_after(ip, t0),
            None,
            "no address is refused for it"
        );
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            limiter.record_failure(ip, later),
            None,
            "20 a second come back"
        );
    }
}

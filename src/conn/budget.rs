//! A chat member's event budget: `--event-rate` events a second with bursts
//! of `--event-burst`, kept as a single instant (the generic cell rate
//! algorithm, the "virtual scheduling" form of a token bucket): the time at
//! which the next event would be on schedule at the steady rate. An event is
//! allowed while that time is no further ahead than the burst allows.

use std::time::{Duration, Instant};

use crate::config::Config;

/// The rate and burst, as time: one event's interval, and how far ahead of
/// schedule a client may run.
pub struct Rate {
    interval: Duration,
    tolerance: Duration,
}

impl Rate {
    pub fn of(config: &Config) -> Rate {
        let per_second = u32::try_from(config.event_rate.max(1)).unwrap_or(u32::MAX);
        let interval = (Duration::from_secs(1) / per_second).max(Duration::from_nanos(1));
        let burst = u32::try_from(config.event_burst.max(1)).unwrap_or(u32::MAX);
        Rate {
            interval,
            tolerance: interval.saturating_mul(burst - 1),
        }
    }
}

pub struct EventBudget {
    /// When the next event would be on schedule at the steady rate.
    scheduled: Instant,
}

impl EventBudget {
    /// A full budget: a whole burst is available at `now`.
    pub fn new(now: Instant) -> EventBudget {
        EventBudget { scheduled: now }
    }

    /// Events that may be taken at `now`.
    pub fn available(&self, now: Instant, rate: &Rate) -> usize {
        let horizon = now + rate.tolerance;
        let scheduled = self.scheduled.max(now);
        if scheduled > horizon {
            return 0;
        }
        let ahead = (horizon - scheduled).as_nanos() / rate.interval.as_nanos();
        usize::try_from(ahead)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
    }

    /// Spends one event at `now` (callers check `available` first).
    pub fn take(&mut self, now: Instant, rate: &Rate) {
        self.scheduled = self.scheduled.max(now) + rate.interval;
    }

    /// True when the whole burst is available again.
    pub fn is_full(&self, now: Instant) -> bool {
        self.scheduled <= now
    }

    /// When the next event may be taken.
    pub fn next_allowed(&self, rate: &Rate) -> Instant {
        let ahead = self.scheduled.checked_sub(rate.tolerance);
        ahead.unwrap_or(self.scheduled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: usize, burst: usize) -> Rate {
        Rate::of(&Config {
            event_rate: per_second,
            event_burst: burst,
            ..Config::default()
        })
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let t0 = Instant::now();
        let rate = rate(20, 50);
        let mut budget = EventBudget::new(t0);
        assert_eq!(budget.available(t0, &rate), 50);
        for _ in 0..50 {
            budget.take(t0, &rate);
        }
        assert_eq!(budget.available(t0, &rate), 0);
        assert_eq!(budget.next_allowed(&rate), t0 + Duration::from_millis(50));
        assert_eq!(budget.available(t0 + Duration::from_millis(49), &rate), 0);
        assert_eq!(budget.available(t0 + Duration::from_millis(50), &rate), 1);
        assert_eq!(budget.available(t0 + Duration::from_secs(1), &rate), 20);
        assert!(!budget.is_full(t0 + Duration::from_secs(2)));
        assert!(budget.is_full(t0 + Duration::from_millis(2500)));
        assert_eq!(
            budget.available(t0 + Duration::from_secs(60), &rate),
            50,
            "never above the burst"
        );
    }

    #[test]
    fn extreme_settings_do_not_overflow() {
        let t0 = Instant::now();
        let fast = rate(1_000_000, usize::MAX);
        let budget = EventBudget::new(t0);
        assert!(budget.available(t0, &fast) > 1_000_000);
        let slow = rate(1, 1);
        let mut budget = EventBudget::new(t0);
        budget.take(t0, &slow);
        assert_eq!(budget.available(t0, &slow), 0);
        assert_eq!(budget.next_allowed(&slow), t0 + Duration::from_secs(1));
    }
}

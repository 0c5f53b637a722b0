//! A hashed timer wheel: every deadline in the server (ping due, pong overdue,
//! HTTP header and idle timeouts, OTP expiry, close handshake) lives here.
//!
//! Time is cut into ticks; a deadline goes into slot `tick % slots` with its
//! absolute tick, so deadlines beyond one revolution simply wait for a later
//! pass. Cancelling is lazy: keys carry whatever the owner needs to tell a
//! stale timer from a live one (a connection's generation, say), and the owner
//! ignores stale keys when they fire. That keeps insert O(1) and needs no handles.

use std::time::{Duration, Instant};

/// The end of a slot's list (and of the free list).
const NIL: u32 = u32::MAX;

/// One pending deadline; nodes are pooled, and each slot is a linked list of them.
#[derive(Clone, Copy)]
struct Node<K> {
    due_tick: u64,
    key: K,
    next: u32,
}

/// Nodes live in one pool and slots only hold list heads, so memory follows
/// the number of timers pending, not how they happen to spread over the slots.
pub struct TimerWheel<K> {
    origin: Instant,
    tick: Duration,
    /// The first node of each slot's list.
    heads: Vec<u32>,
    nodes: Vec<Node<K>>,
    /// The first unused node.
    free: u32,
    /// The last tick whose slot has been expired.
    done_tick: u64,
    len: usize,
}

impl<K: Copy> TimerWheel<K> {
    /// Bytes one pending timer takes in the pool.
    #[cfg(test)]
    pub const NODE_SIZE: usize = std::mem::size_of::<Node<K>>();

    /// A wheel starting at `origin` with `slot_count` slots of `tick` each.
    pub fn new(origin: Instant, tick: Duration, slot_count: usize) -> Self {
        assert!(
            !tick.is_zero() && slot_count > 0,
            "a wheel needs ticks and slots"
        );
        TimerWheel {
            origin,
            tick,
            heads: vec![NIL; slot_count],
            nodes: Vec::new(),
            free: NIL,
            done_tick: 0,
            len: 0,
        }
    }

    /// Timers waiting, stale ones included.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The tick a timer for `deadline` would fire at, if inserted now (never 0).
    pub fn tick_for(&self, deadline: Instant) -> u64 {
        self.tick_at_or_after(deadline).max(self.done_tick + 1)
    }

    /// The last tick whose timers have fired.
    pub fn done_tick(&self) -> u64 {
        self.done_tick
    }

    /// Schedules `key` to fire at or shortly after `deadline` (never before
    /// it); returns the tick it fires at.
    pub fn insert(&mut self, deadline: Instant, key: K) -> u64 {
        let due_tick = self.tick_for(deadline);
        let slot = self.slot_of(due_tick);
        let node = Node {
            due_tick,
            key,
            next: self.heads[slot],
        };
        let at = if self.free != NIL {
            let at = self.free;
            self.free = self.nodes[at as usize].next;
            self.nodes[at as usize] = node;
            at
        } else {
            // Past u32::MAX - 1 pending timers (never, with one file limit of
            // connections) the newest would alias the end marker; refuse that.
            assert!(self.nodes.len() < NIL as usize, "timer pool exhausted");
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        };
        self.heads[slot] = at;
        self.len += 1;
        due_tick
    }

    /// Moves every key due at `now` into `fired`, in deadline-tick order.
    pub fn expire(&mut self, now: Instant, fired: &mut Vec<K>) {
        let now_tick = self.tick_before(now);
        if now_tick <= self.done_tick {
            return;
        }
        // A jump of more than one revolution visits each slot once.
        let last = now_tick.min(self.done_tick + self.heads.len() as u64);
        for tick in self.done_tick + 1..=last {
            let slot = self.slot_of(tick);
            let mut previous = NIL;
            let mut at = self.heads[slot];
            while at != NIL {
                let node = self.nodes[at as usize];
                if node.due_tick <= now_tick {
                    fired.push(node.key);
                    match previous {
                        NIL => self.heads[slot] = node.next,
                        _ => self.nodes[previous as usize].next = node.next,
                    }
                    self.nodes[at as usize].next = self.free;
                    self.free = at;
                    self.len -= 1;
                } else {
                    previous = at;
                }
                at = node.next;
            }
        }
        self.done_tick = now_tick;
    }

    /// How long the loop may sleep before the next timer is due (None: no timers).
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        let slot_count = self.heads.len() as u64;
        let next_due = (self.done_tick + 1..=self.done_tick + slot_count)
            .find(|&tick| self.slot_has_due(self.slot_of(tick), tick))
            .unwrap_or(self.done_tick + slot_count);
        Some(self.instant_of(next_due).saturating_duration_since(now))
    }

    /// When tick number `tick` begins. Computed in u64 nanoseconds: ticks pass
    /// 2^32 after about 497 days of 10 ms, and must not wrap there.
    fn instant_of(&self, tick: u64) -> Instant {
        let tick_nanos = u64::try_from(self.tick.as_nanos()).unwrap_or(u64::MAX);
        self.origin + Duration::from_nanos(tick_nanos.saturating_mul(tick))
    }

    fn slot_of(&self, tick: u64) -> usize {
        (tick % self.heads.len() as u64) as usize
    }

    /// True if the list in `slot` holds a node due exactly at `tick`.
    fn slot_has_due(&self, slot: usize, tick: u64) -> bool {
        let mut at = self.heads[slot];
        while at != NIL {
            let node = &self.nodes[at as usize];
            if node.due_tick == tick {
                return true;
            }
            at = node.next;
        }
        false
    }

    /// The first tick boundary at or after `at`.
    fn tick_at_or_after(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.origin).as_nanos();
        let tick = self.tick.as_nanos();
        nanos.div_ceil(tick) as u64
    }

    /// The last tick boundary at or before `at`.
    fn tick_before(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.origin).as_nanos() / self.tick.as_nanos()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(10);

    fn fire(wheel: &mut TimerWheel<u32>, at: Instant) -> Vec<u32> {
        let mut fired = Vec::new();
        wheel.expire(at, &mut fired);
        fired
    }

    /// 2^32 ticks of 10 ms is about 497 days of uptime: past it the next
    /// timeout must still lie ahead (a deadline in the past would make the
    /// poll timeout 0 forever, a busy loop).
    #[test]
    fn the_next_timeout_stays_right_past_two_to_the_32_ticks() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, TICK, 1024);
        let day = Duration::from_secs(24 * 60 * 60);
        let later = t0 + day * 500;
        assert!(wheel.tick_before(later) > u64::from(u32::MAX));
        wheel.expire(later, &mut Vec::new());
        wheel.insert(later + Duration::from_secs(5), 7);
        let wait = wheel.next_timeout(later).unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(5),
            "next timeout {wait:?} after 500 days"
        );
        assert_eq!(fire(&mut wheel, later + Duration::from_secs(5)), vec![7]);
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, TICK, 8);
        wheel.insert(t0 + Duration::from_millis(25), 1);
        assert!(fire(&mut wheel, t0 + Duration::from_millis(20)).is_empty());
        assert_eq!(fire(&mut wheel, t0 + Duration::from_millis(30)), vec![1]);
        assert!(wheel.is_empty());
        assert!(fire(&mut wheel, t0 + Duration::from_millis(100)).is_empty());
    }

    #[test]
    fn many_deadlines_in_one_slot() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, TICK, 4);
        for key in 0..100 {
            wheel.insert(t0 + Duration::from_millis(10), key);
        }
        // Same slot, one revolution later: must not fire with the first batch.
        wheel.insert(t0 + Duration::from_millis(50), 1000);
        let mut fired = fire(&mut wheel, t0 + Duration::from_millis(10));
        fired.sort();
        assert_eq!(fired, (0..100).collect::<Vec<_>>());
        assert_eq!(wheel.len(), 1);
        assert_eq!(fire(&mut wheel, t0 + Duration::from_millis(50)), vec![1000]);
    }

    #[test]
    fn deadlines_beyond_one_revolution() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, TICK, 4); // one revolution = 40 ms
        wheel.insert(t0 + Duration::from_millis(130), 7);
        for step in 1..13 {
            assert!(
                fire(&mut wheel, t0 + TICK * step).is_empty(),
                "fired early at step {step}"
            );
        }
        assert_eq!(fire(&mut wheel, t0 + Duration::from_millis(130)), vec![7]);
    }

    #[test]
    fn time_jumping_forward_fires_everything_due_once() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, TICK, 4);
        for key in 0..20 {
            wheel.insert(t0 + TICK * (key + 1), key);
        }
        wheel.insert(t0 + Duration::from_secs(10), 99);
        let mut fired = fire(&mut wheel, t0 + Duration::from_secs(5));
        fired.sort();
        assert_eq!(fired, (0..20).collect::<Vec<_>>());
        assert_eq!(wheel.len(), 1);
        assert_eq!(fire(&mut wheel, t0 + Duration::from_secs(10)), vec![99]);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_tick() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, TICK, 4);
        assert!(fire(&mut wheel, t0 + Duration::from_millis(55)).is_empty());
        wheel.insert(t0, 3);
        assert_eq!(fire(&mut wheel, t0 + Duration::from_millis(60)), vec![3]);
    }

    #[test]
    fn cancel_is_lazy_by_generation() {
        // The owner bumps a generation to cancel; the wheel still fires the old
        // key, and the owner recognises it as stale.
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, TICK, 8);
        let mut generation = 1;
        wheel.insert(t0 + TICK, generation);
        generation += 1; // cancel
        wheel.insert(t0 + TICK * 3, generation);
        let live: Vec<u32> = fire(&mut wheel, t0 + TICK * 3)
            .into_iter()
            .filter(|&key| key == generation)
            .collect();
        assert_eq!(live, vec![2]);
    }

    #[test]
    fn next_timeout_points_at_the_earliest_due_tick() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, TICK, 8);
        assert_eq!(wheel.next_timeout(t0), None);
        wheel.insert(t0 + Duration::from_millis(200), 1); // beyond one revolution (80 ms)
        wheel.insert(t0 + Duration::from_millis(30), 2);
        assert_eq!(wheel.next_timeout(t0), Some(Duration::from_millis(30)));
        fire(&mut wheel, t0 + Duration::from_millis(30));
        // Only the far timer is left: wake at most one revolution later.
        let wait = wheel.next_timeout(t0 + Duration::from_millis(30)).unwrap();
        assert!(wait <= Duration::from_millis(80), "{wait:?}");
    }

    #[test]
    fn fired_nodes_are_reused_wherever_the_next_timers_land() {
        // A heartbeat every 2 s walks around a 10 s wheel: the pool must stay
        // as large as the timers pending, not grow with the slots they visit.
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, TICK, 64);
        for key in 0..100 {
            wheel.insert(t0 + TICK * (key % 10 + 1), key);
        }
        for round in 1..=20u32 {
            let now = t0 + TICK * (round * 10);
            let fired = fire(&mut wheel, now);
            assert_eq!(fired.len(), 100, "round {round}");
            for key in fired {
                wheel.insert(now + TICK * (key % 10 + 1), key);
            }
        }
        assert_eq!(wheel.len(), 100);
        assert_eq!(wheel.nodes.len(), 100);
    }
}

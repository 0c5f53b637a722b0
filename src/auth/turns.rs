//! Login turns: how many password checks run per loop iteration, and who
//! waits for the next one.

use std::collections::VecDeque;
use std::mem;

use crate::slab::SlotId;

/// Password checks run per loop iteration; connections wanting more wait.
pub const LOGINS_PER_ITERATION: usize = 2;

/// Turns at checking a password. Each check is milliseconds of the one thread,
/// so at most `LOGINS_PER_ITERATION` run per loop iteration and everyone
/// else chats in between. Connections that want a check queue for it and get
/// one check per turn, then go to the back: one connection pipelining logins
/// cannot take every check while others wait.
#[derive(Default)]
pub struct LoginTurns {
    /// Checks left in this iteration.
    left: usize,
    waiting: VecDeque<SlotId>,
}

impl LoginTurns {
    pub fn new_iteration(&mut self) {
        self.left = LOGINS_PER_ITERATION;
    }

    /// Whether `id` may check a password now: with a turn `granted` to it
    /// (used up here), or when nobody waits and checks are left. Otherwise it
    /// joins the queue and must wait to be granted a turn.
    pub fn admit(&mut self, id: SlotId, granted: &mut bool) -> bool {
        if mem::take(granted) {
            return true;
        }
        if self.left > 0 && self.waiting.is_empty() {
            self.left -= 1;
            return true;
        }
        self.waiting.push_back(id);
        false
    }

    /// The next waiting connection for which `alive` holds, if a check is left
    /// in this iteration; it is granted one.
    pub fn grant(&mut self, alive: impl Fn(SlotId) -> bool) -> Option<SlotId> {
        while self.left > 0 {
            let id = self.waiting.pop_front()?;
            if alive(id) {
                self.left -= 1;
                return Some(id);
            }
        }
        None
    }

    /// Connections waiting for a turn (the loop must not sleep while any do).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_turns_go_round_robin() {
        let mut slab = crate::slab::Slab::new();
        let (greedy, patient) = (slab.insert(()), slab.insert(()));
        let mut turns = LoginTurns::default();
        turns.new_iteration();
        let mut none = false;
        for _ in 0..LOGINS_PER_ITERATION {
            assert!(turns.admit(greedy, &mut none));
        }
        assert!(
            !turns.admit(greedy, &mut none),
            "the iteration's checks are spent"
        );
        assert!(!turns.admit(patient, &mut none));
        turns.new_iteration();
        assert!(
            !turns.admit(greedy, &mut none),
            "others wait: no jumping the queue"
        );
        let mut order: Vec<SlotId> = Vec::new();
        while turns.waiting() > 0 {
            match turns.grant(|_| true) {
                Some(id) => order.push(id),
                None => turns.new_iteration(),
            }
        }
        assert_eq!(order, [greedy, patient, greedy], "first come, first served");
        let mut granted = true;
        assert!(turns.admit(greedy, &mut granted));
        assert!(!granted, "a granted turn is used once");
    }
}

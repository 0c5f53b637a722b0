//! Whether Redis is there: each link going up (what a fresh connection needs
//! sent) and down (what was in flight fails), probes that catch a link that
//! stopped answering, and the outage logged once.

use std::time::{Duration, Instant};

use mio::Registry;

use super::RedisBus;
use super::dispatch::Expect;
use super::link::{Change, command};
use crate::broker::StoreAnswer;

/// How often the subscription link is asked to prove it still delivers, and
/// how long it may take to answer before it is reconnected.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_WAIT: Duration = Duration::from_secs(3);
/// A command reply later than this means the command link is stuck.
const REPLY_WAIT: Duration = Duration::from_secs(5);

impl RedisBus {
    pub(super) fn on_command_link(&mut self, change: Change) {
        match change {
            Change::Nothing => {}
            Change::Up => {
                for handshake in self.commands.target().handshake() {
                    if self.commands.send(&handshake) {
                        self.expected.push_back((self.now, Expect::Handshake));
                    }
                }
                self.ask_role();
                self.load_script(false);
                self.load_script(true);
                // Before anything said from now on: each room's order holds.
                self.send_outboxes();
                // After them: a user's leave comes after its last message.
                self.presence_came_up();
                self.read_bans();
                self.came_up();
            }
            Change::Down(why) => {
                self.stats.reconnects += 1;
                self.forget_master();
                self.script_sha = None;
                self.read_sha = None;
                let mut unanswered = Vec::new();
                for (_, expect) in std::mem::take(&mut self.expected) {
                    match expect {
                        Expect::Otp { asker, .. }
                        | Expect::Look { asker, .. }
                        | Expect::Rooms { asker, .. } => {
                            self.answers.push((asker, StoreAnswer::Unavailable));
                        }
                        Expect::Publish { room, post, .. } => {
                            // Published or not, no answer will tell: tried
                            // again, published only if Redis lacks it.
                            unanswered.push((room, post));
                        }
                        expect @ (Expect::Repair { .. } | Expect::Replays { .. }) => {
                            self.read_failed(expect);
                        }
                        // Presence is published whole, and read again, when
                        // the link is back.
                        Expect::Handshake
                        | Expect::ScriptLoad { .. }
                        | Expect::Role
                        | Expect::Presence
                        | Expect::PresenceRead { .. }
                        | Expect::Heartbeat { .. }
                        | Expect::Alive { .. }
                        | Expect::Control
                        | Expect::Bans => {}
                    }
                }
                self.retry_later(unanswered);
                self.went_down(&why);
            }
        }
    }

    pub(super) fn on_subscription_link(&mut self, change: Change) {
        match change {
            Change::Nothing => {}
            Change::Up => {
                for handshake in self.subscriptions.target().handshake() {
                    self.subscriptions.send(&handshake);
                }
                self.subscribe_all_again();
                self.probe_sent = None;
                self.next_probe = self.now + PROBE_EVERY;
                self.came_up();
            }
            Change::Down(why) => {
                self.stats.reconnects += 1;
                self.probe_sent = None;
                self.went_down(&why);
                self.release_all_held();
            }
        }
    }

    fn came_up(&mut self) {
        if self.is_up() {
            if self.outage_logged {
                log::info!("redis is back: cross-process chat resumes");
            }
            self.outage_logged = false;
            if let Some(since) = self.down_since.take() {
                self.stats.last_outage = self.now.saturating_duration_since(since);
            }
        }
    }

    fn went_down(&mut self, why: &str) {
        self.down_since.get_or_insert(self.now);
        self.presence_went_down();
        if let Some(sentinels) = &mut self.sentinels {
            sentinels.ask_again(); // the master may have moved
        }
        if !self.outage_logged {
            log::warn!(
                "redis unreachable ({why}): messages reach this process's members only; \
                 logins answer 503 until it is back"
            );
            self.outage_logged = true;
        }
    }

    /// Probes the subscription link, and resets a link that stopped answering.
    pub(super) fn check_liveness(&mut self, now: Instant, registry: &Registry) {
        if let Some(sent) = self.probe_sent
            && now >= sent + PROBE_WAIT
        {
            let change = self
                .subscriptions
                .reset("no answer to a probe", now, registry);
            self.on_subscription_link(change);
        } else if self.probe_sent.is_none() && now >= self.next_probe && self.subscriptions.is_up()
        {
            if self.subscriptions.send(&command(&["PING"])) {
                self.probe_sent = Some(now);
            }
            if self.commands.is_up() {
                self.ask_role(); // a master demoted meanwhile keeps its clients
            }
            self.next_probe = now + PROBE_EVERY;
        }
        if let Some((sent, _)) = self.expected.front()
            && now >= *sent + REPLY_WAIT
        {
            let change = self.commands.reset("no reply in time", now, registry);
            self.on_command_link(change);
        }
    }

    /// When the next probe is due, or the one out must have been answered.
    pub(super) fn probe_due(&self) -> Instant {
        match self.probe_sent {
            Some(sent) => sent + PROBE_WAIT,
            None => self.next_probe,
        }
    }
}

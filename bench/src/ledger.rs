//! Who got each measured message (`--each true`): one bit per connection
//! per message, so a step can say which messages some member who should
//! have got them never did, which came late, and which came twice, where
//! the step's totals (delivered against expected) would let a duplicate
//! hide a miss. Off by default: it costs `connections / 8` bytes per
//! message sent, and the fan-out's hot path one more number to parse.

use serde_json::{Value, json};

/// One measured step's messages, numbered from 0 in the order sent.
pub struct Ledger {
    connections: usize,
    /// Words of the bit set per message (one bit per connection).
    words: usize,
    /// A delivery later than this (µs after the send) is late.
    late_us: u64,
    /// Per message: the connections it reached (`words` words each).
    got: Vec<u64>,
    /// Per message: the members of its room, open when it was sent.
    expected: Vec<u32>,
    /// Per message: deliveries that came late.
    late: Vec<u32>,
    /// Per message: when it was sent, µs since the Unix epoch (to line a
    /// step's misses up with what happened outside, e.g. a failover).
    sent_at: Vec<u64>,
    /// Deliveries of a message to a connection that already had it.
    pub duplicates: u64,
    /// Deliveries naming a message number never sent, or a connection out
    /// of range (a corrupted or foreign stamp).
    pub strays: u64,
}

/// What a ledger says about its step.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub messages: u64,
    /// Deliveries owed (every message times the members it was owed to).
    pub expected: u64,
    /// Distinct (message, member) deliveries that arrived.
    pub received: u64,
    /// Deliveries that never arrived, and the messages missing at least one.
    pub missing: u64,
    pub messages_missing_some: u64,
    /// Messages that reached no member at all.
    pub messages_missing_all: u64,
    /// Deliveries later than the threshold, and the messages with at least one.
    pub late: u64,
    pub messages_late: u64,
    pub duplicates: u64,
    pub strays: u64,
    /// When the first and the last message missing some delivery were
    /// sent (µs since the Unix epoch).
    pub missing_sent_first: Option<u64>,
    pub missing_sent_last: Option<u64>,
    /// When each message that reached nobody was sent (the first
    /// `MISSING_ALL_LISTED`).
    pub missing_all_sent: Vec<u64>,
}

/// Messages that reached nobody listed by their send time, at most.
const MISSING_ALL_LISTED: usize = 20;

impl Ledger {
    pub fn new(connections: usize, late_us: u64) -> Ledger {
        Ledger {
            connections,
            words: connections.div_ceil(64).max(1),
            late_us,
            got: Vec::new(),
            expected: Vec::new(),
            late: Vec::new(),
            sent_at: Vec::new(),
            duplicates: 0,
            strays: 0,
        }
    }

    /// A message was sent to a room of `recipients` open members at
    /// `sent_at` (µs since the Unix epoch); returns its number.
    pub fn sent(&mut self, recipients: u64, sent_at: u64) -> u64 {
        let number = self.expected.len() as u64;
        self.expected
            .push(u32::try_from(recipients).unwrap_or(u32::MAX));
        self.late.push(0);
        self.sent_at.push(sent_at);
        self.got.resize(self.got.len() + self.words, 0);
        number
    }

    /// Message `number` reached connection `conn`, `latency_us` after it was sent.
    pub fn delivered(&mut self, number: u64, conn: usize, latency_us: u64) {
        let Ok(number) = usize::try_from(number) else {
            self.strays += 1;
            return;
        };
        if number >= self.expected.len() || conn >= self.connections {
            self.strays += 1;
            return;
        }
        let word = &mut self.got[number * self.words + conn / 64];
        let bit = 1u64 << (conn % 64);
        if *word & bit != 0 {
            self.duplicates += 1;
            return;
        }
        *word |= bit;
        if latency_us > self.late_us {
            self.late[number] = self.late[number].saturating_add(1);
        }
    }

    pub fn tally(&self) -> Tally {
        let mut tally = Tally {
            messages: self.expected.len() as u64,
            duplicates: self.duplicates,
            strays: self.strays,
            ..Tally::default()
        };
        for (number, &expected) in self.expected.iter().enumerate() {
            let bits = &self.got[number * self.words..(number + 1) * self.words];
            let received: u64 = bits.iter().map(|w| u64::from(w.count_ones())).sum();
            let expected = u64::from(expected);
            let missing = expected.saturating_sub(received);
            tally.expected += expected;
            tally.received += received;
            tally.missing += missing;
            let sent_at = self.sent_at[number];
            if missing > 0 {
                tally.messages_missing_some += 1;
                tally.missing_sent_first.get_or_insert(sent_at);
                tally.missing_sent_last = Some(sent_at);
            }
            if received == 0 && expected > 0 {
                tally.messages_missing_all += 1;
                if tally.missing_all_sent.len() < MISSING_ALL_LISTED {
                    tally.missing_all_sent.push(sent_at);
                }
            }
            let late = u64::from(self.late[number]);
            tally.late += late;
            tally.messages_late += u64::from(late > 0);
        }
        tally
    }
}

impl Tally {
    pub fn to_json(&self, late_ms: f64) -> Value {
        json!({
            "late_after_ms": late_ms,
            "messages": self.messages,
            "deliveries_expected": self.expected,
            "deliveries_received": self.received,
            "deliveries_never": self.missing,
            "messages_never_delivered_to_some": self.messages_missing_some,
            "messages_never_delivered_to_any": self.messages_missing_all,
            "deliveries_late": self.late,
            "messages_late": self.messages_late,
            "duplicates": self.duplicates,
            "strays": self.strays,
            "never_delivered_sent_first_unix_s": self.missing_sent_first.map(unix_s),
            "never_delivered_sent_last_unix_s": self.missing_sent_last.map(unix_s),
            "never_delivered_to_any_sent_unix_s":
                self.missing_all_sent.iter().copied().map(unix_s).collect::<Vec<_>>(),
        })
    }
}

/// µs since the Unix epoch as seconds, to the µs.
fn unix_s(micros: u64) -> f64 {
    micros as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_late_and_duplicates_are_told_apart() {
        // 130 connections: three words per message, the last one partial.
        let mut ledger = Ledger::new(130, 1_000_000);
        let a = ledger.sent(3, 100); // reaches 0, 65 and 129, one of them late
        let b = ledger.sent(2, 200); // reaches 1 twice and never 2
        let c = ledger.sent(2, 300); // reaches nobody
        assert_eq!((a, b, c), (0, 1, 2));
        ledger.delivered(a, 0, 10);
        ledger.delivered(a, 65, 2_000_000);
        ledger.delivered(a, 129, 1_000_000); // exactly the threshold: on time
        ledger.delivered(b, 1, 10);
        ledger.delivered(b, 1, 10);
        ledger.delivered(7, 1, 10); // never sent
        ledger.delivered(a, 130, 10); // no such connection
        assert_eq!(
            ledger.tally(),
            Tally {
                messages: 3,
                expected: 7,
                received: 4,
                missing: 3,
                messages_missing_some: 2,
                messages_missing_all: 1,
                late: 1,
                messages_late: 1,
                duplicates: 1,
                strays: 2,
                missing_sent_first: Some(200),
                missing_sent_last: Some(300),
                missing_all_sent: vec![300],
            }
        );
    }

    #[test]
    fn a_duplicate_does_not_hide_a_miss() {
        // Totals alone (2 delivered of 2 expected) would say all arrived.
        let mut ledger = Ledger::new(2, 1000);
        let m = ledger.sent(2, 1);
        ledger.delivered(m, 0, 1);
        ledger.delivered(m, 0, 1);
        let tally = ledger.tally();
        assert_eq!((tally.received, tally.missing, tally.duplicates), (1, 1, 1));
    }
}

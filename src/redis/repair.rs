//! Keeping a room's live messages whole on this process.
//!
//! Redis keeps nothing of a channel for a subscriber that is away: a process
//! whose subscription link drops, even for a moment, never hears what was
//! published meanwhile. The room's stream still holds it. So each room
//! follows its numbering here (per epoch: a room whose keys expired starts
//! again at 1, which is no gap), and when a number is skipped, or the room's
//! subscription had to be made again, it reads the missing range from the
//! stream and hands the hub that range and then the live messages held
//! meanwhile, in order and each once (a message both read and heard is
//! delivered once, by its number). Only what the stream no longer holds is
//! a gap: counted and logged. A room's first subscription reads where the
//! room stands (its epoch and newest number, no messages), so that a room
//! still silent when the link drops is followed on from there too; that
//! read holds nothing back (live messages already on their way may come
//! after it, and are new to the room's members whatever their number).

use std::collections::HashSet;
use std::rc::Rc;

use super::scripts::RoomRead;
use crate::broker::Arrival;

/// Live messages held per room while its stream is read, at most. Past it
/// they are dropped: the hole they leave is found, and read, afterwards.
const MAX_HELD: usize = 4096;

/// Where one room's numbering stands on this process.
#[derive(Default)]
pub struct Sequence {
    /// Where the room stands is known: from a message heard (or a repair).
    known: bool,
    /// Where the room stood when first subscribed, if read: where to follow
    /// on from should the link drop before a message is heard.
    stood: Option<(Rc<str>, u64)>,
    /// The epoch of `last` (empty: the room had no messages).
    epoch: Rc<str>,
    /// The last number handed to the hub.
    last: u64,
    /// Reads of the stream in flight, and the live messages held for them.
    reads: u32,
    held: Vec<Arrival>,
    /// Messages this process's members already have, though never heard:
    /// posted here while the subscription link was down, they were
    /// delivered at once, unnumbered (a read, or a late live copy, would
    /// give them a second time).
    here: Vec<(Rc<str>, u64)>,
    /// The same, published but not yet answered (so not yet numbered): the
    /// events as sent (without their closing `}}` and id). A copy may come
    /// live, or in a read, before the answer does (two connections).
    sent: Vec<Vec<u8>>,
    /// Holes found by the last read, for the hub to tell its members.
    pub holes: Vec<Hole>,
}

/// Messages of a room lost for good: those before number `next` of `epoch`.
/// `before`: the index, in the output the read wrote to, of the first
/// message handed on after the hole.
#[derive(Debug, PartialEq, Eq)]
pub struct Hole {
    pub epoch: Rc<str>,
    pub next: u64,
    pub before: usize,
}

/// A read to send: the room's messages after `after` of `epoch` (any
/// epoch but the room's: everything kept); or, `where_from`, only where the
/// room stands.
#[derive(Debug, PartialEq, Eq)]
pub struct Fetch {
    pub epoch: Rc<str>,
    pub after: u64,
    pub where_from: bool,
}

impl Sequence {
    /// The room's epoch as a shared string: this one's if it is `epoch`
    /// (no allocation per message), else a new one.
    pub fn epoch_for(&self, epoch: &str) -> Rc<str> {
        match *self.epoch == *epoch {
            true => Rc::clone(&self.epoch),
            false => Rc::from(epoch),
        }
    }

    /// A message heard on the room's channel: handed on (into `out`),
    /// dropped as a copy, or held while a read of what came before it is
    /// asked for (returned: the caller sends it, and answers `read_done`).
    pub fn heard(&mut self, arrival: Arrival, out: &mut Vec<Arrival>) -> Option<Fetch> {
        if self.reads > 0 {
            if self.held.len() < MAX_HELD {
                self.held.push(arrival);
            }
            return None;
        }
        let expected = self.expected(&arrival);
        if arrival.seq > expected {
            if *arrival.epoch != *self.epoch {
                // A new epoch whose first messages were missed.
                self.epoch = Rc::clone(&arrival.epoch);
                self.last = 0;
            }
            self.reads = 1;
            self.held.push(arrival);
            return Some(Fetch {
                epoch: Rc::clone(&self.epoch),
                after: self.last,
                where_from: false,
            });
        }
        self.hand_on(arrival, expected, out);
        None
    }

    /// Redis confirmed the room's subscription. Made again (the link was
    /// lost): whatever was published while it was away is read. Made for
    /// the first time: where the room stands. Live messages wait for either.
    pub fn subscribed(&mut self) -> Fetch {
        if !self.known {
            let Some((epoch, last)) = self.stood.take() else {
                return Fetch {
                    epoch: Rc::from(""),
                    after: 0,
                    where_from: true,
                };
            };
            (self.known, self.epoch, self.last) = (true, epoch, last);
        }
        self.reads += 1;
        Fetch {
            epoch: Rc::clone(&self.epoch),
            after: self.last,
            where_from: false,
        }
    }

    /// The answer to a `where_from` read (kept unless a message was heard).
    pub fn stood(&mut self, read: Option<RoomRead>) {
        if let Some(read) = read
            && !self.known
        {
            self.stood = Some((Rc::from(read.epoch.as_str()), read.newest));
        }
    }

    /// A message delivered here already (unnumbered) is published: until
    /// Redis answers with its number, a copy is known by its event `open`.
    pub fn sent_here(&mut self, open: Vec<u8>) {
        if self.sent.len() < MAX_HELD {
            self.sent.push(open);
        }
    }

    /// Redis numbered `open` (see `sent_here`) `seq` of `epoch`: unless its
    /// copy came already, it is known by that number from now on.
    pub fn numbered_here(&mut self, open: &[u8], epoch: &str, seq: u64) {
        let Some(at) = self.sent.iter().position(|sent| sent[..] == *open) else {
            return; // its copy came first
        };
        self.sent.swap_remove(at);
        if self.here.len() < MAX_HELD {
            self.here.push((self.epoch_for(epoch), seq));
        }
    }

    /// Whether `event` (a whole event JSON with its id) is the copy of a
    /// message delivered here and sent, not yet answered (forgotten once
    /// found).
    fn was_sent(&mut self, event: &[u8]) -> bool {
        let Some(at) = self.sent.iter().position(|open| {
            event
                .strip_prefix(&open[..])
                .is_some_and(|rest| rest.starts_with(b",\"id\":"))
        }) else {
            return false;
        };
        self.sent.swap_remove(at);
        true
    }

    /// Whether `seq` of `epoch` is one delivered here already (forgotten
    /// once asked: each comes once, by the read or live).
    fn was_here(&mut self, epoch: &str, seq: u64) -> bool {
        let Some(at) = self
            .here
            .iter()
            .position(|(of, n)| **of == *epoch && *n == seq)
        else {
            return false;
        };
        self.here.swap_remove(at);
        true
    }

    /// Live messages are held for a read of the stream.
    pub fn repairing(&self) -> bool {
        self.reads > 0
    }

    /// A read asked for came back (`None`: it failed). Its messages newer
    /// than what was handed on go first, then the held live ones. Returns
    /// how many messages are lost for good (neither heard nor kept), and how
    /// many the read brought that were not heard.
    pub fn read_done(
        &mut self,
        room: &Rc<str>,
        read: Option<RoomRead>,
        out: &mut Vec<Arrival>,
    ) -> (u64, u64) {
        if self.reads == 0 {
            return (0, 0); // not asked for by this sequence
        }
        let (mut lost, mut recovered) = (0, 0);
        match read {
            Some(read) if !read.epoch.is_empty() => {
                if *read.epoch != *self.epoch {
                    // The room started again meanwhile: all of it is new here.
                    self.epoch = Rc::from(read.epoch.as_str());
                    self.last = 0;
                }
                let heard: HashSet<u64> = self
                    .held
                    .iter()
                    .filter(|held| *held.epoch == *self.epoch)
                    .map(|held| held.seq)
                    .collect();
                for (seq, event) in read.entries {
                    if seq <= self.last {
                        continue;
                    }
                    lost += self.skip_to(room, seq, out.len());
                    self.last = seq;
                    if !self.here.is_empty() && self.was_here(&read.epoch, seq) {
                        continue;
                    }
                    if !self.sent.is_empty() && self.was_sent(&event) {
                        continue;
                    }
                    recovered += u64::from(!heard.contains(&seq));
                    out.push(Arrival {
                        room: Rc::clone(room),
                        epoch: Rc::clone(&self.epoch),
                        seq,
                        frame: crate::ws::text_frame(&event),
                    });
                }
                // Published before the read but not kept (history off or
                // trimmed): gone.
                if read.newest > self.last {
                    lost += self.skip_to(room, read.newest + 1, out.len());
                    self.last = read.newest;
                }
            }
            Some(_) => {} // the room has no keys: nothing was kept to read
            None => log::warn!("redis: room {room:?}: its stream could not be read"),
        }
        self.reads = self.reads.saturating_sub(1);
        if self.reads > 0 {
            return (lost, recovered); // a later read covers what is held
        }
        // Holes among the held ones were published before the read: what it
        // did not bring is gone, not read again.
        for arrival in std::mem::take(&mut self.held) {
            let expected = self.expected(&arrival);
            if arrival.seq > expected {
                if *arrival.epoch != *self.epoch {
                    self.epoch = Rc::clone(&arrival.epoch);
                    self.last = 0;
                }
                lost += self.skip_to(room, arrival.seq, out.len());
            }
            self.hand_on(arrival, expected, out);
        }
        // What was delivered here and is now behind: no copy can come any more.
        let (epoch, last) = (Rc::clone(&self.epoch), self.last);
        self.here.retain(|(of, seq)| *of == epoch && *seq > last);
        (lost, recovered)
    }

    /// The number `arrival` should have to follow on (a copy: below it).
    fn expected(&self, arrival: &Arrival) -> u64 {
        if !self.known {
            arrival.seq // the first heard: where this process starts following
        } else if *arrival.epoch == *self.epoch {
            self.last + 1
        } else {
            1 // a new epoch starts at 1
        }
    }

    /// Hands `arrival` on unless it is a copy of one handed on already.
    fn hand_on(&mut self, arrival: Arrival, expected: u64, out: &mut Vec<Arrival>) {
        if arrival.seq < expected {
            return; // read and heard both
        }
        if *arrival.epoch != *self.epoch {
            self.epoch = Rc::clone(&arrival.epoch);
        }
        self.known = true;
        self.last = arrival.seq;
        if !self.here.is_empty() && self.was_here(&arrival.epoch, arrival.seq) {
            return;
        }
        if !self.sent.is_empty() && self.was_sent(crate::ws::frame_payload(&arrival.frame)) {
            return;
        }
        out.push(arrival);
    }

    /// Counts and logs the numbers between the last handed on and `next`,
    /// and notes the hole (`before`: where in the output it falls).
    fn skip_to(&mut self, room: &Rc<str>, next: u64, before: usize) -> u64 {
        let first = self.last + 1;
        if next <= first {
            return 0;
        }
        self.holes.push(Hole {
            epoch: Rc::clone(&self.epoch),
            next,
            before,
        });
        log::warn!(
            "redis: room {room:?}: messages {first}..{} of epoch {} are lost (neither heard nor kept)",
            next - 1,
            self.epoch
        );
        next - first
    }
}

#[cfg(test)]
mod tests;

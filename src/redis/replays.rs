//! Replays for members resuming through Redis: what to read of a room's
//! stream for them, and each one's replay from what was read.
//!
//! A restart brings many members back into the same rooms at once, each
//! asking for what it missed. Their resumes are read once a loop turn (and
//! a room's only once its subscription is confirmed), and the members
//! resuming in one room share reads: those asking `since` ids of one epoch
//! one read from the oldest of them, those asking for the last K one read of
//! the largest K. Each member's replay is then decided by `history::plan`
//! on what was read, as for the in-memory history. A member the shared read
//! turns out not to cover (it is owed everything kept, and the read started
//! later) is read again on its own.

use std::rc::Rc;

use super::scripts::{Read, RoomRead};
use crate::history::{Replay, Resume, parse_id, plan};

/// One member's resume request: its ticket (`hub::ReplayTicket`) and what
/// it asks for.
pub type Asked<T> = (T, Resume);

/// A stream never keeps anywhere near this many messages (`--history`):
/// a larger K asks for no more than everything.
const MOST_ASKED: usize = 1 << 20;

/// The reads that answer one room's resumes, each with the members it is for.
pub fn group<T>(asked: Vec<Asked<T>>) -> Vec<(Read, Vec<Asked<T>>)> {
    let mut reads: Vec<(Read, Vec<Asked<T>>)> = Vec::new();
    for (ticket, resume) in asked {
        let wanted = match &resume {
            Resume::Last(count) => Read::Last((*count).min(MOST_ASKED)),
            Resume::Since(id) => {
                // Not an id: no epoch is "", so a gap and everything kept.
                let (epoch, seq) = parse_id(id).unwrap_or(("", 0));
                Read::After {
                    epoch: epoch.to_string(),
                    seq,
                }
            }
        };
        let shared = reads.iter_mut().find(|(read, _)| {
            matches!(
                (read, &wanted),
                (Read::Last(_), Read::Last(_))
                    | (Read::After { .. }, Read::After { .. })
                    if same_epoch(read, &wanted)
            )
        });
        match shared {
            Some((read, members)) => {
                widen(read, &wanted);
                members.push((ticket, resume));
            }
            None => reads.push((wanted, vec![(ticket, resume)])),
        }
    }
    reads
}

fn same_epoch(a: &Read, b: &Read) -> bool {
    match (a, b) {
        (Read::After { epoch: a, .. }, Read::After { epoch: b, .. }) => a == b,
        _ => true,
    }
}

/// Makes `read` cover what `wanted` asks too.
fn widen(read: &mut Read, wanted: &Read) {
    match (read, wanted) {
        (Read::After { seq, .. }, Read::After { seq: wanted, .. }) => *seq = (*seq).min(*wanted),
        (Read::Last(count), Read::Last(wanted)) => *count = (*count).max(*wanted),
        _ => {}
    }
}

/// Each member's replay from what `read` brought (`None`: it failed, and
/// every member is told of a gap). Members it does not cover go to `alone`.
pub fn answer<T>(
    read: &Read,
    answer: Option<RoomRead>,
    members: Vec<Asked<T>>,
    replays: &mut Vec<(T, Replay)>,
    alone: &mut Vec<Asked<T>>,
) {
    let Some(answer) = answer else {
        replays.extend(
            members
                .into_iter()
                .map(|(ticket, _)| (ticket, Replay::unknown())),
        );
        return;
    };
    let from = read_after(read, &answer);
    // Framed once, shared by every member replayed.
    let framed: Vec<(u64, Rc<[u8]>)> = answer
        .entries
        .iter()
        .map(|(seq, event)| (*seq, crate::ws::text_frame(event)))
        .collect();
    let view = answer.view();
    for (ticket, resume) in members {
        let plan = plan(&view, &resume);
        if plan.after < from {
            alone.push((ticket, resume)); // owed older messages than were read
            continue;
        }
        let replay = Replay::planned(&plan, &answer.epoch, &framed, Rc::clone);
        replays.push((ticket, replay));
    }
}

/// Every kept message numbered after this one is in the answer to `read`.
fn read_after(read: &Read, answer: &RoomRead) -> u64 {
    match read {
        Read::After { epoch, seq } if *epoch == answer.epoch && *seq <= answer.newest => *seq,
        Read::After { .. } => 0, // read.lua gives everything kept
        Read::Last(count) if answer.entries.len() < *count => 0,
        Read::Last(_) => answer
            .entries
            .first()
            .map_or(answer.newest, |(seq, _)| seq - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(n: u64) -> u64 {
        n
    }

    fn kept(epoch: &str, newest: u64, from: u64) -> RoomRead {
        RoomRead {
            epoch: epoch.into(),
            newest,
            oldest_kept: Some(from),
            entries: (from..=newest)
                .map(|seq| (seq, format!("{seq}").into_bytes()))
                .collect(),
        }
    }

    /// The part of `kept` that `read` brings, as read.lua gives it.
    fn as_read(read: &Read, all: RoomRead) -> RoomRead {
        let after = match read {
            Read::After { epoch, seq } if *epoch == all.epoch && *seq <= all.newest => *seq,
            Read::After { .. } => 0,
            Read::Last(count) => all.newest.saturating_sub(*count as u64),
        };
        RoomRead {
            entries: all
                .entries
                .into_iter()
                .filter(|(s, _)| *s > after)
                .collect(),
            ..all
        }
    }

    fn texts(replay: &Replay) -> Vec<String> {
        replay
            .frames
            .iter()
            .map(|f| String::from_utf8_lossy(&f[2..]).into_owned())
            .collect()
    }

    #[test]
    fn members_resuming_in_one_room_share_one_read_each_getting_its_own_replay() {
        let asked = vec![
            (ticket(1), Resume::Since("e-8".into())),
            (ticket(2), Resume::Last(2)),
            (ticket(3), Resume::Since("e-6".into())),
            (ticket(4), Resume::Last(3)),
            (ticket(5), Resume::Since("other-3".into())),
        ];
        let reads = group(asked);
        assert_eq!(reads.len(), 3);
        assert_eq!(
            reads[0].0,
            Read::After {
                epoch: "e".into(),
                seq: 6
            }
        );
        assert_eq!(reads[1].0, Read::Last(3));
        let (mut replays, mut alone) = (Vec::new(), Vec::new());
        for (read, members) in reads {
            let answer = as_read(&read, kept("e", 10, 4));
            super::answer(&read, Some(answer), members, &mut replays, &mut alone);
        }
        assert!(alone.is_empty());
        replays.sort_by_key(|(t, _)| *t);
        let got: Vec<(Vec<String>, bool)> = replays
            .iter()
            .map(|(_, r)| (texts(r), r.gap.is_some()))
            .collect();
        let seqs = |range: std::ops::RangeInclusive<u64>| -> Vec<String> {
            range.map(|s| s.to_string()).collect()
        };
        assert_eq!(
            got,
            [
                (seqs(9..=10), false),
                (seqs(9..=10), false),
                (seqs(7..=10), false),
                (seqs(8..=10), false),
                (seqs(4..=10), true),
            ]
        );
        // Members 1 and 3 shared a read: message 9 was framed once for both.
        assert!(Rc::ptr_eq(&replays[0].1.frames[0], &replays[2].1.frames[2]));
    }

    #[test]
    fn a_member_owed_more_than_the_shared_read_brought_is_read_alone() {
        // 12 is past the newest: a gap, then everything kept (4..=10).
        let asked = vec![
            (ticket(1), Resume::Since("e-8".into())),
            (ticket(2), Resume::Since("e-12".into())),
        ];
        let reads = group(asked);
        assert_eq!(reads.len(), 1);
        let (read, members) = reads.into_iter().next().unwrap();
        let answer = as_read(&read, kept("e", 10, 4));
        let (mut replays, mut alone) = (Vec::new(), Vec::new());
        super::answer(&read, Some(answer), members, &mut replays, &mut alone);
        assert_eq!(replays.len(), 1);
        assert_eq!(alone, [(ticket(2), Resume::Since("e-12".into()))]);
        // Alone, its read covers it.
        let mut again = group(alone);
        let (read, members) = again.remove(0);
        let answer = as_read(&read, kept("e", 10, 4));
        let mut alone = Vec::new();
        super::answer(&read, Some(answer), members, &mut replays, &mut alone);
        assert!(alone.is_empty());
        assert_eq!(texts(&replays[1].1).len(), 7);
        assert!(replays[1].1.gap.is_some());
        // A failed read: every member is told of a gap.
        let mut replays = Vec::new();
        let members = vec![(ticket(3), Resume::Last(1))];
        super::answer(&Read::Last(1), None, members, &mut replays, &mut alone);
        assert_eq!(replays[0].1, Replay::unknown());
    }
}

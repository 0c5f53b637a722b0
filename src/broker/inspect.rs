//! The server API's reads (`GET /api/rooms...`): what they ask of the back
//! end, and what it answers. The back end answers from what it shares: the
//! cluster's rooms, members and history with Redis, this process's without.
//! What is common to both (a history page from a room's kept messages, a
//! room's members summed over processes) is here, with no I/O.

use std::collections::BTreeMap;

use crate::history::{Plan, Resume, RoomView, plan};

/// A history read never asks for more than this (no room keeps as many).
const ALL_KEPT: usize = 1 << 20;

/// What an API call asks to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRead {
    /// Every room with someone in it.
    Rooms,
    /// A room's members, its last message's id and how many are kept.
    Room { room: String },
    /// What a member resuming `since` would get (everything kept when
    /// `None`); at most the first `limit` of it after `since`, or the last
    /// `limit` without.
    History {
        room: String,
        since: Option<String>,
        limit: Option<usize>,
    },
}

impl ApiRead {
    /// The resume a history read is, for the history's one decision.
    pub fn resume(since: &Option<String>, limit: Option<usize>) -> Resume {
        match since {
            Some(id) => Resume::Since(id.clone()),
            None => Resume::Last(limit.unwrap_or(ALL_KEPT)),
        }
    }
}

/// What the back end saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiView {
    Rooms(Vec<RoomCount>),
    Room(RoomInfo),
    History(HistoryPage),
}

/// A room and how many are in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomCount {
    pub room: String,
    pub users: usize,
    pub connections: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomInfo {
    /// Each user and its connections (all processes'), by name.
    pub users: Vec<(String, u64)>,
    /// The newest message's id, if the room has one.
    pub last_id: Option<String>,
    /// How many messages are kept.
    pub kept: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryPage {
    /// `since` is no longer kept (or was never an id of this room): the
    /// oldest kept, if any. The messages are then everything kept.
    pub gap: Option<Option<String>>,
    /// Each message's `new_message` event JSON, oldest first.
    pub messages: Vec<Vec<u8>>,
}

impl RoomInfo {
    /// A room as `view` shows its kept messages, with `users`.
    pub fn new(users: Vec<(String, u64)>, view: &RoomView) -> RoomInfo {
        let kept = match view.oldest_kept {
            Some(oldest) => view.newest.saturating_sub(oldest) + 1,
            None => 0,
        };
        RoomInfo {
            users,
            last_id: (view.newest > 0).then(|| format!("{}-{}", view.epoch, view.newest)),
            kept,
        }
    }
}

impl HistoryPage {
    /// The page of `kept` ((number, message), oldest first) that a history
    /// read asks for, `json` giving each message's event JSON.
    pub fn read<'a, T: 'a>(
        view: &RoomView,
        kept: impl IntoIterator<Item = &'a (u64, T)>,
        since: &Option<String>,
        limit: Option<usize>,
        json: impl Fn(&T) -> &[u8],
    ) -> HistoryPage {
        let Plan { gap, after } = plan(view, &ApiRead::resume(since, limit));
        let first_only = match since {
            Some(_) => limit.unwrap_or(usize::MAX),
            None => usize::MAX,
        };
        let messages = (kept.into_iter())
            .filter(|(seq, _)| *seq > after)
            .take(first_only)
            .map(|(_, message)| json(message).to_vec())
            .collect();
        HistoryPage {
            gap: gap.map(|oldest| oldest.map(|seq| format!("{}-{seq}", view.epoch))),
            messages,
        }
    }
}

/// Users' connections summed over processes, by name: `seats` are
/// (user, connections on one process).
pub fn sum_seats<'a>(seats: impl IntoIterator<Item = (&'a str, u64)>) -> Vec<(String, u64)> {
    let mut users: BTreeMap<&str, u64> = BTreeMap::new();
    for (user, connections) in seats {
        *users.entry(user).or_default() += connections;
    }
    (users.into_iter())
        .filter(|(_, connections)| *connections > 0)
        .map(|(user, connections)| (user.to_string(), connections))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(newest: u64, oldest_kept: Option<u64>) -> RoomView<'static> {
        RoomView {
            epoch: "e",
            newest,
            oldest_kept,
        }
    }

    const KEPT: [(u64, &[u8]); 3] = [(3, b"3"), (4, b"4"), (5, b"5")];

    fn page(since: Option<&str>, limit: Option<usize>) -> (Option<Option<String>>, Vec<u8>) {
        let since = since.map(str::to_string);
        let page = HistoryPage::read(&view(5, Some(3)), &KEPT, &since, limit, |m| m);
        (page.gap, page.messages.concat())
    }

    #[test]
    fn a_page_is_what_a_resume_gets_cut_to_the_limit() {
        assert_eq!(page(None, None), (None, b"345".to_vec()));
        assert_eq!(page(None, Some(2)), (None, b"45".to_vec()));
        assert_eq!(page(Some("e-3"), None), (None, b"45".to_vec()));
        assert_eq!(page(Some("e-3"), Some(1)), (None, b"4".to_vec()));
        assert_eq!(page(Some("e-5"), None), (None, Vec::new()));
        let everything = (Some(Some("e-3".to_string())), b"345".to_vec());
        assert_eq!(page(Some("e-1"), None), everything, "dropped since");
        assert_eq!(page(Some("other-4"), None), everything, "another epoch");
    }

    #[test]
    fn a_room_counts_what_it_keeps() {
        let info = RoomInfo::new(Vec::new(), &view(5, Some(3)));
        assert_eq!((info.last_id.as_deref(), info.kept), (Some("e-5"), 3));
        let empty = RoomInfo::new(Vec::new(), &view(0, None));
        assert_eq!((empty.last_id, empty.kept), (None, 0));
    }

    #[test]
    fn seats_are_summed_by_user_and_the_empty_dropped() {
        let seats = [("bob", 1), ("ann", 2), ("bob", 2), ("cy", 0)];
        let users = sum_seats(seats);
        assert_eq!(users, [("ann".to_string(), 2), ("bob".to_string(), 3)]);
    }
}

//! Who is in each room: this process's users (counted here, handed to the
//! back end once a turn for the rooms that changed), and each open room's
//! view of every process's users (built from the back end's news), from
//! which the members watching a room are told who came and who left.
//!
//! A user is in a room while any of its connections is, on any process:
//! its first connection in is a join, its last one out a leave; a second
//! tab is neither. A turn's joins and leaves in a room go out together,
//! one `presence_join` and one `presence_leave` per watcher at most, so a
//! reconnect storm costs each watcher a frame or two per turn, not one per
//! member. A room with more users than `max_users` is shown by its count
//! only, at most once every `count_interval`.

use std::collections::{HashMap, HashSet};
use std::mem;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::broker::{Backend, PresenceChange, PresenceNews, Seats};
use crate::chat::{self, PresentUser};

/// How big a room may be before it is shown by its count, and how often
/// its count is sent then.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_users: usize,
    pub count_interval: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_users: 1000,
            count_interval: Duration::from_secs(5),
        }
    }
}

/// Which of a room's watchers a frame is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Those that have had their snapshot.
    Watching,
    /// Those still waiting for theirs (they watch from now on).
    Newcomers,
    /// Every watcher (a fresh snapshot for all).
    All,
}

/// Sends a frame to a room's watchers in an audience (the hub knows who).
pub type Tell<'a> = dyn FnMut(&Rc<str>, Audience, &Rc<[u8]>) + 'a;

/// How a room is shown to its watchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    /// By name: joins and leaves.
    Names,
    /// By count: `sent` was the last one sent, `at` when.
    Count { sent: usize, at: Instant },
}

/// One open room's presence, across processes.
struct View {
    /// The back end has said who is here (until then watchers wait).
    loaded: bool,
    by_process: HashMap<Rc<str>, HashMap<Rc<str>, u32>>,
    /// Each user's connections, on every process together.
    totals: HashMap<Rc<str>, u32>,
    /// This turn's joins and leaves, each user in one list at most.
    joined: Vec<Rc<str>>,
    left: Vec<Rc<str>>,
    /// Every watcher gets a fresh snapshot (the back end sent one).
    resend: bool,
    shown: Shown,
    /// Members watching, and how many of them wait for their snapshot.
    watchers: usize,
    newcomers: usize,
    /// Listed in `Presence::attention`.
    listed: bool,
}

impl View {
    fn new() -> View {
        View {
            loaded: false,
            by_process: HashMap::new(),
            totals: HashMap::new(),
            joined: Vec::new(),
            left: Vec::new(),
            resend: false,
            shown: Shown::Names,
            watchers: 0,
            newcomers: 0,
            listed: false,
        }
    }

    /// `process` has `connections` of `user` here now.
    fn set(&mut self, process: &Rc<str>, user: &Rc<str>, connections: u32) {
        let entries = self.by_process.entry(Rc::clone(process)).or_default();
        let before_here = match connections {
            0 => entries.remove(user).unwrap_or(0),
            n => entries.insert(Rc::clone(user), n).unwrap_or(0),
        };
        if entries.is_empty() {
            self.by_process.remove(process);
        }
        let total = self.totals.get(user).copied().unwrap_or(0);
        let now = total - before_here.min(total) + connections;
        match now {
            0 => self.totals.remove(user),
            n => self.totals.insert(Rc::clone(user), n),
        };
        match (total, now) {
            (0, 1..) => arrived(&mut self.joined, &mut self.left, user),
            (1.., 0) => arrived(&mut self.left, &mut self.joined, user),
            _ => {}
        }
    }

    /// Everything known is replaced by `processes`.
    fn replace(&mut self, processes: Vec<(Rc<str>, Seats)>) {
        self.by_process.clear();
        self.totals.clear();
        for (process, users) in processes {
            let entries = self.by_process.entry(process).or_default();
            for (user, connections) in users.into_iter().filter(|(_, n)| *n > 0) {
                *self.totals.entry(Rc::clone(&user)).or_default() += connections;
                entries.insert(user, connections);
            }
        }
        self.by_process.retain(|_, entries| !entries.is_empty());
        self.joined.clear();
        self.left.clear();
        self.loaded = true;
        self.resend = true;
    }

    fn snapshot_frame(&self, room: &str) -> Rc<[u8]> {
        let count = self.totals.len();
        if let Shown::Count { .. } = self.shown {
            return chat::presence_frame(room, None, count);
        }
        let mut users: Vec<PresentUser> = (self.totals.iter())
            .map(|(name, &connections)| PresentUser { name, connections })
            .collect();
        users.sort_unstable_by(|a, b| a.name.cmp(b.name));
        chat::presence_frame(room, Some(&users), count)
    }

    fn has_news(&self) -> bool {
        !self.joined.is_empty() || !self.left.is_empty()
    }
}

/// `user` moved into `to`: or, if it was in `from` this turn, back out of it
/// (left and came back, or came and left: nobody needs to hear).
fn arrived(to: &mut Vec<Rc<str>>, from: &mut Vec<Rc<str>>, user: &Rc<str>) {
    match from.iter().position(|u| u == user) {
        Some(at) => {
            from.swap_remove(at);
        }
        None => to.push(Rc::clone(user)),
    }
}

#[derive(Default)]
pub struct Presence {
    limits: Limits,
    /// This process's connections per room and user.
    here: HashMap<Rc<str>, HashMap<Rc<str>, u32>>,
    /// Users whose connections here changed this turn, by room.
    changed: HashMap<Rc<str>, HashSet<Rc<str>>>,
    views: HashMap<Rc<str>, View>,
    /// Rooms whose watchers have something coming: news, a snapshot, a
    /// count that waits for its interval.
    attention: Vec<Rc<str>>,
}

impl Presence {
    pub fn new(limits: Limits) -> Presence {
        Presence {
            limits,
            ..Presence::default()
        }
    }

    /// A connection of `user` entered `room`.
    pub fn entered(&mut self, room: &Rc<str>, user: &Rc<str>) {
        let users = self.here.entry(Rc::clone(room)).or_default();
        *users.entry(Rc::clone(user)).or_default() += 1;
        self.changed_here(room, user);
    }

    /// A connection of `user` left `room`.
    pub fn exited(&mut self, room: &Rc<str>, user: &Rc<str>) {
        if let Some(connections) = self.here.get_mut(room).and_then(|u| u.get_mut(user)) {
            *connections = connections.saturating_sub(1);
        }
        self.changed_here(room, user);
    }

    fn changed_here(&mut self, room: &Rc<str>, user: &Rc<str>) {
        let users = self.changed.entry(Rc::clone(room)).or_default();
        users.insert(Rc::clone(user));
    }

    /// Changes of this process's users wait to be handed to the back end.
    pub fn unpublished(&self) -> bool {
        !self.changed.is_empty()
    }

    /// Hands the turn's changes to the back end, one call per room.
    pub fn publish(&mut self, backend: &mut dyn Backend) {
        for (room, users) in self.changed.drain() {
            let here = self.here.get_mut(&room);
            let counts = |user: &Rc<str>| {
                let n = here.as_ref().and_then(|h| h.get(user)).copied();
                (Rc::clone(user), n.unwrap_or(0))
            };
            let seats: Seats = users.iter().map(counts).collect();
            if let Some(here) = here {
                here.retain(|_, n| *n > 0);
                if here.is_empty() {
                    self.here.remove(&room);
                }
            }
            backend.presence(&room, seats);
        }
    }

    /// A room opened here: its view waits for the back end's snapshot.
    pub fn opened(&mut self, room: &Rc<str>) {
        self.views.insert(Rc::clone(room), View::new());
    }

    /// A room closed here: nobody here watches it any more.
    pub fn closed(&mut self, room: &Rc<str>) {
        self.views.remove(room);
    }

    /// A member starts watching `room`: it gets a snapshot at the turn's end.
    pub fn watch(&mut self, room: &Rc<str>) {
        if let Some(view) = self.views.get_mut(room) {
            view.watchers += 1;
            view.newcomers += 1;
        }
        self.list(room);
    }

    /// A member stops watching `room`; `had_snapshot` says whether it had its.
    pub fn unwatch(&mut self, room: &Rc<str>, had_snapshot: bool) {
        if let Some(view) = self.views.get_mut(room) {
            view.watchers = view.watchers.saturating_sub(1);
            if !had_snapshot {
                view.newcomers = view.newcomers.saturating_sub(1);
            }
        }
    }

    /// What the back end says of who is in a room.
    pub fn apply(&mut self, news: PresenceNews) {
        let Some(view) = self.views.get_mut(&news.room) else {
            return; // closed here meanwhile
        };
        match news.change {
            PresenceChange::Process {
                process,
                users,
                whole,
            } => {
                if whole {
                    let listed: HashSet<&Rc<str>> = users.iter().map(|(u, _)| u).collect();
                    let gone: Vec<Rc<str>> = (view.by_process.get(&process))
                        .map(|entries| entries.keys().filter(|u| !listed.contains(u)).cloned())
                        .into_iter()
                        .flatten()
                        .collect();
                    for user in gone {
                        view.set(&process, &user, 0);
                    }
                }
                for (user, connections) in &users {
                    view.set(&process, user, *connections);
                }
            }
            PresenceChange::Snapshot { processes } => view.replace(processes),
        }
        self.list(&news.room);
    }

    fn list(&mut self, room: &Rc<str>) {
        if let Some(view) = self.views.get_mut(room)
            && !view.listed
        {
            view.listed = true;
            self.attention.push(Rc::clone(room));
        }
    }

    /// Whether `room`'s watchers have joins or leaves waiting (to be sent
    /// before a message of the room, so they keep their order with it).
    pub fn has_news(&self, room: &str) -> bool {
        !self.attention.is_empty() && self.views.get(room).is_some_and(View::has_news)
    }

    /// Sends what each room that needs it has for its watchers, through
    /// `send`; a room whose count waits for its interval stays listed.
    pub fn flush(&mut self, now: Instant, send: &mut Tell) {
        let mut rooms = mem::take(&mut self.attention);
        rooms.retain(|room| self.flush_room(room, now, send));
        self.attention.append(&mut rooms);
    }

    /// Sends what `room`'s watchers have coming now; true if something
    /// must wait (a count within its interval).
    pub fn flush_room(
        &mut self,
        room: &Rc<str>,
        now: Instant,
        send: &mut Tell,
    ) -> bool {
        let limits = self.limits;
        let Some(view) = self.views.get_mut(room) else {
            return false;
        };
        if !view.loaded {
            view.listed = false;
            return false; // its snapshot lists it again
        }
        let count = view.totals.len();
        let big = count > limits.max_users;
        let mut waits = false;
        match (view.shown, big) {
            (Shown::Names, true) => {
                view.shown = Shown::Count { sent: count, at: now };
                if !view.resend {
                    send(room, Audience::Watching, &chat::presence_count_frame(room, count));
                }
            }
            (Shown::Count { .. }, false) => {
                view.shown = Shown::Names;
                view.resend = true;
            }
            (Shown::Count { sent, at }, true) if sent != count && !view.resend => {
                match now >= at + limits.count_interval {
                    true => {
                        view.shown = Shown::Count { sent: count, at: now };
                        send(room, Audience::Watching, &chat::presence_count_frame(room, count));
                    }
                    false => waits = true,
                }
            }
            (Shown::Names, false) if !view.resend && view.watchers > 0 => {
                fn names(list: &[Rc<str>]) -> Vec<&str> {
                    list.iter().map(|u| &**u).collect()
                }
                if !view.left.is_empty() {
                    let frame = chat::presence_names_frame("presence_leave", room, &names(&view.left));
                    send(room, Audience::Watching, &frame);
                }
                if !view.joined.is_empty() {
                    let frame = chat::presence_names_frame("presence_join", room, &names(&view.joined));
                    send(room, Audience::Watching, &frame);
                }
            }
            _ => {}
        }
        view.joined.clear();
        view.left.clear();
        if view.resend {
            if let Shown::Count { at, .. } = view.shown {
                view.shown = Shown::Count { sent: count, at };
            }
            send(room, Audience::All, &view.snapshot_frame(room));
            view.resend = false;
            view.newcomers = 0;
        } else if view.newcomers > 0 {
            send(room, Audience::Newcomers, &view.snapshot_frame(room));
            view.newcomers = 0;
        }
        view.listed = waits;
        waits
    }

    /// When a count that waits for its interval is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let interval = self.limits.count_interval;
        (self.attention.iter())
            .filter_map(|room| match self.views.get(room)?.shown {
                Shown::Count { at, .. } => Some(at + interval),
                Shown::Names => None,
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> Rc<str> {
        Rc::from(text)
    }

    #[test]
    fn a_user_is_in_while_any_connection_is_on_any_process() {
        let mut view = View::new();
        let (a, b, ann) = (name("a"), name("b"), name("ann"));
        view.set(&a, &ann, 1);
        assert_eq!(view.joined, std::slice::from_ref(&ann));
        view.joined.clear();
        view.set(&b, &ann, 2);
        view.set(&a, &ann, 0);
        assert!(!view.has_news(), "still on b");
        view.set(&b, &ann, 0);
        assert_eq!(view.left, std::slice::from_ref(&ann));
        // Back within the same turn: nobody needs to hear.
        view.set(&a, &ann, 1);
        assert!(!view.has_news());
        assert_eq!(view.totals.get(&ann), Some(&1));
    }
}

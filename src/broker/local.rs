//! One process on its own: each room's messages are numbered and kept in
//! this process's history, and ready the moment they are published; so is
//! the news of who is in a room; OTPs and ended sessions stay in the
//! process too, so the store is asked only the server API's looks, which
//! are answered from this process's rooms and history.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Instant;

use mio::Registry;

use crate::chat;
use crate::config::Config;
use crate::history::{History, Resume, RoomView};
use crate::ws::frame_payload;
use crate::metrics::Metrics;
use crate::slab::SlotId;

use super::inspect::{ApiRead, ApiView, HistoryPage, RoomCount, RoomInfo, sum_seats};
use super::{
    Arrival, Backend, Lost, MemberReplay, Post, PresenceChange, PresenceNews, ReplayTicket, Seats,
    StoreAnswer, StoreQuery,
};

/// The one process's name in presence news.
const THIS_PROCESS: &str = "local";

/// One process on its own: a message is numbered, kept in the room's
/// history and ready the moment it is published.
pub struct LocalBroker {
    history: History,
    ready: Vec<Arrival>,
    presence: Vec<PresenceNews>,
    /// This process's name, shared by its presence news.
    process: Rc<str>,
    /// Who is in each room: users and their connections (for the API).
    roster: HashMap<Rc<str>, HashMap<Rc<str>, u32>>,
    replays: Vec<MemberReplay>,
    /// The API's looks, answered the same turn; an OTP question is never
    /// asked of a local back end, and if one were, it is `Unavailable`.
    answers: Vec<(SlotId, StoreAnswer)>,
    /// The loop's time this turn (the broker never reads the clock).
    now: Instant,
}

impl LocalBroker {
    pub fn new(history: History, now: Instant) -> LocalBroker {
        LocalBroker {
            history,
            ready: Vec::new(),
            presence: Vec::new(),
            process: Rc::from(THIS_PROCESS),
            roster: HashMap::new(),
            replays: Vec::new(),
            answers: Vec::new(),
            now,
        }
    }

    /// The history `config` asks for.
    pub fn for_config(config: &Config, now: Instant) -> LocalBroker {
        let history = History::new(config.history, config.history_ttl, config.history_max_bytes);
        LocalBroker::new(history, now)
    }
}

impl LocalBroker {
    /// What an API call asks to see, from this process's rooms and history.
    fn look(&self, read: ApiRead) -> ApiView {
        let no_history = RoomView {
            epoch: "",
            newest: 0,
            oldest_kept: None,
        };
        match read {
            ApiRead::Rooms => {
                let mut rooms: Vec<RoomCount> = (self.roster.iter())
                    .map(|(room, users)| RoomCount {
                        room: room.to_string(),
                        users: users.len(),
                        connections: users.values().map(|&n| u64::from(n)).sum(),
                    })
                    .collect();
                rooms.sort_by(|a, b| a.room.cmp(&b.room));
                ApiView::Rooms(rooms)
            }
            ApiRead::Room { room } => {
                let seats = (self.roster.get(room.as_str()).into_iter().flatten())
                    .map(|(user, &n)| (&**user, u64::from(n)));
                let users = sum_seats(seats);
                let view = self.history.look(&room).map(|(view, _)| view);
                ApiView::Room(RoomInfo::new(users, &view.unwrap_or(no_history)))
            }
            ApiRead::History { room, since, limit } => {
                let nothing = VecDeque::new();
                let (view, kept) = self.history.look(&room).unwrap_or((no_history, &nothing));
                let page = HistoryPage::read(&view, kept, &since, limit, |frame| frame_payload(frame));
                ApiView::History(page)
            }
        }
    }
}

impl Backend for LocalBroker {
    fn publish(&mut self, room: &Rc<str>, post: Post) {
        let now = self.now;
        let (epoch, seq) = self.history.next_id(room, now);
        let id = format!("{epoch}-{seq}");
        let frame = chat::new_message_frame(&post.message, &post.from, &post.sent, Some(&id));
        self.history.keep(room, seq, &frame, now);
        self.ready.push(Arrival {
            room: Rc::clone(room),
            epoch,
            seq,
            frame,
        });
    }

    /// Nobody else can be in a room new here: its presence is known at once.
    fn room_opened(&mut self, room: &Rc<str>) {
        self.history.room_opened(room, self.now);
        self.presence.push(PresenceNews {
            room: Rc::clone(room),
            before: self.ready.len(),
            change: PresenceChange::Snapshot {
                processes: Vec::new(),
            },
        });
    }

    fn presence(&mut self, room: &Rc<str>, users: Seats) {
        let here = self.roster.entry(Rc::clone(room)).or_default();
        for (user, connections) in &users {
            match connections {
                0 => here.remove(user),
                n => here.insert(Rc::clone(user), *n),
            };
        }
        if here.is_empty() {
            self.roster.remove(room);
        }
        self.presence.push(PresenceNews {
            room: Rc::clone(room),
            before: self.ready.len(),
            change: PresenceChange::Process {
                process: Rc::clone(&self.process),
                users,
                whole: false,
            },
        });
    }

    fn room_closed(&mut self, room: &Rc<str>) {
        self.history.room_closed(room, self.now);
    }

    fn replay(&mut self, room: &Rc<str>, ticket: ReplayTicket, resume: Resume) {
        let replay = self.history.replay(room, &resume);
        self.replays.push(MemberReplay {
            ticket,
            room: Rc::clone(room),
            replay,
        });
    }

    fn take_arrivals(
        &mut self,
        ready: &mut Vec<Arrival>,
        _lost: &mut Vec<Lost>,
        presence: &mut Vec<PresenceNews>,
    ) {
        let base = ready.len();
        ready.append(&mut self.ready); // nothing is ever lost in one process
        presence.extend(self.presence.drain(..).map(|news| PresenceNews {
            before: base + news.before,
            ..news
        }));
    }

    fn take_replays(&mut self, ready: &mut Vec<MemberReplay>) {
        ready.append(&mut self.replays);
    }

    fn ask(&mut self, asker: SlotId, query: StoreQuery) {
        let answer = match query {
            StoreQuery::Api(read) => StoreAnswer::Api(self.look(read)),
            query => {
                log::error!("a local back end was asked {query:?}: there is no shared store");
                StoreAnswer::Unavailable
            }
        };
        self.answers.push((asker, answer));
    }

    fn take_answers(&mut self, into: &mut Vec<(SlotId, StoreAnswer)>) {
        into.append(&mut self.answers);
    }

    fn begin_turn(&mut self, now: Instant) {
        self.now = now;
    }

    /// Frees the histories of rooms empty past the ttl.
    fn end_turn(&mut self, now: Instant, _registry: &Registry) {
        self.now = now;
        self.history.expire(now);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.history.next_expiry()
    }

    fn report(&self, metrics: &mut Metrics) {
        metrics.history_bytes = self.history.bytes();
    }
}

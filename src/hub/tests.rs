//! The hub driven with recorded mailboxes and test back ends: fan-out,
//! rooms, bad events, and replays racing live messages.

use super::*;
use crate::broker::{LocalBroker, Seats, StoreAnswer, StoreQuery};
use crate::config::Config;
use crate::slab::SlotId;
use std::time::Instant;

/// Records deliveries instead of queueing them.
#[derive(Default)]
struct Recorder {
    got: Vec<(MemberId, Rc<[u8]>, Delivery)>,
}

impl Mailboxes for Recorder {
    fn deliver(&mut self, member: MemberId, frame: &Rc<[u8]>, kind: Delivery) -> bool {
        self.got.push((member, Rc::clone(frame), kind));
        false
    }

    fn close(&mut self, _member: MemberId, _reason: &'static str) {}
}

fn event(kind: &str, payload: &str) -> String {
    format!(r#"{{"type":"{kind}","payload":{payload}}}"#)
}

fn json(frame: &[u8]) -> serde_json::Value {
    let header = match frame[1] {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    serde_json::from_slice(&frame[header..]).unwrap()
}

/// A hub with its mailboxes, metrics and local broker, for short tests.
struct Chat {
    hub: Hub,
    mail: Recorder,
    metrics: Metrics,
    local: LocalBroker,
}

impl Default for Chat {
    fn default() -> Chat {
        let local = LocalBroker::for_config(&Config::default(), Instant::now());
        Chat {
            hub: Hub::default(),
            mail: Recorder::default(),
            metrics: Metrics::default(),
            local,
        }
    }
}

impl Chat {
    fn with(members: &[(MemberId, &str)]) -> Chat {
        let mut chat = Chat::default();
        for &(member, user) in members {
            let (mail, local, metrics) = (&mut chat.mail, &mut chat.local, &mut chat.metrics);
            chat.hub
                .join(member, user, Entry::default(), mail, local, metrics);
        }
        chat
    }

    fn says(&mut self, member: MemberId, text: &str) {
        let (mail, local, metrics) = (&mut self.mail, &mut self.local, &mut self.metrics);
        self.hub.handle(member, text, mail, local, metrics);
    }

    fn leaves(&mut self, member: MemberId) {
        self.hub.leave(member, &mut self.local);
    }

    fn recipients(&self) -> Vec<MemberId> {
        self.mail.got.iter().map(|(m, _, _)| *m).collect()
    }
}

#[test]
fn a_message_reaches_every_member_of_the_room_once_encoded() {
    let mut chat = Chat::with(&[(1, "percy"), (2, "ann"), (3, "bob")]);
    chat.says(3, &event("change_room", r#"{"name":"rust"}"#));
    chat.says(1, &event("send_message", r#"{"message":"hi","from":"x"}"#));
    assert_eq!(chat.recipients(), vec![1, 2]);
    let got = &chat.mail.got;
    assert!(Rc::ptr_eq(&got[0].1, &got[1].1), "encoded once");
    assert_eq!(got[0].2, Delivery::Broadcast);
    let sent = json(&got[0].1);
    assert_eq!(
        sent["payload"]["from"], "percy",
        "the logged-in name, not the client's"
    );
    assert!(
        sent["payload"]["id"]
            .as_str()
            .is_some_and(|id| id.ends_with("-1"))
    );
    assert_eq!(chat.metrics.messages_delivered, 2);
    assert_eq!(chat.hub.room_count(), 2);
}

#[test]
fn bad_events_get_an_error_reply_to_the_sender_alone() {
    let mut chat = Chat::with(&[(1, "percy"), (2, "ann")]);
    chat.says(1, "not json");
    assert_eq!(chat.recipients(), vec![1]);
    assert_eq!(chat.mail.got[0].2, Delivery::Reply);
    assert_eq!(json(&chat.mail.got[0].1)["type"], "error");
}

#[test]
fn leaving_swaps_seats_and_forgets_empty_rooms() {
    let members: Vec<(MemberId, &str)> = (0..5).map(|m| (m, "u")).collect();
    let mut chat = Chat::with(&members);
    chat.leaves(1); // 4 takes seat 1
    chat.leaves(4); // must find 4 at its new seat
    chat.says(0, &event("send_message", r#"{"message":"m"}"#));
    let mut to = chat.recipients();
    to.sort();
    assert_eq!(to, vec![0, 2, 3]);
    chat.says(2, &event("change_room", r#"{"name":"r"}"#));
    for member in [0, 3] {
        chat.leaves(member);
    }
    assert_eq!(chat.hub.room_count(), 1, "general is forgotten once empty");
    assert_eq!(chat.hub.room_of(2), Some("r"));
    chat.leaves(2);
    assert_eq!(chat.hub.room_count(), 0);
}

#[test]
fn joining_with_a_resume_gets_the_history_before_anything_live() {
    let mut chat = Chat::with(&[(1, "percy")]);
    for n in 0..3 {
        chat.says(
            1,
            &event("send_message", &format!(r#"{{"message":"m{n}"}}"#)),
        );
    }
    chat.mail.got.clear();
    let entry = Entry {
        room: None,
        resume: Some(Resume::Last(2)),
        presence: false,
    };
    let (mail, local, metrics) = (&mut chat.mail, &mut chat.local, &mut chat.metrics);
    chat.hub.join(2, "ann", entry, mail, local, metrics);
    let texts: Vec<String> = chat
        .mail
        .got
        .iter()
        .map(|(_, frame, _)| json(frame)["payload"]["message"].to_string())
        .collect();
    assert_eq!(texts, [r#""m1""#, r#""m2""#]);
    assert!(
        chat.mail
            .got
            .iter()
            .all(|(m, _, kind)| *m == 2 && *kind == Delivery::Reply)
    );
}

/// Records what the hub tells its broker, and delivers nothing.
#[derive(Default)]
struct Spy {
    opened: Vec<String>,
    closed: Vec<String>,
    published: Vec<(String, Post)>,
}

impl Backend for Spy {
    fn publish(&mut self, room: &Rc<str>, post: Post) {
        self.published.push((room.to_string(), post));
    }
    fn room_opened(&mut self, room: &Rc<str>) {
        self.opened.push(room.to_string());
    }
    fn room_closed(&mut self, room: &Rc<str>) {
        self.closed.push(room.to_string());
    }
    fn replay(&mut self, _room: &Rc<str>, _ticket: ReplayTicket, _resume: Resume) {}
    fn presence(&mut self, _room: &Rc<str>, _users: Seats) {}
    fn take_arrivals(
        &mut self,
        _ready: &mut Vec<Arrival>,
        _lost: &mut Vec<Lost>,
        _presence: &mut Vec<PresenceNews>,
    ) {
    }
    fn take_replays(&mut self, _ready: &mut Vec<MemberReplay>) {}
    fn ask(&mut self, _asker: SlotId, query: StoreQuery) {
        unreachable!("the hub never asks the store: {query:?}")
    }
    fn take_answers(&mut self, _into: &mut Vec<(SlotId, StoreAnswer)>) {}
}

#[test]
fn the_broker_hears_of_first_and_last_members_and_delivers_nothing_itself() {
    let mut hub = Hub::default();
    let (mut mail, mut metrics) = (Recorder::default(), Metrics::default());
    let mut spy = Spy::default();
    hub.join(
        1,
        "percy",
        Entry::default(),
        &mut mail,
        &mut spy,
        &mut metrics,
    );
    hub.join(
        2,
        "ann",
        Entry::default(),
        &mut mail,
        &mut spy,
        &mut metrics,
    );
    let hi = event("send_message", r#"{"message":"hi"}"#);
    hub.handle(1, &hi, &mut mail, &mut spy, &mut metrics);
    let rust = event("change_room", r#"{"name":"rust"}"#);
    hub.handle(2, &rust, &mut mail, &mut spy, &mut metrics);
    hub.leave(1, &mut spy);
    assert_eq!(spy.opened, ["general", "rust"]);
    assert_eq!(spy.closed, ["general"]);
    assert_eq!(spy.published.len(), 1);
    assert_eq!(spy.published[0].1.message, "hi");
    assert!(mail.got.is_empty(), "delivery waits for the broker");
}

/// A broker whose replays and arrivals come when the test says (as
/// through Redis: on different connections, in either order).
#[derive(Default)]
struct Later {
    asked: Vec<(Rc<str>, ReplayTicket)>,
    replays: Vec<MemberReplay>,
    arrivals: Vec<Arrival>,
}

impl Backend for Later {
    fn publish(&mut self, _room: &Rc<str>, _post: Post) {}
    fn replay(&mut self, room: &Rc<str>, ticket: ReplayTicket, _resume: Resume) {
        self.asked.push((Rc::clone(room), ticket));
    }
    fn presence(&mut self, _room: &Rc<str>, _users: Seats) {}
    fn take_arrivals(
        &mut self,
        ready: &mut Vec<Arrival>,
        _lost: &mut Vec<Lost>,
        _presence: &mut Vec<PresenceNews>,
    ) {
        ready.append(&mut self.arrivals);
    }
    fn take_replays(&mut self, ready: &mut Vec<MemberReplay>) {
        ready.append(&mut self.replays);
    }
    fn ask(&mut self, _asker: SlotId, query: StoreQuery) {
        unreachable!("the hub never asks the store: {query:?}")
    }
    fn take_answers(&mut self, _into: &mut Vec<(SlotId, StoreAnswer)>) {}
}

fn numbered(seq: u64) -> Rc<[u8]> {
    crate::ws::text_frame(seq.to_string().as_bytes())
}

#[test]
fn a_replay_and_live_messages_in_any_order_give_each_message_once_in_order() {
    let mut hub = Hub::default();
    let (mut mail, mut metrics) = (Recorder::default(), Metrics::default());
    let mut later = Later::default();
    let entry = Entry {
        room: Some("r".into()),
        resume: Some(Resume::Since("e-2".into())),
        presence: false,
    };
    hub.join(1, "percy", entry, &mut mail, &mut later, &mut metrics);
    let room: Rc<str> = Rc::from("r");
    let live = |seq| Arrival {
        room: Rc::clone(&room),
        epoch: Rc::from("e"),
        seq,
        frame: numbered(seq),
    };
    // 5 comes live while the replay is on its way: held.
    later.arrivals.push(live(5));
    hub.deliver_arrivals(&mut mail, &mut later, &mut metrics);
    assert!(mail.got.is_empty(), "nothing before the replay");
    // The replay covers 3..=6; then the late live copy of 6, then 7.
    later.replays.push(MemberReplay {
        ticket: later.asked[0].1,
        room: Rc::clone(&room),
        replay: Replay {
            gap: None,
            frames: (3..=6).map(numbered).collect(),
            epoch: Rc::from("e"),
            after: 2,
            from: 3,
            through: 6,
        },
    });
    later.arrivals.extend([live(6), live(7)]);
    hub.deliver_arrivals(&mut mail, &mut later, &mut metrics);
    let seqs: Vec<String> = mail
        .got
        .iter()
        .map(|(_, frame, _)| String::from_utf8_lossy(&frame[2..]).into_owned())
        .collect();
    assert_eq!(seqs, ["3", "4", "5", "6", "7"]);
}

/// Messages are stamped with the loop turn's wall clock, formatted once a
/// turn: a later turn's messages carry the later time.
#[test]
fn messages_carry_the_time_of_their_turn() {
    let mut chat = Chat::with(&[(1, "percy")]);
    let first = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let later = first + std::time::Duration::from_millis(1_250);
    chat.hub.begin_turn(Instant::now(), first);
    chat.says(1, &event("send_message", r#"{"message":"a"}"#));
    chat.says(1, &event("send_message", r#"{"message":"b"}"#));
    chat.hub.begin_turn(Instant::now(), later);
    chat.says(1, &event("send_message", r#"{"message":"c"}"#));
    let sent: Vec<String> = chat
        .mail
        .got
        .iter()
        .map(|(_, frame, _)| json(frame)["payload"]["sent"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        sent,
        [
            "2023-11-14T22:13:20.000Z",
            "2023-11-14T22:13:20.000Z",
            "2023-11-14T22:13:21.250Z"
        ]
    );
}

/// One turn's end as the server runs it: presence to the broker, what it
/// brought delivered, watchers told.
fn end_turn(chat: &mut Chat) {
    let (mail, local, metrics) = (&mut chat.mail, &mut chat.local, &mut chat.metrics);
    chat.hub.publish_presence(local);
    chat.hub.deliver_arrivals(mail, local, metrics);
    chat.hub.flush_presence(Instant::now(), mail, metrics);
}

#[test]
fn a_users_name_is_forgotten_once_its_last_connection_left_and_was_told() {
    let mut chat = Chat::with(&[(1, "percy"), (2, "percy"), (3, "ann")]);
    end_turn(&mut chat);
    chat.hub.leave(1, &mut chat.local);
    end_turn(&mut chat);
    assert!(chat.hub.users.contains("percy"), "a second connection uses it");
    chat.hub.leave(2, &mut chat.local);
    chat.hub.leave(3, &mut chat.local);
    end_turn(&mut chat);
    assert!(chat.hub.users.is_empty(), "{:?}", chat.hub.users);
}

#[test]
fn a_turns_joins_reach_each_watcher_as_one_frame() {
    let mut chat = Chat::default();
    let watching = Entry {
        presence: true,
        ..Entry::default()
    };
    for member in 1..=3 {
        let (mail, local, metrics) = (&mut chat.mail, &mut chat.local, &mut chat.metrics);
        let user = format!("watcher{member}");
        (chat.hub).join(member, &user, watching.clone(), mail, local, metrics);
    }
    end_turn(&mut chat);
    chat.mail.got.clear();
    // A storm: 100 members of 100 users in one turn, then all gone in one.
    for member in 10..110 {
        let (mail, local, metrics) = (&mut chat.mail, &mut chat.local, &mut chat.metrics);
        let user = format!("user{member}");
        (chat.hub).join(member, &user, Entry::default(), mail, local, metrics);
    }
    end_turn(&mut chat);
    let frames: Vec<serde_json::Value> = chat.mail.got.iter().map(|(_, f, _)| json(f)).collect();
    assert_eq!(frames.len(), 3, "one frame per watcher: {frames:?}");
    for frame in &frames {
        assert_eq!(frame["type"], "presence_join");
        assert_eq!(frame["payload"]["names"].as_array().map(Vec::len), Some(100));
    }
    chat.mail.got.clear();
    for member in 10..110 {
        chat.hub.leave(member, &mut chat.local);
    }
    end_turn(&mut chat);
    let kinds: Vec<String> = (chat.mail.got.iter())
        .map(|(_, f, _)| json(f)["type"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(kinds, ["presence_leave"; 3]);
}

#[test]
fn a_join_heard_with_the_users_first_message_is_told_before_it() {
    let mut chat = Chat::default();
    chat.hub.begin_turn(Instant::now(), SystemTime::now());
    let watching = Entry {
        presence: true,
        ..Entry::default()
    };
    let (mail, local, metrics) = (&mut chat.mail, &mut chat.local, &mut chat.metrics);
    chat.hub.join(1, "wat", watching, mail, local, metrics);
    end_turn(&mut chat);
    chat.mail.got.clear();
    let (mail, local, metrics) = (&mut chat.mail, &mut chat.local, &mut chat.metrics);
    chat.hub.join(2, "ann", Entry::default(), mail, local, metrics);
    // Her join goes to the broker; her first message follows before the
    // news comes back, so both come out of the broker in one batch.
    chat.hub.publish_presence(&mut chat.local);
    chat.says(2, &event("send_message", r#"{"message":"hello"}"#));
    let to_watcher: Vec<String> = (chat.mail.got.iter())
        .filter(|(member, _, _)| *member == 1)
        .map(|(_, f, _)| json(f)["type"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(to_watcher, ["presence_join", "new_message"]);
}

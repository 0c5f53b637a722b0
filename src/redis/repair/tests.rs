//! A room's numbering kept whole: holes read and delivered in order, each
//! message once, and only what the stream no longer holds counted lost.

use super::*;

fn arrival(epoch: &str, seq: u64) -> Arrival {
    Arrival {
        room: Rc::from("r"),
        epoch: Rc::from(epoch),
        seq,
        frame: crate::ws::text_frame(format!("{epoch}-{seq}").as_bytes()),
    }
}

fn ids(out: &[Arrival]) -> Vec<String> {
    out.iter()
        .map(|a| format!("{}-{}", a.epoch, a.seq))
        .collect()
}

fn read(epoch: &str, newest: u64, kept: std::ops::RangeInclusive<u64>) -> RoomRead {
    RoomRead {
        epoch: epoch.into(),
        newest,
        oldest_kept: Some(*kept.start()),
        entries: kept
            .map(|seq| (seq, format!("{epoch}-{seq}").into_bytes()))
            .collect(),
    }
}

#[test]
fn a_skipped_number_is_read_and_delivered_before_what_came_live_once_each() {
    let (room, mut out) = (Rc::from("r"), Vec::new());
    let mut sequence = Sequence::default();
    for seq in [4, 5] {
        assert_eq!(sequence.heard(arrival("e", seq), &mut out), None);
    }
    let fetch = sequence.heard(arrival("e", 9), &mut out);
    assert_eq!(
        fetch,
        Some(Fetch {
            epoch: Rc::from("e"),
            after: 5,
            where_from: false,
        })
    );
    for seq in [10, 11] {
        assert_eq!(sequence.heard(arrival("e", seq), &mut out), None, "held");
    }
    assert_eq!(ids(&out), ["e-4", "e-5"]);
    // The read covers 6..=10 (10 was published before it was read).
    let done = sequence.read_done(&room, Some(read("e", 10, 3..=10)), &mut out);
    assert_eq!(
        done,
        (0, 3),
        "none lost, 6..=8 recovered (9, 10 were heard)"
    );
    let expected: Vec<String> = (4..=11).map(|seq| format!("e-{seq}")).collect();
    assert_eq!(ids(&out), expected);
}

#[test]
fn only_what_the_stream_no_longer_holds_is_lost_and_a_new_epoch_is_no_gap() {
    let (room, mut out) = (Rc::from("r"), Vec::new());
    let mut sequence = Sequence::default();
    sequence.heard(arrival("e", 1), &mut out);
    assert!(sequence.heard(arrival("e", 10), &mut out).is_some());
    // Kept from 7 on: 2..=6 are gone.
    assert_eq!(
        sequence.read_done(&room, Some(read("e", 10, 7..=10)), &mut out),
        (5, 3)
    );
    assert_eq!(ids(&out), ["e-1", "e-7", "e-8", "e-9", "e-10"]);
    out.clear();
    // The room's keys expired: a new epoch from 1 follows on.
    assert_eq!(sequence.heard(arrival("f", 1), &mut out), None);
    assert_eq!(sequence.heard(arrival("f", 2), &mut out), None);
    assert_eq!(ids(&out), ["f-1", "f-2"]);
}

#[test]
fn after_a_resubscription_what_was_published_meanwhile_comes_first() {
    let (room, mut out) = (Rc::from("r"), Vec::new());
    let mut sequence = Sequence::default();
    // First subscribed: where the room stands (2 of e), nothing held;
    // 3 was heard meanwhile, so that is where it stands now.
    assert!(sequence.subscribed().where_from);
    sequence.heard(arrival("e", 3), &mut out);
    sequence.stood(Some(read("e", 2, 1..=2)));
    let fetch = sequence.subscribed();
    assert_eq!((fetch.after, fetch.where_from), (3, false));
    sequence.heard(arrival("e", 7), &mut out); // live, held
    assert_eq!(
        sequence.read_done(&room, Some(read("e", 6, 1..=6)), &mut out),
        (0, 3)
    );
    assert_eq!(ids(&out), ["e-3", "e-4", "e-5", "e-6", "e-7"]);
    // A read that fails: the held ones go on, their hole counted.
    out.clear();
    sequence.subscribed();
    sequence.heard(arrival("e", 9), &mut out);
    assert_eq!(sequence.read_done(&room, None, &mut out), (1, 0));
    assert_eq!(ids(&out), ["e-9"]);
    // A read nobody here asked for (the room was closed and opened again
    // meanwhile) brings nothing: its members never had those messages.
    out.clear();
    assert_eq!(
        sequence.read_done(&room, Some(read("e", 20, 1..=20)), &mut out),
        (0, 0)
    );
    assert!(out.is_empty());
}

#[test]
fn a_message_delivered_here_unnumbered_is_not_delivered_again() {
    let (room, mut out) = (Rc::from("r"), Vec::new());
    let mut sequence = Sequence::default();
    sequence.heard(arrival("e", 1), &mut out);
    // Posted here while the subscription link was down: published as 2
    // (and 4), delivered here at once.
    for (open, seq) in [("m2", 2), ("m4", 4)] {
        sequence.sent_here(open.as_bytes().to_vec());
        sequence.numbered_here(open.as_bytes(), "e", seq);
    }
    sequence.subscribed();
    sequence.heard(arrival("e", 4), &mut out); // a late live copy
    assert_eq!(
        sequence.read_done(&room, Some(read("e", 3, 1..=3)), &mut out),
        (0, 1)
    );
    assert_eq!(ids(&out), ["e-1", "e-3"]);
    assert!(sequence.here.is_empty());
}

#[test]
fn a_copy_of_a_message_delivered_here_that_comes_before_its_number_is_dropped() {
    let (room, mut out) = (Rc::from("r"), Vec::new());
    let mut sequence = Sequence::default();
    sequence.heard(arrival("e", 1), &mut out);
    // Delivered here during an outage, published when Redis came back; its
    // live copy comes before Redis's answer (they travel on two links).
    let open = br#"{"payload":{"message":"x""#;
    sequence.sent_here(open.to_vec());
    let copy = Arrival {
        frame: crate::ws::text_frame(br#"{"payload":{"message":"x","id":"e-2"}}"#),
        ..arrival("e", 2)
    };
    sequence.heard(copy, &mut out);
    sequence.numbered_here(open, "e", 2);
    sequence.heard(arrival("e", 3), &mut out);
    assert_eq!(ids(&out), ["e-1", "e-3"]);
    assert!(sequence.here.is_empty() && sequence.sent.is_empty());
    // One that comes in a read instead.
    sequence.sent_here(open.to_vec());
    sequence.subscribed();
    let mut read = read("e", 4, 4..=4);
    read.entries[0].1 = br#"{"payload":{"message":"x","id":"e-4"}}"#.to_vec();
    out.clear();
    assert_eq!(sequence.read_done(&room, Some(read), &mut out), (0, 0));
    assert!(out.is_empty() && sequence.sent.is_empty());
}

#[test]
fn a_room_silent_when_its_link_drops_is_followed_on_from_where_it_stood() {
    let (room, mut out) = (Rc::from("r"), Vec::new());
    let mut sequence = Sequence::default();
    assert!(sequence.subscribed().where_from);
    assert!(!sequence.repairing(), "nothing held for it");
    // The room had no messages at all.
    sequence.stood(Some(RoomRead::default()));
    // The link dropped; the room began meanwhile.
    let fetch = sequence.subscribed();
    assert!(!fetch.where_from && sequence.repairing());
    assert_eq!(
        sequence.read_done(&room, Some(read("e", 3, 1..=3)), &mut out),
        (0, 3)
    );
    assert_eq!(ids(&out), ["e-1", "e-2", "e-3"]);
}

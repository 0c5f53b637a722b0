//! WebSocket frames straight into a `Session`, no HTTP in front: the fuzzer
//! spends all its time on framing, fragmentation, control frames, UTF-8 and
//! the close handshake. The first byte picks the read size, the route and
//! whether the input starts as "early" bytes behind the upgrade.
#![no_main]

use std::rc::Rc;
use std::time::Instant;

use chat_server::outbound::Outbound;
use chat_server::ws::{Fed, Purpose, Session};
use libfuzzer_sys::fuzz_target;
use tungstenite::Message;

const READS: [usize; 8] = [1, 2, 5, 14, 64, 131, 4096, 65536];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let read_size = READS[usize::from(flags & 7)];
    let (purpose, max_message) = if flags & 8 == 0 {
        (Purpose::Chat, 512)
    } else {
        (Purpose::Echo, 1 << 24)
    };
    let early_len = if flags & 16 == 0 {
        0
    } else {
        input.len().min(read_size)
    };
    let now = Instant::now();
    let mut session = Session::new(
        purpose,
        input[..early_len].to_vec(),
        "fuzz".into(),
        Rc::from("general"),
        max_message,
        now,
    );
    let mut out = Outbound::default();
    let mut inbox = Vec::new();
    let mut fed = session.feed(&[], &mut out, &mut inbox, now);
    let mut sent = early_len;
    for read in input[early_len..].chunks(read_size) {
        if fed != Fed::Open {
            break;
        }
        sent += read.len();
        fed = session.feed(read, &mut out, &mut inbox, now);
        for message in inbox.drain(..) {
            match message {
                Message::Text(text) => assert!(text.len() <= max_message),
                Message::Binary(data) => {
                    assert_eq!(purpose, Purpose::Echo);
                    assert!(data.len() <= max_message);
                }
                other => panic!("feed put a {other:?} in the inbox"),
            }
        }
        // tungstenite's own replies (pongs, a close) are never bigger than what came in.
        assert!(
            out.queued_bytes() <= sent + 64,
            "{} bytes queued for {sent} in",
            out.queued_bytes()
        );
    }
});

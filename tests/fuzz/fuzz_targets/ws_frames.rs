//! WebSocket frames straight into a `Session`, no HTTP in front: the fuzzer
//! spends all its time on framing, fragmentation, control frames, UTF-8 and
//! the close handshake. The first byte picks the read size, the route,
//! whether the input starts as "early" bytes behind the upgrade, and whether
//! messages are taken one per call (as a rate-limited connection takes them,
//! leaving the rest of a read for later) or all at once.
#![no_main]

use std::time::{Duration, Instant};

use chat_server::outbound::Outbound;
use chat_server::ws::{Fed, Session};
use libfuzzer_sys::fuzz_target;
use tungstenite::Message;

const READS: [usize; 8] = [1, 2, 5, 14, 64, 131, 4096, 65536];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let read_size = READS[usize::from(flags & 7)];
    let echo = flags & 8 != 0;
    let max_message = if echo { 1 << 24 } else { 512 };
    let most = if flags & 32 == 0 { usize::MAX } else { 1 };
    let early_len = if flags & 16 == 0 {
        0
    } else {
        input.len().min(read_size)
    };
    let now = Instant::now();
    let early = input[..early_len].to_vec();
    let mut session = Session::new(early, max_message, echo, now, Duration::from_secs(9));
    let mut out = Outbound::default();
    let mut inbox = Vec::new();
    let mut fed = Fed::Open;
    let mut sent = early_len;
    let reads = std::iter::once(&[][..]).chain(input[early_len..].chunks(read_size));
    for read in reads {
        if fed != Fed::Open {
            break;
        }
        sent += read.len();
        let mut rest = read;
        // Until the read is used up and nothing complete is left inside.
        loop {
            let before = rest.len();
            fed = session.feed(&mut rest, &mut out, &mut inbox, most, now);
            let took = inbox.len();
            for message in inbox.drain(..) {
                match message {
                    Message::Text(text) => assert!(text.len() <= max_message),
                    Message::Binary(data) => {
                        assert!(echo, "chat passed a binary message on");
                        assert!(data.len() <= max_message);
                    }
                    other => panic!("feed put a {other:?} in the inbox"),
                }
            }
            assert!(took <= most, "{took} messages taken, at most {most} asked");
            if fed != Fed::Open
                || (took < most && rest.is_empty())
                || (took == 0 && rest.len() == before)
            {
                break;
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

//! Replies from Redis as a link reads them: bytes cut into reads of 1 B to
//! 64 KiB, fed to `redis::Replies` (the scanner that bounds depth, bytes and
//! values, then `redis_protocol`'s decode of each whole reply). The first
//! byte picks the read size; the rest is what Redis sends.
//!
//! Beyond "no panic, no stack overflow, no huge allocation" (run.sh sets
//! `-malloc_limit_mb`): the frames and the verdict do not depend on how the
//! bytes are cut; the buffer never holds more than was sent, nor more than
//! the bound; every frame is at most `MAX_DEPTH` arrays deep; and the
//! scanner agrees with `redis_protocol` itself: a reply it measures whole is
//! one `decode` reads to the same length, and one it calls incomplete is one
//! `decode` does not read whole.
#![no_main]

use chat_server::redis::Replies;
use libfuzzer_sys::fuzz_target;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;

const READS: [usize; 8] = [1, 2, 3, 7, 64, 1000, 4096, 65536];

/// Frames and whether the bytes ended in an error, fed `read_size` at a time.
fn feed(input: &[u8], read_size: usize) -> (Vec<OwnedFrame>, bool) {
    let mut replies = Replies::new();
    let mut frames = Vec::new();
    let mut sent = 0;
    for read in input.chunks(read_size) {
        sent += read.len();
        if replies.feed(read, &mut frames).is_err() {
            return (frames, true);
        }
        assert!(replies.buffered() <= sent);
        assert!(replies.buffered() <= Replies::MAX_BYTES + Replies::PIECE);
    }
    (frames, false)
}

/// The frames `measure` and `decode` find, one reply after another, up to
/// the first the scanner refuses (`decode` is never given one: it recurses).
fn walk(input: &[u8]) -> Vec<OwnedFrame> {
    let mut frames = Vec::new();
    let mut rest = input;
    loop {
        match Replies::measure(rest) {
            Ok(Some(len)) => match decode(rest) {
                Ok(Some((frame, n))) => {
                    assert_eq!(n, len, "decode read {n} bytes of a reply measured {len}");
                    frames.push(frame);
                    rest = &rest[len..];
                }
                Ok(None) => {
                    panic!("a reply measured whole ({len} bytes) that decode calls partial")
                }
                Err(_) => return frames, // e.g. an error line that is not UTF-8
            },
            Ok(None) => {
                if let Ok(Some((_, n))) = decode(rest) {
                    panic!("decode read a whole reply of {n} bytes that the scanner calls partial");
                }
                return frames;
            }
            Err(_) => return frames,
        }
    }
}

/// How many arrays deep a frame goes, without recursion.
fn depth(frame: &OwnedFrame) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(frame, 0)];
    while let Some((frame, level)) = stack.pop() {
        if let OwnedFrame::Array(parts) = frame {
            deepest = deepest.max(level + 1);
            stack.extend(parts.iter().map(|part| (part, level + 1)));
        }
    }
    deepest
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let read_size = READS[usize::from(flags & 7)];
    let (frames, failed) = feed(input, read_size);
    let (whole, whole_failed) = feed(input, input.len().max(1));
    assert_eq!(frames, whole, "the frames depend on the reads");
    assert_eq!(failed, whole_failed, "the verdict depends on the reads");
    for frame in &frames {
        assert!(depth(frame) <= Replies::MAX_DEPTH);
    }
    // Both stop at the first reply refused or unreadable (inputs are far
    // below MAX_BYTES, the one bound `walk` does not see whole).
    assert_eq!(walk(input), frames, "the link and decode disagree");
});

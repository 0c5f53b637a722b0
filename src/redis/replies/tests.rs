//! The reply scanner against every kind of reply, cut everywhere, and
//! against each of its bounds.

use super::*;

/// `*1\r\n` `arrays` times around `:1\r\n`.
fn nested(arrays: usize) -> Vec<u8> {
    let mut reply = b"*1\r\n".repeat(arrays);
    reply.extend_from_slice(b":1\r\n");
    reply
}

/// Replies of every kind, as Redis sends them (a replay last: four deep).
fn samples() -> Vec<&'static [u8]> {
    vec![
        b"+OK\r\n",
        b"+\r\n",
        b"-ERR no\r\n",
        b":-42\r\n",
        b"$0\r\n\r\n",
        b"$5\r\nhe\r\no\r\n",
        b"$-1\r\n",
        b"*-1\r\n",
        b"*0\r\n",
        b"*3\r\n$7\r\nmessage\r\n$6\r\nchat:r\r\n$5\r\n1 {}x\r\n",
        b"*3\r\n$2\r\n17\r\n$1\r\n9\r\n*2\r\n*2\r\n$3\r\n8-1\r\n*2\r\n$1\r\ne\r\n$2\r\n{}\r\n*2\r\n$3\r\n9-1\r\n*0\r\n",
    ]
}

fn fed(bytes: &[u8], piece: usize) -> Result<Vec<OwnedFrame>, String> {
    let mut replies = Replies::new();
    let mut frames = Vec::new();
    for chunk in bytes.chunks(piece) {
        replies.feed(chunk, &mut frames)?;
    }
    Ok(frames)
}

#[test]
fn a_whole_reply_measures_its_own_length_whatever_follows() {
    for sample in samples() {
        assert_eq!(Replies::measure(sample), Ok(Some(sample.len())));
        let mut padded = sample.to_vec();
        padded.extend_from_slice(b"+next\r\n");
        assert_eq!(Replies::measure(&padded), Ok(Some(sample.len())));
    }
}

#[test]
fn every_cut_of_a_reply_is_incomplete_and_resumes_to_the_same_frame() {
    for sample in samples() {
        let (whole, _) = decode(sample).unwrap().unwrap();
        for cut in 0..sample.len() {
            assert_eq!(
                Replies::measure(&sample[..cut]),
                Ok(None),
                "{sample:?} cut at {cut}"
            );
            // In two reads, cut there; and in one scan resumed there.
            let mut replies = Replies::new();
            let mut frames = Vec::new();
            replies.feed(&sample[..cut], &mut frames).unwrap();
            assert!(frames.is_empty());
            assert_eq!(replies.buffered(), cut);
            replies.feed(&sample[cut..], &mut frames).unwrap();
            assert_eq!(
                frames,
                std::slice::from_ref(&whole),
                "{sample:?} cut at {cut}"
            );
            assert_eq!(replies.buffered(), 0);
        }
        assert_eq!(fed(sample, 1).unwrap(), [whole]);
    }
    // All of them back to back, a byte at a time: each once, in order.
    let all: Vec<u8> = samples().concat();
    let expected: Vec<OwnedFrame> = samples()
        .iter()
        .map(|s| decode(s).unwrap().unwrap().0)
        .collect();
    for piece in [1, 2, 3, 7, all.len()] {
        assert_eq!(fed(&all, piece).unwrap(), expected, "in pieces of {piece}");
    }
}

#[test]
fn arrays_nest_up_to_the_limit_and_not_one_deeper() {
    let deepest = nested(Replies::MAX_DEPTH);
    assert_eq!(Replies::measure(&deepest), Ok(Some(deepest.len())));
    assert_eq!(fed(&deepest, 1).unwrap().len(), 1);
    let too_deep = nested(Replies::MAX_DEPTH + 1);
    let error = Replies::measure(&too_deep).unwrap_err();
    assert!(error.contains("nested deeper than 8"), "{error}");
    // Refused as soon as the header that goes too deep is whole.
    let header_end = 4 * (Replies::MAX_DEPTH + 1);
    assert_eq!(Replies::measure(&too_deep[..header_end - 1]), Ok(None));
    assert!(Replies::measure(&too_deep[..header_end]).is_err());
    // An empty array is one level too; a null is not an array.
    let empty_at = |arrays: usize, last: &[u8]| {
        let mut reply = b"*1\r\n".repeat(arrays);
        reply.extend_from_slice(last);
        Replies::measure(&reply).map(|_| ())
    };
    assert_eq!(empty_at(Replies::MAX_DEPTH - 1, b"*0\r\n"), Ok(()));
    assert!(empty_at(Replies::MAX_DEPTH, b"*0\r\n").is_err());
    assert_eq!(empty_at(Replies::MAX_DEPTH, b"*-1\r\n"), Ok(()));
    // Siblings do not add up: depth is nesting, not count.
    let wide = b"*2\r\n*1\r\n*1\r\n:1\r\n*1\r\n*1\r\n:2\r\n";
    assert_eq!(Replies::measure(wide), Ok(Some(wide.len())));
    // A hundred thousand levels: refused without recursion.
    assert!(fed(&nested(100_000), 4096).is_err());
}

#[test]
fn huge_declared_lengths_are_refused_from_the_header_alone() {
    let max = Replies::MAX_BYTES;
    // The largest bulk string that fits, header and CRLF included.
    let header = format!("${}\r\n", max - 2 - 11);
    assert_eq!(header.len(), 11);
    assert_eq!(Replies::measure(header.as_bytes()), Ok(None));
    let over = format!("${}\r\n", max - 2 - 11 + 1);
    assert!(
        Replies::measure(over.as_bytes())
            .unwrap_err()
            .contains("over")
    );
    for header in [
        "$629145600\r\n",
        "$9223372036854775807\r\n",
        "*9223372036854775807\r\n",
        "*1048577\r\n",
    ] {
        assert!(Replies::measure(header.as_bytes()).is_err(), "{header}");
        assert!(fed(header.as_bytes(), 1).is_err(), "{header}");
    }
    // Numbers that are not one: too long, negative, not digits.
    for bad in [
        "$99999999999999999999\r\n",
        "$-2\r\n",
        "*-2\r\n",
        ":1x\r\n",
        "$\r\n",
        "*+-1\r\n",
        "$5\r\nhelloXY",
        "!3\r\nabc\r\n",
    ] {
        assert!(Replies::measure(bad.as_bytes()).is_err(), "{bad}");
    }
    // A number line that never ends is refused once it cannot be one.
    let endless = b"*1111111111111111111111111";
    assert_eq!(Replies::measure(&endless[..22]), Ok(None));
    assert!(Replies::measure(endless).is_err());
}

#[test]
fn the_buffer_holds_one_reply_of_at_most_max_bytes() {
    let max = Replies::MAX_BYTES;
    // A bulk string exactly as long as a reply may be: taken, and freed.
    let len = max - 2 - 11;
    let mut replies = Replies::new();
    let mut frames = Vec::new();
    replies
        .feed(format!("${len}\r\n").as_bytes(), &mut frames)
        .unwrap();
    let body = vec![b'x'; Replies::PIECE];
    let mut left = len;
    while left > 0 {
        let n = left.min(body.len());
        replies.feed(&body[..n], &mut frames).unwrap();
        assert!(replies.buffered() <= max);
        left -= n;
    }
    replies.feed(b"\r\n", &mut frames).unwrap();
    assert_eq!(frames.len(), 1);
    assert!(matches!(&frames[0], OwnedFrame::BulkString(b) if b.len() == len));
    assert_eq!(replies.buffered(), 0);
    assert!(replies.input.capacity() <= Replies::KEEP);
    // A reply that does not say how long it is: refused past the bound.
    let mut bulk = b"$1015\r\n".to_vec();
    bulk.extend([b'x'; 1015]);
    bulk.extend(b"\r\n");
    for (head, unit) in [(&b"+"[..], &body[..1024]), (b"*100000\r\n", &bulk[..])] {
        assert_eq!(unit.len(), 1024);
        let mut replies = Replies::new();
        replies.feed(head, &mut frames).unwrap();
        let mut fed = head.len();
        let why = loop {
            if let Err(why) = replies.feed(unit, &mut frames) {
                break why;
            }
            fed += unit.len();
            assert!(replies.buffered() <= max, "{head:?}");
            assert!(replies.input.capacity() <= max + Replies::PIECE);
        };
        assert!(why.contains("a reply over"), "{why}");
        assert!(
            fed <= max && fed + unit.len() > max,
            "{head:?}: refused at {fed}"
        );
    }
}

#[test]
fn values_beyond_the_limit_are_refused() {
    let mut reply = format!("*{}\r\n", Replies::MAX_VALUES - 1).into_bytes();
    reply.extend(b"+\r\n".repeat(Replies::MAX_VALUES - 1));
    assert_eq!(Replies::measure(&reply), Ok(Some(reply.len())));
    let mut reply = b"*2\r\n".to_vec();
    reply.extend(format!("*{}\r\n", Replies::MAX_VALUES - 1).into_bytes());
    assert!(Replies::measure(&reply).unwrap_err().contains("values"));
}

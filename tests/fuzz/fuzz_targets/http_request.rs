//! (a) The HTTP request-head parser, fed arbitrary bytes.
//!
//! Beyond "no panic": a request is never longer than the buffer or the
//! limits; "need more bytes" is only ever said of a buffer within the limits
//! (otherwise a client could grow it without bound); and the answer does not
//! depend on how the bytes were split across reads.
#![no_main]

use std::time::SystemTime;

use chat_server::http::files::safe_relative_path;
use chat_server::http::request::{MAX_BODY, MAX_HEAD, parse};
use chat_server::http::upgrade::check_handshake;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    match &whole {
        Ok(Some((request, used))) => {
            assert!(*used > 0 && *used <= data.len());
            assert!(*used <= MAX_HEAD + MAX_BODY);
            assert!(request.body.len() <= MAX_BODY);
            // Everything the server asks of a request must be total.
            let _ = request.header("host");
            let _ = request.header_has_token("connection", "upgrade");
            let _ = request.query_param("otp");
            let _ = request.keep_alive();
            if let Ok(relative) = safe_relative_path(request.path()) {
                assert!(!relative.starts_with('/'), "{relative:?}");
                assert!(!relative.contains('\0') && !relative.contains('\\'));
                assert!(
                    relative
                        .split('/')
                        .all(|s| !s.is_empty() && !s.starts_with('.')),
                    "{relative:?} escapes or is hidden"
                );
            }
            match check_handshake(request) {
                Ok(accept) => assert_eq!(accept.len(), 28),
                Err(response) => {
                    let _ = response.to_bytes(SystemTime::UNIX_EPOCH);
                }
            }
        }
        Ok(None) => assert!(
            data.len() <= MAX_HEAD + MAX_BODY,
            "{} bytes buffered while waiting for more",
            data.len()
        ),
        Err(refusal) => assert!(refusal.status.code() >= 400),
    }

    // The same bytes split at a few points: a prefix of a complete request is
    // "need more", a prefix holding the whole request gives the same request,
    // and a prefix of refused bytes is either refused the same way or incomplete.
    let points = data.len().min(8);
    for i in 1..=points {
        let cut = data.len() * i / (points + 1);
        let part = parse(&data[..cut]);
        match (&whole, &part) {
            (Ok(Some((_, used))), Ok(Some((_, part_used)))) => {
                assert!(cut >= *used, "a prefix of {cut} bytes held a whole request");
                assert_eq!(used, part_used);
            }
            (Ok(Some((_, used))), Ok(None)) => {
                assert!(cut < *used, "a prefix holding the request was incomplete")
            }
            (Ok(Some(_)) | Ok(None), Err(refusal)) => {
                panic!("a prefix of {cut} bytes was refused ({refusal:?}), the whole was not")
            }
            (Ok(None), Ok(Some(_))) => panic!("a prefix was complete, the whole was not"),
            (Ok(None), Ok(None)) | (Err(_), _) => {}
        }
    }
});

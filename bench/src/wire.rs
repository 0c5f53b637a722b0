//! Bytes on the wire: the two HTTP requests a client makes (login, upgrade),
//! their responses, and client-side WebSocket frames.
//!
//! Frames are encoded and decoded here by hand rather than through a
//! WebSocket object per connection: the load tool holds up to ~20,000
//! connections in one process, and a connection at rest must cost a few
//! hundred bytes, not a library's buffers.

use std::fmt::Write as _;

/// Longest HTTP response head accepted.
const MAX_HEAD: usize = 16 * 1024;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// `POST /login` with a JSON body, keep-alive (the upgrade follows on the same connection).
pub fn login_request(host: &str, user: &str, password: &str) -> Vec<u8> {
    let body = serde_json::json!({ "username": user, "password": password }).to_string();
    let mut request = String::with_capacity(160 + body.len());
    let _ = write!(
        request,
        "POST /login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    request.into_bytes()
}

/// `POST /session/otp` with the session cookie a login set (`cookie`, its
/// `name=token`): an OTP with no password (and the server's own Origin, as
/// a page's `fetch` sends).
pub fn session_otp_request(host: &str, origin: &str, cookie: &str) -> Vec<u8> {
    format!(
        "POST /session/otp HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n\
         Cookie: {cookie}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// `GET /ws?otp=...` asking for a WebSocket, with the server's own Origin;
/// `query` is appended to the query string as it is (`&room=R&since=ID`).
pub fn upgrade_request(host: &str, origin: &str, otp: &str, key: &str, query: &str) -> Vec<u8> {
    format!(
        "GET /ws?otp={otp}{query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
    )
    .into_bytes()
}

/// The cookies chat-server keeps a login's session in: over plain HTTP, and
/// over TLS (where only the `__Host-` one counts).
pub const SESSION_COOKIES: [&str; 2] = ["chat_session", "__Host-chat_session"];

/// A complete HTTP response: status, the headers we care about, and where it ends.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub content_length: usize,
    pub accept: Option<String>,
    pub chunked: bool,
    /// The session cookie (`name=token`) a `Set-Cookie: chat_session=...`
    /// (or `__Host-chat_session`) carried, if any.
    pub session: Option<String>,
    /// Bytes of the head (the body starts here).
    pub head_len: usize,
}

/// Parses a response head; `Ok(None)` means more bytes are needed.
pub fn parse_response(buf: &[u8]) -> Result<Option<HttpResponse>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                Err("response head too large".into())
            } else {
                Ok(None)
            }
        }
        Err(err) => Err(format!("bad HTTP response: {err}")),
        Ok(httparse::Status::Complete(head_len)) => {
            let mut parsed = HttpResponse {
                status: response.code.unwrap_or(0),
                content_length: 0,
                accept: None,
                chunked: false,
                session: None,
                head_len,
            };
            for header in response.headers.iter() {
                let value = String::from_utf8_lossy(header.value);
                if header.name.eq_ignore_ascii_case("content-length") {
                    parsed.content_length = value
                        .trim()
                        .parse()
                        .map_err(|_| "bad Content-Length".to_string())?;
                } else if header.name.eq_ignore_ascii_case("sec-websocket-accept") {
                    parsed.accept = Some(value.trim().to_string());
                } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                    parsed.chunked = value.to_ascii_lowercase().contains("chunked");
                } else if header.name.eq_ignore_ascii_case("set-cookie") {
                    let pair = value.split(';').next().unwrap_or("");
                    if let Some((name, token)) = pair.trim().split_once('=')
                        && SESSION_COOKIES.contains(&name)
                        && !token.is_empty()
                    {
                        parsed.session = Some(pair.trim().to_string());
                    }
                }
            }
            Ok(Some(parsed))
        }
    }
}

/// The OTP in a login response body `{"otp": "..."}`: only characters a URL
/// carries unescaped (RFC 3986's unreserved), since it goes in the query.
pub fn otp_from_body(body: &[u8]) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|err| format!("login body is not JSON: {err}"))?;
    let otp = value
        .get("otp")
        .and_then(|v| v.as_str())
        .ok_or("login body has no otp")?;
    if otp.is_empty()
        || !otp
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
    {
        return Err("login returned an OTP that does not fit in a URL unescaped".into());
    }
    Ok(otp.to_string())
}

/// A small, fast generator for masking keys (RFC 6455 wants them unpredictable
/// to *browsers'* scripts; a load tool only needs them to vary).
pub struct Masker(u64);

impl Masker {
    pub fn new(seed: u64) -> Masker {
        Masker(seed | 1)
    }

    pub fn next_key(&mut self) -> [u8; 4] {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let value = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (value as u32).to_le_bytes()
    }
}

/// Appends one masked, final frame (client to server) to `out`.
pub fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// One server frame found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub fin: bool,
    pub opcode: u8,
    pub payload: &'a [u8],
    /// Bytes the whole frame takes in the buffer.
    pub len: usize,
}

/// Decodes the frame at the start of `buf`; `Ok(None)` means it is not all there yet.
pub fn parse_frame(buf: &[u8], max_payload: usize) -> Result<Option<Frame<'_>>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    if buf[0] & 0x70 != 0 {
        return Err("frame with reserved bits set".into());
    }
    let opcode = buf[0] & 0x0F;
    if buf[1] & 0x80 != 0 {
        return Err("masked frame from the server".into());
    }
    let (len, header) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&buf[2..10]);
            (
                usize::try_from(u64::from_be_bytes(raw)).unwrap_or(usize::MAX),
                10,
            )
        }
        short => (usize::from(short), 2),
    };
    if len > max_payload {
        return Err(format!("frame of {len} bytes from the server"));
    }
    if buf.len() < header + len {
        return Ok(None);
    }
    Ok(Some(Frame {
        fin,
        opcode,
        payload: &buf[header..header + len],
        len: header + len,
    }))
}

/// The status code and reason of a close frame's payload.
pub fn close_reason(payload: &[u8]) -> String {
    if payload.len() < 2 {
        return "no status".into();
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let reason = String::from_utf8_lossy(&payload[2..]);
    if reason.is_empty() {
        code.to_string()
    } else {
        format!("{code} {reason}")
    }
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let last_start = haystack.len() - needle.len();
    let mut at = 0;
    while at <= last_start {
        match haystack[at..=last_start].iter().position(|&b| b == first) {
            None => return None,
            Some(offset) => {
                let start = at + offset;
                if &haystack[start..start + needle.len()] == needle {
                    return Some(start);
                }
                at = start + 1;
            }
        }
    }
    None
}

/// The text of a `new_message` or `error` event's `message` field, if the
/// event is one (our own messages never contain quotes or escapes).
pub fn event_message(text: &[u8]) -> Option<(&[u8], &[u8])> {
    // Fast path: the layout both servers use for a new_message.
    const NEW_MESSAGE: &[u8] = br#"{"type":"new_message","payload":{"message":""#;
    if let Some(rest) = text.strip_prefix(NEW_MESSAGE)
        && let Some(end) = rest.iter().position(|&b| b == b'"' || b == b'\\')
        && rest[end] == b'"'
    {
        return Some((b"new_message", &rest[..end]));
    }
    const TYPE: &[u8] = b"\"type\":\"";
    const MESSAGE: &[u8] = b"\"message\":\"";
    let type_at = find(text, TYPE)? + TYPE.len();
    let type_end = type_at + text[type_at..].iter().position(|&b| b == b'"')?;
    let kind = &text[type_at..type_end];
    let message_at = find(text, MESSAGE)? + MESSAGE.len();
    let rest = &text[message_at..];
    let mut end = 0;
    while end < rest.len() && rest[end] != b'"' {
        if rest[end] == b'\\' {
            end += 1;
        }
        end += 1;
    }
    Some((kind, &rest[..end.min(rest.len())]))
}

/// The value of the first `"name":"..."` string field in an event (our own
/// ids and room names never contain quotes or escapes).
pub fn string_field<'a>(text: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let mut needle = Vec::with_capacity(name.len() + 5);
    needle.push(b'"');
    needle.extend_from_slice(name.as_bytes());
    needle.extend_from_slice(b"\":\"");
    let at = find(text, &needle)? + needle.len();
    let end = text[at..].iter().position(|&b| b == b'"' || b == b'\\')?;
    (text[at + end] == b'"').then(|| &text[at..at + end])
}

/// The event's `type`, if it is a JSON event.
pub fn event_type(text: &[u8]) -> Option<&[u8]> {
    string_field(text, "type")
}

/// The step number and send time (ns) of a measured message, read straight
/// after the `new_message` prefix both servers write (`b{step} {ns} ...`),
/// without looking for the end of the string: the load tool's hot path.
pub fn load_stamp(text: &[u8]) -> Option<(u64, u64, &[u8])> {
    const STAMPED: &[u8] = br#"{"type":"new_message","payload":{"message":"b"#;
    stamp_fields(text.strip_prefix(STAMPED)?)
}

/// The step and send time of a measured message's text after its `b`
/// (`STEP SENT_NS ...`), and what follows them and their space (the
/// message's number first, with `--each`).
pub fn stamp_fields(text: &[u8]) -> Option<(u64, u64, &[u8])> {
    let (step, rest) = leading_number(text)?;
    let (sent_ns, rest) = leading_number(rest.strip_prefix(b" ")?)?;
    Some((step, sent_ns, rest.strip_prefix(b" ")?))
}

/// Parses a leading unsigned decimal number; returns it and the rest.
pub fn leading_number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let mut value = 0u64;
    for &b in &bytes[..digits] {
        value = value * 10 + u64::from(b - b'0');
    }
    Some((value, &bytes[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_unmasking() {
        let mut out = Vec::new();
        push_frame(&mut out, OP_TEXT, b"hello", [1, 2, 3, 4]);
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1], 0x80 | 5);
        let unmasked: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i & 3])
            .collect();
        assert_eq!(unmasked, b"hello");

        let mut long = Vec::new();
        push_frame(&mut long, OP_TEXT, &[b'x'; 300], [0; 4]);
        assert_eq!(long[1], 0x80 | 126);
        assert_eq!(u16::from_be_bytes([long[2], long[3]]), 300);
    }

    #[test]
    fn server_frames_parse_in_pieces() {
        let frame = [0x81, 3, b'a', b'b', b'c', 0x89, 0];
        assert_eq!(parse_frame(&frame[..1], 512), Ok(None));
        assert_eq!(parse_frame(&frame[..4], 512), Ok(None));
        let first = parse_frame(&frame, 512).unwrap().unwrap();
        assert_eq!(
            (first.fin, first.opcode, first.payload, first.len),
            (true, OP_TEXT, &b"abc"[..], 5)
        );
        let ping = parse_frame(&frame[5..], 512).unwrap().unwrap();
        assert_eq!((ping.opcode, ping.len), (OP_PING, 2));
        let mut medium = vec![0x81, 126, 0x01, 0x00];
        medium.extend(vec![b'y'; 256]);
        assert_eq!(
            parse_frame(&medium, 512).unwrap().unwrap().payload.len(),
            256
        );
        assert!(parse_frame(&medium, 100).is_err());
        assert!(parse_frame(&[0x81, 0x83, 0, 0, 0, 0, 1, 2, 3], 512).is_err());
    }

    #[test]
    fn events_are_picked_apart() {
        let ours = br#"{"type":"new_message","payload":{"message":"b3 123456 xx","from":"percy","sent":"2024-01-01T00:00:00Z"}}"#;
        let (kind, message) = event_message(ours).unwrap();
        assert_eq!(kind, b"new_message");
        assert_eq!(message, b"b3 123456 xx");
        let (step, rest) = leading_number(&message[1..]).unwrap();
        assert_eq!(step, 3);
        assert_eq!(leading_number(&rest[1..]).unwrap().0, 123456);
        let (step, sent_ns, rest) = load_stamp(ours).unwrap();
        assert_eq!((step, sent_ns), (3, 123456));
        assert!(rest.starts_with(b"xx\""));
        assert_eq!(load_stamp(&ours[..50]), None);
        // With --each the message's number follows the send time.
        let (_, _, rest) = stamp_fields(b"b0 99 41 xxxx".get(1..).unwrap()).unwrap();
        assert_eq!(leading_number(rest).unwrap().0, 41);
        let sync = br#"{"type":"new_message","payload":{"message":"s1","from":"percy"}}"#;
        assert_eq!(load_stamp(sync), None);
        let error = br#"{"type":"error","payload":{"message":"bad \"x\""}}"#;
        let (kind, message) = event_message(error).unwrap();
        assert_eq!(kind, b"error");
        assert_eq!(message, br#"bad \"x\""#);
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
    }

    #[test]
    fn responses_parse_when_complete() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"otp\":\"ab\"}";
        assert!(parse_response(&head[..20]).unwrap().is_none());
        let response = parse_response(head).unwrap().unwrap();
        assert_eq!((response.status, response.content_length), (200, 12));
        assert_eq!(otp_from_body(&head[response.head_len..]).unwrap(), "ab");
        assert!(otp_from_body(b"{\"otp\":\"a b\"}").is_err());
        // chat-server with --redis answers /session/otp with `HEX.HEX`: URL-safe as it is.
        assert_eq!(
            otp_from_body(b"{\"otp\":\"061c.c04a\"}").unwrap(),
            "061c.c04a"
        );
        assert!(otp_from_body(b"{\"otp\":\"a&b\"}").is_err());
        let upgrade =
            b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: xyz=\r\n\r\n\x81\x00";
        let response = parse_response(upgrade).unwrap().unwrap();
        assert_eq!(response.accept.as_deref(), Some("xyz="));
        assert_eq!(&upgrade[response.head_len..], b"\x81\x00");
        assert_eq!(response.session, None);
        let login = b"HTTP/1.1 200 OK\r\nSet-Cookie: other=1\r\n\
            Set-Cookie: chat_session=ab.cd; HttpOnly; SameSite=Strict; Path=/\r\nContent-Length: 0\r\n\r\n";
        let response = parse_response(login).unwrap().unwrap();
        assert_eq!(response.session.as_deref(), Some("chat_session=ab.cd"));
        let over_tls = b"HTTP/1.1 200 OK\r\n\
            Set-Cookie: __Host-chat_session=ef.gh; Secure; Path=/\r\nContent-Length: 0\r\n\r\n";
        let response = parse_response(over_tls).unwrap().unwrap();
        assert_eq!(
            response.session.as_deref(),
            Some("__Host-chat_session=ef.gh")
        );
    }

    #[test]
    fn requests_carry_the_session_and_the_entry() {
        let request =
            String::from_utf8(session_otp_request("h:1", "http://h:1", "chat_session=t.k"))
                .unwrap();
        assert!(request.starts_with("POST /session/otp HTTP/1.1\r\n"));
        assert!(request.contains("\r\nCookie: chat_session=t.k\r\n"));
        assert!(request.contains("\r\nOrigin: http://h:1\r\n"));
        assert!(request.ends_with("Content-Length: 0\r\n\r\n"));
        let upgrade = upgrade_request("h:1", "http://h:1", "o1", "k", "&room=room-2&since=e1-4");
        assert!(
            String::from_utf8(upgrade)
                .unwrap()
                .starts_with("GET /ws?otp=o1&room=room-2&since=e1-4 HTTP/1.1\r\n")
        );
    }

    #[test]
    fn ids_and_types_are_found() {
        let message = br#"{"type":"new_message","payload":{"message":"s1","from":"percy","sent":"x","id":"ab1-7"}}"#;
        assert_eq!(string_field(message, "id"), Some(&b"ab1-7"[..]));
        assert_eq!(event_type(message), Some(&b"new_message"[..]));
        let gap = br#"{"type":"history_gap","payload":{"room":"room-3","oldest":null}}"#;
        assert_eq!(event_type(gap), Some(&b"history_gap"[..]));
        assert_eq!(string_field(gap, "room"), Some(&b"room-3"[..]));
        assert_eq!(string_field(gap, "oldest"), None);
        assert_eq!(string_field(br#"{"id":"a\"b"}"#, "id"), None);
    }
}

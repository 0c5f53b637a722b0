//! Reading one HTTP/1.x request (head and small body) out of a byte buffer.
//!
//! The head is parsed with httparse; only the headers the server acts on are
//! kept. Limits are enforced here, before anything is allocated for the body.

use super::response::Status;

/// Largest request head accepted (request line plus headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// More header lines than this is refused.
pub const MAX_HEADERS: usize = 100;
/// Largest request body accepted (only `/login` takes one).
pub const MAX_BODY: usize = 4 * 1024;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target as sent: path plus optional query.
    pub target: String,
    /// HTTP/1.1 (true) or HTTP/1.0 (false).
    pub http11: bool,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a request cannot be read; answered with `status` and the connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: Status,
    pub why: &'static str,
}

fn refuse(status: Status, why: &'static str) -> Refusal {
    Refusal { status, why }
}

impl Request {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True when header `name` lists `token` (comma-separated, case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The path part of the target, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The value of query parameter `name` (no percent-decoding: values here are hex).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }

    /// Whether the connection stays open after the response.
    pub fn keep_alive(&self) -> bool {
        if self.http11 {
            !self.header_has_token("connection", "close")
        } else {
            self.header_has_token("connection", "keep-alive")
        }
    }
}

/// A query value as sent by a form or `URLSearchParams`: `+` is a space and
/// `%XX` a byte; None when that is not valid UTF-8 or a bad escape.
pub fn decode_query_value(value: &str) -> Option<String> {
    percent_decode(&value.replace('+', " "))
}

/// `%XX` escapes into bytes; None on a bad escape or bytes that are not UTF-8.
pub fn percent_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses the first request in `buf`: `Ok(Some((request, consumed)))` when a
/// whole request is there, `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, Refusal> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Complete(_)) => return Err(too_large(buf)),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(too_large(buf)),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(Status::HeaderFieldsTooLarge, "too many headers"));
        }
        Err(_) => return Err(refuse(Status::BadRequest, "malformed request head")),
    };
    let method = parsed.method.unwrap_or_default().to_string();
    let target = parsed.path.unwrap_or_default().to_string();
    let http11 = parsed.version == Some(1);
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for header in parsed.headers.iter() {
        let Ok(value) = std::str::from_utf8(header.value) else {
            return Err(refuse(Status::BadRequest, "header value is not UTF-8"));
        };
        headers.push((header.name.to_string(), value.trim().to_string()));
    }
    let mut request = Request {
        method,
        target,
        http11,
        headers,
        body: Vec::new(),
    };

    if request.header("transfer-encoding").is_some() {
        return Err(refuse(
            Status::NotImplemented,
            "chunked request bodies are not supported",
        ));
    }
    // RFC 9112 6.3: several differing lengths, or one that is not plain digits, is an error.
    let mut lengths = request
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"));
    let first = lengths.next().map(|(_, v)| v.as_str());
    let malformed = first.is_some_and(|v| v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()));
    if malformed || lengths.any(|(_, v)| Some(v.as_str()) != first) {
        return Err(refuse(Status::BadRequest, "bad Content-Length"));
    }
    let body_len = match first {
        None => 0,
        Some(value) => match value.parse::<usize>() {
            Ok(len) if len <= MAX_BODY => len,
            Ok(_) => return Err(refuse(Status::PayloadTooLarge, "request body over 4 KiB")),
            Err(_) => return Err(refuse(Status::BadRequest, "bad Content-Length")),
        },
    };
    if buf.len() < head_len + body_len {
        return Ok(None);
    }
    request.body = buf[head_len..head_len + body_len].to_vec();
    Ok(Some((request, head_len + body_len)))
}

/// 414 when the request line alone is over the limit, else 431.
fn too_large(buf: &[u8]) -> Refusal {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    if line_end > MAX_HEAD {
        refuse(Status::UriTooLong, "request line over 8 KiB")
    } else {
        refuse(Status::HeaderFieldsTooLarge, "request head over 8 KiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_pipelined_pair() {
        let buf = b"GET /a?x=1&otp=abc HTTP/1.1\r\nHost: h\r\n\r\nPOST /login HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        let (first, used) = parse(buf).unwrap().unwrap();
        assert_eq!(first.path(), "/a");
        assert_eq!(first.query_param("otp"), Some("abc"));
        assert_eq!(first.query_param("y"), None);
        assert!(first.keep_alive());
        let (second, used2) = parse(&buf[used..]).unwrap().unwrap();
        assert_eq!(second.method, "POST");
        assert_eq!(second.body, b"{}");
        assert_eq!(used + used2, buf.len());
    }

    #[test]
    fn waits_for_the_whole_body() {
        let buf = b"POST /login HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"a\"";
        assert!(parse(buf).unwrap().is_none());
    }

    #[test]
    fn enforces_limits() {
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD + 10));
        assert_eq!(
            parse(long_line.as_bytes()).unwrap_err().status,
            Status::UriTooLong
        );
        let big_head = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(
            parse(big_head.as_bytes()).unwrap_err().status,
            Status::HeaderFieldsTooLarge
        );
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(
            parse(many.as_bytes()).unwrap_err().status,
            Status::HeaderFieldsTooLarge
        );
        let body = b"POST /login HTTP/1.1\r\nContent-Length: 5000\r\n\r\n";
        assert_eq!(parse(body).unwrap_err().status, Status::PayloadTooLarge);
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
                .unwrap_err()
                .status,
            Status::BadRequest
        );
    }

    #[test]
    fn http10_closes_unless_asked() {
        let (req, _) = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!req.keep_alive());
        let (req, _) = parse(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!req.keep_alive());
    }
}

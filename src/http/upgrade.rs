//! The WebSocket handshake as HTTP sees it: which origins may open one, what
//! makes a request a well-formed upgrade, and the `101` that answers it.
//!
//! Nothing here touches frames: once the `101` is queued, the connection core
//! hands the stream to `ws::Session`.

use tungstenite::handshake::derive_accept_key;

use super::request::Request;
use super::response::{Response, Status};

/// What a WebSocket is for, decided by the route that accepted the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A logged-in chat member: text events only.
    Chat,
    /// The conformance-test echo route: every message comes back as sent.
    Echo,
}

/// Origins allowed to open a WebSocket (lowercase, no trailing slash).
#[derive(Debug, Clone)]
pub struct Origins {
    allowed: Vec<String>,
}

impl Origins {
    pub fn new(allowed: Vec<String>) -> Origins {
        let allowed = allowed
            .iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect();
        Origins { allowed }
    }

    /// The server's own origins for a listener on `port`.
    pub fn own(schemes: &[&str], hosts: &[String], port: u16) -> Vec<String> {
        let mut own = Vec::new();
        for scheme in schemes {
            for host in hosts {
                own.push(format!("{scheme}://{host}:{port}"));
            }
        }
        own
    }

    /// A request without Origin is not from a browser and is allowed.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(origin) => self.allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)),
        }
    }

    pub fn list(&self) -> &[String] {
        &self.allowed
    }
}

/// Checks the parts of an upgrade request that make it a WebSocket handshake
/// and returns the `Sec-WebSocket-Accept` value, or a 400 response.
pub fn check_handshake(request: &Request) -> Result<String, Response> {
    let bad = |why: &str| Err(Response::text(Status::BadRequest, why).closing());
    if request.method != "GET" || !request.http11 {
        return bad("a WebSocket upgrade is a GET over HTTP/1.1");
    }
    if !request.header_has_token("upgrade", "websocket") {
        return bad("missing 'Upgrade: websocket'");
    }
    if !request.header_has_token("connection", "upgrade") {
        return bad("missing 'Connection: Upgrade'");
    }
    if request.header("sec-websocket-version") != Some("13") {
        return Err(
            Response::text(Status::BadRequest, "unsupported Sec-WebSocket-Version")
                .header("Sec-WebSocket-Version", "13")
                .closing(),
        );
    }
    let key = request.header("sec-websocket-key").unwrap_or("");
    if !is_valid_key(key) {
        return bad("bad Sec-WebSocket-Key");
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// A key is 16 bytes in base64: 22 characters and "==".
fn is_valid_key(key: &str) -> bool {
    key.len() == 24
        && key.ends_with("==")
        && key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

pub fn switching_protocols(accept: String) -> Response {
    Response::new(Status::SwitchingProtocols)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Accept", accept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(headers: &str) -> Request {
        let raw = format!("GET /ws?otp=x HTTP/1.1\r\nHost: h\r\n{headers}\r\n");
        super::super::request::parse(raw.as_bytes())
            .unwrap()
            .unwrap()
            .0
    }

    const GOOD: &str = "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn accepts_the_rfc_example_key() {
        assert_eq!(
            check_handshake(&upgrade(GOOD)).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn refuses_malformed_upgrades() {
        for broken in [
            GOOD.replace("websocket", "h2c"),
            GOOD.replace("keep-alive, Upgrade", "keep-alive"),
            GOOD.replace("Version: 13", "Version: 8"),
            GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
        ] {
            let response = check_handshake(&upgrade(&broken)).unwrap_err();
            assert_eq!(response.status, Status::BadRequest, "{broken}");
        }
    }

    #[test]
    fn origins_match_exactly() {
        let origins = Origins::new(Origins::own(&["http"], &["localhost".into()], 8080));
        assert!(origins.allows(None));
        assert!(origins.allows(Some("http://localhost:8080")));
        assert!(origins.allows(Some("HTTP://LOCALHOST:8080")));
        assert!(!origins.allows(Some("null")));
        assert!(!origins.allows(Some("http://localhost:8080.evil.com")));
        assert!(!origins.allows(Some("http://localhost:8080@evil")));
        assert!(!origins.allows(Some("http://localhost:8081")));
    }
}

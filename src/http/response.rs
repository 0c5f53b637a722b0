//! HTTP responses: status codes the server uses, and the bytes on the wire.

use std::time::SystemTime;

use crate::datetime::http_date;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    SwitchingProtocols,
    Ok,
    Accepted,
    NotModified,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    UriTooLong,
    TooManyRequests,
    HeaderFieldsTooLarge,
    InternalServerError,
    NotImplemented,
    ServiceUnavailable,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::SwitchingProtocols => 101,
            Status::Ok => 200,
            Status::Accepted => 202,
            Status::NotModified => 304,
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::PayloadTooLarge => 413,
            Status::UriTooLong => 414,
            Status::TooManyRequests => 429,
            Status::HeaderFieldsTooLarge => 431,
            Status::InternalServerError => 500,
            Status::NotImplemented => 501,
            Status::ServiceUnavailable => 503,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Status::SwitchingProtocols => "Switching Protocols",
            Status::Ok => "OK",
            Status::Accepted => "Accepted",
            Status::NotModified => "Not Modified",
            Status::BadRequest => "Bad Request",
            Status::Unauthorized => "Unauthorized",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::PayloadTooLarge => "Payload Too Large",
            Status::UriTooLong => "URI Too Long",
            Status::TooManyRequests => "Too Many Requests",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::InternalServerError => "Internal Server Error",
            Status::NotImplemented => "Not Implemented",
            Status::ServiceUnavailable => "Service Unavailable",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: Status,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// Send headers only (HEAD, 304), though Content-Length describes the body.
    omit_body: bool,
    /// Close the connection once this response is written.
    pub close: bool,
}

impl Response {
    pub fn new(status: Status) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            omit_body: false,
            close: false,
        }
    }

    /// A short plain-text answer, used for every error status.
    pub fn text(status: Status, message: &str) -> Response {
        Response::new(status).body(
            "text/plain; charset=utf-8",
            format!("{message}\n").into_bytes(),
        )
    }

    pub fn json(status: Status, value: &serde_json::Value) -> Response {
        Response::new(status).body("application/json", value.to_string().into_bytes())
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, content_type: &str, body: Vec<u8>) -> Response {
        self.headers
            .push(("Content-Type", content_type.to_string()));
        self.body = body;
        self
    }

    /// Keep the headers (Content-Length included) but send no body: for HEAD.
    pub fn without_body(mut self) -> Response {
        self.omit_body = true;
        self
    }

    pub fn closing(mut self) -> Response {
        self.close = true;
        self
    }

    /// The response as it goes on the wire.
    pub fn to_bytes(&self, now: SystemTime) -> Vec<u8> {
        let status = self.status;
        let mut head = format!("HTTP/1.1 {} {}\r\n", status.code(), status.reason());
        if status != Status::SwitchingProtocols {
            head.push_str(&format!(
                "Date: {}\r\nServer: chat-server\r\n",
                http_date(now)
            ));
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if status != Status::SwitchingProtocols && status != Status::NotModified {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        if self.close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !self.omit_body {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_keeps_length_but_drops_body() {
        let response = Response::text(Status::NotFound, "no such file")
            .without_body()
            .closing();
        let wire = String::from_utf8(response.to_bytes(SystemTime::UNIX_EPOCH)).unwrap();
        assert!(wire.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(wire.contains("Content-Length: 13\r\n"));
        assert!(wire.contains("Connection: close\r\n"));
        assert!(wire.ends_with("\r\n\r\n"));
    }
}

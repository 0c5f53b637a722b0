//! The HTTP side of the server: parsing requests, and deciding what each one
//! gets (a file, a login answer, or a WebSocket upgrade).

pub mod files;
pub mod request;
pub mod response;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Deserialize;

pub use request::Request;
pub use response::{Response, Status};

use crate::auth::{Accounts, LoginLimiter, Otps};
use crate::ws::{self, Origins, Purpose};
use files::WebRoot;

/// Everything a request can be answered from.
pub struct Site {
    pub root: WebRoot,
    pub origins: Origins,
    pub accounts: Accounts,
    pub otps: Otps,
    pub otp_ttl: Duration,
    /// The unauthenticated echo route for conformance tests (off unless configured).
    pub echo_path: Option<String>,
    pub limiter: LoginLimiter,
}

/// What the connection should do with a request.
pub enum Outcome {
    Respond(Response),
    /// A login succeeded: answer, and sweep expired OTPs at `expires`.
    LoggedIn {
        response: Response,
        expires: Instant,
    },
    /// Answer with the server's metrics (only the loop has them).
    Metrics,
    /// Answer 101 and become a WebSocket for `user`.
    Upgrade {
        response: Response,
        user: String,
        purpose: Purpose,
    },
}

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

impl Site {
    pub fn route(&mut self, request: &Request, peer: SocketAddr, now: Instant) -> Outcome {
        let get = request.method == "GET" || request.method == "HEAD";
        match request.path() {
            path if self.echo_path.as_deref() == Some(path) => self.upgrade_echo(request, peer),
            "/login" => self.login(request, peer, now),
            "/healthz" if get => Outcome::Respond(Response::text(Status::Ok, "ok")),
            "/metrics" if get => Outcome::Metrics,
            "/ws" => self.upgrade(request, peer, now),
            _ if request.method == "GET" || request.method == "HEAD" => {
                Outcome::Respond(self.root.serve(request))
            }
            _ => Outcome::Respond(not_allowed("GET, HEAD")),
        }
    }

    fn login(&mut self, request: &Request, peer: SocketAddr, now: Instant) -> Outcome {
        if request.method != "POST" {
            return Outcome::Respond(not_allowed("POST"));
        }
        if let Some(seconds) = self.limiter.retry_after(peer.ip(), now) {
            log::warn!("{peer}: login refused: too many failures, retry in {seconds} s");
            return Outcome::Respond(too_many(seconds, "too many failed logins"));
        }
        if self.otps.is_full() {
            log::warn!(
                "{peer}: login refused: {} one-time passwords outstanding",
                self.otps.outstanding()
            );
            return Outcome::Respond(too_many(
                self.otp_ttl.as_secs().max(1),
                "too many logins in flight",
            ));
        }
        let Ok(body) = serde_json::from_slice::<LoginBody>(&request.body) else {
            log::info!("{peer}: login refused: body is not {{\"username\", \"password\"}} JSON");
            return Outcome::Respond(Response::text(
                Status::BadRequest,
                "expected {\"username\": \"...\", \"password\": \"...\"}",
            ));
        };
        if !self.accounts.verify(&body.username, &body.password) {
            log::info!("{peer}: login failed for {:?}", body.username);
            self.limiter.record_failure(peer.ip(), now);
            return Outcome::Respond(Response::text(
                Status::Unauthorized,
                "wrong username or password",
            ));
        }
        let expires = now + self.otp_ttl;
        match self.otps.issue(&body.username, expires) {
            Ok(otp) => {
                log::info!("{peer}: login ok for {:?}", body.username);
                let response = Response::json(Status::Ok, &serde_json::json!({ "otp": otp }))
                    .header("Cache-Control", "no-store");
                Outcome::LoggedIn { response, expires }
            }
            Err(err) => {
                log::error!("{peer}: cannot issue an OTP: {err}");
                Outcome::Respond(Response::text(
                    Status::InternalServerError,
                    "cannot issue a password",
                ))
            }
        }
    }

    /// Order matters: nothing consumes the OTP unless the upgrade would succeed.
    fn upgrade(&mut self, request: &Request, peer: SocketAddr, now: Instant) -> Outcome {
        if request.method != "GET" {
            return Outcome::Respond(not_allowed("GET"));
        }
        let accept = match ws::check_handshake(request) {
            Ok(accept) => accept,
            Err(response) => {
                log::info!("{peer}: upgrade refused: malformed handshake");
                return Outcome::Respond(response);
            }
        };
        let origin = request.header("origin");
        if !self.origins.allows(origin) {
            log::info!(
                "{peer}: upgrade refused: origin {:?} not allowed",
                origin.unwrap_or("")
            );
            return Outcome::Respond(
                Response::text(Status::Forbidden, "origin not allowed").closing(),
            );
        }
        let user = match request.query_param("otp").filter(|otp| !otp.is_empty()) {
            None => None,
            Some(otp) => self.otps.redeem(otp, now),
        };
        let Some(user) = user else {
            log::info!("{peer}: upgrade refused: missing, unknown, expired or used OTP");
            return Outcome::Respond(
                Response::text(Status::Unauthorized, "invalid one-time password").closing(),
            );
        };
        Outcome::Upgrade {
            response: ws::switching_protocols(accept),
            user,
            purpose: Purpose::Chat,
        }
    }

    /// The echo route: a well-formed handshake is all it asks for.
    fn upgrade_echo(&mut self, request: &Request, peer: SocketAddr) -> Outcome {
        match ws::check_handshake(request) {
            Ok(accept) => Outcome::Upgrade {
                response: ws::switching_protocols(accept),
                user: "echo".to_string(),
                purpose: Purpose::Echo,
            },
            Err(response) => {
                log::info!("{peer}: echo upgrade refused: malformed handshake");
                Outcome::Respond(response)
            }
        }
    }
}

fn too_many(retry_after_secs: u64, why: &str) -> Response {
    Response::text(Status::TooManyRequests, why).header("Retry-After", retry_after_secs.to_string())
}

fn not_allowed(allow: &'static str) -> Response {
    Response::text(Status::MethodNotAllowed, "method not allowed").header("Allow", allow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(otps: Otps) -> Site {
        Site {
            root: WebRoot::open(std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/www"
            )))
            .unwrap(),
            origins: Origins::new(Vec::new()),
            accounts: Accounts::demo().unwrap(),
            otps,
            otp_ttl: Duration::from_secs(5),
            echo_path: None,
            limiter: LoginLimiter::default(),
        }
    }

    fn login_request() -> Request {
        let body = r#"{"username":"percy","password":"123"}"#;
        let raw = format!(
            "POST /login HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        request::parse(raw.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn outstanding_otps_are_capped() {
        let mut site = site(Otps::with_limit(2));
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let now = Instant::now();
        for _ in 0..2 {
            assert!(matches!(
                site.route(&login_request(), peer, now),
                Outcome::LoggedIn { .. }
            ));
        }
        let Outcome::Respond(refused) = site.route(&login_request(), peer, now) else {
            panic!("expected a refusal");
        };
        assert_eq!(refused.status, Status::TooManyRequests);
    }
}

//! The HTTP side of the server: parsing requests, and deciding what each one
//! gets (a file, a login answer, health, metrics, or a WebSocket upgrade).
//! Every route name lives here.

pub mod files;
pub mod request;
pub mod response;
pub mod upgrade;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

pub use request::Request;
pub use response::{Response, Status};
pub use upgrade::{Origins, Purpose};

use crate::auth::{Accounts, LoginLimiter, LoginTurns, Otps};
use crate::broker::{OtpStore, StoreAnswer, StoreQuery};
use crate::chat::check_room_name;
use crate::history::{Entry, Resume};
use crate::logging::{Escaped, LogThrottle, held_back};
use crate::metrics::Metrics;
use crate::sessions::{self, Claims, Sessions};
use crate::slab::SlotId;
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
    /// Password checks are slow: they take turns (see `LoginTurns`).
    pub turns: LoginTurns,
    /// Signed session tokens: log in once.
    pub sessions: Sessions,
    /// `/metrics` has a listener of its own; the public ones answer 404 for it.
    pub metrics_elsewhere: bool,
    /// Refused logins can come by the thousand: their warnings are throttled.
    pub refusal_log: LogThrottle,
    /// So can members over their event budget.
    pub flood_log: LogThrottle,
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The chat: files, logins, WebSockets (and metrics, unless they have their own).
    Public,
    /// `--metrics-listen`: metrics and health only.
    Metrics,
}

/// Who is asking, and what the answer may use or count.
pub struct Visit<'a> {
    pub peer: SocketAddr,
    /// It came over TLS (cookies get `Secure`).
    pub secure: bool,
    pub role: Role,
    pub now: Instant,
    /// The connection asking (it queues for a login turn under this name).
    pub id: SlotId,
    /// A password check granted to this connection; the first login uses it up.
    pub login_turn: &'a mut bool,
    pub metrics: &'a mut Metrics,
    /// Where OTPs and ended sessions are kept, and whether it can be reached.
    pub store: OtpStore,
}

/// What the connection should do with a request.
#[derive(Debug)]
pub enum Outcome {
    Respond(Response),
    /// Answer, but not before `at` (a failed login while failures abound).
    RespondAfter {
        response: Response,
        at: Instant,
    },
    /// Answer 101 and become a WebSocket.
    Upgrade(Upgrade),
    /// A login waits for its turn to check a password: keep the request and
    /// ask again when the turn is granted.
    AwaitTurn,
    /// Ask the shared store, and carry on with `then` once it answers
    /// (`Site::answered`).
    Ask {
        query: StoreQuery,
        then: Awaiting,
    },
}

/// An accepted upgrade: answer `response` (the 101) and become a WebSocket
/// for `user`, starting as `entry` says.
#[derive(Debug)]
pub struct Upgrade {
    pub response: Response,
    pub user: String,
    pub purpose: Purpose,
    pub entry: Entry,
}

/// What a request does once the shared store answers.
#[derive(Debug)]
pub enum Awaiting {
    /// The user proved who they are; the OTP is being stored. `cookie`
    /// (a new session's) goes with the answer.
    Otp { otp: String, cookie: Option<String> },
    /// The session's end is being recorded; `cookie` clears it.
    Logout { cookie: String },
    /// The upgrade is well-formed and its Origin allowed; its OTP is being taken.
    Upgrade { response: Response, entry: Entry },
}

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

impl Site {
    pub fn route(&mut self, request: &Request, visit: &mut Visit) -> Outcome {
        let get = request.method == "GET" || request.method == "HEAD";
        let peer = visit.peer;
        let metrics_here = match visit.role {
            Role::Public => !self.metrics_elsewhere,
            Role::Metrics => true,
        };
        match request.path() {
            "/healthz" if get => Outcome::Respond(Site::health(visit.store)),
            "/metrics" if get && metrics_here => Outcome::Respond(self.metrics(visit.metrics)),
            _ if visit.role == Role::Metrics => {
                Outcome::Respond(Response::text(Status::NotFound, "metrics and health only"))
            }
            path if self.echo_path.as_deref() == Some(path) => self.upgrade_echo(request, peer),
            "/login" => self.login(request, visit),
            "/session/otp" => self.session_otp(request, visit),
            "/logout" => self.logout(request, visit),
            "/ws" => self.upgrade(request, visit),
            _ if request.method == "GET" || request.method == "HEAD" => {
                Outcome::Respond(self.root.serve(request))
            }
            _ => Outcome::Respond(not_allowed("GET, HEAD")),
        }
    }

    /// 200 while the server can do its job; 503 with the reason when it cannot.
    fn health(store: OtpStore) -> Response {
        match store {
            OtpStore::Shared { up: false } => Response::text(
                Status::ServiceUnavailable,
                "redis unavailable: logins and cross-process chat are down",
            ),
            _ => Response::text(Status::Ok, "ok"),
        }
    }

    /// A 503 for what needs the shared store while it is unreachable.
    fn store_unavailable(what: &str) -> Response {
        Response::text(
            Status::ServiceUnavailable,
            &format!("{what} unavailable: try again"),
        )
        .header("Retry-After", "1")
    }

    fn metrics(&self, metrics: &mut Metrics) -> Response {
        metrics.otps_outstanding = self.otps.outstanding();
        Response::new(Status::Ok)
            .body(
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.render().into_bytes(),
            )
            .header("Cache-Control", "no-store")
    }

    fn login(&mut self, request: &Request, visit: &mut Visit) -> Outcome {
        let (peer, now) = (visit.peer, visit.now);
        if request.method != "POST" {
            return Outcome::Respond(not_allowed("POST"));
        }
        // A cross-site form could otherwise log the victim's browser in as
        // the attacker (login CSRF).
        if let Some(refusal) = self.refuse_origin(request, peer) {
            return Outcome::Respond(refusal);
        }
        if let Some(seconds) = self.limiter.retry_after(peer.ip(), now) {
            if let Some(quiet) = self.refusal_log.admit(now) {
                let quiet = held_back(quiet);
                log::warn!("{peer}: login refused: too many failures, retry in {seconds} s{quiet}");
            }
            visit.metrics.logins_rate_limited += 1;
            return Outcome::Respond(too_many(seconds, "too many failed logins"));
        }
        if visit.store == (OtpStore::Shared { up: false }) {
            // An OTP the other processes cannot see would fail at the upgrade.
            return Outcome::Respond(Site::store_unavailable("login"));
        }
        if visit.store == OtpStore::Local && self.otps.is_full() {
            if let Some(quiet) = self.refusal_log.admit(now) {
                let outstanding = self.otps.outstanding();
                let quiet = held_back(quiet);
                log::warn!(
                    "{peer}: login refused: {outstanding} one-time passwords outstanding{quiet}"
                );
            }
            visit.metrics.logins_rate_limited += 1;
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
        if !self.turns.admit(visit.id, visit.login_turn) {
            return Outcome::AwaitTurn;
        }
        if !self.accounts.verify(&body.username, &body.password) {
            log::info!("{peer}: login failed for {}", Escaped(&body.username));
            visit.metrics.logins_failed += 1;
            let response = Response::text(Status::Unauthorized, "wrong username or password");
            return match self.limiter.record_failure(peer.ip(), now) {
                None => Outcome::Respond(response),
                Some(delay) => Outcome::RespondAfter {
                    response,
                    at: now + delay,
                },
            };
        }
        log::info!("{peer}: login ok for {}", Escaped(&body.username));
        visit.metrics.logins_succeeded += 1;
        let cookie = match self.sessions.issue(&body.username, SystemTime::now()) {
            Ok((token, _)) => Some(self.sessions.cookie(&token, visit.secure)),
            Err(err) => {
                log::error!("{peer}: cannot open a session: {err}");
                None
            }
        };
        self.grant_otp(body.username, None, cookie, visit)
    }

    /// An OTP for a user who proved who they are (a password, or a session):
    /// issued here, or stored in the shared store first. `cookie` goes with
    /// the answer (a new session's).
    fn grant_otp(
        &mut self,
        user: String,
        session: Option<Claims>,
        cookie: Option<String>,
        visit: &mut Visit,
    ) -> Outcome {
        let peer = visit.peer;
        if let OtpStore::Shared { .. } = visit.store {
            let otp = match Otps::fresh() {
                Ok(otp) => otp,
                Err(err) => {
                    log::error!("{peer}: cannot make an OTP: {err}");
                    return Outcome::Respond(Site::store_unavailable("login"));
                }
            };
            let query = match session {
                Some(claims) => StoreQuery::StoreForSession {
                    otp: otp.clone(),
                    user,
                    session: claims.id,
                },
                None => StoreQuery::Store {
                    otp: otp.clone(),
                    user,
                },
            };
            return Outcome::Ask {
                query,
                then: Awaiting::Otp { otp, cookie },
            };
        }
        let expires = visit.now + self.otp_ttl;
        match self.otps.issue(&user, expires) {
            Ok(otp) => Outcome::Respond(otp_response(&otp, cookie)),
            Err(err) => {
                log::error!("{peer}: cannot issue an OTP: {err}");
                Outcome::Respond(Response::text(
                    Status::InternalServerError,
                    "cannot issue a password",
                ))
            }
        }
    }

    /// `POST /session/otp`: an OTP for the session in the cookie, with no
    /// password and no hashing.
    fn session_otp(&mut self, request: &Request, visit: &mut Visit) -> Outcome {
        let peer = visit.peer;
        if request.method != "POST" {
            return Outcome::Respond(not_allowed("POST"));
        }
        if let Some(refusal) = self.refuse_origin(request, peer) {
            return Outcome::Respond(refusal);
        }
        if visit.store == (OtpStore::Shared { up: false }) {
            return Outcome::Respond(Site::store_unavailable("login"));
        }
        self.sessions.refresh_revocations(SystemTime::now());
        let Some(claims) = self.session_of(request, peer, visit.secure) else {
            return Outcome::Respond(Response::text(Status::Unauthorized, "no valid session"));
        };
        if !self.sessions.take_otp(&claims, visit.now) {
            return Outcome::Respond(too_many(2, "too many one-time passwords for this session"));
        }
        if visit.store == OtpStore::Local && self.otps.is_full() {
            return Outcome::Respond(too_many(1, "too many logins in flight"));
        }
        visit.metrics.session_otps += 1;
        log::debug!("{peer}: an OTP for {}'s session", Escaped(&claims.user));
        self.grant_otp(claims.user.clone(), Some(claims), None, visit)
    }

    /// `POST /logout`: the session ends on the server (everywhere, with the
    /// shared store) and the cookie is cleared.
    fn logout(&mut self, request: &Request, visit: &mut Visit) -> Outcome {
        let peer = visit.peer;
        if request.method != "POST" {
            return Outcome::Respond(not_allowed("POST"));
        }
        if let Some(refusal) = self.refuse_origin(request, peer) {
            return Outcome::Respond(refusal);
        }
        let clear = Sessions::clear_cookie(visit.secure);
        // Ended here already is no reason to stop: a retry after a failed
        // logout must still reach the shared store.
        let Some(claims) = self.signed_session(request, peer, visit.secure) else {
            return Outcome::Respond(logged_out(clear));
        };
        self.sessions.revoke(&claims, SystemTime::now());
        log::info!("{peer}: {} logged out", Escaped(&claims.user));
        match visit.store {
            OtpStore::Local => Outcome::Respond(logged_out(clear)),
            OtpStore::Shared { .. } => Outcome::Ask {
                query: StoreQuery::Revoke {
                    session: claims.id,
                    until: claims.expires,
                },
                then: Awaiting::Logout { cookie: clear },
            },
        }
    }

    /// The session in the request's cookie, if it is one this server honours:
    /// signed here, not expired, not ended here, its user still an account.
    fn session_of(&self, request: &Request, peer: SocketAddr, secure: bool) -> Option<Claims> {
        match self.signed_session(request, peer, secure) {
            None => None,
            Some(claims) if !self.accounts.contains(&claims.user) => {
                log::info!(
                    "{peer}: session refused: {} has no account now",
                    Escaped(&claims.user)
                );
                None
            }
            Some(claims) if self.sessions.is_revoked(&claims) => {
                log::info!("{peer}: session refused: it was ended");
                None
            }
            claims => claims,
        }
    }

    /// The session in the request's cookie if this server signed it and it
    /// has not expired, whether or not it has been ended since.
    fn signed_session(&self, request: &Request, peer: SocketAddr, secure: bool) -> Option<Claims> {
        let token = sessions::token_in(request.header("cookie"), secure)?;
        self.sessions
            .verify(token, SystemTime::now())
            .inspect_err(|why| log::info!("{peer}: session refused: {why:?}"))
            .ok()
    }

    /// A 403 for a browser request from an origin not allowed (as for the upgrade).
    fn refuse_origin(&self, request: &Request, peer: SocketAddr) -> Option<Response> {
        let origin = request.header("origin");
        if self.origins.allows(origin) {
            return None;
        }
        let origin = Escaped(origin.unwrap_or(""));
        log::info!("{peer}: refused: origin {origin} not allowed");
        Some(Response::text(Status::Forbidden, "origin not allowed"))
    }

    /// Order matters: nothing consumes the OTP unless the upgrade would succeed.
    fn upgrade(&mut self, request: &Request, visit: &Visit) -> Outcome {
        let (peer, now) = (visit.peer, visit.now);
        if request.method != "GET" {
            return Outcome::Respond(not_allowed("GET"));
        }
        let accept = match upgrade::check_handshake(request) {
            Ok(accept) => accept,
            Err(response) => {
                log::info!("{peer}: upgrade refused: malformed handshake");
                return Outcome::Respond(response);
            }
        };
        let origin = request.header("origin");
        if !self.origins.allows(origin) {
            let origin = Escaped(origin.unwrap_or(""));
            log::info!("{peer}: upgrade refused: origin {origin} not allowed");
            return Outcome::Respond(
                Response::text(Status::Forbidden, "origin not allowed").closing(),
            );
        }
        let entry = match entry_of(request) {
            Ok(entry) => entry,
            Err(why) => {
                log::info!("{peer}: upgrade refused: {why}");
                return Outcome::Respond(Response::text(Status::BadRequest, &why).closing());
            }
        };
        let otp = request.query_param("otp").filter(|otp| !otp.is_empty());
        let user = match (otp, visit.store) {
            (None, _) => None,
            (Some(otp), OtpStore::Local) => self.otps.redeem(otp, now),
            (Some(_), OtpStore::Shared { up: false }) => {
                return Outcome::Respond(Site::store_unavailable("upgrade").closing());
            }
            (Some(otp), OtpStore::Shared { up: true }) => {
                return Outcome::Ask {
                    query: StoreQuery::Take {
                        otp: otp.to_string(),
                    },
                    then: Awaiting::Upgrade {
                        response: upgrade::switching_protocols(accept),
                        entry,
                    },
                };
            }
        };
        self.upgrade_for(user, upgrade::switching_protocols(accept), entry, peer)
    }

    /// The 101 for the user an OTP named, or a 401.
    fn upgrade_for(
        &self,
        user: Option<String>,
        response: Response,
        entry: Entry,
        peer: SocketAddr,
    ) -> Outcome {
        let Some(user) = user else {
            log::info!("{peer}: upgrade refused: missing, unknown, expired or used OTP");
            return Outcome::Respond(
                Response::text(Status::Unauthorized, "invalid one-time password").closing(),
            );
        };
        Outcome::Upgrade(Upgrade {
            response,
            user,
            purpose: Purpose::Chat,
            entry,
        })
    }

    /// Carries on with a request once the shared store has answered.
    pub fn answered(&mut self, then: Awaiting, answer: StoreAnswer, visit: &mut Visit) -> Outcome {
        let peer = visit.peer;
        match (then, answer) {
            (Awaiting::Otp { otp, cookie }, StoreAnswer::Stored) => {
                Outcome::Respond(otp_response(&otp, cookie))
            }
            (Awaiting::Otp { .. }, StoreAnswer::Revoked) => {
                log::info!("{peer}: session refused: it was ended elsewhere");
                Outcome::Respond(Response::text(Status::Unauthorized, "no valid session"))
            }
            (Awaiting::Otp { .. }, answer) => {
                log::warn!("{peer}: login not completed: the shared store answered {answer:?}");
                Outcome::Respond(Site::store_unavailable("login"))
            }
            (Awaiting::Logout { cookie }, StoreAnswer::Done) => {
                Outcome::Respond(logged_out(cookie))
            }
            (Awaiting::Logout { .. }, answer) => {
                // The cookie stays: the browser needs it to try again, and
                // every other process still honours the session.
                log::warn!("{peer}: logout not recorded: the shared store answered {answer:?}");
                Outcome::Respond(Site::store_unavailable("logout"))
            }
            (Awaiting::Upgrade { response, entry }, StoreAnswer::Taken(user)) => {
                self.upgrade_for(user, response, entry, peer)
            }
            (Awaiting::Upgrade { .. }, answer) => {
                log::warn!("{peer}: upgrade not completed: the shared store answered {answer:?}");
                Outcome::Respond(Site::store_unavailable("upgrade").closing())
            }
        }
    }

    /// The echo route: a well-formed handshake is all it asks for.
    fn upgrade_echo(&mut self, request: &Request, peer: SocketAddr) -> Outcome {
        match upgrade::check_handshake(request) {
            Ok(accept) => Outcome::Upgrade(Upgrade {
                response: upgrade::switching_protocols(accept),
                user: "echo".to_string(),
                purpose: Purpose::Echo,
                entry: Entry::default(),
            }),
            Err(response) => {
                log::info!("{peer}: echo upgrade refused: malformed handshake");
                Outcome::Respond(response)
            }
        }
    }
}

/// Where `/ws?...&room=R&since=ID` (or `&history=K`) asks the member to start.
fn entry_of(request: &Request) -> Result<Entry, String> {
    let decoded = |name: &str| request.query_param(name).map(request::decode_query_value);
    let room = match decoded("room") {
        None => None,
        Some(Some(room)) => {
            check_room_name(&room)?;
            Some(room)
        }
        Some(None) => return Err("room is not a valid percent-encoded name".into()),
    };
    let resume = match (decoded("since"), request.query_param("history")) {
        (Some(Some(since)), _) => Some(Resume::Since(since)),
        (Some(None), _) => return Err("since is not a valid id".into()),
        (None, Some(count)) => match count.parse() {
            Ok(count) => Some(Resume::Last(count)),
            Err(_) => return Err("history is a number of messages".into()),
        },
        (None, None) => None,
    };
    Ok(Entry { room, resume })
}

/// `200 {"otp": ...}`, with a session cookie after a password login.
fn otp_response(otp: &str, cookie: Option<String>) -> Response {
    let response = Response::json(Status::Ok, &serde_json::json!({ "otp": otp }))
        .header("Cache-Control", "no-store");
    match cookie {
        Some(cookie) => response.header("Set-Cookie", cookie),
        None => response,
    }
}

fn logged_out(clear_cookie: String) -> Response {
    Response::text(Status::Ok, "logged out").header("Set-Cookie", clear_cookie)
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
            turns: LoginTurns::default(),
            sessions: Sessions::open(None, Duration::from_secs(3600)).unwrap(),
            metrics_elsewhere: false,
            refusal_log: LogThrottle::new(Duration::from_secs(5)),
            flood_log: LogThrottle::new(Duration::from_secs(5)),
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

    fn status(outcome: Outcome) -> Status {
        match outcome {
            Outcome::Respond(response) => response.status,
            _ => panic!("expected a response"),
        }
    }

    #[test]
    fn outstanding_otps_are_capped() {
        let mut site = site(Otps::with_limit(2));
        let mut metrics = Metrics::default();
        let mut turn = false;
        let mut visit = Visit {
            peer: "127.0.0.1:5000".parse().unwrap(),
            secure: false,
            role: Role::Public,
            now: Instant::now(),
            id: crate::slab::Slab::new().insert(()),
            login_turn: &mut turn,
            metrics: &mut metrics,
            store: OtpStore::Local,
        };
        for _ in 0..2 {
            site.turns.new_iteration();
            assert_eq!(status(site.route(&login_request(), &mut visit)), Status::Ok);
        }
        site.turns.new_iteration();
        let refused = status(site.route(&login_request(), &mut visit));
        assert_eq!(refused, Status::TooManyRequests);
        assert_eq!(metrics.logins_succeeded, 2);
        assert_eq!(metrics.logins_rate_limited, 1);
    }
}

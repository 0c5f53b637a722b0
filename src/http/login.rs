//! The login routes: `POST /login` (a password for an OTP and a session
//! cookie), `POST /session/otp` (the cookie for an OTP), `POST /logout`, the
//! Origin check that guards all three, and what each answers once the
//! shared store has done its part.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{
    Awaiting, Outcome, Request, Response, Site, Status, Visit, not_allowed, unix_seconds,
};
use crate::auth::Otps;
use crate::broker::{OtpStore, StoreAnswer, StoreQuery};
use crate::logging::{Escaped, held_back};
use crate::sessions::{self, Claims, Sessions};

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

impl Site {
    pub(super) fn login(&mut self, request: &Request, visit: &mut Visit) -> Outcome {
        let (peer, now) = (visit.peer, visit.now);
        // A cross-site form could otherwise log the victim's browser in as
        // the attacker (login CSRF).
        if let Some(refusal) = self.refuse_cross_site_post(request, peer) {
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
        if self.bans.is_banned(&body.username, unix_seconds(visit.wall)) {
            log::info!("{peer}: login refused: {} is banned", Escaped(&body.username));
            return Outcome::Respond(Response::text(Status::Forbidden, "banned"));
        }
        log::info!("{peer}: login ok for {}", Escaped(&body.username));
        visit.metrics.logins_succeeded += 1;
        let cookie = match self.sessions.issue(&body.username, visit.wall) {
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
            // A session's OTP names its session: the shared store keeps it
            // beside the session's revocation (one Redis Cluster slot), and
            // finds it there again from the OTP alone.
            let (otp, query) = match session {
                Some(claims) => {
                    let otp = format!("{}.{otp}", claims.id);
                    let query = StoreQuery::StoreForSession {
                        otp: otp.clone(),
                        user,
                        session: claims.id,
                    };
                    (otp, query)
                }
                None => {
                    let query = StoreQuery::Store {
                        otp: otp.clone(),
                        user,
                    };
                    (otp, query)
                }
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
    pub(super) fn session_otp(&mut self, request: &Request, visit: &mut Visit) -> Outcome {
        let peer = visit.peer;
        if let Some(refusal) = self.refuse_cross_site_post(request, peer) {
            return Outcome::Respond(refusal);
        }
        if visit.store == (OtpStore::Shared { up: false }) {
            return Outcome::Respond(Site::store_unavailable("login"));
        }
        self.sessions.refresh_revocations(visit.wall);
        // A ban ends the user's sessions too; a banned user is told so.
        if let Some(claims) = self.signed_session(request, visit)
            && self.bans.is_banned(&claims.user, unix_seconds(visit.wall))
        {
            log::info!("{peer}: session refused: {} is banned", Escaped(&claims.user));
            return Outcome::Respond(Response::text(Status::Forbidden, "banned"));
        }
        let Some(claims) = self.session_of(request, visit) else {
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
    pub(super) fn logout(&mut self, request: &Request, visit: &mut Visit) -> Outcome {
        let peer = visit.peer;
        if let Some(refusal) = self.refuse_cross_site_post(request, peer) {
            return Outcome::Respond(refusal);
        }
        let clear = Sessions::clear_cookie(visit.secure);
        // Ended here already is no reason to stop: a retry after a failed
        // logout must still reach the shared store.
        let Some(claims) = self.signed_session(request, visit) else {
            return Outcome::Respond(logged_out(clear));
        };
        self.sessions.revoke(&claims, visit.wall);
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
    fn session_of(&self, request: &Request, visit: &Visit) -> Option<Claims> {
        let peer = visit.peer;
        match self.signed_session(request, visit) {
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
    fn signed_session(&self, request: &Request, visit: &Visit) -> Option<Claims> {
        let (peer, secure) = (visit.peer, visit.secure);
        let token = sessions::token_in(request.header("cookie"), secure)?;
        self.sessions
            .verify(token, visit.wall)
            .inspect_err(|why| log::info!("{peer}: session refused: {why:?}"))
            .ok()
    }

    /// A 405 for anything but a POST, and a 403 for a browser request from
    /// an origin not allowed (as for the upgrade): what the login routes
    /// refuse before they look at anything else.
    fn refuse_cross_site_post(&self, request: &Request, peer: SocketAddr) -> Option<Response> {
        if request.method != "POST" {
            return Some(not_allowed("POST"));
        }
        let origin = request.header("origin");
        if self.origins.allows(origin) {
            return None;
        }
        let origin = Escaped(origin.unwrap_or(""));
        log::info!("{peer}: refused: origin {origin} not allowed");
        Some(Response::text(Status::Forbidden, "origin not allowed"))
    }
}

/// A login's or a session's OTP, once the shared store was asked to keep it.
pub(super) fn otp_stored(
    otp: String,
    cookie: Option<String>,
    answer: StoreAnswer,
    peer: SocketAddr,
) -> Outcome {
    match answer {
        StoreAnswer::Stored => Outcome::Respond(otp_response(&otp, cookie)),
        StoreAnswer::Revoked => {
            log::info!("{peer}: session refused: it was ended elsewhere");
            Outcome::Respond(Response::text(Status::Unauthorized, "no valid session"))
        }
        answer => {
            log::warn!("{peer}: login not completed: the shared store answered {answer:?}");
            Outcome::Respond(Site::store_unavailable("login"))
        }
    }
}

/// A logout, once the shared store was asked to record the session's end.
pub(super) fn logout_recorded(cookie: String, answer: StoreAnswer, peer: SocketAddr) -> Outcome {
    match answer {
        StoreAnswer::Done => Outcome::Respond(logged_out(cookie)),
        answer => {
            // The cookie stays: the browser needs it to try again, and
            // every other process still honours the session.
            log::warn!("{peer}: logout not recorded: the shared store answered {answer:?}");
            Outcome::Respond(Site::store_unavailable("logout"))
        }
    }
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::auth::{Accounts, LoginLimiter, LoginTurns};
    use crate::http::files::WebRoot;
    use crate::http::{Origins, Role, request};
    use crate::logging::LogThrottle;
    use crate::metrics::Metrics;

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
            api_key: None,
            api_max_message: 512,
            bans: crate::auth::Bans::default(),
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
            wall: std::time::SystemTime::now(),
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

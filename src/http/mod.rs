//! The HTTP side of the server: parsing requests, and deciding what each one
//! gets (a file, a login answer, health, metrics, or a WebSocket upgrade).
//! Every route name lives here; the login routes are answered in `login`,
//! the server API's in `api`.

pub mod api;
pub mod files;
mod login;
pub mod request;
pub mod response;
pub mod upgrade;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

pub use request::Request;
pub use response::{Response, Status};
pub use upgrade::{Origins, Purpose};

use crate::auth::{Accounts, Bans, LoginLimiter, LoginTurns, Otps};
use crate::broker::{OtpStore, StoreAnswer, StoreQuery};
use crate::chat::check_room_name;
use crate::history::{Entry, Resume};
use crate::logging::{Escaped, LogThrottle};
use crate::metrics::Metrics;
use crate::sessions::Sessions;
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
    /// The server API's key (`/api/` is off without it), and the longest
    /// message it may post.
    pub api_key: Option<api::ApiKey>,
    pub api_max_message: usize,
    /// Users refused until their ban ends.
    pub bans: Bans,
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
    /// The wall clock this loop turn (sessions are issued and checked by it).
    pub wall: SystemTime,
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
    /// Answer, and have the world do what a server API call asked.
    Act {
        action: api::Action,
        response: Response,
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
    /// A server API look (`call`: its method and path, for the log) at
    /// `room`, or at every room, is being answered by the back end.
    Api { call: String, room: Option<String> },
}

impl Site {
    /// New accounts (the file re-read on SIGHUP): sessions are bound to
    /// them, so a changed or removed password ends its user's sessions.
    pub fn replace_accounts(&mut self, accounts: Accounts) {
        self.accounts = accounts;
        self.sessions.bind(self.accounts.credentials());
    }

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
            path if path.starts_with("/api/") => self.api(request, visit),
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
        let response = upgrade::switching_protocols(accept);
        self.upgrade_for(user, response, entry, peer, visit.wall)
    }

    /// The 101 for the user an OTP named, or a 401.
    fn upgrade_for(
        &self,
        user: Option<String>,
        response: Response,
        entry: Entry,
        peer: SocketAddr,
        wall: SystemTime,
    ) -> Outcome {
        let Some(user) = user else {
            log::info!("{peer}: upgrade refused: missing, unknown, expired or used OTP");
            return Outcome::Respond(
                Response::text(Status::Unauthorized, "invalid one-time password").closing(),
            );
        };
        if self.bans.is_banned(&user, unix_seconds(wall)) {
            log::info!("{peer}: upgrade refused: {} is banned", Escaped(&user));
            return Outcome::Respond(Response::text(Status::Forbidden, "banned").closing());
        }
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
        match then {
            Awaiting::Otp { otp, cookie } => login::otp_stored(otp, cookie, answer, peer),
            Awaiting::Logout { cookie } => login::logout_recorded(cookie, answer, peer),
            Awaiting::Api { call, room } => Site::looked(call, room, answer, visit),
            Awaiting::Upgrade { response, entry } => match answer {
                StoreAnswer::Taken(user) => {
                    self.upgrade_for(user, response, entry, peer, visit.wall)
                }
                answer => {
                    log::warn!(
                        "{peer}: upgrade not completed: the shared store answered {answer:?}"
                    );
                    Outcome::Respond(Site::store_unavailable("upgrade").closing())
                }
            },
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

/// Where `/ws?...&room=R&since=ID` (or `&history=K`, `&presence=1`) asks
/// the member to start.
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
    let presence = match request.query_param("presence") {
        None | Some("0") => false,
        Some("1") => true,
        Some(_) => return Err("presence is 1 or 0".into()),
    };
    Ok(Entry {
        room,
        resume,
        presence,
    })
}

fn not_allowed(allow: &'static str) -> Response {
    Response::text(Status::MethodNotAllowed, "method not allowed").header("Allow", allow)
}

/// `at` in whole seconds since the Unix epoch.
pub fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

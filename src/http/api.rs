//! The server API (`--api-key FILE`), for operators and back ends:
//! `POST /api/rooms/{room}/messages`, `POST /api/users/{name}/disconnect`,
//! `POST` and `DELETE /api/users/{name}/ban`, and the looks `GET /api/rooms`,
//! `GET /api/rooms/{room}` and `GET /api/rooms/{room}/history`, which the
//! back end answers (the cluster's view, with Redis). JSON in and out; errors are
//! `{"error": "..."}`. Every call needs `Authorization: Bearer <key>`,
//! compared in constant time; a wrong or missing key is a 401, counted and
//! limited per address as failed logins are. With `--metrics-listen` the API
//! is served there only. This file checks and decodes a call; what it does
//! to rooms and connections is the world's (`Action`).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{Awaiting, Outcome, Request, Response, Role, Site, Status, Visit};
use crate::broker::inspect::{ApiRead, ApiView, HistoryPage, RoomCount, RoomInfo};
use crate::broker::{OtpStore, StoreAnswer, StoreQuery};
use crate::chat::check_room_name;
use crate::config::parse_ban_length;
use crate::logging::Escaped;

/// A key shorter than this is refused at start.
const MIN_KEY: usize = 32;
/// Longest `from` a posted message may name, in bytes.
const MAX_FROM: usize = 64;
/// Most messages one history call may ask for.
const MAX_LIMIT: usize = 10_000;

/// The API's bearer token.
pub struct ApiKey(Vec<u8>);

impl ApiKey {
    /// Reads the key from `path`: its text, a trailing newline ignored.
    pub fn read(path: &Path) -> Result<ApiKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("--api-key {}: {err}", path.display()))?;
        let key = text.trim_end_matches(['\n', '\r']);
        if key.len() < MIN_KEY || key.chars().any(char::is_whitespace) {
            return Err(format!(
                "--api-key {}: the key must be at least {MIN_KEY} characters with no spaces \
                 (make one with `openssl rand -hex 32`)",
                path.display()
            ));
        }
        Ok(ApiKey(key.as_bytes().to_vec()))
    }

    /// Whether `presented` is the key, in time that does not depend on
    /// where they differ.
    fn matches(&self, presented: &[u8]) -> bool {
        let differ = (self.0.iter())
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        differ == 0 && presented.len() == self.0.len()
    }
}

/// What an accepted call does beyond its answer (the world acts on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A `new_message` in `room` from `from`, like any member's.
    Post {
        room: String,
        message: String,
        from: String,
    },
    /// Close every WebSocket of `user`, everywhere, and end its sessions.
    Disconnect { user: String },
    /// As `Disconnect`, and refuse the user until `until` (Unix seconds).
    Ban { user: String, until: u64 },
    Unban { user: String },
}

#[derive(Deserialize)]
struct PostBody {
    message: String,
    #[serde(default)]
    from: Option<String>,
}

#[derive(Deserialize)]
struct BanBody {
    #[serde(rename = "for")]
    length: String,
}

fn error(status: Status, why: &str) -> Response {
    let body = serde_json::json!({ "error": why }).to_string();
    Response::new(status).body("application/json", body.into_bytes())
}

fn ok(status: Status, answer: serde_json::Value) -> Response {
    Response::new(status).body("application/json", answer.to_string().into_bytes())
}

impl Site {
    /// A request under `/api/`.
    pub(super) fn api(&mut self, request: &Request, visit: &mut Visit) -> Outcome {
        let peer = visit.peer;
        let served_here = match visit.role {
            Role::Public => !self.metrics_elsewhere,
            Role::Metrics => true,
        };
        let Some(key) = self.api_key.as_ref().filter(|_| served_here) else {
            return Outcome::Respond(error(Status::NotFound, "not found"));
        };
        if let Some(seconds) = self.limiter.retry_after(peer.ip(), visit.now) {
            visit.metrics.api_refused += 1;
            return Outcome::Respond(
                error(Status::TooManyRequests, "too many refused calls")
                    .header("Retry-After", seconds.to_string()),
            );
        }
        let presented = request.header("authorization").and_then(|h| h.strip_prefix("Bearer "));
        if !presented.is_some_and(|token| key.matches(token.as_bytes())) {
            log::info!("{peer}: api {} {}: refused: wrong or missing key", request.method, Escaped(request.path()));
            visit.metrics.api_refused += 1;
            let response = error(Status::Unauthorized, "a valid Authorization: Bearer key is needed");
            return match self.limiter.record_failure(peer.ip(), visit.now) {
                None => Outcome::Respond(response),
                Some(delay) => Outcome::RespondAfter {
                    response,
                    at: visit.now + delay,
                },
            };
        }
        visit.metrics.api_calls += 1;
        let outcome = self.api_call(request, visit);
        match &outcome {
            Outcome::Act { response, .. } | Outcome::Respond(response) => {
                let status = response.status.code();
                log::info!("{peer}: api {} {} -> {status}", request.method, Escaped(request.path()));
            }
            _ => {} // logged with the back end's answer (`looked`)
        }
        outcome
    }

    /// The back end answered a look: the call's answer, and its log line.
    pub(super) fn looked(
        call: String,
        room: Option<String>,
        answer: StoreAnswer,
        visit: &Visit,
    ) -> Outcome {
        let response = match answer {
            StoreAnswer::Api(view) => {
                let mut json = view_json(view);
                if let Some(room) = room {
                    json["room"] = room.into();
                }
                ok(Status::Ok, json)
            }
            answer => {
                log::warn!("{}: api {call}: the back end answered {answer:?}", visit.peer);
                error(Status::ServiceUnavailable, "redis unavailable: try again")
                    .header("Retry-After", "1")
            }
        };
        log::info!("{}: api {call} -> {}", visit.peer, response.status.code());
        Outcome::Respond(response)
    }

    /// An authorized call: what it asks, checked.
    fn api_call(&mut self, request: &Request, visit: &Visit) -> Outcome {
        let path = request.path().trim_start_matches("/api/");
        let parts: Vec<&str> = path.split('/').collect();
        let method = request.method.as_str();
        let name = |part: &str| super::request::percent_decode(part);
        if let Some(look) = look(method, &parts, request) {
            let call = format!("{method} {}", Escaped(request.path()));
            return match look {
                Ok(read) => {
                    let room = match &read {
                        ApiRead::Rooms => None,
                        ApiRead::Room { room } | ApiRead::History { room, .. } => Some(room.clone()),
                    };
                    let then = Awaiting::Api { call, room };
                    Outcome::Ask { query: StoreQuery::Api(read), then }
                }
                Err(response) => Outcome::Respond(response),
            };
        }
        let result = match (method, parts.as_slice()) {
            ("POST", ["rooms", room, "messages"]) => match name(room) {
                Some(room) => post(room, &request.body, self.api_max_message),
                None => Err(error(Status::BadRequest, "the room name is not valid percent-encoding")),
            },
            (_, ["rooms", _, "messages"]) => Err(error(Status::MethodNotAllowed, "use POST")),
            ("POST", ["users", user, "disconnect"]) => {
                self.user(name(user)).map(|user| (Action::Disconnect { user: user.clone() }, json_user(&user)))
            }
            ("POST", ["users", user, "ban"]) => self.user(name(user)).and_then(|user| {
                let until = ban_until(&request.body, visit)?;
                Ok((Action::Ban { user: user.clone(), until }, ok(Status::Ok, serde_json::json!({ "user": user, "until": until }))))
            }),
            ("DELETE", ["users", user, "ban"]) => {
                self.user(name(user)).map(|user| (Action::Unban { user: user.clone() }, json_user(&user)))
            }
            (_, ["users", _, "disconnect" | "ban"]) => {
                Err(error(Status::MethodNotAllowed, "use POST (or DELETE for a ban)"))
            }
            _ => Err(error(Status::NotFound, "no such call")),
        };
        let needs_store = matches!(result, Ok((Action::Ban { .. } | Action::Unban { .. }, _)));
        match result {
            Ok(_) if needs_store && visit.store == (OtpStore::Shared { up: false }) => {
                Outcome::Respond(error(Status::ServiceUnavailable, "redis unavailable: the ban cannot be kept").header("Retry-After", "1"))
            }
            Ok((action, response)) => Outcome::Act { action, response },
            Err(response) => Outcome::Respond(response),
        }
    }

    /// A user the call may name: one with an account.
    fn user(&self, name: Option<String>) -> Result<String, Response> {
        match name {
            Some(user) if self.accounts.contains(&user) => Ok(user),
            Some(_) => Err(error(Status::NotFound, "no such user")),
            None => Err(error(Status::BadRequest, "the user name is not valid percent-encoding")),
        }
    }
}

/// A look at rooms (`/api/rooms...` with GET), checked; `None` for any
/// other call.
fn look(method: &str, parts: &[&str], request: &Request) -> Option<Result<ApiRead, Response>> {
    let room = |part: &str| {
        let room = super::request::percent_decode(part)
            .ok_or_else(|| error(Status::BadRequest, "the room name is not valid percent-encoding"))?;
        check_room_name(&room).map_err(|why| error(Status::BadRequest, &why))?;
        Ok(room)
    };
    let read = match (method, parts) {
        ("GET", ["rooms"]) => Ok(ApiRead::Rooms),
        ("GET", ["rooms", name]) => room(name).map(|room| ApiRead::Room { room }),
        ("GET", ["rooms", name, "history"]) => room(name).and_then(|room| {
            let (since, limit) = history_query(request)?;
            Ok(ApiRead::History { room, since, limit })
        }),
        (_, ["rooms"] | ["rooms", _] | ["rooms", _, "history"]) => {
            Err(error(Status::MethodNotAllowed, "use GET"))
        }
        _ => return None,
    };
    Some(read)
}

/// A history call's `since=ID` and `limit=N`, the only parameters it takes.
fn history_query(request: &Request) -> Result<(Option<String>, Option<usize>), Response> {
    let (mut since, mut limit) = (None, None);
    let query = request.target.split_once('?').map_or("", |(_, query)| query);
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = super::request::decode_query_value(value);
        match (key, value) {
            ("since", Some(id)) if !id.is_empty() && id.len() <= 128 => since = Some(id),
            ("since", _) => return Err(error(Status::BadRequest, "since must be a message id")),
            ("limit", Some(n)) => match n.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = Some(n),
                _ => {
                    let why = format!("limit must be a number from 1 to {MAX_LIMIT}");
                    return Err(error(Status::BadRequest, &why));
                }
            },
            _ => return Err(error(Status::BadRequest, "history takes only since and limit")),
        }
    }
    Ok((since, limit))
}

/// What the back end saw, as the call's JSON answer.
fn view_json(view: ApiView) -> serde_json::Value {
    use serde_json::json;
    match view {
        ApiView::Rooms(rooms) => {
            let rooms: Vec<_> = (rooms.into_iter())
                .map(|RoomCount { room, users, connections }| {
                    json!({ "room": room, "users": users, "connections": connections })
                })
                .collect();
            json!({ "rooms": rooms })
        }
        ApiView::Room(RoomInfo { users, last_id, kept }) => {
            let count = users.len();
            let users: Vec<_> = (users.into_iter())
                .map(|(name, connections)| json!({ "name": name, "connections": connections }))
                .collect();
            json!({ "users": users, "count": count, "last_id": last_id, "kept": kept })
        }
        ApiView::History(HistoryPage { gap, messages }) => {
            // Each kept event's payload, as a member receives it.
            let messages: Vec<_> = (messages.iter())
                .filter_map(|event| serde_json::from_slice::<serde_json::Value>(event).ok())
                .map(|mut event| event["payload"].take())
                .collect();
            let gap = gap.map(|oldest| json!({ "oldest": oldest }));
            json!({ "messages": messages, "gap": gap })
        }
    }
}

fn json_user(user: &str) -> Response {
    ok(Status::Ok, serde_json::json!({ "user": user }))
}

/// A message to post in `room`, checked as a member's would be.
fn post(room: String, body: &[u8], max_message: usize) -> Result<(Action, Response), Response> {
    check_room_name(&room).map_err(|why| error(Status::BadRequest, &why))?;
    let body: PostBody = serde_json::from_slice(body).map_err(|_| {
        error(Status::BadRequest, "expected {\"message\": \"text\", \"from\": \"name\" (optional)}")
    })?;
    if body.message.trim().is_empty() {
        return Err(error(Status::BadRequest, "message is empty"));
    }
    if body.message.len() > max_message {
        return Err(error(Status::BadRequest, &format!("message is over {max_message} bytes")));
    }
    let from = body.from.unwrap_or_else(|| "server".to_string());
    if from.trim().is_empty() || from.len() > MAX_FROM {
        return Err(error(Status::BadRequest, &format!("from must be 1 to {MAX_FROM} bytes, not blank")));
    }
    let answer = ok(Status::Accepted, serde_json::json!({ "room": room }));
    Ok((Action::Post { room, message: body.message, from }, answer))
}

/// When a ban asked for with `{"for": "1h"}` ends (Unix seconds).
fn ban_until(body: &[u8], visit: &Visit) -> Result<u64, Response> {
    let body: BanBody = serde_json::from_slice(body)
        .map_err(|_| error(Status::BadRequest, "expected {\"for\": \"1h\"} (s, m, h or d)"))?;
    let length = parse_ban_length(&body.length)
        .map_err(|why| error(Status::BadRequest, &format!("for: {why}")))?;
    let now = visit.wall.duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    Ok((now + length).as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_compared_whole() {
        let key = ApiKey(b"0123456789abcdef0123456789abcdef".to_vec());
        assert!(key.matches(b"0123456789abcdef0123456789abcdef"));
        assert!(!key.matches(b"0123456789abcdef0123456789abcdeF"));
        assert!(!key.matches(b"0123456789abcdef0123456789abcde"));
        assert!(!key.matches(b"0123456789abcdef0123456789abcdef0"));
        assert!(!key.matches(b""));
    }
}

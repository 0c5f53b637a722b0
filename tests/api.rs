//! Issue 26, the server API, from outside: `--api-key FILE` turns on
//! `/api/...` for operators and back ends (post into a room, disconnect a
//! user, ban one), with `Authorization: Bearer <key>`; without the flag
//! `/api/` does not exist.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::delivery::{FAST, process};
use support::{
    RedisServer, TempFile, TestServer, Ws, cheap_users_file, connect_ws, expect_close, next_event,
    send_event, session_cookie, session_otp, unique_prefix,
};

const KEY: &str = "0123456789abcdef0123456789abcdef-test-key";

fn key_file(tag: &str, key: &str) -> TempFile {
    let path = std::env::temp_dir().join(format!(
        "chat-api-key-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, format!("{key}\n")).expect("write key file");
    TempFile { path }
}

fn accounts(tag: &str) -> TempFile {
    cheap_users_file(tag, &[("ann", "pw"), ("bob", "pw")])
}

/// A call with the right key (or `key`, when given).
fn call(server: &TestServer, method: &str, path: &str, body: Value) -> (u16, Value) {
    call_with(server, method, path, &format!("Bearer {KEY}"), body)
}

fn call_with(
    server: &TestServer,
    method: &str,
    path: &str,
    authorization: &str,
    body: Value,
) -> (u16, Value) {
    let body = match body {
        Value::Null => Vec::new(),
        body => body.to_string().into_bytes(),
    };
    let headers = [
        ("Authorization", authorization),
        ("Content-Type", "application/json"),
    ];
    let response = server.request(method, path, &headers, &body);
    let json = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    (response.status, json)
}

fn tab(server: &TestServer, user: &str, room: &str) -> Ws {
    let otp = server.login(user, "pw");
    let url = format!("ws://{}/ws?otp={otp}&room={room}", server.addr);
    let request = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    connect_ws(server.addr, request).expect("upgrade")
}

fn login_status(server: &TestServer, user: &str) -> u16 {
    let body = format!(r#"{{"username":"{user}","password":"pw"}}"#);
    server
        .request("POST", "/login", &[], body.as_bytes())
        .status
}

fn server_with_api(tag: &str, extra: &[&str]) -> (TestServer, TempFile, TempFile) {
    let key = key_file(tag, KEY);
    let users = accounts(tag);
    let mut args = vec!["--api-key", key.path_str(), "--users", users.path_str()];
    args.extend_from_slice(extra);
    (TestServer::start_with(&args), key, users)
}

#[test]
fn without_a_key_there_is_no_api() {
    let server = TestServer::start();
    let (status, _) = call(
        &server,
        "POST",
        "/api/rooms/general/messages",
        json!({"message": "hi"}),
    );
    assert_eq!(status, 404);
}

#[test]
fn a_short_key_is_refused_at_start() {
    let key = key_file("short", "too-short");
    let output = std::process::Command::new(support::SERVER_BIN)
        .args(["--listen", "127.0.0.1:0", "--api-key", key.path_str()])
        .output()
        .expect("run the server");
    assert_eq!(output.status.code(), Some(1), "a start that fails");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at least 32"), "{stderr}");
}

#[test]
fn a_missing_or_wrong_key_is_401_and_counted() {
    let (server, _key, _users) = server_with_api("auth", &[]);
    let path = "/api/rooms/general/messages";
    let body = json!({"message": "hi"});
    let (status, answer) = call_with(&server, "POST", path, "", body.clone());
    assert_eq!(status, 401);
    assert!(answer["error"].is_string(), "{answer}");
    let wrong = format!("Bearer {KEY}x");
    assert_eq!(
        call_with(&server, "POST", path, &wrong, body.clone()).0,
        401
    );
    assert_eq!(
        call_with(&server, "POST", path, KEY, body).0,
        401,
        "no Bearer"
    );
    let metrics = server.request("GET", "/metrics", &[], b"").text();
    assert_eq!(
        support::sample(&metrics, "chat_api_refused_total"),
        Some(3.0)
    );
    assert!(!server.logs().contains(KEY), "the key is never logged");
}

#[test]
fn too_many_wrong_keys_from_one_address_are_429() {
    let (server, _key, _users) = server_with_api("limit", &[]);
    let statuses: Vec<u16> = (0..12)
        .map(|_| call_with(&server, "GET", "/api/rooms", "Bearer nope", Value::Null).0)
        .collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 401).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
}

#[test]
fn with_a_metrics_listener_the_api_is_there_only() {
    let (server, _key, _users) = server_with_api("listener", &["--metrics-listen", "127.0.0.1:0"]);
    let (status, _) = call(
        &server,
        "POST",
        "/api/rooms/general/messages",
        json!({"message": "x"}),
    );
    assert_eq!(status, 404, "not on the public listener");
    let metrics = server.metrics_addr().expect("metrics listener");
    let body = json!({"message": "from the side door"}).to_string();
    let authorization = format!("Bearer {KEY}");
    let response = support::request_at(
        metrics,
        "POST",
        "/api/rooms/general/messages",
        &[("Authorization", &authorization)],
        body.as_bytes(),
    );
    assert_eq!(response.status, 202, "{}", response.text());
}

#[test]
fn a_posted_message_reaches_the_room_like_any_other() {
    let (server, _key, _users) = server_with_api("post", &[]);
    let mut ann = tab(&server, "ann", "news");
    send_event(&mut ann, "send_message", json!({"message": "before"}));
    assert_eq!(next_event(&mut ann)["payload"]["message"], "before");
    let path = "/api/rooms/news/messages";
    let (status, answer) = call(&server, "POST", path, json!({"message": "build 42 passed"}));
    assert_eq!(status, 202, "{answer}");
    let (status, _) = call(
        &server,
        "POST",
        path,
        json!({"message": "shipped", "from": "deploy-bot"}),
    );
    assert_eq!(status, 202);
    let first = next_event(&mut ann);
    assert_eq!(first["type"], "new_message");
    assert_eq!(first["payload"]["message"], "build 42 passed");
    assert_eq!(first["payload"]["from"], "server");
    let second = next_event(&mut ann)["payload"].clone();
    assert_eq!(second["from"], "deploy-bot");
    assert!(
        second["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{second}"
    );
}

#[test]
fn bad_posts_are_refused_with_a_reason() {
    let (server, _key, _users) = server_with_api("bad-post", &[]);
    let long_room = format!("/api/rooms/{}/messages", "r".repeat(65));
    let cases = [
        (long_room.as_str(), json!({"message": "x"}), 400),
        ("/api/rooms/news/messages", json!({"text": "x"}), 400),
        ("/api/rooms/news/messages", json!({"message": " "}), 400),
        (
            "/api/rooms/news/messages",
            json!({"message": "m".repeat(600)}),
            400,
        ),
        (
            "/api/rooms/news/messages",
            json!({"message": "x", "from": "f".repeat(100)}),
            400,
        ),
        ("/api/rooms/news/nope", json!({"message": "x"}), 404),
    ];
    for (path, body, expected) in cases {
        let (status, answer) = call(&server, "POST", path, body);
        assert_eq!(status, expected, "{path}: {answer}");
        assert!(answer["error"].is_string(), "{path}: {answer}");
    }
    let big = vec![b'x'; 70_000];
    let authorization = format!("Bearer {KEY}");
    let response = server.request(
        "POST",
        "/api/rooms/news/messages",
        &[("Authorization", &authorization)],
        &big,
    );
    assert_eq!(response.status, 413);
}

#[test]
fn a_disconnect_closes_every_socket_of_the_user_and_ends_its_sessions() {
    let (server, _key, _users) = server_with_api("disconnect", &[]);
    let login = br#"{"username":"ann","password":"pw"}"#;
    let cookie = session_cookie(&server.request("POST", "/login", &[], login));
    let mut tabs = [tab(&server, "ann", "general"), tab(&server, "ann", "other")];
    let mut bob = tab(&server, "bob", "general");
    let (status, answer) = call(&server, "POST", "/api/users/ann/disconnect", Value::Null);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["user"], "ann", "{answer}");
    for ws in &mut tabs {
        assert_eq!(expect_close(ws), 1008);
    }
    assert_eq!(
        session_otp(&server, &cookie).status,
        401,
        "its session ended"
    );
    send_event(&mut bob, "send_message", json!({"message": "still here"}));
    assert_eq!(next_event(&mut bob)["payload"]["message"], "still here");
    let (status, _) = call(&server, "POST", "/api/users/nobody/disconnect", Value::Null);
    assert_eq!(status, 404);
}

#[test]
fn a_banned_user_is_closed_refused_until_unbanned_and_it_outlives_a_restart() {
    let key = key_file("ban", KEY);
    let users = accounts("ban");
    let args = ["--api-key", key.path_str(), "--users", users.path_str()];
    let mut server = TestServer::start_with(&args);
    let login = br#"{"username":"ann","password":"pw"}"#;
    let cookie = session_cookie(&server.request("POST", "/login", &[], login));
    let mut ann = tab(&server, "ann", "general");
    let otp = server.login("ann", "pw");
    for bad in [json!({"for": "soon"}), json!({"for": "0s"}), json!({})] {
        let (status, _) = call(&server, "POST", "/api/users/ann/ban", bad.clone());
        assert_eq!(status, 400, "{bad}");
    }
    let (status, answer) = call(&server, "POST", "/api/users/ann/ban", json!({"for": "1h"}));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(expect_close(&mut ann), 1008);
    assert_eq!(login_status(&server, "ann"), 403);
    assert_eq!(session_otp(&server, &cookie).status, 403);
    assert_eq!(
        server.connect_with_otp(&otp).err(),
        Some(403),
        "an OTP from before"
    );
    assert_eq!(login_status(&server, "bob"), 200);

    server.kill();
    let server = TestServer::start_with(&args);
    assert_eq!(
        login_status(&server, "ann"),
        403,
        "still banned after a restart"
    );
    let (status, _) = call(&server, "DELETE", "/api/users/ann/ban", Value::Null);
    assert_eq!(status, 200);
    assert_eq!(login_status(&server, "ann"), 200);
    let _ = std::fs::remove_file(format!("{}.bans", key.path_str()));
}

#[test]
fn a_ban_expires_by_itself() {
    let (server, key, _users) = server_with_api("expiry", &[]);
    let (status, _) = call(&server, "POST", "/api/users/ann/ban", json!({"for": "1s"}));
    assert_eq!(status, 200);
    assert_eq!(login_status(&server, "ann"), 403);
    support::delivery::wait_for("the ban to end", Duration::from_secs(5), || {
        login_status(&server, "ann") == 200
    });
    let _ = std::fs::remove_file(format!("{}.bans", key.path_str()));
}

/// Sends `texts` from `ws` in its room and returns their ids, each message
/// seen come back first.
fn say(ws: &mut Ws, texts: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for text in texts {
        send_event(ws, "send_message", json!({ "message": text }));
        let event = next_event(ws);
        assert_eq!(event["payload"]["message"], *text, "{event}");
        ids.push(event["payload"]["id"].as_str().expect("an id").to_string());
    }
    ids
}

/// The messages of a history answer, by text.
fn texts(answer: &Value) -> Vec<String> {
    let messages = answer["messages"].as_array().expect("messages");
    messages
        .iter()
        .map(|m| m["message"].as_str().expect("a message's text").to_string())
        .collect()
}

/// `GET /api/rooms`, `/api/rooms/{room}` and its history on `server`,
/// where ann has two tabs in `news` (and said one, two, three there, ids
/// `ids`) and bob one tab in `general`.
fn check_looks(server: &TestServer, ids: &[String]) {
    let (status, answer) = call(server, "GET", "/api/rooms", Value::Null);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["rooms"],
        json!([
            {"room": "general", "users": 1, "connections": 1},
            {"room": "news", "users": 1, "connections": 2},
        ]),
        "{answer}"
    );

    let (status, answer) = call(server, "GET", "/api/rooms/news", Value::Null);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["room"], "news");
    assert_eq!(answer["users"], json!([{"name": "ann", "connections": 2}]));
    assert_eq!(answer["count"], 1);
    assert_eq!(answer["last_id"], ids[2].as_str(), "{answer}");
    assert_eq!(answer["kept"], 3, "{answer}");

    let history = |query: &str| {
        let (status, answer) = call(
            server,
            "GET",
            &format!("/api/rooms/news/history{query}"),
            Value::Null,
        );
        assert_eq!(status, 200, "{query}: {answer}");
        answer
    };
    let all = history("");
    assert_eq!(texts(&all), ["one", "two", "three"], "{all}");
    assert_eq!(all["messages"][0]["from"], "ann", "{all}");
    assert_eq!(all["messages"][2]["id"], ids[2].as_str(), "{all}");
    assert_eq!(all["gap"], Value::Null, "{all}");
    let after_first = history(&format!("?since={}", ids[0]));
    assert_eq!(texts(&after_first), ["two", "three"], "{after_first}");
    assert_eq!(texts(&history("?limit=2")), ["two", "three"]);
    let page = history(&format!("?since={}&limit=1", ids[0]));
    assert_eq!(texts(&page), ["two"], "the first after since: {page}");
    let unknown = history("?since=nope-7");
    assert_eq!(texts(&unknown), ["one", "two", "three"], "{unknown}");
    assert_eq!(
        unknown["gap"],
        json!({"oldest": ids[0].as_str()}),
        "{unknown}"
    );
}

#[test]
fn rooms_members_and_history_can_be_looked_at() {
    let (server, _key, _users) = server_with_api("looks", &[]);
    let mut ann = tab(&server, "ann", "news");
    let _ann_again = tab(&server, "ann", "news");
    let _bob = tab(&server, "bob", "general");
    let ids = say(&mut ann, &["one", "two", "three"]);
    check_looks(&server, &ids);

    let (status, answer) = call(&server, "GET", "/api/rooms/quiet", Value::Null);
    assert_eq!(status, 200, "a room nobody is in: {answer}");
    assert_eq!(answer["users"], json!([]));
    assert_eq!(answer["last_id"], Value::Null);
    assert_eq!(answer["kept"], 0);
    let long_room = format!("/api/rooms/{}", "r".repeat(65));
    let bad = [
        (long_room.as_str(), 400),
        ("/api/rooms/news/history?limit=0", 400),
        ("/api/rooms/news/history?limit=many", 400),
        ("/api/rooms/news/history?since=", 400),
        ("/api/rooms/news/history?colour=red", 400),
    ];
    for (path, expected) in bad {
        let (status, answer) = call(&server, "GET", path, Value::Null);
        assert_eq!(status, expected, "{path}: {answer}");
        assert!(answer["error"].is_string(), "{path}: {answer}");
    }
    assert_eq!(
        call(&server, "POST", "/api/rooms", Value::Null).0,
        405,
        "rooms are only looked at"
    );
    assert_eq!(
        call_with(&server, "GET", "/api/rooms", "Bearer nope", Value::Null).0,
        401
    );
}

// --- across processes (`--redis`) -------------------------------------------

#[test]
fn every_call_works_across_processes() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let key = key_file("redis", KEY);
    let users = accounts("redis");
    let prefix = unique_prefix("api");
    let mut extra = vec!["--api-key", key.path_str(), "--users", users.path_str()];
    extra.extend_from_slice(&FAST);
    let a = process(&redis.url(), &prefix, &extra);
    let b = process(&redis.url(), &prefix, &extra);
    let mut bob = tab(&b, "bob", "news");
    send_event(&mut bob, "send_message", json!({"message": "chat first"}));
    assert_eq!(next_event(&mut bob)["payload"]["message"], "chat first");
    let (status, _) = call(
        &a,
        "POST",
        "/api/rooms/news/messages",
        json!({"message": "notice"}),
    );
    assert_eq!(status, 202);
    let notice = next_event(&mut bob)["payload"].clone();
    assert_eq!(notice["message"], "notice");

    let mut ann_on_b = tab(&b, "ann", "general");
    let (status, _) = call(&a, "POST", "/api/users/ann/disconnect", Value::Null);
    assert_eq!(status, 200);
    assert_eq!(expect_close(&mut ann_on_b), 1008);

    let mut ann_on_b = tab(&b, "ann", "general");
    let (status, _) = call(&a, "POST", "/api/users/ann/ban", json!({"for": "10m"}));
    assert_eq!(status, 200);
    assert_eq!(expect_close(&mut ann_on_b), 1008);
    support::delivery::wait_for("b to hear of the ban", Duration::from_secs(5), || {
        login_status(&b, "ann") == 403
    });
    // A process started later learns the ban from Redis.
    let c = process(&redis.url(), &prefix, &extra);
    assert_eq!(login_status(&c, "ann"), 403);
    let (status, _) = call(&c, "DELETE", "/api/users/ann/ban", Value::Null);
    assert_eq!(status, 200);
    support::delivery::wait_for("a to hear of the unban", Duration::from_secs(5), || {
        login_status(&a, "ann") == 200
    });
}

/// Runs `script` on `redis` (EVAL, no keys) and waits for its answer.
fn redis_eval(redis: &RedisServer, script: &str) {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", redis.port)).expect("redis");
    let command = format!(
        "*3\r\n$4\r\nEVAL\r\n${}\r\n{script}\r\n$1\r\n0\r\n",
        script.len()
    );
    stream.write_all(command.as_bytes()).expect("send EVAL");
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .expect("EVAL's reply");
    assert_eq!(reply, ":1\r\n", "EVAL {script}");
}

#[test]
fn looks_see_the_whole_cluster() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let key = key_file("redis-looks", KEY);
    let users = accounts("redis-looks");
    let prefix = unique_prefix("api-looks");
    let mut extra = vec!["--api-key", key.path_str(), "--users", users.path_str()];
    extra.extend_from_slice(&FAST);
    // Keys enough that the walk through the rooms takes several SCAN steps.
    redis_eval(
        &redis,
        "for i = 1, 5000 do redis.call('SET', 'filler:' .. i, 'x') end return 1",
    );
    let a = process(&redis.url(), &prefix, &extra);
    let b = process(&redis.url(), &prefix, &extra);
    let mut ann = tab(&a, "ann", "news");
    let _ann_on_b = tab(&b, "ann", "news");
    let _bob = tab(&b, "bob", "general");
    let ids = say(&mut ann, &["one", "two", "three"]);
    // Each process records its users in Redis at its turn's end.
    support::delivery::wait_for("both processes' users", Duration::from_secs(5), || {
        let (_, answer) = call(&a, "GET", "/api/rooms", Value::Null);
        answer["rooms"]
            .as_array()
            .is_some_and(|rooms| rooms.len() == 2)
            && answer["rooms"][1]["connections"] == 2
    });
    check_looks(&a, &ids);
    check_looks(&b, &ids);

    // Without Redis there is no cluster to look at: 503, and a reason.
    let mut redis = redis;
    redis.stop();
    support::delivery::wait_for("a 503 without Redis", Duration::from_secs(5), || {
        call(&a, "GET", "/api/rooms", Value::Null).0 == 503
    });
    let (status, answer) = call(&a, "GET", "/api/rooms/news/history", Value::Null);
    assert_eq!(status, 503, "{answer}");
    assert!(answer["error"].is_string(), "{answer}");
}

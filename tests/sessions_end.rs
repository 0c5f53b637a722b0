//! Issue 23, "Sessions end when they should": a logout that outlives a
//! restart, a password change that ends the user's old sessions, and no
//! login from a foreign Origin. All from outside: the real binary, real HTTP.
//!
//! Each failed on the code it was written against (200 where 401 or 403
//! is due).

mod support;

use std::time::Duration;

use support::{
    RedisServer, TestServer, cheap_hash, cheap_users_file, key_file, session_cookie, session_otp,
    unique_prefix, wait_for_health,
};

const LOGIN: &[u8] = br#"{"username":"percy","password":"123"}"#;

#[test]
fn a_logout_outlives_a_restart_with_the_same_key() {
    let key = key_file("logout");
    let mut first = TestServer::start_with(&["--session-key", key.path_str()]);
    let cookie = session_cookie(&first.request("POST", "/login", &[], LOGIN));
    assert_eq!(session_otp(&first, &cookie).status, 200);
    let logout = first.request("POST", "/logout", &[("Cookie", &cookie)], b"");
    assert_eq!(logout.status, 200);
    assert_eq!(session_otp(&first, &cookie).status, 401, "logged out");
    first.kill();
    let second = TestServer::start_with(&["--session-key", key.path_str()]);
    assert_eq!(
        session_otp(&second, &cookie).status,
        401,
        "still logged out after a restart"
    );
    let _ = std::fs::remove_file(format!("{}.revoked", key.path_str()));
}

#[test]
fn a_changed_password_ends_the_old_sessions_on_sighup() {
    let users = cheap_users_file("pwchange", &[("ann", "old"), ("bob", "pw2")]);
    let server = TestServer::start_with(&["--users", users.path_str()]);
    let login = |user: &str, password: &str| {
        let body = format!(r#"{{"username":"{user}","password":"{password}"}}"#);
        session_cookie(&server.request("POST", "/login", &[], body.as_bytes()))
    };
    let (ann, bob) = (login("ann", "old"), login("bob", "pw2"));
    assert_eq!(session_otp(&server, &ann).status, 200);
    // ann's password changes in the file; the server re-reads it on SIGHUP.
    let kept = std::fs::read_to_string(users.path_str()).expect("users file");
    let changed: String = kept
        .lines()
        .map(|l| {
            if l.starts_with("ann:") {
                format!("ann:{}\n", cheap_hash("new"))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(users.path_str(), changed).expect("write users file");
    server.signal("HUP");
    server.wait_for_log("accounts re-read", Duration::from_secs(5));
    let old_password = server.request(
        "POST",
        "/login",
        &[],
        br#"{"username":"ann","password":"old"}"#,
    );
    assert_eq!(old_password.status, 401, "the old password is refused");
    assert_eq!(
        session_otp(&server, &ann).status,
        401,
        "the old session ends with the old password"
    );
    assert_eq!(session_otp(&server, &bob).status, 200, "bob is untouched");
}

/// Finding 4: `/login` had no Origin check, so a cross-site form posting
/// `text/plain` JSON got 200 and a session cookie (login CSRF: the victim's
/// browser logged in as the attacker). A foreign Origin is now refused as on
/// `/session/otp` and `/logout`; a request without one (not a browser) and
/// the server's own origin are served.
#[test]
fn a_login_from_a_foreign_origin_is_refused_and_sets_no_cookie() {
    let server = TestServer::start();
    let foreign = server.request(
        "POST",
        "/login",
        &[
            ("Origin", "http://evil.example"),
            ("Content-Type", "text/plain"),
        ],
        LOGIN,
    );
    assert_eq!(
        foreign.status,
        403,
        "a cross-site login: {}",
        foreign.text()
    );
    assert!(
        foreign.header("set-cookie").is_none(),
        "no session for a foreign origin"
    );
    let own = format!("http://{}", server.addr);
    let same_site = server.request("POST", "/login", &[("Origin", &own)], LOGIN);
    assert_eq!(same_site.status, 200, "the page's own origin");
    let no_origin = server.request("POST", "/login", &[], LOGIN);
    assert_eq!(no_origin.status, 200, "a client that sends no Origin");
}

/// Finding 3: a logout that cannot reach the shared store answered 503 "try
/// again" with `Max-Age=0`, so the browser lost the cookie it needed to try
/// again while every other process kept honouring the session; and a retry
/// on the same process answered 200 without asking the store, since that
/// process had already ended the session for itself. Now a failed logout
/// keeps the cookie (no `Set-Cookie`), says when to retry, and the retry
/// reaches the store: the other process refuses the session afterwards.
#[test]
fn a_logout_that_cannot_reach_redis_keeps_the_cookie_for_a_retry() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let key = key_file("failed-logout");
    let prefix = unique_prefix("logout");
    let args = [
        "--redis",
        &redis.url(),
        "--redis-prefix",
        &prefix,
        "--session-key",
        key.path_str(),
    ];
    let (a, b) = (TestServer::start_with(&args), TestServer::start_with(&args));
    wait_for_health(&a, 200);
    wait_for_health(&b, 200);
    let cookie = session_cookie(&a.request("POST", "/login", &[], LOGIN));
    assert_eq!(
        session_otp(&b, &cookie).status,
        200,
        "one session, both processes"
    );

    redis.stop();
    wait_for_health(&a, 503);
    let failed = a.request("POST", "/logout", &[("Cookie", &cookie)], b"");
    assert_eq!(failed.status, 503, "{}", failed.text());
    assert!(failed.header("retry-after").is_some(), "says when to retry");
    assert_eq!(
        failed.header("set-cookie"),
        None,
        "the cookie stays, so the browser can retry"
    );

    let _redis = RedisServer::start_on(redis.port);
    wait_for_health(&a, 200);
    wait_for_health(&b, 200);
    let retried = a.request("POST", "/logout", &[("Cookie", &cookie)], b"");
    assert_eq!(retried.status, 200, "{}", retried.text());
    let cleared = retried.header("set-cookie").unwrap_or_default();
    assert!(
        cleared.contains("Max-Age=0"),
        "cleared once done: {cleared}"
    );
    assert_eq!(
        session_otp(&b, &cookie).status,
        401,
        "the retry ended the session for the other process too"
    );
}

/// `chat-server revoke USER --session-key FILE` ends every session of that
/// user issued until then, on a server already running with that key (it
/// reads the line at its next session check: no signal, no restart), and
/// nobody else's. A password login afterwards makes a session that works.
#[test]
fn the_revoke_command_ends_every_session_of_one_user() {
    let users = cheap_users_file("revoke", &[("ann", "pw1"), ("bob", "pw2")]);
    let key = key_file("revoke");
    let server =
        TestServer::start_with(&["--users", users.path_str(), "--session-key", key.path_str()]);
    let login = |user: &str, password: &str| {
        let body = format!(r#"{{"username":"{user}","password":"{password}"}}"#);
        session_cookie(&server.request("POST", "/login", &[], body.as_bytes()))
    };
    let (ann_laptop, ann_phone, bob) = (
        login("ann", "pw1"),
        login("ann", "pw1"),
        login("bob", "pw2"),
    );
    assert_eq!(session_otp(&server, &ann_laptop).status, 200);

    let revoked = std::process::Command::new(support::server_bin())
        .args(["revoke", "ann", "--session-key", key.path_str()])
        .output()
        .expect("run chat-server revoke");
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    assert_eq!(
        session_otp(&server, &ann_laptop).status,
        401,
        "ann's laptop"
    );
    assert_eq!(session_otp(&server, &ann_phone).status, 401, "ann's phone");
    assert_eq!(session_otp(&server, &bob).status, 200, "bob is untouched");

    // A revocation covers whole seconds (a token knows its issue time to
    // the second), so a login in the same second would be ended too.
    let second = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let revoked_at = second(std::time::SystemTime::now());
    while second(std::time::SystemTime::now()) == revoked_at {
        std::thread::sleep(Duration::from_millis(10));
    }
    let fresh = login("ann", "pw1");
    assert_eq!(
        session_otp(&server, &fresh).status,
        200,
        "a new login works"
    );
    let _ = std::fs::remove_file(format!("{}.revoked", key.path_str()));
}

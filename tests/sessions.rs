//! Sessions: a login's cookie, OTPs for it without a password, logout, and
//! what survives a restart or a change of the accounts file.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use support::{TestServer, cheap_users_file, key_file, session_cookie, session_otp};

const LOGIN: &[u8] = br#"{"username":"percy","password":"123"}"#;

#[test]
fn a_login_sets_a_session_cookie_with_its_flags() {
    let server = TestServer::start_with(&["--session-ttl", "2h"]);
    let login = server.request("POST", "/login", &[], LOGIN);
    assert_eq!(login.status, 200);
    let set = login.header("set-cookie").expect("Set-Cookie");
    assert!(set.starts_with("chat_session="), "{set}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=7200"] {
        assert!(set.split("; ").any(|f| f == flag), "{flag} missing: {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: no Secure flag");
    let wrong = server.request(
        "POST",
        "/login",
        &[],
        br#"{"username":"percy","password":"x"}"#,
    );
    assert_eq!(
        wrong.header("set-cookie"),
        None,
        "no session for a failed login"
    );
}

#[test]
fn session_otps_for_valid_expired_forged_revoked_and_missing_tokens() {
    let server = TestServer::start_with(&["--session-ttl", "3s"]);
    let cookie = session_cookie(&server.request("POST", "/login", &[], LOGIN));

    // Valid: an OTP with no password, and it opens exactly one WebSocket.
    let answer = session_otp(&server, &cookie);
    assert_eq!(answer.status, 200);
    let otp = serde_json::from_slice::<serde_json::Value>(&answer.body).unwrap()["otp"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(server.connect_with_otp(&otp).is_ok());
    assert_eq!(server.connect_with_otp(&otp).err(), Some(401), "single use");

    // Missing, or forged (one hex digit of the signature changed).
    assert_eq!(server.request("POST", "/session/otp", &[], b"").status, 401);
    let mut forged = cookie.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(session_otp(&server, &forged).status, 401);
    let other_user = cookie.replacen("chat_session=", "chat_session=00", 1);
    assert_eq!(session_otp(&server, &other_user).status, 401);

    // From a page on another origin: refused like the upgrade.
    let cross = server.request(
        "POST",
        "/session/otp",
        &[("Cookie", &cookie), ("Origin", "https://evil.example")],
        b"",
    );
    assert_eq!(cross.status, 403);
    assert_eq!(
        server
            .request("GET", "/session/otp", &[("Cookie", &cookie)], b"")
            .status,
        405
    );

    // Revoked by logout, and the cookie cleared.
    let second = session_cookie(&server.request("POST", "/login", &[], LOGIN));
    let logout = server.request("POST", "/logout", &[("Cookie", &second)], b"");
    assert_eq!(logout.status, 200);
    assert!(
        logout
            .header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=0"))
    );
    assert_eq!(session_otp(&server, &second).status, 401, "revoked");
    assert_eq!(
        session_otp(&server, &cookie).status,
        200,
        "the other session lives"
    );

    // Expired: the first session's 3 s run out.
    let start = Instant::now();
    loop {
        // 200 until it expires (or 429 once its OTP budget is spent), then 401.
        match session_otp(&server, &cookie).status {
            401 => break,
            200 | 429 => {}
            other => panic!("unexpected {other}"),
        }
        assert!(start.elapsed() < Duration::from_secs(6), "never expired");
        thread::sleep(Duration::from_millis(200));
    }
    // The answer can reach us before the harness has read the log line.
    server.wait_for_log("session refused: Expired", Duration::from_secs(5));
    server.wait_for_log("session refused: BadSignature", Duration::from_secs(5));
}

#[test]
fn a_session_survives_a_restart_with_the_same_key_and_not_without() {
    let key = key_file("restart");
    let mut first = TestServer::start_with(&["--session-key", key.path_str()]);
    let cookie = session_cookie(&first.request("POST", "/login", &[], LOGIN));
    first.kill();
    let second = TestServer::start_with(&["--session-key", key.path_str()]);
    assert_eq!(
        session_otp(&second, &cookie).status,
        200,
        "same key: still logged in"
    );
    let third = TestServer::start();
    assert_eq!(
        session_otp(&third, &cookie).status,
        401,
        "another key: a new login"
    );
    third.wait_for_log("no --session-key file", Duration::from_secs(5));
}

#[test]
fn a_user_removed_from_the_accounts_file_loses_their_sessions_on_sighup() {
    let users = cheap_users_file("hup", &[("ann", "pw1"), ("bob", "pw2")]);
    let server = TestServer::start_with(&["--users", users.path_str()]);
    let login = |user: &str, password: &str| {
        let body = format!(r#"{{"username":"{user}","password":"{password}"}}"#);
        session_cookie(&server.request("POST", "/login", &[], body.as_bytes()))
    };
    let (ann, bob) = (login("ann", "pw1"), login("bob", "pw2"));
    assert_eq!(session_otp(&server, &bob).status, 200);
    // bob leaves the file; the server re-reads it on SIGHUP.
    let kept = std::fs::read_to_string(users.path_str()).unwrap();
    let without_bob: String = kept
        .lines()
        .filter(|l| !l.starts_with("bob:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(users.path_str(), without_bob).unwrap();
    server.signal("HUP");
    server.wait_for_log("accounts re-read", Duration::from_secs(5));
    assert_eq!(session_otp(&server, &bob).status, 401);
    assert_eq!(session_otp(&server, &ann).status, 200);
    // A file that does not parse changes nothing.
    std::fs::write(users.path_str(), "not a users file\n").unwrap();
    server.signal("HUP");
    server.wait_for_log("the accounts stay as they were", Duration::from_secs(5));
    assert_eq!(session_otp(&server, &ann).status, 200);
}

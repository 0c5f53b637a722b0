//! Issue 23, "Sessions end when they should": a logout that outlives a
//! restart, and a password change that ends the user's old sessions. Both
//! from outside: the real binary, real HTTP.
//!
//! Both failed on the code they were written against (200 where 401 is
//! due); the logout one is ignored until its fix lands (run it with
//! `cargo test --test sessions_end -- --ignored`).

mod support;

use std::time::Duration;

use support::{HttpResponse, TempFile, TestServer, cheap_hash, cheap_users_file};

const LOGIN: &[u8] = br#"{"username":"percy","password":"123"}"#;

/// A session key file of 32 random-enough bytes.
fn key_file(tag: &str) -> TempFile {
    let path = std::env::temp_dir().join(format!("session-key-end-{tag}-{}", std::process::id()));
    let key: Vec<u8> = (0..32u8)
        .map(|b| b.wrapping_mul(41).wrapping_add(7))
        .collect();
    std::fs::write(&path, key).expect("write key");
    TempFile { path }
}

/// The cookie a login sets, as `name=value`.
fn session_cookie(login: &HttpResponse) -> String {
    let set = login.header("set-cookie").expect("a Set-Cookie header");
    set.split(';').next().expect("name=value").to_string()
}

fn session_otp(server: &TestServer, cookie: &str) -> HttpResponse {
    server.request("POST", "/session/otp", &[("Cookie", cookie)], b"")
}

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

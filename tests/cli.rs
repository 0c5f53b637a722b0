//! The command line: --help, bad flags, flags from the environment, the demo
//! account and a users file.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{SERVER_BIN, TestServer};

#[test]
fn help_lists_every_flag_with_its_default() {
    let output = Command::new(SERVER_BIN).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--listen",
        "--www",
        "--allowed-origin",
        "--max-message",
        "--ping-interval",
        "--pong-wait",
        "--header-timeout",
        "--idle-timeout",
        "--otp-ttl",
        "--max-queue",
        "--max-connections",
        "--shutdown-grace",
        "--echo-path",
        "--users",
        "--tls-cert",
        "--tls-key",
        "--tls-listen",
        "--log-level",
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} missing"));
        assert!(line.contains("[default:"), "{flag} has no default: {line}");
        assert!(
            line.contains("[env: CHAT_"),
            "{flag} has no variable: {line}"
        );
    }
    assert!(
        help.contains("127.0.0.1:8080")
            && help.contains("[default: 512]")
            && help.contains("[default: 9s]")
    );
}

#[test]
fn bad_flags_exit_2_with_a_reason() {
    for args in [
        &["--nope"][..],
        &["--max-message", "zero"],
        &["--ping-interval", "9"],
        &["--redis-sentinel", "127.0.0.1:26379"],
        &["--redis-master", "chat"],
        &["--redis-sentinel", "user@h:1", "--redis-master", "chat"],
        &["--redis", "redis://h:1", "--redis-ca", "ca.pem"],
    ] {
        let output = Command::new(SERVER_BIN).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).starts_with("chat-server: "),
            "{args:?}"
        );
    }
}

#[test]
fn flags_are_read_from_the_environment_after_the_command_line() {
    let www = concat!(env!("CARGO_MANIFEST_DIR"), "/www");
    let server = TestServer::spawn_with_env(
        &[
            ("CHAT_LISTEN", "127.0.0.1:0"),
            ("CHAT_ALLOWED_ORIGIN", "https://a.test,https://b.test"),
            ("CHAT_WWW", "/nonexistent"),
        ],
        &["--www", www],
    );
    server.wait_for_log(
        "allowed origins: https://a.test, https://b.test",
        Duration::from_secs(5),
    );
    let page = server.request("GET", "/", &[], b"");
    assert_eq!(page.status, 200, "--www beats CHAT_WWW");

    let output = Command::new(SERVER_BIN)
        .args(["--listen", "127.0.0.1:0"])
        .env("CHAT_MAX_MESSAGE", "0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("chat-server: CHAT_MAX_MESSAGE=0: "),
        "the error names the variable: {stderr}"
    );
}

#[test]
fn the_demo_account_exists_only_without_a_users_file() {
    let demo = TestServer::start();
    demo.wait_for_log(
        "demo account percy / 123 is enabled",
        Duration::from_secs(5),
    );
    demo.login("percy", "123");

    let mut hasher = Command::new(SERVER_BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    hasher
        .stdin
        .take()
        .unwrap()
        .write_all(b"hunter2\n")
        .unwrap();
    let hashed = hasher.wait_with_output().unwrap();
    assert!(hashed.status.success());
    let hash = String::from_utf8(hashed.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let path = std::env::temp_dir().join(format!("chat-users-{}.txt", std::process::id()));
    std::fs::write(&path, format!("# team\nalice:{hash}")).unwrap();

    let real = TestServer::start_with(&["--users", path.to_str().unwrap()]);
    assert!(!real.logs().contains("demo account"));
    real.login("alice", "hunter2");
    let percy = real.request(
        "POST",
        "/login",
        &[],
        br#"{"username":"percy","password":"123"}"#,
    );
    assert_eq!(percy.status, 401);

    std::fs::write(&path, format!("alice:{hash}\nbob\n")).unwrap();
    let output = Command::new(SERVER_BIN)
        .args(["--listen", "127.0.0.1:0", "--users", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("line 2"),
        "the error names the line"
    );
    let _ = std::fs::remove_file(&path);
}

//! The chat page (www/index.html) tested in a real browser: each test starts
//! the real server and runs a node script of `tests/browser/` that drives
//! headless Chromium through playwright-core (`common.mjs` there holds what
//! the scripts share). A script asks the harness for what only it can do by
//! printing a line, and waits for the answer on its stdin.
//!
//! `chat_page_works_in_a_real_browser` starts the server with a users file for
//! two accounts, then runs `node tests/browser/e2e.mjs <base_url>
//! alice:wonderland bob:builder`. When the script prints `RESTART_SERVER`,
//! this test kills the server, starts a new one on the same address with the
//! same flags (the same `--session-key` among them) and answers `RESTARTED`,
//! so the script can check that the pages reconnect by themselves, with no
//! password. When it prints `KILL_SERVER`, this test kills the server and
//! answers `KILLED`, so the script can check that the page shows
//! "disconnected".
//!
//! `a_changed_password_sends_the_page_back_to_the_login_form` (issue 23) runs
//! `password_change.mjs`: when it prints `CHANGE_PASSWORD`, this test writes a
//! new hash for alice into the `--users` file (bob's line untouched), sends
//! the server SIGHUP, waits for it to log that it re-read the accounts and
//! answers `PASSWORD_CHANGED`.
//!
//! The presence tests run `presence.mjs` against a server with three
//! accounts: two users on our page, which asks for the room's members, and a
//! third on the tutorial's page, which never asks and must never receive a
//! presence event. `presence_the_member_list_follows_who_comes_and_goes` runs its
//! `members` scenario with the default flags, and
//! `presence_a_big_room_shows_how_many_are_here` its `count` scenario with
//! `--presence-max-users 1`. `presence_and_the_tutorials_page_work_over_https_and_wss`
//! runs `members` again over HTTPS and WSS, on a certificate made for it.
//!
//! The tests take turns: each runs a Chromium of its own, and two at once on
//! a 2-core machine would only slow each other down.
//!
//! Needs `node`, `/usr/bin/chromium` and `tests/browser/node_modules/playwright-core`
//! (`apt-get install -y chromium nodejs npm`, then `npm ci` in tests/browser).
//! Without them each test prints "skipped: ..." and passes, except when
//! CI=true, where it fails.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use support::{SERVER_BIN, TestServer};

const CHROMIUM: &str = "/usr/bin/chromium";
const USERS: [(&str, &str); 2] = [("alice", "wonderland"), ("bob", "builder")];
/// Two users of our page, and one of the tutorial's page.
const PRESENCE_USERS: [(&str, &str); 3] = [
    ("alice", "wonderland"),
    ("bob", "builder"),
    ("carol", "tutorial"),
];
/// Alice's password once the operator changed it.
const NEW_PASSWORD: &str = "through-the-looking-glass";
/// Each script has its own watchdog (150 s at most); this is the backstop.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

/// Held by a browser test while it runs: one Chromium at a time.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// Returns why the browser test cannot run here, if it cannot.
fn missing_prerequisite(browser_dir: &Path) -> Option<String> {
    let node_ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !node_ok {
        return Some("`node` is not installed (apt-get install -y nodejs npm)".into());
    }
    if !Path::new(CHROMIUM).exists() {
        return Some(format!(
            "{CHROMIUM} is missing (apt-get install -y chromium)"
        ));
    }
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        return Some(format!(
            "{}/node_modules/playwright-core is missing (run `npm ci` there)",
            browser_dir.display()
        ));
    }
    None
}

/// The browser's turn and the scripts' directory, or None (after saying
/// "skipped: ...") when the browser test cannot run here; with CI=true that
/// panics instead.
fn browser_turn() -> Option<(MutexGuard<'static, ()>, PathBuf)> {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if let Some(why) = missing_prerequisite(&browser_dir) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("browser test cannot run in CI: {why}");
        }
        // Straight to the stderr handle, not eprintln!, so that the test
        // harness's output capture cannot hide that nothing was tested.
        let _ = writeln!(std::io::stderr(), "skipped: {why}");
        return None;
    }
    // A test that failed while holding the turn leaves it poisoned; the next
    // one may still run.
    let turn = ONE_BROWSER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Some((turn, browser_dir))
}

/// Hashes `password` with the server's own `hash-password` subcommand.
fn hash_password(password: &str) -> String {
    let mut child = Command::new(SERVER_BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chat-server hash-password");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write password");
    let out = child.wait_with_output().expect("hash-password output");
    assert!(
        out.status.success(),
        "hash-password failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = String::from_utf8(out.stdout)
        .expect("UTF-8 hash")
        .trim()
        .to_string();
    assert!(
        hash.starts_with('$'),
        "hash-password printed no PHC string: {hash:?}"
    );
    hash
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("chat-browser-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A users file in `dir` for `users` (name, password), hashed by the server
/// itself.
fn users_file(dir: &TempDir, users: &[(&str, &str)]) -> PathBuf {
    let path = dir.0.join("users");
    let mut text = String::from("# accounts for the browser test\n\n");
    for (name, password) in users {
        text.push_str(&format!("{name}:{}\n", hash_password(password)));
    }
    std::fs::write(&path, text).expect("write users file");
    path
}

/// Runs `node <browser_dir>/<script> <args>` and answers what it asks: each
/// line it prints is passed to `answer`, and what that returns, if anything,
/// is written back to the script's stdin. Err says how the script failed.
fn run_script(
    browser_dir: &Path,
    script: &str,
    args: &[String],
    env: &[(&str, &str)],
    mut answer: impl FnMut(&str) -> Option<&'static str>,
) -> Result<(), String> {
    let mut node = Command::new("node")
        .arg(browser_dir.join(script))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(browser_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start node");
    let mut node_stdin = node.stdin.take().expect("node stdin");
    let node_stdout = node.stdout.take().expect("node stdout");

    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(node_stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match line_rx.recv_timeout(left) {
            Ok(line) => {
                println!("{script}: {line}");
                if let Some(reply) = answer(line.trim()) {
                    writeln!(node_stdin, "{reply}").expect("answer the script");
                    node_stdin.flush().expect("flush");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = node.kill();
                let _ = node.wait();
                return Err(format!("{script} did not finish within {SCRIPT_TIMEOUT:?}"));
            }
        }
    }
    let status = node.wait().expect("wait for node");
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{script} failed ({status}); screenshots in target/"
        ))
    }
}

#[test]
fn chat_page_works_in_a_real_browser() {
    let Some((_turn, browser_dir)) = browser_turn() else {
        return;
    };

    // Users file for the two accounts, hashed by the server itself.
    let tmp = TempDir::new("e2e");
    let users_path = users_file(&tmp, &USERS);

    // A session key, so that sessions outlive the restart.
    let key_path = tmp.0.join("session.key");
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut key))
        .expect("read /dev/urandom");
    std::fs::write(&key_path, key).expect("write session key");

    // Short heartbeats, so that a page whose network is cut is dropped within
    // seconds; a history of 5 messages a room, so that missing 8 is a gap.
    let mut flags = vec![
        "--users",
        users_path.to_str().expect("UTF-8 path"),
        "--session-key",
        key_path.to_str().expect("UTF-8 path"),
        "--ping-interval",
        "1s",
        "--pong-wait",
        "2s",
        "--history",
        "5",
    ];
    let mut server = TestServer::start_with(&flags);
    let base_url = server.base_url();
    // A restart listens where the first server did (a later --listen wins).
    let listen = server.addr.to_string();
    flags.extend(["--listen", &listen]);
    // The logs of the servers stopped along the way, for a failure report.
    let mut earlier_logs = String::new();

    let mut args = vec![base_url.clone()];
    args.extend(USERS.map(|(name, password)| format!("{name}:{password}")));
    let mut server_killed = false;
    let mut server_restarted = false;
    let outcome = run_script(&browser_dir, "e2e.mjs", &args, &[], |line| match line {
        "RESTART_SERVER" => {
            server.kill();
            earlier_logs.push_str(&server.logs());
            earlier_logs.push_str("--- restarted ---\n");
            server = TestServer::start_with(&flags);
            assert_eq!(server.base_url(), base_url, "the restart listens elsewhere");
            server_restarted = true;
            Some("RESTARTED")
        }
        "KILL_SERVER" => {
            server.kill();
            server_killed = true;
            Some("KILLED")
        }
        _ => None,
    });
    if let Err(why) = outcome {
        panic!("{why}; server logs:\n{earlier_logs}{}", server.logs());
    }
    assert!(
        server_restarted,
        "e2e script finished without asking to restart the server"
    );
    assert!(
        server_killed,
        "e2e script finished without asking to kill the server"
    );
}

/// Issue 23: the operator changes a logged-in user's password and reloads
/// the accounts (SIGHUP). The next time the page needs a connection (a reload,
/// a dropped connection), `/session/otp` refuses the old session once (401)
/// and the page shows the login form, asking for the password, and then
/// stays quiet: no retry loop. The new password logs in and the chat goes on;
/// the other user's session is untouched.
#[test]
fn a_changed_password_sends_the_page_back_to_the_login_form() {
    let Some((_turn, browser_dir)) = browser_turn() else {
        return;
    };
    let tmp = TempDir::new("password");
    let users_path = users_file(&tmp, &USERS);
    let server = TestServer::start_with(&["--users", users_path.to_str().expect("UTF-8 path")]);

    let (alice, old_password) = USERS[0];
    let (bob, bob_password) = USERS[1];
    let args = [
        server.base_url(),
        format!("{alice}:{old_password}"),
        NEW_PASSWORD.to_string(),
        format!("{bob}:{bob_password}"),
    ];
    let mut changed = false;
    let outcome = run_script(&browser_dir, "password_change.mjs", &args, &[], |line| {
        if line != "CHANGE_PASSWORD" {
            return None;
        }
        // Alice's line gets a new hash; bob's stays as it was, byte for byte
        // (hashing his password again would change his hash too, with its salt).
        let before = std::fs::read_to_string(&users_path).expect("read users file");
        let prefix = format!("{alice}:");
        let after: String = before
            .lines()
            .map(|line| {
                if line.starts_with(&prefix) {
                    format!("{prefix}{}\n", hash_password(NEW_PASSWORD))
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        assert_ne!(before, after, "no line for {alice} in the users file");
        std::fs::write(&users_path, after).expect("write users file");
        server.signal("HUP");
        server.wait_for_log("accounts re-read", Duration::from_secs(10));
        changed = true;
        Some("PASSWORD_CHANGED")
    });
    if let Err(why) = outcome {
        panic!("{why}; server logs:\n{}", server.logs());
    }
    assert!(
        changed,
        "password_change.mjs finished without asking to change the password"
    );
}

/// Runs `presence.mjs <scenario>` against a server with the three accounts
/// of `PRESENCE_USERS` and `flags`.
fn run_presence(scenario: &str, flags: &[&str]) {
    let Some((_turn, browser_dir)) = browser_turn() else {
        return;
    };
    let tmp = TempDir::new(&format!("presence-{scenario}"));
    let users_path = users_file(&tmp, &PRESENCE_USERS);
    let mut server_flags = vec!["--users", users_path.to_str().expect("UTF-8 path")];
    server_flags.extend(flags);
    let server = TestServer::start_with(&server_flags);
    // With a certificate, `--listen` speaks HTTPS and WSS: Chromium is told
    // to accept it (common.mjs), node (which reads /metrics) to trust it.
    let cert = flags
        .iter()
        .position(|flag| *flag == "--tls-cert")
        .and_then(|at| flags.get(at + 1));
    let (base_url, env) = match cert {
        Some(cert) => (
            format!("https://{}", server.addr),
            vec![("NODE_EXTRA_CA_CERTS", *cert)],
        ),
        None => (server.base_url(), vec![]),
    };

    let mut args = vec![base_url, scenario.to_string()];
    args.extend(PRESENCE_USERS.map(|(name, password)| format!("{name}:{password}")));
    if let Err(why) = run_script(&browser_dir, "presence.mjs", &args, &env, |_| None) {
        panic!("{why}; server logs:\n{}", server.logs());
    }
}

/// Presence: alice and bob each see the other in the member list; a second
/// tab of bob's makes him one member with two connections, closing it leaves
/// him listed, closing his last tab takes him off; the list follows a room
/// change. carol, on the tutorial's page in the same rooms all along,
/// receives only `new_message`.
#[test]
fn presence_the_member_list_follows_who_comes_and_goes() {
    run_presence("members", &[]);
}

/// Issue 28: the same over HTTPS and WSS, where after each handshake the
/// server's own TLS 1.3 record layer (`tls_records`) speaks to Chromium's
/// TLS, for our page and the tutorial's.
#[test]
fn presence_and_the_tutorials_page_work_over_https_and_wss() {
    let dir = support::make_certificate();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let tls_flags = [
        "--tls-cert",
        cert.to_str().expect("UTF-8 path"),
        "--tls-key",
        key.to_str().expect("UTF-8 path"),
    ];
    run_presence("members", &tls_flags);
}

/// Presence in a room past `--presence-max-users`: only "N people here",
/// kept current (`presence_count`, here at most every 200 ms), and the names
/// again once the room is small enough. The tutorial's page, in the big
/// room, receives only `new_message`.
#[test]
fn presence_a_big_room_shows_how_many_are_here() {
    run_presence(
        "count",
        &[
            "--presence-max-users",
            "1",
            "--presence-count-interval",
            "200ms",
        ],
    );
}

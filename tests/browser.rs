//! The chat page (www/index.html) tested in a real browser.
//!
//! Starts the real server with a users file for two accounts, then runs
//! `node tests/browser/e2e.mjs <base_url> alice:wonderland bob:builder`, which
//! drives headless Chromium through playwright-core. When the script prints
//! `RESTART_SERVER`, this test kills the server, starts a new one on the same
//! address with the same flags (the same `--session-key` among them) and
//! answers `RESTARTED`, so the script can check that the pages reconnect by
//! themselves, with no password. When it prints `KILL_SERVER`, this test kills
//! the server and answers `KILLED` on the script's stdin, so the script can
//! check that the page shows "disconnected".
//!
//! Needs `node`, `/usr/bin/chromium` and `tests/browser/node_modules/playwright-core`
//! (`apt-get install -y chromium nodejs npm`, then `npm ci` in tests/browser).
//! Without them the test prints "skipped: ..." and passes, except when CI=true,
//! where it fails.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{SERVER_BIN, TestServer};

const CHROMIUM: &str = "/usr/bin/chromium";
const USERS: [(&str, &str); 2] = [("alice", "wonderland"), ("bob", "builder")];
/// The script has its own 150 s watchdog; this is the backstop.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

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
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("chat-browser-e2e-{}", std::process::id()));
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

#[test]
fn chat_page_works_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    if let Some(why) = missing_prerequisite(&browser_dir) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("browser test cannot run in CI: {why}");
        }
        // Straight to the stderr handle, not eprintln!, so that the test
        // harness's output capture cannot hide that nothing was tested.
        let _ = writeln!(std::io::stderr(), "skipped: {why}");
        return;
    }

    // Users file for the two accounts, hashed by the server itself.
    let tmp = TempDir::new();
    let users_path = tmp.0.join("users");
    let mut users = String::from("# accounts for the browser test\n\n");
    for (name, password) in USERS {
        users.push_str(&format!("{name}:{}\n", hash_password(password)));
    }
    std::fs::write(&users_path, users).expect("write users file");

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

    let mut node = Command::new("node")
        .arg(browser_dir.join("e2e.mjs"))
        .arg(&base_url)
        .args(
            USERS
                .iter()
                .map(|(name, password)| format!("{name}:{password}")),
        )
        .current_dir(&browser_dir)
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
    let mut server_killed = false;
    let mut server_restarted = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match line_rx.recv_timeout(left) {
            Ok(line) => {
                println!("e2e: {line}");
                if line.trim() == "RESTART_SERVER" {
                    server.kill();
                    earlier_logs.push_str(&server.logs());
                    earlier_logs.push_str("--- restarted ---\n");
                    server = TestServer::start_with(&flags);
                    assert_eq!(server.base_url(), base_url, "the restart listens elsewhere");
                    server_restarted = true;
                    writeln!(node_stdin, "RESTARTED").expect("answer RESTART_SERVER");
                    node_stdin.flush().expect("flush");
                }
                if line.trim() == "KILL_SERVER" {
                    server.kill();
                    server_killed = true;
                    writeln!(node_stdin, "KILLED").expect("answer KILL_SERVER");
                    node_stdin.flush().expect("flush");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = node.kill();
                let _ = node.wait();
                panic!(
                    "e2e script did not finish within {SCRIPT_TIMEOUT:?}; server logs:\n{earlier_logs}{}",
                    server.logs()
                );
            }
        }
    }
    let status = node.wait().expect("wait for node");
    assert!(
        status.success(),
        "e2e script failed ({status}); screenshots in target/; server logs:\n{earlier_logs}{}",
        server.logs()
    );
    assert!(
        server_restarted,
        "e2e script finished without asking to restart the server"
    );
    assert!(
        server_killed,
        "e2e script finished without asking to kill the server"
    );
}

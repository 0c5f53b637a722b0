//! Graceful shutdown: SIGTERM and SIGINT close every WebSocket with 1001 and exit 0.

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{TestServer, expect_close};

fn shuts_down_cleanly_on(signal: &str) {
    let mut server = TestServer::start();
    let mut clients: Vec<_> = (0..5).map(|_| server.connect()).collect();
    let mut idle_http = TcpStream::connect(server.addr).unwrap();
    // One answered request proves the server accepted it (a connection still
    // in the listen backlog at exit is reset, not closed); then it idles.
    idle_http
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    std::io::Write::write_all(&mut idle_http, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut first = [0u8; 1];
    assert_eq!(idle_http.read(&mut first).unwrap(), 1, "an answer");
    server.wait_for_log("(6 open)", Duration::from_secs(5));

    let start = Instant::now();
    server.signal(signal);
    for ws in &mut clients {
        assert_eq!(expect_close(ws), 1001);
    }
    let code = server.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0), "exit code after SIG{signal}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    // The idle HTTP connection was closed too, with a FIN (a reset would be
    // ConnectionReset; a FIN that never came, WouldBlock), and nothing
    // accepts any more.
    idle_http
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut rest = Vec::new();
    let ended = idle_http.read_to_end(&mut rest);
    assert!(
        ended.is_ok(),
        "the idle HTTP connection ended with {ended:?} after {} more bytes, not a FIN; logs:\n{}",
        rest.len(),
        server.logs()
    );
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "still accepting after exit"
    );
}

#[test]
fn sigterm_closes_everyone_with_1001_and_exits_0() {
    shuts_down_cleanly_on("TERM");
}

#[test]
fn sigint_does_the_same() {
    shuts_down_cleanly_on("INT");
}

/// Nobody waits for the grace period when every client plays its part: the
/// idle HTTP client gets our FIN at once (it had none until the grace period
/// ran out, issue 22) and closes; the WebSockets answer close 1001 and close.
/// The grace period is long, so an exit well within it shows that nothing
/// waited for it, and a FIN that only came at its end fails the read.
#[test]
fn an_idle_http_client_gets_a_fin_at_once() {
    let mut server = TestServer::start_with(&["--shutdown-grace", "60s"]);
    let mut clients: Vec<_> = (0..2).map(|_| server.connect()).collect();
    let mut idle_http = TcpStream::connect(server.addr).unwrap();
    std::io::Write::write_all(&mut idle_http, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut first = [0u8; 1];
    assert_eq!(idle_http.read(&mut first).unwrap(), 1, "an answer");
    server.wait_for_log("(3 open)", Duration::from_secs(5));

    server.signal("TERM");
    idle_http
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut rest = Vec::new();
    let ended = idle_http.read_to_end(&mut rest);
    assert!(
        ended.is_ok(),
        "the idle HTTP connection ended with {ended:?} after {} more bytes, not a FIN; logs:\n{}",
        rest.len(),
        server.logs()
    );
    drop(idle_http);
    for mut ws in clients.drain(..) {
        assert_eq!(expect_close(&mut ws), 1001);
        // Sends the reply tungstenite queued when it read the close.
        let _ = ws.flush();
    }
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
    let logs = server.logs();
    assert!(
        !logs.contains("grace period over") && !logs.contains("timed out"),
        "someone waited for a deadline; logs:\n{logs}"
    );
}

#[test]
fn clients_that_never_answer_do_not_hold_up_the_exit() {
    let mut server = TestServer::start_with(&["--shutdown-grace", "300ms"]);
    let otp = server.login("percy", "123");
    // A raw upgrade that never reads nor answers the close.
    let mut stuck = TcpStream::connect(server.addr).unwrap();
    std::io::Write::write_all(
        &mut stuck,
        support::upgrade_request(server.addr, &otp, "").as_bytes(),
    )
    .unwrap();
    server.wait_for_log("websocket open", Duration::from_secs(5));
    let start = Instant::now();
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

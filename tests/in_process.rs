//! The server built on a listener the test bound itself and run on a thread
//! of the test process: no child process, no log parsing, and a stop from
//! the outside through its shutdown handle.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use chat_server::config::Config;
use chat_server::listen::Listeners;
use chat_server::server::{Server, ShutdownHandle};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, client::IntoClientRequest};

/// Starts a server on its own thread; returns its address, its stop handle
/// and the thread (whose result is `run`'s).
fn start() -> (
    SocketAddr,
    ShutdownHandle,
    thread::JoinHandle<Result<(), String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let config = Config {
        www: concat!(env!("CARGO_MANIFEST_DIR"), "/www").into(),
        ..Config::default()
    };
    let (handle_tx, handle_rx) = mpsc::channel();
    let thread = thread::spawn(move || {
        let listeners = Listeners::from_bound(vec![(listener, None)]);
        let mut server = Server::with_listeners(config, listeners)?;
        let _ = handle_tx.send(server.shutdown_handle());
        server.run().map_err(|err| err.to_string())
    });
    let handle = handle_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the server starts");
    (addr, handle, thread)
}

fn login(addr: SocketAddr) -> String {
    let body = r#"{"username":"percy","password":"123"}"#;
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).expect("connect");
    std::io::Write::write_all(&mut stream, request.as_bytes()).expect("send");
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut stream, &mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    let json: serde_json::Value =
        serde_json::from_str(reply.split("\r\n\r\n").nth(1).expect("body")).expect("JSON");
    json["otp"].as_str().expect("otp").to_string()
}

#[test]
fn chats_in_process_and_stops_from_its_handle() {
    let (addr, handle, thread) = start();
    let url = format!("ws://{addr}/ws?otp={}", login(addr));
    let stream = TcpStream::connect(addr).expect("connect");
    let (mut ws, response) =
        tungstenite::client(url.into_client_request().expect("url"), stream).expect("upgrade");
    assert_eq!(response.status(), 101);
    ws.send(Message::text(
        r#"{"type":"send_message","payload":{"message":"in process"}}"#,
    ))
    .expect("send");
    let echoed = ws.read().expect("the message comes back");
    let event: serde_json::Value = serde_json::from_str(echoed.to_text().expect("text")).unwrap();
    assert_eq!(event["payload"]["message"], "in process");
    assert_eq!(event["payload"]["from"], "percy");

    handle.shut_down();
    let close = ws.read().expect("a close frame");
    let Message::Close(Some(frame)) = close else {
        panic!("expected a close frame, got {close:?}");
    };
    assert_eq!(frame.code, CloseCode::Away);
    drop(ws);
    let result = thread.join().expect("the server thread does not panic");
    assert_eq!(
        result,
        Ok(()),
        "run returns once every connection is closed"
    );
}

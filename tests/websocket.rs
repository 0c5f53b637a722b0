//! WebSocket upgrade, chat events and close codes against the real server.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;
use support::{TestServer, expect_close, next_event, say, send_event, upgrade_request};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

#[test]
fn upgrade_with_a_fresh_otp_opens_a_websocket() {
    let server = TestServer::start();
    let otp = server.login("percy", "123");
    let mut ws = server.connect_with_otp(&otp).expect("101");
    send_event(&mut ws, "send_message", say("hello"));
    let event = next_event(&mut ws);
    assert_eq!(event["type"], "new_message");
    assert_eq!(event["payload"]["message"], "hello");
    assert!(!server.logs().contains(&otp), "the OTP reached the log");
}

#[test]
fn bad_otps_get_401() {
    let server = TestServer::start_with(&["--otp-ttl", "300ms"]);
    assert_eq!(server.connect_with_otp("").err(), Some(401), "missing");
    assert_eq!(
        server
            .connect_with_otp("00112233445566778899aabbccddeeff")
            .err(),
        Some(401),
        "unknown"
    );

    let used = server.login("percy", "123");
    let _first = server.connect_with_otp(&used).expect("first use");
    assert_eq!(server.connect_with_otp(&used).err(), Some(401), "reused");

    let mut tampered = server.login("percy", "123");
    let last = if tampered.ends_with('0') { "1" } else { "0" };
    tampered.replace_range(31..32, last);
    assert_eq!(
        server.connect_with_otp(&tampered).err(),
        Some(401),
        "one character changed"
    );

    let expired = server.login("percy", "123");
    std::thread::sleep(Duration::from_millis(400)); // let the 300 ms lifetime pass
    assert_eq!(
        server.connect_with_otp(&expired).err(),
        Some(401),
        "expired"
    );

    // Without the query string at all.
    let url = format!("ws://{}/ws", server.addr);
    assert_eq!(
        support::connect_ws(server.addr, url.into_client_request().unwrap()).err(),
        Some(401)
    );
}

#[test]
fn foreign_origins_get_403_and_keep_the_otp() {
    let server = TestServer::start();
    let otp = server.login("percy", "123");
    for origin in [
        "http://evil.example".to_string(),
        "null".to_string(),
        format!("http://localhost:{}.evil.com", server.addr.port()),
        format!("http://localhost:{}@evil", server.addr.port()),
    ] {
        assert_eq!(
            server.connect_with_origin(&otp, &origin).err(),
            Some(403),
            "{origin}"
        );
    }
    // The server's own origin is fine, and the refused attempts did not burn the OTP.
    let own = format!("http://localhost:{}", server.addr.port());
    assert!(server.connect_with_origin(&otp, &own).is_ok());
}

#[test]
fn allowed_origin_flag_replaces_the_defaults() {
    let server = TestServer::start_with(&["--allowed-origin", "https://chat.example"]);
    let try_origin = |origin: &str| {
        let otp = server.login("percy", "123");
        server.connect_with_origin(&otp, origin).map(|_| ()).err()
    };
    assert_eq!(try_origin("https://chat.example"), None);
    assert_eq!(
        try_origin(&format!("http://localhost:{}", server.addr.port())),
        Some(403)
    );
}

#[test]
fn malformed_upgrades_get_400() {
    let server = TestServer::start();
    for broken in [
        ("Upgrade: websocket\r\n", ""),
        (
            "Sec-WebSocket-Version: 13\r\n",
            "Sec-WebSocket-Version: 7\r\n",
        ),
        ("dGhlIHNhbXBsZSBub25jZQ==", "not-a-key"),
        ("Connection: Upgrade\r\n", "Connection: keep-alive\r\n"),
    ] {
        let otp = server.login("percy", "123");
        let request = upgrade_request(server.addr, &otp, "").replace(broken.0, broken.1);
        let reply = server.raw(request.as_bytes());
        assert_eq!(
            support::parse_responses(&reply, false)[0].status,
            400,
            "{broken:?}"
        );
    }
}

#[test]
fn frames_sent_right_behind_the_upgrade_are_not_lost() {
    let server = TestServer::start();
    let otp = server.login("percy", "123");
    let mut bytes = upgrade_request(server.addr, &otp, "").into_bytes();
    for text in ["early one", "early two"] {
        let event = json!({"type": "send_message", "payload": say(text)}).to_string();
        bytes.extend(support::masked_frame(0x1, event.as_bytes()));
    }
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&bytes).unwrap(); // one write: head and frames together
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !(contains(&reply, b"early one") && contains(&reply, b"early two")) {
        let n = stream.read(&mut buf).expect("server answered");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&reply));
        reply.extend_from_slice(&buf[..n]);
    }
    assert!(reply.starts_with(b"HTTP/1.1 101"));
    let one = reply.windows(9).position(|w| w == b"early one").unwrap();
    let two = reply.windows(9).position(|w| w == b"early two").unwrap();
    assert!(one < two, "order kept");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn messages_reach_the_room_with_the_logged_in_sender() {
    let server = TestServer::start();
    let mut alice = server.connect();
    let mut bob = server.connect();
    send_event(
        &mut alice,
        "send_message",
        json!({"message": "hi bob", "from": "not-percy"}),
    );
    for ws in [&mut alice, &mut bob] {
        let event = next_event(ws);
        assert_eq!(event["type"], "new_message");
        assert_eq!(event["payload"]["message"], "hi bob");
        assert_eq!(
            event["payload"]["from"], "percy",
            "sender comes from the login, not the client"
        );
        let sent = event["payload"]["sent"].as_str().unwrap();
        assert!(is_rfc3339_utc(sent), "{sent}");
    }
}

fn is_rfc3339_utc(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && text.ends_with('Z')
        && text[..4].parse::<u32>().is_ok_and(|y| y >= 2024)
}

#[test]
fn rooms_keep_conversations_apart() {
    let server = TestServer::start();
    let mut stayer = server.connect();
    let mut mover = server.connect();
    send_event(&mut mover, "change_room", json!({"name": "rust"}));
    let mut joiner = server.connect();
    send_event(&mut joiner, "change_room", json!({"name": "rust"}));
    // A round trip on each mover makes sure its change_room was processed.
    send_event(&mut joiner, "send_message", say("in rust"));
    assert_eq!(next_event(&mut joiner)["payload"]["message"], "in rust");
    assert_eq!(next_event(&mut mover)["payload"]["message"], "in rust");

    send_event(&mut stayer, "send_message", say("in general"));
    assert_eq!(next_event(&mut stayer)["payload"]["message"], "in general");
    send_event(&mut mover, "send_message", say("after"));
    // The mover's next event is its own rust message: it never saw "in general".
    assert_eq!(next_event(&mut mover)["payload"]["message"], "after");
    assert_eq!(next_event(&mut joiner)["payload"]["message"], "after");
    send_event(&mut stayer, "send_message", say("still general"));
    assert_eq!(
        next_event(&mut stayer)["payload"]["message"],
        "still general"
    );
}

#[test]
fn bad_events_get_an_error_and_the_connection_stays() {
    let server = TestServer::start();
    let mut ws = server.connect();
    for bad in [
        "not json".to_string(),
        json!({"type": "dance", "payload": {}}).to_string(),
        json!({"type": "send_message", "payload": {"text": "no message field"}}).to_string(),
        json!({"type": "send_message"}).to_string(),
        json!({"type": "send_message", "payload": {"message": ""}}).to_string(),
        json!({"type": "change_room", "payload": {"name": "   "}}).to_string(),
        json!({"type": "change_room", "payload": {"name": ""}}).to_string(),
        json!({"type": "change_room", "payload": {"name": "x".repeat(65)}}).to_string(),
    ] {
        ws.send(Message::text(bad.clone())).unwrap();
        let event = next_event(&mut ws);
        assert_eq!(event["type"], "error", "{bad}");
        assert!(
            event["payload"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    send_event(&mut ws, "send_message", say("still here"));
    assert_eq!(next_event(&mut ws)["payload"]["message"], "still here");
}

#[test]
fn oversized_messages_close_with_1009() {
    let server = TestServer::start();
    let mut ws = server.connect();
    let mut bystander = server.connect();
    ws.send(Message::text("x".repeat(513))).unwrap();
    assert_eq!(expect_close(&mut ws), 1009);
    // Exactly at the limit is fine for others.
    let at_limit =
        json!({"type": "send_message", "payload": {"message": "y".repeat(450)}}).to_string();
    assert!(at_limit.len() <= 512);
    bystander.send(Message::text(at_limit)).unwrap();
    assert_eq!(
        next_event(&mut bystander)["payload"]["message"]
            .as_str()
            .unwrap()
            .len(),
        450
    );
}

#[test]
fn max_message_flag_moves_the_limit() {
    let server = TestServer::start_with(&["--max-message", "1024"]);
    let mut ws = server.connect();
    let event =
        json!({"type": "send_message", "payload": {"message": "z".repeat(900)}}).to_string();
    ws.send(Message::text(event)).unwrap();
    assert_eq!(
        next_event(&mut ws)["payload"]["message"]
            .as_str()
            .unwrap()
            .len(),
        900
    );
    ws.send(Message::text("x".repeat(1025))).unwrap();
    assert_eq!(expect_close(&mut ws), 1009);
}

#[test]
fn huge_frame_headers_close_without_allocating() {
    let server = TestServer::start();
    let otp = server.login("percy", "123");
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut bytes = upgrade_request(server.addr, &otp, "").into_bytes();
    // A text frame header claiming 2^63 - 1 bytes.
    bytes.extend_from_slice(&[
        0x81, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4,
    ]);
    stream.write_all(&bytes).unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    // 101, then a close frame (0x88) carrying 1009 (0x03F1).
    let close = reply
        .windows(4)
        .position(|w| w[0] == 0x88 && w[2] == 0x03 && w[3] == 0xF1);
    assert!(
        close.is_some(),
        "no 1009 close in {:?}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(
        server.request("GET", "/", &[], b"").status,
        200,
        "server still serves"
    );
}

#[test]
fn binary_frames_close_with_1003() {
    let server = TestServer::start();
    let mut ws = server.connect();
    ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(expect_close(&mut ws), 1003);
}

#[test]
fn client_close_is_answered_and_the_slot_freed() {
    let server = TestServer::start();
    let mut ws = server.connect();
    let mut other = server.connect();
    ws.close(None).unwrap();
    // The server answers the close; tungstenite reports the finished handshake.
    loop {
        match ws.read() {
            Ok(Message::Close(_)) | Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(err) => panic!("close handshake failed: {err}"),
        }
    }
    server.wait_for_log("closed: client closed (1 open)", Duration::from_secs(5));
    // The remaining member still chats, and the closed one is not delivered to.
    send_event(&mut other, "send_message", say("anyone?"));
    assert_eq!(next_event(&mut other)["payload"]["message"], "anyone?");
}

#[test]
fn vanished_clients_are_cleaned_up() {
    let server = TestServer::start();
    let ws = server.connect();
    let mut other = server.connect();
    drop(ws); // TCP close, no close frame
    server.wait_for_log(
        "vanished without a close frame (1 open)",
        Duration::from_secs(5),
    );
    send_event(&mut other, "send_message", say("still fine"));
    assert_eq!(next_event(&mut other)["payload"]["message"], "still fine");
}

#[test]
fn echo_route_is_off_by_default_and_echoes_when_on() {
    let server = TestServer::start();
    let url = format!("ws://{}/echo", server.addr);
    assert_eq!(
        support::connect_ws(server.addr, url.clone().into_client_request().unwrap()).err(),
        Some(404)
    );

    let server = TestServer::start_with(&["--echo-path", "/echo"]);
    let url = format!("ws://{}/echo", server.addr);
    let mut ws = support::connect_ws(server.addr, url.into_client_request().unwrap())
        .expect("no OTP needed");
    let big = "b".repeat(100_000); // far over the chat limit; the echo route has its own
    for message in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text(big),
    ] {
        ws.send(message.clone()).unwrap();
        assert_eq!(ws.read().unwrap(), message);
    }
}

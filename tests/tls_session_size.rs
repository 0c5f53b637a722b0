//! Issue 28: what one idle TLS connection keeps on the server's heap, by a
//! counting allocator (bytes allocated minus bytes freed on the server's
//! thread). The server side is the real `TlsStream` over a loopback socket;
//! the client, a rustls client on a thread of its own, so its allocations
//! are not counted. After the handshake and a message each way, what the
//! stream holds is its box (`cargo test --lib sizes`), in which the TLS 1.3
//! session now lives; rustls's session is gone and the buffers are empty. `bench/tls.sh` measures RSS, which adds
//! malloc's own overhead and fragmentation to this.
//!
//! `cargo test --test tls_session_size -- --nocapture` prints the figures.
//! What the connection holds is counted as what dropping it frees.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use chat_server::tls_stream::TlsStream;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::{ClientConnection, StreamOwned};

thread_local! {
    /// Bytes this thread allocated and has not freed.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

struct Counting;

fn count(bytes: usize, sign: isize) {
    let bytes = isize::try_from(bytes).unwrap_or(isize::MAX);
    let _ = LIVE.try_with(|live| live.set(live.get() + sign * bytes));
}

// SAFETY: every call is passed to the system allocator as it came; the
// counting beside it touches only a thread-local integer.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let dir = support::make_certificate();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let server = chat_server::tls::load_config(&cert, &key).expect("server config");
    (server, support::tls_client_config(&cert))
}

/// Reads from `stream` until `want` bytes came, driving it as the server's
/// loop does (non-blocking, retried until data comes).
fn read_exactly(stream: &mut TlsStream, want: usize) -> Vec<u8> {
    let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
    let start = Instant::now();
    while got.len() < want {
        assert!(start.elapsed() < Duration::from_secs(10), "read timed out");
        match stream.read(&mut buf) {
            Ok(0) => panic!("the client went away"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(1));
            }
            Err(err) => panic!("server read: {err}"),
        }
    }
    got
}

#[test]
fn an_idle_tls_connection_keeps_only_its_session() {
    let (server_config, client_config) = configs();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let client = thread::spawn(move || {
        let tcp = std::net::TcpStream::connect(addr).expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let conn = ClientConnection::new(client_config, name).expect("client");
        let mut tls = StreamOwned::new(conn, tcp);
        tls.write_all(b"hello from the client")
            .expect("client write");
        let mut reply = [0u8; 21];
        tls.read_exact(&mut reply).expect("client read");
        assert_eq!(&reply, b"hello from the server");
        // Stay connected until the server has counted.
        let mut end = [0u8; 1];
        let _ = tls.read(&mut end);
    });
    let (tcp, _) = listener.accept().expect("accept");
    tcp.set_nonblocking(true).expect("non-blocking");
    // The server's side on a thread of its own, so the count holds only
    // what the connection allocated and freed.
    let server = thread::spawn(move || {
        let session = UnbufferedServerConnection::new(Arc::clone(&server_config));
        let session = session.expect("session");
        let mut stream = Box::new(TlsStream::new(session, mio::net::TcpStream::from_std(tcp)));
        let hello = read_exactly(&mut stream, 21);
        assert_eq!(hello, b"hello from the client");
        let start = Instant::now();
        loop {
            match stream.write(b"hello from the server") {
                Ok(21) => break,
                Ok(n) => panic!("a partial write of {n}"),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    assert!(start.elapsed() < Duration::from_secs(10), "write timed out");
                    thread::sleep(Duration::from_millis(1));
                }
                Err(err) => panic!("server write: {err}"),
            }
        }
        assert!(
            stream.write_records().expect("flush"),
            "records left unsent"
        );
        assert_eq!(
            stream.held_bytes(),
            0,
            "an idle stream holds no buffered bytes"
        );
        stream.send_close_notify();
        assert!(
            stream.write_records().expect("flush"),
            "close_notify left unsent"
        );
        // What the idle connection holds is what dropping it frees (the
        // handshake freed memory that other threads had allocated, so a
        // count from before it would say less).
        let held = live();
        drop(stream);
        let kept = held - live();
        drop(server_config);
        kept
    });
    let kept = server.join().expect("server thread");
    let boxed = std::mem::size_of::<TlsStream>();
    eprintln!("idle TLS connection: {kept} B on the heap, of which the stream's box {boxed} B");
    client.join().expect("client thread");
    assert!(kept > 0, "nothing counted: the allocator is not in use");
    // 320 B with rustls 0.23.46 and ring: the stream's box, which holds the
    // TLS 1.3 session (`tls_records`: two traffic secrets, the keys derived
    // from them and two record numbers) and three empty buffers. Before the
    // switch to `tls_records`, rustls's session kept 3,377 B. More is a
    // regression.
    assert!(
        kept <= 400,
        "an idle TLS connection keeps {kept} B on the heap"
    );
}

//! chat-server as a library. Its embedding API is small: a [`Config`] (built
//! by hand or parsed from flags and the environment), a [`Server`] that runs
//! it on the calling thread, and a [`ShutdownHandle`] to stop it from another.
//! The binary adds logging and the two subcommands ([`hash_password`],
//! [`revoke_user`]). Every other module is private; the `testing` feature
//! makes them public for the integration tests and the fuzz targets, which
//! drive the same code the server runs.
//!
//! Follow one chat message down the layers:
//!
//! | module | owns |
//! | --- | --- |
//! | `server` | the loop: poll, accept, read budget, timers, flush pass, signals, removal |
//! | `world` | what every connection step touches: config, site, hub, back end, metrics |
//! | `listen` | listening sockets, TLS per listener, accept back-off |
//! | `connections` | the table of sockets and cores: reads, vectored writes, timers, write interest |
//! | `transport` | plain TCP or TLS (rustls) behind `Read + Write` |
//! | `tls_stream` | TLS through rustls's unbuffered API, buffers only while they hold bytes |
//! | `tls_records` | TLS 1.3 records after the handshake: keys, sealing, opening, KeyUpdate |
//! | `conn` | one connection's I/O-free core: Http -> WebSocket -> Closing -> Finished |
//! | `http` | requests, responses, routes (files, `/login`, `/healthz`, `/metrics`), the upgrade |
//! | `ws` | a WebSocket's frame session (tungstenite over bytes), heartbeat, frame encoding |
//! | `hub` | chat events, the room table, fan-out, members catching up after a resume |
//! | `broker` | the back end's contract (`Backend`) and the local back end |
//! | `redis` | the Redis back end: rooms, OTPs and sessions shared by every process |
//! | `chat` | the JSON events of the wire protocol |
//! | `history` | each room's recent messages, numbered, for members who resume |
//! | `outbound` | the bounded per-connection queue of shared frames |
//! | `auth` | accounts, one-time passwords, login turns and limits |
//! | `sessions` | signed session tokens: log in once, come back without the password |
//! | `peers` | client addresses for limits (IPv6 per /64), connections per address |
//! | `logging` | client text escaped for the log; one line per interval for what clients repeat |
//! | `timer` | the hashed timer wheel |
//! | `slab` | slots with generations |
//! | `metrics`, `config`, `tls`, `datetime` | counters, settings, certificates, dates |
//!
//! socket -> `connections` reads into a shared buffer -> `conn` (HTTP or
//! frames) -> `Event::Text` -> `world` -> `hub` (decode, back end, room) ->
//! each member's `outbound` queue -> `connections` writes each socket once
//! per loop turn.

pub mod config;

pub use auth::hash_password;
pub use config::Config;
pub use listen::Listeners;
pub use server::{Server, ShutdownHandle};
pub use sessions::revoke_user;

/// Modules the tests and fuzz targets drive directly: public with the
/// `testing` feature, private otherwise, so that the compiler points out
/// what nothing uses.
macro_rules! internal_modules {
    ($($name:ident),* $(,)?) => {$(
        #[cfg(feature = "testing")]
        pub mod $name;
        #[cfg(not(feature = "testing"))]
        mod $name;
    )*};
}

internal_modules!(
    auth,
    broker,
    chat,
    conn,
    connections,
    datetime,
    history,
    http,
    hub,
    listen,
    logging,
    metrics,
    outbound,
    peers,
    redis,
    server,
    sessions,
    slab,
    timer,
    tls,
    tls_records,
    tls_stream,
    transport,
    world,
    ws,
);

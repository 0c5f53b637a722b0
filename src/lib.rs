//! chat-server as a library: the modules behind the binary, public so that
//! tests, fuzz targets and benchmarks drive the same code the server runs.
//!
//! Follow one chat message down the layers:
//!
//! | module | owns |
//! | --- | --- |
//! | `server` | the loop: poll, accept, read budget, timers, flush pass, signals, removal |
//! | `listen` | listening sockets, TLS per listener, accept back-off |
//! | `connections` | the table of sockets and cores: reads, vectored writes, timers, write interest |
//! | `transport` | plain TCP or TLS (rustls) behind `Read + Write` |
//! | `conn` | one connection's I/O-free core: Http -> WebSocket -> Closing -> Finished |
//! | `http` | requests, responses, routes (files, `/login`, `/healthz`, `/metrics`), the upgrade |
//! | `ws` | a WebSocket's frame session (tungstenite over bytes), heartbeat, frame encoding |
//! | `hub` | chat events, the room table, fan-out, the broker that orders messages |
//! | `chat` | the JSON events of the wire protocol |
//! | `history` | each room's recent messages, numbered, for members who resume |
//! | `outbound` | the bounded per-connection queue of shared frames |
//! | `auth` | accounts, one-time passwords, login turns and limits |
//! | `sessions` | signed session tokens: log in once, come back without the password |
//! | `peers` | client addresses for limits (IPv6 per /64), connections per address |
//! | `redis` | scale-out: rooms and OTPs shared through Redis, two links in the loop's poll |
//! | `logging` | client text escaped for the log; one line per interval for what clients repeat |
//! | `timer` | the hashed timer wheel |
//! | `slab` | slots with generations |
//! | `metrics`, `config`, `tls`, `datetime` | counters, settings, certificates, dates |
//!
//! socket -> `connections` reads into a shared buffer -> `conn` (HTTP or
//! frames) -> `Event::Text` -> `hub` (decode, broker, room) -> each member's
//! `outbound` queue -> `connections` writes each socket once per loop turn.

pub mod auth;
pub mod broker;
pub mod chat;
pub mod config;
pub mod conn;
pub mod connections;
pub mod datetime;
pub mod history;
pub mod http;
pub mod hub;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod peers;
pub mod redis;
pub mod server;
pub mod sessions;
pub mod slab;
pub mod timer;
pub mod tls;
pub mod transport;
pub mod world;
pub mod ws;

//! chat-server as a library: the modules behind the binary, public so that
//! fuzz targets and benchmarks can drive the same code the server runs.

pub mod auth;
pub mod chat;
pub mod config;
pub mod conn;
pub mod datetime;
pub mod http;
pub mod metrics;
pub mod outbound;
pub mod server;
pub mod slab;
pub mod timer;
pub mod tls;
pub mod transport;
pub mod ws;

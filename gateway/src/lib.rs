//! The gateway: WebSocket and HTTP termination, auth, limits, fan-out to local sockets.
//!
//! # Layout
//! - `embedded`: wires gateway + worker + SQLite into one node and shuts it down gracefully.
//! - `server`: accept loop, TLS, per-IP limiting.
//! - `http`: REST API, health, metrics, upgrade.
//! - `conn`: one WebSocket connection (reader, writer, ping/pong).
//! - `fanout`: room membership per connection and bounded outbound queues.
//! - `auth`: JWT tokens and guest names.
//! - `limits`: per-IP connection limiter.
//! - `state`: shared handler state.
//! - `telemetry`: Prometheus recorder and tracing setup.

pub mod auth;
mod conn;
pub mod embedded;
pub mod fanout;
mod http;
pub mod limits;
mod server;
pub mod state;
pub mod telemetry;

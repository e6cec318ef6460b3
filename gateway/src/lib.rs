//! The gateway: WebSocket and HTTP termination, auth, limits, fan-out to local sockets.
//!
//! # Layout
//! - `embedded`: wires gateway + worker + SQLite into one node (or a cluster gateway onto the
//!   Redis bus) and shuts it down gracefully.
//! - `cluster`: the gateway side of the Redis bus.
//! - `server`: accept loop, TLS, per-IP limiting.
//! - `http`: REST API, health, metrics, upgrade.
//! - `conn`: one WebSocket connection served by one task (frames in and out, ping/pong).
//! - `frame`: client frame parsing and server frame encoding.
//! - `session`: a connection's commands: rate limits, forwarding to workers.
//! - `fanout`: room membership per connection.
//! - `outbox`: a connection's bounded outbound queue, and direct writes from the fan-out.
//! - `wire`: a plain TCP socket shared by its task and the fan-out.
//! - `auth`: JWT tokens and guest names.
//! - `limits`: per-IP connection limiter.
//! - `state`: shared handler state.
//! - `telemetry`: Prometheus recorder and tracing setup.

pub mod auth;
pub mod cluster;
mod conn;
pub mod deadline;
pub mod embedded;
pub mod fanout;
mod frame;
mod http;
pub mod limits;
pub mod outbox;
pub mod resync;
mod server;
mod session;
pub mod state;
mod wire;
/// Telemetry lives in the worker crate so both binaries share one recorder setup.
pub use lockstep_worker::telemetry;

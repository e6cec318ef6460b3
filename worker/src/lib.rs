//! The worker: owns rooms. A pure room engine wrapped by a thin actor shell that talks to
//! the store and the gateways.
//!
//! # Layout
//! - `engine/`: the room state machine (no I/O, no clock reads).
//! - `room_actor`: one task per room feeding the engine messages and time.
//! - `lookups`: a room's video metadata lookups in flight.
//! - `releaser`: releases a room's acks and events only after their writes commit.
//! - `host`: the room registry, the worker side of the bus.
//! - `store/`: the embedded SQLite store.
//! - `clock`: the wall clock, read only by the shell.
//! - `telemetry`: the Prometheus recorder and tracing setup shared by every binary.
//! - `cluster/`: cluster mode: Redis bus, shard leases, the worker node and its health server.

pub mod cli;
pub mod clock;
pub mod cluster;
pub mod engine;
pub mod host;
pub mod ingest;
mod lookups;
mod releaser;
mod room_actor;
pub mod store;
pub mod telemetry;

pub use host::Host;

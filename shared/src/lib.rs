//! Types and contracts every Lockstep node agrees on: the wire protocol, the config, the
//! bus and store seams, the shard function and metric names. No runtime lives here.
//!
//! # Layout
//! - `protocol/`: wire protocol v1 (DESIGN.md §3): `model` (payload shapes), `client`
//!   (client → server frames and their decoder), `server` (events, acks, errors), `error`
//!   (stable error codes).
//! - `config`: the figment-layered configuration and its validation.
//! - `bus`: envelopes between gateway and worker and the traits both sides implement.
//! - `cluster`: Redis channel and key names, wire envelopes, rendezvous placement.
//! - `store`: the persistence trait and its records.
//! - `shard`: room → shard mapping.
//! - `metrics`: every metric name the nodes export.
//! - `ids`: room codes and user ids.

pub mod bus;
pub mod cluster;
pub mod config;
pub mod ids;
pub mod metrics;
pub mod protocol;
pub mod shard;
pub mod store;

//! Real services for tests: a private `redis-server` and a private PostgreSQL cluster
//! (initdb + postgres) on free loopback ports in a temporary directory, torn down on drop.
//! Or, when `LOCKSTEP_TEST_REDIS_URL` / `LOCKSTEP_TEST_PG_URL` name running servers, those
//! (each Postgres user gets a fresh database). Never mocks.
//!
//! # Layout
//! - `postgres`: [`Postgres`], a private cluster or a fresh database on a configured server.
//! - `redis`: [`Redis`], a private server or a configured URL.
//! - `redis_cluster`: [`RedisCluster`], a private three-node Redis Cluster or configured seeds.
//! - `tls`: [`TestCa`], a throwaway CA and server certificate for the TLS variants.
//! - `relay`: [`Relay`], a TCP relay in front of a service that a test can cut (a network
//!   blip between one node and Redis).
//! - `util`: free ports, waiting for a port, temp dirs.
//! - `fake_twitch`, `fake_youtube`, `fake_proxy`: local upstreams speaking the real wire
//!   formats (IRC over WebSocket, YouTube pages and InnerTube, HTTP CONNECT) for ingestion
//!   tests; nothing leaves loopback.
#![allow(clippy::unwrap_used)]

pub mod fake_proxy;
pub mod fake_twitch;
pub mod fake_youtube;
mod postgres;
mod redis;
mod redis_cluster;
mod relay;
mod tls;
mod util;

pub use postgres::Postgres;
pub use redis::Redis;
pub use redis_cluster::RedisCluster;
pub use relay::Relay;
pub use tls::TestCa;
pub use util::free_port;

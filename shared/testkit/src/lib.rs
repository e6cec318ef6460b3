//! Real services for tests: a private `redis-server` and a private PostgreSQL cluster
//! (initdb + postgres) on free loopback ports in a temporary directory, torn down on drop.
//! Or, when `LOCKSTEP_TEST_REDIS_URL` / `LOCKSTEP_TEST_PG_URL` name running servers, those
//! (each Postgres user gets a fresh database). Never mocks.
//!
//! # Layout
//! - `postgres`: [`Postgres`], a private cluster or a fresh database on a configured server.
//! - `redis`: [`Redis`], a private server or a configured URL.
//! - `util`: free ports, waiting for a port, temp dirs.
#![allow(clippy::unwrap_used)]

mod postgres;
mod redis;
mod util;

pub use postgres::Postgres;
pub use redis::Redis;

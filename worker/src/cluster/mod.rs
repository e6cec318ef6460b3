//! Cluster mode for workers: Redis pub/sub bus (one server or a Redis Cluster), shard leases with fencing epochs, the
//! worker node, and its health endpoint. Gateways reuse `publisher` and `subscriber`.

pub mod bounded;
pub mod clock_offset;
pub mod health;
pub mod leases;
pub mod liveness;
pub mod node;
pub mod publisher;
pub mod pubsub_limit;
pub mod redis_conn;
pub mod sink;
pub mod subscriber;

//! Publishing to Redis without a round trip per message: a bounded queue drained by one
//! task that sends each batch as a single pipeline on an auto-reconnecting connection (on a
//! Redis Cluster: one pipeline per slot, all in flight at once, `SPUBLISH` to each channel's
//! shard; a channel's messages keep their order either way).

use tokio::sync::mpsc;

use lockstep_shared::metrics as names;

use super::redis_conn::{RedisConn, RedisTarget};

/// Messages waiting to be published; beyond it they are dropped and counted (clients
/// recover by retrying ids and rejoining by seq).
pub const QUEUE: usize = 65_536;
/// Most PUBLISH commands in one pipeline.
const PIPELINE: usize = 512;

/// Queues messages for publishing.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<(String, Vec<u8>)>,
}

impl Publisher {
    /// Starts the publishing task on `conn`.
    pub fn spawn(target: RedisTarget, conn: RedisConn) -> Publisher {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(target, conn, rx));
        Publisher { tx }
    }

    /// Queues without waiting; never blocks a room.
    pub fn publish(&self, channel: String, payload: Vec<u8>) {
        if self.tx.try_send((channel, payload)).is_err() {
            metrics::counter!(names::BUS_DROPPED).increment(1);
        }
    }
}

async fn run(target: RedisTarget, mut conn: RedisConn, mut rx: mpsc::Receiver<(String, Vec<u8>)>) {
    let mut batch = Vec::with_capacity(PIPELINE);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < PIPELINE {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let cmds = batch
            .drain(..)
            .map(|(ch, payload)| {
                let cmd = target.publish(&ch, &payload);
                (ch, cmd)
            })
            .collect();
        match conn.query_by_slot::<redis::Value>(cmds).await {
            Ok(_) => metrics::counter!(names::BUS_PUBLISHED).increment(n),
            Err(e) => {
                metrics::counter!(names::BUS_DROPPED).increment(n);
                tracing::warn!(cause = %e, messages = n, "publish failed");
            }
        }
    }
}

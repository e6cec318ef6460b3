//! Publishing to Redis without a round trip per message: a bounded queue drained by one
//! task that sends each batch as a single pipeline on an auto-reconnecting connection. On a
//! Redis Cluster a batch is split by slot (`SPUBLISH` to each channel's shard) and every slot
//! is a lane of its own: one pipeline in flight per slot, the next waiting behind it, so a
//! channel's messages keep their order and a master that is down holds up only its slots.
//!
//! A pipeline that fails on a dropped connection is sent again for up to [`RETRY_FOR`]: what a
//! worker publishes during a blip of its own connection (a reply, an event no later event
//! would show missing, when the gateways' subscriptions stayed up) then arrives late instead of
//! never. Redis may have taken some of it before the connection dropped, so a gateway can get
//! a message twice: it ignores events at or below the seq it delivered, and a client may see
//! one id's ack twice.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Pipeline, RedisResult, RetryMethod, Value};

use lockstep_shared::metrics as names;

use super::bounded;
use super::redis_conn::{RedisConn, RedisTarget};

/// Messages waiting to be published; beyond it they are dropped and counted (clients
/// recover by retrying ids, gateways by resyncing rooms whose events went missing).
pub const QUEUE: usize = 65_536;
/// Payload bytes waiting to be published, the same way: a join's snapshot in a big room is
/// hundreds of KB, so a join storm while Redis is slow would otherwise queue gigabytes. One
/// message always fits an empty queue.
pub const QUEUE_BYTES: usize = 256 << 20;
/// Most PUBLISH commands in one pipeline.
const PIPELINE: usize = 512;
/// Messages waiting behind one slot's pipeline in flight at most (a slot whose master is
/// down); beyond it, or beyond [`SLOT_BACKLOG_BYTES`], that slot's new messages are dropped
/// and counted.
const SLOT_BACKLOG: usize = 8_192;
/// Payload bytes waiting behind one slot's pipeline at most (join snapshots in a big room are
/// hundreds of KB each); Redis itself drops a subscriber 32 MB behind by default.
const SLOT_BACKLOG_BYTES: usize = 32 << 20;

/// How long a failed pipeline is sent again before its messages are dropped: longer than a
/// reconnection after a blip or a Redis restart takes, short enough that a publisher facing a
/// Redis that is down keeps moving (the queue behind it is bounded).
const RETRY_FOR: Duration = Duration::from_secs(3);
/// First pause before sending again; it doubles up to [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE: Duration = Duration::from_millis(50);
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(500);

/// Queues messages for publishing.
#[derive(Clone)]
pub struct Publisher {
    tx: bounded::Sender<(String, Vec<u8>)>,
}

impl Publisher {
    /// Starts the publishing task on `conn`.
    pub fn spawn(target: RedisTarget, conn: RedisConn) -> Publisher {
        let (publisher, queue) = Publisher::new(QUEUE_BYTES);
        match conn {
            RedisConn::Cluster(conn) => tokio::spawn(run_by_slot(target, conn, queue)),
            conn => tokio::spawn(run(target, conn, queue)),
        };
        publisher
    }

    fn new(budget: usize) -> (Publisher, Queue) {
        let (tx, rx) = bounded::channel(QUEUE, budget);
        (Publisher { tx }, Queue { rx })
    }

    /// Queues without waiting; never blocks a room.
    pub fn publish(&self, channel: String, payload: Vec<u8>) {
        let size = payload.len();
        if !self.tx.offer((channel, payload), size) {
            metrics::counter!(names::BUS_DROPPED).increment(1);
        }
    }
}

/// The publishing task's end of the queue.
struct Queue {
    rx: bounded::Receiver<(String, Vec<u8>)>,
}

impl Queue {
    /// The next message and whatever else is queued, up to one pipeline's worth; `None` once
    /// every publisher is gone. Cancel-safe: nothing is taken before the first message is.
    async fn next_batch(&mut self) -> Option<Vec<(String, Vec<u8>)>> {
        let first = self.rx.recv().await?;
        let mut batch = Vec::with_capacity(PIPELINE);
        batch.push(first);
        while batch.len() < PIPELINE {
            match self.rx.try_recv() {
                Some(m) => batch.push(m),
                None => break,
            }
        }
        Some(batch)
    }
}

/// One Redis server: one pipeline per batch, in order.
async fn run(target: RedisTarget, mut conn: RedisConn, mut queue: Queue) {
    while let Some(batch) = queue.next_batch().await {
        let n = batch.len() as u64;
        let mut pipe = redis::pipe();
        for (ch, payload) in batch {
            pipe.add_command(target.publish(&ch, &payload));
        }
        counted(n, send(&pipe, &mut conn).await);
    }
}

/// Sends `pipe`, again after a pause while the failure is one a new connection may not have
/// (see the module docs), for up to [`RETRY_FOR`].
async fn send(pipe: &Pipeline, conn: &mut impl ConnectionLike) -> RedisResult<()> {
    let started = Instant::now();
    let mut pause = RETRY_PAUSE;
    loop {
        match pipe.query_async::<Value>(conn).await {
            Ok(_) => return Ok(()),
            Err(e)
                if matches!(e.retry_method(), RetryMethod::NoRetry)
                    || started.elapsed() + pause > RETRY_FOR =>
            {
                return Err(e)
            }
            Err(e) => {
                tracing::debug!(cause = %e, "publish failed; sending again");
                metrics::counter!(names::BUS_PUBLISH_RETRIES).increment(1);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_PAUSE_MAX);
            }
        }
    }
}

/// A slot's messages not yet sent, and whether a pipeline of its is in flight.
#[derive(Default)]
struct Lane {
    busy: bool,
    waiting: VecDeque<(String, Vec<u8>)>,
    /// Payload bytes in `waiting`.
    bytes: usize,
}

/// A Redis Cluster: one lane per slot (see the module docs). While a slot's pipeline is in
/// flight its messages gather, and go as the next pipeline (up to [`PIPELINE`]) when it returns.
async fn run_by_slot(target: RedisTarget, conn: ClusterConnection, mut queue: Queue) {
    let mut lanes: HashMap<Slot, Lane> = HashMap::new();
    let mut in_flight: FuturesUnordered<BoxFuture<'static, (Slot, u64, RedisResult<()>)>> =
        FuturesUnordered::new();
    // Sends the next pipeline of `slot`'s lane, if it has messages; forgets an idle lane.
    let launch = |lanes: &mut HashMap<Slot, Lane>, slot: Slot| -> Option<BoxFuture<'static, _>> {
        let lane = lanes.get_mut(&slot)?;
        if lane.waiting.is_empty() {
            lanes.remove(&slot);
            return None;
        }
        let take = lane.waiting.len().min(PIPELINE);
        let mut pipe = redis::pipe();
        for (ch, payload) in lane.waiting.drain(..take) {
            lane.bytes -= payload.len();
            pipe.add_command(target.publish(&ch, &payload));
        }
        lane.busy = true;
        let mut conn = conn.clone();
        let n = take as u64;
        Some(Box::pin(async move {
            let r = send(&pipe, &mut conn).await;
            (slot, n, r)
        }))
    };
    let mut closed = false;
    loop {
        tokio::select! {
            batch = queue.next_batch(), if !closed => {
                let Some(batch) = batch else {
                    closed = true;
                    continue;
                };
                let mut touched = Vec::new();
                for (ch, payload) in batch {
                    let slot = Slot::for_key(ch.as_bytes());
                    let lane = lanes.entry(slot).or_default();
                    // One message always fits, however large (frames are bounded upstream).
                    let full = lane.waiting.len() >= SLOT_BACKLOG
                        || lane.bytes + payload.len() > SLOT_BACKLOG_BYTES;
                    if full && !lane.waiting.is_empty() {
                        metrics::counter!(names::BUS_DROPPED).increment(1);
                        continue;
                    }
                    if lane.waiting.is_empty() && !lane.busy {
                        touched.push(slot);
                    }
                    lane.bytes += payload.len();
                    lane.waiting.push_back((ch, payload));
                }
                for slot in touched {
                    in_flight.extend(launch(&mut lanes, slot));
                }
            }
            Some((slot, n, result)) = in_flight.next(), if !in_flight.is_empty() => {
                counted(n, result);
                if let Some(lane) = lanes.get_mut(&slot) {
                    lane.busy = false;
                }
                in_flight.extend(launch(&mut lanes, slot));
            }
            else => return,
        }
    }
}

/// Counts a pipeline's messages as published or dropped.
fn counted(n: u64, result: RedisResult<()>) {
    match result {
        Ok(()) => metrics::counter!(names::BUS_PUBLISHED).increment(n),
        Err(e) => {
            metrics::counter!(names::BUS_DROPPED).increment(n);
            tracing::warn!(cause = %e, messages = n, "publish failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: usize) -> Vec<u8> {
        vec![b'x'; n]
    }

    #[tokio::test]
    async fn the_queue_is_bounded_by_bytes_and_one_message_always_fits() {
        let (publisher, mut queue) = Publisher::new(10_000);
        // Larger than the whole budget, into an empty queue: it goes (a big join snapshot).
        publisher.publish("g".into(), payload(25_000));
        publisher.publish("g".into(), payload(10));
        let batch = queue.next_batch().await.unwrap_or_default();
        assert_eq!(batch.len(), 1, "the second did not fit behind the first");
        assert_eq!(publisher.tx.held(), 0);
        // Three 3 KB messages fit in 10 KB; the fourth is dropped; taking them frees room.
        for _ in 0..4 {
            publisher.publish("g".into(), payload(3_000));
        }
        assert_eq!(queue.next_batch().await.map(|b| b.len()), Some(3));
        publisher.publish("g".into(), payload(3_000));
        assert_eq!(queue.next_batch().await.map(|b| b.len()), Some(1));
        assert_eq!(publisher.tx.held(), 0);
    }
}

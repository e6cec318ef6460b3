//! Cluster mode for gateways: commands go to the owning shard's Redis channel, replies and
//! room events come back on this gateway's channel, queries are answered by request id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use lockstep_shared::bus::{GatewaySink, Query, ToWorker, WorkerLink};
use lockstep_shared::cluster::{
    gateway_channel, shard_channel, ToGatewayWire, ToShard, ALL_GATEWAYS_CHANNEL, GATEWAYS_KEY,
};
use lockstep_shared::config::ClusterConfig;
use lockstep_shared::metrics as names;
use lockstep_shared::protocol::error::Refusal;
use lockstep_shared::protocol::ErrorCode;
use lockstep_shared::shard::shard_of;
use lockstep_worker::cluster::redis_conn::{RedisConn, RedisTarget};
use lockstep_worker::cluster::subscriber;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::fanout::Fanout;

/// How long an HTTP query waits for the owning worker.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Value, Refusal>>>>;

/// The gateway side of the Redis bus.
pub struct RedisLink {
    target: RedisTarget,
    conn: RedisConn,
    shards: u32,
    gateway: u64,
    next_req: AtomicU64,
    pending: Arc<Pending>,
    /// Whether the pub/sub connection is up (for `/readyz`).
    pub connected: Arc<AtomicBool>,
}

impl RedisLink {
    /// Connects, subscribes to this gateway's channels (delivering into `fanout`) and starts
    /// the liveness heartbeat.
    pub async fn start(
        cfg: &ClusterConfig,
        fanout: Arc<Fanout>,
        cancel: CancellationToken,
    ) -> anyhow::Result<RedisLink> {
        let target =
            RedisTarget::from_config(cfg).context("cluster.redis_url / redis_cluster_nodes")?;
        let conn = target
            .connect()
            .await
            .with_context(|| format!("connect to redis ({})", target.describe()))?;
        let gateway = fanout.gateway_id();
        let pending: Arc<Pending> = Arc::new(Mutex::new(HashMap::new()));
        let connected = Arc::new(AtomicBool::new(false));
        let answers = pending.clone();
        let sink = fanout.clone();
        let resetter = fanout.clone();
        subscriber::spawn(
            target.clone(),
            vec![gateway_channel(gateway), ALL_GATEWAYS_CHANNEL.to_owned()],
            move |_, payload| {
                metrics::counter!(names::BUS_RECEIVED).increment(1);
                match serde_json::from_slice::<ToGatewayWire>(&payload) {
                    Ok(ToGatewayWire::Msg(msg)) => sink.deliver(msg),
                    Ok(ToGatewayWire::Answer { req, result }) => {
                        let waiter = answers.lock().ok().and_then(|mut m| m.remove(&req));
                        if let Some(tx) = waiter {
                            let _ = tx.send(result);
                        }
                    }
                    Err(e) => tracing::warn!(cause = %e, "undecodable gateway message"),
                }
            },
            // Replies and events published while we were disconnected are lost: rooms ask
            // their owners for the events again, and a socket whose awaited reply never comes
            // closes (`resync`).
            move || resetter.bus_gap(),
            connected.clone(),
            cancel.clone(),
        );
        // Liveness gets its own connection: behind a backlog of publishes on the shared one
        // (a join storm), late heartbeats would get this gateway's members dropped.
        let beat = target
            .connect()
            .await
            .context("connect to redis (heartbeat)")?;
        tokio::spawn(heartbeat(beat, gateway, cfg.heartbeat_ms, cancel));
        lockstep_worker::cluster::pubsub_limit::check(&target, "gateway").await;
        Ok(RedisLink {
            target,
            conn,
            shards: cfg.shards,
            gateway,
            next_req: AtomicU64::new(1),
            pending,
            connected,
        })
    }

    async fn publish(&self, room: &str, msg: &ToShard) -> Result<(), Refusal> {
        let payload = serde_json::to_vec(msg)
            .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
        let channel = shard_channel(shard_of(room, self.shards));
        let mut conn = self.conn.clone();
        let receivers: i64 = self
            .target
            .publish(&channel, &payload)
            .query_async(&mut conn)
            .await
            .map_err(|e| Refusal::new(ErrorCode::Unavailable, format!("bus unavailable: {e}")))?;
        metrics::counter!(names::BUS_PUBLISHED).increment(1);
        if receivers == 0 {
            return Err(Refusal::new(
                ErrorCode::Unavailable,
                "no worker serves this room right now; retry",
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl WorkerLink for RedisLink {
    async fn send(&self, msg: ToWorker) -> Result<(), Refusal> {
        let room = msg.room().to_owned();
        self.publish(&room, &ToShard::Gateway(msg)).await
    }

    async fn query(&self, room: &str, query: Query) -> Result<Value, Refusal> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.pending.lock() {
            m.insert(req, tx);
        }
        let msg = ToShard::Query {
            req,
            gateway: self.gateway,
            room: room.to_owned(),
            query,
        };
        let forget = || {
            if let Ok(mut m) = self.pending.lock() {
                m.remove(&req);
            }
        };
        if let Err(e) = self.publish(room, &msg).await {
            forget();
            return Err(e);
        }
        match tokio::time::timeout(QUERY_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            _ => {
                forget();
                Err(Refusal::new(
                    ErrorCode::Unavailable,
                    "the room's worker did not answer; retry",
                ))
            }
        }
    }
}

async fn heartbeat(mut conn: RedisConn, gateway: u64, every_ms: u64, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(every_ms));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                let _: Result<i64, _> = redis::cmd("ZREM").arg(GATEWAYS_KEY).arg(gateway).query_async(&mut conn).await;
                return;
            }
            _ = tick.tick() => {}
        }
        // A failure shows in the heartbeat below; the offset keeps its last value.
        let _ = lockstep_worker::cluster::clock_offset::measure(&mut conn).await;
        // Stamped by Redis' clock: workers judge silence by it, whatever this host's says.
        let r: Result<i64, _> = lockstep_worker::cluster::liveness::beat(GATEWAYS_KEY, gateway)
            .query_async(&mut conn)
            .await;
        if let Err(e) = r {
            tracing::warn!(cause = %e, "gateway heartbeat failed");
        }
    }
}

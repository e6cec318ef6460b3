//! A worker node: owns shards by lease, subscribes to their channels, runs their rooms
//! against Postgres, publishes replies and events to gateways, drops the presence of dead
//! gateways, and hands its shards off on shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lockstep_shared::bus::{GatewaySink, ToGateway, ToWorker, WorkerLink};
use lockstep_shared::cluster::{
    gateway_channel, shard_channel, ToGatewayWire, ToShard, GATEWAYS_KEY,
};
use lockstep_shared::config::Config;
use lockstep_shared::metrics as names;
use lockstep_shared::protocol::error_frame;
use lockstep_shared::shard::shard_of;
use lockstep_shared::store::{Store, StoreError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::bounded;
use super::leases::{self, LeaseEvent, Leases};
use super::publisher::Publisher;
use super::redis_conn::{RedisPool, RedisTarget};
use super::sink::RedisSink;
use super::{health, subscriber};
use crate::host::Host;
use crate::ingest::limiter::RedisJoinLimiter;
use crate::ingest::Ingest;
use crate::store::postgres::{PostgresOptions, PostgresStore};

/// Messages from shard channels waiting to be routed to rooms.
const INBOX: usize = 65_536;
/// Bytes of those messages (with `INBOX`, see `bounded`): commands are a few KiB at most
/// (`protocol::bounds`), but 65,536 of them while the rooms are slow would be a gigabyte.
const INBOX_BYTES: usize = 64 << 20;

/// Runs a worker until `shutdown` fires, then hands its shards off.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let cc = cfg.cluster.clone();
    let node = if cc.node_id.is_empty() {
        format!(
            "w-{}",
            lockstep_shared::ids::id_from_random(&rand::random::<[u8; 8]>())
        )
    } else {
        cc.node_id.clone()
    };
    let target =
        RedisTarget::from_config(&cc).context("cluster.redis_url / redis_cluster_nodes")?;
    let conn = target
        .connect()
        .await
        .with_context(|| format!("connect to redis ({})", target.describe()))?;
    let publisher = Publisher::spawn(target.clone(), conn);
    let pool = target.pool()?;
    let store = Arc::new(open_store(&cfg).await?);
    let leases = Arc::new(Leases::new(node.clone(), cc.shards));
    let sink: Arc<dyn GatewaySink> = Arc::new(RedisSink::new(publisher.clone()));
    let rooms_cancel = CancellationToken::new();
    let limiter = Arc::new(RedisJoinLimiter::new(
        pool.clone(),
        &node,
        cfg.ingest.twitch.join_limit,
        cfg.ingest.twitch.join_window_ms,
        None,
    ));
    let ingest = Ingest::new(&cfg.ingest, limiter, CancellationToken::new());
    let host = Host::with_ownership(
        cfg.room.clone(),
        store.clone() as Arc<dyn Store>,
        sink,
        rooms_cancel.clone(),
        leases.clone(),
        Some(ingest),
    );
    let background = CancellationToken::new();

    // Shard channel messages → rooms.
    let (inbox_tx, inbox_rx) = bounded::channel(INBOX, INBOX_BYTES);
    let redis_up = Arc::new(AtomicBool::new(false));
    super::pubsub_limit::check(&target, "worker").await;
    let subs = subscriber::spawn(
        target.clone(),
        Vec::new(),
        move |_, payload| {
            metrics::counter!(names::BUS_RECEIVED).increment(1);
            let size = payload.len();
            if !inbox_tx.offer(payload, size) {
                metrics::counter!(names::BUS_DROPPED).increment(1);
            }
        },
        // Commands published while we were away went to nobody; gateways got `unavailable`.
        || {},
        redis_up.clone(),
        background.clone(),
    );
    tokio::spawn(dispatch(inbox_rx, host.clone(), publisher.clone()));

    // Leases → subscriptions and room unloads. `serving`: shards whose channel is subscribed.
    let serving = Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<u32>::new(),
    ));
    let (ev_tx, mut ev_rx) = mpsc::channel(4_096);
    tokio::spawn(leases::run(
        leases.clone(),
        pool.clone(),
        cc.clone(),
        ev_tx,
        background.clone(),
    ));
    {
        let (host, subs, leases, pool) = (host.clone(), subs.clone(), leases.clone(), pool.clone());
        let serving = serving.clone();
        let shards = cc.shards;
        tokio::spawn(async move {
            while let Some(ev) = ev_rx.recv().await {
                match ev {
                    LeaseEvent::Acquired(shard, epoch) => {
                        tracing::info!(shard, epoch, "shard acquired");
                        // Queued here, so a loss handled after this unsubscribes after it (a
                        // subscription queued from elsewhere could land after the unsubscribe
                        // and outlive the lease, answering the new owner's commands with
                        // refusals). Confirmed at once, or only after Redis is back: that wait
                        // is not in this loop's way.
                        let confirmed = subs.subscribe(shard_channel(shard)).await;
                        let (serving, leases) = (serving.clone(), leases.clone());
                        tokio::spawn(async move {
                            let Some(confirmed) = confirmed else { return };
                            if confirmed.await.is_ok()
                                && leases.owned().iter().any(|(s, _)| *s == shard)
                            {
                                if let Ok(mut s) = serving.lock() {
                                    s.insert(shard);
                                }
                            }
                        });
                    }
                    LeaseEvent::Lost(shard) => {
                        if let Ok(mut s) = serving.lock() {
                            s.remove(&shard);
                        }
                        subs.unsubscribe(shard_channel(shard)).await;
                        drop(host.unload_where(|room| shard_of(room, shards) == shard));
                    }
                    LeaseEvent::Release(shard, epoch) => {
                        tracing::info!(shard, "handing shard off");
                        if let Ok(mut s) = serving.lock() {
                            s.remove(&shard);
                        }
                        subs.unsubscribe(shard_channel(shard)).await;
                        let tasks = host.unload_where(|room| shard_of(room, shards) == shard);
                        let (leases, pool) = (leases.clone(), pool.clone());
                        tokio::spawn(async move {
                            for t in tasks {
                                let _ = t.await;
                            }
                            leases.release(&pool, shard, epoch).await;
                        });
                    }
                }
            }
        });
    }

    // Dead gateways: their members leave presence.
    tokio::spawn(reap_gateways(
        host.clone(),
        pool.clone(),
        cc.gateway_timeout_ms,
        cc.heartbeat_ms,
        background.clone(),
    ));

    // Postgres liveness for /readyz.
    let pg_up = Arc::new(AtomicBool::new(true));
    {
        let (store, pg_up, cancel) = (store.clone(), pg_up.clone(), background.clone());
        let every = Duration::from_millis(cc.heartbeat_ms);
        tokio::spawn(async move {
            loop {
                pg_up.store(store.ping().await.is_ok(), Ordering::SeqCst);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(&cc.worker_listen)
        .await
        .with_context(|| format!("bind {}", cc.worker_listen))?;
    let ready: Arc<dyn Fn() -> Option<String> + Send + Sync> = {
        let (leases, redis_up, pg_up) = (leases.clone(), redis_up.clone(), pg_up.clone());
        let serving = serving.clone();
        Arc::new(move || {
            if !redis_up.load(Ordering::SeqCst) {
                Some("redis unreachable".into())
            } else if !pg_up.load(Ordering::SeqCst) {
                Some("postgres unreachable".into())
            } else if !leases.is_ready() {
                Some("not holding every shard lease it should".into())
            } else if serving.lock().map(|s| s.len()).unwrap_or(0) < leases.owned().len() {
                Some("not yet subscribed to every shard it holds".into())
            } else {
                None
            }
        })
    };
    tracing::info!(node = %node, addr = %listener.local_addr()?, shards = cc.shards, "lockstep worker running");
    tokio::spawn(health::serve(listener, ready, background.clone()));

    shutdown.cancelled().await;
    tracing::info!("worker shutting down: handing shards off");
    let tasks = host.unload_where(|_| true);
    let grace = Duration::from_millis(cfg.gateway.shutdown_grace_ms);
    let _ = tokio::time::timeout(grace, async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
    for (shard, epoch) in leases.owned() {
        leases.release(&pool, shard, epoch).await;
    }
    if let Ok(mut conn) = pool.get().await {
        let _: Result<i64, _> = redis::cmd("ZREM")
            .arg(lockstep_shared::cluster::WORKERS_KEY)
            .arg(&node)
            .query_async(&mut conn)
            .await;
    }
    background.cancel();
    host.shutdown().await;
    Ok(())
}

/// Opens the store, waiting up to 30 s for Postgres to come up.
async fn open_store(cfg: &Config) -> anyhow::Result<PostgresStore> {
    let options = PostgresOptions {
        url: cfg.cluster.postgres_url.clone(),
        pool_size: cfg.cluster.postgres_pool,
        batch_max: cfg.store.batch_max,
        events_keep: cfg.room.history_max,
        ca_file: cfg.cluster.postgres_ca_file.clone(),
        client_identity: cfg
            .cluster
            .postgres_client_cert
            .clone()
            .zip(cfg.cluster.postgres_client_key.clone()),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match PostgresStore::open(options.clone()).await {
            Ok(store) => return Ok(store),
            // Waiting cannot mend a configuration: say so now.
            Err(e @ StoreError::Config(_)) => return Err(e).context("open postgres store"),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(cause = %e, "postgres not ready; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("open postgres store"),
        }
    }
}

/// Routes shard-channel messages to rooms; refusals are answered to the gateway.
async fn dispatch(mut rx: bounded::Receiver<Vec<u8>>, host: Host, publisher: Publisher) {
    while let Some(payload) = rx.recv().await {
        let msg: ToShard = match serde_json::from_slice(&payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(cause = %e, "undecodable shard message");
                continue;
            }
        };
        match msg {
            // A departure may wait for space in a busy room: off the dispatch loop, so one
            // room's join storm never stalls the others.
            ToShard::Gateway(
                msg @ (ToWorker::ConnClosed { .. } | ToWorker::GatewayGone { .. }),
            ) => {
                let host = host.clone();
                tokio::spawn(async move {
                    if let Err(r) = host.send(msg).await {
                        tracing::warn!(cause = %r.message, "departure dropped");
                    }
                });
            }
            ToShard::Gateway(msg) => {
                let reply_to = match &msg {
                    ToWorker::Command(env) => Some((env.caller.conn, env.id.clone())),
                    _ => None,
                };
                if let Err(refusal) = host.send(msg).await {
                    if let Some((conn, id)) = reply_to {
                        let frame = error_frame(id.as_deref(), refusal.code, &refusal.message);
                        let wire = ToGatewayWire::Msg(ToGateway::Reply {
                            conn,
                            id,
                            membership: None,
                            frames: vec![Arc::from(frame)],
                            seq: 0,
                        });
                        if let Ok(p) = serde_json::to_vec(&wire) {
                            publisher.publish(gateway_channel(conn.gateway), p);
                        }
                    }
                }
            }
            ToShard::Query {
                req,
                gateway,
                room,
                query,
            } => {
                let (host, publisher) = (host.clone(), publisher.clone());
                tokio::spawn(async move {
                    let result = host.query(&room, query).await;
                    if let Ok(p) = serde_json::to_vec(&ToGatewayWire::Answer { req, result }) {
                        publisher.publish(gateway_channel(gateway), p);
                    }
                });
            }
        }
    }
}

/// Finds gateways that stopped heartbeating and removes their members from every room here.
async fn reap_gateways(
    host: Host,
    pool: RedisPool,
    timeout_ms: u64,
    every_ms: u64,
    cancel: CancellationToken,
) {
    // Gateways already reaped; their heartbeat entry lingers until it ages out.
    let mut reaped: std::collections::HashSet<u64> = std::collections::HashSet::new();
    // Since when the live set could be read without a break. While it could not be read,
    // gateways could not write their heartbeats either (one key, one Redis node): right after
    // it comes back (a restarted Redis, a replica promoted with the scores of before the
    // outage) every gateway looks stale until its next heartbeat, so nobody is reaped until
    // each has had a timeout's worth of time to write one.
    let mut readable_since: Option<tokio::time::Instant> = None;
    let grace = Duration::from_millis(timeout_ms);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(every_ms)) => {}
        }
        let Ok(mut conn) = pool.get().await else {
            readable_since = None;
            continue;
        };
        // A read that hangs (a dead master) and then succeeds (its replica promoted) is a
        // break too: it is bounded, and giving up counts as a failure. Silence is measured by
        // Redis' clock, as the heartbeats are stamped.
        let cmd = super::liveness::silent(GATEWAYS_KEY, timeout_ms);
        let read = cmd.query_async(&mut conn);
        let dead: Vec<u64> = match tokio::time::timeout(Duration::from_millis(every_ms), read).await
        {
            Ok(Ok(d)) => d,
            _ => {
                readable_since = None;
                conn.discard();
                continue;
            }
        };
        let since = *readable_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() < grace {
            continue;
        }
        reaped.retain(|g| dead.contains(g));
        for gateway in dead {
            if !reaped.insert(gateway) {
                continue;
            }
            tracing::warn!(
                gateway,
                "gateway stopped heartbeating; dropping its members"
            );
            metrics::counter!(names::WORKER_GATEWAYS_REAPED).increment(1);
            for room in host.loaded_rooms() {
                let _ = host.send(ToWorker::GatewayGone { room, gateway }).await;
            }
        }
        // Entries stay until every worker had a chance to reap them, then age out.
        let _: Result<i64, _> = super::liveness::forget(GATEWAYS_KEY, timeout_ms * 6)
            .query_async(&mut conn)
            .await;
    }
}

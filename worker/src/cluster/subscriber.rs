//! A dedicated Redis pub/sub connection that reconnects and resubscribes by itself. Used by
//! workers (shard channels) and gateways (their own channel). On a Redis Cluster the channels
//! are sharded (`SSUBSCRIBE`, each on the node owning its slot), and this task subscribes them
//! again when a node drops or a slot moves.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use lockstep_shared::metrics as names;

use super::redis_conn::{cluster_builder, RedisTarget};

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Subscription changes waiting to be applied.
const COMMANDS: usize = 4_096;
/// Messages from a Redis Cluster waiting for `on_message`. Beyond it they are dropped and
/// handled like a lost connection (`on_reconnect`), as Redis itself does with a subscriber
/// past its output buffer limit on one server.
const PUSHES: usize = 65_536;
/// Redis calls (subscribes, unsubscribes, a resync) the sharded subscriber has in flight at
/// most; further subscription changes wait in their channel.
const MAX_CALLS: usize = 256;
/// First wait before subscribing again after a Redis Cluster node dropped (it is usually back
/// at once; a restarted node needs a moment to rejoin the cluster).
const RESYNC_FIRST: Duration = Duration::from_millis(100);

enum Cmd {
    /// Subscribe; the sender (if any) hears back once Redis confirmed it.
    Subscribe(String, Option<tokio::sync::oneshot::Sender<()>>),
    Unsubscribe(String),
}

/// Asks the subscriber to change its channels.
#[derive(Clone)]
pub struct Subscriptions {
    tx: mpsc::Sender<Cmd>,
}

impl Subscriptions {
    /// Queues a subscription behind every change asked for before it (an unsubscribe asked
    /// for after this returns wins) and returns what hears Redis confirm it, which may be only
    /// after a reconnection; `None` if the subscriber is gone. Waiting for the confirmation is
    /// the caller's choice, apart from the queueing, so changes keep the order they were made.
    pub async fn subscribe(&self, channel: String) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Cmd::Subscribe(channel, Some(tx)))
            .await
            .ok()
            .map(|()| rx)
    }

    /// Queues an unsubscribe behind every change asked for before it.
    pub async fn unsubscribe(&self, channel: String) {
        let _ = self.tx.send(Cmd::Unsubscribe(channel)).await;
    }
}

/// Starts the subscriber task; every message's `(channel, payload)` goes to `on_message`.
/// `connected` reports whether the connection is up (for `/readyz`).
/// `on_reconnect` runs after every reconnection (not the first connection): messages
/// published meanwhile were lost, so the caller must make its clients recover. On a Redis
/// Cluster it runs only when the connection to a node carrying one of the channels was made
/// again (or a slot moved, or messages overflowed): another node dropping lost nothing.
pub fn spawn(
    target: RedisTarget,
    initial: Vec<String>,
    on_message: impl Fn(String, Vec<u8>) + Send + 'static,
    on_reconnect: impl Fn() + Send + 'static,
    connected: Arc<AtomicBool>,
    cancel: CancellationToken,
) -> Subscriptions {
    let (tx, rx) = mpsc::channel(COMMANDS);
    let hooks = Hooks {
        on_message,
        on_reconnect,
        connected,
        cancel,
    };
    match target {
        RedisTarget::Single(client) => tokio::spawn(run(client, initial, hooks, rx)),
        RedisTarget::Cluster { seeds, tls, .. } => {
            let builder = cluster_builder(&seeds, tls.as_deref());
            tokio::spawn(run_sharded(builder, initial, hooks, rx))
        }
    };
    Subscriptions { tx }
}

/// What the subscriber reports to its owner.
struct Hooks<M, R> {
    on_message: M,
    on_reconnect: R,
    connected: Arc<AtomicBool>,
    cancel: CancellationToken,
}

async fn run<M: Fn(String, Vec<u8>), R: Fn()>(
    client: redis::Client,
    initial: Vec<String>,
    hooks: Hooks<M, R>,
    mut cmds: mpsc::Receiver<Cmd>,
) {
    let Hooks {
        on_message,
        on_reconnect,
        connected,
        cancel,
    } = hooks;
    let mut wanted: HashSet<String> = initial.into_iter().collect();
    // Callers waiting for a subscription that failed at first (one per channel asked for
    // meanwhile: shards and gateways bound it).
    let mut waiting: Vec<tokio::sync::oneshot::Sender<()>> = Vec::new();
    let mut backoff = Duration::from_millis(50);
    let mut cmds_closed = false;
    let mut connections = 0u64;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                connected.store(false, Ordering::SeqCst);
                tracing::warn!(cause = %e, "pub/sub connect failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut ok = true;
        for ch in &wanted {
            if let Err(e) = sink.subscribe(ch).await {
                tracing::warn!(cause = %e, "resubscribe failed");
                ok = false;
                break;
            }
        }
        if !ok {
            continue;
        }
        connected.store(true, Ordering::SeqCst);
        backoff = Duration::from_millis(50);
        tracing::info!(channels = wanted.len(), "pub/sub connected");
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
        if connections > 0 {
            metrics::counter!(names::BUS_RESUBSCRIBES, "cause" => "reconnect").increment(1);
            on_reconnect();
        }
        connections += 1;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                cmd = cmds.recv(), if !cmds_closed => {
                    let result = match cmd {
                        // The handle was dropped: the channel set is final, keep receiving.
                        None => {
                            cmds_closed = true;
                            Ok(())
                        }
                        Some(Cmd::Subscribe(ch, done)) => {
                            let r = sink.subscribe(&ch).await;
                            wanted.insert(ch);
                            match (&r, done) {
                                (Ok(()), Some(done)) => {
                                    let _ = done.send(());
                                }
                                // Answered once the reconnection subscribed it.
                                (Err(_), Some(done)) => waiting.push(done),
                                _ => {}
                            }
                            r
                        }
                        Some(Cmd::Unsubscribe(ch)) => {
                            wanted.remove(&ch);
                            sink.unsubscribe(&ch).await
                        }
                    };
                    if let Err(e) = result {
                        tracing::warn!(cause = %e, "pub/sub command failed; reconnecting");
                        break;
                    }
                }
                msg = stream.next() => match msg {
                    Some(msg) => on_message(msg.get_channel_name().to_owned(), msg.get_payload_bytes().to_vec()),
                    None => {
                        // Most often Redis dropped a subscriber that fell behind (its log says
                        // "overcoming of output buffer limits"): see `pubsub_limit`.
                        tracing::warn!("pub/sub connection lost (if Redis logged output buffer limits, raise client-output-buffer-limit pubsub); reconnecting");
                        break;
                    }
                },
            }
        }
        connected.store(false, Ordering::SeqCst);
    }
}

/// The Redis Cluster variant: one cluster connection (RESP3: messages arrive as pushes) that
/// reconnects to each node by itself. Its own resubscription is not relied on (a restarted
/// node may refuse it while it rejoins the cluster): a `Disconnection` push, or Redis
/// unsubscribing a channel whose slot moved, makes this task subscribe every wanted channel
/// again, with backoff until all succeed, and then run `on_reconnect` (messages may have been
/// lost meanwhile).
async fn run_sharded<M: Fn(String, Vec<u8>), R: Fn()>(
    builder: redis::cluster::ClusterClientBuilder,
    initial: Vec<String>,
    hooks: Hooks<M, R>,
    mut cmds: mpsc::Receiver<Cmd>,
) {
    let Hooks {
        on_message,
        on_reconnect,
        connected,
        cancel,
    } = hooks;
    let (push_tx, mut pushes) = mpsc::channel::<redis::PushInfo>(PUSHES);
    let overflowed = Arc::new(AtomicBool::new(false));
    let push_sender = {
        let overflowed = overflowed.clone();
        move |info: redis::PushInfo| -> Result<(), ()> {
            if push_tx.try_send(info).is_err() {
                overflowed.store(true, Ordering::SeqCst);
                metrics::counter!(names::BUS_DROPPED).increment(1);
            }
            Ok(())
        }
    };
    let client = match builder
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(push_sender)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(cause = %e, "redis cluster seed nodes unusable; no subscriptions");
            return;
        }
    };
    let mut wanted: HashSet<String> = initial.into_iter().collect();
    // Callers waiting for a subscription that failed at first (one per channel asked for
    // meanwhile: shards and gateways bound it).
    let mut waiting: Vec<(String, tokio::sync::oneshot::Sender<()>)> = Vec::new();
    let mut cmds_closed = false;
    // Only the first connection is ours to retry: afterwards the cluster client reconnects
    // to each node by itself, and channels are subscribed again below.
    let conn = {
        let mut backoff = Duration::from_millis(50);
        loop {
            match subscribed(&client, &wanted).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(cause = %e, "redis cluster pub/sub connect failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    };
    connected.store(true, Ordering::SeqCst);
    tracing::info!(channels = wanted.len(), "redis cluster pub/sub connected");
    // Which node connection carries each channel: a node that dropped and carried none of
    // ours lost us nothing, so the owner is not told (a gateway would close every socket).
    let mut carriers = carriers_of(&conn, wanted.iter().cloned().collect()).await;
    // Redis calls in flight. None is awaited in this loop: a call to a dead master may hang
    // until the cluster gives up on it, and messages from the live ones must flow meanwhile.
    let mut calls: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
    // When set, some channels may be down (a node dropped, a slot moved, a subscribe
    // failed): every wanted channel is subscribed again then, retried with backoff.
    let mut resync: Option<tokio::time::Instant> = None;
    let mut resyncing = false;
    let mut resync_backoff = RESYNC_FIRST;
    // Why the pending resync was scheduled, for the metric.
    let mut resync_cause = "reconnect";
    loop {
        let resync_at = resync.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            _ = cancel.cancelled() => return,
            cmd = cmds.recv(), if !cmds_closed && calls.len() < MAX_CALLS => {
                match cmd {
                    None => cmds_closed = true,
                    Some(Cmd::Subscribe(ch, done)) => {
                        wanted.insert(ch.clone());
                        calls.push(subscribe_call(&conn, ch, done));
                    }
                    Some(Cmd::Unsubscribe(ch)) => {
                        wanted.remove(&ch);
                        carriers.remove(&ch);
                        calls.push(unsubscribe_call(&conn, ch));
                    }
                }
            }
            _ = tokio::time::sleep_until(resync_at), if resync.is_some() && !resyncing => {
                resync = None;
                resyncing = true;
                let (mut conn, channels) = (conn.clone(), wanted.clone());
                calls.push(Box::pin(async move {
                    let result = subscribe_all(&mut conn, &channels).await;
                    let carriers = match result {
                        Ok(()) => carriers_of(&conn, channels.into_iter().collect()).await,
                        Err(_) => HashMap::new(),
                    };
                    Done::Resynced { result, carriers }
                }));
            }
            Some(done) = calls.next(), if !calls.is_empty() => match done {
                // The calls run concurrently, so a subscribe and an unsubscribe of one channel
                // may reach Redis in either order: whichever finishes last puts the channel
                // back the way `wanted` says now (a change made meanwhile queued its own call).
                Done::Subscribed { ch, result: Ok(()), .. } if !wanted.contains(&ch) => {
                    calls.push(unsubscribe_call(&conn, ch));
                }
                Done::Subscribed { ch, result: Ok(()), carrier, done } => {
                    carriers.insert(ch, carrier);
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
                Done::Subscribed { ch, result: Err(e), done, .. } => {
                    tracing::warn!(cause = %e, "redis cluster subscribe failed; retrying");
                    if resync.is_none() && !resyncing {
                        resync_cause = "reconnect";
                    }
                    waiting.extend(done.map(|done| (ch, done)));
                    resync.get_or_insert_with(|| tokio::time::Instant::now() + resync_backoff);
                }
                Done::Unsubscribed { ch } if wanted.contains(&ch) => {
                    calls.push(subscribe_call(&conn, ch, None));
                }
                Done::Unsubscribed { .. } => {}
                Done::Resynced { result: Ok(()), carriers: now } => {
                    resyncing = false;
                    resync_backoff = RESYNC_FIRST;
                    connected.store(true, Ordering::SeqCst);
                    tracing::info!(channels = wanted.len(), "redis cluster pub/sub resubscribed");
                    metrics::counter!(names::BUS_RESUBSCRIBES, "cause" => resync_cause).increment(1);
                    // Only callers whose channel this resync covered (it may have started
                    // before theirs was asked for; a later one covers the rest).
                    let (covered, rest): (Vec<_>, Vec<_>) =
                        waiting.drain(..).partition(|(ch, _)| now.contains_key(ch));
                    // A caller whose channel was given up meanwhile hears it never will be.
                    waiting = rest.into_iter().filter(|(ch, _)| wanted.contains(ch)).collect();
                    for (_, done) in covered {
                        let _ = done.send(());
                    }
                    let kept = resync_cause == "reconnect"
                        && now.iter().all(|(ch, after)| matches!(
                            (carriers.get(ch), after),
                            (Some(Some(before)), Some(after)) if before == after
                        ));
                    carriers.extend(now);
                    carriers.retain(|ch, _| wanted.contains(ch));
                    if kept {
                        tracing::info!("the node that dropped carried none of our channels; nothing was lost");
                    } else {
                        on_reconnect();
                    }
                }
                Done::Resynced { result: Err(e), .. } => {
                    resyncing = false;
                    tracing::warn!(cause = %e, "redis cluster resubscribe failed; retrying");
                    resync_backoff = (resync_backoff * 2).min(MAX_BACKOFF);
                    resync.get_or_insert_with(|| tokio::time::Instant::now() + resync_backoff);
                }
            },
            push = pushes.recv() => {
                let Some(push) = push else { return };
                match push.kind {
                    redis::PushKind::SMessage | redis::PushKind::Message => {
                        // `[channel, payload]`: both moved out, not copied (one per message).
                        let mut data = push.data.into_iter();
                        if let (Some(redis::Value::BulkString(ch)), Some(redis::Value::BulkString(payload))) = (data.next(), data.next()) {
                            on_message(String::from_utf8_lossy(&ch).into_owned(), payload);
                        }
                    }
                    // The connection to one node dropped: whatever it carried meanwhile is
                    // lost, and its subscriptions must be made again once it is back.
                    redis::PushKind::Disconnection => {
                        tracing::warn!("a redis cluster node dropped the pub/sub connection; resubscribing");
                        resync_cause = "reconnect";
                        connected.store(false, Ordering::SeqCst);
                        resync.get_or_insert_with(|| tokio::time::Instant::now() + RESYNC_FIRST);
                    }
                    // Redis unsubscribes a channel whose slot moved to another node
                    // (resharding when nodes are added): subscribe again at its new home.
                    redis::PushKind::SUnsubscribe => {
                        let still_wanted = push.data.first().is_some_and(|ch| {
                            redis::from_redis_value_ref::<String>(ch).is_ok_and(|ch| wanted.contains(&ch))
                        });
                        if still_wanted {
                            tracing::warn!("redis cluster moved a subscribed channel; resubscribing");
                            resync_cause = "slot_moved";
                            resync.get_or_insert_with(|| tokio::time::Instant::now() + RESYNC_FIRST);
                        }
                    }
                    _ => {}
                }
            }
        }
        if overflowed.swap(false, Ordering::SeqCst) {
            tracing::warn!(
                bound = PUSHES,
                "pub/sub messages arrived faster than they were handled; some were dropped"
            );
            metrics::counter!(names::BUS_RESUBSCRIBES, "cause" => "overflow").increment(1);
            on_reconnect();
        }
    }
}

/// Subscribes `ch` on the cluster and learns which node connection carries it.
fn subscribe_call(
    conn: &redis::cluster_async::ClusterConnection,
    ch: String,
    done: Option<tokio::sync::oneshot::Sender<()>>,
) -> BoxFuture<'static, Done> {
    let mut conn = conn.clone();
    Box::pin(async move {
        let result = conn.ssubscribe(&ch).await;
        let carrier = match result {
            Ok(()) => carriers_of(&conn, vec![ch.clone()])
                .await
                .remove(&ch)
                .flatten(),
            Err(_) => None,
        };
        Done::Subscribed {
            ch,
            result,
            carrier,
            done,
        }
    })
}

/// Unsubscribes `ch` on the cluster. Failing is harmless: messages for a channel nobody
/// wants are ignored by the owner, and a resync does not bring it back.
fn unsubscribe_call(
    conn: &redis::cluster_async::ClusterConnection,
    ch: String,
) -> BoxFuture<'static, Done> {
    let mut conn = conn.clone();
    Box::pin(async move {
        if let Err(e) = conn.sunsubscribe(&ch).await {
            tracing::debug!(cause = %e, "redis cluster unsubscribe failed");
        }
        Done::Unsubscribed { ch }
    })
}

/// A Redis call of the sharded subscriber, finished.
enum Done {
    Subscribed {
        ch: String,
        result: redis::RedisResult<()>,
        carrier: Option<String>,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    },
    Unsubscribed {
        ch: String,
    },
    Resynced {
        result: redis::RedisResult<()>,
        carriers: HashMap<String, Option<String>>,
    },
}

/// For each channel, the identity of the node connection its subscription lives on (`CLIENT
/// INFO` on the master of its slot: the server's address and our connection's id there), or
/// `None` when it could not be asked. A channel whose connection is the same before and
/// after a node dropped missed nothing: Redis delivers a subscription's messages on it alone.
async fn carriers_of(
    conn: &redis::cluster_async::ClusterConnection,
    channels: Vec<String>,
) -> HashMap<String, Option<String>> {
    use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
    let mut conn = conn.clone();
    let mut out = HashMap::new();
    for ch in channels {
        let route = Route::with_key(ch.as_bytes(), SlotAddr::Master);
        let info = conn
            .route_command(
                redis::cmd("CLIENT").arg("INFO").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
            )
            .await
            .ok()
            .and_then(|v| redis::from_redis_value::<String>(v).ok());
        out.insert(ch, info.as_deref().and_then(connection_identity));
    }
    out
}

/// `laddr=… id=…` out of a `CLIENT INFO` line (the rest changes from call to call).
fn connection_identity(info: &str) -> Option<String> {
    let field = |name: &str| {
        info.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .map(str::to_owned)
    };
    Some(format!("{}/{}", field("laddr=")?, field("id=")?))
}

/// A cluster connection subscribed to every channel in `wanted`.
async fn subscribed(
    client: &redis::cluster::ClusterClient,
    wanted: &HashSet<String>,
) -> redis::RedisResult<redis::cluster_async::ClusterConnection> {
    let mut conn = client.get_async_connection().await?;
    subscribe_all(&mut conn, wanted).await?;
    Ok(conn)
}

/// `SSUBSCRIBE` every channel, one by one (one command may only name channels of one slot);
/// subscribing a channel twice is harmless.
async fn subscribe_all(
    conn: &mut redis::cluster_async::ClusterConnection,
    wanted: &HashSet<String>,
) -> redis::RedisResult<()> {
    for ch in wanted {
        conn.ssubscribe(ch).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::connection_identity;

    #[test]
    fn a_connection_is_known_by_the_server_address_and_its_id_there() {
        let info = "id=42 addr=127.0.0.1:51234 laddr=127.0.0.1:7001 fd=9 name= age=3 idle=0 \
                    flags=P db=0 sub=0 psub=0 ssub=2 multi=-1 qbuf=26 cmd=client|info";
        assert_eq!(
            connection_identity(info).as_deref(),
            Some("127.0.0.1:7001/42")
        );
        // Another node may hand out the same id; the address tells them apart.
        let other = info.replace("laddr=127.0.0.1:7001", "laddr=127.0.0.1:7002");
        assert_ne!(connection_identity(info), connection_identity(&other));
        assert_eq!(connection_identity("ERR unknown subcommand"), None);
    }
}

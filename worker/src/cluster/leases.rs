//! Shard ownership. Workers heartbeat into a sorted set; each shard belongs to the live
//! worker with the highest rendezvous score, which holds it with a Redis lease (`SET NX PX`,
//! renewed every heartbeat) carrying a fencing epoch (`INCR`). A worker that cannot renew
//! stops serving the shard before its lease can expire; the store refuses older epochs.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use lockstep_shared::cluster::{epoch_key, lease_key, owner_of, WORKERS_KEY};
use lockstep_shared::config::ClusterConfig;
use lockstep_shared::metrics as names;
use lockstep_shared::shard::shard_of;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::host::Ownership;

use super::redis_conn::RedisPool;

/// Takes the lease if free and stamps it with a fresh epoch; returns the epoch or 0. The
/// epoch never falls below the caller's clock (ARGV[3], ms), so epochs keep growing even if
/// Redis loses its data and the counter restarts.
const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local current = tonumber(redis.call('GET', KEYS[2]) or '0')
  local floor = tonumber(ARGV[3])
  if current < floor then
    redis.call('SET', KEYS[2], ARGV[3])
  end
  local e = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. e, 'PX', ARGV[2])
  return e
end
return 0";
/// Extends the lease if it is still ours.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";
/// Deletes the lease if it is still ours (graceful handoff).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// What the node must do about a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Subscribe and serve the shard under this epoch.
    Acquired(u32, u64),
    /// The lease is gone: stop serving at once.
    Lost(u32),
    /// Another worker should own it: unload its rooms, then call [`Leases::release`].
    Release(u32, u64),
}

/// The shards this worker holds; also the host's [`Ownership`].
pub struct Leases {
    node: String,
    shards: u32,
    owned: RwLock<HashMap<u32, u64>>,
    releasing: RwLock<HashSet<u32>>,
    /// Owns every shard it should, and Redis answered the last heartbeat.
    ready: AtomicBool,
}

impl Ownership for Leases {
    fn epoch(&self, room: &str) -> Option<u64> {
        let shard = shard_of(room, self.shards);
        if self.releasing.read().ok()?.contains(&shard) {
            return None;
        }
        self.owned.read().ok()?.get(&shard).copied()
    }
}

impl Leases {
    pub fn new(node: String, shards: u32) -> Leases {
        Leases {
            node,
            shards,
            owned: RwLock::new(HashMap::new()),
            releasing: RwLock::new(HashSet::new()),
            ready: AtomicBool::new(false),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    pub fn owned(&self) -> Vec<(u32, u64)> {
        self.owned
            .read()
            .map(|m| m.iter().map(|(s, e)| (*s, *e)).collect())
            .unwrap_or_default()
    }

    fn value(&self, epoch: u64) -> String {
        format!("{}:{epoch}", self.node)
    }

    fn forget(&self, shard: u32) {
        if let Ok(mut m) = self.owned.write() {
            m.remove(&shard);
        }
        if let Ok(mut r) = self.releasing.write() {
            r.remove(&shard);
        }
        metrics::gauge!(names::LEASE_OWNED)
            .set(self.owned.read().map(|m| m.len()).unwrap_or(0) as f64);
    }

    /// Gives a shard up after its rooms are unloaded.
    pub async fn release(&self, pool: &RedisPool, shard: u32, epoch: u64) {
        self.forget(shard);
        metrics::counter!(names::LEASE_DROPPED, "how" => "released").increment(1);
        if let Ok(mut conn) = pool.get().await {
            let _: Result<i64, _> = redis::cmd("EVAL")
                .arg(RELEASE)
                .arg(1)
                .arg(lease_key(shard))
                .arg(self.value(epoch))
                .query_async(&mut conn)
                .await;
        }
    }
}

/// Heartbeats, renews, acquires and hands off until cancelled.
pub async fn run(
    leases: Arc<Leases>,
    pool: RedisPool,
    cfg: ClusterConfig,
    events: mpsc::Sender<LeaseEvent>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.heartbeat_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_renewed = now_ms();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        // A round whose Redis calls hang (no reply, a request stuck behind a slot migration)
        // must not keep this worker serving: its calls may wait until the moment the worker
        // would have to stop anyway, and no longer. Holding nothing, they may wait a heartbeat.
        let budget = if leases.owned().is_empty() {
            cfg.heartbeat_ms
        } else {
            (last_renewed + cfg.lease_ttl_ms * 2 / 3).saturating_sub(now)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(budget.max(1));
        match round(&leases, &pool, &cfg, &events, now, deadline).await {
            Ok(()) => last_renewed = now,
            Err(e) => {
                leases.ready.store(false, Ordering::SeqCst);
                tracing::warn!(cause = %e, "lease round failed");
                // Stop serving well before another worker could take the shards over.
                if now_ms().saturating_sub(last_renewed) >= cfg.lease_ttl_ms * 2 / 3 {
                    for (shard, _) in leases.owned() {
                        leases.forget(shard);
                        metrics::counter!(names::LEASE_DROPPED, "how" => "expired").increment(1);
                        let _ = events.send(LeaseEvent::Lost(shard)).await;
                    }
                }
            }
        }
    }
}

async fn round(
    leases: &Arc<Leases>,
    pool: &RedisPool,
    cfg: &ClusterConfig,
    events: &mpsc::Sender<LeaseEvent>,
    now: u64,
    deadline: tokio::time::Instant,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Only Redis calls are bounded: a round stopped between a state change and its event
    // would leave the node's subscriptions out of step with what it holds.
    use tokio::time::timeout_at;
    let mut conn = timeout_at(deadline, pool.get()).await??;
    // Only a metric: a failure here must not fail the lease round.
    let _ = timeout_at(deadline, super::clock_offset::measure(&mut conn)).await;
    let ttl = cfg.lease_ttl_ms;
    // Heartbeat and the live set (one key: one pipeline, even on a Redis Cluster).
    let mut beat = redis::pipe();
    beat.cmd("ZADD")
        .arg(WORKERS_KEY)
        .arg(now)
        .arg(&leases.node)
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(WORKERS_KEY)
        .arg("-inf")
        .arg(now.saturating_sub(ttl * 10))
        .ignore()
        .cmd("ZRANGEBYSCORE")
        .arg(WORKERS_KEY)
        .arg(now.saturating_sub(ttl))
        .arg("+inf");
    let (live,): (Vec<String>,) = timeout_at(deadline, beat.query_async(&mut conn)).await??;
    let mut live = live;
    if !live.contains(&leases.node) {
        live.push(leases.node.clone());
    }
    // Renew what we hold.
    let owned = leases.owned();
    if !owned.is_empty() {
        let renews = owned
            .iter()
            .map(|(shard, epoch)| {
                let key = lease_key(*shard);
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(RENEW)
                    .arg(1)
                    .arg(&key)
                    .arg(leases.value(*epoch))
                    .arg(ttl);
                (key, cmd)
            })
            .collect();
        let renewed: Vec<i64> = timeout_at(deadline, conn.query_by_slot(renews)).await??;
        for ((shard, _), ok) in owned.iter().zip(renewed) {
            if ok == 0 {
                leases.forget(*shard);
                metrics::counter!(names::LEASE_DROPPED, "how" => "lost").increment(1);
                tracing::warn!(shard, "lease lost");
                let _ = events.send(LeaseEvent::Lost(*shard)).await;
            }
        }
    }
    // Hand off what another live worker should own; take what we should own.
    let owned: HashMap<u32, u64> = leases.owned().into_iter().collect();
    let mut to_acquire = Vec::new();
    for shard in 0..leases.shards {
        let mine = owner_of(&live, shard) == Some(leases.node.as_str());
        match (mine, owned.get(&shard)) {
            (false, Some(epoch)) => {
                let newly = leases
                    .releasing
                    .write()
                    .map(|mut r| r.insert(shard))
                    .unwrap_or(false);
                if newly {
                    let _ = events.send(LeaseEvent::Release(shard, *epoch)).await;
                }
            }
            (true, None) => to_acquire.push(shard),
            _ => {}
        }
    }
    if !to_acquire.is_empty() {
        let acquires = to_acquire
            .iter()
            .map(|shard| {
                let key = lease_key(*shard);
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(ACQUIRE)
                    .arg(2)
                    .arg(&key)
                    .arg(epoch_key(*shard))
                    .arg(&leases.node)
                    .arg(ttl)
                    .arg(now);
                (key, cmd)
            })
            .collect();
        let epochs: Vec<i64> = timeout_at(deadline, conn.query_by_slot(acquires)).await??;
        for (shard, epoch) in to_acquire.iter().zip(epochs) {
            if epoch > 0 {
                let epoch = epoch as u64;
                if let Ok(mut m) = leases.owned.write() {
                    m.insert(*shard, epoch);
                }
                metrics::counter!(names::LEASE_ACQUIRED).increment(1);
                let _ = events.send(LeaseEvent::Acquired(*shard, epoch)).await;
            }
        }
    }
    let owned = leases.owned.read().map(|m| m.len()).unwrap_or(0);
    metrics::gauge!(names::LEASE_OWNED).set(owned as f64);
    let desired = (0..leases.shards)
        .filter(|s| owner_of(&live, *s) == Some(leases.node.as_str()))
        .count();
    let releasing = leases.releasing.read().map(|r| r.len()).unwrap_or(0);
    leases
        .ready
        .store(owned >= desired && releasing == 0, Ordering::SeqCst);
    Ok(())
}

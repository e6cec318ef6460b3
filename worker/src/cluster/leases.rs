//! Shard ownership. Workers heartbeat into a sorted set; each shard belongs to the live
//! worker with the highest rendezvous score, which holds it with a Redis lease (`SET NX PX`,
//! renewed every heartbeat) carrying a fencing epoch (`INCR`). A worker that cannot renew
//! stops serving the shard before its lease can expire; the store refuses older epochs.
//! When Redis loses its data (a restart, a failover to a lagging replica) owners set their
//! leases again under the same epoch and keep their rooms, and no shard moves until every live
//! worker is back in the live set ([`LiveView`]).

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

use super::liveness::{grace_ms, LiveView};
use super::redis_conn::{PooledConn, RedisPool};

/// Takes the lease if free, or if it is one of ours that this worker no longer serves (a call
/// whose reply came too late, run by Redis after the worker gave up on it), and stamps it
/// with a fresh epoch; returns the epoch or 0. The epoch never falls below the caller's clock
/// (ARGV[3], ms), so epochs keep growing even if Redis loses its data and the counter restarts.
const ACQUIRE: &str = r"
local held = redis.call('GET', KEYS[1])
local mine = ARGV[1] .. ':'
if held and string.sub(held, 1, string.len(mine)) ~= mine then
  return 0
end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
local floor = tonumber(ARGV[3])
if current < floor then
  redis.call('SET', KEYS[2], ARGV[3])
end
local e = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], mine .. e, 'PX', ARGV[2])
return e";
/// Extends the lease if it is still ours (1). A lease that is gone while we hold it in time
/// (ARGV[4] = 1: renewed less than 2/3 of the TTL ago, so it cannot have expired, and not being
/// handed off, so we did not delete it) was lost by Redis (a restart, or a failover to a
/// replica that had not seen it): we set it again under the same epoch, and lift the epoch
/// counter to it so later owners still fence us (2). Another worker's lease, or a gone one we
/// may have let expire, means ours is lost (0).
const RENEW: &str = r"
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if held or ARGV[4] ~= '1' then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[3])
end
return 2";
/// Deletes the lease if it is still ours (graceful handoff).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// `script` on `shard`'s lease and epoch keys (one slot: the `{shard:<n>}` hash tag), keyed by
/// the lease for slot grouping; the caller adds the arguments.
fn lease_script(script: &str, shard: u32) -> (String, redis::Cmd) {
    let key = lease_key(shard);
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(2).arg(&key).arg(epoch_key(shard));
    (key, cmd)
}

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

    /// `owned` before `releasing`: the lease round reads them the other way round (see there).
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
///
/// Each shard stands alone: a shard whose lease could not be renewed for 2/3 of the lease TTL
/// is dropped, the others keep serving. On a Redis Cluster a dead master then stops only the
/// rooms whose leases it held (until its replica takes over), not every room of the worker.
pub async fn run(
    leases: Arc<Leases>,
    pool: RedisPool,
    cfg: ClusterConfig,
    events: mpsc::Sender<LeaseEvent>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.heartbeat_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut memory = Memory::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        // A round whose Redis calls hang (no reply, a request stuck behind a slot migration,
        // a dead master) must not keep this worker serving a shard: its calls may wait until
        // the first moment a held shard would have to stop, and no longer. Holding nothing,
        // they may wait a heartbeat.
        let stop_at = leases
            .owned()
            .iter()
            .map(|(shard, _)| {
                memory.renewed.get(shard).copied().unwrap_or(0) + cfg.lease_ttl_ms * 2 / 3
            })
            .min();
        let budget = match stop_at {
            Some(at) => at.saturating_sub(now),
            None => cfg.heartbeat_ms,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(budget.max(1));
        if let Err(e) = round(&leases, &pool, &cfg, &events, now, deadline, &mut memory).await {
            leases.ready.store(false, Ordering::SeqCst);
            tracing::warn!(cause = %e, "lease round failed");
        }
        // Stop serving a shard well before another worker could take it over.
        let now = now_ms();
        for (shard, _) in leases.owned() {
            let last = memory.renewed.get(&shard).copied().unwrap_or(0);
            if now.saturating_sub(last) >= cfg.lease_ttl_ms * 2 / 3 {
                memory.renewed.remove(&shard);
                leases.forget(shard);
                metrics::counter!(names::LEASE_DROPPED, "how" => "expired").increment(1);
                tracing::warn!(shard, "lease not renewed in time; shard dropped");
                let _ = events.send(LeaseEvent::Lost(shard)).await;
            }
        }
        let held: HashSet<u32> = leases.owned().into_iter().map(|(s, _)| s).collect();
        memory.renewed.retain(|shard, _| held.contains(shard));
    }
}

/// What the lease loop remembers between rounds.
#[derive(Default)]
struct Memory {
    /// When each held shard's lease was last renewed (ms, taken before the call was sent).
    renewed: HashMap<u32, u64>,
    view: LiveView,
}

/// One heartbeat: the live set, renewals, hand-offs and acquisitions. A failed heartbeat or
/// renewal is an error (the node is not ready), but renewals that succeeded count and a shard
/// whose renewal failed keeps its last renewal time; without the live set, or while it settles
/// after Redis lost it ([`LiveView`]), nothing is handed off or taken.
async fn round(
    leases: &Arc<Leases>,
    pool: &RedisPool,
    cfg: &ClusterConfig,
    events: &mpsc::Sender<LeaseEvent>,
    now: u64,
    deadline: tokio::time::Instant,
    memory: &mut Memory,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let Memory { renewed, view } = memory;
    // Only Redis calls are bounded: a round stopped between a state change and its event
    // would leave the node's subscriptions out of step with what it holds.
    use tokio::time::timeout_at;
    let mut conn = timeout_at(deadline, pool.get()).await??;
    let ttl = cfg.lease_ttl_ms;
    // Heartbeat and the live set (one key: one script, even on a Redis Cluster), by Redis'
    // clock.
    let beat = super::liveness::beat_and_read(WORKERS_KEY, &leases.node, ttl);
    // The heartbeat has its own connection and runs beside the renewals: a dead master
    // holding the live set must not keep the leases elsewhere from being renewed. It waits a
    // heartbeat at most.
    let beat_deadline =
        deadline.min(tokio::time::Instant::now() + Duration::from_millis(cfg.heartbeat_ms));
    let heartbeat = async {
        let mut conn = timeout_at(beat_deadline, pool.get()).await??;
        let reply = timeout_at(
            beat_deadline,
            beat.query_async::<(i64, Vec<String>)>(&mut conn),
        )
        .await;
        let (added, live) = match reply.map_err(Box::from).and_then(|r| r.map_err(Box::from)) {
            Ok(beat) => beat,
            Err(e) => {
                conn.discard();
                return Err(e);
            }
        };
        // Only a metric: a failure here must not fail the lease round.
        let _ = timeout_at(beat_deadline, super::clock_offset::measure(&mut conn)).await;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((added == 1, live))
    };
    // A lease gone from Redis is set again only if it cannot have expired, and not while the
    // shard is being handed off: its release may delete the lease while this round runs, and
    // setting it again would keep the next owner out for a whole TTL. Read before `owned`: a
    // release forgets the shard in `owned` first, so one of the two reads sees it.
    let releasing = leases
        .releasing
        .read()
        .map(|r| r.clone())
        .unwrap_or_default();
    let owned = leases.owned();
    let in_time = |shard: u32| {
        let last = renewed.get(&shard).copied().unwrap_or(0);
        now.saturating_sub(last) < ttl * 2 / 3 && !releasing.contains(&shard)
    };
    // Renew what we hold, each shard on its own.
    let renewals = async {
        if owned.is_empty() {
            return (Vec::new(), None);
        }
        let renews = owned
            .iter()
            .map(|(shard, epoch)| {
                let (key, mut cmd) = lease_script(RENEW, *shard);
                cmd.arg(leases.value(*epoch))
                    .arg(ttl)
                    .arg(*epoch)
                    .arg(u8::from(in_time(*shard)));
                (key, cmd)
            })
            .collect();
        conn.query_each_by_slot::<i64>(renews, deadline).await
    };
    let (heartbeat, (replies, mut renew_error)) = tokio::join!(heartbeat, renewals);
    let mut reclaimed = 0u64;
    for ((shard, _), reply) in owned.iter().zip(replies) {
        match reply {
            Some(0) => {
                renewed.remove(shard);
                leases.forget(*shard);
                metrics::counter!(names::LEASE_DROPPED, "how" => "lost").increment(1);
                tracing::warn!(shard, "lease lost");
                let _ = events.send(LeaseEvent::Lost(*shard)).await;
            }
            Some(kept) => {
                reclaimed += u64::from(kept == 2);
                renewed.insert(*shard, now);
            }
            None => {}
        }
    }
    if reclaimed > 0 {
        metrics::counter!(names::LEASE_RECLAIMED).increment(reclaimed);
        tracing::warn!(
            reclaimed,
            "shard leases were gone from Redis (restarted or failed over); set again, rooms kept"
        );
    }
    let (added, mut live) = match heartbeat {
        Ok(beat) => beat,
        Err(e) => {
            if renew_error.is_some() {
                conn.discard();
            }
            return Err(format!("heartbeat: {e}").into());
        }
    };
    if !live.contains(&leases.node) {
        live.push(leases.node.clone());
    }
    let settling = view.settling(added, now, grace_ms(cfg));
    if settling {
        metrics::counter!(names::LEASE_SETTLING).increment(1);
    } else {
        let error = rebalance(
            leases,
            &mut conn,
            cfg,
            events,
            &live,
            now,
            beat_deadline,
            renewed,
        )
        .await;
        renew_error = renew_error.or(error);
    }
    let owned = leases.owned.read().map(|m| m.len()).unwrap_or(0);
    metrics::gauge!(names::LEASE_OWNED).set(owned as f64);
    // While the set settles, what we hold is what we should.
    let desired = match settling {
        true => 0,
        false => (0..leases.shards)
            .filter(|s| owner_of(&live, *s) == Some(leases.node.as_str()))
            .count(),
    };
    let releasing = leases.releasing.read().map(|r| r.len()).unwrap_or(0);
    leases
        .ready
        .store(owned >= desired && releasing == 0, Ordering::SeqCst);
    match renew_error {
        Some(e) => {
            conn.discard();
            Err(format!("some leases: {e}").into())
        }
        None => Ok(()),
    }
}

/// Hands off what another live worker should own and takes what we should own; returns the
/// error of an acquisition that failed (the others count).
#[allow(clippy::too_many_arguments)]
async fn rebalance(
    leases: &Arc<Leases>,
    conn: &mut PooledConn,
    cfg: &ClusterConfig,
    events: &mpsc::Sender<LeaseEvent>,
    live: &[String],
    now: u64,
    deadline: tokio::time::Instant,
    renewed: &mut HashMap<u32, u64>,
) -> Option<redis::RedisError> {
    let owned: HashMap<u32, u64> = leases.owned().into_iter().collect();
    let mut to_acquire = Vec::new();
    for shard in 0..leases.shards {
        let mine = owner_of(live, shard) == Some(leases.node.as_str());
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
    if to_acquire.is_empty() {
        return None;
    }
    let acquires = to_acquire
        .iter()
        .map(|shard| {
            let (key, mut cmd) = lease_script(ACQUIRE, *shard);
            cmd.arg(&leases.node).arg(cfg.lease_ttl_ms).arg(now);
            (key, cmd)
        })
        .collect();
    // Taking a shard can wait for the next round: a lease whose master is down must not
    // hold this round (and the renewals of the next) until the first shard's deadline.
    let (epochs, error) = conn.query_each_by_slot::<i64>(acquires, deadline).await;
    for (shard, epoch) in to_acquire.iter().zip(epochs) {
        if let Some(epoch @ 1..) = epoch {
            let epoch = epoch as u64;
            if let Ok(mut m) = leases.owned.write() {
                m.insert(*shard, epoch);
            }
            renewed.insert(*shard, now);
            metrics::counter!(names::LEASE_ACQUIRED).increment(1);
            let _ = events.send(LeaseEvent::Acquired(*shard, epoch)).await;
        }
    }
    error
}

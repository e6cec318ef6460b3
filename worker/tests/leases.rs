//! Shard leases against a real Redis that loses its data: owners keep what they hold (same
//! epoch), nothing moves while the live set fills again, a shard nobody holds waits for the
//! grace, and a lease of ours left behind by a late call is taken back at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockstep_shared::cluster::{epoch_key, lease_key, WORKERS_KEY};
use lockstep_shared::config::ClusterConfig;
use lockstep_testkit::Redis;
use lockstep_worker::cluster::leases::{self, LeaseEvent, Leases};
use lockstep_worker::cluster::liveness::grace_ms;
use lockstep_worker::cluster::redis_conn::{RedisPool, RedisTarget};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SHARDS: u32 = 16;

fn config(redis: &Redis) -> ClusterConfig {
    ClusterConfig {
        redis_url: redis.url().to_owned(),
        shards: SHARDS,
        lease_ttl_ms: 1_500,
        heartbeat_ms: 250,
        ..ClusterConfig::default()
    }
}

/// A worker's lease loop, as the node runs it: hand-offs are released at once (the node would
/// unload the rooms first), every event is kept with its time.
struct Worker {
    leases: Arc<Leases>,
    events: Arc<Mutex<Vec<(Instant, LeaseEvent)>>>,
    cancel: CancellationToken,
}

impl Worker {
    fn start(name: &str, cfg: &ClusterConfig, pool: &RedisPool) -> Worker {
        let leases = Arc::new(Leases::new(name.to_owned(), SHARDS));
        let (tx, mut rx) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        tokio::spawn(leases::run(
            leases.clone(),
            pool.clone(),
            cfg.clone(),
            tx,
            cancel.clone(),
        ));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (kept, held, pool) = (events.clone(), leases.clone(), pool.clone());
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                kept.lock().unwrap().push((Instant::now(), event));
                if let LeaseEvent::Release(shard, epoch) = event {
                    held.release(&pool, shard, epoch).await;
                }
            }
        });
        Worker {
            leases,
            events,
            cancel,
        }
    }

    fn owned(&self) -> HashMap<u32, u64> {
        self.leases.owned().into_iter().collect()
    }

    fn events_since(&self, since: Instant) -> Vec<LeaseEvent> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, e)| *e)
            .collect()
    }
}

/// Waits until the workers hold every shard between them, each ready.
async fn settled(workers: &[&Worker]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held: usize = workers.iter().map(|w| w.owned().len()).sum();
        if held == SHARDS as usize && workers.iter().all(|w| w.leases.is_ready()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the workers never settled: {held} shards held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What Redis losing its data does to the lease keys: the live set, every lease and epoch gone.
async fn lose_everything(pool: &RedisPool) {
    let mut conn = pool.get().await.unwrap();
    let mut del = redis::cmd("DEL");
    del.arg(WORKERS_KEY);
    for shard in 0..SHARDS {
        del.arg(lease_key(shard)).arg(epoch_key(shard));
    }
    let _: i64 = del.query_async(&mut conn).await.unwrap();
}

async fn get(pool: &RedisPool, key: &str) -> Option<String> {
    let mut conn = pool.get().await.unwrap();
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

fn pool_for(cfg: &ClusterConfig) -> RedisPool {
    RedisTarget::from_config(cfg).unwrap().pool().unwrap()
}

/// A private Redis and two workers holding every shard between them.
async fn two_settled_workers() -> (Redis, ClusterConfig, RedisPool, Worker, Worker) {
    let redis = Redis::start();
    let cfg = config(&redis);
    let pool = pool_for(&cfg);
    let (a, b) = (
        Worker::start("a", &cfg, &pool),
        Worker::start("b", &cfg, &pool),
    );
    settled(&[&a, &b]).await;
    (redis, cfg, pool, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_keep_their_shards_when_redis_loses_its_data() {
    let (_redis, cfg, pool, a, b) = two_settled_workers().await;
    let (held_a, held_b) = (a.owned(), b.owned());
    let lost_at = Instant::now();
    lose_everything(&pool).await;
    // Several rounds, past the grace.
    tokio::time::sleep(Duration::from_millis(grace_ms(&cfg) + 1_000)).await;
    for (w, held) in [(&a, &held_a), (&b, &held_b)] {
        assert_eq!(
            w.events_since(lost_at),
            Vec::new(),
            "a shard was dropped, handed off or taken"
        );
        assert_eq!(&w.owned(), held, "the same shards under the same epochs");
    }
    for (name, held) in [("a", &held_a), ("b", &held_b)] {
        for (shard, epoch) in held {
            let lease = get(&pool, &lease_key(*shard)).await;
            assert_eq!(lease, Some(format!("{name}:{epoch}")), "shard {shard}");
            let counter: u64 = get(&pool, &epoch_key(*shard))
                .await
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            assert!(counter >= *epoch, "later owners must get a larger epoch");
        }
    }
    a.cancel.cancel();
    b.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_nobody_holds_after_the_loss_waits_for_the_grace() {
    let (_redis, cfg, pool, a, b) = two_settled_workers().await;
    let orphans: Vec<u32> = b.owned().into_keys().collect();
    assert!(!orphans.is_empty(), "b holds some of {SHARDS} shards");
    // b dies and Redis loses its data at once: b's shards are free, and a, its entry gone,
    // cannot tell b from a worker not back yet.
    b.cancel.cancel();
    lose_everything(&pool).await;
    let lost_at = Instant::now();
    settled(&[&a]).await;
    let taken: Vec<Instant> = a
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, e)| {
            *at >= lost_at && matches!(e, LeaseEvent::Acquired(s, _) if orphans.contains(s))
        })
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(taken.len(), orphans.len(), "a took every orphan once");
    let waited = taken[0] - lost_at;
    eprintln!(
        "a took b's {} shards {} ms after the loss (grace {} ms)",
        orphans.len(),
        waited.as_millis(),
        grace_ms(&cfg)
    );
    assert!(
        waited >= Duration::from_millis(grace_ms(&cfg)),
        "taken before the live set could have filled again"
    );
    a.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_of_ours_left_behind_is_taken_back_at_once() {
    let redis = Redis::start();
    let cfg = config(&redis);
    let pool = pool_for(&cfg);
    lose_everything(&pool).await;
    // What a late-answered call leaves: our name under an epoch this process never saw, for
    // far longer than a lease; and another worker's lease, which is not ours to take.
    let mut conn = pool.get().await.unwrap();
    for (shard, holder) in [(3, "a:7"), (5, "ab:9")] {
        let _: () = redis::cmd("SET")
            .arg(lease_key(shard))
            .arg(holder)
            .arg("PX")
            .arg(60_000)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let a = Worker::start("a", &cfg, &pool);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(a.owned().len() == SHARDS as usize - 1 && a.owned().contains_key(&3)) {
        assert!(Instant::now() < deadline, "a holds {:?}", a.owned());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.owned()[&3] > 7, "taken back under a fresh epoch");
    assert!(
        !a.owned().contains_key(&5),
        "another worker's lease was taken"
    );
    a.cancel.cancel();
}

//! Shared by the bus tests.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_shared::config::ClusterConfig;
use lockstep_testkit::{Redis, RedisCluster};
use lockstep_worker::cluster::redis_conn::RedisTarget;
use lockstep_worker::cluster::subscriber::{self, Subscriptions};
use tokio_util::sync::CancellationToken;

/// The real subscriber on `channels`, returned once it is connected (within 10 s); cancel the
/// token to stop it.
pub async fn connected_subscriber(
    target: &RedisTarget,
    channels: Vec<String>,
    on_message: impl Fn(String, Vec<u8>) + Send + 'static,
) -> (Subscriptions, CancellationToken) {
    let connected = Arc::new(AtomicBool::new(false));
    let cancel = CancellationToken::new();
    let subs = subscriber::spawn(
        target.clone(),
        channels,
        on_message,
        || {},
        connected.clone(),
        cancel.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !connected.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the subscriber never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (subs, cancel)
}

/// A private Redis and the target that reaches it; keep the server while the target is used.
pub async fn private_redis() -> (Redis, RedisTarget) {
    let redis = tokio::task::spawn_blocking(Redis::start).await.unwrap();
    let cc = ClusterConfig {
        redis_url: redis.url().to_owned(),
        ..ClusterConfig::default()
    };
    let target = RedisTarget::from_config(&cc).unwrap();
    (redis, target)
}

/// A private three-node Redis Cluster and the target that reaches it.
pub async fn private_redis_cluster() -> (RedisCluster, RedisTarget) {
    let nodes = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let cc = ClusterConfig {
        redis_cluster_nodes: nodes.seeds(),
        ..ClusterConfig::default()
    };
    let target = RedisTarget::from_config(&cc).unwrap();
    (nodes, target)
}

//! TLS to Redis (`rediss://`), as a managed Redis requires: the pool (leases, limiter), the
//! publisher and the subscriber all verify the server's certificate against
//! `cluster.redis_ca_file` — over a private TLS-only Redis and a private TLS-only Redis
//! Cluster — and a server signed by another CA is refused. A Redis that asks for client
//! certificates gets the configured one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::connected_subscriber;
use lockstep_shared::config::ClusterConfig;
use lockstep_testkit::{Redis, RedisCluster, TestCa};
use lockstep_worker::cluster::publisher::Publisher;
use lockstep_worker::cluster::redis_conn::RedisTarget;

fn target(url_or_seeds: Vec<String>, is_cluster: bool, ca: Option<PathBuf>) -> RedisTarget {
    with_client(url_or_seeds, is_cluster, ca, None)
}

fn with_client(
    url_or_seeds: Vec<String>,
    is_cluster: bool,
    ca: Option<PathBuf>,
    client: Option<&TestCa>,
) -> RedisTarget {
    let mut cc = ClusterConfig {
        redis_ca_file: ca,
        redis_client_cert: client.map(TestCa::client_cert_file),
        redis_client_key: client.map(TestCa::client_key_file),
        ..ClusterConfig::default()
    };
    if is_cluster {
        cc.redis_cluster_nodes = url_or_seeds;
    } else {
        cc.redis_url = url_or_seeds[0].clone();
    }
    RedisTarget::from_config(&cc).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_over_tls_verifies_the_server() {
    let (ca, redis) = tokio::task::spawn_blocking(|| {
        let ca = TestCa::new();
        let redis = Redis::start_tls(&ca);
        (ca, redis)
    })
    .await
    .unwrap();
    assert!(redis.url().starts_with("rediss://"));
    let url = vec![redis.url().to_owned()];
    works(target(url.clone(), false, Some(ca.ca_file()))).await;
    refused(target(url.clone(), false, Some(TestCa::new().ca_file()))).await;
    // The default roots (webpki-roots) do not hold the test CA either.
    refused(target(url, false, None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_asking_for_client_certificates_gets_the_configured_one() {
    let (ca, redis) = tokio::task::spawn_blocking(|| {
        let ca = TestCa::new();
        let redis = Redis::start_mtls(&ca);
        (ca, redis)
    })
    .await
    .unwrap();
    let url = vec![redis.url().to_owned()];
    works(with_client(
        url.clone(),
        false,
        Some(ca.ca_file()),
        Some(&ca),
    ))
    .await;
    refused(target(url.clone(), false, Some(ca.ca_file()))).await;
    // A certificate another CA signed is refused too.
    let other = TestCa::new();
    refused(with_client(url, false, Some(ca.ca_file()), Some(&other))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_over_tls_verifies_every_node() {
    let (ca, nodes) = tokio::task::spawn_blocking(|| {
        let ca = TestCa::new();
        let nodes = RedisCluster::start_tls(&ca);
        (ca, nodes)
    })
    .await
    .unwrap();
    assert!(nodes.seeds().iter().all(|s| s.starts_with("rediss://")));
    works(target(nodes.seeds(), true, Some(ca.ca_file()))).await;
    refused(target(nodes.seeds(), true, Some(TestCa::new().ca_file()))).await;
}

/// Keys through the pool, and messages on channels spread over slots (over a cluster, over
/// several nodes) through the publisher and subscriber.
async fn works(target: RedisTarget) {
    let pool = target.pool().unwrap();
    let mut conn = pool.get().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("test:tls")
        .arg("over tls")
        .query_async(&mut conn)
        .await
        .unwrap();
    let back: String = redis::cmd("GET")
        .arg("test:tls")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(back, "over tls");

    let channels: Vec<String> = (0..8).map(|i| format!("test:tls:{i}")).collect();
    let received: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let (_subs, cancel) = connected_subscriber(&target, channels.clone(), move |ch, _| {
        sink.lock().unwrap().push(ch)
    })
    .await;
    let publisher = Publisher::spawn(target.clone(), target.connect().await.unwrap());
    for ch in &channels {
        publisher.publish(ch.clone(), b"hello".to_vec());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().len() < channels.len() {
        assert!(
            Instant::now() < deadline,
            "only {:?} arrived",
            received.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
}

/// A server whose certificate the configured roots do not vouch for is never used.
async fn refused(target: RedisTarget) {
    let pool = target.pool().unwrap();
    let err = match pool.get().await {
        Ok(_) => panic!("connected to a server signed by an untrusted CA"),
        Err(e) => e.to_string(),
    };
    // The TLS layer's reason: a certificate problem, or the server's alert about ours.
    let why = err.to_lowercase();
    assert!(
        ["certificate", "tls", "alert"]
            .iter()
            .any(|w| why.contains(w)),
        "the error should say why: {err}"
    );
    eprintln!("refused as expected: {err}");
    let connected = tokio::time::timeout(Duration::from_secs(5), target.connect()).await;
    assert!(
        !matches!(connected, Ok(Ok(_))),
        "a connection was made to a server signed by an untrusted CA"
    );
}

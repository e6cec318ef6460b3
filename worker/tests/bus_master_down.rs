//! A Redis Cluster master going down holds up only the channels it serves: the real publisher
//! and subscriber keep carrying another master's channel, in order and on time, while the
//! dead master's replica is promoted. Before, one batch waited for its slowest slot: a
//! worker's every room stalled with any master carrying one of its gateways' channels.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::connected_subscriber;
use lockstep_shared::config::ClusterConfig;
use lockstep_testkit::RedisCluster;
use lockstep_worker::cluster::publisher::Publisher;
use lockstep_worker::cluster::redis_conn::RedisTarget;

/// How long messages are published, from before the kill until after the promotion.
const PUBLISHING: Duration = Duration::from_secs(8);
/// A message on the live master's channel may take at most this long (it takes a few ms).
const LATE: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_down_holds_up_only_the_channels_it_serves() {
    let mut nodes = tokio::task::spawn_blocking(|| {
        let nodes = RedisCluster::start_with_replicas();
        nodes.serve_partial_coverage();
        nodes
    })
    .await
    .unwrap();
    // One channel on the master to be killed, one on another.
    let (victim, down, up) = tokio::task::block_in_place(|| {
        let victim = nodes.masters()[0];
        let name = |i: u32| format!("test:lane:{i}");
        let down = (0..).map(name).find(|c| nodes.master_of(c) == victim);
        let up = (0..).map(name).find(|c| nodes.master_of(c) != victim);
        (victim, down.unwrap(), up.unwrap())
    });
    let cc = ClusterConfig {
        redis_cluster_nodes: nodes.seeds(),
        ..ClusterConfig::default()
    };
    let target = RedisTarget::from_config(&cc).unwrap();
    let arrived: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = (arrived.clone(), up.clone());
    let (_subs, cancel) = connected_subscriber(
        &target,
        vec![down.clone(), up.clone()],
        move |ch, payload| {
            if ch == sink.1 {
                let n = String::from_utf8_lossy(&payload)
                    .parse()
                    .unwrap_or(u32::MAX);
                sink.0.lock().unwrap().push((n, Instant::now()));
            }
        },
    )
    .await;
    let publisher = Publisher::spawn(target.clone(), target.connect().await.unwrap());
    let sender = tokio::spawn(async move {
        let (started, mut sent) = (Instant::now(), Vec::new());
        while started.elapsed() < PUBLISHING {
            let i = sent.len().to_string().into_bytes();
            publisher.publish(down.clone(), i.clone());
            publisher.publish(up.clone(), i);
            sent.push(Instant::now());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| nodes.kill_master(victim));
    let sent = sender.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel();
    let arrived = arrived.lock().unwrap().clone();
    let numbers: Vec<u32> = arrived.iter().map(|(n, _)| *n).collect();
    let expected: Vec<u32> = (0..sent.len() as u32).collect();
    assert_eq!(
        numbers, expected,
        "the live master's channel lost or reordered nothing"
    );
    let slowest = arrived
        .iter()
        .map(|(n, at)| at.duration_since(sent[*n as usize]))
        .max()
        .unwrap();
    eprintln!(
        "{} messages on the live channel, the slowest in {slowest:?}",
        sent.len()
    );
    assert!(
        slowest < LATE,
        "a message on the live master's channel waited {slowest:?} for the dead one"
    );
}

//! The bus keeps each channel's messages in order — room events for one gateway travel on one
//! channel, and a client's `seq` stream depends on it — through the real publisher and
//! subscriber, over a private Redis and over a private three-node Redis Cluster (where a batch
//! is split by slot and the pieces are sent concurrently).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{connected_subscriber, private_redis, private_redis_cluster};
use lockstep_worker::cluster::publisher::Publisher;
use lockstep_worker::cluster::redis_conn::RedisTarget;

const CHANNELS: u32 = 16;
const MESSAGES: u32 = 4_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_keeps_each_channels_order() {
    let (_redis, target) = private_redis().await;
    keeps_order(target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_keeps_each_channels_order() {
    let (_nodes, target) = private_redis_cluster().await;
    keeps_order(target).await;
}

/// Publishes numbered messages round-robin over the channels as fast as the queue takes them
/// (so every pipeline holds many messages per channel) and checks each channel's arrivals.
async fn keeps_order(target: RedisTarget) {
    let channels: Vec<String> = (0..CHANNELS).map(|i| format!("test:order:{i}")).collect();
    let received: Arc<Mutex<Vec<(String, u32)>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let (_subs, cancel) = connected_subscriber(&target, channels.clone(), move |ch, payload| {
        let n = String::from_utf8_lossy(&payload)
            .parse()
            .unwrap_or(u32::MAX);
        sink.lock().unwrap().push((ch, n));
    })
    .await;
    let publisher = Publisher::spawn(target.clone(), target.connect().await.unwrap());
    for i in 0..MESSAGES {
        publisher.publish(
            channels[(i % CHANNELS) as usize].clone(),
            i.to_string().into_bytes(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().len() < MESSAGES as usize {
        assert!(
            Instant::now() < deadline,
            "only {} of {MESSAGES} arrived",
            received.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    let mut per_channel: HashMap<String, Vec<u32>> = HashMap::new();
    for (ch, n) in received.lock().unwrap().iter() {
        per_channel.entry(ch.clone()).or_default().push(*n);
    }
    assert_eq!(per_channel.len(), CHANNELS as usize);
    for (ch, numbers) in per_channel {
        assert_eq!(numbers.len(), (MESSAGES / CHANNELS) as usize, "{ch}");
        let out_of_order = numbers.windows(2).filter(|w| w[0] >= w[1]).count();
        assert_eq!(out_of_order, 0, "{ch} arrived out of order: {numbers:?}");
    }
}

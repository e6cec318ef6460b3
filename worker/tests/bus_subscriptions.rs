//! Subscription changes land in the order they were asked for, whatever order Redis finishes
//! them in. A worker that loses a shard's lease right after gaining it queues a subscribe and
//! then an unsubscribe: had the subscribe landed last, the worker would stay subscribed to a
//! shard it no longer owns and answer the new owner's commands with refusals. Checked with the
//! real subscriber over a private Redis and over a private three-node Redis Cluster (where the
//! calls run concurrently), by asking Redis how many subscribers each channel has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{connected_subscriber, private_redis, private_redis_cluster};
use lockstep_worker::cluster::redis_conn::RedisTarget;

/// Channels each changed in a different order; the rounds repeat it so the calls overlap.
const ROUNDS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_applies_subscription_changes_in_order() {
    let (_redis, target) = private_redis().await;
    applies_in_order(target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_applies_subscription_changes_in_order() {
    let (_nodes, target) = private_redis_cluster().await;
    applies_in_order(target).await;
}

async fn applies_in_order(target: RedisTarget) {
    let (subs, cancel) = connected_subscriber(&target, Vec::new(), |_, _| {}).await;
    let withdrawn = |i: usize| format!("test:subs:withdrawn:{i}");
    let flipped = |i: usize| format!("test:subs:flipped:{i}");
    let mut confirmations = Vec::new();
    for i in 0..ROUNDS {
        // Asked for and given up before Redis could confirm it: must end unsubscribed.
        let gone = subs
            .subscribe(withdrawn(i))
            .await
            .expect("subscriber alive");
        subs.unsubscribe(withdrawn(i)).await;
        drop(gone);
        // Asked for, given up, asked for again: must end subscribed, and say so.
        subs.subscribe(flipped(i)).await.expect("subscriber alive");
        subs.unsubscribe(flipped(i)).await;
        confirmations.push(subs.subscribe(flipped(i)).await.expect("subscriber alive"));
    }
    for (i, confirmed) in confirmations.into_iter().enumerate() {
        tokio::time::timeout(Duration::from_secs(10), confirmed)
            .await
            .unwrap_or_else(|_| panic!("{} never confirmed", flipped(i)))
            .unwrap_or_else(|_| panic!("{} was given up, yet asked for last", flipped(i)));
    }

    // A change still settling (a late call being undone) settles within this.
    let mut conn = target.connect().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut wrong = Vec::new();
        for i in 0..ROUNDS {
            for (ch, want) in [(withdrawn(i), 0), (flipped(i), 1)] {
                let n: i64 = target
                    .publish(&ch, b"probe")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if n != want {
                    wrong.push(format!("{ch}: {n} subscribers, want {want}"));
                }
            }
        }
        if wrong.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscriptions did not end as last asked for:\n{}",
            wrong.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And it stays so: nothing still in flight undoes it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..ROUNDS {
        let n: i64 = target
            .publish(&withdrawn(i), b"probe")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 0, "{} came back after being given up", withdrawn(i));
    }
    cancel.cancel();
}

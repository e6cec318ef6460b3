//! The pub/sub buffer check against a real, private Redis: it reads the server's setting and
//! tells a limit that drops subscribers in a join storm from one that does not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lockstep_testkit::Redis;
use lockstep_worker::cluster::pubsub_limit::{check, RECOMMENDED, RECOMMENDED_HARD};
use lockstep_worker::cluster::redis_conn::RedisTarget;

async fn set(client: &redis::Client, value: &str) {
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("client-output-buffer-limit")
        .arg(value)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_limit_is_read_and_judged() {
    let redis = tokio::task::spawn_blocking(Redis::start).await.unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let target = RedisTarget::Single(client.clone());
    let before = check(&target, "test").await.expect("readable");
    // Redis' own default: a big room's join storm passes it.
    set(&client, "pubsub 32mb 8mb 60").await;
    let default = check(&target, "test").await.expect("readable");
    assert_eq!(default.hard, 32 << 20);
    assert!(default.too_low());
    set(&client, RECOMMENDED).await;
    let raised = check(&target, "test").await.expect("readable");
    assert_eq!(raised.hard, RECOMMENDED_HARD);
    assert!(!raised.too_low());
    // Leave a configured server as it was.
    set(
        &client,
        &format!(
            "pubsub {} {} {}",
            before.hard, before.soft, before.soft_seconds
        ),
    )
    .await;
    // An unreachable server is not an error at start, only unknown.
    let nowhere = redis::Client::open("redis://127.0.0.1:1").unwrap();
    assert!(check(&RedisTarget::Single(nowhere), "test").await.is_none());
}

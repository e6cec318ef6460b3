//! The single-server connection speaks RESP3 to learn of a dropped connection at once; a
//! server or proxy that refuses `HELLO` (Redis older than 6, or a command renamed away) still
//! gets a working connection, in RESP2, at once rather than after the connection manager's
//! retries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use lockstep_shared::config::ClusterConfig;
use lockstep_testkit::Redis;
use lockstep_worker::cluster::redis_conn::{RedisConn, RedisTarget};

/// Connects as publishers do and publishes; the connection is kept open for the caller.
async fn connect_and_publish(redis: &Redis) -> (Duration, RedisConn) {
    let cfg = ClusterConfig {
        redis_url: redis.url().to_owned(),
        ..ClusterConfig::default()
    };
    let target = RedisTarget::from_config(&cfg).unwrap();
    let started = Instant::now();
    let mut conn = target.connect().await.unwrap();
    let took = started.elapsed();
    let receivers: i64 = target
        .publish("test:resp", b"hello")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(receivers, 0);
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    (took, conn)
}

/// What the server says of its clients (`resp=2` or `resp=3` each).
fn client_list(redis: &Redis) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "CLIENT", "LIST"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_hello_gets_resp2() {
    let redis = Redis::start_with(&["--rename-command", "HELLO", "HELLO_RENAMED_AWAY"]);
    let (took, _conn) = connect_and_publish(&redis).await;
    eprintln!("connected in {} ms", took.as_millis());
    let list = client_list(&redis);
    assert!(!list.contains("resp=3"), "{list}");
    assert!(
        took < Duration::from_secs(2),
        "connecting waited for the connection manager's retries ({took:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_speaks_resp3_gets_it() {
    let redis = Redis::start_with(&[]);
    let (_, _conn) = connect_and_publish(&redis).await;
    // The connection said HELLO 3: Redis lists it as resp=3.
    let list = client_list(&redis);
    assert!(list.contains("resp=3"), "{list}");
    assert!(
        !list.contains("resp=3") || list.contains("resp=2"),
        "redis-cli itself: {list}"
    );
}

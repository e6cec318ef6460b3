//! Shared by the bus tests.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

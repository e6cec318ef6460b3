//! A dedicated Redis pub/sub connection that reconnects and resubscribes by itself. Used by
//! workers (shard channels) and gateways (their own channel).

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Subscription changes waiting to be applied.
const COMMANDS: usize = 4_096;

enum Cmd {
    /// Subscribe; the sender (if any) hears back once Redis confirmed it.
    Subscribe(String, Option<tokio::sync::oneshot::Sender<()>>),
    Unsubscribe(String),
}

/// Asks the subscriber to change its channels.
#[derive(Clone)]
pub struct Subscriptions {
    tx: mpsc::Sender<Cmd>,
}

impl Subscriptions {
    /// Subscribes and waits until Redis confirmed it; false if the connection was down
    /// (the subscriber still resubscribes once it reconnects).
    pub async fn subscribe(&self, channel: String) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .tx
            .send(Cmd::Subscribe(channel, Some(tx)))
            .await
            .is_err()
        {
            return false;
        }
        rx.await.is_ok()
    }

    pub async fn unsubscribe(&self, channel: String) {
        let _ = self.tx.send(Cmd::Unsubscribe(channel)).await;
    }
}

/// Starts the subscriber task; every message's `(channel, payload)` goes to `on_message`.
/// `connected` reports whether the connection is up (for `/readyz`).
/// `on_reconnect` runs after every reconnection (not the first connection): messages
/// published meanwhile were lost, so the caller must make its clients recover.
pub fn spawn(
    client: redis::Client,
    initial: Vec<String>,
    on_message: impl Fn(String, Vec<u8>) + Send + 'static,
    on_reconnect: impl Fn() + Send + 'static,
    connected: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cancel: CancellationToken,
) -> Subscriptions {
    let (tx, rx) = mpsc::channel(COMMANDS);
    tokio::spawn(run(
        client,
        initial,
        on_message,
        on_reconnect,
        connected,
        rx,
        cancel,
    ));
    Subscriptions { tx }
}

async fn run(
    client: redis::Client,
    initial: Vec<String>,
    on_message: impl Fn(String, Vec<u8>) + Send + 'static,
    on_reconnect: impl Fn() + Send + 'static,
    connected: std::sync::Arc<std::sync::atomic::AtomicBool>,
    mut cmds: mpsc::Receiver<Cmd>,
    cancel: CancellationToken,
) {
    use std::sync::atomic::Ordering;
    let mut wanted: HashSet<String> = initial.into_iter().collect();
    let mut backoff = Duration::from_millis(50);
    let mut cmds_closed = false;
    let mut connections = 0u64;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                connected.store(false, Ordering::SeqCst);
                tracing::warn!(cause = %e, "pub/sub connect failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut ok = true;
        for ch in &wanted {
            if let Err(e) = sink.subscribe(ch).await {
                tracing::warn!(cause = %e, "resubscribe failed");
                ok = false;
                break;
            }
        }
        if !ok {
            continue;
        }
        connected.store(true, Ordering::SeqCst);
        backoff = Duration::from_millis(50);
        tracing::info!(channels = wanted.len(), "pub/sub connected");
        if connections > 0 {
            on_reconnect();
        }
        connections += 1;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                cmd = cmds.recv(), if !cmds_closed => {
                    let result = match cmd {
                        // The handle was dropped: the channel set is final, keep receiving.
                        None => {
                            cmds_closed = true;
                            Ok(())
                        }
                        Some(Cmd::Subscribe(ch, done)) => {
                            let r = sink.subscribe(&ch).await;
                            wanted.insert(ch);
                            if let (Ok(()), Some(done)) = (&r, done) {
                                let _ = done.send(());
                            }
                            r
                        }
                        Some(Cmd::Unsubscribe(ch)) => {
                            wanted.remove(&ch);
                            sink.unsubscribe(&ch).await
                        }
                    };
                    if let Err(e) = result {
                        tracing::warn!(cause = %e, "pub/sub command failed; reconnecting");
                        break;
                    }
                }
                msg = stream.next() => match msg {
                    Some(msg) => on_message(msg.get_channel_name().to_owned(), msg.get_payload_bytes().to_vec()),
                    None => {
                        // Most often Redis dropped a subscriber that fell behind (its log says
                        // "overcoming of output buffer limits"): see `pubsub_limit`.
                        tracing::warn!("pub/sub connection lost (if Redis logged output buffer limits, raise client-output-buffer-limit pubsub); reconnecting");
                        break;
                    }
                },
            }
        }
        connected.store(false, Ordering::SeqCst);
    }
}

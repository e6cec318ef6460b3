//! Shard-channel messages on their way from the subscriber to the rooms, bounded in count
//! and in bytes: a message is up to a few KiB (`protocol::bounds`) but 65,536 of them while
//! the rooms are slow would still be a gigabyte. Beyond either bound a message is dropped
//! and counted; its sender's command is answered `unavailable` by its gateway's deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// The sending half, called from the subscriber's message callback (never waits).
pub struct InboxTx {
    tx: mpsc::Sender<Vec<u8>>,
    held: Arc<AtomicUsize>,
    bytes: usize,
}

/// The receiving half, read by the node's dispatch loop.
pub struct InboxRx {
    rx: mpsc::Receiver<Vec<u8>>,
    held: Arc<AtomicUsize>,
}

/// An inbox of at most `count` messages and `bytes` bytes of payload.
pub fn inbox(count: usize, bytes: usize) -> (InboxTx, InboxRx) {
    let (tx, rx) = mpsc::channel(count);
    let held = Arc::new(AtomicUsize::new(0));
    (
        InboxTx {
            tx,
            held: held.clone(),
            bytes,
        },
        InboxRx { rx, held },
    )
}

impl InboxTx {
    /// Queues `payload` unless either bound is reached; whether it was queued.
    pub fn offer(&self, payload: Vec<u8>) -> bool {
        let n = payload.len();
        let before = self.held.fetch_add(n, Ordering::SeqCst);
        // An empty inbox takes any one message, so one larger than the budget is not stuck.
        if before > 0 && before.saturating_add(n) > self.bytes {
            self.held.fetch_sub(n, Ordering::SeqCst);
            return false;
        }
        if self.tx.try_send(payload).is_err() {
            self.held.fetch_sub(n, Ordering::SeqCst);
            return false;
        }
        true
    }
}

impl InboxRx {
    /// The next message; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        let payload = self.rx.recv().await?;
        self.held.fetch_sub(payload.len(), Ordering::SeqCst);
        Some(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_bound_refuses_until_the_reader_takes_some() {
        let (tx, mut rx) = inbox(100, 1_000);
        assert!(tx.offer(vec![0; 600]));
        assert!(tx.offer(vec![0; 400]));
        // 1,000 bytes held: one more byte is over, though the count bound has room.
        assert!(!tx.offer(vec![0; 1]));
        assert_eq!(rx.recv().await.map(|p| p.len()), Some(600));
        assert!(tx.offer(vec![0; 600]));
        assert_eq!(rx.recv().await.map(|p| p.len()), Some(400));
        assert_eq!(rx.recv().await.map(|p| p.len()), Some(600));
    }

    #[tokio::test]
    async fn count_bound_still_holds_and_a_refusal_returns_its_bytes() {
        let (tx, mut rx) = inbox(2, 1_000);
        assert!(tx.offer(vec![0; 10]));
        assert!(tx.offer(vec![0; 10]));
        assert!(!tx.offer(vec![0; 10]));
        // The refused message's bytes were given back: 20 held, not 30.
        assert_eq!(tx.held.load(Ordering::SeqCst), 20);
        assert!(rx.recv().await.is_some());
        assert!(tx.offer(vec![0; 10]));
    }

    #[tokio::test]
    async fn an_empty_inbox_takes_a_message_larger_than_its_budget() {
        let (tx, mut rx) = inbox(10, 100);
        assert!(tx.offer(vec![0; 500]));
        assert!(!tx.offer(vec![0; 1]));
        assert_eq!(rx.recv().await.map(|p| p.len()), Some(500));
        assert!(tx.offer(vec![0; 1]));
    }
}

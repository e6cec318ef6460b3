//! A channel bounded in messages and in bytes, never waiting to send: the worker's inbox
//! of shard messages and its publish queue. Messages range from a hundred bytes to a join
//! snapshot of hundreds of KB, so a count alone bounds little. A message refused by either
//! bound is the caller's to count as dropped; an empty channel takes any one message, so
//! one larger than the whole budget is not stuck.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// The sending half (cheap to clone).
pub struct Sender<T> {
    tx: mpsc::Sender<(T, usize)>,
    held: Arc<AtomicUsize>,
    bytes: usize,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            held: self.held.clone(),
            bytes: self.bytes,
        }
    }
}

/// The receiving half.
pub struct Receiver<T> {
    rx: mpsc::Receiver<(T, usize)>,
    held: Arc<AtomicUsize>,
}

/// A channel of at most `count` messages and `bytes` bytes, as each sender counts them.
pub fn channel<T>(count: usize, bytes: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::channel(count);
    let held = Arc::new(AtomicUsize::new(0));
    (
        Sender {
            tx,
            held: held.clone(),
            bytes,
        },
        Receiver { rx, held },
    )
}

impl<T> Sender<T> {
    /// Queues `item` (`size` bytes) unless either bound is reached; whether it was queued.
    pub fn offer(&self, item: T, size: usize) -> bool {
        let before = self.held.fetch_add(size, Ordering::SeqCst);
        if before > 0 && before.saturating_add(size) > self.bytes {
            self.held.fetch_sub(size, Ordering::SeqCst);
            return false;
        }
        if self.tx.try_send((item, size)).is_err() {
            self.held.fetch_sub(size, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Bytes queued now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
}

impl<T> Receiver<T> {
    /// The next message; `None` once every sender is gone. Cancel-safe.
    pub async fn recv(&mut self) -> Option<T> {
        let (item, size) = self.rx.recv().await?;
        self.held.fetch_sub(size, Ordering::SeqCst);
        Some(item)
    }

    /// The next message if one is queued now.
    pub fn try_recv(&mut self) -> Option<T> {
        let (item, size) = self.rx.try_recv().ok()?;
        self.held.fetch_sub(size, Ordering::SeqCst);
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(tx: &Sender<Vec<u8>>, n: usize) -> bool {
        tx.offer(vec![0; n], n)
    }

    #[tokio::test]
    async fn bytes_bound_refuses_until_the_reader_takes_some() {
        let (tx, mut rx) = channel(100, 1_000);
        assert!(offer(&tx, 600));
        assert!(offer(&tx, 400));
        // 1,000 bytes held: one more byte is over, though the count bound has room.
        assert!(!offer(&tx, 1));
        assert_eq!(rx.recv().await.map(|p| p.len()), Some(600));
        assert!(offer(&tx, 600));
        assert_eq!(rx.recv().await.map(|p| p.len()), Some(400));
        assert_eq!(rx.recv().await.map(|p| p.len()), Some(600));
    }

    #[tokio::test]
    async fn count_bound_still_holds_and_a_refusal_returns_its_bytes() {
        let (tx, mut rx) = channel(2, 1_000);
        assert!(offer(&tx, 10));
        assert!(offer(&tx, 10));
        assert!(!offer(&tx, 10));
        // The refused message's bytes were given back: 20 held, not 30.
        assert_eq!(tx.held(), 20);
        assert!(rx.recv().await.is_some());
        assert!(offer(&tx, 10));
    }

    #[tokio::test]
    async fn an_empty_inbox_takes_a_message_larger_than_its_budget() {
        let (tx, mut rx) = channel(10, 100);
        assert!(offer(&tx, 500));
        assert!(!offer(&tx, 1));
        assert_eq!(rx.recv().await.map(|p| p.len()), Some(500));
        assert!(offer(&tx, 1));
    }
}

//! Remembered command ids: a retried `(user, id)` gets the same ack and has no second effect.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Acks of recent commands, bounded by count and age.
#[derive(Debug, Default)]
pub struct Idempotency {
    replies: HashMap<(String, String), Arc<str>>,
    order: VecDeque<((String, String), u64)>,
}

impl Idempotency {
    /// The ack a previous attempt got, if it is still remembered.
    pub fn get(&self, user_id: &str, id: &str) -> Option<Arc<str>> {
        self.replies
            .get(&(user_id.to_owned(), id.to_owned()))
            .cloned()
    }

    /// Remembers an ack.
    pub fn insert(&mut self, user_id: &str, id: &str, reply: Arc<str>, ts: u64, max: usize) {
        let key = (user_id.to_owned(), id.to_owned());
        if self.replies.insert(key.clone(), reply).is_none() {
            self.order.push_back((key, ts));
        }
        while self.order.len() > max {
            if let Some((old, _)) = self.order.pop_front() {
                self.replies.remove(&old);
            }
        }
    }

    /// Forgets ids older than `ttl_ms`.
    pub fn expire(&mut self, now_ms: u64, ttl_ms: u64) {
        while let Some((_, ts)) = self.order.front() {
            if now_ms.saturating_sub(*ts) <= ttl_ms {
                break;
            }
            if let Some((old, _)) = self.order.pop_front() {
                self.replies.remove(&old);
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_user_and_bounds() {
        let mut idem = Idempotency::default();
        idem.insert("u1", "a", Arc::from("ack-a"), 0, 2);
        assert_eq!(idem.get("u1", "a").as_deref(), Some("ack-a"));
        assert!(idem.get("u2", "a").is_none());
        idem.insert("u1", "b", Arc::from("ack-b"), 1, 2);
        idem.insert("u1", "c", Arc::from("ack-c"), 2, 2);
        assert!(idem.get("u1", "a").is_none());
        assert_eq!(idem.len(), 2);
        idem.expire(10_000, 5_000);
        assert!(idem.is_empty());
    }
}

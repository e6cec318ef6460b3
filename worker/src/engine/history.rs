//! The room's recent events, kept for `since_seq` recovery, bounded by count and age.

use std::collections::VecDeque;
use std::sync::Arc;

/// Recent events, oldest first, with strictly consecutive seqs.
#[derive(Debug, Default)]
pub struct History {
    events: VecDeque<(u64, u64, Arc<str>)>,
}

impl History {
    /// Records an event and drops what falls out of the window.
    pub fn push(&mut self, seq: u64, ts: u64, frame: Arc<str>, max: usize, ttl_ms: u64) {
        self.events.push_back((seq, ts, frame));
        while self.events.len() > max {
            self.events.pop_front();
        }
        self.expire(ts, ttl_ms);
    }

    /// Drops events older than `ttl_ms`.
    pub fn expire(&mut self, now_ms: u64, ttl_ms: u64) {
        while let Some((_, ts, _)) = self.events.front() {
            if now_ms.saturating_sub(*ts) > ttl_ms {
                self.events.pop_front();
            } else {
                break;
            }
        }
    }

    /// The events after `since_seq` up to `current`, or `None` when the gap is no longer
    /// covered (the client needs a snapshot).
    pub fn replay(&self, since_seq: u64, current: u64) -> Option<Vec<Arc<str>>> {
        if since_seq > current {
            return None;
        }
        if since_seq == current {
            return Some(Vec::new());
        }
        let first = self.events.front()?.0;
        if first > since_seq + 1 {
            return None;
        }
        Some(
            self.events
                .iter()
                .filter(|(seq, _, _)| *seq > since_seq)
                .map(|(_, _, f)| f.clone())
                .collect(),
        )
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(n: u64, max: usize) -> History {
        let mut h = History::default();
        for seq in 1..=n {
            h.push(seq, seq * 10, Arc::from(format!("e{seq}")), max, 1_000_000);
        }
        h
    }

    #[test]
    fn replays_the_gap_in_order() {
        let h = filled(10, 100);
        let got = h.replay(7, 10).unwrap_or_default();
        let got: Vec<&str> = got.iter().map(|f| &**f).collect();
        assert_eq!(got, vec!["e8", "e9", "e10"]);
        assert_eq!(h.replay(10, 10).map(|v| v.len()), Some(0));
    }

    #[test]
    fn gap_older_than_window_needs_snapshot() {
        let h = filled(10, 5);
        assert_eq!(h.len(), 5);
        assert!(h.replay(4, 10).is_none());
        assert!(h.replay(5, 10).is_some());
        assert!(h.replay(11, 10).is_none());
    }

    #[test]
    fn old_events_expire() {
        let mut h = History::default();
        h.push(1, 0, Arc::from("a"), 100, 1_000);
        h.push(2, 5_000, Arc::from("b"), 100, 1_000);
        assert_eq!(h.len(), 1);
        assert!(h.replay(0, 2).is_none());
        assert!(h.replay(1, 2).is_some());
    }
}

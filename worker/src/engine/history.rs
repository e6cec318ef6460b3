//! The room's recent events, kept for `since_seq` recovery, bounded by count, bytes and age.
//! The byte bound matters because events are not all small: a `queue.update` carries the whole
//! queue (up to `room.queue_max` entries, hundreds of KB), and a burst of queue moves would
//! otherwise keep `room.history_max` of them in memory.

use std::collections::VecDeque;
use std::sync::Arc;

use lockstep_shared::config::RoomConfig;

/// How much history a room keeps.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub events: usize,
    /// Frame bytes; the newest event is kept whatever its size.
    pub bytes: usize,
    pub ttl_ms: u64,
}

impl Bounds {
    pub fn of(cfg: &RoomConfig) -> Bounds {
        Bounds {
            events: cfg.history_max,
            bytes: cfg.history_max_bytes,
            ttl_ms: cfg.history_ttl_ms,
        }
    }
}

/// Recent events, oldest first, with strictly consecutive seqs.
#[derive(Debug, Default)]
pub struct History {
    events: VecDeque<(u64, u64, Arc<str>)>,
    /// Frame bytes held.
    bytes: usize,
}

impl History {
    /// Records an event and drops what falls out of the window.
    pub fn push(&mut self, seq: u64, ts: u64, frame: Arc<str>, bounds: Bounds) {
        self.bytes += frame.len();
        self.events.push_back((seq, ts, frame));
        while self.events.len() > bounds.events
            || (self.bytes > bounds.bytes && self.events.len() > 1)
        {
            self.pop_oldest();
        }
        self.expire(ts, bounds.ttl_ms);
    }

    fn pop_oldest(&mut self) {
        if let Some((_, _, frame)) = self.events.pop_front() {
            self.bytes -= frame.len();
        }
    }

    /// The oldest seq still held, if any.
    pub fn first_seq(&self) -> Option<u64> {
        self.events.front().map(|(seq, _, _)| *seq)
    }

    /// Drops events older than `ttl_ms`.
    pub fn expire(&mut self, now_ms: u64, ttl_ms: u64) {
        while let Some((_, ts, _)) = self.events.front() {
            if now_ms.saturating_sub(*ts) > ttl_ms {
                self.pop_oldest();
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

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(events: usize, bytes: usize, ttl_ms: u64) -> Bounds {
        Bounds {
            events,
            bytes,
            ttl_ms,
        }
    }

    fn filled(n: u64, max: usize) -> History {
        let mut h = History::default();
        for seq in 1..=n {
            let frame = Arc::from(format!("e{seq}"));
            h.push(seq, seq * 10, frame, bounds(max, usize::MAX, 1_000_000));
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
        h.push(1, 0, Arc::from("a"), bounds(100, usize::MAX, 1_000));
        h.push(2, 5_000, Arc::from("b"), bounds(100, usize::MAX, 1_000));
        assert_eq!(h.len(), 1);
        assert_eq!(h.bytes(), 1);
        assert!(h.replay(0, 2).is_none());
        assert!(h.replay(1, 2).is_some());
    }

    #[test]
    fn big_events_are_bounded_by_bytes_and_the_newest_always_stays() {
        let mut h = History::default();
        let limit = bounds(1_000, 10_000, u64::MAX);
        for seq in 1..=10 {
            h.push(seq, seq, Arc::from("x".repeat(3_000)), limit);
        }
        assert_eq!(
            (h.len(), h.bytes()),
            (3, 9_000),
            "three 3 KB events fit in 10 KB"
        );
        assert!(h.replay(6, 10).is_none(), "older gaps get a snapshot");
        assert_eq!(h.replay(7, 10).map(|v| v.len()), Some(3));
        // One event over the whole bound replaces everything, and is kept.
        h.push(11, 11, Arc::from("y".repeat(25_000)), limit);
        assert_eq!((h.len(), h.bytes()), (1, 25_000));
        assert_eq!(h.replay(10, 11).map(|v| v.len()), Some(1));
        // Small events after it push it out once they alone would fit.
        h.push(12, 12, Arc::from("z"), limit);
        assert_eq!((h.len(), h.bytes()), (1, 1));
    }
}

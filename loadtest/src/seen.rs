//! Which messages were delivered, in memory that does not grow with the run's length.
//!
//! Each client used to keep every message it had received in a `HashSet` (duplicates, and
//! whether each acknowledged message reached every member): a one-hour soak at 80 msg/s
//! per room is 288,000 entries per client, gigabytes over thousands of clients. Now:
//! - [`Seen`], per client: a sliding window of the last [`WINDOW`] message numbers of the
//!   newest two steps, for duplicates. A room replays at most its history (1,000 events by
//!   default), well inside the window; a message older than the window is counted as a
//!   duplicate (it cannot be told apart), which shows in the report instead of hiding.
//! - [`DeliveryCounts`], per room: how many members received each measured message, one
//!   counter per message rather than one set entry per member and message.

use std::collections::HashMap;
use std::sync::Mutex;

/// Message numbers remembered per step, per client.
pub const WINDOW: u64 = 4_096;
const WORDS: usize = (WINDOW / 64) as usize;

/// The message numbers seen of one ramp step (fanout and the rest have only step 0).
struct StepWindow {
    step: usize,
    /// The window is `[base, base + WINDOW)`; bit `k % WINDOW` is message `k`.
    base: u64,
    bits: Box<[u64; WORDS]>,
}

impl StepWindow {
    fn new(step: usize) -> Self {
        StepWindow {
            step,
            base: 0,
            bits: Box::new([0; WORDS]),
        }
    }

    fn slot(k: u64) -> (usize, u64) {
        let i = k % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// True when `k` is new; false for a repeat or a number older than the window.
    fn insert(&mut self, k: u64) -> bool {
        if k < self.base {
            return false;
        }
        if k >= self.base + WINDOW {
            let new_base = k + 1 - WINDOW;
            if new_base - self.base >= WINDOW {
                self.bits.fill(0);
            } else {
                for old in self.base..new_base {
                    let (w, b) = Self::slot(old);
                    self.bits[w] &= !b;
                }
            }
            self.base = new_base;
        }
        let (w, b) = Self::slot(k);
        let new = self.bits[w] & b == 0;
        self.bits[w] |= b;
        new
    }
}

/// One client's recently seen messages: the newest two steps (a ramp's stragglers of the
/// previous step still arrive while the next one starts).
#[derive(Default)]
pub struct Seen {
    steps: Vec<StepWindow>,
}

impl Seen {
    /// True the first time message `k` of `step` arrives.
    pub fn insert(&mut self, step: usize, k: u64) -> bool {
        if let Some(w) = self.steps.iter_mut().find(|w| w.step == step) {
            return w.insert(k);
        }
        if self.steps.len() == 2 {
            let oldest = if self.steps[0].step < self.steps[1].step {
                0
            } else {
                1
            };
            if step < self.steps[oldest].step {
                // Older than both steps kept: cannot be told apart from a repeat.
                return false;
            }
            self.steps.swap_remove(oldest);
        }
        let mut w = StepWindow::new(step);
        let new = w.insert(k);
        self.steps.push(w);
        new
    }
}

/// Per room: how many members received each message of the measured window, keyed
/// `step << 40 | k` like the publishers' acknowledged keys. A map, not a vector indexed by
/// `k`: `k` comes off the wire, and a garbled one must cost one entry, not a huge vector.
pub struct DeliveryCounts {
    rooms: Vec<Mutex<HashMap<u64, u32>>>,
}

/// The key of message `k` of `step`.
pub fn key(step: usize, k: u64) -> u64 {
    ((step as u64) << 40) | k
}

impl DeliveryCounts {
    pub fn new(rooms: usize) -> Self {
        DeliveryCounts {
            rooms: (0..rooms).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// One member of `room` received the message with `key` (once per member and message).
    pub fn record(&self, room: usize, key: u64) {
        if let Some(Ok(mut counts)) = self.rooms.get(room).map(|m| m.lock()) {
            let n = counts.entry(key).or_insert(0);
            *n = n.saturating_add(1);
        }
    }

    /// Members of `room` that received the message with `key`.
    pub fn count(&self, room: usize, key: u64) -> u32 {
        self.rooms
            .get(room)
            .and_then(|m| m.lock().ok())
            .and_then(|counts| counts.get(&key).copied())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_caught_in_order_and_out_of_order() {
        let mut s = Seen::default();
        assert!(s.insert(0, 5));
        assert!(s.insert(0, 3), "an earlier number arriving late is new");
        assert!(!s.insert(0, 5));
        assert!(!s.insert(0, 3));
        assert!(s.insert(0, 4));
    }

    #[test]
    fn the_window_slides_and_forgets_only_what_fell_out() {
        let mut s = Seen::default();
        for k in 0..10_000 {
            assert!(s.insert(0, k), "{k}");
        }
        // Inside the window: still known.
        assert!(!s.insert(0, 10_000 - WINDOW));
        assert!(!s.insert(0, 9_999));
        // Fell out of the window: reported as a repeat, never as new.
        assert!(!s.insert(0, 10_000 - WINDOW - 1));
        // A jump far ahead clears everything before it.
        assert!(s.insert(0, 1_000_000));
        assert!(s.insert(0, 1_000_000 - 1));
        assert!(!s.insert(0, 1_000_000 - WINDOW));
    }

    #[test]
    fn two_steps_are_kept_and_older_ones_count_as_repeats() {
        let mut s = Seen::default();
        assert!(s.insert(0, 1));
        assert!(s.insert(1, 1));
        assert!(!s.insert(0, 1), "the previous step is still remembered");
        assert!(s.insert(2, 1));
        assert!(
            !s.insert(0, 2),
            "two steps back: cannot tell, counted as a repeat"
        );
        assert!(!s.insert(1, 1));
        assert!(!s.insert(2, 1));
    }

    #[test]
    fn deliveries_are_counted_per_room_step_and_message() {
        let c = DeliveryCounts::new(2);
        for _ in 0..3 {
            c.record(1, key(0, 7));
        }
        c.record(1, key(2, 7));
        c.record(5, key(0, 7)); // no such room: ignored
        assert_eq!(c.count(1, key(0, 7)), 3);
        assert_eq!(c.count(1, key(2, 7)), 1);
        assert_eq!(c.count(1, key(0, 6)), 0);
        assert_eq!(c.count(0, key(0, 7)), 0);
        assert_eq!(c.count(9, key(0, 7)), 0);
        // A garbled number off the wire costs one entry, nothing more.
        c.record(0, key(0, u64::MAX >> 24));
        assert_eq!(c.count(0, key(0, u64::MAX >> 24)), 1);
    }
}

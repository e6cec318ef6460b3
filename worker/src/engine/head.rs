//! When a quiet room announces its latest seq (`ToGateway::RoomHead`). A gateway notices lost
//! events by the gap before the next one; the room's *last* events have no next one, so once
//! the room has been quiet for a moment its owner says how far it got, and says it once more
//! later in case that announcement was lost too. Two per burst of events, none while idle.

/// Delays after the room's last event at which its head is announced.
pub const AFTER_MS: [u64; 2] = [1_000, 10_000];

/// The announcements still due since the room's last event.
#[derive(Debug, Default)]
pub struct HeadSchedule {
    last_event_ms: Option<u64>,
    /// How many of [`AFTER_MS`] have been announced since then.
    sent: usize,
}

impl HeadSchedule {
    /// An event was made at `now`: the announcements start over.
    pub fn event(&mut self, now: u64) {
        self.last_event_ms = Some(now);
        self.sent = 0;
    }

    /// When the next announcement is due, if one is.
    pub fn due(&self) -> Option<u64> {
        let last = self.last_event_ms?;
        AFTER_MS
            .get(self.sent)
            .map(|after| last.saturating_add(*after))
    }

    /// Whether an announcement is due at `now`; if so it counts as made. A late call that
    /// passed several delays makes one announcement for all of them.
    pub fn take(&mut self, now: u64) -> bool {
        let mut due = false;
        while self.due().is_some_and(|d| now >= d) {
            self.sent += 1;
            due = true;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announces_twice_after_the_last_event_and_then_stays_quiet() {
        let mut s = HeadSchedule::default();
        assert_eq!(s.due(), None, "nothing to announce before any event");
        s.event(5_000);
        assert_eq!(s.due(), Some(6_000));
        assert!(!s.take(5_999));
        assert!(s.take(6_000));
        assert!(!s.take(6_001), "one announcement per delay");
        assert_eq!(s.due(), Some(15_000));
        assert!(s.take(15_000));
        assert_eq!(s.due(), None);
        assert!(!s.take(1_000_000));
    }

    #[test]
    fn a_new_event_starts_over_and_a_late_call_announces_once() {
        let mut s = HeadSchedule::default();
        s.event(0);
        assert!(s.take(1_000));
        s.event(2_000);
        assert_eq!(s.due(), Some(3_000));
        assert!(s.take(60_000), "both delays passed: one announcement");
        assert_eq!(s.due(), None);
    }
}

//! A circuit breaker as a pure state machine (time is passed in): closed → open on
//! consecutive failures or a failure rate over a window with a minimum volume, or at once on
//! a format break; open for a backoff that doubles per failed probe, with jitter; half-open
//! lets probes through and closes after enough successes.

use std::collections::VecDeque;

use lockstep_shared::config::BreakerConfig;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open { until_ms: u64 },
    HalfOpen,
}

impl BreakerState {
    /// `source.status` / metric spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// How a call failed; a format break opens the circuit at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 429, 5xx, timeouts, refused connections: count toward the thresholds.
    Transient,
    /// The upstream answered something we cannot parse: hammering will not help.
    Format,
}

/// One breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: BreakerState,
    consecutive: u32,
    /// (time, failed) of calls within the window, bounded by the window and a hard cap.
    window: VecDeque<(u64, bool)>,
    /// Open periods so far without a close; grows the backoff.
    trips: u32,
    half_open_ok: u32,
    /// Set while a half-open probe is out, so only one probe runs at a time.
    probing: bool,
    /// When that probe went out: a probe that never reported stops blocking after a while.
    probe_at: u64,
}

/// A half-open probe that has not reported after this long no longer blocks the next one.
const PROBE_STALE_MS: u64 = 60_000;

/// Calls remembered for the failure-rate window at most.
const WINDOW_CAP: usize = 1_024;

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker {
            cfg,
            state: BreakerState::Closed,
            consecutive: 0,
            window: VecDeque::new(),
            trips: 0,
            half_open_ok: 0,
            probing: false,
            probe_at: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether `allow` would admit a call now, without taking the probe slot.
    pub fn available(&self, now: u64) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open { until_ms } => now >= until_ms,
            BreakerState::HalfOpen => !self.probing || now >= self.probe_at + PROBE_STALE_MS,
        }
    }

    /// Whether a call may go out now. Moves open → half-open when the backoff is over and
    /// then admits one probe at a time.
    pub fn allow(&mut self, now: u64) -> bool {
        if !self.available(now) {
            return false;
        }
        if let BreakerState::Open { .. } = self.state {
            self.state = BreakerState::HalfOpen;
            self.half_open_ok = 0;
        }
        if self.state == BreakerState::HalfOpen {
            self.probing = true;
            self.probe_at = now;
        }
        true
    }

    /// When the breaker next admits a call, if it is open.
    pub fn retry_at(&self) -> Option<u64> {
        match self.state {
            BreakerState::Open { until_ms } => Some(until_ms),
            _ => None,
        }
    }

    pub fn on_success(&mut self, now: u64) {
        self.consecutive = 0;
        self.record(now, false);
        if self.state == BreakerState::HalfOpen {
            self.probing = false;
            self.half_open_ok += 1;
            if self.half_open_ok >= self.cfg.half_open_successes {
                self.state = BreakerState::Closed;
                self.trips = 0;
                self.window.clear();
            }
        }
    }

    /// Records a failure; `jitter` in 0..1 spreads the reopen time (pass `rand::random()`).
    pub fn on_failure(&mut self, now: u64, kind: Failure, jitter: f64) {
        self.consecutive += 1;
        self.record(now, true);
        let trip = match self.state {
            BreakerState::HalfOpen => true,
            BreakerState::Open { .. } => false,
            BreakerState::Closed => {
                kind == Failure::Format
                    || self.consecutive >= self.cfg.consecutive_failures
                    || self.rate_exceeded()
            }
        };
        if trip {
            self.open(now, jitter);
        }
    }

    fn open(&mut self, now: u64, jitter: f64) {
        let exp = self.trips.min(20);
        let base = self.cfg.open_base_ms.saturating_mul(1 << exp);
        let capped = base.min(self.cfg.open_max_ms);
        // Between 75 % and 125 % of the backoff, never past the maximum.
        let jittered = (capped as f64 * (0.75 + 0.5 * jitter.clamp(0.0, 1.0))) as u64;
        let period = jittered.clamp(1, self.cfg.open_max_ms.max(1));
        self.state = BreakerState::Open {
            until_ms: now + period,
        };
        self.trips = self.trips.saturating_add(1);
        self.probing = false;
        self.half_open_ok = 0;
    }

    fn record(&mut self, now: u64, failed: bool) {
        self.window.push_back((now, failed));
        let horizon = now.saturating_sub(self.cfg.window_ms);
        while self
            .window
            .front()
            .is_some_and(|(t, _)| *t < horizon || self.window.len() > WINDOW_CAP)
        {
            self.window.pop_front();
        }
    }

    fn rate_exceeded(&self) -> bool {
        let total = self.window.len() as u32;
        if total < self.cfg.min_volume.max(1) {
            return false;
        }
        let failed = self.window.iter().filter(|(_, f)| *f).count() as f64;
        failed / total as f64 >= self.cfg.failure_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            min_volume: 6,
            window_ms: 10_000,
            open_base_ms: 1_000,
            open_max_ms: 8_000,
            half_open_successes: 2,
        }
    }

    #[test]
    fn consecutive_failures_open_then_half_open_probe_closes() {
        let mut b = Breaker::new(cfg());
        for t in 0..2 {
            b.on_failure(t, Failure::Transient, 0.5);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure(2, Failure::Transient, 0.5);
        assert_eq!(b.state(), BreakerState::Open { until_ms: 1_002 });
        assert!(!b.allow(500));
        assert!(b.allow(1_002), "probe after the backoff");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow(1_003), "one probe at a time");
        b.on_success(1_010);
        assert_eq!(b.state(), BreakerState::HalfOpen, "needs two successes");
        assert!(b.allow(1_011));
        b.on_success(1_020);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn failed_probe_reopens_with_a_longer_backoff() {
        let mut b = Breaker::new(cfg());
        b.on_failure(0, Failure::Format, 0.5);
        assert_eq!(b.retry_at(), Some(1_000), "a format break opens at once");
        assert!(b.allow(1_000));
        b.on_failure(1_000, Failure::Transient, 0.5);
        assert_eq!(b.retry_at(), Some(3_000), "backoff doubled");
        assert!(b.allow(3_000));
        b.on_failure(3_000, Failure::Transient, 0.5);
        assert_eq!(b.retry_at(), Some(7_000));
        assert!(b.allow(7_000));
        b.on_failure(7_000, Failure::Transient, 1.0);
        assert_eq!(b.retry_at(), Some(15_000), "capped at open_max_ms");
    }

    #[test]
    fn failure_rate_over_window_with_minimum_volume() {
        let mut b = Breaker::new(cfg());
        // Alternate failures and successes: never 3 in a row, but 50 % once volume is 6.
        for t in 0..5u64 {
            if t % 2 == 0 {
                b.on_failure(t, Failure::Transient, 0.5);
            } else {
                b.on_success(t);
            }
        }
        assert_eq!(b.state(), BreakerState::Closed, "under the minimum volume");
        b.on_success(5);
        b.on_failure(6, Failure::Transient, 0.5);
        assert!(matches!(b.state(), BreakerState::Open { .. }), "4/7 failed");
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut b = Breaker::new(cfg());
        for t in 0..4u64 {
            b.on_failure(t, Failure::Transient, 0.5);
            b.on_success(t);
            b.on_success(t);
        }
        assert_eq!(b.state(), BreakerState::Closed, "4 of 10 failed");
        for t in 0..10u64 {
            b.on_success(20_000 + t);
        }
        b.on_failure(20_010, Failure::Transient, 0.5);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn jitter_spreads_reopen_times() {
        let mut low = Breaker::new(cfg());
        let mut high = Breaker::new(cfg());
        low.on_failure(0, Failure::Format, 0.0);
        high.on_failure(0, Failure::Format, 1.0);
        assert_eq!(low.retry_at(), Some(750));
        assert_eq!(high.retry_at(), Some(1_250));
    }
}

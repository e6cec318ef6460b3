//! Sync error: at sampled instants, each client's computed playback position against the room
//! clock's true position at the same instant. A state takes effect at its `at` (scheduled
//! starts), so both sides use the newest state already in effect: the truth from every
//! `player.state` the server had issued by then, the client from those it had received,
//! judged by its own `time.sync` offset. The generator runs beside the server, so the wall
//! clock is the server's; run it on the same machine (or NTP-synced ones) for this figure to
//! mean anything.

use hdrhistogram::Histogram;

/// A `player.state` as a client saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlayerObs {
    /// Wall clock µs when the client read it.
    pub recv_us: u64,
    pub seq: u64,
    /// Server ms when the event was created.
    pub ts_ms: u64,
    pub at_ms: u64,
    pub position_ms: f64,
    pub playing: bool,
    pub rate: f64,
}

impl PlayerObs {
    /// Position at server time `t_ms` (DESIGN.md §3: no time elapses before `at`).
    pub fn position_at(&self, t_ms: f64) -> f64 {
        if self.playing {
            self.position_ms + (t_ms - self.at_ms as f64).max(0.0) * self.rate
        } else {
            self.position_ms
        }
    }
}

/// One client's view: its observations (in receive order) and its clock offset estimate.
pub struct ClientSync {
    pub obs: Vec<PlayerObs>,
    /// Estimated server − local clock, ms.
    pub offset_ms: f64,
}

/// Most observations kept per client.
pub const OBS_MAX: usize = 20_000;

/// The newest state (by seq) whose `at` has come by `t_ms`.
fn in_effect(known: &[PlayerObs], t_ms: f64) -> Option<&PlayerObs> {
    known.iter().rev().find(|o| o.at_ms as f64 <= t_ms)
}

/// Samples every `step_us` over `[from_us, to_us)` (wall µs); returns errors in µs.
pub fn sync_error(
    rooms: &[Vec<&ClientSync>],
    from_us: u64,
    to_us: u64,
    step_us: u64,
) -> Histogram<u64> {
    let mut h = crate::figures::histogram();
    for clients in rooms {
        // The truth: every event any member saw, by seq.
        let mut truth: Vec<PlayerObs> =
            clients.iter().flat_map(|c| c.obs.iter().copied()).collect();
        truth.sort_by_key(|o| o.seq);
        truth.dedup_by_key(|o| o.seq);
        if truth.is_empty() {
            continue;
        }
        for c in clients {
            let mut t = from_us;
            let (mut ci, mut ti) = (0usize, 0usize);
            while t < to_us {
                while ci < c.obs.len() && c.obs[ci].recv_us <= t {
                    ci += 1;
                }
                while ti < truth.len() && truth[ti].ts_ms * 1000 <= t {
                    ti += 1;
                }
                let now_ms = t as f64 / 1000.0;
                let mine_at = now_ms + c.offset_ms;
                let mine = in_effect(&c.obs[..ci], mine_at).map(|o| o.position_at(mine_at));
                let real = in_effect(&truth[..ti], now_ms).map(|o| o.position_at(now_ms));
                if let (Some(mine), Some(real)) = (mine, real) {
                    let _ = h.record(((mine - real).abs() * 1000.0).round().max(1.0) as u64);
                }
                t += step_us;
            }
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(seq: u64, recv_ms: u64, ts: u64, at: u64, pos: f64, playing: bool) -> PlayerObs {
        PlayerObs {
            recv_us: recv_ms * 1000,
            seq,
            ts_ms: ts,
            at_ms: at,
            position_ms: pos,
            playing,
            rate: 1.0,
        }
    }

    #[test]
    fn a_client_that_knows_in_time_is_exact_and_a_late_one_is_off() {
        // Seek at ts 1000 to 5000 ms, playing from at = 1250.
        let seek = obs(2, 1_010, 1_000, 1_250, 5_000.0, true);
        let early = ClientSync {
            obs: vec![obs(1, 0, 0, 0, 0.0, true), seek],
            offset_ms: 0.0,
        };
        // The same event read 400 ms late: after `at`, its old view runs on.
        let mut late_seek = seek;
        late_seek.recv_us = 1_400_000;
        let late = ClientSync {
            obs: vec![obs(1, 0, 0, 0, 0.0, true), late_seek],
            offset_ms: 0.0,
        };
        let h = sync_error(&[vec![&early]], 500_000, 2_000_000, 10_000);
        assert!(h.max() <= 1, "exact: {}", h.max());
        let h = sync_error(&[vec![&early, &late]], 500_000, 2_000_000, 10_000);
        assert!(
            h.max() >= 3_000_000,
            "late client off by seconds: {}",
            h.max()
        );
        // A 3 ms offset error shows as 3 ms while playing.
        let skewed = ClientSync {
            obs: vec![obs(1, 0, 0, 0, 0.0, true)],
            offset_ms: 3.0,
        };
        let h = sync_error(&[vec![&skewed]], 100_000, 200_000, 10_000);
        assert!((2_990..=3_010).contains(&h.max()), "{}", h.max());
    }
}

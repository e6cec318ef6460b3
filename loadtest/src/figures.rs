//! The whole run's HDR histograms (fan-out latency, command → ack, reconnect time), shared
//! by every client through a few locked shards.
//!
//! One full-precision histogram (1 µs to 60 s, 3 significant figures) is ~136 KiB of
//! counters. Each client used to own three, so 10,000 idle clients held 4.3 GB of generator
//! RSS and a 50,000-client run would not fit a 24 GiB load machine; recording also missed
//! the cache on a different array per client. Shards are picked by client index, so two
//! runtime threads rarely want the same lock, and memory no longer grows with clients.

use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Shards: a few per runtime thread is plenty; the memory is this × 3 histograms.
const SHARDS: usize = 8;

/// A histogram for microsecond latencies up to 60 s, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .or_else(|_| Histogram::new(3))
        .unwrap_or_else(|_| {
            Histogram::new_with_max(u64::MAX / 2, 2).unwrap_or_else(|_| unreachable!())
        })
}

/// The histograms of one shard, or of the whole run once merged.
pub struct Figures {
    /// Intended send → received, µs, for messages in the measured window.
    pub latency: Histogram<u64>,
    /// Actual send → ack, µs (publishers).
    pub ack: Histogram<u64>,
    /// Disconnect → rejoin acked, µs.
    pub reconnect: Histogram<u64>,
}

impl Default for Figures {
    fn default() -> Self {
        Figures {
            latency: histogram(),
            ack: histogram(),
            reconnect: histogram(),
        }
    }
}

impl Figures {
    fn add(&mut self, other: &Figures) {
        let _ = self.latency.add(&other.latency);
        let _ = self.ack.add(&other.ack);
        let _ = self.reconnect.add(&other.reconnect);
    }
}

/// Every client's recordings, in [`SHARDS`] locked parts.
pub struct SharedFigures {
    shards: Vec<Mutex<Figures>>,
}

impl Default for SharedFigures {
    fn default() -> Self {
        SharedFigures {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Figures::default()))
                .collect(),
        }
    }
}

impl SharedFigures {
    /// Records into client `client`'s shard; a poisoned shard drops the sample (a panicked
    /// recorder already failed the run loudly).
    pub fn record(&self, client: usize, f: impl FnOnce(&mut Figures)) {
        if let Some(Ok(mut shard)) = self.shards.get(client % SHARDS).map(|m| m.lock()) {
            f(&mut shard);
        }
    }

    /// All shards added together.
    pub fn merged(&self) -> Figures {
        let mut all = Figures::default();
        for shard in &self.shards {
            if let Ok(s) = shard.lock() {
                all.add(&s);
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_from_every_shard_are_merged() {
        let shared = SharedFigures::default();
        for client in 0..100 {
            shared.record(client, |f| {
                let _ = f.latency.record(1_000 + client as u64);
                if client % 10 == 0 {
                    let _ = f.reconnect.record(5_000);
                }
            });
        }
        let all = shared.merged();
        assert_eq!(all.latency.len(), 100);
        assert_eq!(all.latency.min(), 1_000);
        assert_eq!(all.latency.max(), 1_099);
        assert_eq!(all.reconnect.len(), 10);
        assert_eq!(all.ack.len(), 0);
    }
}

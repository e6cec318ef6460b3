//! Compact log-scale latency buckets (10 % wide, 1 µs to 60 s: 188 counters) for the
//! per-second timeline and per-step ramp figures, where thousands of full HDR histograms
//! would not fit. The whole-run figures still come from HDR histograms.

/// Bucket growth factor.
const FACTOR: f64 = 1.1;
/// Enough buckets for 60 s in µs.
pub const BUCKETS: usize = 188;

/// Counts per log bucket.
#[derive(Clone, Debug)]
pub struct LogBuckets {
    counts: Box<[u32; BUCKETS]>,
    total: u64,
    max_us: u64,
}

impl Default for LogBuckets {
    fn default() -> Self {
        LogBuckets {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            max_us: 0,
        }
    }
}

fn index(us: u64) -> usize {
    let v = us.max(1) as f64;
    ((v.ln() / FACTOR.ln()) as usize).min(BUCKETS - 1)
}

/// Upper edge of bucket `i`, µs.
fn upper(i: usize) -> f64 {
    FACTOR.powi(i as i32 + 1)
}

impl LogBuckets {
    pub fn record(&mut self, us: u64) {
        let i = index(us);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    pub fn merge(&mut self, other: &LogBuckets) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The quantile `q` in ms (the bucket's upper edge: at most 10 % high).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                return upper(i).min(self.max_us as f64) / 1000.0;
            }
        }
        self.max_us as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.max_us as f64 / 1000.0
    }

    /// The largest value recorded, exact (the buckets only bound it).
    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    /// (index, count) of the buckets that are not empty: the compact form for reports.
    pub fn nonzero(&self) -> Vec<(u16, u32)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (i as u16, *c))
            .collect()
    }

    /// Buckets back from `nonzero`; indexes out of range (a damaged file) are dropped.
    pub fn from_parts(buckets: &[(u16, u32)], max_us: u64) -> LogBuckets {
        let mut b = LogBuckets::default();
        for &(i, c) in buckets {
            if let Some(slot) = b.counts.get_mut(usize::from(i)) {
                *slot = slot.saturating_add(c);
                b.total += u64::from(c);
            }
        }
        b.max_us = max_us;
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_ten_percent() {
        let mut b = LogBuckets::default();
        for us in 1..=10_000u64 {
            b.record(us);
        }
        for (q, exact) in [(0.5, 5.0), (0.99, 9.9), (0.999, 9.99)] {
            let got = b.quantile_ms(q);
            assert!(
                got >= exact * 0.999 && got <= exact * 1.1,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(b.max_ms(), 10.0);
        let mut c = LogBuckets::default();
        c.record(60_000_000);
        c.merge(&b);
        assert_eq!(c.count(), 10_001);
        assert_eq!(c.max_ms(), 60_000.0);
    }
}

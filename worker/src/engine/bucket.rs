//! A token bucket driven by the caller's clock, so limits are deterministic in tests.

/// `rate` tokens per second refill up to `burst`; each take costs one token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(burst: f64, now_ms: u64) -> Self {
        TokenBucket {
            tokens: burst,
            last_ms: now_ms,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, rate: f64, burst: f64, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last_ms = self.last_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is back to full at `now_ms` (and can be forgotten).
    pub fn is_full(&self, rate: f64, burst: f64, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens + elapsed * rate >= burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let mut b = TokenBucket::full(3.0, 0);
        assert!(b.try_take(1.0, 3.0, 0));
        assert!(b.try_take(1.0, 3.0, 0));
        assert!(b.try_take(1.0, 3.0, 0));
        assert!(!b.try_take(1.0, 3.0, 0));
        assert!(!b.try_take(1.0, 3.0, 999));
        assert!(b.try_take(1.0, 3.0, 1_000));
        assert!(b.is_full(1.0, 3.0, 10_000));
    }

    #[test]
    fn clock_going_backwards_grants_nothing() {
        let mut b = TokenBucket::full(1.0, 5_000);
        assert!(b.try_take(1.0, 1.0, 5_000));
        assert!(!b.try_take(1.0, 1.0, 1_000));
    }
}

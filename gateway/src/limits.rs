//! Per-IP connection-attempt limiting with a bounded table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use lockstep_worker::engine::TokenBucket;

/// Most IPs tracked at once; when full, buckets that have refilled are dropped first, and
/// if none has, the table is cleared (fails open rather than growing without bound).
const MAX_TRACKED_IPS: usize = 100_000;

/// Token bucket per source IP.
pub struct IpLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl IpLimiter {
    pub fn new(rate: f64, burst: f64) -> IpLimiter {
        IpLimiter {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` may open another connection now.
    pub fn allow(&self, ip: IpAddr, now_ms: u64) -> bool {
        let Ok(mut map) = self.buckets.lock() else {
            return true;
        };
        if map.len() >= MAX_TRACKED_IPS && !map.contains_key(&ip) {
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| !b.is_full(rate, burst, now_ms));
            if map.len() >= MAX_TRACKED_IPS {
                map.clear();
            }
        }
        map.entry(ip)
            .or_insert_with(|| TokenBucket::full(self.burst, now_ms))
            .try_take(self.rate, self.burst, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_each_ip_separately() {
        let l = IpLimiter::new(1.0, 2.0);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        assert!(l.allow(a, 0));
        assert!(l.allow(a, 0));
        assert!(!l.allow(a, 0));
        assert!(l.allow(b, 0));
        assert!(l.allow(a, 1_000));
    }
}

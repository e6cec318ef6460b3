//! The proxy pool: every upstream request goes through one of the configured HTTP CONNECT
//! proxies, rotated round-robin among those whose breaker admits calls, preferring the
//! healthiest (an exponentially weighted success score). An empty pool means direct; a
//! configured pool is never bypassed: with every proxy open, the request fails.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use lockstep_shared::config::BreakerConfig;
use lockstep_shared::metrics as names;
use url::Url;

use super::breaker::{Breaker, BreakerState, Failure};
use super::observe_breaker;

/// How a request reaches its upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Direct,
    /// Through the pool's proxy at this index.
    Proxy {
        index: usize,
        host: String,
        port: u16,
    },
}

struct Entry {
    host: String,
    port: u16,
    label: String,
    health: Mutex<Health>,
}

struct Health {
    breaker: Breaker,
    /// 1.0 = every recent call succeeded.
    score: f64,
    /// When the score last changed: a proxy skipped for its score earns it back over time,
    /// so a recovered proxy rejoins the rotation.
    at: u64,
}

impl Health {
    fn effective_score(&self, now: u64) -> f64 {
        (self.score + now.saturating_sub(self.at) as f64 / SCORE_RECOVERY_MS).min(1.0)
    }
}

/// Time for a score to recover fully without new outcomes.
const SCORE_RECOVERY_MS: f64 = 60_000.0;

/// Weight of the newest outcome in the score.
const SCORE_ALPHA: f64 = 0.3;

/// The configured proxies and their health.
pub struct ProxyPool {
    entries: Vec<Entry>,
    next: AtomicUsize,
}

/// No proxy may take a request right now.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("every configured proxy is unavailable (circuit open)")]
pub struct NoProxy;

impl ProxyPool {
    /// Proxies that do not parse were already refused by config validation; skipped here.
    pub fn new(proxies: &[String], breaker: &BreakerConfig) -> ProxyPool {
        let entries = proxies
            .iter()
            .filter_map(|p| Url::parse(p).ok())
            .filter_map(|u| {
                let host = u.host_str()?.to_owned();
                let port = u.port_or_known_default()?;
                Some((host, port))
            })
            .enumerate()
            .map(|(i, (host, port))| Entry {
                host,
                port,
                label: i.to_string(),
                health: Mutex::new(Health {
                    breaker: Breaker::new(breaker.clone()),
                    score: 1.0,
                    at: 0,
                }),
            })
            .collect();
        ProxyPool {
            entries,
            next: AtomicUsize::new(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many proxies are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The route for the next request.
    pub fn pick(&self, now: u64) -> Result<Route, NoProxy> {
        let n = self.entries.len();
        if n == 0 {
            return Ok(Route::Direct);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, f64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let Ok(h) = self.entries[i].health.lock() else {
                continue;
            };
            let score = h.effective_score(now);
            if h.breaker.available(now) && best.is_none_or(|(_, s)| score > s + 0.25) {
                best = Some((i, score));
            }
        }
        let (i, _) = best.ok_or(NoProxy)?;
        let e = &self.entries[i];
        if let Ok(mut h) = e.health.lock() {
            let before = h.breaker.state();
            if !h.breaker.allow(now) {
                return Err(NoProxy);
            }
            observe_breaker("proxy", before, h.breaker.state());
        }
        Ok(Route::Proxy {
            index: i,
            host: e.host.clone(),
            port: e.port,
        })
    }

    /// Records how a request through `route` went at the proxy level (connect, CONNECT,
    /// upstream 429 = this exit address is throttled).
    pub fn report(&self, route: &Route, ok: bool, now: u64) {
        let Route::Proxy { index, .. } = route else {
            return;
        };
        let Some(e) = self.entries.get(*index) else {
            return;
        };
        metrics::counter!(names::INGEST_PROXY_REQUESTS, "proxy" => e.label.clone(),
            "outcome" => if ok { "ok" } else { "failed" })
        .increment(1);
        let Ok(mut h) = e.health.lock() else { return };
        let before = h.breaker.state();
        h.score = h.effective_score(now);
        h.at = now;
        if ok {
            h.score = h.score * (1.0 - SCORE_ALPHA) + SCORE_ALPHA;
            h.breaker.on_success(now);
        } else {
            h.score *= 1.0 - SCORE_ALPHA;
            h.breaker
                .on_failure(now, Failure::Transient, rand::random());
        }
        observe_breaker("proxy", before, h.breaker.state());
    }

    /// Each proxy's breaker state, for tests and diagnostics.
    pub fn states(&self) -> Vec<BreakerState> {
        self.entries
            .iter()
            .filter_map(|e| e.health.lock().ok().map(|h| h.breaker.state()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> ProxyPool {
        let urls: Vec<String> = (0..n)
            .map(|i| format!("http://127.0.0.{}:3128", i + 1))
            .collect();
        ProxyPool::new(
            &urls,
            &BreakerConfig {
                consecutive_failures: 2,
                ..BreakerConfig::default()
            },
        )
    }

    fn index(r: Route) -> usize {
        match r {
            Route::Proxy { index, .. } => index,
            Route::Direct => usize::MAX,
        }
    }

    #[test]
    fn empty_pool_is_direct() {
        assert_eq!(pool(0).pick(0), Ok(Route::Direct));
    }

    #[test]
    fn healthy_proxies_rotate() {
        let p = pool(3);
        let picks: Vec<usize> = (0..6)
            .map(|_| index(p.pick(0).unwrap_or(Route::Direct)))
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_low_score_is_skipped_and_earned_back_over_time() {
        let p = pool(2);
        let one = Route::Proxy {
            index: 1,
            host: "127.0.0.2".into(),
            port: 3128,
        };
        p.report(&one, false, 0);
        for _ in 0..4 {
            assert_eq!(index(p.pick(1).unwrap_or(Route::Direct)), 0);
        }
        let later: Vec<usize> = (0..4)
            .map(|_| index(p.pick(60_000).unwrap_or(Route::Direct)))
            .collect();
        assert!(later.contains(&1), "recovered proxy rejoins: {later:?}");
    }

    #[test]
    fn failing_proxy_is_skipped_then_none_left_is_an_error() {
        let p = pool(2);
        let dead = Route::Proxy {
            index: 1,
            host: "127.0.0.2".into(),
            port: 3128,
        };
        p.report(&dead, false, 0);
        p.report(&dead, false, 0);
        for _ in 0..4 {
            assert_eq!(index(p.pick(1).unwrap_or(Route::Direct)), 0);
        }
        let other = Route::Proxy {
            index: 0,
            host: "127.0.0.1".into(),
            port: 3128,
        };
        p.report(&other, false, 1);
        p.report(&other, false, 1);
        assert_eq!(p.pick(2), Err(NoProxy), "never bypasses a configured pool");
    }
}

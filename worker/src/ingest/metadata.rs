//! Video metadata lookups for queued entries, shared by every room on the node. Each
//! lookup reads the video's watch page (through the proxy pool, with a browser's headers)
//! unless a recent answer is cached. The node as a whole is held to a fetch rate, a number
//! of fetches at once and a number of lookups waiting; one circuit breaker stops all
//! fetches while YouTube refuses them or serves a page we cannot read.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lockstep_shared::config::{BreakerConfig, MetadataConfig};
use lockstep_shared::metrics as names;
use lru::LruCache;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::breaker::{Breaker, Failure};
use super::http::HttpClient;
use super::youtube::video::{parse_video, VideoInfo};
use super::{forget_breaker, observe_breaker, profiles};
use crate::clock::now_ms;
use crate::engine::{TokenBucket, VideoMeta};

/// The breaker's scope label.
const SCOPE: &str = "youtube_metadata";

/// What a lookup came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(VideoMeta),
    /// Upstream says the video cannot be played, and why.
    Unavailable(String),
    /// No answer this time (upstream error, circuit open, node busy, shutting down).
    Failed(String),
}

struct Cached {
    lookup: Lookup,
    until_ms: u64,
}

struct State {
    cache: LruCache<String, Cached>,
    bucket: TokenBucket,
    breaker: Breaker,
}

/// The node's lookup service.
pub struct Metadata {
    cfg: MetadataConfig,
    base_url: String,
    http: Arc<HttpClient>,
    state: Mutex<State>,
    fetches: Semaphore,
    waiting: AtomicUsize,
}

/// Counts a lookup as waiting until dropped.
struct WaitingGuard<'a>(&'a AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Metadata {
    pub fn new(
        cfg: MetadataConfig,
        breaker: BreakerConfig,
        base_url: &str,
        http: Arc<HttpClient>,
    ) -> Metadata {
        let entries = NonZeroUsize::new(cfg.cache_entries).unwrap_or(NonZeroUsize::MIN);
        Metadata {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http,
            state: Mutex::new(State {
                cache: LruCache::new(entries),
                bucket: TokenBucket::full(cfg.burst, now_ms()),
                breaker: Breaker::new(breaker),
            }),
            fetches: Semaphore::new(cfg.concurrency.max(1)),
            waiting: AtomicUsize::new(0),
            cfg,
        }
    }

    /// What is known of `video_id`, fetching its page if nothing recent is cached. Returns
    /// `Failed` at once when too many lookups wait, and when `cancel` fires.
    pub async fn lookup(&self, video_id: &str, cancel: &CancellationToken) -> Lookup {
        if let Some(hit) = self.cached(video_id) {
            count("cached");
            return hit;
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.cfg.waiting_max {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            count("busy");
            return Lookup::Failed("too many lookups waiting".into());
        }
        let waiting = WaitingGuard(&self.waiting);
        let _permit = tokio::select! {
            _ = cancel.cancelled() => return Lookup::Failed("cancelled".into()),
            p = self.fetches.acquire() => match p {
                Ok(p) => p,
                Err(_) => return Lookup::Failed("closed".into()),
            },
        };
        // Another room may have fetched it while this one waited.
        if let Some(hit) = self.cached(video_id) {
            count("cached");
            return hit;
        }
        if let Err(why) = self.admit(cancel).await {
            count("failed");
            return Lookup::Failed(why);
        }
        drop(waiting);
        let lookup = tokio::select! {
            _ = cancel.cancelled() => return Lookup::Failed("cancelled".into()),
            l = self.fetch(video_id) => l,
        };
        let now = now_ms();
        let ttl = match &lookup {
            Lookup::Found(_) => self.cfg.cache_ttl_ms,
            Lookup::Unavailable(_) | Lookup::Failed(_) => self.cfg.failure_ttl_ms,
        };
        count(match &lookup {
            Lookup::Found(_) => "found",
            Lookup::Unavailable(_) => "unavailable",
            Lookup::Failed(_) => "failed",
        });
        self.lock().cache.put(
            video_id.to_owned(),
            Cached {
                lookup: lookup.clone(),
                until_ms: now.saturating_add(ttl),
            },
        );
        lookup
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves a cache that is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self, video_id: &str) -> Option<Lookup> {
        let now = now_ms();
        let mut s = self.lock();
        match s.cache.get(video_id) {
            Some(c) if c.until_ms > now => Some(c.lookup.clone()),
            Some(_) => {
                s.cache.pop(video_id);
                None
            }
            None => None,
        }
    }

    /// Waits for a token of the node's fetch rate; refuses while the breaker is open.
    async fn admit(&self, cancel: &CancellationToken) -> Result<(), String> {
        loop {
            {
                let now = now_ms();
                let mut s = self.lock();
                if !s.breaker.available(now) {
                    return Err("YouTube lookups paused (circuit open)".into());
                }
                if s.bucket.try_take(self.cfg.rate_per_s, self.cfg.burst, now) {
                    let before = s.breaker.state();
                    let allowed = s.breaker.allow(now);
                    observe_breaker(SCOPE, before, s.breaker.state());
                    return if allowed {
                        Ok(())
                    } else {
                        Err("YouTube lookups paused (circuit open)".into())
                    };
                }
            }
            let wait = Duration::from_secs_f64((1.0_f64 / self.cfg.rate_per_s).min(1.0));
            tokio::select! {
                _ = cancel.cancelled() => return Err("cancelled".into()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn fetch(&self, video_id: &str) -> Lookup {
        let url = format!("{}/watch?v={video_id}", self.base_url);
        let url = match Url::parse(&url) {
            Ok(u) => u,
            Err(e) => return Lookup::Failed(format!("bad URL: {e}")),
        };
        let outcome = match self
            .http
            .request("youtube", &url, None, profiles::pick(), &[])
            .await
        {
            Ok(resp) => {
                let html = String::from_utf8_lossy(&resp.body);
                parse_video(&html, video_id).map_err(|e| (Failure::Format, e.to_string()))
            }
            Err(e) => Err((Failure::Transient, e.to_string())),
        };
        let now = now_ms();
        let mut s = self.lock();
        let before = s.breaker.state();
        let lookup = match outcome {
            Ok(info) => {
                s.breaker.on_success(now);
                match info {
                    VideoInfo::Found(meta) => Lookup::Found(meta),
                    VideoInfo::Unavailable(why) => Lookup::Unavailable(why),
                }
            }
            Err((kind, why)) => {
                s.breaker.on_failure(now, kind, rand::random());
                tracing::warn!(video = %video_id, cause = %why, "video metadata lookup failed");
                Lookup::Failed(why)
            }
        };
        observe_breaker(SCOPE, before, s.breaker.state());
        lookup
    }
}

impl Drop for Metadata {
    fn drop(&mut self) {
        forget_breaker(SCOPE, self.lock().breaker.state());
    }
}

fn count(outcome: &'static str) {
    metrics::counter!(names::INGEST_METADATA_LOOKUPS, "outcome" => outcome).increment(1);
}

//! Video metadata lookups for queued entries, and playlist reads, shared by every room on
//! the node. Each lookup reads the video's watch page (through the proxy pool, with a browser's headers)
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
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::breaker::{Breaker, Failure};
use super::http::HttpClient;
use super::youtube::page::PageError;
use super::youtube::playlist::{parse_more, parse_playlist};
use super::youtube::video::parse_video;
use super::{forget_breaker, observe_breaker, profiles};
use crate::clock::now_ms;
use crate::engine::{PlaylistItem, TokenBucket, VideoMeta};

/// Pages of a playlist read at most (100 videos each).
const PLAYLIST_PAGES: usize = 10;

/// The breaker's scope label.
const SCOPE: &str = "youtube_metadata";

/// What a lookup came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Upstream's answer, which may be that the video cannot be played.
    Found(VideoMeta),
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
        let _permit = match self.turn(cancel).await {
            Ok(p) => p,
            Err(why) => return Lookup::Failed(why),
        };
        // Another room may have fetched it while this one waited.
        if let Some(hit) = self.cached(video_id) {
            count("cached");
            return hit;
        }
        let path = format!("watch?v={video_id}");
        let lookup = tokio::select! {
            _ = cancel.cancelled() => return Lookup::Failed("cancelled".into()),
            r = self.fetch(&path, None, &[], |html| parse_video(html, video_id)) => match r {
                Ok(meta) => Lookup::Found(meta),
                Err(why) => Lookup::Failed(why),
            },
        };
        let now = now_ms();
        let (ttl, outcome) = match &lookup {
            Lookup::Found(m) if m.unavailable.is_none() => (self.cfg.cache_ttl_ms, "found"),
            Lookup::Found(_) => (self.cfg.failure_ttl_ms, "unavailable"),
            Lookup::Failed(_) => (self.cfg.failure_ttl_ms, "failed"),
        };
        count(outcome);
        self.lock().cache.put(
            video_id.to_owned(),
            Cached {
                lookup: lookup.clone(),
                until_ms: now.saturating_add(ttl),
            },
        );
        lookup
    }

    /// Playlist `list_id`'s videos in order, until `want` are read (a page of 100 at a time, at most
    /// `PLAYLIST_PAGES` pages, each read at the node's rate), unplayable ones marked; the
    /// others seed the video cache with their titles and lengths. A later page that fails
    /// ends the list where it got to. Waits its turn like a lookup.
    pub async fn playlist(
        &self,
        list_id: &str,
        want: usize,
        cancel: &CancellationToken,
    ) -> Result<Vec<PlaylistItem>, String> {
        let _permit = self.turn(cancel).await?;
        let path = format!("playlist?list={list_id}");
        let page = tokio::select! {
            _ = cancel.cancelled() => return Err("cancelled".into()),
            r = self.fetch(&path, None, &[], parse_playlist) => r,
        };
        let page = match page {
            Ok(p) => p,
            Err(why) => {
                count("failed");
                return Err(format!("the playlist could not be read: {why}"));
            }
        };
        count("playlist");
        if let Some(alert) = page.alert {
            return Err(alert);
        }
        let mut items = page.items;
        let mut next = page.continuation;
        let mut pages = 1;
        while let (Some(token), Some(client)) = (next.take(), page.client.as_ref()) {
            if items.len() >= want || pages >= PLAYLIST_PAGES {
                break;
            }
            if let Err(why) = self.admit(cancel).await {
                tracing::warn!(playlist = %list_id, cause = %why, "playlist cut short");
                break;
            }
            let path = format!(
                "youtubei/v1/browse?key={}&prettyPrint=false",
                client.api_key
            );
            let (body, extra) = client.continuation_request(&self.base_url, &token);
            let more = tokio::select! {
                _ = cancel.cancelled() => return Err("cancelled".into()),
                r = self.fetch(&path, Some(body), &extra, parse_more) => r,
            };
            match more {
                Ok((more, after)) => {
                    count("playlist");
                    items.extend(more);
                    next = after;
                    pages += 1;
                }
                Err(why) => {
                    count("failed");
                    tracing::warn!(playlist = %list_id, cause = %why, "playlist cut short");
                    break;
                }
            }
        }
        let until_ms = now_ms().saturating_add(self.cfg.cache_ttl_ms);
        let mut s = self.lock();
        let known =
            |i: &&PlaylistItem| i.meta.duration_ms.is_some() && i.meta.unavailable.is_none();
        for item in items.iter().filter(known) {
            let lookup = Lookup::Found(item.meta.clone());
            s.cache
                .put(item.video_id.clone(), Cached { lookup, until_ms });
        }
        Ok(items)
    }

    /// Waits for a fetch slot and a token of the node's rate; refuses when too many wait,
    /// while the breaker is open, and on `cancel`. The permit is the slot.
    async fn turn(&self, cancel: &CancellationToken) -> Result<SemaphorePermit<'_>, String> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.cfg.waiting_max {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            count("busy");
            return Err("too many lookups waiting".into());
        }
        let _waiting = WaitingGuard(&self.waiting);
        let permit = tokio::select! {
            _ = cancel.cancelled() => return Err("cancelled".into()),
            p = self.fetches.acquire() => p.map_err(|_| "closed".to_owned())?,
        };
        if let Err(why) = self.admit(cancel).await {
            count("failed");
            return Err(why);
        }
        Ok(permit)
    }

    /// How long after a failed lookup asking again can reach YouTube (the failure is
    /// cached until then).
    pub fn retry_after(&self) -> Duration {
        Duration::from_millis(self.cfg.failure_ttl_ms.saturating_add(100))
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

    /// GETs `{base_url}/{path}` (POSTs `json_body` when given) and parses the answer;
    /// upstream errors and unreadable answers count against the breaker.
    async fn fetch<T>(
        &self,
        path: &str,
        json_body: Option<String>,
        extra: &[(&'static str, String)],
        parse: impl FnOnce(&str) -> Result<T, PageError>,
    ) -> Result<T, String> {
        let url = match Url::parse(&format!("{}/{path}", self.base_url)) {
            Ok(u) => u,
            Err(e) => return Err(format!("bad URL: {e}")),
        };
        let outcome = match self
            .http
            .request("youtube", &url, json_body, profiles::pick(), extra)
            .await
        {
            Ok(resp) => {
                let html = String::from_utf8_lossy(&resp.body);
                parse(&html).map_err(|e| (Failure::Format, e.to_string()))
            }
            Err(e) => Err((Failure::Transient, e.to_string())),
        };
        let now = now_ms();
        let mut s = self.lock();
        let before = s.breaker.state();
        match &outcome {
            Ok(_) => s.breaker.on_success(now),
            Err((kind, why)) => {
                s.breaker.on_failure(now, *kind, rand::random());
                tracing::warn!(page = %path, cause = %why, "YouTube metadata read failed");
            }
        }
        observe_breaker(SCOPE, before, s.breaker.state());
        outcome.map_err(|(_, why)| why)
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

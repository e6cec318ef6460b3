//! Chat ingestion (DESIGN.md §4): upstream endpoints, the proxy pool, circuit breakers and
//! timings (the per-room cap is `room.ingest_rate`). Endpoints are plain settings so tests and staging point them at fakes.

use serde::{Deserialize, Deserializer, Serialize};

/// Twitch, YouTube, proxies, breakers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IngestConfig {
    /// Whether attached sources run at all; `false` keeps them attached but idle.
    pub enabled: bool,
    /// HTTP CONNECT proxies (`http://host:port`), comma-separated in the environment.
    /// Empty = direct; when set, no upstream request bypasses them.
    #[serde(deserialize_with = "comma_list")]
    pub proxies: Vec<String>,
    /// Connect, handshake and request deadline for one upstream call.
    pub request_timeout_ms: u64,
    /// Largest upstream HTTP body read, in bytes.
    pub max_body_bytes: usize,
    pub twitch: TwitchConfig,
    pub youtube: YoutubeConfig,
    pub metadata: MetadataConfig,
    pub breaker: BreakerConfig,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            enabled: true,
            proxies: Vec::new(),
            request_timeout_ms: 10_000,
            max_body_bytes: 4 * 1024 * 1024,
            twitch: TwitchConfig::default(),
            youtube: YoutubeConfig::default(),
            metadata: MetadataConfig::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

/// Twitch chat over IRC-over-WebSocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TwitchConfig {
    /// `wss://` (or `ws://` for local fakes) IRC endpoint.
    pub url: String,
    /// Channels multiplexed on one connection.
    pub channels_per_connection: usize,
    /// JOINs allowed per window across the whole cluster (Twitch allows 20 per 10 s).
    pub join_limit: u32,
    /// The JOIN limiter's window.
    pub join_window_ms: u64,
    /// First reconnect delay; doubles per failure with full jitter.
    pub backoff_base_ms: u64,
    /// Longest reconnect delay.
    pub backoff_max_ms: u64,
    /// A connection silent this long (no line, no PONG) is considered dead.
    pub idle_timeout_ms: u64,
}

impl Default for TwitchConfig {
    fn default() -> Self {
        TwitchConfig {
            url: "wss://irc-ws.chat.twitch.tv:443".into(),
            channels_per_connection: 50,
            join_limit: 20,
            join_window_ms: 10_000,
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            idle_timeout_ms: 6 * 60 * 1000,
        }
    }
}

/// YouTube live chat through InnerTube.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct YoutubeConfig {
    /// Base of the page and InnerTube URLs.
    pub base_url: String,
    /// How often a channel that is not live is checked again (±25 % jitter).
    pub live_check_ms: u64,
    /// Shortest poll interval, whatever `timeoutMs` says.
    pub poll_min_ms: u64,
    /// Longest poll interval.
    pub poll_max_ms: u64,
}

impl Default for YoutubeConfig {
    fn default() -> Self {
        YoutubeConfig {
            base_url: "https://www.youtube.com".into(),
            live_check_ms: 90_000,
            poll_min_ms: 1_000,
            poll_max_ms: 10_000,
        }
    }
}

/// Titles and durations of queued videos, read from their watch pages (at
/// `youtube.base_url`, through the proxy pool). Lookups are shared by every room on the
/// node: cached, rate limited and few at a time, so a flood of `queue.add`s cannot make
/// the node hammer YouTube.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetadataConfig {
    /// Whether queued entries get titles and durations; off, they keep `duration_ms: null`.
    pub enabled: bool,
    /// Page fetches per second for the whole node…
    pub rate_per_s: f64,
    /// …with this burst.
    pub burst: f64,
    /// Page fetches at once.
    pub concurrency: usize,
    /// Lookups waiting for a fetch slot; more are answered "busy" at once.
    pub waiting_max: usize,
    /// Videos remembered (least recently used go first).
    pub cache_entries: usize,
    /// How long a found video's title and duration are reused.
    pub cache_ttl_ms: u64,
    /// How long an unavailable video or a failed fetch is not tried again.
    pub failure_ttl_ms: u64,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            enabled: true,
            rate_per_s: 2.0,
            burst: 20.0,
            concurrency: 4,
            waiting_max: 1_000,
            cache_entries: 10_000,
            cache_ttl_ms: 24 * 60 * 60 * 1000,
            failure_ttl_ms: 10 * 60 * 1000,
        }
    }
}

/// Circuit breakers, one per source and one per proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub consecutive_failures: u32,
    /// Failure ratio over the window that opens the circuit…
    pub failure_rate: f64,
    /// …once at least this many calls fell in the window.
    pub min_volume: u32,
    /// The failure-rate window.
    pub window_ms: u64,
    /// First open period; doubles each time a probe fails, with jitter.
    pub open_base_ms: u64,
    /// Longest open period.
    pub open_max_ms: u64,
    /// Successful probes in half-open that close the circuit.
    pub half_open_successes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_volume: 10,
            window_ms: 60_000,
            open_base_ms: 5_000,
            open_max_ms: 5 * 60 * 1000,
            half_open_successes: 1,
        }
    }
}

impl IngestConfig {
    /// Problems, for `Config::validate`.
    pub fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        for p in &self.proxies {
            match url::Url::parse(p) {
                Ok(u) if u.scheme() == "http" && u.host_str().is_some() => {}
                _ => errs.push(format!("ingest.proxies: `{p}` is not http://host:port")),
            }
        }
        match url::Url::parse(&self.twitch.url) {
            Ok(u) if matches!(u.scheme(), "ws" | "wss") => {}
            _ => errs.push(format!(
                "ingest.twitch.url `{}` is not ws(s)://",
                self.twitch.url
            )),
        }
        match url::Url::parse(&self.youtube.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => errs.push(format!(
                "ingest.youtube.base_url `{}` is not http(s)://",
                self.youtube.base_url
            )),
        }
        if self.twitch.channels_per_connection == 0 || self.twitch.join_limit == 0 {
            errs.push(
                "ingest.twitch.channels_per_connection and join_limit must be at least 1".into(),
            );
        }
        if self.twitch.join_window_ms == 0 || self.twitch.backoff_base_ms == 0 {
            errs.push("ingest.twitch.join_window_ms and backoff_base_ms must be positive".into());
        }
        if self.youtube.poll_min_ms == 0 || self.youtube.poll_min_ms > self.youtube.poll_max_ms {
            errs.push("ingest.youtube.poll_min_ms must be positive and ≤ poll_max_ms".into());
        }
        let b = &self.breaker;
        if b.consecutive_failures == 0 || !(0.0..=1.0).contains(&b.failure_rate) {
            errs.push(
                "ingest.breaker.consecutive_failures ≥ 1 and failure_rate in 0..=1 required".into(),
            );
        }
        if b.open_base_ms == 0 || b.open_base_ms > b.open_max_ms || b.half_open_successes == 0 {
            errs.push(
                "ingest.breaker: open_base_ms ≤ open_max_ms, both positive; half_open_successes ≥ 1"
                    .into(),
            );
        }
        let m = &self.metadata;
        if !(m.rate_per_s > 0.0 && m.burst >= 1.0) || m.concurrency == 0 || m.cache_entries == 0 {
            errs.push(
                "ingest.metadata: rate_per_s > 0, burst ≥ 1, concurrency ≥ 1 and cache_entries ≥ 1 required"
                    .into(),
            );
        }
        if self.request_timeout_ms == 0 || self.max_body_bytes < 1024 {
            errs.push("ingest.request_timeout_ms > 0 and max_body_bytes ≥ 1024 required".into());
        }
        errs
    }
}

/// Accepts a list or one comma-separated string (what an environment variable gives).
pub(crate) fn comma_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        One(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(v) => v,
        Either::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

//! Chat ingestion (DESIGN.md §4), run by the worker that owns the room. The room actor
//! starts one runner per attached source; runners do the I/O (Twitch IRC over WebSocket,
//! YouTube InnerTube polling, through the proxy pool and behind circuit breakers) and
//! hand normalized items to the room, whose engine turns them into `chat.message` events.
//!
//! # Layout
//! - `breaker`: circuit breaker state machine. `proxy`: the proxy pool. `profiles`:
//!   browser header sets. `net`: TCP/CONNECT/TLS. `http`: the HTTP client.
//! - `limiter`: the cluster-wide Twitch JOIN limiter.
//! - `metadata`: queued videos' titles and durations, cached and rate limited per node.
//! - `twitch/`: IRC parsing, normalization, the connection pool.
//! - `youtube/`: page and chat parsing, the poller.

pub mod breaker;
pub mod http;
pub mod limiter;
pub mod metadata;
pub mod net;
pub mod profiles;
pub mod proxy;
pub mod twitch;
pub mod youtube;

use std::sync::Arc;
use std::time::Duration;

use lockstep_shared::config::IngestConfig;
use lockstep_shared::metrics as names;
use lockstep_shared::protocol::{Source, SourceSpec};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::SourceReport;
use breaker::BreakerState;
use http::HttpClient;
use limiter::JoinLimiter;
use metadata::Metadata;
use proxy::ProxyPool;
use twitch::{TwitchPool, TwitchUpdate};
use youtube::source::{Target, YoutubeSource};

/// Items handed to the room in one report at most.
const BATCH_MAX: usize = 100;
/// Updates buffered between a Twitch connection and one room's runner.
const TWITCH_BUFFER: usize = 1_024;

/// The node's ingestion: shared HTTP client, proxy pool and Twitch connections.
pub struct Ingest {
    cfg: IngestConfig,
    http: Arc<HttpClient>,
    twitch: Arc<TwitchPool>,
    metadata: Option<Arc<Metadata>>,
    cancel: CancellationToken,
}

impl Ingest {
    /// `limiter`: in-process (embedded) or Redis (cluster).
    pub fn new(
        cfg: &IngestConfig,
        limiter: Arc<dyn JoinLimiter>,
        cancel: CancellationToken,
    ) -> Arc<Ingest> {
        let pool = Arc::new(ProxyPool::new(&cfg.proxies, &cfg.breaker));
        let http = Arc::new(HttpClient {
            pool,
            tls: net::tls_connector(),
            timeout: Duration::from_millis(cfg.request_timeout_ms),
            max_body: cfg.max_body_bytes,
        });
        let twitch = TwitchPool::new(
            cfg.twitch.clone(),
            cfg.breaker.clone(),
            http.clone(),
            limiter,
            cancel.child_token(),
        );
        let metadata = cfg.metadata.enabled.then(|| {
            Arc::new(Metadata::new(
                cfg.metadata.clone(),
                cfg.breaker.clone(),
                &cfg.youtube.base_url,
                http.clone(),
            ))
        });
        Arc::new(Ingest {
            cfg: cfg.clone(),
            http,
            twitch,
            metadata,
            cancel,
        })
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// Title and duration lookups for queued videos; `None` when `ingest.metadata` is off.
    pub fn metadata(&self) -> Option<&Arc<Metadata>> {
        self.metadata.as_ref()
    }

    /// The proxy pool, for diagnostics and tests.
    pub fn proxies(&self) -> &ProxyPool {
        &self.http.pool
    }

    /// Starts `source`'s runner; it reports to `tx` until `cancel` fires.
    pub fn start(
        self: &Arc<Self>,
        source: &Source,
        tx: mpsc::Sender<SourceReport>,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let platform = source.spec.platform();
        let source_id = source.source_id.clone();
        let fut: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
            match &source.spec {
                SourceSpec::Twitch { channel, auth } => Box::pin(run_twitch(
                    self.twitch.clone(),
                    source_id,
                    channel.clone(),
                    auth.clone(),
                    tx,
                    cancel,
                )),
                SourceSpec::Youtube {
                    video_id,
                    channel_id,
                } => {
                    let target = match (video_id, channel_id) {
                        (Some(v), _) => Target::Video(v.clone()),
                        (None, Some(c)) => Target::Channel(c.clone()),
                        (None, None) => Target::Video(String::new()),
                    };
                    let runner = YoutubeSource::new(
                        self.cfg.youtube.clone(),
                        self.cfg.breaker.clone(),
                        self.http.clone(),
                        source_id,
                        target,
                        tx,
                        cancel,
                    );
                    Box::pin(runner.run(source.cursor.clone()))
                }
            };
        tokio::spawn(async move {
            metrics::gauge!(names::INGEST_SOURCES_ACTIVE, "platform" => platform).increment(1.0);
            fut.await;
            metrics::gauge!(names::INGEST_SOURCES_ACTIVE, "platform" => platform).decrement(1.0);
        })
    }

    /// Stops every connection; call after the rooms stopped their runners.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.twitch.stopped().await;
    }
}

/// A Twitch source: a subscription to its channel on the pool, relayed to the room.
async fn run_twitch(
    pool: Arc<TwitchPool>,
    source_id: String,
    channel: String,
    auth: Option<lockstep_shared::protocol::TwitchAuth>,
    tx: mpsc::Sender<SourceReport>,
    cancel: CancellationToken,
) {
    let (utx, mut urx) = mpsc::channel(TWITCH_BUFFER);
    let _subscription = loop {
        match pool.subscribe(&channel, auth.clone(), utx.clone()) {
            Ok(s) => break s,
            Err(e) => {
                let report = SourceReport::Status {
                    source_id: source_id.clone(),
                    state: "connecting",
                    error: Some(e),
                };
                let _ = tx.send(report).await;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    drop(utx);
    loop {
        let mut next = tokio::select! {
            _ = cancel.cancelled() => return,
            u = urx.recv() => match u { Some(u) => u, None => return },
        };
        // Items already queued go as one report; a status change ends the batch after them.
        let mut items = Vec::new();
        let mut status = None;
        loop {
            match next {
                TwitchUpdate::Item(item) => items.push(*item),
                TwitchUpdate::State(state, error) => {
                    status = Some((state, error));
                    break;
                }
            }
            if items.len() >= BATCH_MAX {
                break;
            }
            match urx.try_recv() {
                Ok(u) => next = u,
                Err(_) => break,
            }
        }
        let batch = (!items.is_empty()).then(|| SourceReport::Items {
            source_id: source_id.clone(),
            items,
            cursor: None,
        });
        let status = status.map(|(state, error)| SourceReport::Status {
            source_id: source_id.clone(),
            state,
            error,
        });
        for report in batch.into_iter().chain(status) {
            if tx.send(report).await.is_err() {
                return;
            }
        }
    }
}

/// A runner that stops with its breaker not closed takes it out of the gauge.
pub(crate) fn forget_breaker(scope: &'static str, state: BreakerState) {
    if state != BreakerState::Closed {
        metrics::gauge!(names::INGEST_BREAKERS_OPEN, "scope" => scope).decrement(1.0);
    }
}

/// Keeps the breaker gauge and transition counter in step with a state change.
pub(crate) fn observe_breaker(scope: &'static str, before: BreakerState, after: BreakerState) {
    let (b, a) = (before.as_str(), after.as_str());
    if b == a {
        return;
    }
    metrics::counter!(names::INGEST_BREAKER_TRANSITIONS, "scope" => scope, "to" => a).increment(1);
    // The gauge counts breakers that are not closed (open or probing).
    match (b == "closed", a == "closed") {
        (true, false) => {
            metrics::gauge!(names::INGEST_BREAKERS_OPEN, "scope" => scope).increment(1.0)
        }
        (false, true) => {
            metrics::gauge!(names::INGEST_BREAKERS_OPEN, "scope" => scope).decrement(1.0)
        }
        _ => {}
    }
}

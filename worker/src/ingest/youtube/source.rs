//! One YouTube source's runner. Channel sources look for a live video on a slow jittered
//! timer; video sources watch one video. While live, it polls `get_live_chat` at the
//! interval upstream asks for (clamped), drops items it has already delivered, and hands
//! each batch to the room together with the cursor (video, continuation, client settings,
//! recent ids) so the room persists both in one commit and a new owner resumes exactly there.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use lockstep_shared::config::{BreakerConfig, YoutubeConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::chat::{parse_chat, ChatPage};
use super::page::{parse_page, ClientCfg, PageInfo};
use crate::clock::now_ms;
use crate::engine::SourceReport;
use crate::ingest::breaker::{Breaker, BreakerState, Failure};
use crate::ingest::http::HttpClient;
use crate::ingest::net::NetError;
use crate::ingest::{observe_breaker, profiles};

/// Item ids remembered for de-duplication (in memory; the newest are persisted).
const SEEN_MAX: usize = 2_000;
/// Item ids persisted in the cursor.
const SEEN_PERSISTED: usize = 200;

/// Where a YouTube source stands, persisted with the room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub video_id: String,
    pub continuation: String,
    pub client: ClientCfg,
    #[serde(default)]
    pub seen: Vec<String>,
    /// How long to wait before the next poll (from upstream's `timeoutMs`, clamped).
    #[serde(skip)]
    pub poll_wait: u64,
}

/// What this source follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Video(String),
    Channel(String),
}

/// Everything one runner needs.
pub struct YoutubeSource {
    pub cfg: YoutubeConfig,
    pub http: Arc<HttpClient>,
    pub source_id: String,
    pub target: Target,
    pub tx: mpsc::Sender<SourceReport>,
    pub cancel: CancellationToken,
    breaker: Breaker,
    seen: VecDeque<String>,
    seen_set: HashSet<String>,
    profile: &'static profiles::BrowserProfile,
    state: &'static str,
}

/// Why a step failed.
enum StepError {
    Net(NetError),
    Format(String),
}

impl YoutubeSource {
    pub fn new(
        cfg: YoutubeConfig,
        breaker: BreakerConfig,
        http: Arc<HttpClient>,
        source_id: String,
        target: Target,
        tx: mpsc::Sender<SourceReport>,
        cancel: CancellationToken,
    ) -> YoutubeSource {
        YoutubeSource {
            cfg,
            http,
            source_id,
            target,
            tx,
            cancel,
            breaker: Breaker::new(breaker),
            seen: VecDeque::new(),
            seen_set: HashSet::new(),
            profile: profiles::pick(),
            state: "",
        }
    }

    /// Runs until cancelled; `cursor` is what the room persisted last.
    pub async fn run(mut self, cursor: Option<serde_json::Value>) {
        let mut cursor: Option<Cursor> = cursor.and_then(|c| serde_json::from_value(c).ok());
        if let Some(c) = &cursor {
            for id in &c.seen {
                self.remember(id.clone());
            }
        }
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            let now = now_ms();
            let before = self.breaker.state();
            if !self.breaker.allow(now) {
                let until = self.breaker.retry_at().unwrap_or(now + 1_000);
                if !self.sleep(until.saturating_sub(now)).await {
                    return;
                }
                continue;
            }
            observe_breaker("youtube", before, self.breaker.state());
            if self.breaker.state() == BreakerState::HalfOpen {
                self.status("half_open", None).await;
            }
            let step = match cursor.clone() {
                None => self.detect().await.map(|found| match found {
                    Detected::Live(c) => {
                        cursor = Some(c);
                        None
                    }
                    Detected::NotLive { ended, reason } => Some((ended, reason)),
                }),
                Some(c) => self.poll(c).await.map(|next| {
                    let ended = next.is_none();
                    cursor = next;
                    ended.then(|| (true, "the stream ended".to_owned()))
                }),
            };
            let wait = match step {
                Ok(outcome) => {
                    let before = self.breaker.state();
                    self.breaker.on_success(now_ms());
                    observe_breaker("youtube", before, self.breaker.state());
                    if before == BreakerState::HalfOpen
                        && self.breaker.state() == BreakerState::Closed
                    {
                        self.status("closed", None).await;
                    }
                    match outcome {
                        None => {
                            self.status("live", None).await;
                            cursor.as_ref().map(|c| c.poll_wait).unwrap_or(0)
                        }
                        Some((ended, reason)) => {
                            cursor = None;
                            match (&self.target, ended) {
                                (Target::Video(_), true) => {
                                    self.status("ended", Some(reason)).await;
                                    // A video stream does not come back: idle until removed.
                                    self.cancel.cancelled().await;
                                    return;
                                }
                                (Target::Channel(_), true) => {
                                    self.status("ended", Some(reason)).await;
                                    self.live_check_wait()
                                }
                                (_, false) => {
                                    self.status("offline", Some(reason)).await;
                                    self.live_check_wait()
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    let (kind, why) = match e {
                        StepError::Net(n) => (Failure::Transient, n.to_string()),
                        StepError::Format(f) => {
                            (Failure::Format, format!("upstream format changed: {f}"))
                        }
                    };
                    if kind == Failure::Format {
                        metrics::counter!(lockstep_shared::metrics::INGEST_UPSTREAM_ERRORS,
                            "platform" => "youtube", "reason" => "parse")
                        .increment(1);
                    }
                    tracing::warn!(source = %self.source_id, cause = %why, "youtube step failed");
                    let before = self.breaker.state();
                    self.breaker.on_failure(now_ms(), kind, rand::random());
                    observe_breaker("youtube", before, self.breaker.state());
                    match self.breaker.retry_at() {
                        Some(until) => {
                            self.status("open", Some(why)).await;
                            until.saturating_sub(now_ms())
                        }
                        None => {
                            self.status("connecting", Some(why)).await;
                            self.cfg.poll_min_ms
                        }
                    }
                }
            };
            if !self.sleep(wait).await {
                return;
            }
        }
    }

    fn live_check_wait(&self) -> u64 {
        let base = self.cfg.live_check_ms as f64;
        (base * (0.75 + 0.5 * rand::random::<f64>())) as u64
    }

    async fn sleep(&self, ms: u64) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(Duration::from_millis(ms)) => true,
        }
    }

    async fn status(&mut self, state: &'static str, error: Option<String>) {
        if self.state == state && error.is_none() {
            return;
        }
        self.state = state;
        let _ = self
            .tx
            .send(SourceReport::Status {
                source_id: self.source_id.clone(),
                state,
                error,
            })
            .await;
    }

    async fn detect(&mut self) -> Result<Detected, StepError> {
        let base = self.cfg.base_url.trim_end_matches('/');
        let url = match &self.target {
            Target::Video(v) => format!("{base}/watch?v={v}"),
            Target::Channel(c) => format!("{base}/channel/{c}/live"),
        };
        let url = Url::parse(&url).map_err(|e| StepError::Format(e.to_string()))?;
        let resp = self
            .http
            .request("youtube", &url, None, self.profile, &[])
            .await
            .map_err(StepError::Net)?;
        let html = String::from_utf8_lossy(&resp.body);
        match parse_page(&html).map_err(|e| StepError::Format(e.to_string()))? {
            PageInfo::Live(live) => Ok(Detected::Live(Cursor {
                video_id: live.video_id,
                continuation: live.continuation,
                client: live.client,
                seen: Vec::new(),
                poll_wait: 0,
            })),
            PageInfo::NotLive { ended, reason } => Ok(Detected::NotLive { ended, reason }),
        }
    }

    /// One poll: delivers new items with the next cursor; `None` when the stream ended.
    async fn poll(&mut self, cursor: Cursor) -> Result<Option<Cursor>, StepError> {
        let base = self.cfg.base_url.trim_end_matches('/');
        let url = format!(
            "{base}/youtubei/v1/live_chat/get_live_chat?key={}&prettyPrint=false",
            cursor.client.api_key
        );
        let url = Url::parse(&url).map_err(|e| StepError::Format(e.to_string()))?;
        let (body, extra) = cursor
            .client
            .continuation_request(base, &cursor.continuation);
        let resp = self
            .http
            .request("youtube", &url, Some(body), self.profile, &extra)
            .await
            .map_err(StepError::Net)?;
        let ChatPage { items, next } =
            parse_chat(&resp.body).map_err(|e| StepError::Format(e.0))?;
        let mut fresh = Vec::with_capacity(items.len());
        for item in items {
            match item.ext.upstream_id.clone() {
                Some(id) if self.seen_set.contains(&id) => continue,
                Some(id) => {
                    self.remember(id);
                    fresh.push(item);
                }
                None => fresh.push(item),
            }
        }
        let next_cursor = next.map(|(continuation, timeout_ms)| Cursor {
            video_id: cursor.video_id.clone(),
            continuation,
            client: cursor.client.clone(),
            seen: self
                .seen
                .iter()
                .rev()
                .take(SEEN_PERSISTED)
                .rev()
                .cloned()
                .collect(),
            poll_wait: timeout_ms.clamp(self.cfg.poll_min_ms, self.cfg.poll_max_ms),
        });
        let persisted = match &next_cursor {
            Some(c) => serde_json::to_value(c).ok(),
            // Ended: forget the position so a channel source detects afresh.
            None => Some(serde_json::Value::Null),
        };
        if !fresh.is_empty() || persisted.is_some() {
            let _ = self
                .tx
                .send(SourceReport::Items {
                    source_id: self.source_id.clone(),
                    items: fresh,
                    cursor: persisted,
                })
                .await;
        }
        Ok(next_cursor)
    }

    fn remember(&mut self, id: String) {
        if self.seen_set.insert(id.clone()) {
            self.seen.push_back(id);
            while self.seen.len() > SEEN_MAX {
                if let Some(old) = self.seen.pop_front() {
                    self.seen_set.remove(&old);
                }
            }
        }
    }
}

impl Drop for YoutubeSource {
    fn drop(&mut self) {
        crate::ingest::forget_breaker("youtube", self.breaker.state());
    }
}

enum Detected {
    Live(Cursor),
    NotLive { ended: bool, reason: String },
}

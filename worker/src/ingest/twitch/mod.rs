//! Twitch chat: the IRC parser, normalization, and the node's connection pool. Rooms
//! subscribe to channels; the pool packs channels onto as few connections as the per-
//! connection bound allows (one set of connections per login: anonymous, or each linked
//! account), and each connection fans lines out to the rooms that want them.

pub mod conn;
pub mod irc;
pub mod normalize;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lockstep_shared::config::{BreakerConfig, TwitchConfig};
use lockstep_shared::protocol::TwitchAuth;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::breaker::Breaker;
use super::http::HttpClient;
use super::limiter::JoinLimiter;
use crate::engine::IngestItem;
use conn::{Conn, ConnCmd};

/// What a subscribed room hears from its channel's connection.
#[derive(Debug, Clone, PartialEq)]
pub enum TwitchUpdate {
    State(&'static str, Option<String>),
    Item(Box<IngestItem>),
}

/// Commands queued per connection.
const CONN_COMMANDS: usize = 4_096;

struct Handle {
    auth: Option<TwitchAuth>,
    channels: HashSet<String>,
    /// Subscriptions per channel on this connection.
    refs: HashMap<String, usize>,
    tx: mpsc::Sender<ConnCmd>,
}

/// The node's Twitch connections.
pub struct TwitchPool {
    cfg: TwitchConfig,
    breaker: BreakerConfig,
    http: Arc<HttpClient>,
    limiter: Arc<dyn JoinLimiter>,
    /// Connections by id; a connection with no channel left is dropped (its task ends).
    conns: Mutex<HashMap<u64, Handle>>,
    next_id: AtomicU64,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// A room's interest in one channel; dropping it PARTs when no one else wants the channel.
pub struct Subscription {
    pool: Arc<TwitchPool>,
    conn: u64,
    channel: String,
    sub: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.pool.unsubscribe(self.conn, &self.channel, self.sub);
    }
}

impl TwitchPool {
    pub fn new(
        cfg: TwitchConfig,
        breaker: BreakerConfig,
        http: Arc<HttpClient>,
        limiter: Arc<dyn JoinLimiter>,
        cancel: CancellationToken,
    ) -> Arc<TwitchPool> {
        Arc::new(TwitchPool {
            cfg,
            breaker,
            http,
            limiter,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            cancel,
            tracker: TaskTracker::new(),
        })
    }

    /// Subscribes `tx` to `channel`'s chat.
    pub fn subscribe(
        self: &Arc<Self>,
        channel: &str,
        auth: Option<TwitchAuth>,
        tx: mpsc::Sender<TwitchUpdate>,
    ) -> Result<Subscription, String> {
        let mut conns = self.conns.lock().map_err(|_| "twitch pool poisoned")?;
        let max = self.cfg.channels_per_connection;
        let found = conns
            .iter()
            .find(|(_, h)| h.auth == auth && h.channels.contains(channel))
            .or_else(|| {
                conns
                    .iter()
                    .find(|(_, h)| h.auth == auth && h.channels.len() < max && !h.tx.is_closed())
            })
            .map(|(id, _)| *id);
        let index = match found {
            Some(id) => id,
            None => {
                let (ctx, crx) = mpsc::channel(CONN_COMMANDS);
                let conn = Conn::new(
                    self.cfg.clone(),
                    self.http.clone(),
                    self.limiter.clone(),
                    auth.clone(),
                    Breaker::new(self.breaker.clone()),
                    crx,
                    self.cancel.child_token(),
                );
                self.tracker.spawn(conn.run());
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                conns.insert(
                    id,
                    Handle {
                        auth: auth.clone(),
                        channels: HashSet::new(),
                        refs: Default::default(),
                        tx: ctx,
                    },
                );
                id
            }
        };
        let sub = self.next_id.fetch_add(1, Ordering::Relaxed);
        let Some(h) = conns.get_mut(&index) else {
            return Err("twitch connection vanished".into());
        };
        h.tx.try_send(ConnCmd::Join {
            channel: channel.to_owned(),
            sub,
            tx,
        })
        .map_err(|_| "twitch connection busy".to_owned())?;
        h.channels.insert(channel.to_owned());
        *h.refs.entry(channel.to_owned()).or_default() += 1;
        Ok(Subscription {
            pool: self.clone(),
            conn: index,
            channel: channel.to_owned(),
            sub,
        })
    }

    fn unsubscribe(&self, conn: u64, channel: &str, sub: u64) {
        let Ok(mut conns) = self.conns.lock() else {
            return;
        };
        let Some(h) = conns.get_mut(&conn) else {
            return;
        };
        if let Some(n) = h.refs.get_mut(channel) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                h.refs.remove(channel);
                h.channels.remove(channel);
            }
        }
        let _ = h.tx.try_send(ConnCmd::Part {
            channel: channel.to_owned(),
            sub,
        });
        // The PART is queued ahead of the close: the task parts, then ends.
        if h.channels.is_empty() {
            conns.remove(&conn);
        }
    }

    /// Open connections' channel counts, for tests and diagnostics.
    pub fn channel_counts(&self) -> Vec<usize> {
        self.conns
            .lock()
            .map(|c| c.values().map(|h| h.channels.len()).collect())
            .unwrap_or_default()
    }

    /// Waits for every connection task after the cancel token fired.
    pub async fn stopped(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

//! The rooms this worker runs: routes each message to its room's actor, starting the actor
//! on first use. Sending and retiring happen under the same shard lock, so no message is ever
//! sent to an actor that has decided to stop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lockstep_shared::bus::{GatewaySink, Query, ToWorker, WorkerLink};
use lockstep_shared::config::RoomConfig;
use lockstep_shared::metrics as names;
use lockstep_shared::protocol::error::Refusal;
use lockstep_shared::protocol::ErrorCode;
use lockstep_shared::shard::shard_of;
use lockstep_shared::store::Store;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ingest::Ingest;
use crate::room_actor::{self, RoomMsg};

/// Lock stripes for the room map.
const STRIPES: u32 = 64;
/// How long an HTTP query waits for its room.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Which rooms this worker may serve, and under which fencing epoch.
pub trait Ownership: Send + Sync + 'static {
    /// The lease epoch of the room's shard if this worker owns it now.
    fn epoch(&self, room: &str) -> Option<u64>;
}

/// Embedded mode: one process owns every room, epoch 0.
pub struct OwnsEverything;

impl Ownership for OwnsEverything {
    fn epoch(&self, _room: &str) -> Option<u64> {
        Some(0)
    }
}

/// A loaded room: its mailbox and its task.
struct Slot {
    tx: mpsc::Sender<RoomMsg>,
    task: tokio::task::JoinHandle<()>,
}

/// State shared by the host and its room actors.
pub struct HostShared {
    pub(crate) cfg: RoomConfig,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) sink: Arc<dyn GatewaySink>,
    pub(crate) cancel: CancellationToken,
    /// Chat ingestion; `None` when disabled.
    pub(crate) ingest: Option<Arc<Ingest>>,
    stripes: Vec<Mutex<HashMap<String, Slot>>>,
    tracker: TaskTracker,
    ownership: Arc<dyn Ownership>,
    /// Rooms loaded now, bounded by `room.max_loaded`.
    loaded: AtomicUsize,
}

impl HostShared {
    /// Removes the room if its mailbox is empty; the actor must then stop.
    pub(crate) fn try_retire(&self, code: &str, rx: &mpsc::Receiver<RoomMsg>) -> bool {
        let Ok(mut map) = self.stripe(code).lock() else {
            return false;
        };
        if rx.is_empty() {
            if map.remove(code).is_some() {
                self.loaded.fetch_sub(1, Ordering::SeqCst);
            }
            true
        } else {
            false
        }
    }

    fn stripe(&self, code: &str) -> &Mutex<HashMap<String, Slot>> {
        &self.stripes[shard_of(code, STRIPES) as usize]
    }
}

/// The worker side of the bus in one process.
#[derive(Clone)]
pub struct Host {
    shared: Arc<HostShared>,
}

impl Host {
    /// A host that owns every room (embedded mode).
    pub fn new(
        cfg: RoomConfig,
        store: Arc<dyn Store>,
        sink: Arc<dyn GatewaySink>,
        cancel: CancellationToken,
        ingest: Option<Arc<Ingest>>,
    ) -> Host {
        Host::with_ownership(cfg, store, sink, cancel, Arc::new(OwnsEverything), ingest)
    }

    /// A host that serves only the rooms `ownership` grants (cluster mode).
    pub fn with_ownership(
        cfg: RoomConfig,
        store: Arc<dyn Store>,
        sink: Arc<dyn GatewaySink>,
        cancel: CancellationToken,
        ownership: Arc<dyn Ownership>,
        ingest: Option<Arc<Ingest>>,
    ) -> Host {
        Host {
            shared: Arc::new(HostShared {
                cfg,
                store,
                sink,
                cancel,
                ingest: ingest.filter(|i| i.enabled()),
                stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
                tracker: TaskTracker::new(),
                loaded: AtomicUsize::new(0),
                ownership,
            }),
        }
    }

    fn route(&self, code: &str, msg: RoomMsg) -> Result<(), Refusal> {
        let shared = &self.shared;
        if shared.cancel.is_cancelled() {
            return Err(Refusal::new(
                ErrorCode::Unavailable,
                "node is shutting down",
            ));
        }
        let mut map = shared
            .stripe(code)
            .lock()
            .map_err(|_| Refusal::new(ErrorCode::Internal, "room map poisoned"))?;
        if !map.contains_key(code) {
            let Some(epoch) = shared.ownership.epoch(code) else {
                return Err(Refusal::new(
                    ErrorCode::Unavailable,
                    "this worker does not own the room right now; retry",
                ));
            };
            if shared.loaded.load(Ordering::SeqCst) >= shared.cfg.max_loaded {
                return Err(Refusal::new(
                    ErrorCode::Unavailable,
                    "this node has too many rooms loaded; retry later",
                ));
            }
            shared.loaded.fetch_add(1, Ordering::SeqCst);
            let (tx, rx) = mpsc::channel(shared.cfg.mailbox);
            let task = room_actor::run(code.to_owned(), epoch, shared.clone(), rx);
            let task = shared.tracker.spawn(task);
            map.insert(code.to_owned(), Slot { tx, task });
        }
        let Some(tx) = map.get(code).map(|s| &s.tx) else {
            return Err(Refusal::new(ErrorCode::Internal, "room vanished"));
        };
        match tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!(names::WORKER_MAILBOX_FULL).increment(1);
                Err(Refusal::new(ErrorCode::Unavailable, "room is busy; retry"))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                if map.remove(code).is_some() {
                    shared.loaded.fetch_sub(1, Ordering::SeqCst);
                }
                Err(Refusal::new(
                    ErrorCode::Unavailable,
                    "room restarting; retry",
                ))
            }
        }
    }

    /// Stops the rooms `matches` selects: their mailboxes close, each finishes what it has
    /// queued and released. Await the handles before giving the rooms to another owner.
    pub fn unload_where(&self, matches: impl Fn(&str) -> bool) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for stripe in &self.shared.stripes {
            let Ok(mut map) = stripe.lock() else { continue };
            let codes: Vec<String> = map.keys().filter(|c| matches(c)).cloned().collect();
            for code in codes {
                if let Some(slot) = map.remove(&code) {
                    self.shared.loaded.fetch_sub(1, Ordering::SeqCst);
                    tasks.push(slot.task);
                }
            }
        }
        tasks
    }

    /// Codes of the rooms loaded now.
    pub fn loaded_rooms(&self) -> Vec<String> {
        self.shared
            .stripes
            .iter()
            .filter_map(|s| s.lock().ok().map(|m| m.keys().cloned().collect::<Vec<_>>()))
            .flatten()
            .collect()
    }

    /// Stops every room after its in-flight writes are released, then flushes the store.
    pub async fn shutdown(&self) {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
        if let Some(ingest) = &self.shared.ingest {
            ingest.shutdown().await;
        }
        if let Err(e) = self.shared.store.flush().await {
            tracing::error!(cause = %e, "store flush failed at shutdown");
        }
    }
}

/// How long a departure waits for room in a busy room's mailbox.
const DEPARTURE_WAIT: Duration = Duration::from_secs(10);

impl Host {
    /// Departures (a closed socket, a dead gateway) must reach a loaded room even when its
    /// mailbox is full (a join storm): they wait for space instead of being refused, or a
    /// member would linger in presence. A room that is not loaded has nobody to remove.
    async fn depart(&self, code: &str, msg: ToWorker) -> Result<(), Refusal> {
        let tx = {
            let map = self
                .shared
                .stripe(code)
                .lock()
                .map_err(|_| Refusal::new(ErrorCode::Internal, "room map poisoned"))?;
            match map.get(code) {
                Some(slot) => slot.tx.clone(),
                None => return Ok(()),
            }
        };
        match tokio::time::timeout(DEPARTURE_WAIT, tx.send(RoomMsg::Gateway(msg))).await {
            Ok(Ok(())) => Ok(()),
            // The room stopped: its members are gone with it.
            Ok(Err(_)) => Ok(()),
            Err(_) => Err(Refusal::new(
                ErrorCode::Unavailable,
                "room too busy to take a departure",
            )),
        }
    }
}

#[async_trait]
impl WorkerLink for Host {
    async fn send(&self, msg: ToWorker) -> Result<(), Refusal> {
        let code = msg.room().to_owned();
        match msg {
            ToWorker::ConnClosed { .. } | ToWorker::GatewayGone { .. } => {
                self.depart(&code, msg).await
            }
            // A resync loads the room like a command: an unloaded room answers that it knows
            // none of the gateway's connections.
            ToWorker::Command(_) | ToWorker::Resync { .. } => {
                self.route(&code, RoomMsg::Gateway(msg))
            }
        }
    }

    async fn query(&self, room: &str, query: Query) -> Result<Value, Refusal> {
        let (tx, rx) = oneshot::channel();
        self.route(room, RoomMsg::Query(query, tx))?;
        match tokio::time::timeout(QUERY_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Refusal::new(ErrorCode::Unavailable, "room stopped; retry")),
            Err(_) => Err(Refusal::new(
                ErrorCode::Unavailable,
                "room did not answer in time",
            )),
        }
    }
}

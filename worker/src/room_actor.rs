//! One task per room: owns the engine, feeds it messages and time, submits its writes and
//! hands the output to the releaser. Fed by a bounded mailbox; stops on the shutdown token,
//! when its room is missing, or after it has been empty for `idle_unload_ms`. It also runs
//! the room's chat sources (one ingestion runner per attached source, reporting through a
//! second bounded channel) while the room is loaded, and stops them when it stops. Queued
//! videos' titles and durations are looked up the same way (`lookups`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lockstep_shared::bus::{Membership, Query, ToGateway, ToWorker};
use lockstep_shared::metrics as names;
use lockstep_shared::protocol::error::Refusal;
use lockstep_shared::protocol::{error_frame, ClientCommand, ErrorCode};
use lockstep_shared::store::{LoadLimits, Mutation};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tracing::Instrument;

use crate::clock::now_ms;
use crate::engine::{Output, Room, SourceReport};
use crate::host::HostShared;
use crate::ingest::metadata::Lookup;
use crate::lookups::{LookupResult, Lookups};
use crate::releaser::{self, Pending, QueryReply};

/// What a room's mailbox carries.
pub enum RoomMsg {
    Gateway(ToWorker),
    Query(Query, oneshot::Sender<Result<Value, Refusal>>),
}

enum State {
    /// The store has no such room (yet).
    Missing,
    Loaded(Box<Room>),
    /// The store could not be read; every message is answered `unavailable`.
    Failed,
}

/// Housekeeping cadence: history expiry, idle unload checks.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Reports from this room's source runners waiting to be applied.
const INGEST_INBOX: usize = 256;

/// A running source: what it was started for, how to stop it.
struct Runner {
    spec: lockstep_shared::protocol::SourceSpec,
    cancel: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

struct Actor {
    code: String,
    /// The shard lease epoch this actor writes under (0 in embedded mode).
    epoch: u64,
    host: Arc<HostShared>,
    state: State,
    releaser: mpsc::Sender<Pending>,
    releaser_task: tokio::task::JoinHandle<()>,
    poisoned: Arc<AtomicBool>,
    ingest_tx: mpsc::Sender<SourceReport>,
    runners: HashMap<String, Runner>,
    lookups: Lookups,
}

/// Runs the room until shutdown, retirement or a closed mailbox.
pub async fn run(code: String, epoch: u64, host: Arc<HostShared>, rx: mpsc::Receiver<RoomMsg>) {
    let span = tracing::info_span!("room", room = %code);
    async move {
        metrics::gauge!(names::WORKER_ROOMS_ACTIVE).increment(1.0);
        let (releaser, releaser_task, poisoned) = start_releaser(&host);
        let (ingest_tx, ingest_rx) = mpsc::channel(INGEST_INBOX);
        let (lookups, lookup_rx) = Lookups::new(host.cancel.child_token());
        let mut actor = Actor {
            code,
            epoch,
            host,
            state: State::Missing,
            releaser,
            releaser_task,
            poisoned,
            ingest_tx,
            runners: HashMap::new(),
            lookups,
        };
        actor.state = actor.load().await;
        actor.sync_sources();
        actor.start_lookups().await;
        actor.main_loop(rx, ingest_rx, lookup_rx).await;
        actor.stop_sources().await;
        actor.lookups.stop().await;
        let Actor {
            releaser,
            releaser_task,
            ..
        } = actor;
        drop(releaser);
        let _ = releaser_task.await;
        metrics::gauge!(names::WORKER_ROOMS_ACTIVE).decrement(1.0);
    }
    .instrument(span)
    .await
}

fn start_releaser(
    host: &Arc<HostShared>,
) -> (
    mpsc::Sender<Pending>,
    tokio::task::JoinHandle<()>,
    Arc<AtomicBool>,
) {
    let (tx, rx) = mpsc::channel(host.cfg.mailbox);
    let poisoned = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(releaser::run(rx, host.sink.clone(), poisoned.clone()));
    (tx, task, poisoned)
}

impl Actor {
    async fn load(&self) -> State {
        let now = now_ms();
        let limits = LoadLimits {
            chat: self.host.cfg.chat_snapshot,
            commands_since_ms: now.saturating_sub(self.host.cfg.idempotency_ttl_ms),
            events: self.host.cfg.history_max,
            events_bytes: self.host.cfg.history_max_bytes,
            events_since_ms: now.saturating_sub(self.host.cfg.history_ttl_ms),
        };
        match self
            .host
            .store
            .load_room(&self.code, limits, self.epoch)
            .await
        {
            Ok(None) => State::Missing,
            Ok(Some(loaded)) => match Room::restore(self.host.cfg.clone(), loaded, now_ms()) {
                Ok(room) => {
                    metrics::counter!(names::WORKER_ROOM_LOADS).increment(1);
                    // Members connected through an earlier owner are not present here:
                    // their gateways close them (1012) so the clients rejoin by seq.
                    self.host.sink.deliver(ToGateway::RoomReset {
                        room: self.code.clone(),
                    });
                    State::Loaded(Box::new(room))
                }
                Err(e) => {
                    tracing::error!(cause = %e, "room state unreadable");
                    State::Failed
                }
            },
            Err(e) => {
                tracing::warn!(cause = %e, "room load failed");
                State::Failed
            }
        }
    }

    async fn main_loop(
        &mut self,
        mut rx: mpsc::Receiver<RoomMsg>,
        mut ingest_rx: mpsc::Receiver<SourceReport>,
        mut lookup_rx: mpsc::Receiver<LookupResult>,
    ) {
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        let mut idle_since = Instant::now();
        loop {
            let deadline = match &self.state {
                State::Loaded(room) => room
                    .next_deadline()
                    .into_iter()
                    .chain(room.next_head())
                    .min(),
                _ => None,
            };
            let wake = deadline
                .map(|d| Instant::now() + Duration::from_millis(d.saturating_sub(now_ms())));
            tokio::select! {
                biased;
                _ = self.host.cancel.cancelled() => return,
                msg = rx.recv() => {
                    let Some(msg) = msg else { return };
                    idle_since = Instant::now();
                    if self.poisoned.load(Ordering::SeqCst) {
                        self.reload().await;
                    }
                    self.on_message(msg).await;
                    self.sync_sources();
                    self.start_lookups().await;
                }
                Some(report) = ingest_rx.recv() => {
                    self.on_report(report).await;
                }
                Some(result) = lookup_rx.recv() => {
                    self.on_lookup(result).await;
                }
                _ = async { if let Some(w) = wake { sleep_until(w).await } else { std::future::pending::<()>().await } } => {
                    self.tick().await;
                }
                _ = housekeeping.tick() => {
                    self.tick().await;
                    let idle_for = Duration::from_millis(self.host.cfg.idle_unload_ms);
                    let idle = match &self.state {
                        State::Loaded(room) => room.is_empty() && room.next_deadline().is_none() && idle_since.elapsed() >= idle_for,
                        State::Missing | State::Failed => true,
                    };
                    if idle && self.host.try_retire(&self.code, &rx) {
                        return;
                    }
                }
            }
        }
    }

    /// Applies a source runner's report.
    async fn on_report(&mut self, report: SourceReport) {
        if self.poisoned.load(Ordering::SeqCst) {
            self.reload().await;
        }
        let State::Loaded(room) = &mut self.state else {
            return;
        };
        let platform = room
            .durable()
            .sources
            .iter()
            .find(|s| s.source_id == report.source_id())
            .map(|s| s.spec.platform())
            .unwrap_or("unknown");
        let out = room.ingest(now_ms(), report);
        if out.shed > 0 {
            metrics::counter!(names::INGEST_SHED, "platform" => platform).increment(out.shed);
        }
        for (platform, kind) in &out.ingested {
            metrics::counter!(names::INGEST_MESSAGES, "platform" => *platform, "kind" => *kind)
                .increment(1);
        }
        if !out.is_empty() {
            self.release(out, None).await;
        }
    }

    /// Hands the videos and playlists the room wants read to the node's metadata service.
    /// Without one (lookups off), playlists are answered at once so no request hangs.
    async fn start_lookups(&mut self) {
        let State::Loaded(room) = &mut self.state else {
            return;
        };
        let videos = room.take_wanted_metadata();
        let lists = room.take_wanted_playlists();
        if videos.is_empty() && lists.is_empty() {
            return;
        }
        match self
            .host
            .ingest
            .as_ref()
            .and_then(|i| i.metadata())
            .cloned()
        {
            Some(metadata) => {
                self.lookups.start(&metadata, videos);
                self.lookups.start_playlists(&metadata, lists);
            }
            None => {
                let why = "this server does not read YouTube playlists (lookups are off)";
                let outs: Vec<Output> = lists
                    .iter()
                    .map(|(list, _)| room.apply_playlist(now_ms(), list, Err(why.into())))
                    .collect();
                for out in outs.into_iter().filter(|o| !o.is_empty()) {
                    self.release(out, None).await;
                }
            }
        }
    }

    /// Applies a finished lookup: a video's metadata to its entries, or a playlist's videos
    /// to the queue.
    async fn on_lookup(&mut self, result: LookupResult) {
        if let LookupResult::Video(video, _) = &result {
            self.lookups.done(video);
        }
        if self.poisoned.load(Ordering::SeqCst) {
            self.reload().await;
        }
        let State::Loaded(room) = &mut self.state else {
            return;
        };
        let out = match result {
            LookupResult::Video(video, Lookup::Found(meta)) => {
                if let Some(why) = &meta.unavailable {
                    tracing::info!(video = %video, reason = %why, "queued video cannot be played");
                }
                room.apply_metadata(now_ms(), &video, &meta)
            }
            LookupResult::Video(_, Lookup::Failed(_)) => return,
            LookupResult::Playlist(list, result) => room.apply_playlist(now_ms(), &list, result),
        };
        if !out.is_empty() {
            self.release(out, None).await;
        }
        // A playlist's videos without a length want looking up in turn.
        self.start_lookups().await;
    }

    /// Starts runners for newly attached sources and stops those of removed ones.
    fn sync_sources(&mut self) {
        if self.host.ingest.is_none() {
            return;
        }
        // Called after every message: the common case (nothing changed) allocates nothing.
        let current: &[lockstep_shared::protocol::Source] = match &self.state {
            State::Loaded(room) => &room.durable().sources,
            _ => &[],
        };
        let unchanged = current.len() == self.runners.len()
            && current.iter().all(|s| {
                self.runners
                    .get(&s.source_id)
                    .is_some_and(|r| r.spec == s.spec)
            });
        if unchanged {
            return;
        }
        let wanted = current.to_vec();
        let Some(ingest) = self.host.ingest.clone() else {
            return;
        };
        self.runners.retain(|id, r| {
            let keep = wanted
                .iter()
                .any(|s| &s.source_id == id && s.spec == r.spec);
            if !keep {
                r.cancel.cancel();
            }
            keep
        });
        for source in wanted {
            if self.runners.contains_key(&source.source_id) {
                continue;
            }
            let cancel = self.host.cancel.child_token();
            let task = ingest.start(&source, self.ingest_tx.clone(), cancel.clone());
            tracing::info!(source = %source.source_id, platform = source.spec.platform(), "source started");
            self.runners.insert(
                source.source_id.clone(),
                Runner {
                    spec: source.spec,
                    cancel,
                    task,
                },
            );
        }
    }

    /// Stops every runner and waits for them.
    async fn stop_sources(&mut self) {
        let runners: Vec<Runner> = self.runners.drain().map(|(_, r)| r).collect();
        for r in &runners {
            r.cancel.cancel();
        }
        for r in runners {
            let _ = r.task.await;
        }
    }

    async fn tick(&mut self) {
        if let State::Loaded(room) = &mut self.state {
            let out = room.tick(now_ms());
            if !out.is_empty() {
                self.release(out, None).await;
            }
        }
    }

    async fn on_message(&mut self, msg: RoomMsg) {
        let now = now_ms();
        match (&mut self.state, msg) {
            (State::Loaded(room), RoomMsg::Gateway(m)) => {
                let out = room.handle(now, m);
                self.release(out, None).await;
            }
            (State::Loaded(room), RoomMsg::Query(q, reply)) => {
                let answer = answer_query(room.as_ref(), q, now);
                match answer {
                    QueryAnswer::Now(result) => {
                        self.release(Output::default(), Some((reply, result))).await
                    }
                    QueryAnswer::Store(kind) => self.spawn_store_query(kind, reply),
                }
            }
            (State::Missing, RoomMsg::Query(Query::Create { user_id, .. }, reply)) => {
                let (room, out) = Room::create(self.host.cfg.clone(), &self.code, &user_id, now);
                self.state = State::Loaded(Box::new(room));
                let code = self.code.clone();
                self.release(out, Some((reply, Ok(json!({"code": code})))))
                    .await;
            }
            (state, RoomMsg::Gateway(ToWorker::Command(env))) => {
                let (code, message) = match state {
                    State::Failed => (ErrorCode::Unavailable, "room could not be loaded; retry"),
                    _ => (ErrorCode::NotFound, "no such room"),
                };
                let frame = error_frame(env.id.as_deref(), code, message);
                let membership = matches!(env.cmd, ClientCommand::RoomJoin { .. })
                    .then(|| Membership::Leave(self.code.clone()));
                let out = Output {
                    deliveries: vec![ToGateway::Reply {
                        conn: env.caller.conn,
                        id: env.id.clone(),
                        membership,
                        frames: vec![Arc::from(frame)],
                        seq: 0,
                    }],
                    ..Output::default()
                };
                self.release(out, None).await;
            }
            // No such room (or it cannot load): none of the gateway's connections is in it.
            (_, RoomMsg::Gateway(ToWorker::Resync { conns, .. })) => {
                let out = Output {
                    deliveries: vec![ToGateway::Evict {
                        room: self.code.clone(),
                        conns,
                    }],
                    ..Output::default()
                };
                self.release(out, None).await;
            }
            (_, RoomMsg::Gateway(ToWorker::ConnClosed { .. } | ToWorker::GatewayGone { .. })) => {}
            (state, RoomMsg::Query(_, reply)) => {
                let refusal = match state {
                    State::Failed => {
                        Refusal::new(ErrorCode::Unavailable, "room could not be loaded; retry")
                    }
                    _ => Refusal::new(ErrorCode::NotFound, "no such room"),
                };
                let _ = reply.send(Err(refusal));
            }
        }
    }

    /// Store reads queue behind this room's earlier writes, so they see every acked change.
    fn spawn_store_query(&self, kind: StoreQuery, reply: oneshot::Sender<Result<Value, Refusal>>) {
        let store = self.host.store.clone();
        let room = self.code.clone();
        tokio::spawn(async move {
            let result = match kind {
                StoreQuery::Chat { before, limit } => {
                    store.chat_page(&room, before, limit).await.map(|messages| {
                        let next_before = (messages.len() == limit)
                            .then(|| messages.last().map(|m| m.id))
                            .flatten();
                        json!({"messages": messages, "next_before": next_before})
                    })
                }
                StoreQuery::Audit { limit } => store
                    .audit(&room, limit)
                    .await
                    .map(|entries| json!({"entries": entries})),
            };
            // The cause (the database's own words) is for the logs, not for clients.
            let _ = reply.send(result.map_err(|e| {
                tracing::warn!(room = %room, cause = %e, "history read failed");
                Refusal::new(ErrorCode::Unavailable, "history could not be read; retry")
            }));
        });
    }

    async fn release(&mut self, out: Output, query: Option<QueryReply>) {
        for d in &out.deliveries {
            if let ToGateway::RoomEvent { .. } = d {
                metrics::counter!(names::WORKER_EVENTS).increment(1);
            }
        }
        let mut mutations = out.mutations;
        for m in &mut mutations {
            if let Mutation::Room { epoch, .. } = m {
                *epoch = self.epoch;
            }
        }
        let ticket = (!mutations.is_empty()).then(|| self.host.store.submit(mutations));
        let pending = Pending {
            ticket,
            deliveries: out.deliveries,
            query,
        };
        // Bounded: a room whose store lags stops taking commands (its mailbox fills and
        // callers get `unavailable`) instead of buffering without limit.
        let _ = self.releaser.send(pending).await;
    }

    /// After a failed commit: wait for everything in flight, reload from the store, and
    /// evict members (their clients rejoin with `since_seq`).
    async fn reload(&mut self) {
        tracing::warn!("reloading room after a failed commit");
        let (tx, task, poisoned) = start_releaser(&self.host);
        let old_tx = std::mem::replace(&mut self.releaser, tx);
        let old_task = std::mem::replace(&mut self.releaser_task, task);
        self.poisoned = poisoned;
        drop(old_tx);
        let _ = old_task.await;
        if let State::Loaded(room) = &self.state {
            let conns = room.member_conns();
            if !conns.is_empty() {
                self.host.sink.deliver(ToGateway::Evict {
                    room: self.code.clone(),
                    conns,
                });
            }
        }
        self.state = self.load().await;
        self.sync_sources();
        self.start_lookups().await;
    }
}

fn answer_query(room: &Room, q: Query, now: u64) -> QueryAnswer {
    match q {
        Query::Create { .. } => QueryAnswer::Now(Err(Refusal::new(
            ErrorCode::Conflict,
            "room already exists",
        ))),
        Query::Snapshot => {
            let mut snap = room.snapshot(false);
            snap["seq"] = json!(room.seq());
            QueryAnswer::Now(Ok(snap))
        }
        Query::Chat { before, limit } => QueryAnswer::Store(StoreQuery::Chat { before, limit }),
        Query::Audit { user_id, limit } => {
            if room.may_read_audit(&user_id) {
                QueryAnswer::Store(StoreQuery::Audit { limit })
            } else {
                QueryAnswer::Now(Err(Refusal::new(
                    ErrorCode::Forbidden,
                    "only the owner and operators may read the audit log",
                )))
            }
        }
        Query::Bans { user_id } => QueryAnswer::Now(if room.may_read_audit(&user_id) {
            Ok(room.bans_view(now))
        } else {
            Err(Refusal::new(
                ErrorCode::Forbidden,
                "only the owner and operators may list bans",
            ))
        }),
    }
}

enum QueryAnswer {
    Now(Result<Value, Refusal>),
    Store(StoreQuery),
}

enum StoreQuery {
    Chat { before: Option<u64>, limit: usize },
    Audit { limit: usize },
}

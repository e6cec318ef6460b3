//! The room engine: a pure state machine. Commands and the current time go in; room events,
//! replies and store mutations come out. No I/O and no clock reads, so every rule is tested
//! deterministically and the same engine runs embedded or in a cluster.
//!
//! # Layout
//! - `mod.rs`: the [`Room`] state, the command dispatcher, output assembly.
//! - `player.rs`: sync clock, scheduled start, ready gate, ad pauses.
//! - `queue.rs`: queue commands.
//! - `presence.rs`: join/leave, ready flags, roles, settings, sources.
//! - `chat.rs`: chat and signal relay.
//! - `snapshot.rs`: the join snapshot, serialized from borrowed state.
//! - `head.rs`: when a quiet room announces its latest seq.
//! - `metadata.rs`: titles and durations arriving after `queue.add`; `playlist.rs`: adding
//!   a playlist's videos.
//! - `history.rs`, `idempotency.rs`, `bucket.rs`, `youtube.rs`, `durable.rs`: helpers.

mod bucket;
mod chat;
mod chat_index;
mod conns;
mod durable;
mod head;
mod history;
mod idempotency;
mod ingest;
mod metadata;
mod moderation;
mod player;
mod playlist;
mod presence;
mod queue;
mod snapshot;
mod vote_skip;
pub mod youtube;

#[cfg(test)]
mod ingest_tests;
#[cfg(test)]
mod metadata_tests;
#[cfg(test)]
mod moderation_tests;
#[cfg(test)]
mod playlist_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vote_skip_tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use lockstep_shared::bus::{Caller, CommandEnvelope, ConnId, Membership, ToGateway, ToWorker};
use lockstep_shared::config::RoomConfig;
use lockstep_shared::protocol::error::Refusal;
use lockstep_shared::protocol::server::PlayerView;
use lockstep_shared::protocol::{
    ack_frame, error_frame, ClientCommand, Clock, ErrorCode, Event, EventBody, Role, Settings, User,
};
use lockstep_shared::store::{AuditEntry, CommandRecord, EventRecord, LoadedRoom, Mutation};
use serde_json::{json, Value};

use moderation::Sanction;

pub use bucket::TokenBucket;
pub use durable::Durable;
pub use ingest::{IngestItem, SourceReport};
pub use metadata::VideoMeta;
pub use playlist::PlaylistItem;

/// What one step of the engine produced: deliveries in the order they must reach gateways,
/// and the writes that must be durable before any of them is delivered.
#[derive(Debug, Default)]
pub struct Output {
    pub deliveries: Vec<ToGateway>,
    pub mutations: Vec<Mutation>,
    /// Upstream items dropped by the per-room ingestion cap (a metric for the shell).
    pub shed: u64,
    /// Upstream items delivered, as (platform, kind) metric labels.
    pub ingested: Vec<(&'static str, &'static str)>,
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty() && self.mutations.is_empty()
    }
}

/// A present member: one user, possibly on several connections.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    conns: conns::Conns,
    ready: bool,
    ad: bool,
    /// Voted to skip the current entry (reset with the ready flags).
    voted_skip: bool,
}

/// What an ack's `result` is: a small value, or the join snapshot (written from the state
/// when the ack is framed, never built as a `Value`).
enum AckResult {
    Value(Value),
    Join,
}

/// A successful command's answer.
struct Ack {
    result: AckResult,
    membership: Option<Membership>,
    /// Frames after the ack (replayed events on recovery).
    extra: Vec<Arc<str>>,
}

impl Ack {
    fn empty() -> Self {
        Ack::with(json!({}))
    }

    fn with(result: Value) -> Self {
        Ack {
            result: AckResult::Value(result),
            membership: None,
            extra: Vec::new(),
        }
    }
}

type Handled = Result<Ack, Refusal>;

/// One room's whole state.
#[derive(Debug)]
pub struct Room {
    cfg: RoomConfig,
    code: Arc<str>,
    d: Durable,
    seq: u64,
    members: BTreeMap<String, Member>,
    history: history::History,
    idem: idempotency::Idempotency,
    chat_buckets: HashMap<String, TokenBucket>,
    /// Recent chat (room and upstream) that moderation can delete.
    chat_index: chat_index::ChatIndex,
    ready_deadline: Option<u64>,
    /// Set while the room is paused by the `pause_all` ad policy: when it resumes anyway.
    ad_resume_at: Option<u64>,
    out: Output,
    dirty: bool,
    seq_at_step_start: u64,
    /// Gateways holding members; `None` after membership changed.
    gateway_cache: Option<Arc<[u64]>>,
    ingest: ingest::IngestState,
    heads: head::HeadSchedule,
    /// The store was last told to drop events below this seq (`Mutation::TrimEvents`).
    trimmed_below: u64,
    /// Videos whose title and duration the shell should look up.
    wanted: metadata::Wanted,
    /// Playlists being added.
    playlists: playlist::Pending,
}

/// Events the history's byte or age bound drops before the store is told to drop them too
/// (its own count bound trims the rest).
const TRIM_EVERY: u64 = 10;

impl Room {
    /// A new room owned by `owner`, with the default settings (control mode `operators`,
    /// ad policy `ignore`). The output holds its first write.
    pub fn create(cfg: RoomConfig, code: &str, owner: &str, now: u64) -> (Room, Output) {
        let d = Durable {
            settings: Settings {
                name: code.to_owned(),
                control_mode: Default::default(),
                ad_policy: Default::default(),
                vote_skip_percent: 0,
            },
            owner: owner.to_owned(),
            operators: BTreeSet::new(),
            queue: VecDeque::new(),
            current: None,
            clock: Clock::default(),
            next_entry_id: 1,
            sources: Vec::new(),
            next_source_id: 1,
            created_ms: now,
            bans: Default::default(),
            mutes: Default::default(),
        };
        let mut room = Room::from_parts(cfg, code, d, 0);
        room.dirty = true;
        room.audit(now, owner, "room.create", json!({}));
        let out = room.finish();
        (room, out)
    }

    /// Rebuilds a room from the store. A room that was waiting on its ready gate waits again.
    pub fn restore(cfg: RoomConfig, loaded: LoadedRoom, now: u64) -> Result<Room, String> {
        let d: Durable = serde_json::from_value(loaded.record.state)
            .map_err(|e| format!("room {} has unreadable state: {e}", loaded.record.code))?;
        let mut room = Room::from_parts(cfg, &loaded.record.code, d, loaded.record.seq);
        if room.d.clock.state == lockstep_shared::protocol::PlayState::Starting {
            room.ready_deadline = Some(now + room.cfg.ready_timeout_ms);
        }
        for msg in loaded.chat {
            room.chat_index.push_stored(msg);
        }
        room.want_all_metadata();
        // The stored history only counts if it is consecutive and ends at the room's seq.
        let consecutive = loaded.events.windows(2).all(|w| w[1].seq == w[0].seq + 1);
        if consecutive && loaded.events.last().map(|e| e.seq) == Some(room.seq) {
            for e in loaded.events {
                let bounds = history::Bounds {
                    ttl_ms: u64::MAX,
                    ..history::Bounds::of(&room.cfg)
                };
                room.history.push(e.seq, e.ts, Arc::from(e.frame), bounds);
            }
        }
        for cmd in loaded.commands {
            room.idem.insert(
                &cmd.user_id,
                &cmd.id,
                Arc::from(cmd.reply),
                cmd.ts,
                room.cfg.idempotency_max,
            );
        }
        Ok(room)
    }

    fn from_parts(cfg: RoomConfig, code: &str, d: Durable, seq: u64) -> Room {
        let chat_index = chat_index::ChatIndex::new(cfg.chat_snapshot);
        Room {
            cfg,
            code: Arc::from(code),
            d,
            seq,
            members: BTreeMap::new(),
            history: Default::default(),
            idem: Default::default(),
            chat_buckets: HashMap::new(),
            chat_index,
            ready_deadline: None,
            ad_resume_at: None,
            out: Output::default(),
            dirty: false,
            seq_at_step_start: seq,
            gateway_cache: None,
            ingest: Default::default(),
            heads: Default::default(),
            trimmed_below: 0,
            wanted: Default::default(),
            playlists: Default::default(),
        }
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The durable state, as the store keeps it.
    pub fn durable(&self) -> &Durable {
        &self.d
    }

    /// No one is present: the room may be unloaded.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every connection currently joined, for eviction on unload.
    pub fn member_conns(&self) -> Vec<ConnId> {
        self.members
            .values()
            .flat_map(|m| m.conns.iter().copied())
            .collect()
    }

    /// The gateways holding members, recomputed only when membership changed.
    fn gateways(&mut self) -> Arc<[u64]> {
        if let Some(g) = &self.gateway_cache {
            return g.clone();
        }
        let set: BTreeSet<u64> = self
            .members
            .values()
            .flat_map(|m| m.conns.iter().map(|c| c.gateway))
            .collect();
        let g: Arc<[u64]> = set.into_iter().collect();
        self.gateway_cache = Some(g.clone());
        g
    }

    /// The earliest time `tick` has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        [self.ready_deadline, self.ad_resume_at, self.end_due()]
            .into_iter()
            .flatten()
            .min()
    }

    /// When `tick` next announces the room's latest seq to the gateways holding members (see
    /// `head.rs`); apart from [`Room::next_deadline`] because it changes no state.
    pub fn next_head(&self) -> Option<u64> {
        if self.members.is_empty() {
            return None;
        }
        self.heads.due()
    }

    /// Handles one message from a gateway.
    pub fn handle(&mut self, now: u64, msg: ToWorker) -> Output {
        match msg {
            ToWorker::Command(env) => self.command(now, env),
            ToWorker::ConnClosed { conn, user_id, .. } => self.leave_conn(now, &user_id, conn),
            ToWorker::GatewayGone { gateway, .. } => self.drop_gateway(now, gateway),
            ToWorker::Resync {
                gateway,
                req,
                since_seq,
                conns,
                ..
            } => self.resync(gateway, req, since_seq, conns),
        }
        self.run_timers(now);
        self.finish()
    }

    /// Advances timers: ready-gate timeout, ad-pause maximum, an entry's end, window expiry.
    pub fn tick(&mut self, now: u64) -> Output {
        self.run_timers(now);
        self.history.expire(now, self.cfg.history_ttl_ms);
        self.idem.expire(now, self.cfg.idempotency_ttl_ms);
        let (rate, burst) = (self.cfg.chat_rate, self.cfg.chat_burst);
        self.chat_buckets
            .retain(|_, b| !b.is_full(rate, burst, now));
        if self.heads.take(now) && !self.members.is_empty() {
            let gateways = self.gateways();
            self.out.deliveries.push(ToGateway::RoomHead {
                room: self.code.clone(),
                seq: self.seq,
                gateways,
            });
        }
        self.finish()
    }

    fn run_timers(&mut self, now: u64) {
        if self.ready_deadline.is_some_and(|d| now >= d) {
            self.start_playback(now, "system");
        }
        if self.ad_resume_at.is_some_and(|d| now >= d) {
            self.end_ad_pause(now, true);
        }
        if self.end_due().is_some_and(|d| now >= d) {
            self.end_by_clock(now);
        }
    }

    fn command(&mut self, now: u64, env: CommandEnvelope) {
        let CommandEnvelope { caller, id, cmd } = env;
        let cacheable = id.is_some() && !matches!(cmd, ClientCommand::RoomJoin { .. });
        if let (true, Some(id)) = (cacheable, id.as_deref()) {
            if let Some(frame) = self.idem.get(&caller.user_id, id) {
                self.reply(caller.conn, Some(id), None, vec![frame]);
                return;
            }
        }
        let is_join = matches!(cmd, ClientCommand::RoomJoin { .. });
        let reply_id = id.clone();
        match self.dispatch(now, &caller, cmd) {
            Ok(ack) => {
                let text = match &ack.result {
                    AckResult::Value(v) => ack_frame(reply_id.as_deref(), v),
                    AckResult::Join => ack_frame(
                        reply_id.as_deref(),
                        &snapshot::JoinResult {
                            seq: self.seq,
                            snapshot: self.snapshot_view(true),
                        },
                    ),
                };
                let frame: Arc<str> = Arc::from(text);
                if let (true, Some(id)) = (cacheable, id) {
                    self.idem.insert(
                        &caller.user_id,
                        &id,
                        frame.clone(),
                        now,
                        self.cfg.idempotency_max,
                    );
                    self.out.mutations.push(Mutation::Command {
                        room: self.code.to_string(),
                        record: CommandRecord {
                            user_id: caller.user_id.clone(),
                            id,
                            reply: frame.to_string(),
                            ts: now,
                        },
                    });
                }
                let mut frames = Vec::with_capacity(1 + ack.extra.len());
                frames.push(frame);
                frames.extend(ack.extra);
                self.reply(caller.conn, reply_id.as_deref(), ack.membership, frames);
            }
            Err(refusal) => {
                let frame = error_frame(reply_id.as_deref(), refusal.code, &refusal.message);
                let membership = if is_join {
                    Some(Membership::Leave(self.code.to_string()))
                } else if !self.is_member(&caller) {
                    Some(Membership::Forgotten(self.code.to_string()))
                } else {
                    None
                };
                self.reply(
                    caller.conn,
                    reply_id.as_deref(),
                    membership,
                    vec![Arc::from(frame)],
                );
            }
        }
    }

    fn dispatch(&mut self, now: u64, caller: &Caller, cmd: ClientCommand) -> Handled {
        use ClientCommand::*;
        if let RoomJoin { since_seq, .. } = cmd {
            return self.join(now, caller, since_seq);
        }
        self.require_member(caller)?;
        match cmd {
            TimeSync { .. } => Err(Refusal::new(
                ErrorCode::BadRequest,
                "time.sync is answered by the gateway",
            )),
            RoomJoin { .. } => unreachable_join(),
            RoomLeave { .. } => {
                self.leave_conn(now, &caller.user_id, caller.conn);
                Ok(Ack {
                    membership: Some(Membership::Leave(self.code.to_string())),
                    ..Ack::empty()
                })
            }
            UserReady { ready, .. } => self.set_ready(now, caller, ready),
            PlayerPlay { .. } => self.with_control(caller, |r| r.play(now, caller)),
            PlayerPause { .. } => self.with_control(caller, |r| r.pause(now, caller)),
            PlayerSeek {
                position_ms, play, ..
            } => self.with_control(caller, |r| r.seek(now, caller, position_ms, play)),
            PlayerRestart { .. } => self.with_control(caller, |r| r.restart(now, caller)),
            PlayerSkip { .. } => self.with_control(caller, |r| r.skip(now, caller)),
            PlayerEnded { entry_id, .. } => self.ended(now, caller, entry_id),
            PlayerAd { active, .. } => self.ad(now, caller, active),
            PlayerVoteSkip { .. } => self.vote_skip(now, caller),
            QueueAdd { url, title, .. } => {
                self.with_control(caller, |r| r.queue_add(now, caller, &url, title))
            }
            QueueRemove { entry_id, .. } => {
                self.with_control(caller, |r| r.queue_remove(now, caller, entry_id))
            }
            QueueMove {
                entry_id, index, ..
            } => self.with_control(caller, |r| r.queue_move(now, caller, entry_id, index)),
            QueueShuffle { .. } => self.with_control(caller, |r| r.queue_shuffle(now, caller)),
            QueueClear { .. } => self.with_control(caller, |r| r.queue_clear(now, caller)),
            ChatSend { text, .. } => self.chat(now, caller, text),
            ChatDelete { message_id, .. } => self.delete_chat(now, caller, message_id),
            RoomSettings {
                control_mode,
                ad_policy,
                name,
                vote_skip_percent,
                ..
            } => self.settings(
                now,
                caller,
                control_mode,
                ad_policy,
                name,
                vote_skip_percent,
            ),
            RoomRole { user_id, role, .. } => self.set_role(now, caller, &user_id, role),
            RoomSources { add, remove, .. } => self.sources(now, caller, add, remove),
            SignalSend { to, payload, .. } => self.signal(caller, &to, &payload),
            RoomBan {
                user_id,
                duration_ms,
                ..
            } => self.sanction(now, caller, &user_id, duration_ms, Sanction::Ban),
            RoomUnban { user_id, .. } => self.lift(now, caller, &user_id, Sanction::Ban),
            RoomMute {
                user_id,
                duration_ms,
                ..
            } => self.sanction(now, caller, &user_id, duration_ms, Sanction::Mute),
            RoomUnmute { user_id, .. } => self.lift(now, caller, &user_id, Sanction::Mute),
        }
    }

    fn with_control(&mut self, caller: &Caller, f: impl FnOnce(&mut Room) -> Handled) -> Handled {
        let role = self.role_of(&caller.user_id);
        if !self.d.settings.control_mode.allows(role) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!(
                    "control mode `{}` does not allow role `{}`",
                    enum_str(&self.d.settings.control_mode),
                    enum_str(&role)
                ),
            ));
        }
        f(self)
    }

    fn is_member(&self, caller: &Caller) -> bool {
        self.members
            .get(&caller.user_id)
            .is_some_and(|m| m.conns.contains(&caller.conn))
    }

    fn require_member(&self, caller: &Caller) -> Result<(), Refusal> {
        match self.members.get(&caller.user_id) {
            Some(m) if m.conns.contains(&caller.conn) => Ok(()),
            _ => Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("join room {} first", self.code),
            )),
        }
    }

    fn role_of(&self, user_id: &str) -> Role {
        if user_id == self.d.owner {
            Role::Owner
        } else if self.d.operators.contains(user_id) {
            Role::Operator
        } else {
            Role::Participant
        }
    }

    fn user_view(&self, user_id: &str) -> Option<User> {
        self.members.get(user_id).map(|m| User {
            user_id: user_id.to_owned(),
            name: m.name.clone(),
            role: self.role_of(user_id),
            ready: m.ready,
        })
    }

    fn player_view(&self) -> PlayerView {
        PlayerView {
            clock: self.d.clock.clone(),
            entry: self.d.current.clone(),
        }
    }

    /// Whether `user_id` may read the audit log.
    pub fn may_read_audit(&self, user_id: &str) -> bool {
        matches!(self.role_of(user_id), Role::Owner | Role::Operator)
    }

    fn emit(&mut self, now: u64, body: EventBody) -> u64 {
        self.seq += 1;
        let event = Event {
            room: self.code.to_string(),
            seq: self.seq,
            ts: now,
            body,
        };
        let text = event.to_frame();
        self.out.mutations.push(Mutation::Event {
            room: self.code.to_string(),
            event: EventRecord {
                seq: self.seq,
                ts: now,
                frame: text.clone(),
            },
        });
        let frame: Arc<str> = Arc::from(text);
        let bounds = history::Bounds::of(&self.cfg);
        self.history.push(self.seq, now, frame.clone(), bounds);
        self.trim_store();
        self.heads.event(now);
        let gateways = self.gateways();
        self.out.deliveries.push(ToGateway::RoomEvent {
            room: self.code.clone(),
            seq: self.seq,
            created_ms: now,
            frame,
            gateways,
        });
        self.seq
    }

    /// Tells the store to drop what the history's byte or age bound dropped, every
    /// [`TRIM_EVERY`] such events; a history bound only by its count is left to the store's
    /// own trimming.
    fn trim_store(&mut self) {
        let Some(first) = self.history.first_seq() else {
            return;
        };
        let count_bound = self.seq.saturating_sub(self.cfg.history_max as u64) + 1;
        if first > count_bound && first >= self.trimmed_below + TRIM_EVERY {
            self.trimmed_below = first;
            self.out.mutations.push(Mutation::TrimEvents {
                room: self.code.to_string(),
                below_seq: first,
            });
        }
    }

    fn emit_player(&mut self, now: u64) {
        let view = self.player_view();
        self.emit(now, EventBody::PlayerState(view));
    }

    /// An unsequenced frame to every connection `user_id` has in the room (none if absent):
    /// not in the history, not replayed.
    fn direct(&mut self, user_id: &str, frame: Arc<str>) {
        if let Some(member) = self.members.get(user_id) {
            let conns = member.conns.iter().copied().collect();
            self.out.deliveries.push(ToGateway::Direct { conns, frame });
        }
    }

    fn emit_queue(&mut self, now: u64) {
        let entries = self.d.queue.iter().cloned().collect();
        self.emit(now, EventBody::QueueUpdate { entries });
    }

    fn reply(
        &mut self,
        conn: ConnId,
        id: Option<&str>,
        membership: Option<Membership>,
        frames: Vec<Arc<str>>,
    ) {
        self.out.deliveries.push(ToGateway::Reply {
            conn,
            id: id.map(str::to_owned),
            membership,
            frames,
            seq: self.seq,
        });
    }

    fn audit(&mut self, now: u64, actor: &str, action: &str, detail: Value) {
        self.out.mutations.push(Mutation::Audit {
            room: self.code.to_string(),
            entry: AuditEntry {
                id: 0,
                ts: now,
                actor: actor.to_owned(),
                action: action.to_owned(),
                detail,
            },
        });
    }

    fn finish(&mut self) -> Output {
        if self.dirty || self.seq != self.seq_at_step_start || !self.out.mutations.is_empty() {
            let state = if self.dirty {
                serde_json::to_value(&self.d).ok()
            } else {
                None
            };
            self.out.mutations.insert(
                0,
                Mutation::Room {
                    code: self.code.to_string(),
                    seq: self.seq,
                    state,
                    epoch: 0,
                },
            );
        }
        self.dirty = false;
        self.seq_at_step_start = self.seq;
        std::mem::take(&mut self.out)
    }
}

fn unreachable_join() -> Handled {
    Err(Refusal::new(ErrorCode::Internal, "join dispatched twice"))
}

/// The wire spelling of a unit enum, for messages.
fn enum_str<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

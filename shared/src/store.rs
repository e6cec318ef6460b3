//! The persistence seam. The worker submits each command's writes as one batch and releases
//! the command's ack and events only after the batch is durable (DESIGN.md invariant 3).
//! Implementations group-commit concurrent batches and resolve tickets in submission order.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::protocol::ChatMessage;

/// A room as stored: its durable state (owned by the engine, opaque here) and last seq.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomRecord {
    pub code: String,
    pub seq: u64,
    pub state: Value,
}

/// One remembered command id with the reply it got, for idempotent retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub user_id: String,
    pub id: String,
    pub reply: String,
    pub ts: u64,
}

/// One audit log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Assigned by the store; 0 until stored.
    pub id: u64,
    pub ts: u64,
    pub actor: String,
    pub action: String,
    pub detail: Value,
}

/// One room event kept for `since_seq` recovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub ts: u64,
    pub frame: String,
}

/// Everything a room needs to come back after a restart or an owner change.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedRoom {
    pub record: RoomRecord,
    /// Most recent chat, oldest first.
    pub chat: Vec<ChatMessage>,
    /// Remembered command ids, oldest first.
    pub commands: Vec<CommandRecord>,
    /// The recovery history, oldest first, consecutive seqs ending at `record.seq`.
    pub events: Vec<EventRecord>,
}

/// How much of a room's past a load brings back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadLimits {
    /// Chat messages for the join snapshot.
    pub chat: usize,
    /// Command ids newer than this (Unix ms).
    pub commands_since_ms: u64,
    /// Events for the recovery history.
    pub events: usize,
    /// Bytes of those events' frames, newest first; the newest event is read whatever its
    /// size. Keeps a room whose history is full of large `queue.update`s from reading
    /// hundreds of MB to load.
    pub events_bytes: usize,
    /// Events newer than this (Unix ms).
    pub events_since_ms: u64,
}

/// One write.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Insert or update the room row: its seq, and its state when it changed. `epoch` is
    /// the writer's lease epoch: a store refuses it when a newer owner has written (fencing).
    Room {
        code: String,
        seq: u64,
        state: Option<Value>,
        epoch: u64,
    },
    Chat {
        room: String,
        msg: ChatMessage,
    },
    Audit {
        room: String,
        entry: AuditEntry,
    },
    Command {
        room: String,
        record: CommandRecord,
    },
    /// A room event for the recovery history; stores keep each room's newest ones.
    Event {
        room: String,
        event: EventRecord,
    },
    /// The room's history no longer holds events below `below_seq` (its byte or age bound
    /// dropped them): the store may drop them too, so a room of large events does not keep
    /// `events_keep` of them on disk.
    TrimEvents {
        room: String,
        below_seq: u64,
    },
    /// A chat message deleted after it left the room's memory: its stored row, if there is
    /// one, keeps its place without text (`text` empty, `ext.deleted: true`, no emotes), as
    /// a rewritten `Chat` row would.
    DeleteChat {
        room: String,
        id: u64,
    },
}

/// Why the store could not do what was asked. Always safe to retry from the client's view.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store refused a write from a stale owner (epoch {0})")]
    Fenced(u64),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Retrying cannot help: a bad URL or certificate file, credentials or a certificate the
    /// server refuses, a server certificate that does not verify, no such database. A node
    /// fails at start with it rather than retrying for half a minute.
    #[error("store misconfigured: {0}")]
    Config(String),
}

/// Resolves once the submitted batch is durable (or failed).
pub type CommitTicket = oneshot::Receiver<Result<(), StoreError>>;

/// Persistence for rooms. Reads used by a loading room are ordered after every batch
/// submitted before them, so a room never loads stale state.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Queues a batch; the ticket resolves when it is committed.
    fn submit(&self, batch: Vec<Mutation>) -> CommitTicket;
    /// Loads a room (with up to `history` recent events newer than `events_since_ms`), or
    /// `None` if it was never created. A store with fencing first claims
    /// the room for `epoch`, so an older owner's later writes are refused; a room already
    /// claimed by a newer epoch is `Fenced`.
    async fn load_room(
        &self,
        code: &str,
        limits: LoadLimits,
        epoch: u64,
    ) -> Result<Option<LoadedRoom>, StoreError>;
    /// Chat history, newest first, ids below `before`.
    async fn chat_page(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;
    /// Audit log, newest first.
    async fn audit(&self, room: &str, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
    /// Waits until everything submitted so far is committed.
    async fn flush(&self) -> Result<(), StoreError>;
}

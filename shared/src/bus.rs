//! The seam between gateways and workers. A gateway hands room commands to a
//! [`WorkerLink`]; a worker hands replies and room events to a [`GatewaySink`]. Embedded mode
//! wires both in-process; cluster mode carries the same envelopes over Redis pub/sub.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::protocol::error::Refusal;
use crate::protocol::ClientCommand;

/// One client connection, unique across the cluster: the gateway's node id and a local counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnId {
    pub gateway: u64,
    pub local: u64,
}

/// The authenticated sender of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub user_id: String,
    pub name: String,
    pub conn: ConnId,
}

/// A room command on its way to the room's owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandEnvelope {
    pub caller: Caller,
    pub id: Option<String>,
    pub cmd: ClientCommand,
}

/// Gateway → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    Command(CommandEnvelope),
    /// The connection is gone: it leaves the room (presence leaves with its last connection).
    ConnClosed {
        room: String,
        conn: ConnId,
        user_id: String,
    },
    /// A gateway stopped heartbeating: every connection it held leaves the room.
    GatewayGone {
        room: String,
        gateway: u64,
    },
    /// The gateway missed some of the room's events (its bus subscription dropped, or a seq
    /// jumped): it asks for every event after `since_seq` again, and names the connections it
    /// holds in the room so that those the room no longer knows are closed. Answered with
    /// [`ToGateway::Replay`] carrying `req`.
    Resync {
        room: String,
        gateway: u64,
        req: u64,
        since_seq: u64,
        conns: Vec<ConnId>,
    },
}

impl ToWorker {
    /// The room this message is for.
    pub fn room(&self) -> &str {
        match self {
            ToWorker::Command(env) => env.cmd.room().unwrap_or_default(),
            ToWorker::ConnClosed { room, .. }
            | ToWorker::GatewayGone { room, .. }
            | ToWorker::Resync { room, .. } => room,
        }
    }
}

/// How a reply changes which rooms' events a connection receives. A refused `room.join`
/// answers with `Leave`, so the gateway forgets the attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Membership {
    Join(String),
    Leave(String),
    /// The room does not know this connection (its owner changed or it reloaded and the
    /// reset was lost): a gateway that thought it was joined closes it with 1012 so the
    /// client rejoins with `since_seq`.
    Forgotten(String),
}

/// Worker → gateway. Frames are encoded once by the worker and shared by every recipient.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToGateway {
    /// The answer to one command: the ack or error first, then any replayed events. A
    /// membership change applies before the frames are queued, so the connection sees every
    /// room event after its ack and none before.
    Reply {
        conn: ConnId,
        /// The command's `id`, for the gateway's latency measurement.
        id: Option<String>,
        membership: Option<Membership>,
        frames: Vec<Arc<str>>,
        /// The room's seq when the reply was made: a join's snapshot is at it, so the
        /// connection's events start after it (0 from nodes that predate the field).
        #[serde(default)]
        seq: u64,
    },
    /// A sequenced room event for every member connection on the gateway.
    RoomEvent {
        room: Arc<str>,
        seq: u64,
        /// Server ms when the event was created, for the delivery latency histogram.
        created_ms: u64,
        frame: Arc<str>,
        /// Gateways holding members of the room when the event was made: in a cluster the
        /// event is published to these only (invariant 5).
        gateways: Arc<[u64]>,
    },
    /// The room's latest seq, sent by its owner once the room has been quiet for a while
    /// (and once more later): a gap shows only when a later event arrives, so without it a
    /// gateway that lost a room's last events on the bus (its owner's publish queue full, the
    /// owner's Redis connection down past its retries) would keep its members behind until the
    /// room's next event. A gateway behind the head resyncs the room.
    RoomHead {
        room: Arc<str>,
        seq: u64,
        /// Gateways holding members of the room when the head was made.
        gateways: Arc<[u64]>,
    },
    /// An unsequenced frame for some connections only (`signal`).
    Direct { conns: Vec<ConnId>, frame: Arc<str> },
    /// The room closed these connections' membership without a command (room reloaded, or
    /// their gateway missed its heartbeats): the gateway closes them with 1012.
    Evict { room: String, conns: Vec<ConnId> },
    /// The room took these connections out of its members on purpose (a ban): the gateway
    /// ends their membership and sends them `frame` (`room.removed`); the sockets stay open
    /// for their other rooms.
    Remove {
        room: String,
        conns: Vec<ConnId>,
        frame: Arc<str>,
    },
    /// A worker (re)loaded the room after an owner change: every local member's socket is
    /// closed with 1012 so its client rejoins with `since_seq`.
    RoomReset { room: String },
    /// The answer to [`ToWorker::Resync`]: the room's events from `first_seq` on, consecutive,
    /// for the gateway's members of the room to receive again. `first_seq` is past the seq
    /// the gateway asked from when the history no longer covers it (its members then rejoin).
    Replay {
        room: String,
        gateway: u64,
        req: u64,
        first_seq: u64,
        frames: Vec<Arc<str>>,
    },
}

/// HTTP reads and room creation, answered by the room's owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Query {
    /// Create `room` with `user_id` as owner.
    Create { user_id: String, name: String },
    /// The snapshot without chat, for `GET /v1/rooms/{code}`.
    Snapshot,
    /// Chat history page, newest first.
    Chat { before: Option<u64>, limit: usize },
    /// Audit entries, newest first; owner and operators only.
    Audit { user_id: String, limit: usize },
    /// The bans in force; owner and operators only.
    Bans { user_id: String },
}

/// How a gateway reaches the workers.
#[async_trait]
pub trait WorkerLink: Send + Sync + 'static {
    /// Hands a message to the room's owner without waiting for it to run; a full room
    /// mailbox or an unreachable owner is refused with `unavailable`.
    async fn send(&self, msg: ToWorker) -> Result<(), Refusal>;
    /// Asks the room's owner and waits for the answer.
    async fn query(&self, room: &str, query: Query) -> Result<Value, Refusal>;
}

/// How a worker reaches the gateways. Must not block: it is called from room actors.
pub trait GatewaySink: Send + Sync + 'static {
    fn deliver(&self, msg: ToGateway);
}

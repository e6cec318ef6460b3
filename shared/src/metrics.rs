//! Every metric name a node exports, in one place, so dashboards and alert rules can be
//! checked against the code. Names follow `lockstep_<area>_<what>_<unit>`; labels come only
//! from bounded sets (command type, outcome code, close code).

/// Open WebSocket connections (gauge).
pub const GATEWAY_CONNECTIONS: &str = "lockstep_gateway_connections";
/// Accepted WebSocket connections.
pub const GATEWAY_CONNECTIONS_OPENED: &str = "lockstep_gateway_connections_opened_total";
/// Closed WebSocket connections, label `code` (close code).
pub const GATEWAY_CONNECTIONS_CLOSED: &str = "lockstep_gateway_connections_closed_total";
/// Upgrades or HTTP requests refused before the upgrade, label `reason`.
pub const GATEWAY_REJECTED: &str = "lockstep_gateway_rejected_total";
/// Commands received, labels `type` and `outcome` (`ok` or an error code).
pub const GATEWAY_COMMANDS: &str = "lockstep_gateway_commands_total";
/// Command received → ack or error written to the outbound queue, label `type`.
pub const GATEWAY_COMMAND_LATENCY: &str = "lockstep_gateway_command_latency_seconds";
/// Room event created → written to the socket.
pub const GATEWAY_EVENT_DELIVERY_LATENCY: &str = "lockstep_gateway_event_delivery_seconds";
/// Frames written to sockets.
pub const GATEWAY_FRAMES_SENT: &str = "lockstep_gateway_frames_sent_total";
/// Connections closed because their outbound queue was full (4008).
pub const GATEWAY_OUTBOUND_OVERFLOW: &str = "lockstep_gateway_outbound_overflow_total";
/// Depth of an outbound queue when a frame is queued (histogram).
pub const GATEWAY_OUTBOUND_QUEUE_DEPTH: &str = "lockstep_gateway_outbound_queue_depth_frames";
/// HTTP requests, labels `route` and `status`.
pub const GATEWAY_HTTP_REQUESTS: &str = "lockstep_gateway_http_requests_total";

/// Rooms loaded in memory (gauge).
pub const WORKER_ROOMS_ACTIVE: &str = "lockstep_worker_rooms_active";
/// Room events produced, label `type`.
pub const WORKER_EVENTS: &str = "lockstep_worker_events_total";
/// Commands refused because a room's mailbox was full.
pub const WORKER_MAILBOX_FULL: &str = "lockstep_worker_mailbox_full_total";
/// Rooms loaded from the store.
pub const WORKER_ROOM_LOADS: &str = "lockstep_worker_room_loads_total";

/// Time one group commit takes.
pub const STORE_COMMIT_LATENCY: &str = "lockstep_store_commit_seconds";
/// Mutations per group commit (histogram).
pub const STORE_BATCH_SIZE: &str = "lockstep_store_batch_mutations";
/// Failed commits.
pub const STORE_ERRORS: &str = "lockstep_store_errors_total";

/// Messages published to Redis.
pub const BUS_PUBLISHED: &str = "lockstep_bus_published_total";
/// Messages that could not be published (queue full or Redis error).
pub const BUS_DROPPED: &str = "lockstep_bus_dropped_total";
/// Messages received from Redis pub/sub.
pub const BUS_RECEIVED: &str = "lockstep_bus_received_total";
/// Shard leases this worker holds (gauge).
pub const LEASE_OWNED: &str = "lockstep_lease_owned_shards";
/// Shard leases acquired (after a failover or a handoff).
pub const LEASE_ACQUIRED: &str = "lockstep_lease_acquired_total";
/// Shard leases lost (renewal failed) or released (handoff), label `how`.
pub const LEASE_DROPPED: &str = "lockstep_lease_dropped_total";

/// Every exported name, for the dashboard and alert-rule checks.
pub const ALL: &[&str] = &[
    GATEWAY_CONNECTIONS,
    GATEWAY_CONNECTIONS_OPENED,
    GATEWAY_CONNECTIONS_CLOSED,
    GATEWAY_REJECTED,
    GATEWAY_COMMANDS,
    GATEWAY_COMMAND_LATENCY,
    GATEWAY_EVENT_DELIVERY_LATENCY,
    GATEWAY_FRAMES_SENT,
    GATEWAY_OUTBOUND_OVERFLOW,
    GATEWAY_OUTBOUND_QUEUE_DEPTH,
    GATEWAY_HTTP_REQUESTS,
    WORKER_ROOMS_ACTIVE,
    WORKER_EVENTS,
    WORKER_MAILBOX_FULL,
    WORKER_ROOM_LOADS,
    STORE_COMMIT_LATENCY,
    STORE_BATCH_SIZE,
    STORE_ERRORS,
    BUS_PUBLISHED,
    BUS_DROPPED,
    BUS_RECEIVED,
    LEASE_OWNED,
    LEASE_ACQUIRED,
    LEASE_DROPPED,
];

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
/// Depth of a connection's outbound queue each time its task takes a batch (histogram);
/// frames the fan-out writes straight into a free socket never queue.
pub const GATEWAY_OUTBOUND_QUEUE_DEPTH: &str = "lockstep_gateway_outbound_queue_depth_frames";
/// HTTP requests, labels `route` and `status`.
pub const GATEWAY_HTTP_REQUESTS: &str = "lockstep_gateway_http_requests_total";
/// Rooms whose events this gateway asked for again after missing some on the bus (a Redis
/// reconnect, a seq gap), label `outcome`: `replayed` (members kept their sockets), or
/// `timed_out`, `refused`, `queue_full` (members closed with 1012 to rejoin by seq).
pub const GATEWAY_ROOM_RESYNCS: &str = "lockstep_gateway_room_resyncs_total";
/// Room events a resync gave this gateway's members after the bus lost them (once per room).
pub const GATEWAY_RESYNC_RECOVERED: &str = "lockstep_gateway_resync_recovered_events_total";
/// Room heads (a quiet room's latest seq, from its owner) that showed this gateway had lost
/// the room's last events on the bus; each starts a resync.
pub const GATEWAY_ROOM_HEADS_BEHIND: &str = "lockstep_gateway_room_heads_behind_total";
/// Commands answered `unavailable` by the gateway because no reply came in time, label `type`.
pub const GATEWAY_REPLY_TIMEOUTS: &str = "lockstep_gateway_reply_timeouts_total";

/// Rooms loaded in memory (gauge).
pub const WORKER_ROOMS_ACTIVE: &str = "lockstep_worker_rooms_active";
/// Room events produced, label `type`.
pub const WORKER_EVENTS: &str = "lockstep_worker_events_total";
/// Commands refused because a room's mailbox was full.
pub const WORKER_MAILBOX_FULL: &str = "lockstep_worker_mailbox_full_total";
/// Rooms loaded from the store.
pub const WORKER_ROOM_LOADS: &str = "lockstep_worker_room_loads_total";
/// Gateways this worker declared dead (no heartbeat for `cluster.gateway_timeout_ms`) and
/// whose members it dropped: a crashed gateway, or a stalled one whose sockets were closed.
pub const WORKER_GATEWAYS_REAPED: &str = "lockstep_worker_gateways_reaped_total";

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
/// Pipelines of messages sent again after their connection failed (each may repeat messages).
pub const BUS_PUBLISH_RETRIES: &str = "lockstep_bus_publish_retries_total";
/// Messages received from Redis pub/sub.
pub const BUS_RECEIVED: &str = "lockstep_bus_received_total";
/// Times a subscriber had to subscribe its channels again, by `cause` (`reconnect`: its
/// connection or a Redis Cluster node dropped; `slot_moved`: resharding moved a channel;
/// `overflow`: messages came faster than handled). Messages may have been lost each time, so
/// gateways close their sockets with 1012 and clients resume by seq: a burst of rejoins.
pub const BUS_RESUBSCRIBES: &str = "lockstep_bus_resubscribes_total";
/// Redis' `client-output-buffer-limit pubsub` hard limit as read at start (gauge; 0 = none):
/// below 256 MiB a big room's join storm can get this node's subscription dropped.
pub const BUS_PUBSUB_LIMIT: &str = "lockstep_bus_pubsub_limit_bytes";
/// This node's clock minus Redis' clock, seconds (gauge, measured with each heartbeat): the
/// spread across nodes is their clock skew, which playback sync depends on.
pub const BUS_CLOCK_OFFSET: &str = "lockstep_bus_clock_offset_seconds";
/// Shard leases this worker holds (gauge).
pub const LEASE_OWNED: &str = "lockstep_lease_owned_shards";
/// Shard leases acquired (after a failover or a handoff).
pub const LEASE_ACQUIRED: &str = "lockstep_lease_acquired_total";
/// Shard leases lost (renewal failed) or released (handoff), label `how`.
pub const LEASE_DROPPED: &str = "lockstep_lease_dropped_total";
/// Held shard leases found missing at renewal and set again under the same epoch: Redis
/// restarted or failed over without them, and the worker kept its rooms instead of dropping
/// them.
pub const LEASE_RECLAIMED: &str = "lockstep_lease_reclaimed_total";
/// Lease rounds in which the worker neither took nor handed off a shard because Redis had
/// just lost the live set and not every live worker had written itself back yet.
pub const LEASE_SETTLING: &str = "lockstep_lease_settling_rounds_total";

/// Upstream chat items delivered to rooms, labels `platform` and `kind`.
pub const INGEST_MESSAGES: &str = "lockstep_ingest_messages_total";
/// Upstream chat items dropped by the per-room cap or a full room, label `platform`.
pub const INGEST_SHED: &str = "lockstep_ingest_shed_total";
/// Failed upstream calls, labels `platform` and `reason` (`status_429`, `status_5xx`,
/// `status_other`, `timeout`, `connect`, `proxy`, `parse`, `closed`).
pub const INGEST_UPSTREAM_ERRORS: &str = "lockstep_ingest_upstream_errors_total";
/// Upstream request duration, label `platform`.
pub const INGEST_UPSTREAM_LATENCY: &str = "lockstep_ingest_upstream_request_seconds";
/// Circuit breakers open now (gauge), label `scope` (`twitch`, `youtube`, `proxy`).
pub const INGEST_BREAKERS_OPEN: &str = "lockstep_ingest_breakers_open";
/// Breaker state changes, labels `scope` and `to` (`open`, `half_open`, `closed`).
pub const INGEST_BREAKER_TRANSITIONS: &str = "lockstep_ingest_breaker_transitions_total";
/// Sources running now (gauge), label `platform`.
pub const INGEST_SOURCES_ACTIVE: &str = "lockstep_ingest_sources_active";
/// Open Twitch IRC connections (gauge).
pub const INGEST_TWITCH_CONNECTIONS: &str = "lockstep_ingest_twitch_connections";
/// Twitch JOINs sent.
pub const INGEST_TWITCH_JOINS: &str = "lockstep_ingest_twitch_joins_total";
/// Time a JOIN waited for the cluster-wide limiter.
pub const INGEST_JOIN_WAIT: &str = "lockstep_ingest_join_wait_seconds";
/// Requests through each configured proxy, labels `proxy` (index in the pool) and `outcome`.
pub const INGEST_PROXY_REQUESTS: &str = "lockstep_ingest_proxy_requests_total";
/// Video title/duration lookups, label `outcome` (`found`, `cached`, `unavailable`,
/// `failed`, `busy`; `playlist` for a playlist page read): how often queued entries get
/// their metadata, and why not.
pub const INGEST_METADATA_LOOKUPS: &str = "lockstep_ingest_metadata_lookups_total";

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
    GATEWAY_ROOM_RESYNCS,
    GATEWAY_RESYNC_RECOVERED,
    GATEWAY_ROOM_HEADS_BEHIND,
    GATEWAY_REPLY_TIMEOUTS,
    WORKER_ROOMS_ACTIVE,
    WORKER_EVENTS,
    WORKER_MAILBOX_FULL,
    WORKER_ROOM_LOADS,
    WORKER_GATEWAYS_REAPED,
    STORE_COMMIT_LATENCY,
    STORE_BATCH_SIZE,
    STORE_ERRORS,
    BUS_PUBLISHED,
    BUS_DROPPED,
    BUS_PUBLISH_RETRIES,
    BUS_RECEIVED,
    BUS_RESUBSCRIBES,
    BUS_PUBSUB_LIMIT,
    BUS_CLOCK_OFFSET,
    LEASE_OWNED,
    LEASE_ACQUIRED,
    LEASE_DROPPED,
    LEASE_RECLAIMED,
    LEASE_SETTLING,
    INGEST_MESSAGES,
    INGEST_SHED,
    INGEST_UPSTREAM_ERRORS,
    INGEST_UPSTREAM_LATENCY,
    INGEST_BREAKERS_OPEN,
    INGEST_BREAKER_TRANSITIONS,
    INGEST_SOURCES_ACTIVE,
    INGEST_TWITCH_CONNECTIONS,
    INGEST_TWITCH_JOINS,
    INGEST_JOIN_WAIT,
    INGEST_PROXY_REQUESTS,
    INGEST_METADATA_LOOKUPS,
];

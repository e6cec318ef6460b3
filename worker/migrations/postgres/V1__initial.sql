-- Rooms: durable engine state as JSONB (settings, roles, queue, current entry, clock,
-- sources), the last seq, and the fencing epoch of the last owner that wrote it.
CREATE TABLE rooms (
    code TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    state JSONB NOT NULL,
    epoch BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Chat history; the primary key serves paging newest-first by (room, id).
CREATE TABLE chat (
    room TEXT NOT NULL,
    id BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    msg JSONB NOT NULL,
    PRIMARY KEY (room, id)
);

CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    room TEXT NOT NULL,
    ts BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail JSONB NOT NULL
);
CREATE INDEX audit_by_room ON audit (room, id DESC);

-- Command ids with their acks, for idempotent retries across owners.
CREATE TABLE commands (
    room TEXT NOT NULL,
    user_id TEXT NOT NULL,
    id TEXT NOT NULL,
    reply TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (room, user_id, id)
);
CREATE INDEX commands_by_age ON commands (ts);

-- The recovery history: each room's newest events, so since_seq recovery survives an
-- owner change. Pruned by the writer to the history length.
CREATE TABLE events (
    room TEXT NOT NULL,
    seq BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    frame TEXT NOT NULL,
    PRIMARY KEY (room, seq)
);

-- The recovery history: each room's newest events, for since_seq after a restart.
CREATE TABLE events (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    frame TEXT NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;

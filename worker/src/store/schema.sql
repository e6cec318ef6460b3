CREATE TABLE rooms (
    code TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE chat (
    room TEXT NOT NULL,
    id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    msg TEXT NOT NULL,
    PRIMARY KEY (room, id)
) WITHOUT ROWID;
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room TEXT NOT NULL,
    ts INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_by_room ON audit (room, id);
CREATE TABLE commands (
    room TEXT NOT NULL,
    user_id TEXT NOT NULL,
    id TEXT NOT NULL,
    reply TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (room, user_id, id)
) WITHOUT ROWID;
CREATE INDEX commands_by_age ON commands (ts);

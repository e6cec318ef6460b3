//! The embedded SQLite store. A single writer thread owns the connection: batches queued
//! while a transaction runs are committed together (group commit), and reads queue behind
//! earlier writes so a room never loads stale state. WAL with `synchronous=NORMAL`: a commit
//! survives a process crash (`kill -9`); an OS crash may lose the last commits.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use lockstep_shared::metrics as names;
use lockstep_shared::protocol::ChatMessage;
use lockstep_shared::store::{
    AuditEntry, CommandRecord, CommitTicket, EventRecord, LoadLimits, LoadedRoom, Mutation,
    RoomRecord, Store, StoreError,
};
use rusqlite::{params, Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};
use tokio::sync::{mpsc, oneshot};

/// Jobs waiting for the writer thread; submitters wait (async) when it is full.
const QUEUE_CAPACITY: usize = 8_192;

/// Ordered, checksummed-by-position schema versions; append only.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("schema.sql")),
        M::up(include_str!("schema_v2_events.sql")),
    ])
}

type ReadFn = Box<dyn FnOnce(&Connection) + Send>;

type Job = super::Job<ReadFn>;

/// Handle to the writer thread; cheap to share.
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
}

/// Settings for the embedded store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub batch_max: usize,
    pub chat_keep: usize,
    pub command_ttl_ms: u64,
    /// Events kept per room for `since_seq` recovery (the history length).
    pub events_keep: usize,
}

impl SqliteStore {
    /// Opens (creating file and directory) and migrates the database, then starts the writer.
    pub fn open(path: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mut conn = Connection::open(path).map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(unavailable)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(unavailable)?;
        migrations()
            .to_latest(&mut conn)
            .map_err(|e| StoreError::Corrupt(format!("migration failed: {e}")))?;
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("lockstep-sqlite".into())
            .spawn(move || Writer::new(conn, options).run(rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start writer: {e}")))?;
        Ok(SqliteStore { jobs: tx })
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job = Job::Read(Box::new(move |conn| {
            let _ = tx.send(f(conn));
        }));
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("store writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("store writer stopped".into()))?
    }
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn submit(&self, batch: Vec<Mutation>) -> CommitTicket {
        super::enqueue_commit(&self.jobs, |reply| Job::Commit(batch, reply))
    }

    async fn load_room(
        &self,
        code: &str,
        limits: LoadLimits,
        _epoch: u64,
    ) -> Result<Option<LoadedRoom>, StoreError> {
        // One process owns every room in embedded mode: nothing to fence.
        let code = code.to_owned();
        self.read(move |conn| load_room(conn, &code, limits)).await
    }

    async fn chat_page(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let room = room.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT msg FROM chat WHERE room = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
                )
                .map_err(unavailable)?;
            let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
            let rows = stmt
                .query_map(params![room, before, limit as i64], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(unavailable)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(serde_json::from_str(&row.map_err(unavailable)?).map_err(corrupt)?);
            }
            Ok(out)
        })
        .await
    }

    async fn audit(&self, room: &str, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let room = room.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, ts, actor, action, detail FROM audit WHERE room = ?1 \
                     ORDER BY id DESC LIMIT ?2",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![room, limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })
                .map_err(unavailable)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, ts, actor, action, detail) = row.map_err(unavailable)?;
                out.push(AuditEntry {
                    id: id as u64,
                    ts: ts as u64,
                    actor,
                    action,
                    detail: serde_json::from_str(&detail).map_err(corrupt)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.read(|_| Ok(())).await
    }
}

fn load_room(
    conn: &Connection,
    code: &str,
    limits: LoadLimits,
) -> Result<Option<LoadedRoom>, StoreError> {
    let (chat_limit, commands_since_ms) = (limits.chat, limits.commands_since_ms);
    let row = conn
        .query_row(
            "SELECT seq, state FROM rooms WHERE code = ?1",
            params![code],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )
        .optional()
        .map_err(unavailable)?;
    let Some((seq, state)) = row else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare_cached("SELECT msg FROM chat WHERE room = ?1 ORDER BY id DESC LIMIT ?2")
        .map_err(unavailable)?;
    let mut chat: Vec<ChatMessage> = Vec::new();
    for row in stmt
        .query_map(params![code, chat_limit as i64], |r| r.get::<_, String>(0))
        .map_err(unavailable)?
    {
        chat.push(serde_json::from_str(&row.map_err(unavailable)?).map_err(corrupt)?);
    }
    chat.reverse();
    let mut stmt = conn
        .prepare_cached(
            "SELECT user_id, id, reply, ts FROM commands WHERE room = ?1 AND ts >= ?2 ORDER BY ts",
        )
        .map_err(unavailable)?;
    let commands = stmt
        .query_map(params![code, commands_since_ms as i64], |r| {
            Ok(CommandRecord {
                user_id: r.get(0)?,
                id: r.get(1)?,
                reply: r.get(2)?,
                ts: r.get::<_, i64>(3)? as u64,
            })
        })
        .map_err(unavailable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unavailable)?;
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, ts, frame FROM (
                SELECT seq, ts, frame, length(CAST(frame AS BLOB)) AS size,
                       sum(length(CAST(frame AS BLOB))) OVER (ORDER BY seq DESC) AS upto
                FROM events WHERE room = ?1 AND ts >= ?2 ORDER BY seq DESC LIMIT ?3
             ) WHERE upto <= ?4 OR upto = size ORDER BY seq DESC",
        )
        .map_err(unavailable)?;
    let mut events = stmt
        .query_map(
            params![
                code,
                limits.events_since_ms as i64,
                limits.events as i64,
                i64::try_from(limits.events_bytes).unwrap_or(i64::MAX)
            ],
            |r| {
                Ok(EventRecord {
                    seq: r.get::<_, i64>(0)? as u64,
                    ts: r.get::<_, i64>(1)? as u64,
                    frame: r.get(2)?,
                })
            },
        )
        .map_err(unavailable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unavailable)?;
    events.reverse();
    Ok(Some(LoadedRoom {
        record: RoomRecord {
            code: code.to_owned(),
            seq: seq as u64,
            state: serde_json::from_str(&state).map_err(corrupt)?,
        },
        chat,
        commands,
        events,
    }))
}

/// The thread that owns the connection.
struct Writer {
    conn: Connection,
    options: SqliteOptions,
    chat_since_prune: HashMap<String, usize>,
    events_since_prune: HashMap<String, usize>,
    commits: u64,
}

impl Writer {
    fn new(conn: Connection, options: SqliteOptions) -> Self {
        Writer {
            conn,
            options,
            chat_since_prune: HashMap::new(),
            events_since_prune: HashMap::new(),
            commits: 0,
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut next: Option<Job> = None;
        loop {
            let job = match next.take() {
                Some(job) => job,
                None => match rx.blocking_recv() {
                    Some(job) => job,
                    None => return,
                },
            };
            match job {
                Job::Read(f) => f(&self.conn),
                Job::Commit(batch, done) => {
                    let (group, after) =
                        super::gather(&mut rx, (batch, done), self.options.batch_max);
                    next = after;
                    let started = Instant::now();
                    let result = self.commit(&group.batches);
                    super::record_commit(started, group.size);
                    if let Err(e) = &result {
                        metrics::counter!(names::STORE_ERRORS).increment(1);
                        tracing::error!(cause = %e, batches = group.waiters.len(), "store commit failed");
                    }
                    for w in group.waiters {
                        let _ = w.send(result.clone());
                    }
                }
            }
        }
    }

    fn commit(&mut self, batches: &[Vec<Mutation>]) -> Result<(), StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(unavailable)?;
        let mut newest_ts = 0u64;
        for m in batches.iter().flatten() {
            match m {
                Mutation::Room {
                    code, seq, state, ..
                } => match state {
                    Some(state) => {
                        tx.prepare_cached(
                            "INSERT INTO rooms (code, seq, state, updated_ms) VALUES (?1, ?2, ?3, 0) \
                             ON CONFLICT(code) DO UPDATE SET seq = excluded.seq, state = excluded.state",
                        )
                        .and_then(|mut s| s.execute(params![code, *seq as i64, state.to_string()]))
                        .map_err(unavailable)?;
                    }
                    None => {
                        tx.prepare_cached("UPDATE rooms SET seq = ?2 WHERE code = ?1")
                            .and_then(|mut s| s.execute(params![code, *seq as i64]))
                            .map_err(unavailable)?;
                    }
                },
                Mutation::Chat { room, msg } => {
                    newest_ts = newest_ts.max(msg.ts);
                    let json = serde_json::to_string(msg).map_err(corrupt)?;
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO chat (room, id, ts, msg) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .and_then(|mut s| s.execute(params![room, msg.id as i64, msg.ts as i64, json]))
                    .map_err(unavailable)?;
                    *self.chat_since_prune.entry(room.clone()).or_default() += 1;
                }
                Mutation::Audit { room, entry } => {
                    tx.prepare_cached(
                        "INSERT INTO audit (room, ts, actor, action, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            room,
                            entry.ts as i64,
                            entry.actor,
                            entry.action,
                            entry.detail.to_string()
                        ])
                    })
                    .map_err(unavailable)?;
                }
                Mutation::DeleteChat { room, id } => {
                    tx.prepare_cached(
                        "UPDATE chat SET msg = json_set(msg, '$.text', '', '$.ext', json(json_set( \
                         json_remove(coalesce(json_extract(msg, '$.ext'), '{}'), '$.emotes'), \
                         '$.deleted', json('true')))) WHERE room = ?1 AND id = ?2",
                    )
                    .and_then(|mut s| s.execute(params![room, *id as i64]))
                    .map_err(unavailable)?;
                }
                Mutation::TrimEvents { room, below_seq } => {
                    tx.prepare_cached("DELETE FROM events WHERE room = ?1 AND seq < ?2")
                        .and_then(|mut s| s.execute(params![room, *below_seq as i64]))
                        .map_err(unavailable)?;
                }
                Mutation::Event { room, event } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO events (room, seq, ts, frame) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![room, event.seq as i64, event.ts as i64, event.frame])
                    })
                    .map_err(unavailable)?;
                    *self.events_since_prune.entry(room.clone()).or_default() += 1;
                }
                Mutation::Command { room, record } => {
                    newest_ts = newest_ts.max(record.ts);
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO commands (room, user_id, id, reply, ts) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            room,
                            record.user_id,
                            record.id,
                            record.reply,
                            record.ts as i64
                        ])
                    })
                    .map_err(unavailable)?;
                }
            }
        }
        let keep = (self.options.chat_keep, self.options.events_keep);
        prune_table(&mut self.chat_since_prune, "chat", "id", keep.0, &tx)?;
        prune_table(&mut self.events_since_prune, "events", "seq", keep.1, &tx)?;
        prune_commands(self.commits, self.options.command_ttl_ms, &tx, newest_ts)?;
        tx.commit().map_err(unavailable)?;
        self.commits += 1;
        Ok(())
    }
}

/// Keeps each room's newest `keep` rows of `table` (ordered by `key`), checking a room
/// after every `keep / 10` inserts.
fn prune_table(
    since: &mut HashMap<String, usize>,
    table: &str,
    key: &str,
    keep: usize,
    tx: &rusqlite::Transaction<'_>,
) -> Result<(), StoreError> {
    let due: Vec<String> = since
        .iter()
        .filter(|(_, n)| **n >= (keep / 10).max(1))
        .map(|(r, _)| r.clone())
        .collect();
    for room in due {
        since.remove(&room);
        let sql = format!(
            "DELETE FROM {table} WHERE room = ?1 AND {key} <= \
             (SELECT {key} FROM {table} WHERE room = ?1 ORDER BY {key} DESC LIMIT 1 OFFSET ?2)"
        );
        tx.prepare_cached(&sql)
            .and_then(|mut s| s.execute(params![room, keep as i64]))
            .map_err(unavailable)?;
    }
    Ok(())
}

/// Forgets command ids older than their TTL, every thousandth commit.
fn prune_commands(
    commits: u64,
    ttl_ms: u64,
    tx: &rusqlite::Transaction<'_>,
    newest_ts: u64,
) -> Result<(), StoreError> {
    if commits % 1_000 == 0 && newest_ts > 0 {
        let cutoff = newest_ts.saturating_sub(ttl_ms);
        tx.prepare_cached("DELETE FROM commands WHERE ts < ?1")
            .and_then(|mut s| s.execute(params![cutoff as i64]))
            .map_err(unavailable)?;
    }
    Ok(())
}

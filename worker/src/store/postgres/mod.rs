//! The cluster store: PostgreSQL through deadpool-postgres. Writer tasks, each owning a
//! share of the rooms (by hash, so one room's writes stay in order), group-commit every batch
//! queued while their previous transaction ran, as a few set statements (see `commit`); a
//! fenced (stale-owner) room's batches fail alone. Several writers keep several transactions in
//! flight: a commit is mostly round trips and the fsync, which Postgres shares between
//! concurrent commits. Reads queue behind earlier writes of the same room, like the SQLite
//! store, so a room never loads stale state. Migrations (refinery) run at start-up.

use std::time::Instant;

use deadpool_postgres::{Config as PoolSettings, Pool, PoolConfig, Runtime};
use lockstep_shared::metrics as names;
use lockstep_shared::protocol::ChatMessage;
use lockstep_shared::store::{
    AuditEntry, CommandRecord, CommitTicket, EventRecord, LoadLimits, LoadedRoom, Mutation,
    RoomRecord, Store, StoreError,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::DbError;
use tokio_postgres::NoTls;

mod commit;
mod tls;

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// Advisory lock key held while migrating ("lockstep" in ASCII).
const MIGRATION_LOCK: i64 = 0x6c6f_636b_7374_6570;

/// Jobs waiting for the writer; submitters get `unavailable` when it is full.
const QUEUE_CAPACITY: usize = 8_192;

type ReadJob = Box<dyn FnOnce(Pool) -> tokio::task::JoinHandle<()> + Send>;

type Job = super::Job<ReadJob>;

/// Handle to the Postgres writers; cheap to share.
pub struct PostgresStore {
    /// One queue per writer; a room always uses the same one.
    writers: Vec<mpsc::Sender<Job>>,
    pool: Pool,
}

/// Writers per pool: a quarter of the connections, the rest serve reads.
fn writer_count(pool_size: usize) -> usize {
    (pool_size / 4).clamp(1, 8)
}

/// The room a batch belongs to (every mutation of a batch is one room's).
fn batch_room(batch: &[Mutation]) -> &str {
    match batch.first() {
        Some(Mutation::Room { code, .. }) => code,
        Some(
            Mutation::Chat { room, .. }
            | Mutation::Audit { room, .. }
            | Mutation::Command { room, .. }
            | Mutation::Event { room, .. }
            | Mutation::TrimEvents { room, .. }
            | Mutation::DeleteChat { room, .. },
        ) => room,
        None => "",
    }
}

/// Settings for the Postgres store.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    pub url: String,
    pub pool_size: usize,
    pub batch_max: usize,
    /// Events kept per room for `since_seq` recovery (the history length).
    pub events_keep: usize,
    /// PEM roots for TLS (`sslmode=require` in `url`); `None` trusts webpki-roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for a server that authenticates by certificate.
    pub client_identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The error with its causes: tokio-postgres keeps the server's words (`DbError`) and the TLS
/// failure's reason in sources its message leaves out ("db error", "error performing TLS
/// handshake").
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    for err in std::iter::successors(e.source(), |err| err.source()) {
        let part = match err.downcast_ref::<DbError>() {
            Some(db) => db.message().to_owned(),
            None => err.to_string(),
        };
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
    }
    text
}

fn unavailable<E: std::error::Error + 'static>(e: E) -> StoreError {
    StoreError::Unavailable(describe(&e))
}

/// Why connecting failed: [`StoreError::Config`] when the server refused who we are (SQLSTATE
/// class 28: password, `pg_hba.conf`, a client certificate it wants), the database does not
/// exist (3D000) or TLS failed on a certificate (either side's); else unavailable (refused,
/// starting up, unreachable), which is worth retrying.
fn connect_error<E: std::error::Error + 'static>(e: E) -> StoreError {
    let settled = std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |err| {
        err.source()
    })
    .any(|err| {
        let refused = err.downcast_ref::<DbError>().is_some_and(|db| {
            let code = db.code().code();
            code.starts_with("28") || code == "3D000"
        });
        let tls = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        refused || tls
    });
    match settled {
        true => StoreError::Config(describe(&e)),
        false => StoreError::Unavailable(describe(&e)),
    }
}

impl PostgresStore {
    /// Connects, migrates, and starts the writer task.
    pub async fn open(options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        let mut settings = PoolSettings::new();
        settings.url = Some(options.url.clone());
        settings.pool = Some(PoolConfig::new(options.pool_size.max(2)));
        let client = options
            .client_identity
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()));
        let pool = match tls::connector(&options.url, options.ca_file.as_deref(), client)? {
            Some(tls) => settings.create_pool(Some(Runtime::Tokio1), tls),
            None => settings.create_pool(Some(Runtime::Tokio1), NoTls),
        }
        .map_err(|e| StoreError::Config(describe(&e)))?;
        {
            let mut client = pool.get().await.map_err(connect_error)?;
            let client: &mut tokio_postgres::Client = &mut client;
            // Workers starting together must not migrate concurrently.
            client
                .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(unavailable)?;
            let migrated = embedded::migrations::runner().run_async(client).await;
            let _ = client
                .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
                .await;
            migrated.map_err(|e| StoreError::Corrupt(format!("migration failed: {e}")))?;
        }
        let writers = (0..writer_count(options.pool_size))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
                tokio::spawn(writer(
                    pool.clone(),
                    rx,
                    options.batch_max.max(1),
                    options.events_keep,
                ));
                tx
            })
            .collect();
        Ok(PostgresStore { writers, pool })
    }

    /// The queue of the writer that owns `room`.
    fn jobs(&self, room: &str) -> &mpsc::Sender<Job> {
        let n = self.writers.len().max(1) as u32;
        &self.writers[lockstep_shared::shard::shard_of(room, n) as usize % self.writers.len()]
    }

    /// One round trip to the server, for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(unavailable)?;
        client.simple_query("SELECT 1").await.map_err(unavailable)?;
        Ok(())
    }

    /// Runs `f` once every write of `room` queued before it is committed.
    async fn read<T, F, Fut>(&self, room: &str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |pool| {
            tokio::spawn(async move {
                let _ = tx.send(f(pool).await);
            })
        });
        self.jobs(room)
            .send(Job::Read(job))
            .await
            .map_err(|_| StoreError::Unavailable("store writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("store writer stopped".into()))?
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    fn submit(&self, batch: Vec<Mutation>) -> CommitTicket {
        let jobs = self.jobs(batch_room(&batch));
        super::enqueue_commit(jobs, |reply| Job::Commit(batch, reply))
    }

    async fn load_room(
        &self,
        code: &str,
        limits: LoadLimits,
        epoch: u64,
    ) -> Result<Option<LoadedRoom>, StoreError> {
        let (chat_limit, commands_since_ms) = (limits.chat, limits.commands_since_ms);
        let code = code.to_owned();
        self.read(&code.clone(), move |pool| async move {
            let client = pool.get().await.map_err(unavailable)?;
            // Claim: from now on writes from older epochs are refused.
            let Some(row) = client
                .query_opt(
                    "UPDATE rooms SET epoch = GREATEST(epoch, $2) WHERE code = $1 RETURNING seq, state, epoch",
                    &[&code, &(epoch as i64)],
                )
                .await
                .map_err(unavailable)?
            else {
                return Ok(None);
            };
            let claimed: i64 = row.get(2);
            if claimed > epoch as i64 {
                return Err(StoreError::Fenced(epoch));
            }
            let seq: i64 = row.get(0);
            let state: Value = row.get(1);
            let rows = client
                .query(
                    "SELECT msg FROM chat WHERE room = $1 ORDER BY id DESC LIMIT $2",
                    &[&code, &(chat_limit as i64)],
                )
                .await
                .map_err(unavailable)?;
            let mut chat: Vec<ChatMessage> = rows
                .iter()
                .map(|r| serde_json::from_value(r.get::<_, Value>(0)))
                .collect::<Result<_, _>>()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            chat.reverse();
            let rows = client
                .query(
                    "SELECT user_id, id, reply, ts FROM commands WHERE room = $1 AND ts >= $2 ORDER BY ts",
                    &[&code, &(commands_since_ms as i64)],
                )
                .await
                .map_err(unavailable)?;
            let commands = rows
                .iter()
                .map(|r| CommandRecord {
                    user_id: r.get(0),
                    id: r.get(1),
                    reply: r.get(2),
                    ts: r.get::<_, i64>(3) as u64,
                })
                .collect();
            let rows = client
                .query(
                    "SELECT seq, ts, frame FROM (
                        SELECT seq, ts, frame, octet_length(frame) AS size,
                               sum(octet_length(frame)) OVER (ORDER BY seq DESC) AS upto
                        FROM events WHERE room = $1 AND ts >= $2 ORDER BY seq DESC LIMIT $3
                     ) newest WHERE upto <= $4 OR upto = size ORDER BY seq DESC",
                    &[
                        &code,
                        &(limits.events_since_ms as i64),
                        &(limits.events as i64),
                        &i64::try_from(limits.events_bytes).unwrap_or(i64::MAX),
                    ],
                )
                .await
                .map_err(unavailable)?;
            let mut events: Vec<EventRecord> = rows
                .iter()
                .map(|r| EventRecord {
                    seq: r.get::<_, i64>(0) as u64,
                    ts: r.get::<_, i64>(1) as u64,
                    frame: r.get(2),
                })
                .collect();
            events.reverse();
            Ok(Some(LoadedRoom {
                record: RoomRecord { code, seq: seq as u64, state },
                chat,
                commands,
                events,
            }))
        })
        .await
    }

    async fn chat_page(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let room = room.to_owned();
        self.read(&room.clone(), move |pool| async move {
            let client = pool.get().await.map_err(unavailable)?;
            let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
            let rows = client
                .query(
                    "SELECT msg FROM chat WHERE room = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                    &[&room, &before, &(limit as i64)],
                )
                .await
                .map_err(unavailable)?;
            rows.iter()
                .map(|r| serde_json::from_value(r.get::<_, Value>(0)))
                .collect::<Result<_, _>>()
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .await
    }

    async fn audit(&self, room: &str, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let room = room.to_owned();
        self.read(&room.clone(), move |pool| async move {
            let client = pool.get().await.map_err(unavailable)?;
            let rows = client
                .query(
                    "SELECT id, ts, actor, action, detail FROM audit WHERE room = $1 ORDER BY id DESC LIMIT $2",
                    &[&room, &(limit as i64)],
                )
                .await
                .map_err(unavailable)?;
            Ok(rows
                .iter()
                .map(|r| AuditEntry {
                    id: r.get::<_, i64>(0) as u64,
                    ts: r.get::<_, i64>(1) as u64,
                    actor: r.get(2),
                    action: r.get(3),
                    detail: r.get(4),
                })
                .collect())
        })
        .await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        for w in &self.writers {
            let (tx, rx) = oneshot::channel();
            let job: ReadJob = Box::new(move |_| {
                tokio::spawn(async move {
                    let _ = tx.send(());
                })
            });
            w.send(Job::Read(job))
                .await
                .map_err(|_| StoreError::Unavailable("store writer stopped".into()))?;
            rx.await
                .map_err(|_| StoreError::Unavailable("store writer stopped".into()))?;
        }
        Ok(())
    }
}

/// Collects batches, commits them together, answers each ticket in submission order.
async fn writer(pool: Pool, mut rx: mpsc::Receiver<Job>, batch_max: usize, events_keep: usize) {
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        match job {
            Job::Read(f) => {
                // Reads run concurrently once every earlier commit is done; the task
                // answers its caller through a oneshot, so its handle is not needed.
                drop(f(pool.clone()));
            }
            Job::Commit(batch, done) => {
                let (group, after) = super::gather(&mut rx, (batch, done), batch_max);
                next = after;
                let started = Instant::now();
                let results = commit::commit(&pool, &group.batches, events_keep).await;
                super::record_commit(started, group.size);
                for (w, r) in group.waiters.into_iter().zip(results) {
                    if let Err(e) = &r {
                        metrics::counter!(names::STORE_ERRORS).increment(1);
                        tracing::warn!(cause = %e, "store batch refused");
                    }
                    let _ = w.send(r);
                }
            }
        }
    }
}

//! Store implementations: `sqlite` for embedded mode, `postgres` for the cluster. Both
//! group-commit and order reads behind earlier writes.

pub mod postgres;
pub mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use lockstep_shared::metrics as names;
use lockstep_shared::store::{CommitTicket, Mutation, StoreError};
use tokio::sync::{mpsc, oneshot};

/// What a commit job reports back through.
pub(crate) type CommitReply = oneshot::Sender<Result<(), StoreError>>;

/// Queues a commit job without waiting. A full or stopped writer answers the ticket with
/// `unavailable` at once, so a room never blocks on its store.
pub(crate) fn enqueue_commit<J>(
    jobs: &mpsc::Sender<J>,
    job: impl FnOnce(CommitReply) -> J,
) -> CommitTicket {
    let (tx, rx) = oneshot::channel();
    let reason = match jobs.try_send(job(tx)) {
        Ok(()) => return rx,
        Err(mpsc::error::TrySendError::Full(_)) => "store queue is full",
        Err(mpsc::error::TrySendError::Closed(_)) => "store writer stopped",
    };
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(Err(StoreError::Unavailable(reason.into())));
    rx
}

/// A writer's queue entry: a commit to group with others, or any other job, which must wait
/// its turn (reads see every earlier write).
/// `R` is the store's read closure.
pub(crate) enum Job<R> {
    Commit(Vec<Mutation>, CommitReply),
    Read(R),
}

/// Commits gathered for one transaction.
pub(crate) struct Group {
    pub batches: Vec<Vec<Mutation>>,
    pub waiters: Vec<CommitReply>,
    /// Mutations in all batches.
    pub size: usize,
}

/// Group commit: after `first`, takes the commits already queued until `batch_max`
/// mutations; a job that is not a commit ends the group and is returned to run next.
pub(crate) fn gather<R>(
    rx: &mut mpsc::Receiver<Job<R>>,
    first: (Vec<Mutation>, CommitReply),
    batch_max: usize,
) -> (Group, Option<Job<R>>) {
    let mut group = Group {
        size: first.0.len(),
        batches: vec![first.0],
        waiters: vec![first.1],
    };
    while group.size < batch_max {
        match rx.try_recv() {
            Ok(Job::Commit(batch, reply)) => {
                group.size += batch.len();
                group.batches.push(batch);
                group.waiters.push(reply);
            }
            Ok(other) => return (group, Some(other)),
            Err(_) => break,
        }
    }
    (group, None)
}

/// Records one group commit's duration and size.
pub(crate) fn record_commit(started: std::time::Instant, size: usize) {
    metrics::histogram!(names::STORE_COMMIT_LATENCY).record(started.elapsed().as_secs_f64());
    metrics::histogram!(names::STORE_BATCH_SIZE).record(size as f64);
}

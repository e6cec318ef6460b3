//! Store implementations: `sqlite` for embedded mode, `postgres` for the cluster. Both
//! group-commit and order reads behind earlier writes.

pub mod postgres;
pub mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use lockstep_shared::store::{CommitTicket, StoreError};
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
